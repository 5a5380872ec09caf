package protocol

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t testing.TB) (a, b net.Conn) {
	t.Helper()
	return connPair(t, "tcp", "127.0.0.1:0")
}

// connPair returns both ends of a connection made through a listener on network and address.
func connPair(t testing.TB, network, address string) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen(network, address)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	a, err = net.Dial(network, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b = <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// ReadFrom from a socket waits for readability without a buffer between bursts; the data must
// still arrive intact and in order, whatever the burst sizes, and ReadFrom must end at EOF.
func TestReadFromSocketSource(t *testing.T) {
	p := newMemPair(t, ServerConfig{}, ClientConfig{})
	st := p.open("example.com:80")
	defer st.Close()
	app, src := tcpPair(t)

	var want []byte
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 100, alignedFrameData, alignedFrameData + 1, 3, 1 << 20, 7} {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		want = append(want, b...)
	}
	checkRelayed(t, st, want, func() (int64, error) { return st.ReadFrom(src) }, func() {
		rest := want
		for _, n := range []int{1, 100, alignedFrameData, alignedFrameData + 1, 3, 1 << 20, 7} {
			app.Write(rest[:n])
			rest = rest[n:]
			time.Sleep(time.Millisecond) // let the source drain, so ReadFrom waits without a buffer
		}
		app.(*net.TCPConn).CloseWrite()
	})
}

// checkRelayed runs relay (a ReadFrom into st from a source) while send writes want into the
// source; the echo read back from st must be want, and relay must report len(want) and no error.
func checkRelayed(t *testing.T, st *Stream, want []byte, relay func() (int64, error), send func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		n, err := relay()
		if err == nil && n != int64(len(want)) {
			err = fmt.Errorf("relayed %d bytes, want %d", n, len(want))
		}
		done <- err
	}()
	go send()
	got := make([]byte, len(want))
	st.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadFull(st, got); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("data echoed through ReadFrom differs from the data sent")
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A read deadline on the source ends a ReadFrom that waits for it.
func TestReadFromSocketSourceDeadline(t *testing.T) {
	p := newMemPair(t, ServerConfig{}, ClientConfig{})
	st := p.open("example.com:80")
	defer st.Close()
	_, src := tcpPair(t)
	src.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	done := make(chan error, 1)
	go func() {
		_, err := st.ReadFrom(src)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("ReadFrom = %v, want a deadline error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ReadFrom did not return after the source's read deadline")
	}
}

// Streams whose ReadFrom waits on an idle socket hold no frame buffer (it used to be 64 KiB
// each, from the 128 KiB pool class).
func TestReadFromIdleHoldsNoBuffer(t *testing.T) {
	const streams = 64
	p := newMemPair(t, ServerConfig{}, ClientConfig{MaxStreamsPerSession: streams})
	heap := func() int64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return int64(ms.HeapInuse)
	}
	srcs := make([]net.Conn, streams)
	sts := make([]*Stream, streams)
	for i := range srcs {
		_, srcs[i] = tcpPair(t)
		sts[i] = p.open("example.com:80")
		echo(t, sts[i], []byte("x"))
	}
	before := heap()
	done := make(chan struct{}, streams)
	for i := range srcs {
		go func() {
			sts[i].ReadFrom(srcs[i])
			done <- struct{}{}
		}()
	}
	time.Sleep(100 * time.Millisecond) // let every ReadFrom reach its wait
	per := (heap() - before) / streams
	for i := range srcs {
		srcs[i].Close()
		sts[i].Close()
	}
	for range streams {
		<-done
	}
	if per > 16<<10 {
		t.Fatalf("an idle ReadFrom holds %d bytes of heap, want < 16 KiB", per)
	}
}
