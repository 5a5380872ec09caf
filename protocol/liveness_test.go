package protocol

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// heartbeats counts the cmdHeartRequest frames a client sent on connection i.
func (p *memPair) heartbeats(i int) int {
	_, frames := clientFrames(p.t, p.conn(i).Bytes())
	return countCmd(frames, CmdHeartRequest)
}

// TestHeartbeatsSent: the client probes a quiet v2 session, whether a stream is open on it or
// it sits in the pool; the server answers and the session stays.
func TestHeartbeatsSent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newMemPair(t, ServerConfig{}, ClientConfig{IdleSessionTimeout: time.Hour})
		st := p.open("example.com:80")
		echo(t, st, []byte("hello"))
		time.Sleep(DefaultHeartbeatInterval - time.Millisecond)
		synctest.Wait()
		if n := p.heartbeats(0); n != 0 {
			t.Fatalf("%d heartbeats before the interval", n)
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if n := p.heartbeats(0); n != 1 {
			t.Fatalf("%d heartbeats after a quiet interval with a stream open, want 1", n)
		}
		time.Sleep(3 * DefaultHeartbeatInterval)
		synctest.Wait()
		if n := p.heartbeats(0); n != 4 {
			t.Fatalf("%d heartbeats after 4 quiet intervals, want 4", n)
		}
		echo(t, st, []byte("still alive"))
		st.Close()
		synctest.Wait()
		before := p.heartbeats(0)
		time.Sleep(5 * DefaultHeartbeatInterval)
		synctest.Wait()
		if n := p.heartbeats(0) - before; n < 4 {
			t.Fatalf("%d heartbeats on a pooled session in 5 intervals, want >= 4", n)
		}
		if open, idle := p.client.SessionCount(); open != 1 || idle != 1 {
			t.Fatalf("sessions open %d idle %d, want the answered session kept", open, idle)
		}
		st2 := p.open("example.com:80")
		echo(t, st2, []byte("reused"))
		st2.Close()
		if n := p.dials.Load(); n != 1 {
			t.Fatalf("%d dials, want 1", n)
		}
	})
}

// TestHeartbeatDetectsBlackhole: when the server stops answering, the client closes the
// session within HeartbeatInterval+HeartbeatTimeout and the next stream gets a fresh session.
func TestHeartbeatDetectsBlackhole(t *testing.T) {
	for _, inUse := range []bool{true, false} {
		name := "pooled"
		if inUse {
			name = "in use"
		}
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p := newMemPair(t, ServerConfig{}, ClientConfig{IdleSessionTimeout: time.Hour})
				st := p.open("example.com:80")
				echo(t, st, []byte("hello"))
				if !inUse {
					st.Close()
					synctest.Wait()
				}
				time.Sleep(3 * time.Second)
				start := time.Now()
				p.fault(0).mode.Store(faultBlackhole)
				readErr := make(chan error, 1)
				if inUse {
					go func() {
						_, err := st.Read(make([]byte, 1))
						readErr <- err
					}()
				}
				limit := DefaultHeartbeatInterval + DefaultHeartbeatTimeout
				for {
					time.Sleep(100 * time.Millisecond)
					if open, _ := p.client.SessionCount(); open == 0 {
						break
					}
					if time.Since(start) > limit {
						t.Fatalf("dead session still open after %v", time.Since(start))
					}
				}
				if inUse {
					if err := <-readErr; !errors.Is(err, ErrHeartbeatTimeout) {
						t.Fatalf("stream on the dead session: %v, want ErrHeartbeatTimeout", err)
					}
					st.Close()
				}
				st2 := p.open("example.com:80")
				echo(t, st2, []byte("fresh"))
				st2.Close()
				if n := p.dials.Load(); n != 2 {
					t.Fatalf("%d dials, want a fresh session", n)
				}
			})
		})
	}
}

