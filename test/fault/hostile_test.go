package fault

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/anytls-engine/anytls/protocol"
)

// logRecorder keeps every log record, so a test can assert that the engine never had to
// recover from a panic (the session reader logs "recovered from panic" when it does).
type logRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s=%v", a.Key, a.Value); return true })
	l.mu.Lock()
	l.msgs = append(l.msgs, b.String())
	l.mu.Unlock()
	return nil
}

func (l *logRecorder) find(sub string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, m := range l.msgs {
		if strings.Contains(m, sub) {
			out = append(out, m)
		}
	}
	return out
}

// rawClient is a hand-written client: real TLS over a pipe to the server, frames written by
// the test.
type rawClient struct {
	t    testing.TB
	conn *tls.Conn
	fr   *frameReader
	wmu  sync.Mutex
}

// rawDial connects to w's server over TLS and sends pre (normally the authentication request
// and settings) as the first write.
func (w *pipeWorld) rawDial(t testing.TB, pre ...[]byte) *rawClient {
	t.Helper()
	fc := New(w.serve())
	tc := tls.Client(fc, clientTLS())
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	r := &rawClient{t: t, conn: tc}
	if len(pre) > 0 {
		if err := r.send(pre...); err != nil {
			t.Fatal(err)
		}
	}
	r.fr = readFrames(tc)
	t.Cleanup(func() {
		tc.Close()
		for range r.fr.frames { // unblock a reader stuck on a full channel
		}
	})
	return r
}

// send writes the frames as one write.
func (r *rawClient) send(frames ...[]byte) error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	_, err := r.conn.Write(bytes.Join(frames, nil))
	return err
}

// open returns SYN and the destination of stream sid.
func open(sid uint32, dest protocol.Addr) []byte {
	return append(frame(protocol.CmdSYN, sid, nil), frame(protocol.CmdPSH, sid, addrBytes(dest))...)
}

// echoes sends msg on stream sid (already open to echoDest) and checks it comes back.
func (r *rawClient) echoes(sid uint32, msg string) error {
	if err := r.send(frame(protocol.CmdPSH, sid, []byte(msg))); err != nil {
		return err
	}
	var got []byte
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < len(msg) {
		f, ok := r.fr.until(protocol.CmdPSH, sid, time.Until(deadline))
		if !ok {
			return fmt.Errorf("stream %d: echo of %q: got %q, then nothing (%v)", sid, msg, got, r.fr.err)
		}
		got = append(got, f.Data...)
	}
	if string(got) != msg {
		return fmt.Errorf("stream %d: echo %q, want %q", sid, got, msg)
	}
	return nil
}

// works checks that the session still serves a new stream sid.
func (r *rawClient) works(sid uint32) error {
	if err := r.send(open(sid, echoDest)); err != nil {
		return err
	}
	return r.echoes(sid, fmt.Sprintf("still alive %d", sid))
}

// ended reports whether the server closed the connection within wait.
func (r *rawClient) ended(wait time.Duration) bool {
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case _, ok := <-r.fr.frames:
			if !ok {
				return true
			}
		case <-t.C:
			return false
		}
	}
}

var auth = authRequest(testPassword, 30)

// hostileCase is one row of docs/hostile-input.md: the input after a valid authentication and
// the reaction the engine must show.
type hostileCase struct {
	name     string
	reaction string // skip, stream reset, alert, session close
	settings string // the client's settings frame text; "" sends none
	run      func(t *testing.T, w *pipeWorld, r *rawClient, m *metrics)
	cfg      protocol.ServerConfig
}

