package metrics_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"net"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/anytls-engine/anytls/adapter/metrics"
	"github.com/anytls-engine/anytls/adapter/metrics/metricstest"
	"github.com/anytls-engine/anytls/protocol"
)

func echoHandler(ctx context.Context, st *protocol.Stream) {
	defer st.Close()
	st.Report(nil)
	io.Copy(st, st)
}

// rig is an engine server on loopback TCP (the engine does not need TLS) exporting its metrics
// through a Collector served by an HTTP test server.
type rig struct {
	srv  *protocol.Server
	ln   net.Listener
	col  *metrics.Collector
	http *httptest.Server
}

func newRig(t *testing.T, cfg protocol.ServerConfig) *rig {
	t.Helper()
	r := &rig{col: metrics.New()}
	cfg.Metrics = r.col
	if cfg.Handler == nil {
		cfg.Handler = echoHandler
	}
	var err error
	if r.srv, err = protocol.NewServer(cfg); err != nil {
		t.Fatal(err)
	}
	r.col.Watch(r.srv)
	names := make([]string, len(cfg.Users))
	for i, u := range cfg.Users {
		names[i] = u.Name
	}
	r.col.SetUsers(names)
	if r.ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.srv.Serve(context.Background(), r.ln)
	}()
	r.http = httptest.NewServer(r.col.Mux())
	t.Cleanup(func() {
		r.http.Close()
		r.srv.Close()
		r.ln.Close()
		<-done
		r.col.Unwatch(r.srv)
	})
	return r
}

