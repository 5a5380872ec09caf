package main

import (
	std_bufio "bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/sagernet/sing/common/buf"
	"github.com/sagernet/sing/common/bufio"
	M "github.com/sagernet/sing/common/metadata"
	N "github.com/sagernet/sing/common/network"
	"github.com/sagernet/sing/common/uot"
	"github.com/sagernet/sing/protocol/http"
	"github.com/sagernet/sing/protocol/socks"
	"github.com/sagernet/sing/protocol/socks/socks4"
	"github.com/sagernet/sing/protocol/socks/socks5"

	"github.com/anytls-engine/anytls/option"
	"github.com/anytls-engine/anytls/protocol"
)

func init() {
	register(&command{
		Name:  "client",
		Short: "run a local SOCKS5 and HTTP proxy that forwards through an AnyTLS server",
		Run: func(args []string) error {
			ctx, cancel := signalContext()
			defer cancel()
			return clientMain(ctx, args, os.Stdout, os.Stderr)
		},
	})
}

const (
	// proxyHandshakeTimeout bounds the wait for a local proxy client's first byte.
	proxyHandshakeTimeout = 30 * time.Second
	// socksUDPTimeout ends a SOCKS5 UDP association idle for this long.
	socksUDPTimeout = 5 * time.Minute
)

// clientConfig configures startClient.
type clientConfig struct {
	// Listen is the local proxy's TCP address (SOCKS5 and HTTP on the same port).
	Listen string
	// Link names the server, its TLS name and verification, and the password.
	Link option.Link
	// Options are further protocol options (Password is set from Link).
	Options option.ClientOptions
	Logger  *slog.Logger
}

// client is a running local proxy in front of an AnyTLS client.
type client struct {
	log    *slog.Logger
	ln     net.Listener
	engine *protocol.Client

	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
	done   chan struct{}
	once   sync.Once
}

// startClient listens on cfg.Listen and serves until ctx is done or Close is called.
func startClient(ctx context.Context, cfg clientConfig) (*client, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	opts := cfg.Options
	opts.Password = cfg.Link.Password
	pcfg, err := opts.ProtocolConfig()
	if err != nil {
		return nil, err
	}
	pcfg.Dial = tlsDialer(cfg.Link)
	pcfg.Logger = log
	engine, err := protocol.NewClient(pcfg)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		engine.Close()
		return nil, err
	}
	c := &client{log: log, ln: ln, engine: engine, conns: map[net.Conn]struct{}{}, done: make(chan struct{})}
	go c.serve(ctx)
	context.AfterFunc(ctx, func() { c.Close() })
	return c, nil
}

// tlsDialer connects to the link's server over TLS: the server name is the link's sni (else
// its host; an IP literal sends no SNI), verification is skipped with insecure=1.
func tlsDialer(link option.Link) func(ctx context.Context) (net.Conn, error) {
	config := &tls.Config{
		ServerName:         link.ServerName(),
		InsecureSkipVerify: link.Insecure,
		MinVersion:         tls.VersionTLS12,
	}
	address := link.Address()
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", address)
		if err != nil {
			return nil, err
		}
		tc := tls.Client(conn, config)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, fmt.Errorf("tls handshake with %s: %w", address, err)
		}
		return tc, nil
	}
}

// Addr is the local proxy's address.
func (c *client) Addr() net.Addr { return c.ln.Addr() }

// Close stops the proxy, closes the local connections and the AnyTLS sessions, and waits for
// the connection handlers.
func (c *client) Close() error {
	c.once.Do(func() {
		c.mu.Lock()
		c.closed = true
		for conn := range c.conns {
			conn.Close()
		}
		c.mu.Unlock()
		c.ln.Close()
		<-c.done
		c.engine.Close()
		c.wg.Wait()
	})
	return nil
}

