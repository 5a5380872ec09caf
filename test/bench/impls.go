package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	anytls "github.com/anytls/sing-anytls"
	mihomoC "github.com/metacubex/mihomo/constant"
	mihomolistener "github.com/metacubex/mihomo/listener/anytls"
	mihomoconfig "github.com/metacubex/mihomo/listener/config"
	mihomolog "github.com/metacubex/mihomo/log"
	mihomoanytls "github.com/metacubex/mihomo/transport/anytls"
	mM "github.com/metacubex/sing/common/metadata"
	"github.com/sagernet/sing/common/logger"
	M "github.com/sagernet/sing/common/metadata"
	N "github.com/sagernet/sing/common/network"

	"github.com/anytls-engine/anytls/internal/testcert"
	"github.com/anytls-engine/anytls/internal/testpeer"
	"github.com/anytls-engine/anytls/protocol"
)

func init() {
	mihomolog.SetLevel(mihomolog.SILENT)
}

// password shared by every client and server.
const password = "bench-password"

// Implementation names, in table order.
const (
	implTCP    = "tcp"
	implTLS    = "tls"
	implOurs   = "ours"
	implSing   = "sing"
	implMihomo = "mihomo"
)

var allImpls = []string{implTCP, implTLS, implOurs, implSing, implMihomo}

// peers are the deployed implementations ours is compared with.
var peers = []string{implSing, implMihomo}

// implTitle is the column heading of an implementation.
var implTitle = map[string]string{
	implTCP:    "raw TCP",
	implTLS:    "crypto/tls",
	implOurs:   "ours",
	implSing:   "sing-anytls",
	implMihomo: "mihomo",
}

// client opens proxied connections through one implementation's server.
type client interface {
	Dial(ctx context.Context, dest netip.AddrPort) (net.Conn, error)
	Close() error
}

// env is what every implementation shares: one certificate and its TLS configurations.
type env struct {
	certPEM, keyPEM string
	serverTLS       *tls.Config
	clientTLS       *tls.Config
}

func newEnv() (*env, error) {
	cert, certPEM, keyPEM, err := testcert.New("localhost")
	if err != nil {
		return nil, err
	}
	return &env{
		certPEM:   string(certPEM),
		keyPEM:    string(keyPEM),
		serverTLS: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13},
		// mihomo's client skips verification of the chain (SkipCertVerify); so do the others, so
		// that all do the same work. The handshake signature is verified either way.
		clientTLS: &tls.Config{ServerName: "localhost", InsecureSkipVerify: true, MinVersion: tls.VersionTLS13},
	}, nil
}

// server is a running server of one implementation.
type server struct {
	addr string
	stop func()
}

// startServer starts impl's server on loopback. Every stream it accepts is relayed to its
// destination by relay, the same for all implementations.
func (e *env) startServer(impl string) (*server, error) {
	switch impl {
	case implTCP, implTLS:
		return e.startPlainServer(impl == implTLS)
	case implOurs:
		return e.startOurServer()
	case implSing:
		return e.startSingServer()
	case implMihomo:
		return e.startMihomoServer()
	}
	return nil, fmt.Errorf("unknown implementation %q", impl)
}

// newClient returns a client of impl for the server at addr. perSession > 1 lets our client
// carry that many streams on one session (ClientConfig.MaxStreamsPerSession).
func (e *env) newClient(impl, addr string, perSession int) (client, error) {
	switch impl {
	case implTCP, implTLS:
		return &plainClient{addr: addr, tls: impl == implTLS, cfg: e.clientTLS}, nil
	case implOurs:
		c, err := protocol.NewClient(protocol.ClientConfig{
			Password:             password,
			MaxStreamsPerSession: perSession,
			Dial: func(ctx context.Context) (net.Conn, error) {
				d := tls.Dialer{Config: e.clientTLS}
				return d.DialContext(ctx, "tcp", addr)
			},
		})
		if err != nil {
			return nil, err
		}
		return ourClient{c}, nil
	case implSing:
		c, err := testpeer.SingClient(password, func(ctx context.Context) (net.Conn, error) {
			d := tls.Dialer{Config: e.clientTLS}
			return d.DialContext(ctx, "tcp", addr)
		})
		if err != nil {
			return nil, err
		}
		return singClient{c}, nil
	case implMihomo:
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return nil, err
		}
		return mihomoClient{testpeer.MihomoClient(password, ap)}, nil
	}
	return nil, fmt.Errorf("unknown implementation %q", impl)
}

