package protocol

import (
	"context"
	"io"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestNoGoroutineOutlivesClose: over real TCP, with streams in every state (transferring,
// half-closed, stalled, handler blocked, opened but never written), closing the client and the
// server ends every goroutine they started.
func TestNoGoroutineOutlivesClose(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) }) // runs after newTestPair's cleanup
	block := make(chan struct{})
	defer close(block)
	p := newTestPair(t, ServerConfig{Handler: func(ctx context.Context, st *Stream) {
		st.Report(nil)
		switch st.Destination().Port {
		case 1: // echo
			io.Copy(st, st)
		case 2: // floods a reader that never reads
			buf := make([]byte, 32<<10)
			for {
				if _, err := st.Write(buf); err != nil {
					break
				}
			}
		case 3: // blocked outside the engine until the test ends
			select {
			case <-block:
			case <-ctx.Done():
			}
		}
		st.Close()
	}}, ClientConfig{MaxStreamsPerSession: 3, StreamBufferSize: 64 << 10})
	ctx := context.Background()
	var streams []*Stream
	open := func(port uint16) *Stream {
		st, err := p.client.OpenStream(ctx, Addr{Fqdn: "example.com", Port: port})
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, st)
		return st
	}
	open(0)
	echo(t, open(1), []byte("ping")) // before the flood, which holds the session's reader
	streams[1].CloseWrite()
	open(2)
	open(3).Write([]byte("x"))
	waitFor(t, 5*time.Second, "the flood to fill the buffer", func() bool {
		streams[2].mu.Lock()
		defer streams[2].mu.Unlock()
		return streams[2].rbytes >= 64<<10
	})
	// and one stream opened on a reused session but never written (SYN pending)
	idle, err := p.client.OpenStream(ctx, Addr{Fqdn: "example.com", Port: 9})
	if err != nil {
		t.Fatal(err)
	}
	_ = idle
	p.client.Close()
	p.ln.Close()
	p.srv.Close()
	waitFor(t, 5*time.Second, "server sessions to end", func() bool { return p.srv.SessionCount() == 0 })
}
