package fault

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anytls-engine/anytls/protocol"
)

type streamResult struct {
	start, end time.Time
	err        error
}

// TestServerRestart: streams run continuously from several goroutines while the server is
// restarted on the same port (real TCP, real TLS). Only streams in flight during the restart
// may fail; every stream started after the new server listens succeeds, including those that
// land on a pooled session of the old server before the client noticed it is gone (they move
// to a fresh session). Two ways to go: a graceful stop (close_notify, FIN) and connections
// reset under the client (RST).
func TestServerRestart(t *testing.T) {
	for _, how := range []string{"graceful", "reset"} {
		t.Run(how, func(t *testing.T) {
			w := newTCPWorld(t, protocol.ServerConfig{})
			c := w.client(t, protocol.ClientConfig{MaxStreamsPerSession: 4})
			const workers = 8
			var mu sync.Mutex
			var results []streamResult
			var stop atomic.Bool
			var wg sync.WaitGroup
			for range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for !stop.Load() {
						r := streamResult{start: time.Now()}
						r.err = echoOnce(context.Background(), c, 1+rand.IntN(64<<10))
						r.end = time.Now()
						mu.Lock()
						results = append(results, r)
						mu.Unlock()
					}
				}()
			}
			time.Sleep(300 * time.Millisecond)
			down := time.Now()
			if how == "reset" {
				w.mu.Lock()
				conns := append([]*Conn(nil), w.conns...)
				w.mu.Unlock()
				for _, fc := range conns {
					fc.Abort()
				}
			}
			w.restart()
			up := time.Now()
			time.Sleep(700 * time.Millisecond)
			stop.Store(true)
			wg.Wait()

			var before, during, after, inFlightFailed, lateFailed int
			for _, r := range results {
				switch {
				case r.end.Before(down):
					before++
				case r.start.After(up):
					after++
					if r.err != nil {
						lateFailed++
						t.Errorf("stream started %v after the restart failed: %v", r.start.Sub(up), r.err)
					}
				default:
					during++
					if r.err != nil {
						inFlightFailed++
					}
				}
				if r.end.Before(down) && r.err != nil {
					t.Errorf("stream before the restart failed: %v", r.err)
				}
			}
			open, _ := c.SessionCount()
			t.Logf("%s restart (down for %v): %d streams before, %d in flight (%d failed), %d after (%d failed); %d sessions open after",
				how, up.Sub(down).Round(time.Microsecond), before, during, inFlightFailed, after, lateFailed, open)
			if after < workers {
				t.Errorf("only %d streams after the restart", after)
			}
		})
	}
}