// relay copies both ways between a and b with io.Copy (so each side's io.WriterTo and
// io.ReaderFrom are used where it has them) and closes both when either direction ends.
func relay(a, b net.Conn) {
	var once sync.Once
	closeBoth := func() { a.Close(); b.Close() }
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(b, a)
		once.Do(closeBoth)
	}()
	io.Copy(a, b)
	once.Do(closeBoth)
	<-done
}

// dialTarget connects to a stream's destination.
func dialTarget(ctx context.Context, dest string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var d net.Dialer
	return d.DialContext(ctx, "tcp", dest)
}

// acceptLoop runs serve for every connection ln accepts, and returns a stop function that
// closes ln and every connection and waits for the handlers.
func acceptLoop(ln net.Listener, serve func(net.Conn)) func() {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil { // out of file descriptors, for one: keep serving the others
				time.Sleep(10 * time.Millisecond)
				continue
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				serve(c)
				c.Close()
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			}()
		}
	}()
	return func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}
}

// =============================================================================================
// Baselines: a TCP or TLS connection per stream, its destination in a SOCKS address before
// the data (sent with the first write), relayed like the proxies' streams.

func (e *env) startPlainServer(useTLS bool) (*server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	if useTLS {
		ln = tls.NewListener(ln, e.serverTLS)
	}
	stop := acceptLoop(ln, func(c net.Conn) {
		dest, err := protocol.ReadAddr(c)
		if err != nil {
			return
		}
		t, err := dialTarget(context.Background(), dest.String())
		if err != nil {
			return
		}
		if !useTLS {
			// Copy through user space as over TLS: no splice(2), whose pipes would also
			// cost two file descriptors per direction of every idle connection.
			c, t = plainConn{c}, plainConn{t}
		}
		relay(c, t)
	})
	return &server{addr: addr, stop: stop}, nil
}

// plainConn hides a connection's io.ReaderFrom and io.WriterTo.
type plainConn struct{ net.Conn }

type plainClient struct {
	addr string
	tls  bool
	cfg  *tls.Config
}

func (c *plainClient) Dial(ctx context.Context, dest netip.AddrPort) (net.Conn, error) {
	var conn net.Conn
	var err error
	if c.tls {
		d := tls.Dialer{Config: c.cfg}
		conn, err = d.DialContext(ctx, "tcp", c.addr)
	} else {
		var d net.Dialer
		conn, err = d.DialContext(ctx, "tcp", c.addr)
	}
	if err != nil {
		return nil, err
	}
	hdr, _ := protocol.AddrFromAddrPort(dest).AppendTo(nil)
	return &prefixConn{Conn: conn, prefix: hdr}, nil
}

func (c *plainClient) Close() error { return nil }

// prefixConn sends prefix with the first write.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Write(b []byte) (int, error) {
	if c.prefix == nil {
		return c.Conn.Write(b)
	}
	buf := append(c.prefix, b...)
	c.prefix = nil
	n, err := c.Conn.Write(buf)
	return max(n-(len(buf)-len(b)), 0), err
}

// =============================================================================================
// Ours

func (e *env) startOurServer() (*server, error) {
	srv, err := protocol.NewServer(protocol.ServerConfig{
		Users: []protocol.User{{Name: "user", Password: password}},
		Handler: func(ctx context.Context, st *protocol.Stream) {
			defer st.Close()
			t, err := dialTarget(ctx, st.Destination().String())
			if err != nil {
				st.Report(err)
				return
			}
			st.Report(nil)
			relay(st, t)
		},
	})
	if err != nil {
		return nil, err
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", e.serverTLS)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ctx, ln)
	}()
	return &server{addr: ln.Addr().String(), stop: func() {
		srv.Close()
		ln.Close()
		cancel()
		<-done
	}}, nil
}