func (c *client) serve(ctx context.Context) {
	defer close(c.done)
	for {
		conn, err := c.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return
		}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			conn.Close()
			return
		}
		c.conns[conn] = struct{}{}
		c.wg.Add(1)
		c.mu.Unlock()
		go func() {
			defer c.wg.Done()
			c.serveConn(ctx, conn)
			c.mu.Lock()
			delete(c.conns, conn)
			c.mu.Unlock()
			conn.Close()
		}()
	}
}

type ctxKeyReader struct{}

// serveConn hands a local connection to sing's SOCKS (4/5) or HTTP proxy server, by its first
// byte, as sing-box's mixed inbound does.
func (c *client) serveConn(ctx context.Context, conn net.Conn) {
	source := M.SocksaddrFromNet(conn.RemoteAddr())
	reader := std_bufio.NewReader(conn)
	conn.SetReadDeadline(time.Now().Add(proxyHandshakeTimeout))
	first, err := reader.Peek(1)
	conn.SetReadDeadline(time.Time{})
	if err != nil {
		return
	}
	ctx = context.WithValue(ctx, ctxKeyReader{}, reader)
	switch first[0] {
	case socks4.Version, socks5.Version:
		err = socks.HandleConnectionEx(ctx, conn, reader, nil, c, nil, socksUDPTimeout, source, nil)
	default:
		err = http.HandleConnectionEx(ctx, conn, reader, nil, c, source, nil)
	}
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		c.log.Debug("local proxy connection", "source", source.String(), "error", err)
	}
}

var _ socks.HandlerEx = (*client)(nil)

// NewConnectionEx carries one proxied TCP connection (SOCKS CONNECT, HTTP CONNECT or a plain
// HTTP request) over an AnyTLS stream.
func (c *client) NewConnectionEx(ctx context.Context, conn net.Conn, source M.Socksaddr, destination M.Socksaddr, onClose N.CloseHandlerFunc) {
	err := c.connect(ctx, conn, destination)
	if err != nil {
		c.log.Debug("proxy connection failed", "destination", destination.String(), "error", err)
	}
	if onClose != nil {
		onClose(err)
	}
}

func (c *client) connect(ctx context.Context, conn net.Conn, destination M.Socksaddr) error {
	dest, err := toAddr(destination)
	if err != nil {
		N.ReportHandshakeFailure(conn, err)
		conn.Close()
		return err
	}
	st, err := c.engine.OpenStream(ctx, dest)
	if err != nil {
		N.ReportHandshakeFailure(conn, err)
		conn.Close()
		return err
	}
	// The stream reports a refusal by the server when it is read; the local client learns it
	// as a closed connection. Reply now, before relaying (SOCKS replies are written lazily
	// otherwise, from whichever direction moves first).
	if err := N.ReportConnHandshakeSuccess(conn, st); err != nil {
		st.Close()
		conn.Close()
		return err
	}
	// Bytes a SOCKS client sent right after its request are in the handshake reader.
	if reader, ok := ctx.Value(ctxKeyReader{}).(*std_bufio.Reader); ok && reader.Buffered() > 0 && isSocks(conn) {
		cached := buf.NewSize(reader.Buffered())
		if _, err := cached.ReadFullFrom(reader, reader.Buffered()); err != nil {
			cached.Release()
			st.Close()
			conn.Close()
			return err
		}
		conn = bufio.NewCachedConn(conn, cached)
	}
	relay(conn, st)
	return nil
}

func isSocks(conn net.Conn) bool {
	_, ok := conn.(*socks.LazyConn)
	return ok
}

// NewPacketConnectionEx carries a SOCKS5 UDP association over a UDP-over-TCP v2 stream
// (sing's common/uot client, non-connect mode: every packet names its destination).
func (c *client) NewPacketConnectionEx(ctx context.Context, conn N.PacketConn, source M.Socksaddr, destination M.Socksaddr, onClose N.CloseHandlerFunc) {
	uc := &uot.Client{Dialer: streamDialer{c.engine}, Version: uot.Version}
	remote, err := uc.ListenPacket(ctx, destination)
	if err != nil {
		conn.Close()
	} else {
		err = bufio.CopyPacketConn(ctx, conn, bufio.NewPacketConn(remote))
	}
	if err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
		c.log.Debug("udp association ended", "error", err)
	}
	if onClose != nil {
		onClose(err)
	}
}

