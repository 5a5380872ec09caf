package fault

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/anytls-engine/anytls/protocol"
)

// stallParams: the link is paced to bandwidth (fake time), so figures are exact and CPU noise
// does not enter them.
type stallParams struct {
	bandwidth int64         // bytes per fake second, server to client
	buffer    int           // client StreamBufferSize
	stall     time.Duration // client StreamStallTimeout
	window    time.Duration // measurement window
	streams   int           // streams on the session, one of which stalls
}

// downloadPhase opens p.streams downloads on one session; stream 0 is read only if !stallFirst.
// It returns the bytes the other streams received in the window, and the stalled stream.
func downloadPhase(t *testing.T, c *protocol.Client, p stallParams, stallFirst bool) (others int64, stalled *protocol.Stream, rest func()) {
	t.Helper()
	ctx := context.Background()
	var got atomic.Int64
	var wg sync.WaitGroup
	var streams []*protocol.Stream
	for i := range p.streams {
		st, err := c.OpenStream(ctx, sourceDest)
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, st)
		if i == 0 && stallFirst {
			stalled = st
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 16<<10)
			for {
				n, err := st.Read(buf)
				if i != 0 {
					got.Add(int64(n))
				}
				if err != nil {
					return
				}
			}
		}()
	}
	start := got.Load()
	time.Sleep(p.window)
	others = got.Load() - start
	return others, stalled, func() {
		for _, st := range streams {
			st.Close()
		}
		wg.Wait()
	}
}

// sourceLog records, per server-side source stream, the bytes its handler wrote and when its
// writes started failing.
type sourceLog struct {
	mu    sync.Mutex
	start time.Time
	wrote map[uint32]int64
	ended map[uint32]time.Duration
}

func newSourceLog() *sourceLog {
	return &sourceLog{start: time.Now(), wrote: map[uint32]int64{}, ended: map[uint32]time.Duration{}}
}

