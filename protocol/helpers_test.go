package protocol

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestMain fails the package if any goroutine outlives the tests: every session, stream, client
// and server started by a test must have been torn down.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// ---------------------------------------------------------------------------------------------
// Connections for observing and breaking the wire.

// recConn records every Write made on it, one entry per call: each entry is one "packet" in
// the sense of spec §6 (one write to the TLS connection).
type recConn struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
}

func (c *recConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	c.writes = append(c.writes, bytes.Clone(b))
	c.mu.Unlock()
	return c.Conn.Write(b)
}

// Writes returns a copy of the writes recorded so far.
func (c *recConn) Writes() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]byte(nil), c.writes...)
}

// Bytes returns everything written so far.
func (c *recConn) Bytes() []byte {
	return bytes.Join(c.Writes(), nil)
}

// faultConn can be switched into failure modes that a real network produces silently.
type faultConn struct {
	net.Conn
	mode      atomic.Int32
	closed    chan struct{}
	closeOnce sync.Once
}

const (
	faultNone      = iota
	faultBlackhole // writes are swallowed, reads never deliver again
	faultReset     // writes fail as on a reset connection, reads never deliver again
)

func newFaultConn(c net.Conn) *faultConn { return &faultConn{Conn: c, closed: make(chan struct{})} }

func (c *faultConn) Read(b []byte) (int, error) {
	if c.mode.Load() != faultNone {
		<-c.closed
		return 0, net.ErrClosed
	}
	n, err := c.Conn.Read(b)
	if c.mode.Load() != faultNone {
		<-c.closed
		return 0, net.ErrClosed
	}
	return n, err
}

func (c *faultConn) Write(b []byte) (int, error) {
	switch c.mode.Load() {
	case faultBlackhole:
		return len(b), nil
	case faultReset:
		return 0, &net.OpError{Op: "write", Net: "tcp", Err: syscall.ECONNRESET}
	}
	return c.Conn.Write(b)
}

func (c *faultConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// ---------------------------------------------------------------------------------------------
// Frames on a recorded wire.

type rawFrame struct {
	FrameHeader
	Data []byte
}

func (f rawFrame) String() string {
	return fmt.Sprintf("%v(sid=%d len=%d)", f.Cmd, f.StreamID, f.Length)
}

// parseFrames decodes a byte stream of whole frames.
func parseFrames(t testing.TB, b []byte) []rawFrame {
	t.Helper()
	var out []rawFrame
	for len(b) > 0 {
		if len(b) < HeaderSize {
			t.Fatalf("wire ends inside a frame header: %d bytes left", len(b))
		}
		h := ParseFrameHeader(b)
		if len(b) < HeaderSize+int(h.Length) {
			t.Fatalf("wire ends inside frame %v: %d data bytes left", h.Cmd, len(b)-HeaderSize)
		}
		out = append(out, rawFrame{h, b[HeaderSize : HeaderSize+int(h.Length)]})
		b = b[HeaderSize+int(h.Length):]
	}
	return out
}

// clientFrames decodes what a client wrote on one connection: the authentication request,
// then frames.
func clientFrames(t testing.TB, wire []byte) (padding0 int, frames []rawFrame) {
	t.Helper()
	if len(wire) < authMinSize {
		t.Fatalf("client wrote %d bytes, less than an authentication request", len(wire))
	}
	padding0 = int(binary.BigEndian.Uint16(wire[32:34]))
	return padding0, parseFrames(t, wire[authMinSize+padding0:])
}

func countCmd(frames []rawFrame, cmd Command) int {
	n := 0
	for _, f := range frames {
		if f.Cmd == cmd {
			n++
		}
	}
	return n
}

// ---------------------------------------------------------------------------------------------
// An in-memory client and server connected through net.Pipe: works inside synctest bubbles.

type memPair struct {
	t      testing.TB
	srv    *Server
	client *Client

	// wrap, if set, wraps each client-side connection (before recording).
	wrap func(net.Conn) net.Conn

	mu      sync.Mutex
	conns   []*recConn   // client side of each dialled connection, in dial order
	faults  []*faultConn // the fault layer of each dialled connection
	sconns  []*recConn   // server side of each connection
	serveWG sync.WaitGroup
	dials   atomic.Int32
	errs    chan error // ServeConn results
}

func newMemPair(t testing.TB, scfg ServerConfig, ccfg ClientConfig) *memPair {
	t.Helper()
	if scfg.Users == nil {
		scfg.Users = []User{{Name: "alice", Password: "pw-alice"}}
	}
	if scfg.Handler == nil {
		scfg.Handler = echoHandler
	}
	srv, err := NewServer(scfg)
	if err != nil {
		t.Fatal(err)
	}
	p := &memPair{t: t, srv: srv, errs: make(chan error, 100)}
	if ccfg.Password == "" {
		ccfg.Password = "pw-alice"
	}
	if ccfg.Dial == nil {
		ccfg.Dial = p.dial
	}
	c, err := NewClient(ccfg)
	if err != nil {
		t.Fatal(err)
	}
	p.client = c
	t.Cleanup(p.close)
	return p
}

func (p *memPair) dial(ctx context.Context) (net.Conn, error) {
	p.dials.Add(1)
	cc, sc := net.Pipe()
	src := &recConn{Conn: sc}
	p.serveWG.Add(1)
	go func() {
		defer p.serveWG.Done()
		err := p.srv.ServeConn(context.Background(), src)
		select {
		case p.errs <- err:
		default:
		}
	}()
	fc := newFaultConn(cc)
	var conn net.Conn = fc
	if p.wrap != nil {
		conn = p.wrap(conn)
	}
	rc := &recConn{Conn: conn}
	p.mu.Lock()
	p.conns = append(p.conns, rc)
	p.faults = append(p.faults, fc)
	p.sconns = append(p.sconns, src)
	p.mu.Unlock()
	return rc, nil
}

func (p *memPair) conn(i int) *recConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if i >= len(p.conns) {
		p.t.Fatalf("connection %d was never dialled (%d dials)", i, len(p.conns))
	}
	return p.conns[i]
}

