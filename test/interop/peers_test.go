package interop

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	anytls "github.com/anytls/sing-anytls"
	singpadding "github.com/anytls/sing-anytls/padding"
	mihomoC "github.com/metacubex/mihomo/constant"
	mihomolistener "github.com/metacubex/mihomo/listener/anytls"
	mihomoconfig "github.com/metacubex/mihomo/listener/config"
	mihomolog "github.com/metacubex/mihomo/log"
	mihomoanytls "github.com/metacubex/mihomo/transport/anytls"
	mM "github.com/metacubex/sing/common/metadata"
	muot "github.com/metacubex/sing/common/uot"
	"github.com/sagernet/sing/common/logger"
	M "github.com/sagernet/sing/common/metadata"
	N "github.com/sagernet/sing/common/network"
	"github.com/sagernet/sing/common/uot"

	"github.com/anytls-engine/anytls/internal/testpeer"
	"github.com/anytls-engine/anytls/protocol"
)

func init() {
	mihomolog.SetLevel(mihomolog.SILENT)
}

// client is one side that opens proxied connections.
type client interface {
	// Dial opens a proxied TCP connection to dest.
	Dial(ctx context.Context, dest netip.AddrPort) (net.Conn, error)
	// DialFqdn opens a proxied TCP connection to a domain name (SOCKS address type 3).
	DialFqdn(ctx context.Context, host string, port uint16) (net.Conn, error)
	// ListenUDP opens a UDP-over-TCP association to dest the way the client's host does.
	ListenUDP(ctx context.Context, dest netip.AddrPort) (net.PacketConn, error)
	// MaxWrite is the largest write the client's streams carry intact.
	MaxWrite() int
}

// server is one side that accepts AnyTLS connections.
type server interface {
	Addr() string
}

type (
	clientFactory func(t testing.TB, addr string) client
	serverFactory func(t testing.TB) server
)

// dialTLS connects to addr and completes a TLS 1.3 handshake with our test certificate.
func dialTLS(ctx context.Context, addr string, cfg *tls.Config) (*tls.Conn, error) {
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	if v := tc.ConnectionState().Version; v != tls.VersionTLS13 {
		tc.Close()
		return nil, fmt.Errorf("negotiated TLS version %#x, want TLS 1.3", v)
	}
	return tc, nil
}

// =============================================================================================
// Ours

type ourServerConfig struct {
	scheme     *protocol.PaddingScheme
	maxVersion int
	record     bool // wrap each accepted connection in a recorder
	// padDownstream pads the server's first packets too (our extension).
	padDownstream bool
	// slowPort: the handler waits slowDelay before dialing this port (a slow outbound dial).
	slowPort  uint16
	slowDelay time.Duration
	// earlySynAck sets ServerConfig.EarlySynAckDelay (0: default).
	earlySynAck time.Duration
	// bigWrites makes the handler write what it reads from the target into the stream in
	// writes of 1 MiB (Stream.Write must split them into frames); otherwise it uses io.Copy,
	// which goes through Stream.ReadFrom.
	bigWrites bool
}

type ourServer struct {
	srv      *protocol.Server
	ln       net.Listener
	accepted atomic.Int64
	wg       sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	recs  []*recorder
}

func (s *ourServer) Addr() string { return s.ln.Addr().String() }

// recorders returns the recorders of the accepted connections, in accept order.
func (s *ourServer) recorders() []*recorder {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*recorder(nil), s.recs...)
}

