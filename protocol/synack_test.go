package protocol

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// TestSynAckReportsDialError: the handler's Report(err) reaches the client as a stream error
// carrying the text; the session survives for the next stream.
func TestSynAckReportsDialError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const text = "dial tcp 192.0.2.1:80: connect: connection refused"
		p := newMemPair(t, ServerConfig{Handler: func(ctx context.Context, st *Stream) {
			if st.Destination().Port == 80 {
				st.Report(errors.New(text))
				return
			}
			echoHandler(ctx, st)
		}}, ClientConfig{})
		st := p.open("192.0.2.1:80")
		st.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
		_, err := st.Read(make([]byte, 10))
		if !errors.Is(err, ErrRemoteRefused) {
			t.Fatalf("Read = %v, want ErrRemoteRefused", err)
		}
		var re *RemoteError
		if !errors.As(err, &re) || re.Text != text || !strings.Contains(err.Error(), text) {
			t.Fatalf("error %q does not carry the server's text %q", err, text)
		}
		if _, err := st.Write([]byte("x")); !errors.Is(err, ErrRemoteRefused) {
			t.Fatalf("Write after refusal = %v, want ErrRemoteRefused", err)
		}
		st.Close()
		synctest.Wait()
		st2 := p.open("192.0.2.1:443")
		echo(t, st2, []byte("fine"))
		st2.Close()
		if n := p.dials.Load(); n != 1 {
			t.Fatalf("%d sessions, want the refused stream's session reused", n)
		}
		down := parseFrames(t, p.serverConn(0).Bytes())
		var acks []string
		for _, f := range down {
			if f.Cmd == CmdSYNACK {
				acks = append(acks, string(f.Data))
			}
		}
		if len(acks) != 2 || acks[0] != text || acks[1] != "" {
			t.Fatalf("SYNACKs %q, want [%q, \"\"]", acks, text)
		}
	})
}

// TestEarlySynAck: a handler that has not reported within EarlySynAckDelay gets an empty
// cmdSYNACK sent for it (deployed clients kill the session after 3 s); its later failure
// closes the stream.
func TestEarlySynAck(t *testing.T) {
	for _, fail := range []bool{true, false} {
		name := "late success"
		if fail {
			name = "late failure"
		}
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const dialTime = 5 * time.Second
				p := newMemPair(t, ServerConfig{
					EarlySynAckDelay: 2 * time.Second,
					Handler: func(ctx context.Context, st *Stream) {
						time.Sleep(dialTime) // a slow outbound dial
						if fail {
							st.Report(errors.New("dial timeout"))
							return
						}
						st.Report(nil)
						echoHandler(ctx, st)
					},
				}, ClientConfig{SynAckTimeout: 3 * time.Second})
				start := time.Now()
				st := p.open("example.com:80")
				type result struct {
					err error
					at  time.Duration
				}
				res := make(chan result, 1)
				go func() {
					_, err := st.Read(make([]byte, 10))
					res <- result{err, time.Since(start)}
				}()
				time.Sleep(2*time.Second + time.Millisecond)
				synctest.Wait()
				down := parseFrames(t, p.serverConn(0).Bytes())
				if n := countCmd(down, CmdSYNACK); n != 1 {
					t.Fatalf("%d SYNACKs after EarlySynAckDelay, want the early one", n)
				}
				time.Sleep(2 * time.Second) // past the client's SYNACK wait: nothing fails
				synctest.Wait()
				if len(res) > 0 {
					r := <-res
					t.Fatalf("stream failed at %v with %v before the dial finished", r.at, r.err)
				}
				if fail {
					r := <-res
					if r.err != io.EOF || r.at != dialTime {
						t.Fatalf("late failure: Read = %v at %v, want io.EOF at %v", r.err, r.at, dialTime)
					}
				} else {
					if _, err := st.Write([]byte("ping")); err != nil {
						t.Fatal(err)
					}
					if r := <-res; r.err != nil {
						t.Fatalf("late success: Read = %v", r.err)
					}
				}
				st.Close()
				synctest.Wait()
				down = parseFrames(t, p.serverConn(0).Bytes())
				for _, f := range down {
					if f.Cmd == CmdSYNACK && len(f.Data) != 0 {
						t.Fatalf("error SYNACK %q after the early one", f.Data)
					}
				}
				if n := countCmd(down, CmdSYNACK); n != 1 {
					t.Fatalf("%d SYNACKs for one stream, want 1", n)
				}
			})
		})
	}
}