// streamDialer opens AnyTLS streams for sing's uot client.
type streamDialer struct{ engine *protocol.Client }

var _ N.Dialer = streamDialer{}

func (d streamDialer) DialContext(ctx context.Context, network string, destination M.Socksaddr) (net.Conn, error) {
	if N.NetworkName(network) != N.NetworkTCP {
		return nil, fmt.Errorf("anytls: network %s not supported by a stream", network)
	}
	dest, err := toAddr(destination)
	if err != nil {
		return nil, err
	}
	return d.engine.OpenStream(ctx, dest)
}

func (d streamDialer) ListenPacket(ctx context.Context, destination M.Socksaddr) (net.PacketConn, error) {
	return nil, errors.New("anytls: UDP goes through UDP-over-TCP streams")
}

// clientMain runs the client command until ctx is done.
func clientMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("client", "-l ADDR -s 'anytls://PASSWORD@HOST:PORT/?sni=NAME&insecure=1'\n   or: anytls client -l ADDR -s HOST:PORT -p PASSWORD [--sni NAME]")
	var (
		listen, server, password, sni string
		verbose                       bool
	)
	fs.SetOutput(stderr)
	fs.StringVar(&listen, "l", "127.0.0.1:1080", "local proxy `address` (SOCKS5 and HTTP on the same port)")
	fs.StringVar(&server, "s", "", "server: an anytls:// share link, or HOST:PORT with -p (then the certificate is not verified)")
	fs.StringVar(&password, "p", "", "`password` (overrides the link's)")
	fs.StringVar(&sni, "sni", "", "TLS server `name` (overrides the link's sni=)")
	fs.BoolVar(&verbose, "v", false, "log every connection (debug level)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	link, warning, err := clientLink(server, password, sni)
	if err != nil {
		fmt.Fprintln(fs.Output(), err)
		fs.Usage()
		return errUsage
	}
	if warning != "" {
		fmt.Fprintln(fs.Output(), warning)
	}
	log := newLogger(stderr, verbose)
	c, err := startClient(ctx, clientConfig{Listen: listen, Link: link, Logger: log})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "anytls client: SOCKS5 and HTTP proxy on %s, server %s\n", c.Addr(), link.Redacted())
	<-ctx.Done()
	log.Info("shutting down")
	return c.Close()
}

// clientLink builds the server link from -s, -p and --sni. -s is a share link, or HOST:PORT
// (the reference client's form, which needs -p and skips certificate verification: the
// returned warning says so). -p and --sni override the link's password and sni.
func clientLink(server, password, sni string) (link option.Link, warning string, err error) {
	if server == "" {
		return link, "", errors.New("flag -s is required")
	}
	if strings.Contains(server, "://") {
		link, err = option.ParseLink(server)
		if err != nil {
			return link, "", err
		}
	} else {
		host, port, err := net.SplitHostPort(server)
		if err != nil {
			return link, "", fmt.Errorf("-s %q: want an anytls:// link or HOST:PORT", server)
		}
		// Reuse the link parser's checks on host and port.
		link, err = option.ParseLink("anytls://" + net.JoinHostPort(host, port))
		if err != nil {
			return link, "", fmt.Errorf("-s %q: %w", server, err)
		}
		link.Insecure = true
		warning = "warning: -s HOST:PORT skips certificate verification (as the reference client does); anyone on the path can intercept. Use an anytls:// link without insecure=1 to verify the server."
	}
	if password != "" {
		link.Password = password
	}
	if sni != "" {
		link.SNI = sni
	}
	if link.Password == "" {
		return link, "", errors.New("no password: give -p PASSWORD or put it in the link (anytls://PASSWORD@HOST:PORT)")
	}
	return link, warning, nil
}
