package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
)

// Targets are plain TCP servers the proxies relay streams to.
//
// The bulk target reads a 9-byte request: op and a uint64 length n.
//
//	'U' upload:   it reads n bytes and answers with their CRC-32C, then closes;
//	'D' download: it sends n bytes and then their CRC-32C, then closes.
//
// The echo target returns what it reads until the stream ends.

const reqSize = 9

// ioChunk is the size of every application read and write, as io.Copy uses.
const ioChunk = 32 << 10

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// pattern is the data sent: random bytes of an odd length, stored twice so that any window
// of up to patternLen bytes is contiguous. Successive writes walk through it, so equal data
// does not recur at the same offsets of the chunks.
const patternLen = 1<<20 + 4093

var pattern = func() []byte {
	b := make([]byte, 2*patternLen)
	r := rand.NewChaCha8([32]byte{'a', 'n', 'y', 't', 'l', 's'})
	r.Read(b[:patternLen])
	copy(b[patternLen:], b[:patternLen])
	return b
}()

// source produces the pattern in chunks and keeps the checksum of what it produced.
type source struct {
	off int
	crc uint32
}

// next returns the next n (<= patternLen) bytes.
func (s *source) next(n int) []byte {
	b := pattern[s.off : s.off+n]
	s.off = (s.off + n) % patternLen
	s.crc = crc32.Update(s.crc, castagnoli, b)
	return b
}

// sendN writes n pattern bytes to w in writes of ioChunk and returns their checksum.
func sendN(w io.Writer, n int64) (uint32, error) {
	var src source
	for left := n; left > 0; {
		b := src.next(int(min(left, ioChunk)))
		if _, err := w.Write(b); err != nil {
			return 0, fmt.Errorf("after %d of %d bytes: %w", n-left, n, err)
		}
		left -= int64(len(b))
	}
	return src.crc, nil
}

// recvN reads exactly n bytes from r with reads of at most ioChunk and returns their checksum.
func recvN(r io.Reader, n int64, buf []byte) (uint32, error) {
	var crc uint32
	for left := n; left > 0; {
		k, err := r.Read(buf[:min(left, int64(len(buf)))])
		crc = crc32.Update(crc, castagnoli, buf[:k])
		left -= int64(k)
		if err != nil {
			if left == 0 {
				break
			}
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return 0, fmt.Errorf("after %d of %d bytes: %w", n-left, n, err)
		}
	}
	return crc, nil
}

func request(op byte, n int64) []byte {
	b := make([]byte, reqSize)
	b[0] = op
	binary.BigEndian.PutUint64(b[1:], uint64(n))
	return b
}

// target is a running target server.
type target struct {
	addr netip.AddrPort
	stop func()
}

func listenTarget(serve func(net.Conn)) (*target, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	return &target{addr: ln.Addr().(*net.TCPAddr).AddrPort(), stop: acceptLoop(ln, serve)}, nil
}

func startBulkTarget() (*target, error) { return listenTarget(serveBulk) }
func startEchoTarget() (*target, error) { return listenTarget(serveEcho) }

func serveBulk(c net.Conn) {
	var req [reqSize]byte
	if _, err := io.ReadFull(c, req[:]); err != nil {
		return
	}
	n := int64(binary.BigEndian.Uint64(req[1:]))
	var crc uint32
	var err error
	switch req[0] {
	case 'U':
		crc, err = recvN(c, n, make([]byte, ioChunk))
	case 'D':
		crc, err = sendN(c, n)
	default:
		return
	}
	if err != nil {
		return
	}
	c.Write(binary.BigEndian.AppendUint32(nil, crc))
}

func serveEcho(c net.Conn) {
	buf := make([]byte, 512)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
