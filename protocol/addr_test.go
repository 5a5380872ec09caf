package protocol

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"
	"testing/synctest"
)

func TestAddrCodec(t *testing.T) {
	tests := []struct {
		in   string
		wire []byte
		fqdn bool
	}{
		{"1.2.3.4:80", []byte{1, 1, 2, 3, 4, 0, 80}, false},
		{"[2001:db8::1]:443", append(append([]byte{4}, netip.MustParseAddr("2001:db8::1").AsSlice()...), 1, 187), false},
		{"example.com:8080", append(append([]byte{3, 11}, "example.com"...), 0x1f, 0x90), true},
		{"[::ffff:10.0.0.1]:53", []byte{1, 10, 0, 0, 1, 0, 53}, false}, // mapped: sent as IPv4
	}
	for _, tt := range tests {
		a, err := ParseAddr(tt.in)
		if err != nil {
			t.Fatalf("ParseAddr(%q): %v", tt.in, err)
		}
		if a.IsFqdn() != tt.fqdn {
			t.Errorf("%q: IsFqdn = %v", tt.in, a.IsFqdn())
		}
		b, err := a.AppendTo([]byte("x"))
		if err != nil || !bytes.Equal(b[1:], tt.wire) {
			t.Fatalf("%q encodes to % x, %v; want % x", tt.in, b[1:], err, tt.wire)
		}
		if a.EncodedLen() != len(tt.wire) {
			t.Errorf("%q: EncodedLen %d, want %d", tt.in, a.EncodedLen(), len(tt.wire))
		}
		back, n, err := ParseAddrBytes(append(tt.wire, "trailing data"...))
		if err != nil || n != len(tt.wire) || back != a {
			t.Fatalf("decode % x = %v, %d, %v; want %v", tt.wire, back, n, err, a)
		}
	}
	// a domain field holding an IP literal is that IP, as peers treat it
	a, _, err := ParseAddrBytes(append(append([]byte{3, 8}, "10.0.0.1"...), 0, 80))
	if err != nil || a.IsFqdn() || a.IP != netip.MustParseAddr("10.0.0.1") {
		t.Fatalf("IP literal in a domain field: %v, %v", a, err)
	}
	for _, bad := range [][]byte{{}, {5, 1, 2}, {3, 0, 0, 80}, {1, 1, 2, 3}, {3, 5, 'a'}, {4, 0}} {
		if _, _, err := ParseAddrBytes(bad); err == nil {
			t.Errorf("ParseAddrBytes(% x) accepted", bad)
		}
	}
	if _, _, err := ParseAddrBytes([]byte{9}); !errors.Is(err, ErrBadAddress) {
		t.Errorf("unknown type: %v, want ErrBadAddress", err)
	}
	for _, bad := range []string{"noport", "host:99999", "[fe80::1%eth0]:80", ":80", strings.Repeat("a", 256) + ":1"} {
		if _, err := ParseAddr(bad); !errors.Is(err, ErrBadAddress) {
			t.Errorf("ParseAddr(%q) = %v, want ErrBadAddress", bad, err)
		}
	}
	if _, err := (Addr{}).AppendTo(nil); !errors.Is(err, ErrBadAddress) {
		t.Errorf("empty Addr encodes: %v", err)
	}
}

// TestUoTDestination: a stream to the UDP-over-TCP magic name reaches the handler recognised as
// such (hosts serve it).
func TestUoTDestination(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dests := make(chan Addr, 1)
		p := newMemPair(t, ServerConfig{Handler: func(ctx context.Context, st *Stream) {
			dests <- st.Destination()
			echoHandler(ctx, st)
		}}, ClientConfig{})
		st := p.open(UoTMagicAddress + ":0")
		echo(t, st, []byte{0, 1, 2})
		if d := <-dests; !d.IsUoT() || d.String() != UoTMagicAddress+":0" {
			t.Fatalf("handler saw %v (IsUoT %v)", d, d.IsUoT())
		}
		st.Close()
		if mustAddr(t, "example.com:0").IsUoT() {
			t.Fatal("IsUoT for another name")
		}
	})
}

