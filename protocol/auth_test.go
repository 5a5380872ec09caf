package protocol

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// serveRaw runs ServeConn on one end of a pipe and returns the other end and ServeConn's result.
func serveRaw(t *testing.T, srv *Server) (net.Conn, chan error) {
	a, b := net.Pipe()
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeConn(context.Background(), b) }()
	t.Cleanup(func() { a.Close() })
	return a, errc
}

// TestFallbackReplaysEveryByte: a connection that does not authenticate is handed to the
// fallback with everything the server read replayed first, byte for byte, followed by the rest.
func TestFallbackReplaysEveryByte(t *testing.T) {
	good := sha256.Sum256([]byte("pw"))
	lastByteWrong := good
	lastByteWrong[31] ^= 1
	httpProbe := []byte("GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n")
	big := make([]byte, 20000) // larger than the server's first read
	rand.Read(big)
	tests := []struct {
		name    string
		writes  [][]byte
		wantErr error
	}{
		{"http probe", [][]byte{httpProbe, []byte("more")}, ErrAuthFailed},
		{"wrong hash, last byte", [][]byte{append(lastByteWrong[:], 0, 0), []byte("tail")}, ErrAuthFailed},
		{"wrong hash, long first record", [][]byte{big, []byte("second")}, ErrAuthFailed},
		{"exactly 34 bytes", [][]byte{bytes.Repeat([]byte{0xaa}, 34)}, ErrAuthFailed},
		{"short first record", [][]byte{[]byte("hello"), []byte(" world")}, ErrNotAnyTLS},
		// a correct hash split over two records is not AnyTLS: deployed servers reject it too
		{"correct hash, short first record", [][]byte{good[:20], good[20:], {0, 0}}, ErrNotAnyTLS},
		{"33 bytes", [][]byte{append(good[:], 0)}, ErrNotAnyTLS},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				got := make(chan []byte, 1)
				var fallbackUser string
				srv, err := NewServer(ServerConfig{
					Users:   []User{{Name: "u", Password: "pw"}},
					Handler: func(ctx context.Context, st *Stream) { t.Error("handler called"); st.Close() },
					Fallback: func(ctx context.Context, conn net.Conn) {
						defer conn.Close()
						fallbackUser, _ = UserFromContext(ctx)
						b, err := io.ReadAll(conn)
						if err != nil {
							t.Errorf("fallback read: %v", err)
						}
						got <- b
					},
				})
				if err != nil {
					t.Fatal(err)
				}
				defer srv.Close()
				a, errc := serveRaw(t, srv)
				for _, w := range tt.writes {
					if _, err := a.Write(w); err != nil {
						t.Fatal(err)
					}
				}
				a.Close()
				if b := <-got; !bytes.Equal(b, bytes.Join(tt.writes, nil)) {
					t.Fatalf("fallback read %d bytes %.40q, want the %d bytes sent", len(b), b, len(bytes.Join(tt.writes, nil)))
				}
				if err := <-errc; !errors.Is(err, tt.wantErr) {
					t.Fatalf("ServeConn = %v, want %v", err, tt.wantErr)
				}
				if fallbackUser != "" {
					t.Fatalf("fallback context carries user %q", fallbackUser)
				}
			})
		})
	}
}

// TestAuthSplitPadding: the server accepts padding0 that arrives in later records, and frames
// that arrive in the same record as the request.
func TestAuthSplitPadding(t *testing.T) {
	settings := "v=2\nclient=\npadding-md5=" + DefaultPaddingScheme.MD5()
	cases := map[string]func(auth, frames []byte) [][]byte{
		"padding split over three writes": func(auth, frames []byte) [][]byte {
			return [][]byte{auth[:34+100], auth[34+100 : 34+250], auth[34+250:], frames}
		},
		"request and frames in one write": func(auth, frames []byte) [][]byte {
			return [][]byte{append(append([]byte(nil), auth...), frames...)}
		},
		"padding and frames share a write": func(auth, frames []byte) [][]byte {
			return [][]byte{auth[:50], append(append([]byte(nil), auth[50:]...), frames...)}
		},
		"no padding": nil,
	}
	for name, split := range cases {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				srv, err := NewServer(ServerConfig{Users: []User{{Name: "u", Password: "pw"}}, Handler: echoHandler})
				if err != nil {
					t.Fatal(err)
				}
				defer srv.Close()
				a, _ := serveRaw(t, srv)
				peer := newRawPeer(t, a, false)
				defer peer.close()
				frames := clientOpen(t, settings, 1, "example.com:80")
				frames = AppendFrame(frames, CmdPSH, 1, []byte("hello"))
				var writes [][]byte
				if split == nil {
					writes = [][]byte{authRequest("pw", 0), frames}
				} else {
					writes = split(authRequest("pw", 300), frames)
				}
				for _, w := range writes {
					if _, err := a.Write(w); err != nil {
						t.Fatal(err)
					}
				}
				f := peer.expect(CmdPSH, time.Second, CmdServerSettings, CmdSYNACK)
				if f.StreamID != 1 || string(f.Data) != "hello" {
					t.Fatalf("echo frame %v %q", f, f.Data)
				}
			})
		})
	}
}

