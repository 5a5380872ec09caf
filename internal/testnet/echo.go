package testnet

import (
	"io"
	"net"
	"testing"
)

// ServeEach accepts connections from ln until it is closed and runs handle for each in its own
// goroutine, closing the connection when handle returns.
func ServeEach(ln net.Listener, handle func(net.Conn)) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

// TCPEcho starts a TCP echo server on loopback, closed when the test ends, and returns its
// address.
func TCPEcho(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ServeEach(ln, func(c net.Conn) { io.Copy(c, c) })
	return ln.Addr().String()
}