func (p *memPair) fault(i int) *faultConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.faults[i]
}

func (p *memPair) serverConn(i int) *recConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sconns[i]
}

func (p *memPair) close() {
	p.client.Close()
	p.srv.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.serveWG.Wait()
}

// open opens a stream and fails the test on error.
func (p *memPair) open(dest string) *Stream {
	p.t.Helper()
	st, err := p.client.OpenStream(context.Background(), mustAddr(p.t, dest))
	if err != nil {
		p.t.Fatalf("OpenStream(%s): %v", dest, err)
	}
	return st
}

// echo writes msg into st and reads it back.
func echo(t testing.TB, st net.Conn, msg []byte) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		_, err := st.Write(msg)
		errc <- err
	}()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(st, got); err != nil {
		t.Fatalf("echo read: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("echo write: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo mismatch: got %d bytes %.40q, want %.40q", len(got), got, msg)
	}
}

// ---------------------------------------------------------------------------------------------
// A hand-written peer speaking raw frames, for behaviour our own peer never shows.

type rawPeer struct {
	t      testing.TB
	conn   net.Conn
	frames chan rawFrame
	done   chan struct{} // closed when the reader stops
	err    error         // why the reader stopped (valid after done)
	wmu    sync.Mutex
	// autoHeart answers cmdHeartRequest without passing it on to the test.
	autoHeart atomic.Bool
}

// newRawPeer starts reading frames from conn. If auth is true, it first reads and checks an
// authentication request.
func newRawPeer(t testing.TB, conn net.Conn, auth bool) *rawPeer {
	p := &rawPeer{t: t, conn: conn, frames: make(chan rawFrame, 1024), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		defer close(p.frames)
		if auth {
			var req [authMinSize]byte
			if _, err := io.ReadFull(conn, req[:]); err != nil {
				p.err = err
				return
			}
			n := binary.BigEndian.Uint16(req[32:])
			if _, err := io.CopyN(io.Discard, conn, int64(n)); err != nil {
				p.err = err
				return
			}
		}
		var hdr [HeaderSize]byte
		for {
			if _, err := io.ReadFull(conn, hdr[:]); err != nil {
				p.err = err
				return
			}
			h := ParseFrameHeader(hdr[:])
			data := make([]byte, h.Length)
			if _, err := io.ReadFull(conn, data); err != nil {
				p.err = err
				return
			}
			if h.Cmd == CmdWaste {
				continue
			}
			if h.Cmd == CmdHeartRequest && p.autoHeart.Load() {
				go p.write(CmdHeartResponse, h.StreamID, nil)
				continue
			}
			p.frames <- rawFrame{h, data}
		}
	}()
	return p
}

// next returns the next non-padding frame, failing the test after wait.
func (p *rawPeer) next(wait time.Duration) rawFrame {
	p.t.Helper()
	select {
	case f, ok := <-p.frames:
		if !ok {
			p.t.Fatalf("raw peer: connection ended: %v", p.err)
		}
		return f
	case <-time.After(wait):
		p.t.Fatalf("raw peer: no frame within %v", wait)
	}
	panic("unreachable")
}

// expect returns the next frame with command cmd, skipping the commands in skip.
func (p *rawPeer) expect(cmd Command, wait time.Duration, skip ...Command) rawFrame {
	p.t.Helper()
	for {
		f := p.next(wait)
		if f.Cmd == cmd {
			return f
		}
		skipped := false
		for _, s := range skip {
			skipped = skipped || f.Cmd == s
		}
		if !skipped {
			p.t.Fatalf("raw peer: got %v, want %v", f, cmd)
		}
	}
}

func (p *rawPeer) write(cmd Command, sid uint32, data []byte) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	_, err := p.conn.Write(AppendFrame(nil, cmd, sid, data))
	return err
}

func (p *rawPeer) close() {
	p.conn.Close()
	<-p.done
}

// authRequest returns a client authentication request for password with n bytes of padding0.
func authRequest(password string, n int) []byte {
	h := sha256Sum(password)
	b := append([]byte(nil), h[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(n))
	return append(b, make([]byte, n)...)
}

func sha256Sum(s string) [32]byte { return sha256.Sum256([]byte(s)) }

// clientOpen returns the frames a v2 client sends to open stream sid to dest.
func clientOpen(t testing.TB, settings string, sid uint32, dest string) []byte {
	t.Helper()
	a, err := mustAddr(t, dest).AppendTo(nil)
	if err != nil {
		t.Fatal(err)
	}
	var b []byte
	if settings != "" {
		b = AppendFrame(b, CmdSettings, 0, []byte(settings))
	}
	b = AppendFrame(b, CmdSYN, sid, nil)
	return AppendFrame(b, CmdPSH, sid, a)
}

// waitFor polls cond (real time) until it holds or d passes; for tests outside synctest
// that wait on background goroutines, not on protocol timeouts.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
