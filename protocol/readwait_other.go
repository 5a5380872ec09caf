//go:build !unix

package protocol

import "io"

// readWaiter: without a portable way to wait for readability, ReadFrom reads with its buffer.
func readWaiter(io.Reader) func() { return nil }