func hostileCases() []hostileCase {
	return []hostileCase{
		{
			name: "unknown command with data", reaction: "skip", settings: v2Settings,
			run: func(t *testing.T, w *pipeWorld, r *rawClient, m *metrics) {
				// the data of the unknown frame is itself a SYN frame: it must be skipped, not parsed
				inner := open(9, echoDest)
				r.send(frame(99, 0, inner), frame(200, 12345, make([]byte, 65535)))
				if err := r.works(1); err != nil {
					t.Fatal(err)
				}
				if _, ok := r.fr.until(protocol.CmdSYNACK, 9, time.Second); ok {
					t.Error("the data of an unknown frame was parsed as frames")
				}
			},
		},
		{
			name: "SYN reusing a live stream id", reaction: "skip (the live stream is unaffected)", settings: v2Settings,
			run: func(t *testing.T, w *pipeWorld, r *rawClient, m *metrics) {
				if err := r.works(1); err != nil {
					t.Fatal(err)
				}
				r.send(frame(protocol.CmdSYN, 1, nil), frame(protocol.CmdSYN, 1, []byte("junk")))
				if err := r.echoes(1, "same stream, same order"); err != nil {
					t.Fatal(err)
				}
				if n := m.count("stream_opened"); n != 1 {
					t.Errorf("streams opened = %d, want 1", n)
				}
			},
		},
		{
			name: "PSH to a stream never opened", reaction: "skip (data discarded)", settings: v2Settings,
			run: func(t *testing.T, w *pipeWorld, r *rawClient, m *metrics) {
				r.send(frame(protocol.CmdPSH, 77, []byte("nobody listens")), frame(protocol.CmdPSH, 0, make([]byte, 1000)))
				if err := r.works(1); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "PSH to an unknown stream, half-close negotiated", reaction: "stream reset (cmdFIN with data: stop sending)",
			settings: v2Settings + "\nx-anytls-halfclose=1",
			run: func(t *testing.T, w *pipeWorld, r *rawClient, m *metrics) {
				r.send(frame(protocol.CmdPSH, 77, []byte("nobody listens")))
				f, ok := r.fr.until(protocol.CmdFIN, 77, 5*time.Second)
				if !ok || len(f.Data) == 0 {
					t.Fatalf("no resetting cmdFIN for stream 77 (got %v, ok %v)", f, ok)
				}
				if err := r.works(1); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "FIN for a stream never opened", reaction: "skip", settings: v2Settings,
			run: func(t *testing.T, w *pipeWorld, r *rawClient, m *metrics) {
				r.send(frame(protocol.CmdFIN, 5, nil), frame(protocol.CmdFIN, 6, []byte("data on a FIN")))
				if err := r.works(1); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "data length beyond what follows, then the connection ends", reaction: "session close",
			settings: v2Settings,
			run: func(t *testing.T, w *pipeWorld, r *rawClient, m *metrics) {
				if err := r.works(1); err != nil {
					t.Fatal(err)
				}
				hdr := frame(protocol.CmdPSH, 1, make([]byte, 1000))[:protocol.HeaderSize+10]
				r.send(hdr)
				r.conn.CloseWrite()
				if !r.ended(time.Second) {
					t.Fatal("session still open after a truncated frame and EOF")
				}
			},
		},
		{
			name: "data length beyond what follows, connection left open", reaction: "session close (idle timeout)",
			settings: v2Settings,
			run: func(t *testing.T, w *pipeWorld, r *rawClient, m *metrics) {
				start := time.Now()
				r.send(frame(protocol.CmdPSH, 1, make([]byte, 1000))[:protocol.HeaderSize+10])
				if !r.ended(protocol.DefaultServerIdleTimeout + time.Second) {
					t.Fatal("session stuck inside a truncated frame outlived the idle timeout")
				}
				t.Logf("closed after %v", time.Since(start))
			},
		},
		{
			name: "SYN before settings", reaction: "alert, session close", settings: "",
			run: func(t *testing.T, w *pipeWorld, r *rawClient, m *metrics) {
				r.send(open(1, echoDest))
				f, ok := r.fr.until(protocol.CmdAlert, 0, 5*time.Second)
				if !ok {
					t.Fatal("no cmdAlert")
				}
				t.Logf("alert: %q", f.Data)
				if !r.ended(5 * time.Second) {
					t.Fatal("session not closed after the alert")
				}
			},
		},
		{
			name: "oversized settings (65535 bytes of junk lines, huge version)", reaction: "skip unknown keys; v capped at 2",
			settings: "",
			run: func(t *testing.T, w *pipeWorld, r *rawClient, m *metrics) {
				var b strings.Builder
				b.WriteString("v=99999999999999999999\n")
				for i := 0; b.Len() < protocol.MaxFrameData-100; i++ {
					fmt.Fprintf(&b, "k%d=%s\n==\n\n", i, strings.Repeat("x", i%200))
				}
				text := b.String()[:protocol.MaxFrameData]
				r.send(settingsFrame(text))
				if err := r.works(1); err != nil {
					t.Fatal(err)
				}
				// a second settings frame is ignored
				r.send(settingsFrame("v=1\npadding-md5=00"), frame(protocol.CmdSettings, 0, make([]byte, protocol.MaxFrameData)))
				if err := r.works(3); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "padding scheme pushed by a client", reaction: "skip", settings: v2Settings,
			run: func(t *testing.T, w *pipeWorld, r *rawClient, m *metrics) {
				r.send(frame(protocol.CmdUpdatePaddingScheme, 0, []byte("stop=1000\n0=65535-65535\n1=65535-65535")))
				if err := r.works(1); err != nil {
					t.Fatal(err)
				}
				// a new session still gets the server's scheme pushed (it was not replaced)
				r2 := w.rawDial(t, auth, settingsFrame("v=2\npadding-md5=x"))
				f, ok := r2.fr.until(protocol.CmdUpdatePaddingScheme, 0, 5*time.Second)
				if !ok || string(f.Data) != protocol.DefaultPaddingSchemeText {
					t.Fatalf("scheme pushed to the next session = %q", f.Data)
				}
			},
		},
		{
			name: "server-only commands from a client (SYNACK, ServerSettings, Alert, HeartResponse)", reaction: "skip",
			settings: v2Settings,
			run: func(t *testing.T, w *pipeWorld, r *rawClient, m *metrics) {
				r.send(frame(protocol.CmdSYNACK, 1, []byte("x")), frame(protocol.CmdServerSettings, 0, []byte("v=9")),
					frame(protocol.CmdAlert, 0, []byte("go away")), frame(protocol.CmdHeartResponse, 0, nil))
				if err := r.works(1); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "malformed target address (unknown type)", reaction: "stream reset (cmdSYNACK with the error, cmdFIN)",
			settings: v2Settings,
			run: func(t *testing.T, w *pipeWorld, r *rawClient, m *metrics) {
				r.send(frame(protocol.CmdSYN, 1, nil), frame(protocol.CmdPSH, 1, []byte{9, 1, 2, 3, 4, 5, 6}))
				f, ok := r.fr.until(protocol.CmdSYNACK, 1, 5*time.Second)
				if !ok || len(f.Data) == 0 {
					t.Fatalf("no error cmdSYNACK (ok %v, %q)", ok, f.Data)
				}
				t.Logf("SYNACK: %q", f.Data)
				if _, ok := r.fr.until(protocol.CmdFIN, 1, 5*time.Second); !ok {
					t.Fatal("no cmdFIN")
				}
				if err := r.works(2); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "malformed target address (truncated domain, then FIN)", reaction: "stream reset",
			settings: v2Settings,
			run: func(t *testing.T, w *pipeWorld, r *rawClient, m *metrics) {
				r.send(frame(protocol.CmdSYN, 1, nil), frame(protocol.CmdPSH, 1, []byte{3, 200, 'a', 'b'}), frame(protocol.CmdFIN, 1, nil))
				if _, ok := r.fr.until(protocol.CmdSYNACK, 1, 5*time.Second); !ok {
					t.Fatal("no cmdSYNACK")
				}
				if err := r.works(2); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "target address never sent", reaction: "stream reset after AddressTimeout",
			settings: v2Settings,
			run: func(t *testing.T, w *pipeWorld, r *rawClient, m *metrics) {
				start := time.Now()
				r.send(frame(protocol.CmdSYN, 1, nil))
				if _, ok := r.fr.until(protocol.CmdSYNACK, 1, protocol.DefaultAddressTimeout+time.Second); !ok {
					t.Fatal("no cmdSYNACK")
				}
				t.Logf("reset after %v", time.Since(start))
				if err := r.works(2); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "more streams than MaxStreamsPerSession", reaction: "stream reset (cmdSYNACK \"too many streams\"), counted",
			settings: v2Settings, cfg: protocol.ServerConfig{MaxStreamsPerSession: 8},
			run: func(t *testing.T, w *pipeWorld, r *rawClient, m *metrics) {
				var frames [][]byte
				for sid := uint32(1); sid <= 10; sid++ {
					frames = append(frames, open(sid, echoDest))
				}
				r.send(frames...)
				refused := 0
				for range 10 {
					f, ok := r.fr.until(protocol.CmdSYNACK, anySID, 5*time.Second)
					if !ok {
						t.Fatal("missing cmdSYNACK")
					}
					if len(f.Data) > 0 {
						refused++
					}
				}
				if refused != 2 || m.limit("streams_per_session") != 2 {
					t.Errorf("refused %d, limit counted %d; want 2 and 2", refused, m.limit("streams_per_session"))
				}
				if err := r.echoes(1, "first stream fine"); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "window update (0xE0) where flow control was not negotiated, or with a length other than 4", reaction: "skip",
			settings: v2Settings,
			run: func(t *testing.T, w *pipeWorld, r *rawClient, m *metrics) {
				r.send(frame(0xE0, 1, []byte{0, 0, 1, 0}), frame(0xE0, 1, []byte{1, 2, 3}))
				if err := r.works(1); err != nil {
					t.Fatal(err)
				}
				r2 := w.rawDial(t, auth, settingsFrame(v2Settings+"\nx-anytls-window=65536"))
				f, ok := r2.fr.until(protocol.CmdServerSettings, 0, 5*time.Second)
				if !ok || !strings.Contains(string(f.Data), "x-anytls-window=") {
					t.Fatalf("server settings %q: flow control not offered back", f.Data)
				}
				r2.send(frame(0xE0, 1, []byte{1, 2, 3}), frame(0xE0, 1, make([]byte, 100)), frame(0xE0, 99, []byte{255, 255, 255, 255}))
				if err := r2.works(1); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "heartbeat requests flooded, answers never read", reaction: "session close (control queue bound)",
			settings: v2Settings,
			run: func(t *testing.T, w *pipeWorld, r *rawClient, m *metrics) {
				// A reader that never reads: stop draining our side. The frame reader goroutine
				// blocks on its channel once it is full, and the pipe then blocks the server.
				hb := bytes.Repeat(frame(protocol.CmdHeartRequest, 0, nil), 8192)
				before := heapInUse()
				sent := 0
				for i := 0; i < 200; i++ {
					if err := r.send(hb); err != nil {
						break
					}
					sent += len(hb)
				}
				grew := (float64(heapInUse()) - float64(before)) / mib
				t.Logf("%d KiB of heartbeat requests accepted; heap %+.1f MiB", sent>>10, grew)
				if sent >= 200*len(hb) {
					t.Error("the server kept reading heartbeat requests it could not answer")
				}
				if grew > 16 {
					t.Errorf("heap grew %.1f MiB", grew)
				}
			},
		},
	}
}

// TestHostileFrames runs each hostile input after a valid authentication, in a bubble of its
// own: each must get its documented reaction, never a panic, and leave no goroutine behind
// (the bubble fails if one is left; goleak checks the package at the end).
func TestHostileFrames(t *testing.T) {
	for _, c := range hostileCases() {
		t.Run(c.name, func(t *testing.T) {
			rec := &logRecorder{}
			m := newMetrics()
			synctest.Test(t, func(t *testing.T) {
				cfg := c.cfg
				cfg.Logger = slog.New(rec)
				cfg.Metrics = m
				w := newPipeWorld(t, cfg)
				pre := [][]byte{auth}
				if c.settings != "" {
					pre = append(pre, settingsFrame(c.settings))
				}
				r := w.rawDial(t, pre...)
				c.run(t, w, r, m)
				r.conn.Close()
				w.close()
				synctest.Wait()
			})
			if p := rec.find("panic"); len(p) > 0 {
				t.Errorf("engine recovered from a panic: %v", p)
			}
			t.Logf("reaction: %s", c.reaction)
		})
	}
}

// TestHostileDocTable keeps docs/hostile-input.md in step with the cases: every case name
// appears in the table.
func TestHostileDocTable(t *testing.T) {
	doc, err := readRepoFile("docs/hostile-input.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range hostileCases() {
		if !strings.Contains(doc, "| "+c.name+" |") {
			t.Errorf("docs/hostile-input.md has no row for %q", c.name)
		}
	}
}

// readRepoFile reads a file given relative to the repository root (tests run in test/fault).
func readRepoFile(rel string) (string, error) {
	b, err := os.ReadFile(filepath.Join("..", "..", rel))
	return string(b), err
}

func slogFor(h slog.Handler) *slog.Logger { return slog.New(h) }