type ourClient struct{ c *protocol.Client }

func (c ourClient) Dial(ctx context.Context, dest netip.AddrPort) (net.Conn, error) {
	return c.c.OpenStream(ctx, protocol.AddrFromAddrPort(dest))
}

func (c ourClient) Close() error { return c.c.Close() }

// =============================================================================================
// sing-anytls v0.0.11 (sing-box 1.14.1)

type singHandler struct{}

// NewConnectionEx serves a stream as a sing-box inbound does: dial, report the result
// (it becomes cmdSYNACK), relay.
func (singHandler) NewConnectionEx(ctx context.Context, conn net.Conn, source, dest M.Socksaddr, onClose N.CloseHandlerFunc) {
	defer conn.Close()
	t, err := dialTarget(ctx, dest.String())
	if err != nil {
		N.ReportHandshakeFailure(conn, err)
		return
	}
	if err := N.ReportConnHandshakeSuccess(conn, t); err != nil {
		t.Close()
		return
	}
	relay(conn, t)
}

func (e *env) startSingServer() (*server, error) {
	service, err := anytls.NewService(anytls.ServiceConfig{
		PaddingScheme: []byte(protocol.DefaultPaddingSchemeText),
		Users:         []anytls.User{{Name: "user", Password: password}},
		Handler:       singHandler{},
		Logger:        logger.NOP(),
	})
	if err != nil {
		return nil, err
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", e.serverTLS)
	if err != nil {
		return nil, err
	}
	stop := acceptLoop(ln, func(c net.Conn) {
		tc := c.(*tls.Conn)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			return
		}
		service.NewConnection(context.Background(), tc, M.SocksaddrFromNet(c.RemoteAddr()), nil)
	})
	return &server{addr: ln.Addr().String(), stop: stop}, nil
}

type singClient struct{ c *anytls.Client }

func (c singClient) Dial(ctx context.Context, dest netip.AddrPort) (net.Conn, error) {
	return c.c.CreateProxy(ctx, M.SocksaddrFromNetIP(dest))
}

func (c singClient) Close() error { return c.c.Close() }

// =============================================================================================
// mihomo v1.19.23: its anytls listener (its own TLS) in front of a minimal tunnel, and its
// transport/anytls client.

type tunnel struct{}

func (tunnel) HandleTCPConn(conn net.Conn, md *mihomoC.Metadata) {
	defer conn.Close()
	t, err := dialTarget(context.Background(), md.RemoteAddress())
	if err != nil {
		return
	}
	relay(conn, t)
}

func (tunnel) HandleUDPPacket(pkt mihomoC.UDPPacket, md *mihomoC.Metadata) { pkt.Drop() }
func (tunnel) NatTable() mihomoC.NatTable                                  { return nil }

func (e *env) startMihomoServer() (*server, error) {
	l, err := mihomolistener.New(mihomoconfig.AnyTLSServer{
		Enable:        true,
		Listen:        "127.0.0.1:0",
		Users:         map[string]string{"user": password},
		Certificate:   e.certPEM,
		PrivateKey:    e.keyPEM,
		PaddingScheme: protocol.DefaultPaddingSchemeText,
	}, tunnel{})
	if err != nil {
		return nil, err
	}
	return &server{addr: l.AddrList()[0].String(), stop: func() { l.Close() }}, nil
}

type mihomoClient struct{ c *mihomoanytls.Client }

func (c mihomoClient) Dial(ctx context.Context, dest netip.AddrPort) (net.Conn, error) {
	return c.c.CreateProxy(ctx, mM.SocksaddrFromNetIP(dest))
}

func (c mihomoClient) Close() error { return c.c.Close() }
