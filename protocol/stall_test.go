package protocol

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"testing"
	"testing/synctest"
	"time"
)

// TestStalledReaderClientSide: a client stream whose reader stops does not hold the session's
// other streams for longer than StreamStallTimeout: it is reset with ErrStreamStalled, the other
// stream's data arrives intact, and the heartbeat does not declare the session dead meanwhile.
func TestStalledReaderClientSide(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const stall = 20 * time.Second // longer than heartbeat interval + timeout on purpose
		payload := make([]byte, 1<<20)
		rand.Read(payload)
		p := newMemPair(t, ServerConfig{Handler: func(ctx context.Context, st *Stream) {
			defer st.Close()
			st.Report(nil)
			st.Write(payload)
		}}, ClientConfig{
			MaxStreamsPerSession: 4,
			StreamBufferSize:     64 << 10,
			StreamStallTimeout:   stall,
		})
		start := time.Now()
		slow := p.open("example.com:1")
		fast := p.open("example.com:2")
		if slow.sess != fast.sess {
			t.Fatal("streams on different sessions")
		}
		got, err := io.ReadAll(fast)
		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("fast stream read %d bytes, %v", len(got), err)
		}
		if d := time.Since(start); d > stall {
			t.Fatalf("fast stream held for %v, more than the stall timeout %v", d, stall)
		}
		// With flow control (both ends ours) the fast stream was not held at all; the stalled
		// one is reset once its reader made no progress for the stall timeout.
		time.Sleep(stall + time.Second)
		_, err = slow.Read(make([]byte, 1))
		if !errors.Is(err, ErrStreamStalled) {
			t.Fatalf("stalled stream: %v, want ErrStreamStalled", err)
		}
		slow.Close()
		fast.Close()
		if open, _ := p.client.SessionCount(); open != 1 {
			t.Fatalf("%d sessions: the stall killed the session", open)
		}
		st := p.open("example.com:3")
		got, err = io.ReadAll(st)
		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("next stream read %d bytes, %v", len(got), err)
		}
		st.Close()
		if n := p.dials.Load(); n != 1 {
			t.Fatalf("%d dials, want the session kept", n)
		}
	})
}

// TestSlowReaderBackPressure: a reader that is slow but keeps draining is back-pressured, not
// reset, however long the transfer takes, and its data arrives intact. (What counts as progress:
// a frame waiting for room is delivered within StreamStallTimeout, i.e. the reader drains up to
// one frame, at most 64 KiB, per StreamStallTimeout.)
func TestSlowReaderBackPressure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		payload := make([]byte, 512<<10)
		rand.Read(payload)
		p := newMemPair(t, ServerConfig{Handler: func(ctx context.Context, st *Stream) {
			defer st.Close()
			st.Report(nil)
			st.Write(payload)
		}}, ClientConfig{StreamBufferSize: 32 << 10, StreamStallTimeout: 5 * time.Second})
		st := p.open("example.com:1")
		var got []byte
		buf := make([]byte, 8<<10)
		start := time.Now()
		for {
			time.Sleep(500 * time.Millisecond) // 16 KiB/s: a frame's room within 4 s < 5 s
			n, err := st.Read(buf)
			got = append(got, buf[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("after %d bytes: %v", len(got), err)
			}
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("read %d bytes, want %d intact", len(got), len(payload))
		}
		if d := time.Since(start); d < 30*time.Second {
			t.Fatalf("transfer took %v: the reader was not back-pressured", d)
		}
		st.Close()
	})
}

// TestStalledReaderServerSide: a server handler that stops reading its stream does not hold the
// session's other streams beyond the server's StreamStallTimeout.
func TestStalledReaderServerSide(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const stall = 5 * time.Second
		release := make(chan struct{})
		p := newMemPair(t, ServerConfig{
			StreamBufferSize:   64 << 10,
			StreamStallTimeout: stall,
			Handler: func(ctx context.Context, st *Stream) {
				if st.Destination().Port == 1 {
					st.Report(nil)
					<-release // never reads
					_, err := st.Read(make([]byte, 1))
					if !errors.Is(err, ErrStreamStalled) {
						t.Errorf("server's stalled stream: %v, want ErrStreamStalled", err)
					}
					st.Close()
					return
				}
				echoHandler(ctx, st)
			},
		}, ClientConfig{MaxStreamsPerSession: 4})
		slow := p.open("example.com:1")
		fast := p.open("example.com:2")
		data := make([]byte, 1<<20)
		go slow.Write(data)
		synctest.Wait() // the server's session reader is now blocked on the slow stream
		start := time.Now()
		echo(t, fast, []byte("through"))
		// With flow control (both ends ours) a stalled neighbour holds nobody; the stalled stream
		// is reset once its reader made no progress for the stall timeout.
		if d := time.Since(start); d != 0 {
			t.Fatalf("other stream held for %v behind a stalled neighbour", d)
		}
		time.Sleep(stall + time.Second)
		close(release)
		// the client learns that the server reset the stream (not a mere half-close)
		if _, err := slow.Read(make([]byte, 1)); !errors.Is(err, ErrStreamReset) {
			t.Fatalf("client's side of the stalled stream: %v, want ErrStreamReset", err)
		}
		if _, err := slow.Write([]byte("more")); err == nil {
			t.Fatal("client can still write into the reset stream")
		}
		slow.Close()
		fast.Close()
		synctest.Wait()
	})
}
