package protocol

import (
	"math/bits"
	"sync"
)

// Buffers for frame data come from size-classed pools (powers of two, 64 B .. 128 KiB), so the
// data path allocates nothing per frame in steady state.
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
	if p, ok := bufPools[i].Get().(*[]byte); ok {
		return (*p)[:n]
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
	b = b[:0]
	bufPools[i].Put(&b)
}
