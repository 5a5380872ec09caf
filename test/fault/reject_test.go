package fault

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/anytls-engine/anytls/protocol"
)

// fallbackRecorder is a FallbackHandler standing in for a web server: it records what it was
// handed and answers like one.
type fallbackRecorder struct {
	start time.Time
	mu    sync.Mutex
	calls []fallbackCall
}

type fallbackCall struct {
	at   time.Duration
	read []byte // the first bytes read from the handed connection (the replay)
}

const fallbackAnswer = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

func (f *fallbackRecorder) handle(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	at := time.Since(f.start)
	conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	buf := make([]byte, 64<<10)
	n, _ := io.ReadAtLeast(conn, buf, 1)
	f.mu.Lock()
	f.calls = append(f.calls, fallbackCall{at: at, read: bytes.Clone(buf[:n])})
	f.mu.Unlock()
	conn.SetDeadline(time.Time{})
	io.WriteString(conn, fallbackAnswer)
}

// probe connects over TLS, writes first (if any), and returns what it read until the
// connection closed, and when it closed.
func probe(w *pipeWorld, first []byte) (answer []byte, closedAfter time.Duration, err error) {
	start := time.Now()
	tc := tls.Client(w.serve(), clientTLS())
	defer tc.Close()
	if err := tc.Handshake(); err != nil {
		return nil, 0, err
	}
	if first != nil {
		if _, err := tc.Write(first); err != nil {
			return nil, 0, err
		}
	}
	answer, _ = io.ReadAll(tc)
	return answer, time.Since(start), nil
}

// TestRejectWithFallback: with a fallback configured, a wrong password and a record too short
// for an authentication request are handed over at once with every byte replayed; a connection
// that stays silent is handed over when the authentication timeout expires. The prober sees the
// fallback's answer, nothing of ours.
func TestRejectWithFallback(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fb := &fallbackRecorder{start: time.Now()}
		m := newMetrics()
		w := newPipeWorld(t, protocol.ServerConfig{Fallback: fb.handle, Metrics: m})
		httpGet := []byte("GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: probe\r\n\r\n")
		wrong := append(authRequest("wrong password", 30), settingsFrame(v2Settings)...)
		cases := []struct {
			name  string
			first []byte
			at    time.Duration
		}{
			{"HTTP request", httpGet, 0},
			{"wrong password", wrong, 0},
			{"short record", []byte("hello"), 0},
			{"silence", nil, protocol.DefaultAuthTimeout},
		}
		for i, c := range cases {
			fb.start = time.Now()
			answer, _, err := probe(w, c.first)
			if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			synctest.Wait()
			fb.mu.Lock()
			call := fb.calls[i]
			fb.mu.Unlock()
			t.Logf("%s: fallback after %v, replayed %d bytes, prober read %q", c.name, call.at, len(call.read), answer)
			if string(answer) != fallbackAnswer {
				t.Errorf("%s: prober read %q, want the fallback's answer", c.name, answer)
			}
			if call.at != c.at {
				t.Errorf("%s: handed to the fallback after %v, want %v", c.name, call.at, c.at)
			}
			if want := c.first; !bytes.Equal(call.read, want) && !(want == nil && len(call.read) == 0) {
				t.Errorf("%s: fallback read %q, want the bytes sent replayed %q", c.name, call.read, want)
			}
		}
		if m.count("fallback") != len(cases) || m.count("auth_failed") != len(cases) {
			t.Errorf("metrics: fallback %d, auth_failed %d, want %d each", m.count("fallback"), m.count("auth_failed"), len(cases))
		}
	})
}

// TestRejectWithoutFallback: without a fallback, a wrong password is never answered: the
// connection is held, its input discarded, and closed at a random moment within the
// authentication timeout ([AuthTimeout/4, AuthTimeout)), so neither an answer nor a fixed delay
// identifies the server. A silent connection is closed when the timeout expires.
func TestRejectWithoutFallback(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newPipeWorld(t, protocol.ServerConfig{})
		const n = 40
		var mu sync.Mutex
		var closes []time.Duration
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				first := append(authRequest("wrong password", i), []byte("GET / HTTP/1.1\r\n\r\n")...)
				answer, after, err := probe(w, first)
				if err != nil {
					t.Error(err)
					return
				}
				if len(answer) != 0 {
					t.Errorf("wrong password answered with %q", answer)
				}
				mu.Lock()
				closes = append(closes, after)
				mu.Unlock()
			}()
		}
		wg.Wait()
		slices.Sort(closes)
		lo, hi := protocol.DefaultAuthTimeout/4, protocol.DefaultAuthTimeout
		distinct := len(slices.Compact(slices.Clone(closes)))
		t.Logf("wrong password without fallback: %d connections closed after %v .. %v (%d distinct delays), never answered", n, closes[0], closes[n-1], distinct)
		if closes[0] < lo || closes[n-1] >= hi {
			t.Errorf("close delays %v .. %v, want within [%v, %v)", closes[0], closes[n-1], lo, hi)
		}
		if distinct < n/2 {
			t.Errorf("only %d distinct close delays over %d connections: not random", distinct, n)
		}

		answer, after, err := probe(w, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("silence without fallback: closed after %v, answer %q", after, answer)
		if after != protocol.DefaultAuthTimeout || len(answer) != 0 {
			t.Errorf("silent connection closed after %v with %q, want %v and nothing", after, answer, protocol.DefaultAuthTimeout)
		}
	})
}

// TestSessionLimit: MaxSessions is reached: sessions beyond it get cmdAlert "server busy" and
// are closed, the limit is logged and counted, the server keeps serving the sessions it has and
// accepts new ones once some end.
func TestSessionLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newMetrics()
		rec := &logRecorder{}
		w := newPipeWorld(t, protocol.ServerConfig{MaxSessions: 10, Metrics: m, Logger: slogFor(rec)})
		var held []*rawClient
		for range 10 {
			r := w.rawDial(t, auth, settingsFrame(v2Settings))
			if err := r.works(1); err != nil {
				t.Fatal(err)
			}
			held = append(held, r)
		}
		refused := 0
		for range 5 {
			r := w.rawDial(t, auth, settingsFrame(v2Settings))
			if f, ok := r.fr.until(protocol.CmdAlert, 0, 5*time.Second); ok && string(f.Data) == "server busy" && r.ended(5*time.Second) {
				refused++
			}
		}
		t.Logf("MaxSessions 10: %d of 5 extra sessions refused with an alert; limit counted %d; %d log lines", refused, m.limit("sessions"), len(rec.find("limit reached")))
		if refused != 5 || m.limit("sessions") != 5 || len(rec.find("limit reached")) != 5 {
			t.Errorf("refused %d, counted %d, logged %d; want 5 each", refused, m.limit("sessions"), len(rec.find("limit reached")))
		}
		for _, r := range held {
			if err := r.echoes(1, "still served"); err != nil {
				t.Fatal(err)
			}
		}
		held[0].conn.Close()
		synctest.Wait()
		r := w.rawDial(t, auth, settingsFrame(v2Settings))
		if err := r.works(1); err != nil {
			t.Fatalf("new session after one ended: %v", err)
		}
	})
}
