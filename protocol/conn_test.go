package protocol

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"testing/synctest"
	"time"

	"golang.org/x/net/nettest"
)

// streamPipe opens a stream through an in-memory client and server and returns both ends.
func streamPipe(t *testing.T, scfg ServerConfig, ccfg ClientConfig) (client, server *Stream, stop func()) {
	streams := make(chan *Stream, 1)
	scfg.Handler = func(ctx context.Context, st *Stream) {
		st.Report(nil)
		streams <- st
	}
	p := newMemPair(t, scfg, ccfg)
	c := p.open("example.com:80")
	// a reused session would hold the SYN until the first write; this is a fresh one
	s := <-streams
	return c, s, func() {
		c.Close()
		s.Close()
		p.close()
	}
}

func TestStreamNetConn(t *testing.T) {
	// nettest's timeout tests write without pause for ~100 ms into a peer that does not read.
	// AnyTLS has no flow control: once the peer's stream buffer is full its session reader
	// blocks, so does our connection write, and a write deadline cannot interrupt a frame already
	// going out on the shared connection (see TestWriteBlockedBehindStalledPeer). The buffer is
	// made larger than such a burst can fill, so these subtests test deadlines, not that limit.
	cfg := ClientConfig{StreamBufferSize: 64 << 20}
	scfg := ServerConfig{StreamBufferSize: 64 << 20}
	t.Run("client-server", func(t *testing.T) {
		nettest.TestConn(t, func() (net.Conn, net.Conn, func(), error) {
			c, s, stop := streamPipe(t, scfg, cfg)
			return c, s, stop, nil
		})
	})
	t.Run("server-client", func(t *testing.T) {
		nettest.TestConn(t, func() (net.Conn, net.Conn, func(), error) {
			c, s, stop := streamPipe(t, scfg, cfg)
			return s, c, stop, nil
		})
	})
}

// TestHalfClose: between two ends of ours, CloseWrite sends cmdFIN; the peer reads io.EOF and
// can still write back, in both directions.
func TestHalfClose(t *testing.T) {
	for _, clientCloses := range []bool{true, false} {
		name := "server closes write"
		if clientCloses {
			name = "client closes write"
		}
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c, s, stop := streamPipe(t, ServerConfig{}, ClientConfig{})
				defer stop()
				closer, other := c, s
				if !clientCloses {
					closer, other = s, c
				}
				if _, err := closer.Write([]byte("request")); err != nil {
					t.Fatal(err)
				}
				if err := closer.CloseWrite(); err != nil {
					t.Fatal(err)
				}
				if _, err := closer.Write([]byte("x")); err == nil {
					t.Fatal("Write after CloseWrite succeeded")
				}
				b, err := io.ReadAll(other)
				if err != nil || string(b) != "request" {
					t.Fatalf("peer read %q, %v; want the request then io.EOF", b, err)
				}
				reply := bytes.Repeat([]byte("reply "), 50000)
				go func() {
					other.Write(reply)
					other.Close()
				}()
				got, err := io.ReadAll(closer)
				if err != nil || !bytes.Equal(got, reply) {
					t.Fatalf("half-closed end read %d bytes, %v; want the %d-byte reply then io.EOF", len(got), err, len(reply))
				}
			})
		})
	}
}

// TestNoFinToPeerWithoutHalfClose: toward a peer that did not announce half-close (deployed
// peers treat cmdFIN as a full close), CloseWrite sends nothing; Close sends the cmdFIN.
func TestNoFinToPeerWithoutHalfClose(t *testing.T) {
	for _, side := range []string{"server disables", "client disables"} {
		t.Run(side, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				scfg, ccfg := ServerConfig{}, ClientConfig{}
				if side == "server disables" {
					scfg.DisableHalfClose = true
				} else {
					ccfg.DisableHalfClose = true
				}
				streams := make(chan *Stream, 1)
				scfg.Handler = func(ctx context.Context, st *Stream) {
					st.Report(nil)
					streams <- st
				}
				p := newMemPair(t, scfg, ccfg)
				c := p.open("example.com:80")
				s := <-streams
				echoBack := func(from, to *Stream, msg string) {
					t.Helper()
					if _, err := from.Write([]byte(msg)); err != nil {
						t.Fatal(err)
					}
					b := make([]byte, len(msg))
					if _, err := io.ReadFull(to, b); err != nil {
						t.Fatal(err)
					}
				}
				echoBack(c, s, "hello")
				if err := c.CloseWrite(); err != nil {
					t.Fatal(err)
				}
				// the other direction still works: nothing was closed
				echoBack(s, c, "reply")
				if err := s.CloseWrite(); err != nil {
					t.Fatal(err)
				}
				synctest.Wait()
				_, up := clientFrames(t, p.conn(0).Bytes())
				down := parseFrames(t, p.serverConn(0).Bytes())
				if n := countCmd(up, CmdFIN) + countCmd(down, CmdFIN); n != 0 {
					t.Fatalf("CloseWrite sent %d cmdFIN toward a peer without half-close", n)
				}
				c.Close()
				if _, err := s.Read(make([]byte, 1)); err == nil {
					t.Fatal("server stream still open after the client's Close")
				}
				s.Close()
				synctest.Wait()
				_, up = clientFrames(t, p.conn(0).Bytes())
				if n := countCmd(up, CmdFIN); n != 1 {
					t.Fatalf("Close sent %d cmdFIN, want 1", n)
				}
				// the session is reusable afterwards
				st := p.open("example.com:81")
				st.Write([]byte("x"))
				if s2 := <-streams; s2.ID() != 2 {
					t.Fatalf("second stream id %d", s2.ID())
				} else {
					s2.Close()
				}
				st.Close()
			})
		})
	}
}