// TestHeartbeatDisabled: a negative HeartbeatInterval sends no heartbeats.
func TestHeartbeatDisabled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newMemPair(t, ServerConfig{}, ClientConfig{HeartbeatInterval: -1, IdleSessionTimeout: time.Hour})
		st := p.open("example.com:80")
		echo(t, st, []byte("x"))
		time.Sleep(10 * time.Minute)
		synctest.Wait()
		if n := p.heartbeats(0); n != 0 {
			t.Fatalf("%d heartbeats with HeartbeatInterval < 0", n)
		}
		st.Close()
	})
}

// TestIdleCleanup: pooled sessions idle longer than IdleSessionTimeout are closed at the next
// check, except the newest MinIdleSession.
func TestIdleCleanup(t *testing.T) {
	for _, minIdle := range []int{0, 1, 2} {
		t.Run("min="+string(rune('0'+minIdle)), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p := newMemPair(t, ServerConfig{}, ClientConfig{
					IdleSessionCheckInterval: 30 * time.Second,
					IdleSessionTimeout:       30 * time.Second,
					MinIdleSession:           minIdle,
				})
				var streams []*Stream
				for range 3 {
					streams = append(streams, p.open("example.com:80"))
				}
				for _, st := range streams {
					echo(t, st, []byte("x"))
				}
				for _, st := range streams {
					st.Close()
				}
				synctest.Wait()
				if open, idle := p.client.SessionCount(); open != 3 || idle != 3 {
					t.Fatalf("open %d idle %d, want 3 idle sessions", open, idle)
				}
				time.Sleep(30*time.Second - time.Millisecond)
				synctest.Wait()
				if open, _ := p.client.SessionCount(); open != 3 {
					t.Fatalf("%d sessions before the timeout, want 3", open)
				}
				time.Sleep(time.Millisecond)
				synctest.Wait()
				if open, _ := p.client.SessionCount(); open != minIdle {
					t.Fatalf("%d sessions after the check, want MinIdleSession=%d", open, minIdle)
				}
				p.client.mu.Lock()
				for s := range p.client.sessions {
					if s.seq <= uint64(3-minIdle) {
						t.Errorf("kept session seq %d, want the newest %d", s.seq, minIdle)
					}
				}
				p.client.mu.Unlock()
				// kept sessions stay (they are probed and answered) and are reused newest first;
				// within the server's idle timeout (5 min), which closes them at its end
				time.Sleep(2 * time.Minute)
				synctest.Wait()
				if open, _ := p.client.SessionCount(); open != minIdle {
					t.Fatalf("%d sessions after 2 min, want %d kept", open, minIdle)
				}
				st := p.open("example.com:80")
				echo(t, st, []byte("y"))
				want := int32(3)
				if minIdle == 0 {
					want = 4
				}
				if n := p.dials.Load(); n != want {
					t.Fatalf("%d dials, want %d", n, want)
				}
				if minIdle > 0 && st.sess.seq != 3 {
					t.Fatalf("stream on session %d, want the newest (3)", st.sess.seq)
				}
				st.Close()
			})
		})
	}
}

// TestServerIdleTimeout: the server closes a session that carried no stream activity for
// IdleSessionTimeout (heartbeats do not count), and keeps one with an open stream.
func TestServerIdleTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const idle = time.Minute
		p := newMemPair(t, ServerConfig{IdleSessionTimeout: idle}, ClientConfig{IdleSessionTimeout: time.Hour})
		busy := p.open("example.com:80")
		echo(t, busy, []byte("x"))
		quiet := p.open("example.com:81") // a second session
		echo(t, quiet, []byte("y"))
		quiet.Close()
		synctest.Wait()
		if p.srv.SessionCount() != 2 {
			t.Fatalf("server sessions %d", p.srv.SessionCount())
		}
		time.Sleep(idle - time.Millisecond)
		synctest.Wait()
		if n := p.srv.SessionCount(); n != 2 {
			t.Fatalf("%d server sessions before the idle timeout", n)
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if n := p.srv.SessionCount(); n != 1 {
			t.Fatalf("%d server sessions after the idle timeout, want 1", n)
		}
		if err := <-p.errs; !errors.Is(err, ErrIdleTimeout) {
			t.Fatalf("ServeConn = %v, want ErrIdleTimeout", err)
		}
		if open, _ := p.client.SessionCount(); open != 1 {
			t.Fatalf("client sessions %d, want the closed one dropped", open)
		}
		if n := p.heartbeats(1); n < 3 {
			t.Fatalf("%d heartbeats on the idle session: the test expects them not to count", n)
		}
		time.Sleep(3 * idle)
		echo(t, busy, []byte("a stream open for 4 minutes without traffic keeps its session"))
		busy.Close()
	})
}

