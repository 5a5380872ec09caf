//go:build unix

package protocol

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"
)

// readerFromFunc records what io.Copy hands to ReadFrom.
type readerFromFunc func(io.Reader) (int64, error)

func (f readerFromFunc) Write(b []byte) (int, error)         { return len(b), nil }
func (f readerFromFunc) ReadFrom(r io.Reader) (int64, error) { return f(r) }

// io.Copy(stream, tcpConn) reaches ReadFrom through net's own wrapper that hides
// TCPConn.WriteTo; ReadFrom must still read that socket directly (no extra system call per
// wait, no buffer while idle). If a Go release renames the wrapper this fails, rather than
// silently falling back to the slower path.
func TestPlainTCPThroughIOCopy(t *testing.T) {
	a, b := tcpPair(t)
	var got *net.TCPConn
	var typ string
	io.Copy(readerFromFunc(func(r io.Reader) (int64, error) {
		got = plainTCP(r)
		typ = fmt.Sprintf("%T", r)
		return 0, nil
	}), a)
	if got != a.(*net.TCPConn) {
		t.Fatalf("plainTCP(%s) = %v, want the connection io.Copy read from", typ, got)
	}
	if plainTCP(b) != b.(*net.TCPConn) {
		t.Fatal("plainTCP(*net.TCPConn) is not the connection itself")
	}
	// Wrappers of other packages may do more in Read (count bytes, decrypt): never bypassed.
	type wrapped struct{ *net.TCPConn }
	if plainTCP(wrapped{b.(*net.TCPConn)}) != nil || plainTCP(bytes.NewReader(nil)) != nil {
		t.Fatal("plainTCP unwrapped a reader it must read through")
	}
}

// ReadFrom through io.Copy from a TCP connection carries the data intact and ends at EOF.
func TestReadFromTCPThroughIOCopy(t *testing.T) {
	p := newMemPair(t, ServerConfig{}, ClientConfig{})
	st := p.open("example.com:80")
	defer st.Close()
	app, src := tcpPair(t)
	want := make([]byte, 3<<20+17)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range want {
		want[i] = byte(rng.Uint32())
	}
	checkRelayed(t, st, want, func() (int64, error) { return io.Copy(st, src) }, func() {
		for rest := want; len(rest) > 0; {
			k := min(len(rest), 1+rand.IntN(200<<10))
			app.Write(rest[:k])
			rest = rest[k:]
		}
		app.(*net.TCPConn).CloseWrite()
	})
}

// A socket that is not a TCP connection (here a Unix socket) is waited for with a peek
// (readWaiter) and read through its own Read: the data must arrive intact.
func TestReadFromUnixSocketSource(t *testing.T) {
	app, src := connPair(t, "unix", t.TempDir()+"/s")
	if readWaiter(src) == nil || socketReader(src) != nil {
		t.Fatal("a Unix socket must be waited for with a peek and read through its Read")
	}
	p := newMemPair(t, ServerConfig{}, ClientConfig{})
	st := p.open("example.com:80")
	defer st.Close()
	want := bytes.Repeat([]byte("0123456789abcdef"), 100<<10/16+3)
	checkRelayed(t, st, want, func() (int64, error) { return st.ReadFrom(src) }, func() {
		for rest := want; len(rest) > 0; {
			k := min(len(rest), 7000)
			app.Write(rest[:k])
			rest = rest[k:]
			time.Sleep(100 * time.Microsecond)
		}
		app.(*net.UnixConn).CloseWrite()
	})
}