func TestConfigErrors(t *testing.T) {
	dial := (&memPair{}).dial
	for _, c := range []struct {
		cfg  ClientConfig
		want string
	}{
		{ClientConfig{Password: "x"}, "Dial"},
		{ClientConfig{Dial: dial}, "password"},
		{ClientConfig{Dial: dial, Password: "x", MinIdleSession: -1}, "min idle session -1"},
		{ClientConfig{Dial: dial, Password: "x", MaxVersion: 3}, "max version 3"},
		{ClientConfig{Dial: dial, Password: "x", MaxStreamsPerSession: -2}, "max streams per session -2"},
	} {
		_, err := NewClient(c.cfg)
		if !errors.Is(err, ErrBadConfig) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("NewClient: %v, want ErrBadConfig naming %q", err, c.want)
		}
	}
	for _, c := range []struct {
		cfg  ServerConfig
		want string
	}{
		{ServerConfig{Users: []User{{Password: "x"}}}, "Handler"},
		{ServerConfig{Handler: echoHandler}, "at least one user"},
		{ServerConfig{Handler: echoHandler, Users: []User{{Name: "a"}}}, `"a"`},
		{ServerConfig{Handler: echoHandler, Users: []User{{Name: "a", Password: "1"}, {Name: "a", Password: "2"}}}, `"a" appears twice`},
		{ServerConfig{Handler: echoHandler, Users: []User{{Password: "1"}}, MaxVersion: 7}, "max version 7"},
	} {
		_, err := NewServer(c.cfg)
		if !errors.Is(err, ErrBadConfig) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("NewServer: %v, want ErrBadConfig naming %q", err, c.want)
		}
	}
}

// TestClientClose: Close fails open streams and later OpenStream calls with ErrClientClosed.
func TestClientClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newMemPair(t, ServerConfig{}, ClientConfig{})
		st := p.open("example.com:80")
		echo(t, st, []byte("x"))
		p.client.Close()
		if _, err := st.Read(make([]byte, 1)); !errors.Is(err, ErrClientClosed) {
			t.Fatalf("Read after client Close: %v, want ErrClientClosed", err)
		}
		if _, err := p.client.OpenStream(context.Background(), mustAddr(t, "example.com:80")); !errors.Is(err, ErrClientClosed) {
			t.Fatalf("OpenStream after Close: %v, want ErrClientClosed", err)
		}
		synctest.Wait()
		if p.srv.SessionCount() != 0 {
			t.Fatal("server still has the session")
		}
	})
}

// TestReadFromWriteTo: io.Copy into and out of streams (ReaderFrom / WriterTo) carries data
// intact in frames of at most MaxFrameData.
func TestReadFromWriteTo(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newMemPair(t, ServerConfig{}, ClientConfig{})
		st := p.open("example.com:80")
		data := bytes.Repeat([]byte("0123456789abcdef"), 300_000/16)
		go func() {
			if n, err := io.Copy(st, bytes.NewReader(data)); n != int64(len(data)) || err != nil {
				t.Errorf("io.Copy into the stream: %d, %v", n, err)
			}
			st.CloseWrite()
		}()
		var got bytes.Buffer
		if n, err := io.Copy(&got, st); n != int64(len(data)) || err != nil {
			t.Fatalf("io.Copy out of the stream: %d, %v", n, err)
		}
		if !bytes.Equal(got.Bytes(), data) {
			t.Fatal("data differs")
		}
		st.Close()
		_, frames := clientFrames(t, p.conn(0).Bytes())
		for _, f := range frames {
			if int(f.Length) > MaxFrameData {
				t.Fatalf("frame of %d bytes", f.Length)
			}
		}
	})
}
