package shape

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	anytls "github.com/anytls/sing-anytls"
	mihomolog "github.com/metacubex/mihomo/log"
	mihomoanytls "github.com/metacubex/mihomo/transport/anytls"
	mM "github.com/metacubex/sing/common/metadata"
	M "github.com/sagernet/sing/common/metadata"

	"github.com/anytls-engine/anytls/internal/testcert"
	"github.com/anytls-engine/anytls/internal/testpeer"
	"github.com/anytls-engine/anytls/protocol"
)

func init() {
	mihomolog.SetLevel(mihomolog.SILENT)
}

const password = "shape-password"

// ioTimeout bounds one test's traffic so that a stuck peer fails the test instead of hanging it.
const ioTimeout = 30 * time.Second

// target is the destination every stream names (our server's handler echoes; it dials nothing).
var target = netip.MustParseAddrPort("127.0.0.1:7")

// targetLen is the length of target in SOCKS address form (ATYP, IPv4, port).
const targetLen = 1 + 4 + 2

var (
	certOnce sync.Once
	certVal  tls.Certificate
	certPool *x509.CertPool
	certErr  error
)

func certificate(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	certOnce.Do(func() {
		var certPEM []byte
		certVal, certPEM, _, certErr = testcert.New("localhost", "127.0.0.1")
		if certErr == nil {
			certPool = x509.NewCertPool()
			certPool.AppendCertsFromPEM(certPEM)
		}
	})
	if certErr != nil {
		t.Fatal(certErr)
	}
	return certVal, certPool
}

// serverTLS is the TLS configuration of every server in these tests: TLS 1.3 only, and no
// session tickets, so that the server sends nothing encrypted after its handshake flight but
// what the application writes.
func serverTLS(t testing.TB) *tls.Config {
	cert, _ := certificate(t)
	return &tls.Config{
		Certificates:           []tls.Certificate{cert},
		MinVersion:             tls.VersionTLS13,
		SessionTicketsDisabled: true,
	}
}

func clientTLS(t testing.TB) *tls.Config {
	_, pool := certificate(t)
	return &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS13}
}

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
	return tc, nil
}

// ---------------------------------------------------------------------------------------------
// Plaintext recorder (inside TLS, on the server side): everything the server read, and each
// write it made.

type recorder struct {
	net.Conn
	mu     sync.Mutex
	reads  []byte
	writes [][]byte
}

func (r *recorder) Read(b []byte) (int, error) {
	n, err := r.Conn.Read(b)
	r.mu.Lock()
	r.reads = append(r.reads, b[:n]...)
	r.mu.Unlock()
	return n, err
}

func (r *recorder) Write(b []byte) (int, error) {
	n, err := r.Conn.Write(b)
	r.mu.Lock()
	r.writes = append(r.writes, bytes.Clone(b[:n]))
	r.mu.Unlock()
	return n, err
}

func (r *recorder) snapshot() (reads []byte, writes [][]byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Clone(r.reads), append([][]byte(nil), r.writes...)
}

// ---------------------------------------------------------------------------------------------
// Our server behind the wire proxy.

type rig struct {
	srv   *protocol.Server
	ln    net.Listener
	proxy *wireProxy

	mu    sync.Mutex
	conns map[string]*srvConn // by the remote address the server saw
	wg    sync.WaitGroup
}

type srvConn struct {
	rec  *recorder
	done chan struct{}
}

type rigConfig struct {
	scheme        string // the server's padding scheme; "" is the default
	padDownstream bool
}

// echo is the stream handler: it reports success and sends back everything it reads.
func echo(_ context.Context, st *protocol.Stream) {
	defer st.Close()
	st.Report(nil)
	io.Copy(st, st)
}

func startRig(t *testing.T, cfg rigConfig) *rig {
	t.Helper()
	scfg := protocol.ServerConfig{
		Users:         []protocol.User{{Name: "user", Password: password}},
		Handler:       echo,
		PadDownstream: cfg.padDownstream,
	}
	if cfg.scheme != "" {
		p, err := protocol.ParsePaddingScheme([]byte(cfg.scheme))
		if err != nil {
			t.Fatal(err)
		}
		scfg.PaddingScheme = p
	}
	srv, err := protocol.NewServer(scfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{srv: srv, ln: ln, conns: map[string]*srvConn{}}
	tlsCfg := serverTLS(t)
	ctx, cancel := context.WithCancel(context.Background())
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			sc := &srvConn{done: make(chan struct{})}
			r.mu.Lock()
			r.conns[raw.RemoteAddr().String()] = sc
			r.mu.Unlock()
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				defer close(sc.done)
				tc := tls.Server(raw, tlsCfg)
				hctx, hcancel := context.WithTimeout(ctx, ioTimeout)
				err := tc.HandshakeContext(hctx)
				hcancel()
				if err != nil {
					raw.Close()
					return
				}
				rec := &recorder{Conn: tc}
				r.mu.Lock()
				sc.rec = rec
				r.mu.Unlock()
				srv.ServeConn(ctx, rec)
			}()
		}
	}()
	r.proxy = startWireProxy(t, ln.Addr().String())
	t.Cleanup(func() {
		ln.Close()
		srv.Close()
		cancel()
		r.wg.Wait()
	})
	return r
}