func (r *rig) client(t *testing.T, password string) *protocol.Client {
	t.Helper()
	c, err := protocol.NewClient(protocol.ClientConfig{
		Password: password,
		Dial: func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", r.ln.Addr().String())
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (r *rig) scrape(t *testing.T) metricstest.Samples {
	t.Helper()
	s, err := metricstest.Scrape(r.http.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// waitFor scrapes until cond holds (server-side events follow the client's by a moment).
func (r *rig) waitFor(t *testing.T, what string, cond func(metricstest.Samples) bool) metricstest.Samples {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := r.scrape(t)
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached; last scrape: %v", what, s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func want(t *testing.T, s metricstest.Samples, value float64, name string, labels ...string) {
	t.Helper()
	got, ok := s.Get(name, labels...)
	if !ok {
		t.Errorf("%s: missing", metricstest.Key(name, labels...))
		return
	}
	if got != value {
		t.Errorf("%s = %v, want %v", metricstest.Key(name, labels...), got, value)
	}
}

func echo(t *testing.T, st net.Conn, n int) {
	t.Helper()
	msg := bytes.Repeat([]byte("x"), n)
	errc := make(chan error, 1)
	go func() {
		_, err := st.Write(msg)
		errc <- err
	}()
	if _, err := io.ReadFull(st, make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func TestMetricsAfterTraffic(t *testing.T) {
	r := newRig(t, protocol.ServerConfig{Users: []protocol.User{{Name: "bob", Password: "pw-bob"}, {Name: "eve", Password: "pw-eve"}}})
	s := r.scrape(t)
	// Every configured user and limit has a series from the start.
	for _, user := range []string{"bob", "eve"} {
		want(t, s, 0, "anytls_user_bytes_total", "user", user, "direction", "up")
		want(t, s, 0, "anytls_sessions", "user", user)
		want(t, s, 0, "anytls_streams_total", "user", user)
	}
	for _, l := range metrics.Limits {
		want(t, s, 0, "anytls_limits_reached_total", "limit", l)
	}
	want(t, s, 2, "anytls_users")

	bob := r.client(t, "pw-bob")
	dest, _ := protocol.ParseAddr("example.com:443")
	hdr := float64(dest.EncodedLen()) // the destination address is read from the stream: upload
	st, err := bob.OpenStream(context.Background(), dest)
	if err != nil {
		t.Fatal(err)
	}
	echo(t, st, 100_000)
	// The stream is still open: the scrape itself collects its bytes. The server counts a
	// write once it returned, which can be a moment after the client read the echo.
	s = r.waitFor(t, "bob's bytes while the stream is open", func(s metricstest.Samples) bool {
		up, _ := s.Get("anytls_user_bytes_total", "user", "bob", "direction", "up")
		down, _ := s.Get("anytls_user_bytes_total", "user", "bob", "direction", "down")
		return up >= hdr+100_000 && down >= 100_000
	})
	want(t, s, hdr+100_000, "anytls_user_bytes_total", "user", "bob", "direction", "up")
	want(t, s, 100_000, "anytls_user_bytes_total", "user", "bob", "direction", "down")
	want(t, s, 1, "anytls_sessions", "user", "bob")
	want(t, s, 1, "anytls_streams_total", "user", "bob")
	want(t, s, 0, "anytls_user_bytes_total", "user", "eve", "direction", "up")

	echo(t, st, 5_000)
	st.Close()
	// A second stream reuses the session.
	st, err = bob.OpenStream(context.Background(), dest)
	if err != nil {
		t.Fatal(err)
	}
	echo(t, st, 1_000)
	st.Close()
	s = r.waitFor(t, "bob's bytes after close", func(s metricstest.Samples) bool {
		v, _ := s.Get("anytls_user_bytes_total", "user", "bob", "direction", "down")
		return v == 106_000
	})
	want(t, s, 2*hdr+106_000, "anytls_user_bytes_total", "user", "bob", "direction", "up")
	want(t, s, 2, "anytls_streams_total", "user", "bob")
	want(t, s, 1, "anytls_sessions_total", "user", "bob")

	bob.Close()
	r.waitFor(t, "bob's session closed", func(s metricstest.Samples) bool {
		v, _ := s.Get("anytls_sessions", "user", "bob")
		return v == 0
	})
}

// authRequest is a well-formed authentication request for password (the first bytes a client
// sends).
func authRequest(password string) []byte {
	sum := sha256.Sum256([]byte(password))
	return binary.BigEndian.AppendUint16(sum[:], 0)
}

func TestMetricsAuthFailuresFallbackLimits(t *testing.T) {
	fallbacks := make(chan struct{}, 1)
	r := newRig(t, protocol.ServerConfig{
		Users:       []protocol.User{{Name: "bob", Password: "pw-bob"}},
		MaxSessions: 1,
		Fallback: func(ctx context.Context, conn net.Conn) {
			conn.Close()
			fallbacks <- struct{}{}
		},
	})
	conn, err := net.Dial("tcp", r.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	conn.Write(authRequest("wrong"))
	<-fallbacks
	conn.Close()

	bob := r.client(t, "pw-bob")
	st, err := bob.OpenStream(context.Background(), protocol.Addr{Fqdn: "example.com", Port: 80})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	echo(t, st, 10)
	// A second session is over MaxSessions.
	bob2 := r.client(t, "pw-bob")
	if st2, err := bob2.OpenStream(context.Background(), protocol.Addr{Fqdn: "example.com", Port: 80}); err == nil {
		st2.Write([]byte("x"))
		st2.Read(make([]byte, 1))
		st2.Close()
	}
	s := r.waitFor(t, "session limit", func(s metricstest.Samples) bool {
		v, _ := s.Get("anytls_limits_reached_total", "limit", "sessions")
		return v >= 1
	})
	want(t, s, 1, "anytls_auth_failures_total")
	want(t, s, 1, "anytls_fallbacks_total")
	want(t, s, 1, "anytls_sessions", "user", "bob")
	want(t, s, 0, "anytls_limits_reached_total", "limit", "idle_timeout")
}

func TestReloadedAndUsers(t *testing.T) {
	c := metrics.New()
	srv := httptest.NewServer(c.Mux())
	defer srv.Close()
	c.SetUsers([]string{"a", "b", "c"})
	c.Reloaded(nil)
	c.Reloaded(io.EOF)
	c.Reloaded(io.EOF)
	s, err := metricstest.Scrape(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	want(t, s, 3, "anytls_users")
	want(t, s, 1, "anytls_user_reloads_total", "result", "ok")
	want(t, s, 2, "anytls_user_reloads_total", "result", "error")
	if _, ok := s.Get("go_goroutines"); !ok {
		t.Error("go_goroutines missing: the Go collector is not registered")
	}
}
