//go:build unix

package protocol

import (
	"io"
	"syscall"
)

// readWaiter returns a function that blocks until the socket r has something to read: data,
// the end of the stream, or an error (the Read that follows reports it, as it reports a passed
// deadline or a close). It returns nil when r is not a socket. ReadFrom waits with it before it
// takes a frame buffer, so that a stream whose source is idle holds none.
func readWaiter(r io.Reader) func() {
	sc, ok := r.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	var b [1]byte
	notSocket := false
	peek := func(fd uintptr) bool {
		for {
			_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK)
			switch err {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false // the runtime's poller waits for readability, then asks again
			case syscall.ENOTSOCK:
				notSocket = true
			}
			return true
		}
	}
	return func() {
		if !notSocket {
			rc.Read(peek)
		}
	}
}
