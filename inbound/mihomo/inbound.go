// Package mihomo is a mihomo listener of type "anytls" served by this module's engine. It reads
// every YAML key of mihomo's built-in anytls listener with the same meaning, plus Reality
// (reality-config, as mihomo's vless listener spells it) and the engine's extra knobs (see
// Options). TLS is mihomo's (certificate files are watched and reloaded, ECH keys, client
// authentication, Reality); each stream goes into mihomo's tunnel through the same sing handler the
// built-in uses (listener/sing), which also decodes UDP-over-TCP v2 and sing-mux, with the user
// recorded in the metadata so that IN-USER rules and /connections see it.
//
// mihomo has no registry for listener types; internal/mihomorun puts this listener in place of the
// built-in wherever a configuration says `type: anytls`.
package mihomo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anytls-engine/anytls/internal/mihomohost"
	"github.com/anytls-engine/anytls/protocol"

	"github.com/metacubex/mihomo/adapter/inbound"
	"github.com/metacubex/mihomo/component/ca"
	"github.com/metacubex/mihomo/component/ech"
	C "github.com/metacubex/mihomo/constant"
	IN "github.com/metacubex/mihomo/listener/inbound"
	"github.com/metacubex/mihomo/listener/sing"
	"github.com/metacubex/mihomo/log"
	"github.com/metacubex/mihomo/ntp"

	"github.com/metacubex/sing/common/auth"
	M "github.com/metacubex/sing/common/metadata"
	"github.com/metacubex/tls"
)

// Listener is the listener. It implements C.InboundListener.
type Listener struct {
	*IN.Base
	opts *Options

	mu        sync.Mutex
	listeners []net.Listener
	srv       *protocol.Server
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closed    bool
}

var _ C.InboundListener = (*Listener)(nil)

// New builds the listener from options (see ParseOptions); Listen starts it.
func New(opts *Options) (*Listener, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	base, err := IN.NewBase(&opts.BaseOption)
	if err != nil {
		return nil, &ConfigError{Listener: opts.NameStr, Key: "listen", Err: err}
	}
	l := &Listener{Base: base, opts: opts}
	opts.listener = l
	return l, nil
}

// Config implements C.InboundListener.
func (l *Listener) Config() C.InboundConfig { return l.opts }

// Address implements C.InboundListener: the addresses actually bound.
func (l *Listener) Address() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	addrs := make([]string, 0, len(l.listeners))
	for _, ln := range l.listeners {
		addrs = append(addrs, ln.Addr().String())
	}
	return strings.Join(addrs, ",")
}

// Server returns the engine server once listening (for statistics such as SessionCount).
func (l *Listener) Server() *protocol.Server {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.srv
}

