//go:build unix

package protocol

import (
	"io"
	"net"
	"os"
	"reflect"
	"syscall"
)

// socketReader returns, for a TCP connection, a reader that reads it into a frame buffer (data
// behind the header, at most alignedFrameData bytes) taken from the pool only once the socket
// is readable: an idle stream holds no buffer, and waiting costs no extra system call. Reads
// honour the connection's deadline and close. It returns nil for any other reader.
func socketReader(r io.Reader) *sockReader {
	tc := plainTCP(r)
	if tc == nil {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	sr := &sockReader{tc: tc, rc: rc}
	sr.fn = sr.readFD
	return sr
}

type sockReader struct {
	tc   *net.TCPConn
	rc   syscall.RawConn
	fn   func(fd uintptr) bool // sr.readFD, made once
	buf  []byte                // the last read's buffer (nil while waiting)
	n    int
	rerr error
}

func (sr *sockReader) readFD(fd uintptr) bool {
	if sr.buf == nil {
		sr.buf = getBuf(HeaderSize + MaxFrameData)
	}
	for {
		sr.n, sr.rerr = syscall.Read(int(fd), sr.buf[HeaderSize:HeaderSize+alignedFrameData])
		if sr.rerr != syscall.EINTR {
			break
		}
	}
	if sr.rerr == syscall.EAGAIN {
		putBuf(sr.buf) // wait for readability holding nothing
		sr.buf = nil
		return false
	}
	return true
}

// result returns the buffer, the byte count and the error of the read that rc.Read, which
// returned err, made; the buffer is the caller's.
//
//go:noinline
func (sr *sockReader) result(err error) ([]byte, int, error) {
	b, n := sr.buf, sr.n
	sr.buf, sr.n = nil, 0
	switch {
	case err != nil: // closed, or the deadline passed
		putBuf(b)
		return nil, 0, readError(sr.tc, err)
	case sr.rerr != nil:
		return b, 0, readError(sr.tc, os.NewSyscallError("read", sr.rerr))
	case n <= 0:
		return b, 0, io.EOF
	}
	return b, n, nil
}

var tcpConnType = reflect.TypeFor[*net.TCPConn]()

// plainTCP returns the TCP connection r reads from directly, or nil. io.Copy(stream, tcpConn)
// reaches ReadFrom through net's own wrapper that only hides TCPConn.WriteTo (its Read is the
// connection's); any other wrapper may do more in Read, and is read through it.
func plainTCP(r io.Reader) *net.TCPConn {
	if tc, ok := r.(*net.TCPConn); ok {
		return tc
	}
	t := reflect.TypeOf(r)
	if t == nil || t.Kind() != reflect.Struct || t.PkgPath() != "net" || t.Name() != "tcpConnWithoutWriteTo" {
		return nil
	}
	f, ok := t.FieldByName("TCPConn")
	if !ok || f.Type != tcpConnType || !f.Anonymous {
		return nil
	}
	tc, _ := reflect.ValueOf(r).FieldByIndex(f.Index).Interface().(*net.TCPConn)
	return tc
}

// readError wraps err as net.TCPConn.Read does. Kept out of line: the reader above waits with
// its frame on the goroutine's stack, which the runtime can only shrink while it stays small.
//
//go:noinline
func readError(tc *net.TCPConn, err error) error {
	return &net.OpError{Op: "read", Net: "tcp", Source: tc.LocalAddr(), Addr: tc.RemoteAddr(), Err: err}
}

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
