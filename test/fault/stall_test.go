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

// TestStalledReaderNeighbours: one stream of a multi-stream session stops reading while the
// server keeps sending to it. The other streams must keep at least 0.8× the throughput they
// had when every stream was read, the stalled stream's buffering stays within its bound, and
// the stalled stream is reset after StreamStallTimeout.
func TestStalledReaderNeighbours(t *testing.T) {
	p := stallParams{bandwidth: 512 << 10, buffer: 64 << 10, stall: 10 * time.Second, window: 60 * time.Second, streams: 4}
	if soak() {
		p = stallParams{bandwidth: 4 << 20, buffer: protocol.DefaultStreamBufferSize, stall: protocol.DefaultStreamStallTimeout, window: 120 * time.Second, streams: 8}
	}
	synctest.Test(t, func(t *testing.T) {
		w := newPipeWorld(t, protocol.ServerConfig{})
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
		heapBefore := heapInUse()

		stallStart := time.Now()
		with, stalled, done := downloadPhase(t, c, p, true)
		heapDuring := heapInUse()
		// The stalled stream holds at most its buffer, then fails with ErrStreamStalled.
		n, err := io.Copy(io.Discard, stalled)
		resetAfter := time.Since(stallStart)
		done()

		ratio := float64(with) / float64(base)
		t.Logf("link %d KiB/s, %d streams, buffer %d KiB, stall timeout %v, window %v", p.bandwidth>>10, p.streams, p.buffer>>10, p.stall, p.window)
		t.Logf("others: %.1f KiB/s with every stream read, %.1f KiB/s with one stalled: ratio %.2f",
			float64(base)/p.window.Seconds()/1024, float64(with)/p.window.Seconds()/1024, ratio)
		t.Logf("stalled stream: %d bytes buffered, then %v (observed at %v); heap %+.1f MiB during the stall",
			n, err, resetAfter, (float64(heapDuring)-float64(heapBefore))/mib)
		if ratio < 0.8 {
			t.Errorf("throughput ratio with a stalled neighbour %.2f, want >= 0.8", ratio)
		}
		if !errors.Is(err, protocol.ErrStreamStalled) {
			t.Errorf("stalled stream ended with %v, want ErrStreamStalled", err)
		}
		if n > int64(p.buffer)+protocol.MaxFrameData {
			t.Errorf("stalled stream buffered %d bytes, bound %d", n, p.buffer)
		}
	})
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