// Addr is where clients connect: the proxy.
func (r *rig) Addr() string { return r.proxy.Addr() }

// session is what one client connection looked like, once it ended.
type session struct {
	up, down []int    // plaintext record sizes on the wire
	reads    []byte   // everything the server read (the client's plaintext)
	writes   [][]byte // the server's writes
}

// session waits for the i-th proxied connection and the server's side of it to end and returns
// what was recorded. A trailing 2-byte record that the server did not read or write is the TLS
// close_notify alert and is dropped.
func (r *rig) session(t *testing.T, i int) session {
	t.Helper()
	wc := r.proxy.conn(t, i)
	up, down := wc.result(t)
	r.mu.Lock()
	sc := r.conns[wc.upLocal]
	r.mu.Unlock()
	if sc == nil {
		t.Fatalf("server never saw proxied connection %d", i)
	}
	select {
	case <-sc.done:
	case <-time.After(ioTimeout):
		t.Fatal("server side of the connection did not end")
	}
	if sc.rec == nil {
		t.Fatal("TLS handshake failed on the server side")
	}
	var s session
	s.reads, s.writes = sc.rec.snapshot()
	s.up = trimCloseNotify(t, "client to server", up, len(s.reads))
	written := 0
	for _, w := range s.writes {
		written += len(w)
	}
	s.down = trimCloseNotify(t, "server to client", down, written)
	return s
}

func trimCloseNotify(t *testing.T, dir string, recs []int, plain int) []int {
	t.Helper()
	sum := 0
	for _, n := range recs {
		sum += n
	}
	if sum == plain+2 && len(recs) > 0 && recs[len(recs)-1] == 2 {
		recs, sum = recs[:len(recs)-1], sum-2
	}
	if sum != plain {
		t.Fatalf("%s: the wire's records hold %d bytes of plaintext %v, the endpoint has %d: the overhead derivation is wrong", dir, sum, recs, plain)
	}
	return recs
}

// ---------------------------------------------------------------------------------------------
// Decoding what a client sent (from the server's reads), to compute packet lengths.

type frame struct {
	cmd  byte
	sid  uint32
	data []byte
}

// parseFrames splits b into frames; an incomplete frame at the end is an error.
func parseFrames(b []byte) ([]frame, error) {
	var out []frame
	for len(b) > 0 {
		if len(b) < 7 {
			return out, fmt.Errorf("%d bytes left, less than a frame header", len(b))
		}
		n := int(binary.BigEndian.Uint16(b[5:7]))
		if len(b) < 7+n {
			return out, fmt.Errorf("frame of %d bytes cut after %d", n, len(b)-7)
		}
		out = append(out, frame{cmd: b[0], sid: binary.BigEndian.Uint32(b[1:5]), data: b[7 : 7+n]})
		b = b[7+n:]
	}
	return out, nil
}

const (
	cmdWaste    = 0
	cmdSYN      = 1
	cmdPSH      = 2
	cmdFIN      = 3
	cmdSettings = 4
)

// clientFrames decodes a client's plaintext: the authentication (checked against the password)
// and the frames after it.
func clientFrames(t *testing.T, b []byte) (padding0 int, frames []frame) {
	t.Helper()
	if len(b) < 34 {
		t.Fatalf("client sent %d bytes", len(b))
	}
	if h := sha256.Sum256([]byte(password)); !bytes.Equal(b[:32], h[:]) {
		t.Fatal("client's plaintext does not start with the password hash")
	}
	padding0 = int(binary.BigEndian.Uint16(b[32:34]))
	frames, err := parseFrames(b[34+padding0:])
	if err != nil {
		t.Fatalf("client's frames: %v", err)
	}
	return padding0, frames
}

// settingsLen returns the framed length of the client's settings frame (its first frame).
func settingsLen(t *testing.T, frames []frame) int {
	t.Helper()
	if len(frames) == 0 || frames[0].cmd != cmdSettings {
		t.Fatal("the client's first frame is not cmdSettings")
	}
	return 7 + len(frames[0].data)
}

// serverFrames decodes a server's writes into frames without cmdWaste (padding), each marked
// control or data.
func serverFrames(t *testing.T, writes [][]byte) []frameGroupItem {
	t.Helper()
	frames, err := parseFrames(bytes.Join(writes, nil))
	if err != nil {
		t.Fatalf("server's frames: %v", err)
	}
	var out []frameGroupItem
	for _, f := range frames {
		if f.cmd == cmdWaste {
			continue
		}
		out = append(out, frameGroupItem{n: 7 + len(f.data), control: f.cmd != cmdPSH})
	}
	return out
}

