package protocol

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"io"
	"maps"
	"net"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// scriptConn serves a fixed byte sequence to its reader, one Read per chunk, then blocks until
// closed (or returns io.EOF if eof is set). Writes are discarded.
type scriptConn struct {
	mu     sync.Mutex
	chunks [][]byte
	eof    bool
	closed chan struct{}
	once   sync.Once
}

func newScriptConn(eof bool, chunks ...[]byte) *scriptConn {
	return &scriptConn{chunks: chunks, eof: eof, closed: make(chan struct{})}
}

func (c *scriptConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	for len(c.chunks) > 0 && len(c.chunks[0]) == 0 {
		c.chunks = c.chunks[1:]
	}
	if len(c.chunks) > 0 {
		n := copy(b, c.chunks[0])
		c.chunks[0] = c.chunks[0][n:]
		c.mu.Unlock()
		return n, nil
	}
	c.mu.Unlock()
	if c.eof {
		return 0, io.EOF
	}
	<-c.closed
	return 0, net.ErrClosed
}

func (c *scriptConn) Write(b []byte) (int, error) {
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	default:
		return len(b), nil
	}
}

func (c *scriptConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

func (c *scriptConn) LocalAddr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 443} }
func (c *scriptConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 50000}
}
func (c *scriptConn) SetDeadline(t time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(t time.Time) error { return nil }

// frameSeeds are session byte streams (after authentication) that reach the interesting paths
// of the frame reader; the fuzzer mutates them.
func frameSeeds() [][]byte {
	settings := []byte("v=2\nclient=\npadding-md5=" + DefaultPaddingScheme.MD5() + "\n" + settingHalfClose + "=1")
	addr := func(s string) []byte {
		a, _ := ParseAddr(s)
		b, _ := a.AppendTo(nil)
		return b
	}
	var seeds [][]byte
	b := AppendFrame(nil, CmdSettings, 0, settings)
	b = AppendFrame(b, CmdSYN, 1, nil)
	b = AppendFrame(b, CmdPSH, 1, addr("example.com:443"))
	b = AppendFrame(b, CmdPSH, 1, []byte("GET / HTTP/1.1\r\n\r\n"))
	b = AppendFrame(b, CmdFIN, 1, nil)
	seeds = append(seeds, b)

	b = AppendFrame(nil, CmdSettings, 0, []byte("v=1"))
	b = AppendFrame(b, CmdWaste, 0, make([]byte, 30))
	b = AppendFrame(b, CmdHeartRequest, 0, nil)
	b = AppendFrame(b, CmdSYN, 7, nil)
	b = AppendFrame(b, CmdPSH, 7, addr("[2001:db8::1]:80"))
	b = AppendFrame(b, CmdSYN, 7, nil) // duplicate
	b = AppendFrame(b, CmdPSH, 9, []byte("unknown stream"))
	b = AppendFrame(b, Command(42), 0, []byte("unknown command with data"))
	b = AppendFrame(b, CmdServerSettings, 0, []byte("v=2")) // a client-only command
	b = AppendFrame(b, CmdAlert, 0, []byte("x"))
	b = AppendFrame(b, CmdUpdatePaddingScheme, 0, []byte("stop=1"))
	b = AppendFrame(b, CmdSYNACK, 7, []byte("err"))
	b = AppendFrame(b, CmdFIN, 7, []byte("reset"))
	seeds = append(seeds, b)

	b = AppendFrame(nil, CmdSYN, 1, nil) // SYN before settings
	seeds = append(seeds, b)

	b = AppendFrame(nil, CmdSettings, 0, settings)
	b = AppendFrame(b, CmdSYN, 0, nil)
	b = AppendFrame(b, CmdPSH, 0, append(addr(UoTMagicAddress+":0"), 0, 1, 2))
	b = AppendFrame(b, CmdSYN, 2, nil)
	b = AppendFrame(b, CmdPSH, 2, []byte{9, 9, 9}) // bad address type
	b = AppendFrame(b, CmdSYN, 3, nil)
	b = AppendFrame(b, CmdPSH, 3, []byte{3, 0}) // empty domain
	b = AppendFrame(b, CmdSYN, 4, nil)
	b = AppendFrame(b, CmdPSH, 4, []byte{1, 10}) // truncated IPv4
	b = AppendFrame(b, CmdFIN, 4, nil)
	seeds = append(seeds, b)

	b = AppendFrame(nil, CmdSettings, 0, settings)
	b = append(b, byte(CmdPSH), 0, 0, 0, 1, 0xff, 0xff, 'x') // length beyond the input
	seeds = append(seeds, b, []byte{byte(CmdSettings), 0, 0})
	return seeds
}

// FuzzFrameReader feeds arbitrary bytes to a server session after a valid authentication. The
// process must not panic, and when the server is closed every goroutine of the session and its
// streams must end (synctest.Test fails if any bubble goroutine is left blocked).
func FuzzFrameReader(f *testing.F) {
	for _, s := range frameSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, input []byte) {
		synctest.Test(t, func(t *testing.T) {
			srv, err := NewServer(ServerConfig{
				Users:   []User{{Name: "u", Password: "pw"}},
				Handler: echoHandler,
			})
			if err != nil {
				t.Fatal(err)
			}
			// the request and the input arrive in separate reads, then the conn stays open
			conn := newScriptConn(false, authRequest("pw", 5), input)
			done := make(chan error, 1)
			go func() { done <- srv.ServeConn(context.Background(), conn) }()
			synctest.Wait() // everything the input causes has happened
			srv.Close()
			conn.Close()
			if err := <-done; err == nil {
				t.Fatal("ServeConn returned nil")
			}
		})
	})
}

