package testnet

import (
	"io"
	"net"
	"strconv"
	"testing"
)

// Ports are distinct, below the ephemeral range, and can be listened on (TCP and UDP).
func TestFreePort(t *testing.T) {
	lo, hi := portRange()
	seen := map[int]bool{}
	for range 50 {
		p := FreePort(t)
		if p < lo || p >= hi || seen[p] {
			t.Fatalf("port %d: want a new one in %d..%d", p, lo, hi)
		}
		seen[p] = true
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			t.Fatal(err)
		}
		ln.Close()
	}
}

// TCPEcho answers what it is sent.
func TestTCPEcho(t *testing.T) {
	c, err := net.Dial("tcp", TCPEcho(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("ping"))
	b := make([]byte, 4)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "ping" {
		t.Fatalf("echo: %q, %v", b, err)
	}
}