// ourHandlerWith is the stream handler of our test server: dial the destination, report the
// result (cmdSYNACK), relay. UDP-over-TCP streams are served with sing's common/uot, as our
// sing-box inbound does.
func ourHandlerWith(ctx context.Context, st *protocol.Stream, cfg ourServerConfig) {
	defer st.Close()
	dest := st.Destination()
	if cfg.slowPort != 0 && dest.Port == cfg.slowPort {
		select {
		case <-time.After(cfg.slowDelay): // a slow outbound dial
		case <-ctx.Done():
			return
		}
	}
	if dest.IsUoT() {
		st.Report(nil)
		req, err := uot.ReadRequest(st)
		if err != nil {
			return
		}
		relayUDP(uot.NewConn(st, *req))
		return
	}
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	c, err := d.DialContext(dctx, "tcp", dest.String())
	cancel()
	if err != nil {
		st.Report(err)
		return
	}
	st.Report(nil)
	defer c.Close()
	// target → client: when the target is done, the stream is done. client → target: the
	// client's half-close (cmdFIN between two ends of ours) becomes the target's half-close,
	// and the reply keeps flowing.
	done := make(chan struct{})
	go func() {
		defer close(done)
		if cfg.bigWrites {
			buf := make([]byte, 1<<20)
			for {
				n, err := io.ReadFull(c, buf)
				if n > 0 {
					if _, werr := st.Write(buf[:n]); werr != nil {
						break
					}
				}
				if err != nil {
					break
				}
			}
		} else {
			io.Copy(st, c) // st.ReadFrom
		}
		st.Close()
		c.Close()
	}()
	if _, err := io.Copy(c, st); err == nil { // st.WriteTo; nil: the client half-closed
		c.(*net.TCPConn).CloseWrite()
		<-done
	}
	c.Close()
	st.Close()
	<-done
}