// TestSynAckTimeoutFailsOnlyTheStream: a v2 server that never acknowledges a stream fails that
// stream after SynAckTimeout; the session is probed, survives and carries the next stream.
func TestSynAckTimeoutFailsOnlyTheStream(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const wait = 4 * time.Second
		c, peers := fakeServerClient(t, ClientConfig{SynAckTimeout: wait})
		start := time.Now()
		st, err := c.OpenStream(context.Background(), mustAddr(t, "example.com:443"))
		if err != nil {
			t.Fatal(err)
		}
		srv := <-peers
		defer srv.close()
		srv.expect(CmdSettings, time.Second)
		srv.write(CmdServerSettings, 0, []byte("v=2"))
		srv.expect(CmdSYN, time.Second)
		srv.expect(CmdPSH, time.Second) // the address
		_, err = st.Read(make([]byte, 10))
		if !errors.Is(err, ErrSynAckTimeout) {
			t.Fatalf("Read = %v, want ErrSynAckTimeout", err)
		}
		if d := time.Since(start); d != wait {
			t.Fatalf("stream failed after %v, want %v", d, wait)
		}
		// the client gives the stream up (cmdFIN) and probes the session
		fin := srv.expect(CmdFIN, time.Second, CmdHeartRequest)
		if fin.StreamID != 1 {
			t.Fatalf("FIN for stream %d", fin.StreamID)
		}
		srv.write(CmdHeartResponse, 0, nil)
		st.Close()
		synctest.Wait()
		if open, _ := c.SessionCount(); open != 1 {
			t.Fatalf("%d sessions open, want the session kept", open)
		}
		st2, err := c.OpenStream(context.Background(), mustAddr(t, "example.com:443"))
		if err != nil {
			t.Fatal(err)
		}
		go st2.Write([]byte("hi"))
		syn := srv.expect(CmdSYN, time.Second, CmdHeartRequest, CmdFIN)
		if syn.StreamID != 2 {
			t.Fatalf("second stream id %d, want 2 on the same session", syn.StreamID)
		}
		srv.write(CmdSYNACK, 2, nil)
		srv.write(CmdPSH, 2, []byte("ok"))
		b := make([]byte, 2)
		if _, err := io.ReadFull(st2, b); err != nil || string(b) != "ok" {
			t.Fatalf("second stream read %q, %v", b, err)
		}
		time.Sleep(2 * wait) // acknowledged: no timeout later
		synctest.Wait()
		if _, err := st2.Write([]byte("more")); err != nil {
			t.Fatalf("acknowledged stream failed: %v", err)
		}
		st2.Close()
	})
}

// TestSynAckAcceptedImmediately: a server that acknowledges before dialing (mihomo) is fine.
func TestSynAckAcceptedImmediately(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, peers := fakeServerClient(t, ClientConfig{})
		st, err := c.OpenStream(context.Background(), mustAddr(t, "example.com:443"))
		if err != nil {
			t.Fatal(err)
		}
		srv := <-peers
		defer srv.close()
		srv.autoHeart.Store(true)
		srv.expect(CmdSettings, time.Second)
		srv.write(CmdServerSettings, 0, []byte("v=2"))
		srv.write(CmdSYNACK, 1, nil)
		srv.expect(CmdSYN, time.Second)
		time.Sleep(time.Minute)
		srv.write(CmdPSH, 1, []byte("late data"))
		b := make([]byte, 9)
		if _, err := io.ReadFull(st, b); err != nil {
			t.Fatalf("Read = %v", err)
		}
		st.Close()
	})
}

// recordsWith returns the server's writes (records) that hold a frame with command cmd, each
// as its frames.
func recordsWith(t *testing.T, c *recConn, cmd Command) [][]rawFrame {
	t.Helper()
	var out [][]rawFrame
	for _, w := range c.Writes() {
		frames := parseFrames(t, w)
		if countCmd(frames, cmd) > 0 {
			out = append(out, frames)
		}
	}
	return out
}

// A successful SYNACK waits briefly for the stream's first data and goes out in the same
// record, first; with no data in time it goes alone; a stream closed with no data sends it
// before its FIN. The client sees the same frames in the same order in every case. On a fresh
// session the server's settings answer (no flow control asked) rides in that record too.
func TestSynAckCoalescing(t *testing.T) {
	cases := []struct {
		name    string
		handler func(ctx context.Context, st *Stream)
		want    []Command // the commands of the record holding the SYNACK (cmdWaste aside)
	}{
		{"rides with the first data", func(ctx context.Context, st *Stream) {
			defer st.Close()
			st.Report(nil)
			st.Write([]byte("hello"))
			io.Copy(io.Discard, st)
		}, []Command{CmdServerSettings, CmdSYNACK, CmdPSH}},
		{"alone when the data is late", func(ctx context.Context, st *Stream) {
			defer st.Close()
			st.Report(nil)
			time.Sleep(time.Second)
			st.Write([]byte("hello"))
			io.Copy(io.Discard, st)
		}, []Command{CmdSYNACK}}, // the settings answer, due at the same moment, may share it
		{"before the FIN of a stream closed with no data", func(ctx context.Context, st *Stream) {
			st.Report(nil)
			st.Close()
		}, []Command{CmdServerSettings, CmdSYNACK, CmdFIN}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p := newMemPair(t, ServerConfig{Handler: c.handler}, ClientConfig{})
				st := p.open("192.0.2.1:80")
				defer st.Close()
				st.Write([]byte("x"))
				b := make([]byte, 5)
				n, err := io.ReadFull(st, b)
				if c.want[len(c.want)-1] == CmdFIN {
					if n != 0 || err == nil {
						t.Fatalf("read %q, %v; want the end of the stream", b[:n], err)
					}
				} else if err != nil || string(b) != "hello" {
					t.Fatalf("read %q, %v", b[:n], err)
				}
				synctest.Wait()
				recs := recordsWith(t, p.serverConn(0), CmdSYNACK)
				if len(recs) != 1 {
					t.Fatalf("%d records hold a SYNACK, want 1", len(recs))
				}
				var got []Command
				for _, f := range recs[0] {
					settingsOptional := c.want[0] != CmdServerSettings
					if f.Cmd != CmdWaste && (f.Cmd != CmdServerSettings || !settingsOptional) {
						got = append(got, f.Cmd)
					}
				}
				if fmt.Sprint(got) != fmt.Sprint(c.want) {
					t.Fatalf("record holding the SYNACK: %v, want %v", got, c.want)
				}
			})
		})
	}
}

