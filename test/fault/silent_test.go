package fault

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/anytls-engine/anytls/protocol"
)

// quiet discards the engine's logs (a thousand "limit reached" lines say nothing new).
var quiet = slog.New(slog.DiscardHandler)

// silentCount is the number of silent connections of each kind (the issue asks for 1000).
const silentCount = 1000

// watchClose reads conn until it fails and records when that happened.
type closeWatch struct {
	mu    sync.Mutex
	times []time.Duration
	start time.Time
	wg    sync.WaitGroup
	bytes atomic.Int64
}

func (cw *closeWatch) watch(conn net.Conn) {
	cw.wg.Add(1)
	go func() {
		defer cw.wg.Done()
		n, _ := io.Copy(io.Discard, conn)
		cw.bytes.Add(n)
		conn.Close()
		cw.mu.Lock()
		cw.times = append(cw.times, time.Since(cw.start))
		cw.mu.Unlock()
	}()
}

func (cw *closeWatch) count() int {
	cw.mu.Lock()
	defer cw.mu.Unlock()
	return len(cw.times)
}

// worker keeps a real client busy with a stream every second until stop is closed.
func worker(c *protocol.Client, stop chan struct{}) (done chan struct{}, ok, failed *atomic.Int64) {
	ok, failed = new(atomic.Int64), new(atomic.Int64)
	done = make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Second):
			}
			if err := echoOnce(context.Background(), c, 2000); err != nil {
				failed.Add(1)
			} else {
				ok.Add(1)
			}
		}
	}()
	return done, ok, failed
}

// TestSilentConnections: 1000 connections that never send a TLS ClientHello ("TCP") and 1000
// that complete TLS and never send the authentication request: all are freed by the
// authentication timeout (30 s by default), none before, while a real client keeps working
// through the same server.
func TestSilentConnections(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newMetrics()
		w := newPipeWorld(t, protocol.ServerConfig{Metrics: m, Logger: quiet})
		c := w.client(t, protocol.ClientConfig{Logger: quiet})
		stop := make(chan struct{})
		done, ok, failed := worker(c, stop)

		heapBefore := heapInUse()
		cw := &closeWatch{start: time.Now()}
		for range silentCount {
			cw.watch(w.serve()) // never sends a byte
		}
		for range silentCount {
			tc := tls.Client(w.serve(), clientTLS())
			if err := tc.Handshake(); err != nil {
				t.Fatal(err)
			}
			cw.watch(tc) // TLS done; never authenticates
		}
		synctest.Wait()
		heapHeld := heapInUse()
		time.Sleep(protocol.DefaultAuthTimeout - time.Second)
		if n := cw.count(); n != 0 {
			t.Errorf("%d silent connections closed before the authentication timeout", n)
		}
		time.Sleep(2 * time.Second)
		freed := cw.count()
		close(stop)
		<-done
		cw.wg.Wait()
		synctest.Wait()
		t.Logf("%d silent TCP + %d silent TLS connections: %d freed by %v (auth timeout %v); %d bytes sent to them; server AuthFailed %d",
			silentCount, silentCount, freed, time.Since(cw.start), protocol.DefaultAuthTimeout, cw.bytes.Load(), m.count("auth_failed"))
		t.Logf("heap: %+.1f MiB while held, %+.1f MiB after; real client meanwhile: %d streams ok, %d failed",
			(float64(heapHeld)-float64(heapBefore))/mib, (float64(heapInUse())-float64(heapBefore))/mib, ok.Load(), failed.Load())
		if freed != 2*silentCount {
			t.Errorf("freed %d of %d silent connections", freed, 2*silentCount)
		}
		if cw.bytes.Load() != 0 {
			t.Errorf("silent connections received %d bytes of application data", cw.bytes.Load())
		}
		if failed.Load() != 0 || ok.Load() < 25 {
			t.Errorf("real client: %d ok, %d failed", ok.Load(), failed.Load())
		}
		if got := int(w.served.Load()); got < 2*silentCount {
			t.Errorf("ServeConn returned for %d of %d connections", got, 2*silentCount)
		}
	})
}