// TestCloseStopsPeerWrites: under half-close an empty cmdFIN only ends one direction, so a
// stream closed for good must stop a peer that keeps writing into it (as TCP answers with an
// RST): the peer's writes fail with ErrStreamReset instead of vanishing.
func TestCloseStopsPeerWrites(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		writeErr := make(chan error, 1)
		p := newMemPair(t, ServerConfig{Handler: func(ctx context.Context, st *Stream) {
			defer st.Close()
			st.Report(nil)
			buf := make([]byte, 1024)
			for {
				if _, err := st.Write(buf); err != nil {
					writeErr <- err
					return
				}
			}
		}}, ClientConfig{})
		st := p.open("example.com:80")
		if _, err := io.ReadFull(st, make([]byte, 4096)); err != nil {
			t.Fatal(err)
		}
		st.Close()
		if err := <-writeErr; !errors.Is(err, ErrStreamReset) {
			t.Fatalf("server's writes after the client's Close: %v, want ErrStreamReset", err)
		}
		synctest.Wait()
		if open, _ := p.client.SessionCount(); open != 1 || p.srv.SessionCount() != 1 {
			t.Fatal("the session did not survive")
		}
	})
}

// TestPeerFinWithoutHalfClose: after a cmdFIN from a peer without half-close (a full close),
// reads return io.EOF after the data and writes fail with ErrStreamReset.
func TestPeerFinWithoutHalfClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, s, stop := streamPipe(t, ServerConfig{DisableHalfClose: true}, ClientConfig{})
		defer stop()
		s.Write([]byte("bye"))
		s.Close()
		b, err := io.ReadAll(c)
		if err != nil || string(b) != "bye" {
			t.Fatalf("read %q, %v", b, err)
		}
		if _, err := c.Write([]byte("x")); !errors.Is(err, ErrStreamReset) {
			t.Fatalf("Write after the peer's full close: %v, want ErrStreamReset", err)
		}
	})
}

// TestStreamDeadlines: deadlines in fake time: a read deadline expires exactly, and clearing
// it lets a later read succeed.
func TestStreamDeadlines(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, s, stop := streamPipe(t, ServerConfig{}, ClientConfig{})
		defer stop()
		start := time.Now()
		c.SetReadDeadline(start.Add(3 * time.Second))
		_, err := c.Read(make([]byte, 1))
		var ne net.Error
		if !errors.Is(err, ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("Read = %v, want a timeout", err)
		}
		if d := time.Since(start); d != 3*time.Second {
			t.Fatalf("deadline fired after %v", d)
		}
		c.SetReadDeadline(time.Time{})
		go s.Write([]byte("ok"))
		b := make([]byte, 2)
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		c.Close()
		if _, err := c.Read(b); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read after Close = %v, want net.ErrClosed", err)
		}
		if _, err := c.Write(b); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Write after Close = %v, want net.ErrClosed", err)
		}
	})
}

// TestWriteBlockedBehindStalledPeer: a write into a stream whose peer stopped reading blocks
// once the peer's buffer is full, and its deadline cannot cut a frame already on the shared
// connection. What bounds the wait is the peer's StreamStallTimeout: the peer resets the
// stream, its session reader moves on, the write completes and the deadline is reported; the
// session survives for other streams.
func TestWriteBlockedBehindStalledPeer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const stall = 3 * time.Second
		c, _, stop := streamPipe(t, ServerConfig{StreamBufferSize: 64 << 10, StreamStallTimeout: stall}, ClientConfig{})
		defer stop()
		start := time.Now()
		c.SetWriteDeadline(start.Add(time.Second))
		buf := make([]byte, 16<<10)
		var err error
		for err == nil {
			_, err = c.Write(buf)
		}
		if !errors.Is(err, ErrDeadlineExceeded) {
			t.Fatalf("Write = %v, want a timeout", err)
		}
		if d := time.Since(start); d < time.Second || d > stall {
			t.Fatalf("write with a 1s deadline returned after %v, want within the peer's stall timeout %v", d, stall)
		}
	})
}
