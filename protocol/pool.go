package protocol

import (
	"math/bits"
	"sync"
	"unsafe"
)

// Buffers for frame data come from size-classed pools (powers of two, 64 B .. 128 KiB), so the
// data path allocates nothing per frame in steady state. A pool holds the pointer to a buffer's
// first byte (its capacity is the class size): a pointer goes into an interface without an
// allocation, where a slice (or a pointer to a fresh slice header) would take one per Put.
const (
	minPoolShift = 6
	maxPoolShift = 17
)

var bufPools [maxPoolShift - minPoolShift + 1]sync.Pool

func poolIndex(n int) int {
	if n <= 1<<minPoolShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minPoolShift
}

// getBuf returns a buffer of length n from the pools.
func getBuf(n int) []byte {
	i := poolIndex(n)
	if i >= len(bufPools) {
		return make([]byte, n)
	}
	if p, ok := bufPools[i].Get().(*byte); ok {
		return unsafe.Slice(p, 1<<(i+minPoolShift))[:n]
	}
	return make([]byte, n, 1<<(i+minPoolShift))
}

// putBuf returns a buffer obtained from getBuf.
func putBuf(b []byte) {
	c := cap(b)
	if c < 1<<minPoolShift || c&(c-1) != 0 {
		return
	}
	i := bits.Len(uint(c)) - 1 - minPoolShift
	if i >= len(bufPools) {
		return
	}
	bufPools[i].Put(unsafe.SliceData(b[:1]))
}
