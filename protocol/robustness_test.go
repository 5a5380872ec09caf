package protocol

import (
	"context"
	"errors"
	"io"
	"testing"
	"testing/synctest"
	"time"
)

// A slow upload: the server's handler drains 16 KiB every 100 ms, far slower than the client
// writes, and the server sends nothing back. The client's heartbeat request waits behind the
// data, so no answer can come in time; the session must still be judged alive because its
// writes keep completing (the peer's TCP acknowledges them).
func TestSlowUploadIsNotADeadSession(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const total = 2 << 20
		got := make(chan int, 1)
		handler := func(ctx context.Context, st *Stream) {
			defer st.Close()
			st.Report(nil)
			buf := make([]byte, 16<<10)
			n := 0
			for n < total {
				k, err := st.Read(buf)
				n += k
				if err != nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			got <- n
		}
		p := newMemPair(t,
			ServerConfig{Handler: handler, StreamBufferSize: 64 << 10, StreamStallTimeout: time.Minute},
			ClientConfig{HeartbeatInterval: time.Second, HeartbeatTimeout: 500 * time.Millisecond})
		st := p.open("example.com:80")
		start := time.Now()
		if _, err := st.Write(make([]byte, total)); err != nil {
			t.Fatalf("upload failed after %v: %v", time.Since(start), err)
		}
		if n := <-got; n != total {
			t.Fatalf("server read %d bytes, want %d", n, total)
		}
		if time.Since(start) < 5*time.Second {
			t.Fatalf("upload took %v: the test did not exercise a slow drain", time.Since(start))
		}
		st.Close()
	})
}

// A reader that drains slowly but steadily is back-pressured, not reset: the stall timer
// restarts whenever it frees buffer space.
func TestSlowReaderIsNotStalled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const total = 1 << 20
		p := newMemPair(t, ServerConfig{Handler: func(ctx context.Context, st *Stream) {
			defer st.Close()
			st.Report(nil)
			st.Write(make([]byte, total))
		}}, ClientConfig{StreamBufferSize: 64 << 10, StreamStallTimeout: 2 * time.Second, HeartbeatInterval: -1})
		st := p.open("example.com:80")
		st.Write([]byte("go"))
		buf := make([]byte, 8<<10)
		n := 0
		for n < total {
			k, err := st.Read(buf)
			n += k
			if err != nil {
				t.Fatalf("after %d bytes: %v", n, err)
			}
			time.Sleep(time.Second) // 8 KiB/s: slower than a 64 KiB frame per stall timeout
		}
		st.Close()
	})
}

func TestDuplicatePasswordsRefused(t *testing.T) {
	_, err := NewServer(ServerConfig{
		Users:   []User{{Name: "a", Password: "same"}, {Name: "b", Password: "same"}},
		Handler: echoHandler,
	})
	if !errors.Is(err, ErrBadConfig) {
		t.Fatalf("err = %v, want ErrBadConfig", err)
	}
}

func TestPushedSchemeReadLeniently(t *testing.T) {
	text := []byte("stop=3\n0=20-20\n1=400-100,x,c,50-50\nfoo=bar")
	if _, err := ParsePaddingScheme(text); err == nil {
		t.Fatal("strict parser accepted a scheme with min > max")
	}
	p, err := parsePushedScheme(text)
	if err != nil {
		t.Fatal(err)
	}
	sizes, ok := p.RecordSizes(1, nil)
	if !ok || len(sizes) != 3 || sizes[0] < 100 || sizes[0] >= 400 || sizes[1] != CheckMark || sizes[2] != 50 {
		t.Fatalf("sizes = %v", sizes)
	}
	if p.AuthPadding() != 20 || p.MD5() == "" {
		t.Fatalf("auth padding %d", p.AuthPadding())
	}
	if _, err := parsePushedScheme([]byte("0=1-2")); err == nil {
		t.Fatal("a scheme without stop= was accepted")
	}
	_ = io.EOF
}