func (l *sourceLog) handler(ctx context.Context, st *protocol.Stream) {
	if st.Destination() != sourceDest {
		handler(ctx, st)
		return
	}
	defer st.Close()
	st.Report(nil)
	buf := make([]byte, 32<<10)
	for {
		n, err := st.Write(buf)
		l.mu.Lock()
		l.wrote[st.ID()] += int64(n)
		if err != nil {
			l.ended[st.ID()] = time.Since(l.start)
		}
		l.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// of returns how much the handler of stream id wrote, and when its writes failed.
func (l *sourceLog) of(id uint32) (wrote int64, endedAt time.Duration, ended bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	endedAt, ended = l.ended[id]
	return l.wrote[id], endedAt, ended
}

// stallRun measures p: a baseline with every stream read, then the same with stream 0 stalled.
func stallRun(t *testing.T, p stallParams) {
	synctest.Test(t, func(t *testing.T) {
		log := newSourceLog()
		w := newPipeWorld(t, protocol.ServerConfig{Handler: log.handler, Logger: quiet})
		c := w.client(t, protocol.ClientConfig{
			MaxStreamsPerSession: p.streams,
			StreamBufferSize:     p.buffer,
			StreamStallTimeout:   p.stall,
		})
		// warm the session up and pace its downstream
		if err := echoOnce(context.Background(), c, 100); err != nil {
			t.Fatal(err)
		}
		w.sconn(0).SetBandwidth(p.bandwidth)

		base, _, done := downloadPhase(t, c, p, false)
		done()
		synctest.Wait()

		phase := p
		phase.window = p.stall * 2 / 3 // well before the stalled stream is reset
		log.mu.Lock()
		log.start, log.wrote, log.ended = time.Now(), map[uint32]int64{}, map[uint32]time.Duration{}
		log.mu.Unlock()
		early, stalled, done1 := downloadPhase(t, c, phase, true)
		time.Sleep(p.window - phase.window) // the stall goes on past the stall timeout
		n, err := io.Copy(io.Discard, stalled)
		id := stalled.ID()
		done1()
		wrote, resetAt, ended := log.of(id)

		others := p.streams - 1
		perStream := func(b int64, d time.Duration) float64 { return float64(b) / d.Seconds() / 1024 / float64(others) }
		baseRate, earlyRate := perStream(base, p.window), perStream(early, p.stall*2/3)
		ratio := earlyRate / baseRate
		t.Logf("link %d KiB/s, %d streams on one session, buffer %d KiB, stall timeout %v", p.bandwidth>>10, p.streams, p.buffer>>10, p.stall)
		t.Logf("each other stream: %.1f KiB/s with every stream read (%v), %.1f KiB/s in the first %v of a neighbour's stall: ratio %.2f",
			baseRate, p.window, earlyRate, p.stall*2/3, ratio)
		t.Logf("stalled stream %d: its sender wrote %d KiB (buffer %d KiB) and was reset %v after the stall began; the reader then got %d bytes and %v",
			id, wrote>>10, p.buffer>>10, resetAt.Round(time.Millisecond), n, err)
		if ratio < 0.8 {
			t.Errorf("throughput ratio with a stalled neighbour %.2f, want >= 0.8", ratio)
		}
		if !ended || resetAt < p.stall || resetAt > p.stall+5*time.Second {
			t.Errorf("stalled stream reset at %v (ok %v), want at the stall timeout %v (+ the time to fill the buffer)", resetAt, ended, p.stall)
		}
		if bound := int64(p.buffer) + 2*protocol.MaxFrameData; wrote > bound {
			t.Errorf("the stalled stream's sender got %d bytes out, bound %d: buffering is not bounded", wrote, bound)
		}
		if !errors.Is(err, protocol.ErrStreamStalled) {
			t.Errorf("stalled stream ended with %v, want ErrStreamStalled", err)
		}
	})
}

// TestStalledReaderNeighbours: one stream of a multi-stream session stops reading while the
// server keeps sending to it. The other streams keep at least 0.8× the throughput they had
// when every stream was read (measured before the stalled stream is reset, when a stall hurts
// most), the stalled stream's sender gets no more than its buffer out (memory stays bounded),
// and the stalled stream is reset after StreamStallTimeout. Both ends being ours, flow control
// is on; a deployed peer has none, and there a stalled stream blocks its session's other
// streams until the stall timeout resets it.
func TestStalledReaderNeighbours(t *testing.T) {
	stallRun(t, stallParams{bandwidth: 512 << 10, buffer: 64 << 10, stall: protocol.DefaultStreamStallTimeout, window: 40 * time.Second, streams: 4})
}

// TestSoakStalledReader is the long form with the default buffer and more streams.
func TestSoakStalledReader(t *testing.T) {
	if !soak() {
		t.Skip("long form: make soak (ANYTLS_SOAK=1)")
	}
	stallRun(t, stallParams{bandwidth: 8 << 20, buffer: protocol.DefaultStreamBufferSize, stall: protocol.DefaultStreamStallTimeout, window: 120 * time.Second, streams: 8})
}

// countingSource is a source handler that counts the handlers still writing.
func countingSource(active *atomic.Int32) protocol.StreamHandler {
	return func(ctx context.Context, st *protocol.Stream) {
		if st.Destination() != sourceDest {
			handler(ctx, st)
			return
		}
		active.Add(1)
		defer active.Add(-1)
		handler(ctx, st)
	}
}

// TestClosedDownloadStopsSender: with half-close negotiated (both ends ours), a plain cmdFIN
// only ends one direction. A client that closes a download stream must still make the server
// stop sending: data arriving for the closed stream is answered with a resetting cmdFIN, and
// the server's handler sees its writes fail. Before the fix the server kept pushing the whole
// download into the void.
func TestClosedDownloadStopsSender(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var active atomic.Int32
		w := newPipeWorld(t, protocol.ServerConfig{Handler: countingSource(&active)})
		c := w.client(t, protocol.ClientConfig{})
		if err := echoOnce(context.Background(), c, 100); err != nil {
			t.Fatal(err)
		}
		w.sconn(0).SetBandwidth(1 << 20) // writes take fake time, so the clock moves
		st, err := c.OpenStream(context.Background(), sourceDest)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.CopyN(io.Discard, st, 200<<10); err != nil {
			t.Fatal(err)
		}
		st.Close()
		time.Sleep(time.Second)
		if n := active.Load(); n != 0 {
			t.Fatalf("%d server handlers still writing one second after the client closed the stream", n)
		}
		out := w.sconn(0).Stats().BytesOut
		time.Sleep(10 * time.Second)
		if grew := w.sconn(0).Stats().BytesOut - out; grew > 4<<10 {
			t.Errorf("server sent %d more bytes after the stream ended", grew)
		}
		// the session is fine for the next stream
		if err := echoOnce(context.Background(), c, 1000); err != nil {
			t.Fatal(err)
		}
	})
}
