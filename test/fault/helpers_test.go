package fault

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/anytls-engine/anytls/internal/testcert"
	"github.com/anytls-engine/anytls/protocol"
)

// TestMain fails the package if any goroutine outlives the tests.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	testUser     = "alice"
	testPassword = "correct horse battery staple"
)

// soak reports whether the long forms run (make soak).
func soak() bool { return os.Getenv("ANYTLS_SOAK") != "" }

var (
	certOnce sync.Once
	certVal  tls.Certificate
	certErr  error
)

func certificate(t testing.TB) tls.Certificate {
	t.Helper()
	certOnce.Do(func() { certVal, _, _, certErr = testcert.New("localhost", "127.0.0.1") })
	if certErr != nil {
		t.Fatal(certErr)
	}
	return certVal
}

// serverTLS and clientTLS are the real TLS 1.3 stack, X25519 only (cheap handshakes for the
// thousand-connection scenarios), no session tickets (nothing written after the handshake).
func serverTLS(t testing.TB) *tls.Config {
	return &tls.Config{
		Certificates:           []tls.Certificate{certificate(t)},
		MinVersion:             tls.VersionTLS13,
		CurvePreferences:       []tls.CurveID{tls.X25519},
		SessionTicketsDisabled: true,
	}
}

func clientTLS() *tls.Config {
	return &tls.Config{
		ServerName:         "localhost",
		InsecureSkipVerify: true, // throwaway certificate; its fake-time validity is irrelevant
		MinVersion:         tls.VersionTLS13,
		CurvePreferences:   []tls.CurveID{tls.X25519},
	}
}

// testLogger writes engine diagnostics at warn level and above into the test log when -v.
func testLogger(t testing.TB) *slog.Logger {
	if !testing.Verbose() {
		return nil
	}
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(b []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(b, "\n")))
	return len(b), nil
}

// ---------------------------------------------------------------------------------------------
// Handlers. The destination host selects the behaviour: "echo" copies back, "source" writes
// port × 1 KiB... see handler.

// handler serves streams by destination:
//   - echo.test:N    echoes everything back;
//   - source.test:N  writes without end (N is ignored) until the stream fails;
//   - sink.test:N    reads and discards.
func handler(ctx context.Context, st *protocol.Stream) {
	defer st.Close()
	st.Report(nil)
	switch st.Destination().Fqdn {
	case "source.test":
		buf := make([]byte, 32<<10)
		for {
			if _, err := st.Write(buf); err != nil {
				return
			}
		}
	case "sink.test":
		io.Copy(io.Discard, st)
	default:
		io.Copy(st, st)
	}
}

var (
	echoDest   = protocol.Addr{Fqdn: "echo.test", Port: 7}
	sourceDest = protocol.Addr{Fqdn: "source.test", Port: 19}
)

func serverConfig(t testing.TB, cfg protocol.ServerConfig) protocol.ServerConfig {
	if cfg.Users == nil {
		cfg.Users = []protocol.User{{Name: testUser, Password: testPassword}}
	}
	if cfg.Handler == nil {
		cfg.Handler = handler
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	return cfg
}

// ---------------------------------------------------------------------------------------------
// A world on net.Pipe: real TLS over in-memory pipes, so it runs inside synctest bubbles with
// fake time. Every client connection has a fault.Conn under its TLS.

type pipeWorld struct {
	t    testing.TB
	srv  *protocol.Server
	scfg *tls.Config
	ctx  context.Context
	stop context.CancelFunc

	mu      sync.Mutex
	conns   []*Conn // client side fault layer, in dial order
	sconns  []*Conn // server side fault layer, in dial order
	raw     []net.Conn
	serveWG sync.WaitGroup
	down    atomic.Bool // dials fail, as to a server that is not listening
	served  atomic.Int64
}

func newPipeWorld(t testing.TB, cfg protocol.ServerConfig) *pipeWorld {
	t.Helper()
	srv, err := protocol.NewServer(serverConfig(t, cfg))
	if err != nil {
		t.Fatal(err)
	}
	w := &pipeWorld{t: t, srv: srv, scfg: serverTLS(t)}
	w.ctx, w.stop = context.WithCancel(context.Background())
	t.Cleanup(w.close)
	return w
}

// serve runs the server on the far end of a new pipe (under a fault.Conn) and returns the
// near end.
func (w *pipeWorld) serve() net.Conn {
	cc, sc := net.Pipe()
	sf := New(sc)
	w.mu.Lock()
	w.raw = append(w.raw, cc, sc)
	w.sconns = append(w.sconns, sf)
	w.mu.Unlock()
	w.serveWG.Add(1)
	go func() {
		defer w.serveWG.Done()
		w.srv.ServeConn(w.ctx, tls.Server(sf, w.scfg))
		w.served.Add(1)
	}()
	return cc
}

// Dial is a protocol.ClientConfig.Dial: a TLS connection over a fault.Conn over a pipe.
func (w *pipeWorld) Dial(ctx context.Context) (net.Conn, error) {
	if w.down.Load() {
		return nil, &net.OpError{Op: "dial", Net: "pipe", Err: errors.New("connection refused")}
	}
	fc := New(w.serve())
	w.mu.Lock()
	w.conns = append(w.conns, fc)
	w.mu.Unlock()
	tc := tls.Client(fc, clientTLS())
	if err := tc.HandshakeContext(ctx); err != nil {
		tc.Close()
		return nil, err
	}
	return tc, nil
}

func (w *pipeWorld) conn(i int) *Conn {
	w.mu.Lock()
	defer w.mu.Unlock()
	if i >= len(w.conns) {
		w.t.Fatalf("connection %d never dialled (%d dials)", i, len(w.conns))
	}
	return w.conns[i]
}

// sconn returns the server side fault layer of connection i (every pipe served, raw ones too).
func (w *pipeWorld) sconn(i int) *Conn {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sconns[i]
}

func (w *pipeWorld) dials() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.conns)
}