// ---------------------------------------------------------------------------------------------
// Clients

// shapeClient opens proxied connections through one client object.
type shapeClient interface {
	open(ctx context.Context) (net.Conn, error)
	close()
}

type ourClient struct{ c *protocol.Client }

func (c ourClient) open(ctx context.Context) (net.Conn, error) {
	return c.c.OpenStream(ctx, protocol.AddrFromAddrPort(target))
}
func (c ourClient) close() { c.c.Close() }

// newOurClient returns our client with the scheme text ("" is the default). Heartbeats are off:
// a probe would be one more packet in the middle of what the test counts.
func newOurClient(t *testing.T, addr, scheme string) ourClient {
	t.Helper()
	tlsCfg := clientTLS(t)
	cfg := protocol.ClientConfig{
		Password:          password,
		HeartbeatInterval: -1,
		Dial: func(ctx context.Context) (net.Conn, error) {
			return dialTLS(ctx, addr, tlsCfg)
		},
	}
	if scheme != "" {
		p, err := protocol.ParsePaddingScheme([]byte(scheme))
		if err != nil {
			t.Fatal(err)
		}
		cfg.PaddingScheme = p
	}
	c, err := protocol.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return ourClient{c}
}

type singClient struct{ c *anytls.Client }

func (c singClient) open(ctx context.Context) (net.Conn, error) {
	return c.c.CreateProxy(ctx, M.SocksaddrFromNetIP(target))
}
func (c singClient) close() { c.c.Close() }

// newSingClient returns sing-anytls' client (what sing-box 1.14.1 runs), dialling TLS with
// Go's crypto/tls as sing-box's standard TLS does.
func newSingClient(t *testing.T, addr string) singClient {
	t.Helper()
	tlsCfg := clientTLS(t)
	c, err := testpeer.SingClient(password, func(ctx context.Context) (net.Conn, error) {
		return dialTLS(ctx, addr, tlsCfg)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return singClient{c}
}

type mihomoClient struct{ c *mihomoanytls.Client }

func (c mihomoClient) open(ctx context.Context) (net.Conn, error) {
	return c.c.CreateProxy(ctx, mM.SocksaddrFromNetIP(target))
}
func (c mihomoClient) close() { c.c.Close() }

// newMihomoClient returns mihomo's anytls client; it does its own TLS (mihomo's crypto/tls
// fork) over the TCP connection it dials.
func newMihomoClient(t *testing.T, addr string) mihomoClient {
	t.Helper()
	c := testpeer.MihomoClient(password, netip.MustParseAddrPort(addr))
	t.Cleanup(func() { c.Close() })
	return mihomoClient{c}
}

// ---------------------------------------------------------------------------------------------
// Traffic

// runStream opens a stream, writes each size in turn (one write each), reads the echo of each
// before the next write, and closes the stream.
func runStream(t *testing.T, c shapeClient, writes []int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	conn, err := c.open(ctx)
	if err != nil {
		t.Fatalf("open stream: %v", err)
	}
	conn.SetDeadline(time.Now().Add(ioTimeout))
	for _, n := range writes {
		msg := make([]byte, n)
		rand.Read(msg)
		if _, err := conn.Write(msg); err != nil {
			t.Fatalf("write %d bytes: %v", n, err)
		}
		got := make([]byte, n)
		if _, err := io.ReadFull(conn, got); err != nil {
			t.Fatalf("read the echo of %d bytes: %v", n, err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("echo of %d bytes differs", n)
		}
	}
	if err := conn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		t.Logf("close stream: %v", err)
	}
}

// echoOnce writes n random bytes to conn and reads them back.
func echoOnce(t *testing.T, conn net.Conn, n int) {
	t.Helper()
	conn.SetDeadline(time.Now().Add(ioTimeout))
	msg := make([]byte, n)
	rand.Read(msg)
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, n)
	if _, err := io.ReadFull(conn, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo of %d bytes: %v", n, err)
	}
}

const cmdUpdatePaddingScheme = 6

// waitPush returns once the client of the i-th connection has processed the server's
// cmdUpdatePaddingScheme: it echoes through conn until the server has written the push, then
// once more (the client reads frames in order, so the push is applied before that echo).
func (r *rig) waitPush(t *testing.T, i int, conn net.Conn) {
	t.Helper()
	wc := r.proxy.conn(t, i)
	for range 1000 {
		echoOnce(t, conn, 10)
		r.mu.Lock()
		sc := r.conns[wc.upLocal]
		var rec *recorder
		if sc != nil {
			rec = sc.rec
		}
		r.mu.Unlock()
		if rec == nil {
			continue
		}
		_, writes := rec.snapshot()
		frames, _ := parseFrames(bytes.Join(writes, nil))
		for _, f := range frames {
			if f.cmd == cmdUpdatePaddingScheme {
				echoOnce(t, conn, 10)
				return
			}
		}
	}
	t.Fatal("the server never pushed its padding scheme")
}
