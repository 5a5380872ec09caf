package protocol_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"

	"github.com/anytls-engine/anytls/internal/testcert"
	"github.com/anytls-engine/anytls/protocol"
)

// benchTLS returns a TLS listener on loopback and a client config for it.
func benchTLS(b *testing.B) (net.Listener, *tls.Config) {
	cert, _, _, err := testcert.New("localhost")
	if err != nil {
		b.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	return ln, &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"}
}

const benchChunk = 32 << 10

func runBulk(b *testing.B, w io.Writer, r io.Reader) {
	buf := make([]byte, benchChunk)
	b.SetBytes(benchChunk)
	b.ResetTimer()
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.CopyN(io.Discard, r, int64(b.N)*benchChunk)
	}()
	for i := 0; i < b.N; i++ {
		if _, err := w.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	<-done
}

func BenchmarkTLSBulk(b *testing.B) {
	ln, ccfg := benchTLS(b)
	srv := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); c.(*tls.Conn).Handshake(); srv <- c }()
	c, err := tls.Dial("tcp", ln.Addr().String(), ccfg)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	s := <-srv
	defer s.Close()
	runBulk(b, c, s)
}

// benchPair starts a server with handler behind TLS on loopback and returns a client for it;
// both are closed when the benchmark ends.
func benchPair(b *testing.B, handler protocol.StreamHandler) *protocol.Client {
	ln, ccfg := benchTLS(b)
	srv, err := protocol.NewServer(protocol.ServerConfig{
		Users:   []protocol.User{{Name: "u", Password: "p"}},
		Handler: handler,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { srv.Close() })
	go srv.Serve(context.Background(), ln)
	client, err := protocol.NewClient(protocol.ClientConfig{
		Password: "p",
		Dial: func(ctx context.Context) (net.Conn, error) {
			d := tls.Dialer{Config: ccfg}
			return d.DialContext(ctx, "tcp", ln.Addr().String())
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { client.Close() })
	return client
}

func benchEngine(b *testing.B, upload bool) {
	streams := make(chan *protocol.Stream, 1)
	client := benchPair(b, func(ctx context.Context, st *protocol.Stream) {
		st.Report(nil)
		streams <- st
	})
	st, err := client.OpenStream(context.Background(), protocol.Addr{Fqdn: "sink.test", Port: 9})
	if err != nil {
		b.Fatal(err)
	}
	st.Write([]byte{0})
	ss := <-streams
	one := make([]byte, 1)
	io.ReadFull(ss, one)
	defer st.Close()
	defer ss.Close()
	if upload {
		runBulk(b, st, ss)
	} else {
		runBulk(b, ss, st)
	}
}

func BenchmarkEngineUpload(b *testing.B)   { benchEngine(b, true) }
func BenchmarkEngineDownload(b *testing.B) { benchEngine(b, false) }

// BenchmarkEngineOpen: open a stream on a warm client, echo one byte through the server's
// handler (no outbound dial: the engine's own cost per stream), close.
func BenchmarkEngineOpen(b *testing.B) {
	client := benchPair(b, func(ctx context.Context, st *protocol.Stream) {
		defer st.Close()
		st.Report(nil)
		io.Copy(st, st)
	})
	dest := protocol.Addr{Fqdn: "echo.test", Port: 7}
	one := []byte{'x'}
	open := func() {
		st, err := client.OpenStream(context.Background(), dest)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := st.Write(one); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(st, one); err != nil {
			b.Fatal(err)
		}
		st.Close()
	}
	for range 100 {
		open()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		open()
	}
}