// TestIdleSessions: 1000 connections authenticate (and send their settings) and then stay
// silent: the idle timeout (5 min by default) frees all of them, none before, while a real
// client keeps working (its session is never idle long enough).
func TestIdleSessions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newMetrics()
		w := newPipeWorld(t, protocol.ServerConfig{Metrics: m, Logger: quiet})
		c := w.client(t, protocol.ClientConfig{Logger: quiet})
		stop := make(chan struct{})
		done, ok, failed := worker(c, stop)

		cw := &closeWatch{start: time.Now()}
		for i := range silentCount {
			tc := tls.Client(w.serve(), clientTLS())
			pre := auth
			if i%2 == 0 {
				pre = append(append([]byte(nil), auth...), settingsFrame(v2Settings)...)
			}
			if _, err := tc.Write(pre); err != nil {
				t.Fatal(err)
			}
			cw.watch(tc)
		}
		synctest.Wait()
		sessions := w.srv.SessionCount()
		time.Sleep(protocol.DefaultServerIdleTimeout - time.Second)
		early := cw.count()
		time.Sleep(2 * time.Second)
		freed := cw.count()
		close(stop)
		<-done
		cw.wg.Wait()
		t.Logf("%d authenticated idle sessions (server counted %d open): %d freed by %v (idle timeout %v), %d before; limit idle_timeout counted %d",
			silentCount, sessions, freed, time.Since(cw.start), protocol.DefaultServerIdleTimeout, early, m.limit("idle_timeout"))
		t.Logf("real client meanwhile: %d streams ok, %d failed", ok.Load(), failed.Load())
		if sessions < silentCount {
			t.Errorf("only %d sessions opened", sessions)
		}
		if early != 0 {
			t.Errorf("%d idle sessions closed before the idle timeout", early)
		}
		if freed != silentCount {
			t.Errorf("freed %d of %d idle sessions", freed, silentCount)
		}
		if failed.Load() != 0 || ok.Load() < 290 {
			t.Errorf("real client: %d ok, %d failed", ok.Load(), failed.Load())
		}
		if n := w.srv.SessionCount(); n > 1 {
			t.Errorf("%d sessions left (only the real client's may remain)", n)
		}
	})
}

// TestSoakSilentTCP is TestSilentConnections on real loopback sockets in real time (make soak):
// 1000 TCP connections that never send a byte and 1000 that complete TLS and go silent, against
// a server with a 3 s authentication timeout, while a real client keeps working.
func TestSoakSilentTCP(t *testing.T) {
	if !soak() {
		t.Skip("long form: make soak (ANYTLS_SOAK=1)")
	}
	const authTimeout = 3 * time.Second
	m := newMetrics()
	w := newTCPWorld(t, protocol.ServerConfig{AuthTimeout: authTimeout, Metrics: m, Logger: quiet})
	c := w.client(t, protocol.ClientConfig{Logger: quiet})
	stop := make(chan struct{})
	done, ok, failed := worker(c, stop)
	cw := &closeWatch{start: time.Now()}
	for i := range 2 * silentCount {
		conn, err := net.Dial("tcp", w.addr)
		if err != nil {
			t.Fatal(err)
		}
		if i >= silentCount {
			tc := tls.Client(conn, clientTLS())
			if err := tc.Handshake(); err != nil {
				t.Fatal(err)
			}
			conn = tc
		}
		cw.watch(conn)
	}
	opened := time.Since(cw.start)
	if !waitUntil(authTimeout+opened+10*time.Second, func() bool { return cw.count() == 2*silentCount }) {
		t.Errorf("only %d of %d silent connections freed", cw.count(), 2*silentCount)
	}
	close(stop)
	<-done
	cw.wg.Wait()
	cw.mu.Lock()
	slices.Sort(cw.times)
	first, last := cw.times[0], cw.times[len(cw.times)-1]
	cw.mu.Unlock()
	t.Logf("real TCP: %d silent TCP + %d silent TLS connections opened in %v; all freed between %v and %v (auth timeout %v); AuthFailed %d; real client %d ok, %d failed",
		silentCount, silentCount, opened.Round(time.Millisecond), first.Round(time.Millisecond), last.Round(time.Millisecond), authTimeout, m.count("auth_failed"), ok.Load(), failed.Load())
	if first < authTimeout-time.Second/2 {
		t.Errorf("a silent connection was closed after %v, before the authentication timeout", first)
	}
	if failed.Load() != 0 || ok.Load() == 0 {
		t.Errorf("real client: %d ok, %d failed", ok.Load(), failed.Load())
	}
}
