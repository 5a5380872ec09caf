//go:build !unix

package protocol

import "io"

// socketReader and readWaiter: without a portable way to wait for readability, ReadFrom reads
// with its buffer.
func socketReader(io.Reader) *sockReader { return nil }

type sockReader struct {
	rc interface {
		Read(func(uintptr) bool) error
	}
	fn func(uintptr) bool
}

func (*sockReader) result(error) ([]byte, int, error) { return nil, 0, io.EOF }

func readWaiter(io.Reader) func() { return nil }
