package protocol

import (
	"bytes"
	"testing"
)

// A write larger than a frame is cut into frames that fill whole TLS records (header
// included), so that a 1 MiB write does not leave a runt record after every 64 KiB.
func TestLargeWriteFramesFillRecords(t *testing.T) {
	p := newMemPair(t, ServerConfig{}, ClientConfig{})
	st := p.open("example.com:80")
	defer st.Close()
	msg := make([]byte, 1<<20+100)
	for i := range msg {
		msg[i] = byte(i * 7)
	}
	echo(t, st, msg)

	_, frames := clientFrames(t, p.conn(0).Bytes())
	var sizes []int
	var data []byte
	for _, f := range frames {
		if f.Cmd == CmdPSH && f.StreamID == st.ID() && len(f.Data) > 0 {
			sizes = append(sizes, len(f.Data))
			data = append(data, f.Data...)
		}
	}
	// The first PSH carries the destination address.
	if len(sizes) < 2 {
		t.Fatalf("PSH frames %v", sizes)
	}
	if !bytes.Equal(data[len(data)-len(msg):], msg) {
		t.Fatal("framed data differs from the data written")
	}
	body := sizes[1:]
	for i, n := range body[:len(body)-1] {
		if (n+HeaderSize)%16384 != 0 {
			t.Fatalf("frame %d of the write carries %d bytes: %d with its header, not whole 16 KiB records (all: %v)", i, n, n+HeaderSize, body)
		}
	}
}
