// Package testnet helps tests that run servers and other programs on loopback: ports for
// listeners another program opens from its configuration, an echo server, an accept loop, and a
// buffer for a process's output.
package testnet

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"testing"
)

var (
	mu     sync.Mutex
	handed = map[int]bool{}
)

// FreePort returns a loopback port that was free for TCP and UDP a moment ago, never the same
// twice in a process. It is drawn at random below the kernel's ephemeral range: a port from
// bind(0), once released, can be taken by any socket of a test running in parallel (bind(0)
// and every outgoing connection draw from that range) before the program binds it.
func FreePort(t testing.TB) int {
	t.Helper()
	lo, hi := portRange()
	for range 500 {
		p := lo + rand.IntN(hi-lo)
		mu.Lock()
		taken := handed[p]
		handed[p] = true
		mu.Unlock()
		if taken || !free(p) {
			continue
		}
		return p
	}
	t.Fatalf("no free loopback port in %d..%d", lo, hi)
	return 0
}

func free(port int) bool {
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	defer ln.Close()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return false
	}
	pc.Close()
	return true
}

// portRange is the range ports are drawn from: up to 12 000 ports below the ephemeral range
// (32768 on Linux by default), never below 10 000.
func portRange() (lo, hi int) {
	hi = 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var a, z int
		if _, err := fmt.Sscan(string(b), &a, &z); err == nil && a > 11000 {
			hi = a
		}
	}
	return max(hi-12000, 10000), hi
}