func startOurServer(t testing.TB, cfg ourServerConfig) *ourServer {
	t.Helper()
	srv, err := protocol.NewServer(protocol.ServerConfig{
		Users: []protocol.User{{Name: "user", Password: password}},
		Handler: func(ctx context.Context, st *protocol.Stream) {
			ourHandlerWith(ctx, st, cfg)
		},
		PaddingScheme:    cfg.scheme,
		MaxVersion:       cfg.maxVersion,
		PadDownstream:    cfg.padDownstream,
		EarlySynAckDelay: cfg.earlySynAck,
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &ourServer{srv: srv, ln: ln, conns: map[net.Conn]struct{}{}}
	tlsCfg := serverTLSConfig(t)
	ctx, cancel := context.WithCancel(context.Background())
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			s.mu.Lock()
			s.conns[raw] = struct{}{}
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer func() {
					s.mu.Lock()
					delete(s.conns, raw)
					s.mu.Unlock()
				}()
				tc := tls.Server(raw, tlsCfg)
				var conn net.Conn = tc
				if cfg.record {
					hctx, hcancel := context.WithTimeout(ctx, 10*time.Second)
					err := tc.HandshakeContext(hctx)
					hcancel()
					if err != nil {
						raw.Close()
						return
					}
					rec := newRecorder(tc)
					s.mu.Lock()
					s.recs = append(s.recs, rec)
					s.mu.Unlock()
					conn = rec
				}
				srv.ServeConn(ctx, conn)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		srv.Close()
		cancel()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

type ourClient struct {
	*protocol.Client
	mu   sync.Mutex
	recs []*recorder
}

func (c *ourClient) MaxWrite() int { return ourWrite }

func (c *ourClient) Dial(ctx context.Context, dest netip.AddrPort) (net.Conn, error) {
	return c.OpenStream(ctx, protocol.AddrFromAddrPort(dest))
}

func (c *ourClient) DialFqdn(ctx context.Context, host string, port uint16) (net.Conn, error) {
	return c.OpenStream(ctx, protocol.Addr{Fqdn: host, Port: port})
}

// uotDialer lets sing's uot.Client open its streams through our client, as our sing-box
// outbound does.
type uotDialer struct{ c *ourClient }

func (d uotDialer) DialContext(ctx context.Context, network string, dest M.Socksaddr) (net.Conn, error) {
	var a protocol.Addr
	if dest.Fqdn != "" {
		a = protocol.Addr{Fqdn: dest.Fqdn, Port: dest.Port}
	} else {
		a = protocol.AddrFromAddrPort(dest.AddrPort())
	}
	return d.c.OpenStream(ctx, a)
}

func (d uotDialer) ListenPacket(context.Context, M.Socksaddr) (net.PacketConn, error) {
	return nil, os.ErrInvalid
}

// ListenUDP uses connect mode (uot.Client.DialContext), as sing-box does for a UDP dial.
func (c *ourClient) ListenUDP(ctx context.Context, dest netip.AddrPort) (net.PacketConn, error) {
	uc := &uot.Client{Dialer: uotDialer{c}, Version: uot.Version}
	conn, err := uc.DialContext(ctx, N.NetworkUDP, M.SocksaddrFromNetIP(dest))
	if err != nil {
		return nil, err
	}
	return conn.(net.PacketConn), nil
}

// listenPacket uses packet mode (uot.Client.ListenPacket): each datagram carries its address.
func (c *ourClient) listenPacket(ctx context.Context, dest netip.AddrPort) (net.PacketConn, error) {
	uc := &uot.Client{Dialer: uotDialer{c}, Version: uot.Version}
	return uc.ListenPacket(ctx, M.SocksaddrFromNetIP(dest))
}

func (c *ourClient) recorders() []*recorder {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*recorder(nil), c.recs...)
}

// newOurClient returns our client for the server at addr; mod may adjust its config. Every
// connection it dials is wrapped in a recorder (inside TLS).
func newOurClient(t testing.TB, addr string, mod func(*protocol.ClientConfig)) *ourClient {
	t.Helper()
	oc := &ourClient{}
	tlsCfg := clientTLSConfig(t)
	cfg := protocol.ClientConfig{
		Password: password,
		Dial: func(ctx context.Context) (net.Conn, error) {
			tc, err := dialTLS(ctx, addr, tlsCfg)
			if err != nil {
				return nil, err
			}
			rec := newRecorder(tc)
			oc.mu.Lock()
			oc.recs = append(oc.recs, rec)
			oc.mu.Unlock()
			return rec, nil
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := protocol.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	oc.Client = c
	t.Cleanup(func() { c.Close() })
	return oc
}

func ourServerFactory(t testing.TB) server { return startOurServer(t, ourServerConfig{}) }

// ourBigWritesServerFactory is our server whose handler writes 1 MiB at a time into streams.
func ourBigWritesServerFactory(t testing.TB) server {
	return startOurServer(t, ourServerConfig{bigWrites: true})
}
func ourClientFactory(t testing.TB, addr string) client {
	return newOurClient(t, addr, nil)
}

// ourMuxClientFactory is our client carrying up to 128 streams per session (not the default).
func ourMuxClientFactory(t testing.TB, addr string) client {
	return newOurClient(t, addr, func(c *protocol.ClientConfig) { c.MaxStreamsPerSession = 128 })
}

// =============================================================================================
// sing-anytls (sing-box 1.14.1)

type singHandler struct{}

// NewConnectionEx serves a stream of sing-anytls' service the way a sing-box inbound would:
// dial, report the result with N.ReportHandshakeSuccess/Failure (→ cmdSYNACK), relay. UoT
// streams are served with sing's common/uot.
func (singHandler) NewConnectionEx(ctx context.Context, conn net.Conn, source, dest M.Socksaddr, onClose N.CloseHandlerFunc) {
	err := serveSingStream(ctx, conn, dest)
	conn.Close()
	if onClose != nil {
		onClose(err)
	}
}

func serveSingStream(ctx context.Context, conn net.Conn, dest M.Socksaddr) error {
	if dest.Fqdn == uot.MagicAddress {
		req, err := uot.ReadRequest(conn)
		if err != nil {
			return N.ReportHandshakeFailure(conn, err)
		}
		uc := uot.NewConn(conn, *req)
		if err := N.ReportPacketConnHandshakeSuccess(conn, uc); err != nil {
			return err
		}
		relayUDP(uc)
		return nil
	}
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	c, err := d.DialContext(dctx, "tcp", dest.String())
	cancel()
	if err != nil {
		return N.ReportHandshakeFailure(conn, err)
	}
	if err := N.ReportConnHandshakeSuccess(conn, c); err != nil {
		c.Close()
		return err
	}
	relay(conn, c, 32<<10)
	return nil
}

type singServerConfig struct {
	scheme []byte // nil: sing-anytls' default scheme
	record bool
}

type singServer struct {
	ln       net.Listener
	service  *anytls.Service
	accepted atomic.Int64
	wg       sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	recs  []*recorder
}

func (s *singServer) Addr() string { return s.ln.Addr().String() }

func (s *singServer) recorders() []*recorder {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*recorder(nil), s.recs...)
}

func startSingServer(t testing.TB, cfg singServerConfig) *singServer {
	t.Helper()
	scheme := cfg.scheme
	if scheme == nil {
		scheme = singpadding.DefaultPaddingScheme
	}
	service, err := anytls.NewService(anytls.ServiceConfig{
		PaddingScheme: scheme,
		Users:         []anytls.User{{Name: "user", Password: password}},
		Handler:       singHandler{},
		Logger:        logger.NOP(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &singServer{ln: ln, service: service, conns: map[net.Conn]struct{}{}}
	tlsCfg := serverTLSConfig(t)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			s.mu.Lock()
			s.conns[raw] = struct{}{}
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer func() {
					raw.Close()
					s.mu.Lock()
					delete(s.conns, raw)
					s.mu.Unlock()
				}()
				tc := tls.Server(raw, tlsCfg)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := tc.HandshakeContext(ctx)
				cancel()
				if err != nil {
					return
				}
				var conn net.Conn = tc
				if cfg.record {
					rec := newRecorder(tc)
					s.mu.Lock()
					s.recs = append(s.recs, rec)
					s.mu.Unlock()
					conn = rec
				}
				service.NewConnection(context.Background(), conn, M.SocksaddrFromNet(raw.RemoteAddr()), nil)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

type singClient struct {
	c *anytls.Client
}

func (c *singClient) MaxWrite() int { return peerMaxWrite }

func (c *singClient) Dial(ctx context.Context, dest netip.AddrPort) (net.Conn, error) {
	return c.c.CreateProxy(ctx, M.SocksaddrFromNetIP(dest))
}

func (c *singClient) DialFqdn(ctx context.Context, host string, port uint16) (net.Conn, error) {
	return c.c.CreateProxy(ctx, M.Socksaddr{Fqdn: host, Port: port})
}

// singDialer is what sing-box's anytls outbound hands to uot.Client.
type singDialer struct{ c *anytls.Client }

func (d singDialer) DialContext(ctx context.Context, network string, dest M.Socksaddr) (net.Conn, error) {
	return d.c.CreateProxy(ctx, dest)
}

func (d singDialer) ListenPacket(context.Context, M.Socksaddr) (net.PacketConn, error) {
	return nil, os.ErrInvalid
}

// ListenUDP does what sing-box's anytls outbound does for UDP: uot.Client in connect mode.
func (c *singClient) ListenUDP(ctx context.Context, dest netip.AddrPort) (net.PacketConn, error) {
	uc := &uot.Client{Dialer: singDialer{c.c}, Version: uot.Version}
	conn, err := uc.DialContext(ctx, N.NetworkUDP, M.SocksaddrFromNetIP(dest))
	if err != nil {
		return nil, err
	}
	return conn.(net.PacketConn), nil
}

func newSingClient(t testing.TB, addr string) *singClient {
	t.Helper()
	tlsCfg := clientTLSConfig(t)
	c, err := testpeer.SingClient(password, func(ctx context.Context) (net.Conn, error) {
		return dialTLS(ctx, addr, tlsCfg)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &singClient{c: c}
}

func singServerFactory(t testing.TB) server { return startSingServer(t, singServerConfig{}) }
func singClientFactory(t testing.TB, addr string) client {
	return newSingClient(t, addr)
}

// =============================================================================================
// mihomo v1.19.23

// tunnel is a minimal mihomo C.Tunnel: TCP is dialled directly and relayed; UDP packets are
// forwarded from one socket per association and replies written back.
type tunnel struct {
	mu     sync.Mutex
	nat    map[string]*net.UDPConn
	closed bool
	wg     sync.WaitGroup
}

func (tn *tunnel) HandleTCPConn(conn net.Conn, md *mihomoC.Metadata) {
	defer conn.Close()
	var d net.Dialer
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	c, err := d.DialContext(ctx, "tcp", md.RemoteAddress())
	cancel()
	if err != nil {
		return
	}
	relay(conn, c, 32<<10)
}

func (tn *tunnel) HandleUDPPacket(pkt mihomoC.UDPPacket, md *mihomoC.Metadata) {
	defer pkt.Drop()
	dst := md.UDPAddr()
	if dst == nil {
		return
	}
	key := pkt.LocalAddr().String()
	tn.mu.Lock()
	if tn.closed {
		tn.mu.Unlock()
		return
	}
	out := tn.nat[key]
	if out == nil {
		var err error
		out, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			tn.mu.Unlock()
			return
		}
		tn.nat[key] = out
		tn.wg.Add(1)
		go func() {
			defer tn.wg.Done()
			defer func() {
				tn.mu.Lock()
				delete(tn.nat, key)
				tn.mu.Unlock()
				out.Close()
			}()
			buf := make([]byte, 65535)
			for {
				n, from, err := out.ReadFromUDP(buf)
				if err != nil {
					return
				}
				if _, err := pkt.WriteBack(buf[:n], from); err != nil {
					return
				}
			}
		}()
	}
	tn.mu.Unlock()
	out.WriteToUDP(pkt.Data(), dst)
}

func (tn *tunnel) NatTable() mihomoC.NatTable { return nil }

func (tn *tunnel) close() {
	tn.mu.Lock()
	tn.closed = true
	for _, c := range tn.nat {
		c.Close()
	}
	tn.mu.Unlock()
	tn.wg.Wait()
}

type mihomoServer struct {
	l *mihomolistener.Listener
}

func (s *mihomoServer) Addr() string { return s.l.AddrList()[0].String() }

func startMihomoServer(t testing.TB, scheme string) *mihomoServer {
	t.Helper()
	cert := certificate(t)
	tn := &tunnel{nat: map[string]*net.UDPConn{}}
	l, err := mihomolistener.New(mihomoconfig.AnyTLSServer{
		Enable:        true,
		Listen:        "127.0.0.1:0",
		Users:         map[string]string{"user": password},
		Certificate:   cert.certPEM,
		PrivateKey:    cert.keyPEM,
		PaddingScheme: scheme,
	}, tn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		l.Close()
		tn.close()
	})
	return &mihomoServer{l: l}
}

type mihomoClient struct {
	c *mihomoanytls.Client
}

func (c *mihomoClient) MaxWrite() int { return peerMaxWrite }

func (c *mihomoClient) Dial(ctx context.Context, dest netip.AddrPort) (net.Conn, error) {
	return c.c.CreateProxy(ctx, mM.SocksaddrFromNetIP(dest))
}

func (c *mihomoClient) DialFqdn(ctx context.Context, host string, port uint16) (net.Conn, error) {
	return c.c.CreateProxy(ctx, mM.Socksaddr{Fqdn: host, Port: port})
}

// ListenUDP does what mihomo's anytls proxy does: a stream to the UoT v2 magic address,
// wrapped by uot.NewLazyConn in packet (non-connect) mode.
func (c *mihomoClient) ListenUDP(ctx context.Context, dest netip.AddrPort) (net.PacketConn, error) {
	conn, err := c.c.CreateProxy(ctx, muot.RequestDestination(2))
	if err != nil {
		return nil, err
	}
	return muot.NewLazyConn(conn, muot.Request{Destination: mM.SocksaddrFromNetIP(dest)}), nil
}

func newMihomoClient(t testing.TB, addr string) *mihomoClient {
	t.Helper()
	c := testpeer.MihomoClient(password, netip.MustParseAddrPort(addr))
	t.Cleanup(func() { c.Close() })
	return &mihomoClient{c: c}
}

func mihomoServerFactory(t testing.TB) server { return startMihomoServer(t, "") }
func mihomoClientFactory(t testing.TB, addr string) client {
	return newMihomoClient(t, addr)
}