// TestDisableSessionReuse: every stream gets its own session, closed when the stream ends.
func TestDisableSessionReuse(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newMemPair(t, ServerConfig{}, ClientConfig{DisableSessionReuse: true})
		for i := range 3 {
			st := p.open("example.com:80")
			echo(t, st, []byte("x"))
			st.Close()
			synctest.Wait()
			if open, _ := p.client.SessionCount(); open != 0 {
				t.Fatalf("stream %d: %d sessions open after Close, want 0", i, open)
			}
		}
		if n := p.dials.Load(); n != 3 {
			t.Fatalf("%d dials for 3 streams, want 3", n)
		}
	})
}

// TestRetryOnDeadPooledSession: a stream that lands on a pooled session whose connection died
// silently is moved to a fresh session once, and its data arrives intact.
func TestRetryOnDeadPooledSession(t *testing.T) {
	cases := []struct {
		name  string
		fault int32
		quiet time.Duration // since the session last received anything, when it dies
		wait  time.Duration // between the death and OpenStream
	}{
		{"reset found by the write", faultReset, time.Second, 0},
		// quiet for 1 s or more: the SYN probes the pooled session
		{"blackhole, opened at once", faultBlackhole, time.Second, 0},
		{"blackhole, opened later", faultBlackhole, time.Second, 7 * time.Second},
		// quiet for less: the SYNACK wait runs out first and is extended while the heartbeat
		// judges the session
		{"blackhole, session just heard from", faultBlackhole, 500 * time.Millisecond, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var mu sync.Mutex
				var got []byte
				p := newMemPair(t, ServerConfig{Handler: func(ctx context.Context, st *Stream) {
					defer st.Close()
					st.Report(nil)
					b, _ := io.ReadAll(st)
					mu.Lock()
					got = append(got, b...)
					mu.Unlock()
				}}, ClientConfig{IdleSessionTimeout: time.Hour})
				st := p.open("example.com:80")
				st.Write([]byte("first"))
				st.Close()
				synctest.Wait()
				mu.Lock()
				got = nil
				mu.Unlock()

				time.Sleep(tc.quiet)
				p.fault(0).mode.Store(tc.fault)
				time.Sleep(tc.wait)
				data := make([]byte, 20000)
				rand.Read(data)
				st2 := p.open("example.com:80")
				if _, err := st2.Write(data[:5000]); err != nil {
					t.Fatalf("Write on the dead session: %v", err)
				}
				if _, err := st2.Write(data[5000:]); err != nil {
					t.Fatalf("Write: %v", err)
				}
				// Let the engine find the death and move the stream (bounded by the
				// heartbeat), then end the stream; the server saw every byte once.
				time.Sleep(DefaultSynAckTimeout + DefaultHeartbeatTimeout + 2*time.Second)
				if err := st2.CloseWrite(); err != nil {
					t.Fatal(err)
				}
				n, err := st2.Read(make([]byte, 1))
				if err != io.EOF {
					t.Fatalf("Read after the retry = %d, %v; want io.EOF from the server's close", n, err)
				}
				st2.Close()
				synctest.Wait()
				mu.Lock()
				defer mu.Unlock()
				if !bytes.Equal(got, data) {
					t.Fatalf("server received %d bytes, want the %d written, intact", len(got), len(data))
				}
				if n := p.dials.Load(); n != 2 {
					t.Fatalf("%d dials, want 2 (one retry)", n)
				}
			})
		})
	}
}
