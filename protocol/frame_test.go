package protocol

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"testing"
	"testing/synctest"
)

func TestCommandString(t *testing.T) {
	want := map[Command]string{
		0: "Waste", 1: "SYN", 2: "PSH", 3: "FIN", 4: "Settings", 5: "Alert",
		6: "UpdatePaddingScheme", 7: "SYNACK", 8: "HeartRequest", 9: "HeartResponse",
		10: "ServerSettings",
	}
	for c := Command(0); c <= 10; c++ {
		if got := c.String(); got != want[c] {
			t.Errorf("Command(%d).String() = %q, want %q", c, got, want[c])
		}
		if !c.Known() {
			t.Errorf("Command(%d).Known() = false", c)
		}
	}
	for _, c := range []Command{11, 42, 255} {
		if c.Known() {
			t.Errorf("Command(%d).Known() = true", c)
		}
		if got, want := c.String(), "Unknown("; len(got) < len(want) || got[:len(want)] != want {
			t.Errorf("Command(%d).String() = %q, want Unknown(...)", c, got)
		}
	}
}

func TestFrameRoundTrip(t *testing.T) {
	sids := []uint32{0, 1, 2, 0x7fffffff, 0xffffffff}
	for c := Command(0); c <= 10; c++ {
		for _, sid := range sids {
			for _, n := range []int{0, 1, 7, 1000, MaxFrameData} {
				data := make([]byte, n)
				rand.Read(data)
				b := AppendFrame([]byte("prefix"), c, sid, data)
				b = b[len("prefix"):]
				if len(b) != HeaderSize+n {
					t.Fatalf("%v sid=%d n=%d: frame is %d bytes", c, sid, n, len(b))
				}
				h := ParseFrameHeader(b)
				if h.Cmd != c || h.StreamID != sid || int(h.Length) != n {
					t.Fatalf("round trip %v sid=%d n=%d: got %+v", c, sid, n, h)
				}
				if !bytes.Equal(b[HeaderSize:], data) {
					t.Fatalf("%v: data differs", c)
				}
				// the header layout is the spec's: command, big-endian stream id, big-endian length
				if b[0] != byte(c) || b[1] != byte(sid>>24) || b[4] != byte(sid) ||
					b[5] != byte(n>>8) || b[6] != byte(n) {
					t.Fatalf("%v sid=%d n=%d: header bytes % x", c, sid, n, b[:HeaderSize])
				}
			}
		}
	}
}

func TestFrameHeaderZeroAlloc(t *testing.T) {
	var buf [HeaderSize]byte
	var sink FrameHeader
	allocs := testing.AllocsPerRun(1000, func() {
		PutFrameHeader(buf[:], CmdPSH, 12345, 4321)
		sink = ParseFrameHeader(buf[:])
	})
	if allocs != 0 {
		t.Fatalf("frame header encode+parse allocates %v times per frame, want 0", allocs)
	}
	if sink.StreamID != 12345 || sink.Length != 4321 {
		t.Fatalf("parsed %+v", sink)
	}
	dst := make([]byte, 0, 64)
	allocs = testing.AllocsPerRun(1000, func() {
		dst = AppendFrame(dst[:0], CmdFIN, 7, nil)
	})
	if allocs != 0 {
		t.Fatalf("AppendFrame into a buffer with room allocates %v times, want 0", allocs)
	}
}

// TestLargeWriteSplit: one Write of more than 65535 bytes goes out as several PSH frames, each
// at most MaxFrameData, in order, in both directions (a defect of deployed peers: the length
// field wraps).
func TestLargeWriteSplit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const size = 3*MaxFrameData + 1234
		down := make([]byte, size)
		rand.Read(down)
		srvGot := make(chan []byte, 1)
		p := newMemPair(t, ServerConfig{Handler: func(ctx context.Context, st *Stream) {
			defer st.Close()
			st.Report(nil)
			got := make([]byte, size)
			_, err := io.ReadFull(st, got)
			if err != nil {
				t.Errorf("server read: %v", err)
			}
			srvGot <- got
			if n, err := st.Write(down); n != size || err != nil {
				t.Errorf("server write: %d, %v", n, err)
			}
		}}, ClientConfig{})
		up := make([]byte, size)
		rand.Read(up)
		st := p.open("example.com:443")
		if n, err := st.Write(up); n != size || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
		if got := <-srvGot; !bytes.Equal(got, up) {
			t.Fatal("server received different data")
		}
		got := make([]byte, size)
		if _, err := io.ReadFull(st, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, down) {
			t.Fatal("client received different data")
		}
		st.Close()
		synctest.Wait()

		check := func(dir string, frames []rawFrame, want []byte) {
			var psh [][]byte
			for _, f := range frames {
				if f.Cmd == CmdPSH && f.StreamID == 1 {
					psh = append(psh, f.Data)
				}
			}
			joined := bytes.Join(psh, nil)
			// the client's first PSH is the destination address
			if dir == "up" {
				a, n, err := ParseAddrBytes(joined)
				if err != nil || a.String() != "example.com:443" {
					t.Fatalf("first PSH is not the address: %v %v", a, err)
				}
				joined = joined[n:]
			}
			if !bytes.Equal(joined, want) {
				t.Fatalf("%s: PSH frames carry %d bytes, want the %d written", dir, len(joined), len(want))
			}
			// Frames of alignedFrameData fill whole TLS records with their header.
			big := 0
			for _, d := range psh {
				if len(d) == alignedFrameData {
					big++
				}
			}
			if big < 3 {
				t.Fatalf("%s: %d full frames, want the write split into >= 3 frames of %d", dir, big, alignedFrameData)
			}
		}
		_, up2 := clientFrames(t, p.conn(0).Bytes())
		check("up", up2, up)
		check("down", parseFrames(t, p.serverConn(0).Bytes()), down)
	})
}
