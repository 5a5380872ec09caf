package protocol

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// testPair runs a server on loopback TCP (no TLS: the engine is TLS-agnostic) whose handler
// serves streams with fn, and a client dialing it.
type testPair struct {
	srv    *Server
	client *Client
	ln     net.Listener
}

func echoHandler(ctx context.Context, st *Stream) {
	defer st.Close()
	st.Report(nil)
	io.Copy(st, st)
}

func newTestPair(t testing.TB, scfg ServerConfig, ccfg ClientConfig) *testPair {
	t.Helper()
	if scfg.Users == nil {
		scfg.Users = []User{{Name: "alice", Password: "pw-alice"}}
	}
	if scfg.Handler == nil {
		scfg.Handler = echoHandler
	}
	srv, err := NewServer(scfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), ln)
	if ccfg.Password == "" {
		ccfg.Password = "pw-alice"
	}
	if ccfg.Dial == nil {
		ccfg.Dial = func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", ln.Addr().String())
		}
	}
	c, err := NewClient(ccfg)
	if err != nil {
		t.Fatal(err)
	}
	p := &testPair{srv: srv, client: c, ln: ln}
	t.Cleanup(func() {
		c.Close()
		ln.Close()
		srv.Close()
	})
	return p
}

func mustAddr(t testing.TB, s string) Addr {
	a, err := ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestEchoRoundTrip(t *testing.T) {
	p := newTestPair(t, ServerConfig{}, ClientConfig{})
	for i := 0; i < 3; i++ {
		st, err := p.client.OpenStream(context.Background(), mustAddr(t, "example.com:80"))
		if err != nil {
			t.Fatal(err)
		}
		data := make([]byte, 300_000)
		rand.Read(data)
		go func() {
			st.Write(data)
		}()
		got := make([]byte, len(data))
		if _, err := io.ReadFull(st, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatal("echo mismatch")
		}
		st.Close()
	}
	// serial streams reuse one session
	time.Sleep(50 * time.Millisecond)
	if open, _ := p.client.SessionCount(); open != 1 {
		t.Fatalf("open sessions = %d, want 1 (reuse)", open)
	}
}

func TestConcurrentStreams(t *testing.T) {
	p := newTestPair(t, ServerConfig{}, ClientConfig{})
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := p.client.OpenStream(context.Background(), mustAddr(t, "10.0.0.1:443"))
			if err != nil {
				errs <- err
				return
			}
			defer st.Close()
			data := make([]byte, 100_000)
			rand.Read(data)
			want := sha256.Sum256(data)
			go st.Write(data)
			got := make([]byte, len(data))
			if _, err := io.ReadFull(st, got); err != nil {
				errs <- err
				return
			}
			if sha256.Sum256(got) != want {
				errs <- errors.New("checksum mismatch")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