func (w *pipeWorld) client(t testing.TB, cfg protocol.ClientConfig) *protocol.Client {
	t.Helper()
	if cfg.Dial == nil {
		cfg.Dial = w.Dial
	}
	if cfg.Password == "" {
		cfg.Password = testPassword
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	c, err := protocol.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (w *pipeWorld) close() {
	w.srv.Close()
	w.stop()
	w.mu.Lock()
	for _, c := range w.raw {
		c.Close()
	}
	w.mu.Unlock()
	w.serveWG.Wait()
}

// ---------------------------------------------------------------------------------------------
// A world on loopback TCP: real sockets, real TLS, real time.

type tcpWorld struct {
	t    testing.TB
	cfg  protocol.ServerConfig
	addr string

	mu     sync.Mutex
	srv    *protocol.Server
	ln     net.Listener
	serve  chan struct{} // closed when Serve returned
	conns  []*Conn
	faultF func(*Conn) // applied to each new client connection
}

func newTCPWorld(t testing.TB, cfg protocol.ServerConfig) *tcpWorld {
	t.Helper()
	w := &tcpWorld{t: t, cfg: serverConfig(t, cfg)}
	w.start("127.0.0.1:0")
	t.Cleanup(w.stop)
	return w
}

// start runs a new server on addr.
func (w *tcpWorld) start(addr string) {
	w.t.Helper()
	srv, err := protocol.NewServer(w.cfg)
	if err != nil {
		w.t.Fatal(err)
	}
	var ln net.Listener
	for i := 0; ; i++ { // after a restart the port may linger briefly
		ln, err = tls.Listen("tcp", addr, serverTLS(w.t))
		if err == nil || i == 100 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		w.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(context.Background(), ln)
	}()
	w.mu.Lock()
	w.srv, w.ln, w.serve, w.addr = srv, ln, done, ln.Addr().String()
	w.mu.Unlock()
}

// stop closes the listener and every session of the running server.
func (w *tcpWorld) stop() {
	w.mu.Lock()
	srv, ln, done := w.srv, w.ln, w.serve
	w.srv = nil
	w.mu.Unlock()
	if srv == nil {
		return
	}
	srv.Close()
	ln.Close()
	<-done
}

// restart stops the server and starts a new one on the same port.
func (w *tcpWorld) restart() {
	w.stop()
	w.mu.Lock()
	addr := w.addr
	w.mu.Unlock()
	w.start(addr)
}

func (w *tcpWorld) Dial(ctx context.Context) (net.Conn, error) {
	w.mu.Lock()
	addr := w.addr
	w.mu.Unlock()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	fc := New(c)
	w.mu.Lock()
	w.conns = append(w.conns, fc)
	f := w.faultF
	w.mu.Unlock()
	if f != nil {
		f(fc)
	}
	tc := tls.Client(fc, clientTLS())
	if err := tc.HandshakeContext(ctx); err != nil {
		tc.Close()
		return nil, err
	}
	return tc, nil
}

func (w *tcpWorld) conn(i int) *Conn {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.conns[i]
}

func (w *tcpWorld) client(t testing.TB, cfg protocol.ClientConfig) *protocol.Client {
	t.Helper()
	if cfg.Dial == nil {
		cfg.Dial = w.Dial
	}
	if cfg.Password == "" {
		cfg.Password = testPassword
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	c, err := protocol.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// ---------------------------------------------------------------------------------------------
// Traffic.

// echoOnce opens a stream to the echo handler, sends n random bytes and checks them back.
func echoOnce(ctx context.Context, c *protocol.Client, n int) error {
	st, err := c.OpenStream(ctx, echoDest)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer st.Close()
	return echoOn(st, n, rand.Uint64())
}

// echoOn writes n bytes generated from seed into st and checks that the same bytes, in order,
// come back (sha256 over both directions).
func echoOn(st net.Conn, n int, seed uint64) error {
	data := make([]byte, n)
	fill(data, seed)
	want := sha256.Sum256(data)
	werr := make(chan error, 1)
	go func() {
		for off := 0; off < len(data); {
			k := min(len(data)-off, 1+int(seed%(48<<10)))
			if _, err := st.Write(data[off : off+k]); err != nil {
				werr <- err
				return
			}
			off += k
		}
		werr <- nil
	}()
	h := sha256.New()
	got, err := io.CopyN(h, st, int64(n))
	if err != nil {
		<-werr
		return fmt.Errorf("read back %d of %d bytes: %w", got, n, err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if !bytes.Equal(h.Sum(nil), want[:]) {
		return fmt.Errorf("%d bytes came back altered or reordered", n)
	}
	return nil
}

// fill writes a deterministic pseudo-random sequence from seed into b.
func fill(b []byte, seed uint64) {
	r := rand.NewChaCha8([32]byte(binary.LittleEndian.AppendUint64(make([]byte, 24), seed)))
	r.Read(b)
}

// ---------------------------------------------------------------------------------------------
// Raw access to a server session: the auth request and frames, written by the test.

func authRequest(password string, pad int) []byte {
	h := sha256.Sum256([]byte(password))
	b := append([]byte(nil), h[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(pad))
	return append(b, make([]byte, pad)...)
}

func frame(cmd protocol.Command, sid uint32, data []byte) []byte {
	return protocol.AppendFrame(nil, cmd, sid, data)
}

func settingsFrame(text string) []byte { return frame(protocol.CmdSettings, 0, []byte(text)) }

// v2Settings is what a v2 client of ours would announce, without extensions.
const v2Settings = "v=2\nclient=\npadding-md5="

func addrBytes(a protocol.Addr) []byte {
	b, err := a.AppendTo(nil)
	if err != nil {
		panic(err)
	}
	return b
}

type rawFrame struct {
	protocol.FrameHeader
	Data []byte
}

// frameReader reads frames from conn in a goroutine, dropping cmdWaste.
type frameReader struct {
	frames chan rawFrame
	done   chan struct{}
	err    error
}

func readFrames(conn net.Conn) *frameReader {
	r := &frameReader{frames: make(chan rawFrame, 4096), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		defer close(r.frames)
		var hdr [protocol.HeaderSize]byte
		for {
			if _, err := io.ReadFull(conn, hdr[:]); err != nil {
				r.err = err
				return
			}
			h := protocol.ParseFrameHeader(hdr[:])
			data := make([]byte, h.Length)
			if _, err := io.ReadFull(conn, data); err != nil {
				r.err = err
				return
			}
			if h.Cmd != protocol.CmdWaste {
				r.frames <- rawFrame{h, data}
			}
		}
	}()
	return r
}

// next returns the next frame, or ok=false when the connection ended or wait passed.
func (r *frameReader) next(wait time.Duration) (rawFrame, bool) {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case f, ok := <-r.frames:
		return f, ok
	case <-t.C:
		return rawFrame{}, false
	}
}

// until returns the first frame with cmd (and sid, unless sid is anySID), or ok=false.
func (r *frameReader) until(cmd protocol.Command, sid uint32, wait time.Duration) (rawFrame, bool) {
	deadline := time.Now().Add(wait)
	for {
		f, ok := r.next(time.Until(deadline))
		if !ok {
			return f, false
		}
		if f.Cmd == cmd && (sid == anySID || f.StreamID == sid) {
			return f, true
		}
	}
}

const anySID = ^uint32(0)

// ---------------------------------------------------------------------------------------------
// Metrics.

type metrics struct {
	mu     sync.Mutex
	limits map[string]int
	counts map[string]int
}

func newMetrics() *metrics { return &metrics{limits: map[string]int{}, counts: map[string]int{}} }

func (m *metrics) inc(k string) { m.mu.Lock(); m.counts[k]++; m.mu.Unlock() }

func (m *metrics) SessionOpened(string)                  { m.inc("session_opened") }
func (m *metrics) SessionClosed(string)                  { m.inc("session_closed") }
func (m *metrics) StreamOpened(string)                   { m.inc("stream_opened") }
func (m *metrics) BytesTransferred(string, int64, int64) {}
func (m *metrics) AuthFailed()                           { m.inc("auth_failed") }
func (m *metrics) Fallback()                             { m.inc("fallback") }
func (m *metrics) LimitReached(l string) {
	m.mu.Lock()
	m.limits[l]++
	m.mu.Unlock()
}

func (m *metrics) limit(l string) int { m.mu.Lock(); defer m.mu.Unlock(); return m.limits[l] }
func (m *metrics) count(k string) int { m.mu.Lock(); defer m.mu.Unlock(); return m.counts[k] }

// ---------------------------------------------------------------------------------------------
// Process figures.

// rssBytes returns the resident set size from /proc/self/statm.
func rssBytes(t testing.TB) int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		t.Fatalf("no /proc/self/statm: %v", err)
	}
	f := bytes.Fields(b)
	pages, _ := strconv.ParseInt(string(f[1]), 10, 64)
	return pages * int64(os.Getpagesize())
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC() // the second empties sync.Pool's victim cache
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

const mib = 1 << 20

// waitUntil polls cond in real time until it holds or d passes; for waiting on background
// goroutines to finish, never on a protocol timeout.
func waitUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
	return true
}