// A stream whose client half-closes right after its request still gets its SYNACK in time
// when the answer takes long (the client's SYNACK wait must not run out).
func TestSynAckAfterClientHalfClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newMemPair(t, ServerConfig{Handler: func(ctx context.Context, st *Stream) {
			defer st.Close()
			st.Report(nil)
			io.Copy(io.Discard, st) // until the client's CloseWrite
			time.Sleep(10 * time.Second)
			st.Write([]byte("late"))
		}}, ClientConfig{})
		st2 := p.open("192.0.2.1:80")
		defer st2.Close()
		st2.Write([]byte("GET"))
		if err := st2.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(st2)
		if err != nil || string(b) != "late" {
			t.Fatalf("read %q, %v; want the late answer", b, err)
		}
		// It went before the answer, alone (the settings answer may share its record).
		recs := recordsWith(t, p.serverConn(0), CmdSYNACK)
		if len(recs) != 1 || countCmd(recs[0], CmdPSH) != 0 {
			t.Fatalf("records holding a SYNACK: %v, want one, without data", recs)
		}
	})
}

// A client that half-closes before the server's dial finishes (HTTP/1.0 style) still gets its
// SYNACK, and its stream survives the client's SYNACK wait.
func TestSynAckAfterHalfCloseBeforeReport(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newMemPair(t, ServerConfig{Handler: func(ctx context.Context, st *Stream) {
			defer st.Close()
			io.ReadAll(st) // the whole request, to the client's CloseWrite
			st.Report(nil)
			st.Write([]byte("part 1 "))
			time.Sleep(20 * time.Second)
			st.Write([]byte("part 2"))
		}}, ClientConfig{SynAckTimeout: 3 * time.Second})
		st := p.open("example.com:80")
		defer st.Close()
		st.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
		st.CloseWrite()
		got, err := io.ReadAll(st)
		if err != nil || string(got) != "part 1 part 2" {
			t.Fatalf("read %q, %v", got, err)
		}
		synctest.Wait()
		if n := countCmd(parseFrames(t, p.serverConn(0).Bytes()), CmdSYNACK); n != 1 {
			t.Fatalf("%d SYNACKs, want 1", n)
		}
	})
}

// A server write that misses its deadline waiting for the session keeps the SYNACK it was to
// carry: the next write (or the timer) sends it.
func TestSynAckKeptWhenWriteMissesDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newMemPair(t, ServerConfig{Handler: func(ctx context.Context, st *Stream) {
			defer st.Close()
			st.Report(nil)
			s := st.sess
			s.wsem <- struct{}{} // another stream's long write holds the session
			st.SetWriteDeadline(time.Now().Add(time.Second))
			if _, err := st.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("write = %v, want a deadline error", err)
			}
			<-s.wsem
			st.SetWriteDeadline(time.Time{})
			st.Write([]byte("hello"))
			io.Copy(io.Discard, st) // until the client closes
		}}, ClientConfig{SynAckTimeout: 3 * time.Second})
		st := p.open("example.com:80")
		defer st.Close()
		st.Write([]byte("hi"))
		b := make([]byte, 5)
		if _, err := io.ReadFull(st, b); err != nil || string(b) != "hello" {
			t.Fatalf("read %q, %v", b, err)
		}
		time.Sleep(10 * time.Second) // past the client's SYNACK wait
		synctest.Wait()
		if n := countCmd(parseFrames(t, p.serverConn(0).Bytes()), CmdSYNACK); n != 1 {
			t.Fatalf("%d SYNACKs, want 1", n)
		}
		st.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := st.Read(b); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("stream after the SYNACK wait: %v, want it alive (a read deadline error)", err)
		}
	})
}

// A deadline set on a stream after Close does not hang (a stopped timer used to be waited for).
func TestDeadlineAfterClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newMemPair(t, ServerConfig{}, ClientConfig{})
		st := p.open("example.com:80")
		st.SetReadDeadline(time.Now().Add(time.Hour))
		st.Close()
		done := make(chan struct{})
		go func() {
			st.SetReadDeadline(time.Now().Add(time.Minute))
			st.SetReadDeadline(time.Time{})
			close(done)
		}()
		synctest.Wait()
		select {
		case <-done:
		default:
			t.Fatal("SetReadDeadline after Close hangs")
		}
	})
}
