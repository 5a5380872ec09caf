package shape

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anytls-engine/anytls/option"
	"github.com/anytls-engine/anytls/protocol"
)

// The fallback test puts a real web server (net/http over plain TCP on loopback) behind two
// TLS endpoints with the same certificate and TLS configuration:
//   - a TLS front that is not AnyTLS: it terminates TLS and splices to the web server;
//   - our AnyTLS server, whose Fallback splices a connection that did not authenticate to the
//     web server, the bytes it had read replayed first.
// A prober sends the same bytes to both and must see the same bytes back and the same close.

const (
	// fallbackAuthTimeout is our server's authentication timeout in this test: short, so that
	// a silent prober is handed over quickly, but it bounds the TLS handshake too, so not so
	// short that a loaded machine's handshake exceeds it (the server would close, not fall back).
	fallbackAuthTimeout = time.Second
	// webHeaderTimeout and webIdleTimeout are the web server's: a connection that sends no
	// request is closed after the first, a kept-alive one after the second.
	webHeaderTimeout = 600 * time.Millisecond
	webIdleTimeout   = 400 * time.Millisecond
)

var webPage = []byte("<!doctype html><title>a web site</title><p>Nothing to see here.\n")

// splice relays between c (a TLS connection a client made) and the web server over plain TCP,
// as a TLS-terminating front or trojan's fallback does: when the web server closes, c is closed
// (TLS close_notify); when the client stops sending, the web server's side is shut for writing.
func splice(c net.Conn, web string) {
	defer c.Close()
	w, err := net.Dial("tcp", web)
	if err != nil {
		return
	}
	defer w.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(w, c)
		w.(*net.TCPConn).CloseWrite()
	}()
	io.Copy(c, w)
	c.Close()
	<-done
}

type fallbackRig struct {
	web, front string
	// ours: our server with the test's splice as Fallback; option: our server configured as
	// the command and the adapters configure it (option.ServerOptions.Fallback, whose
	// SpliceFallback is the production splice).
	ours, option string

	mu     sync.Mutex
	handed map[string]chan struct{} // by the prober's address: our server fell back
}

func startFallbackRig(t *testing.T) *fallbackRig {
	t.Helper()
	fr := &fallbackRig{handed: map[string]chan struct{}{}}
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)

	// The web server.
	webLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Date"] = nil // the same bytes at any time
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Write(webPage)
	})
	hs := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: webHeaderTimeout,
		IdleTimeout:       webIdleTimeout,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		hs.Serve(webLn)
	}()
	t.Cleanup(func() { hs.Close() })
	fr.web = webLn.Addr().String()

	// The TLS front that is not AnyTLS.
	tlsCfg := serverTLS(t)
	frontLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fr.front = frontLn.Addr().String()
	var conns sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		ln := tls.NewListener(frontLn, tlsCfg)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer conns.Done()
				splice(c, fr.web)
			}()
		}
	}()
	t.Cleanup(func() { frontLn.Close(); conns.Wait() })

	// Our servers with a fallback.
	serve := func(cfg protocol.ServerConfig) string {
		fallback := cfg.Fallback
		cfg.Fallback = func(ctx context.Context, conn net.Conn) {
			fr.signal(conn.RemoteAddr().String())
			fallback(ctx, conn)
		}
		srv, err := protocol.NewServer(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				raw, err := ln.Accept()
				if err != nil {
					return
				}
				conns.Add(1)
				go func() {
					defer conns.Done()
					srv.ServeConn(context.Background(), tls.Server(raw, tlsCfg))
				}()
			}
		}()
		t.Cleanup(func() { ln.Close(); srv.Close(); conns.Wait() })
		return ln.Addr().String()
	}
	fr.ours = serve(protocol.ServerConfig{
		Users:       []protocol.User{{Name: "user", Password: password}},
		Handler:     echo,
		AuthTimeout: fallbackAuthTimeout,
		Fallback:    func(ctx context.Context, conn net.Conn) { splice(conn, fr.web) },
	})
	cfg, err := option.ServerOptions{
		Users:       []option.User{{Password: password}},
		Fallback:    fr.web,
		AuthTimeout: fallbackAuthTimeout,
	}.ProtocolConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Handler = echo
	fr.option = serve(cfg)
	return fr
}