// TestUsersIdentified: with several users, the handler learns which one matched, both from
// Stream.User and from the context.
func TestUsersIdentified(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		users := []User{
			{Name: "alice", Password: "pw-alice"},
			{Name: "bob", Password: "pw-bob"},
			{Name: "carol", Password: "pw-carol"},
			{Name: "", Password: "pw-anon"},
		}
		type seen struct{ user, ctxUser string }
		got := make(chan seen, 10)
		p := newMemPair(t, ServerConfig{Users: users, Handler: func(ctx context.Context, st *Stream) {
			u, ok := UserFromContext(ctx)
			if !ok {
				t.Error("no user in the handler context")
			}
			got <- seen{st.User(), u}
			echoHandler(ctx, st)
		}}, ClientConfig{})
		for _, u := range users {
			c, err := NewClient(ClientConfig{Password: u.Password, Dial: p.dial})
			if err != nil {
				t.Fatal(err)
			}
			st, err := c.OpenStream(context.Background(), mustAddr(t, "example.com:80"))
			if err != nil {
				t.Fatal(err)
			}
			echo(t, st, []byte("hi "+u.Name))
			if s := <-got; s.user != u.Name || s.ctxUser != u.Name {
				t.Fatalf("password of %q: handler saw User()=%q, context %q", u.Name, s.user, s.ctxUser)
			}
			st.Close()
			c.Close()
		}
	})
}

func TestMatchUser(t *testing.T) {
	var table []userEntry
	for i := range 5 {
		table = append(table, userEntry{name: fmt.Sprint("u", i), hash: sha256.Sum256([]byte(fmt.Sprint("pw", i)))})
	}
	for i := range table {
		h := sha256.Sum256([]byte(fmt.Sprint("pw", i)))
		if got := matchUser(table, h[:]); got != i {
			t.Errorf("matchUser(pw%d) = %d", i, got)
		}
		h[31] ^= 0x80 // all but the last bit match
		if got := matchUser(table, h[:]); got != -1 {
			t.Errorf("near miss of pw%d matched %d", i, got)
		}
	}
	if got := matchUser(table, make([]byte, 32)); got != -1 {
		t.Errorf("zero hash matched %d", got)
	}
	if got := matchUser(nil, make([]byte, 32)); got != -1 {
		t.Errorf("empty table matched %d", got)
	}
}

// TestAuthTimeout: a connection that sends nothing is given up after AuthTimeout, not before:
// handed to the fallback, or closed.
func TestAuthTimeout(t *testing.T) {
	const timeout = 7 * time.Second
	for _, withFallback := range []bool{true, false} {
		t.Run(fmt.Sprint("fallback=", withFallback), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fellBack := make(chan time.Time, 1)
				cfg := ServerConfig{Users: []User{{Password: "pw"}}, Handler: echoHandler, AuthTimeout: timeout}
				if withFallback {
					cfg.Fallback = func(ctx context.Context, conn net.Conn) {
						fellBack <- time.Now()
						// the fallback gets a connection without the auth deadline
						conn.SetReadDeadline(time.Now().Add(time.Hour))
						n, err := conn.Read(make([]byte, 1))
						if n != 0 || err == nil {
							t.Errorf("fallback read %d, %v from a silent connection", n, err)
						}
						conn.Close()
					}
				}
				srv, err := NewServer(cfg)
				if err != nil {
					t.Fatal(err)
				}
				defer srv.Close()
				start := time.Now()
				a, errc := serveRaw(t, srv)
				closed := make(chan time.Time, 1)
				go func() {
					a.Read(make([]byte, 1))
					closed <- time.Now()
				}()
				time.Sleep(timeout - time.Millisecond)
				synctest.Wait()
				if len(fellBack) > 0 || len(closed) > 0 {
					t.Fatal("connection given up before the authentication timeout")
				}
				time.Sleep(time.Millisecond)
				synctest.Wait()
				if withFallback {
					if len(fellBack) == 0 {
						t.Fatal("fallback not called at the authentication timeout")
					}
					if at := <-fellBack; at.Sub(start) != timeout {
						t.Fatalf("fallback after %v, want %v", at.Sub(start), timeout)
					}
					a.Close()
				} else if len(closed) == 0 {
					t.Fatal("silent connection not closed at the authentication timeout")
				}
				if err := <-errc; !errors.Is(err, ErrAuthFailed) {
					t.Fatalf("ServeConn = %v, want ErrAuthFailed", err)
				}
			})
		})
	}
}