// Listen implements C.InboundListener.
func (l *Listener) Listen(tunnel C.Tunnel) error {
	wrap, err := l.tlsWrapper(tunnel)
	if err != nil {
		return &ConfigError{Listener: l.Name(), Err: err}
	}
	h, err := sing.NewListenerHandler(sing.ListenerConfig{
		Tunnel:    tunnel,
		Type:      C.ANYTLS,
		Additions: l.Additions(),
	})
	if err != nil {
		return err
	}
	cfg, err := l.opts.ServerOptions().ProtocolConfig(nil)
	if err != nil {
		return &ConfigError{Listener: l.Name(), Err: err}
	}
	cfg.Logger = mihomohost.Logger("[AnyTLS] " + l.Name())
	cfg.Handler = func(ctx context.Context, st *protocol.Stream) { serveStream(ctx, h, st) }
	srv, err := protocol.NewServer(cfg)
	if err != nil {
		return &ConfigError{Listener: l.Name(), Err: err}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var listeners []net.Listener
	for _, addr := range strings.Split(l.RawAddress(), ",") {
		ln, err := inbound.Listen("tcp", addr)
		if err != nil {
			cancel()
			srv.Close()
			for _, ln := range listeners {
				ln.Close()
			}
			return err
		}
		listeners = append(listeners, wrap(ln))
	}
	l.mu.Lock()
	l.srv, l.cancel, l.listeners = srv, cancel, listeners
	l.mu.Unlock()
	for _, ln := range listeners {
		l.wg.Add(1)
		go l.accept(ctx, srv, ln)
	}
	log.Infoln("AnyTLS[%s] proxy listening at: %s (anytls engine)", l.Name(), l.Address())
	return nil
}

// tlsWrapper builds the TLS (or Reality) layer as mihomo's built-in anytls and vless listeners do.
func (l *Listener) tlsWrapper(tunnel C.Tunnel) (func(net.Listener) net.Listener, error) {
	o := l.opts
	if o.RealityConfig.PrivateKey != "" {
		builder, err := o.RealityConfig.Build().Build(tunnel)
		if err != nil {
			return nil, fmt.Errorf("reality-config: %w", err)
		}
		return builder.NewListener, nil
	}
	tlsConfig := &tls.Config{Time: ntp.Now}
	certLoader, err := ca.NewTLSKeyPairLoader(o.Certificate, o.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	tlsConfig.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return certLoader() }
	if o.EchKey != "" {
		if err := ech.LoadECHKey(o.EchKey, tlsConfig); err != nil {
			return nil, fmt.Errorf("ech-key: %w", err)
		}
	}
	tlsConfig.ClientAuth = ca.ClientAuthTypeFromString(o.ClientAuthType)
	if o.ClientAuthCert != "" && tlsConfig.ClientAuth == tls.NoClientCert {
		tlsConfig.ClientAuth = tls.RequireAndVerifyClientCert
	}
	if tlsConfig.ClientAuth == tls.VerifyClientCertIfGiven || tlsConfig.ClientAuth == tls.RequireAndVerifyClientCert {
		pool, err := ca.LoadCertificates(o.ClientAuthCert)
		if err != nil {
			return nil, fmt.Errorf("client-auth-cert: %w", err)
		}
		tlsConfig.ClientCAs = pool
	}
	return func(ln net.Listener) net.Listener { return tls.NewListener(ln, tlsConfig) }, nil
}

// accept serves ln until it is closed. Unlike the engine's Serve it never gives up on an
// accept error (mihomo's listeners keep going too), backing off a little.
func (l *Listener) accept(ctx context.Context, srv *protocol.Server, ln net.Listener) {
	defer l.wg.Done()
	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			log.Debugln("AnyTLS[%s] accept: %v", l.Name(), err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		go srv.ServeConn(ctx, conn)
	}
}

// Close implements C.InboundListener: it stops accepting and ends the sessions.
func (l *Listener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	listeners, srv, cancel := l.listeners, l.srv, l.cancel
	l.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	var errs []error
	for _, ln := range listeners {
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	if srv != nil {
		srv.Close()
	}
	l.wg.Wait()
	return errors.Join(errs...)
}

// serveStream hands one stream to mihomo's tunnel. The tunnel dials and relays synchronously
// inside NewConnection and never returns the dial error, so the result is read from what it does
// with the connection (see reportConn).
func serveStream(ctx context.Context, h *sing.ListenerHandler, st *protocol.Stream) {
	defer st.Close()
	dest := mihomohost.Socksaddr(st.Destination())
	if user, ok := protocol.UserFromContext(ctx); ok {
		ctx = auth.ContextWithUser(ctx, user)
	}
	metadata := M.Metadata{Source: M.SocksaddrFromNet(st.RemoteAddr()), Destination: dest}
	if h.IsSpecialFqdn(dest.Fqdn) {
		// UDP-over-TCP or sing-mux: nothing is dialed for the stream itself.
		st.Report(nil)
		if err := h.NewConnection(ctx, st, metadata); err != nil {
			log.Debugln("[AnyTLS] %s: %v", dest, err)
		}
		return
	}
	rc := &reportConn{Stream: st, failure: fmt.Errorf("mihomo could not connect to %s (see its log)", dest)}
	if err := h.NewConnection(ctx, rc, metadata); err != nil {
		rc.failure = err
	}
	rc.fail()
}

// reportConn reports the tunnel's dial result to the client (cmdSYNACK). mihomo v1.19.23's
// tunnel, once the outbound connection is up, stops its pre-dial peek with SetReadDeadline(now)
// before relaying; afterwards the relay writes the remote's data or half-closes. Any of these means
// the connection was made. If the tunnel closes the connection (or returns) without any of them,
// it failed; its log says why. test/mihomo checks both outcomes against the running tunnel.
type reportConn struct {
	*protocol.Stream
	ok      atomic.Bool
	failure error
}

func (c *reportConn) success() {
	if c.ok.CompareAndSwap(false, true) {
		c.Stream.Report(nil)
	}
}

func (c *reportConn) fail() {
	if c.ok.CompareAndSwap(false, true) {
		c.Stream.Report(c.failure)
	}
}

// Close reports a failure first unless the connection was made: the tunnel closes the
// connection on every path, and a report after the close would reach a stream already ended.
func (c *reportConn) Close() error {
	c.fail()
	return c.Stream.Close()
}

func (c *reportConn) SetReadDeadline(t time.Time) error {
	if !t.IsZero() && !t.After(time.Now()) {
		c.success()
	}
	return c.Stream.SetReadDeadline(t)
}

func (c *reportConn) SetDeadline(t time.Time) error {
	if !t.IsZero() && !t.After(time.Now()) {
		c.success()
	}
	return c.Stream.SetDeadline(t)
}

func (c *reportConn) Write(b []byte) (int, error) {
	c.success()
	return c.Stream.Write(b)
}

func (c *reportConn) ReadFrom(r io.Reader) (int64, error) {
	c.success()
	return c.Stream.ReadFrom(r)
}

func (c *reportConn) CloseWrite() error {
	c.success()
	return c.Stream.CloseWrite()
}