func (fr *fallbackRig) signal(addr string) {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	ch, ok := fr.handed[addr]
	if !ok {
		ch = make(chan struct{})
		fr.handed[addr] = ch
	}
	close(ch)
}

func (fr *fallbackRig) handedOver(addr string) <-chan struct{} {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	ch, ok := fr.handed[addr]
	if !ok {
		ch = make(chan struct{})
		fr.handed[addr] = ch
	}
	return ch
}

// fellBack reports whether our server handed the prober's connection at addr to the fallback.
func (fr *fallbackRig) fellBack(addr string) bool {
	select {
	case <-fr.handedOver(addr):
		return true
	default:
		return false
	}
}

// transcript is what a prober observed on one connection.
type transcript struct {
	got     []byte
	end     string // how the connection ended, as the prober saw it
	elapsed time.Duration
	local   string // the prober's address
}

func (tr transcript) String() string {
	return fmt.Sprintf("%d bytes %q, then %s", len(tr.got), firstLine(tr.got), tr.end)
}

func firstLine(b []byte) string {
	line, _, _ := bytes.Cut(b, []byte("\r\n"))
	return string(line)
}

// probeStep is one thing the prober does: write bytes (one TLS record), or wait.
type probeStep struct {
	write []byte
	// waitFallback: wait until our server has handed the connection to the fallback (a
	// no-op toward the TLS front).
	waitFallback bool
	closeWrite   bool
}

// probe connects with TLS to addr, performs the steps, and reads until the connection ends.
func (fr *fallbackRig) probe(tlsCfg *tls.Config, addr string, steps []probeStep) (transcript, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	start := time.Now()
	tc, err := dialTLS(ctx, addr, tlsCfg)
	if err != nil {
		return transcript{}, fmt.Errorf("TLS to %s: %w", addr, err)
	}
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(ioTimeout))
	for _, s := range steps {
		switch {
		case s.waitFallback:
			if addr != fr.front {
				select {
				case <-fr.handedOver(tc.LocalAddr().String()):
				case <-ctx.Done():
					return transcript{}, errors.New("our server never fell back")
				}
			}
		case s.closeWrite:
			if err := tc.CloseWrite(); err != nil {
				return transcript{}, err
			}
		default:
			if _, err := tc.Write(s.write); err != nil {
				return transcript{}, fmt.Errorf("write: %w", err)
			}
		}
	}
	got, err := io.ReadAll(tc)
	tr := transcript{got: got, elapsed: time.Since(start), local: tc.LocalAddr().String()}
	switch {
	case err == nil:
		tr.end = "TLS close_notify, then EOF"
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		tr.end = "EOF without close_notify"
	case errors.Is(err, os.ErrDeadlineExceeded):
		tr.end = "still open at the deadline"
	default:
		tr.end = "error: " + strings.TrimSpace(err.Error())
		var ne *net.OpError
		if errors.As(err, &ne) {
			tr.end = "error: " + ne.Err.Error()
		}
	}
	return tr, nil
}

// authRequest returns an AnyTLS authentication request for hash with padding0 of n zeros.
func authRequest(hash []byte, n int) []byte {
	b := append(bytes.Clone(hash), 0, 0)
	binary.BigEndian.PutUint16(b[32:], uint16(n))
	return append(b, make([]byte, n)...)
}