// TestWrongPasswordHeld: without a fallback, a wrong request is held (input discarded) and
// closed at a random moment within the authentication timeout; the prober learns nothing
// from an immediate close.
func TestWrongPasswordHeld(t *testing.T) {
	const timeout = 8 * time.Second
	synctest.Test(t, func(t *testing.T) {
		srv, err := NewServer(ServerConfig{Users: []User{{Password: "pw"}}, Handler: echoHandler, AuthTimeout: timeout})
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		start := time.Now()
		a, errc := serveRaw(t, srv)
		if _, err := a.Write(authRequest("wrong", 10)); err != nil {
			t.Fatal(err)
		}
		// more input is read and discarded while held
		if _, err := a.Write([]byte("more input")); err != nil {
			t.Fatal(err)
		}
		if n, err := a.Read(make([]byte, 10)); n != 0 || err == nil {
			t.Fatalf("server answered a wrong password: %d, %v", n, err)
		}
		held := time.Since(start)
		if held < timeout/4 || held > timeout {
			t.Fatalf("wrong password closed after %v, want within [%v, %v]", held, timeout/4, timeout)
		}
		if err := <-errc; !errors.Is(err, ErrAuthFailed) {
			t.Fatalf("ServeConn = %v", err)
		}
	})
}

// TestServerLimits: MaxSessions refuses a session with cmdAlert; MaxStreamsPerSession refuses
// a stream with a cmdSYNACK error.
func TestServerLimits(t *testing.T) {
	t.Run("sessions", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			p := newMemPair(t, ServerConfig{MaxSessions: 1}, ClientConfig{})
			st1 := p.open("example.com:80")
			echo(t, st1, []byte("first"))
			// st1 is open: a second session, which the server refuses with cmdAlert and closes.
			// Over net.Pipe the client may see the close before the alert when it writes.
			st2, err := p.client.OpenStream(context.Background(), mustAddr(t, "example.com:81"))
			if err == nil {
				_, err = st2.Read(make([]byte, 1))
				if !errors.Is(err, ErrAlert) {
					t.Fatalf("second session: %v, want ErrAlert", err)
				}
			}
			if err := <-p.errs; !errors.Is(err, ErrTooManySessions) {
				t.Fatalf("ServeConn = %v, want ErrTooManySessions", err)
			}
			echo(t, st1, []byte("first still works"))
			st1.Close()
		})
	})
	t.Run("streams", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			p := newMemPair(t, ServerConfig{MaxStreamsPerSession: 2}, ClientConfig{MaxStreamsPerSession: 10})
			a, b := p.open("example.com:80"), p.open("example.com:81")
			echo(t, a, []byte("a"))
			echo(t, b, []byte("b"))
			c := p.open("example.com:82")
			c.Write([]byte("c"))
			_, err := c.Read(make([]byte, 1))
			if !errors.Is(err, ErrRemoteRefused) || !strings.Contains(err.Error(), ErrTooManyStreams.Error()) {
				t.Fatalf("third stream: %v, want ErrRemoteRefused with %q", err, ErrTooManyStreams)
			}
			if p.dials.Load() != 1 {
				t.Fatal("streams did not share a session")
			}
			echo(t, a, []byte("a still works"))
			a.Close()
			b.Close()
			c.Close()
		})
	})
}

// TestServerClosesRemovedUser: UpdateUsers closes the sessions of a removed user only.
func TestServerClosesRemovedUser(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newMemPair(t, ServerConfig{Users: []User{{Name: "alice", Password: "pw-alice"}, {Name: "bob", Password: "pw-bob"}}}, ClientConfig{})
		bob, err := NewClient(ClientConfig{Password: "pw-bob", Dial: p.dial})
		if err != nil {
			t.Fatal(err)
		}
		defer bob.Close()
		sa := p.open("example.com:80")
		sb, err := bob.OpenStream(context.Background(), mustAddr(t, "example.com:80"))
		if err != nil {
			t.Fatal(err)
		}
		echo(t, sa, []byte("a"))
		echo(t, sb, []byte("b"))
		if err := p.srv.UpdateUsers([]User{{Name: "alice", Password: "pw-alice"}}); err != nil {
			t.Fatal(err)
		}
		if _, err := sb.Read(make([]byte, 1)); err == nil {
			t.Fatal("removed user's stream still open")
		}
		echo(t, sa, []byte("alice stays"))
		sa.Close()
	})
}
