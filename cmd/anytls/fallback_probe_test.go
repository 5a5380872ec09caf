package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/anytls-engine/anytls/internal/testcert"
	"github.com/anytls-engine/anytls/option"
)

// TestServerFallbackProbes: `anytls server --fallback` answers a prober on its port exactly as a
// plain TLS front (same certificate, same TLS settings) of the same web server does: same
// bytes, same close, for HTTP requests, a wrong password, a hash that matches the user's in 31
// of 32 bytes, random bytes and a silent connection. (test/shape runs the full set of probes
// against the engine; this one covers the command's own listener and TLS configuration.)
func TestServerFallbackProbes(t *testing.T) {
	cert, certPEM, keyPEM, err := testcert.New("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}

	// the web server, over plain TCP
	webLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header()["Date"] = nil
			io.WriteString(w, "a web site at "+r.URL.Path+"\n")
		}),
		ReadHeaderTimeout: 500 * time.Millisecond,
		IdleTimeout:       300 * time.Millisecond,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	go hs.Serve(webLn)
	defer hs.Close()
	web := webLn.Addr().String()

	// a TLS front that is not AnyTLS, with the command's TLS settings
	frontLn, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	var fronts sync.WaitGroup
	defer fronts.Wait()
	defer frontLn.Close()
	splice := option.SpliceFallback(web, nil)
	go func() {
		for {
			c, err := frontLn.Accept()
			if err != nil {
				return
			}
			fronts.Add(1)
			go func() {
				defer fronts.Done()
				splice(context.Background(), c)
			}()
		}
	}()

	srv, err := startServer(context.Background(), serverConfig{
		Listen: "127.0.0.1:0", Password: "probe-password", CertFile: certFile, KeyFile: keyFile,
		Fallback: web, Options: option.ServerOptions{AuthTimeout: time.Second}, // bounds the TLS handshake too: not shorter under -race
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	user := sha256.Sum256([]byte("probe-password"))
	near := bytes.Clone(user[:])
	near[31]++
	auth := func(hash []byte) []byte {
		b := append(bytes.Clone(hash), 0, 30)
		return append(b, make([]byte, 30)...)
	}
	random := make([]byte, 100)
	binary.BigEndian.PutUint64(random, uint64(time.Now().UnixNano()))
	cases := []struct {
		name   string
		writes [][]byte
	}{
		{"get", [][]byte{[]byte("GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")}},
		{"short-get", [][]byte{[]byte("GET / HTTP/1.0\r\n\r\n")}},
		{"wrong-password", [][]byte{auth(bytes.Repeat([]byte{7}, 32))}},
		{"near-hash", [][]byte{auth(near)}},
		{"random", [][]byte{random}},
		{"silent", nil},
	}
	t.Run("probes", func(t *testing.T) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				probeBoth(t, frontLn.Addr().String(), srv.Addr().String(), c.writes)
			})
		}
	})
}

// probeBoth sends writes to the front and to our server and compares what comes back.
func probeBoth(t *testing.T, front, ours string, writes [][]byte) {
	var got [2][]byte
	var end [2]string
	var wg sync.WaitGroup
	for i, addr := range []string{front, ours} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], end[i] = probeOnce(addr, writes)
		}()
	}
	wg.Wait()
	t.Logf("front: %d bytes, %s; ours: %d bytes, %s", len(got[0]), end[0], len(got[1]), end[1])
	if !bytes.Equal(got[0], got[1]) {
		t.Errorf("responses differ:\nfront: %q\nours:  %q", got[0], got[1])
	}
	if end[0] != end[1] {
		t.Errorf("ends differ: front %s, ours %s", end[0], end[1])
	}
	if writes != nil && len(got[0]) == 0 {
		t.Error("the web server answered nothing: the case tests nothing")
	}
}

// probeOnce connects with TLS, writes each chunk, reads until the end and returns what it read
// and how it ended.
func probeOnce(addr string, writes [][]byte) ([]byte, string) {
	d := &net.Dialer{Timeout: testTimeout}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return nil, "TLS handshake failed: " + err.Error()
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(testTimeout))
	for _, w := range writes {
		if _, err := c.Write(w); err != nil {
			return nil, "write failed"
		}
	}
	b, err := io.ReadAll(c)
	switch {
	case err == nil:
		return b, "close_notify"
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return b, "EOF without close_notify"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return b, "still open at the deadline"
	case errors.Is(err, syscall.ECONNRESET):
		return b, "reset"
	default:
		return b, "other error"
	}
}