// TestFallbackIndistinguishable: every prober's request through TLS to our server's port gets
// byte for byte the response, and the close, it gets from a TLS front of the same web server.
func TestFallbackIndistinguishable(t *testing.T) {
	fr := startFallbackRig(t)
	userHash := sha256.Sum256([]byte(password))
	near := bytes.Clone(userHash[:]) // a user's hash but for its last byte
	near[31] ^= 0x5a
	wrong := sha256.Sum256([]byte("not the password"))
	random := make([]byte, 300)
	for i := range random {
		random[i] = byte(rand.IntN(256))
	}
	randomHash := random[:32]
	// the rest of a wrong client's first packets: settings + SYN + PSH(address)
	pkt1 := []byte{4, 0, 0, 0, 0, 0, 3, 'v', '=', '2', 1, 0, 0, 0, 1, 0, 0, 2, 0, 0, 0, 1, 0, 7, 1, 127, 0, 0, 1, 0, 80}

	get11 := []byte("GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: probe\r\n\r\n")
	cases := []struct {
		name  string
		steps []probeStep
	}{
		{"http-get-close", []probeStep{{write: []byte("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")}}},
		{"http-get-keepalive", []probeStep{{write: get11}}},
		{"http-short-get", []probeStep{{write: []byte("GET / HTTP/1.0\r\n\r\n")}}}, // 18 bytes < 34
		{"http-get-split", []probeStep{{write: get11[:8]}, {write: get11[8:]}}},
		{"http-404-then-get", []probeStep{{write: []byte("GET /admin HTTP/1.1\r\nHost: localhost\r\n\r\n")}, {write: get11}}},
		{"wrong-password", []probeStep{{write: authRequest(wrong[:], 30)}, {write: pkt1}}},
		{"near-hash", []probeStep{{write: authRequest(near, 30)}, {write: pkt1}}},
		{"random-hash", []probeStep{{write: authRequest(randomHash, 30)}, {write: pkt1}}},
		{"random-bytes", []probeStep{{write: random}}},
		{"partial-then-close", []probeStep{{write: []byte("GET / HTTP/1.1\r\n")}, {closeWrite: true}}},
		{"silent-then-get", []probeStep{{waitFallback: true}, {write: get11}}},
		{"silent", nil},
	}
	var mu sync.Mutex
	results := map[string]transcript{}
	tlsCfg := clientTLS(t)
	t.Run("probes", func(t *testing.T) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				endpoints := []struct{ name, addr string }{
					{"TLS front", fr.front}, {"ours", fr.ours}, {"ours (option)", fr.option},
				}
				trs := make([]transcript, len(endpoints))
				errs := make([]error, len(endpoints))
				var wg sync.WaitGroup
				for i, e := range endpoints {
					wg.Add(1)
					go func() {
						defer wg.Done()
						trs[i], errs[i] = fr.probe(tlsCfg, e.addr, c.steps)
					}()
				}
				wg.Wait()
				if err := errors.Join(errs...); err != nil {
					t.Fatalf("probe: %v", err)
				}
				mu.Lock()
				results[c.name] = trs[1]
				mu.Unlock()
				direct := trs[0]
				for i, e := range endpoints {
					t.Logf("%-13s %v in %v", e.name+":", trs[i], trs[i].elapsed.Round(time.Millisecond))
				}
				if len(direct.got) == 0 && c.steps != nil && c.name != "partial-then-close" {
					t.Errorf("the web server answered nothing: the case tests nothing")
				}
				for i, e := range endpoints[1:] {
					ours := trs[i+1]
					if !bytes.Equal(direct.got, ours.got) {
						t.Errorf("%s: responses differ:\nfront: %q\nours:  %q", e.name, direct.got, ours.got)
					}
					if direct.end != ours.end {
						t.Errorf("%s: close differs: front %q, ours %q", e.name, direct.end, ours.end)
					}
					if !fr.fellBack(ours.local) {
						t.Errorf("%s did not hand the connection to the fallback", e.name)
					}
					// A connection that says nothing is handed over at the authentication
					// timeout (the web server's own timeout starts then), not before.
					if c.name == "silent" && ours.elapsed < fallbackAuthTimeout+webHeaderTimeout {
						t.Errorf("%s: silent connection closed after %v, before the auth timeout + the web server's", e.name, ours.elapsed)
					}
				}
			})
		}
	})
	// A hash that matches a user's hash in 31 of 32 bytes is answered exactly as a random one.
	if a, b := results["near-hash"], results["random-hash"]; !bytes.Equal(a.got, b.got) || a.end != b.end {
		t.Errorf("a near-match hash (%v) is answered differently from a random hash (%v)", a, b)
	}
}
