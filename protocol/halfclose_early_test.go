package protocol

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// gatedConn holds back everything the server sends until open is closed, so that the client
// acts before it has heard the server's settings.
type gatedConn struct {
	net.Conn
	open <-chan struct{}
}

func (c *gatedConn) Read(b []byte) (int, error) {
	<-c.open
	return c.Conn.Read(b)
}

// TestCloseWriteBeforeServerSettings: on a fresh session the client cannot yet know whether the
// server agreed to half-close when the caller writes its request and calls CloseWrite at once
// (a relay whose source ended right after its first bytes). The cmdFIN must still reach the
// server once the server's settings turn half-close on; it was lost, and the server waited for
// an end of stream that never came.
func TestCloseWriteBeforeServerSettings(t *testing.T) {
	gate := make(chan struct{})
	var p *testPair
	p = newTestPair(t, ServerConfig{Handler: func(ctx context.Context, st *Stream) {
		defer st.Close()
		st.Report(nil)
		n, _ := io.Copy(io.Discard, st) // until the client's half-close
		st.Write(binary.BigEndian.AppendUint64(nil, uint64(n)))
	}}, ClientConfig{Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", p.ln.Addr().String())
		if err != nil {
			return nil, err
		}
		return &gatedConn{Conn: c, open: gate}, nil
	}})
	st, err := p.client.OpenStream(context.Background(), mustAddr(t, "example.com:80"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Write(make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	if err := st.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	close(gate) // now the server's settings (half-close on) arrive
	st.SetReadDeadline(time.Now().Add(5 * time.Second))
	var reply [8]byte
	if _, err := io.ReadFull(st, reply[:]); err != nil {
		t.Fatalf("read the reply after CloseWrite: %v (the server never saw the end of the stream)", err)
	}
	if n := binary.BigEndian.Uint64(reply[:]); n != 1000 {
		t.Fatalf("server read %d bytes, want 1000", n)
	}
	if _, err := st.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read after the reply: %v, want io.EOF", err)
	}
}