// FuzzAuth feeds arbitrary first bytes to ServeConn. It must not panic; whatever it rejects
// reaches the fallback with exactly the bytes sent.
func FuzzAuth(f *testing.F) {
	good := authRequest("pw", 0)
	f.Add(good)
	f.Add(authRequest("pw", 10))
	f.Add(authRequest("pw", 10)[:40])                  // padding cut short
	f.Add(append(authRequest("pw", 3), 4, 0, 0))       // frames right after
	f.Add(authRequest("wrong", 0))                     // wrong password
	f.Add(good[:33])                                   // one byte short
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")) // a prober
	f.Add([]byte{0x16, 0x03, 0x01, 0x00, 0xa5})        // a TLS ClientHello to the inner layer
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, input []byte) {
		synctest.Test(t, func(t *testing.T) {
			var fell []byte
			fallback := false
			srv, err := NewServer(ServerConfig{
				Users:   []User{{Name: "u", Password: "pw"}, {Name: "v", Password: "pw2"}},
				Handler: echoHandler,
				Fallback: func(ctx context.Context, conn net.Conn) {
					fallback = true
					fell, _ = io.ReadAll(conn)
					conn.Close()
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			err = srv.ServeConn(context.Background(), newScriptConn(true, input))
			if err == nil {
				t.Fatal("ServeConn returned nil")
			}
			rejected := errors.Is(err, ErrAuthFailed) || errors.Is(err, ErrNotAnyTLS)
			if rejected != fallback {
				t.Fatalf("ServeConn = %v, fallback called = %v", err, fallback)
			}
			if fallback && !bytes.Equal(fell, input) {
				t.Fatalf("fallback read %x, want the input %x", fell, input)
			}
			valid := len(input) >= 34 && (bytes.Equal(input[:32], good[:32]) || bytes.Equal(input[:32], authRequest("pw2", 0)[:32]))
			if valid && rejected {
				t.Fatalf("a valid hash was rejected: %v", err)
			}
		})
	})
}

// FuzzSettings: ParseSettings never panics, Version is at least 1, and a parsed text re-encodes
// to an equal map.
func FuzzSettings(f *testing.F) {
	f.Add([]byte("v=2\nclient=sing-box/1.12.0\npadding-md5=75cff2ad89aadf5e257059ee571ebe11"))
	f.Add([]byte("padding-md5=x\r\nv=2\r\n\r\n"))
	f.Add([]byte("v=99999999999999999999\n=\n==\nk=v=w"))
	f.Add([]byte("x-anytls-halfclose=1\nv=2\nv=1"))
	f.Add([]byte{0xff, '=', 0xfe, '\n'})
	f.Fuzz(func(t *testing.T, text []byte) {
		s := ParseSettings(text)
		if v := s.Version(); v < 1 {
			t.Fatalf("Version() = %d", v)
		}
		for k, v := range s {
			if k == "" || strings.ContainsAny(k, "=\n") || strings.Contains(v, "\n") {
				t.Fatalf("parsed key %q value %q", k, v)
			}
		}
		// values ending in \r do not survive the CRLF tolerance; everything else round-trips
		for _, v := range s {
			if strings.HasSuffix(v, "\r") {
				return
			}
		}
		if back := ParseSettings(s.Encode()); !maps.Equal(back, s) {
			t.Fatalf("round trip of %q: %v, want %v", text, back, s)
		}
	})
}

// FuzzPaddingScheme: parsing never panics; an accepted scheme keeps its exact text and md5,
// gives sizes inside its ranges, and parses again to the same scheme.
func FuzzPaddingScheme(f *testing.F) {
	f.Add([]byte(DefaultPaddingSchemeText))
	f.Add([]byte("stop=3\n0=0-0\n1=1-65535,c\n2=c,c,5-5"))
	f.Add([]byte("stop=1024\n1024=65535-65535"))
	f.Add([]byte("stop=2\r\n 1 = 10 - 20 , c \r\n"))
	f.Add([]byte("stop=x"))
	f.Add([]byte("1=2-1"))
	f.Fuzz(func(t *testing.T, text []byte) {
		p, err := ParsePaddingScheme(text)
		if err != nil {
			if !errors.Is(err, ErrBadPaddingScheme) {
				t.Fatalf("error %v is not ErrBadPaddingScheme", err)
			}
			return
		}
		sum := md5.Sum(text)
		if !bytes.Equal(p.Raw(), text) || p.MD5() != hex.EncodeToString(sum[:]) {
			t.Fatal("scheme does not keep its exact text and md5")
		}
		if n := p.AuthPadding(); n < 0 || n > 65535 {
			t.Fatalf("AuthPadding = %d", n)
		}
		for pkt := 0; pkt <= min(p.Stop(), 64); pkt++ {
			sizes, ok := p.RecordSizes(pkt, nil)
			if ok && pkt >= p.Stop() {
				t.Fatalf("packet %d at stop %d padded", pkt, p.Stop())
			}
			for i, size := range sizes {
				r := p.lines[pkt][i]
				if size == CheckMark {
					if r.min != CheckMark {
						t.Fatalf("check mark where the line has %v", r)
					}
					continue
				}
				if size < r.min || (r.max > r.min && size >= r.max) || (r.max == r.min && size != r.min) {
					t.Fatalf("packet %d: size %d outside %d-%d", pkt, size, r.min, r.max)
				}
			}
		}
		q, err := ParsePaddingScheme(p.Raw())
		if err != nil || q.MD5() != p.MD5() || q.Stop() != p.Stop() {
			t.Fatalf("re-parse: %v", err)
		}
	})
}

// FuzzReadAddr: ReadAddr never panics; a decoded address re-encodes and decodes to itself.
func FuzzReadAddr(f *testing.F) {
	for _, s := range []string{"1.2.3.4:80", "[2001:db8::1]:443", "example.com:8080", UoTMagicAddress + ":0"} {
		a, _ := ParseAddr(s)
		b, _ := a.AppendTo(nil)
		f.Add(b)
	}
	f.Add([]byte{3, 9, '1', '2', '7', '.', '0', '.', '0', '.', '1', 0, 80}) // IP literal as a domain
	f.Add(append([]byte{4}, append(net.ParseIP("::ffff:10.0.0.1").To16(), 0, 53)...))
	f.Add([]byte{3, 0, 0, 80})
	f.Add([]byte{5})
	f.Add([]byte{1, 1, 2})
	f.Fuzz(func(t *testing.T, b []byte) {
		a, n, err := ParseAddrBytes(b)
		if err != nil {
			return
		}
		want := map[byte]int{atypIPv4: 1 + 4 + 2, atypIPv6: 1 + 16 + 2}[b[0]]
		if b[0] == atypDomain {
			want = 1 + 1 + int(b[1]) + 2
		}
		if n != want || n > len(b) {
			t.Fatalf("consumed %d of %d bytes for %v, want %d", n, len(b), a, want)
		}
		if !a.IsValid() {
			t.Fatalf("decoded an invalid address from %x", b)
		}
		enc, err := a.AppendTo(nil)
		if err != nil {
			t.Fatalf("%v does not encode: %v", a, err)
		}
		if len(enc) != a.EncodedLen() {
			t.Fatalf("encoded %d bytes, EncodedLen %d", len(enc), a.EncodedLen())
		}
		back, m, err := ParseAddrBytes(enc)
		if err != nil || m != len(enc) || back != a {
			t.Fatalf("round trip of %v: %v, %d, %v", a, back, m, err)
		}
		if p, err := ParseAddr(a.String()); err == nil && p != a && !a.IsFqdn() {
			t.Fatalf("ParseAddr(%q) = %v, want %v", a.String(), p, a)
		}
	})
}
