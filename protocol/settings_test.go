package protocol

import (
	"bytes"
	"context"
	"errors"
	"io"
	"maps"
	"net"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

func TestParseSettings(t *testing.T) {
	tests := []struct {
		text string
		want Settings
		v    int
	}{
		{"v=2\nclient=sing-box/1.12\npadding-md5=abc", Settings{"v": "2", "client": "sing-box/1.12", "padding-md5": "abc"}, 2},
		{"padding-md5=abc\nclient=\nv=2\n", Settings{"v": "2", "client": "", "padding-md5": "abc"}, 2}, // any order, trailing newline
		{"v=2\r\nfoo=bar=baz\r\n\r\n", Settings{"v": "2", "foo": "bar=baz"}, 2},                        // CRLF, '=' in a value
		{"x-unknown=1\nv=3", Settings{"x-unknown": "1", "v": "3"}, 3},                                  // unknown keys kept
		{"v=2\nv=1", Settings{"v": "2"}, 2},                                                            // first value wins
		{"garbage\n=novalue\nv=1", Settings{"v": "1"}, 1},                                              // lines without a key are ignored
		{"", Settings{}, 1},
		{"v=", Settings{"v": ""}, 1},
		{"v=two", Settings{"v": "two"}, 1},
		{"v=0", Settings{"v": "0"}, 1},
		{"v=-2", Settings{"v": "-2"}, 1},
		{"v=99999999999999999999999", Settings{"v": "99999999999999999999999"}, 1},
	}
	for _, tt := range tests {
		got := ParseSettings([]byte(tt.text))
		if !maps.Equal(got, tt.want) {
			t.Errorf("ParseSettings(%q) = %v, want %v", tt.text, got, tt.want)
		}
		if v := got.Version(); v != tt.v {
			t.Errorf("ParseSettings(%q).Version() = %d, want %d", tt.text, v, tt.v)
		}
	}
	s := Settings{"padding-md5": "x", "v": "2", "client": "", "a": "b"}
	enc := string(s.Encode())
	if !strings.HasPrefix(enc, "v=2\n") || strings.HasSuffix(enc, "\n") {
		t.Errorf("Encode() = %q: want v first and no trailing newline", enc)
	}
	if back := ParseSettings([]byte(enc)); !maps.Equal(back, s) {
		t.Errorf("Encode/Parse round trip: %v, want %v", back, s)
	}
}

// TestClientSettingsDefault: a client names no implementation by default (client= empty), and
// sends the configured name otherwise.
func TestClientSettingsDefault(t *testing.T) {
	for _, name := range []string{"", "mihomo/1.19.23"} {
		synctest.Test(t, func(t *testing.T) {
			p := newMemPair(t, ServerConfig{}, ClientConfig{ClientName: name})
			st := p.open("example.com:80")
			echo(t, st, []byte("x"))
			st.Close()
			_, frames := clientFrames(t, p.conn(0).Bytes())
			if frames[0].Cmd != CmdSettings {
				t.Fatalf("first frame %v, want Settings", frames[0])
			}
			s := ParseSettings(frames[0].Data)
			if c, ok := s["client"]; !ok || c != name {
				t.Fatalf("settings %q: client=%q, want %q", frames[0].Data, c, name)
			}
			if s.Version() != 2 || s["padding-md5"] != DefaultPaddingScheme.MD5() {
				t.Fatalf("settings %q", frames[0].Data)
			}
		})
	}
}

// TestV2ClientV1Server: a v2 client talking to a v1 server (one that never sends
// cmdServerSettings) waits for no cmdSYNACK and sends no heartbeats.
func TestV2ClientV1Server(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newMemPair(t, ServerConfig{MaxVersion: 1}, ClientConfig{
			SynAckTimeout:     3 * time.Second,
			HeartbeatInterval: 2 * time.Second,
			HeartbeatTimeout:  time.Second,
		})
		st := p.open("example.com:80")
		time.Sleep(time.Minute) // far beyond the SYNACK wait and heartbeat interval
		echo(t, st, []byte("still here"))
		st.Close()
		st2 := p.open("example.com:81") // reused session: no SYNACK wait either
		time.Sleep(time.Minute)
		echo(t, st2, []byte("and here"))
		st2.Close()
		synctest.Wait()
		if n := p.dials.Load(); n != 1 {
			t.Fatalf("%d sessions dialled, want 1", n)
		}
		_, up := clientFrames(t, p.conn(0).Bytes())
		if n := countCmd(up, CmdHeartRequest); n != 0 {
			t.Fatalf("client sent %d heartbeats to a v1 server", n)
		}
		down := parseFrames(t, p.serverConn(0).Bytes())
		if n := countCmd(down, CmdServerSettings) + countCmd(down, CmdSYNACK); n != 0 {
			t.Fatalf("v1 server sent v2 frames: %v", down)
		}
	})
}

// TestV1ClientV2Server: a v1 client gets no cmdServerSettings and no cmdSYNACK.
func TestV1ClientV2Server(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newMemPair(t, ServerConfig{}, ClientConfig{MaxVersion: 1})
		st := p.open("example.com:80")
		echo(t, st, []byte("hello"))
		time.Sleep(time.Minute)
		echo(t, st, []byte("hello again"))
		st.Close()
		synctest.Wait()
		_, up := clientFrames(t, p.conn(0).Bytes())
		if v := ParseSettings(up[0].Data).Version(); v != 1 {
			t.Fatalf("v1 client announced v=%d", v)
		}
		if n := countCmd(up, CmdHeartRequest); n != 0 {
			t.Fatalf("v1 client sent %d heartbeats", n)
		}
		down := parseFrames(t, p.serverConn(0).Bytes())
		for _, f := range down {
			if f.Cmd == CmdServerSettings || f.Cmd == CmdSYNACK || f.Cmd == CmdHeartRequest {
				t.Fatalf("server sent %v to a v1 client", f)
			}
		}
	})
}

// fakeServerClient returns a client whose single connection is handed to the test as a raw
// peer (a hand-written server).
func fakeServerClient(t *testing.T, ccfg ClientConfig) (*Client, chan *rawPeer) {
	t.Helper()
	peers := make(chan *rawPeer, 4)
	ccfg.Password = "pw"
	ccfg.Dial = func(ctx context.Context) (net.Conn, error) {
		a, b := net.Pipe()
		peers <- newRawPeer(t, b, true)
		return a, nil
	}
	c, err := NewClient(ccfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, peers
}

func TestAlertClosesClientSession(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, peers := fakeServerClient(t, ClientConfig{})
		st, err := c.OpenStream(context.Background(), mustAddr(t, "example.com:443"))
		if err != nil {
			t.Fatal(err)
		}
		srv := <-peers
		defer srv.close()
		srv.expect(CmdSettings, time.Second)
		srv.write(CmdServerSettings, 0, []byte("v=2"))
		srv.expect(CmdSYN, time.Second)
		srv.write(CmdAlert, 0, []byte("client version refused"))
		_, err = st.Read(make([]byte, 10))
		if !errors.Is(err, ErrAlert) {
			t.Fatalf("Read after cmdAlert: %v, want ErrAlert", err)
		}
		var ae *AlertError
		if !errors.As(err, &ae) || ae.Text != "client version refused" {
			t.Fatalf("error %v does not carry the alert text", err)
		}
		synctest.Wait()
		if open, _ := c.SessionCount(); open != 0 {
			t.Fatalf("%d sessions open after cmdAlert, want 0", open)
		}
		// the client closed the connection
		for range srv.frames {
		}
		if !errors.Is(srv.err, io.EOF) && !errors.Is(srv.err, io.ErrClosedPipe) {
			t.Fatalf("connection after alert: %v", srv.err)
		}
	})
}

// TestBadPushedSchemeIgnored: a pushed scheme that does not parse is ignored; the session goes on.
func TestBadPushedSchemeIgnored(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, peers := fakeServerClient(t, ClientConfig{})
		st, err := c.OpenStream(context.Background(), mustAddr(t, "example.com:443"))
		if err != nil {
			t.Fatal(err)
		}
		srv := <-peers
		defer srv.close()
		srv.expect(CmdSettings, time.Second)
		srv.write(CmdUpdatePaddingScheme, 0, []byte("stop=x\n1=1-1"))
		srv.write(CmdPSH, 1, []byte("data"))
		got := make([]byte, 4)
		if _, err := io.ReadFull(st, got); err != nil || string(got) != "data" {
			t.Fatalf("read %q, %v", got, err)
		}
		if c.PaddingScheme() != DefaultPaddingScheme {
			t.Fatal("a bad pushed scheme replaced the client's")
		}
		st.Close()
	})
}

// TestSYNBeforeSettings: the server refuses a session whose first frame is cmdSYN.
func TestSYNBeforeSettings(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, err := NewServer(ServerConfig{Users: []User{{Name: "u", Password: "pw"}}, Handler: echoHandler})
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		a, b := net.Pipe()
		errc := make(chan error, 1)
		go func() { errc <- srv.ServeConn(context.Background(), b) }()
		cl := newRawPeer(t, a, false)
		defer cl.close()
		if _, err := a.Write(authRequest("pw", 0)); err != nil {
			t.Fatal(err)
		}
		// the server may close before reading the address that follows, so the error is moot
		a.Write(clientOpen(t, "", 1, "example.com:80"))
		f := cl.next(time.Second)
		if f.Cmd != CmdAlert || len(f.Data) == 0 {
			t.Fatalf("server answered SYN before settings with %v, want cmdAlert with a reason", f)
		}
		if err := <-errc; !errors.Is(err, ErrProtocol) {
			t.Fatalf("ServeConn = %v, want ErrProtocol", err)
		}
		for f := range cl.frames {
			t.Fatalf("frame after the alert: %v", f)
		}
		if srv.SessionCount() != 0 {
			t.Fatal("session still counted")
		}
	})
}

// TestPaddingSchemePushPerClient: a pushed scheme is stored in the client object that received
// it, not globally, and applies to sessions that client creates afterwards.
func TestPaddingSchemePushPerClient(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pushed := MustParsePaddingScheme("stop=3\n0=77-77\n1=20-20")
		p := newMemPair(t, ServerConfig{PaddingScheme: pushed}, ClientConfig{})
		var mu sync.Mutex
		var otherConns int
		other, err := NewClient(ClientConfig{Password: "pw-alice", Dial: func(ctx context.Context) (net.Conn, error) {
			mu.Lock()
			otherConns++
			mu.Unlock()
			return p.dial(ctx)
		}})
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()

		st1 := p.open("example.com:80")
		echo(t, st1, []byte("one"))
		synctest.Wait()
		if got := p.client.PaddingScheme(); got.MD5() != pushed.MD5() || got.String() != pushed.String() {
			t.Fatalf("client scheme after push: %q", got)
		}
		if other.PaddingScheme() != DefaultPaddingScheme {
			t.Fatal("a scheme pushed to one client changed another client's")
		}
		// The first session keeps the scheme it started with; st1 is still open, so the
		// second stream gets a new session, which uses the pushed scheme from packet 0 on.
		st2 := p.open("example.com:81")
		echo(t, st2, []byte("two"))
		synctest.Wait()
		w := p.conn(1).Writes()
		if len(w[0]) != 34+77 {
			t.Fatalf("new session's packet 0 is %d bytes, want 34+77 (pushed line 0)", len(w[0]))
		}
		if len(w[1]) != 20 {
			t.Fatalf("new session's first record is %d bytes, want 20 (pushed line 1)", len(w[1]))
		}
		_, frames := clientFrames(t, p.conn(1).Bytes())
		if md5 := ParseSettings(frames[0].Data)["padding-md5"]; md5 != pushed.MD5() {
			t.Fatalf("new session announces padding-md5=%s, want the pushed %s", md5, pushed.MD5())
		}
		if down := parseFrames(t, p.serverConn(1).Bytes()); countCmd(down, CmdUpdatePaddingScheme) != 0 {
			t.Fatal("server pushed its scheme again to a client that has it")
		}
		// the first session's later packets still follow the scheme it started with
		if down := parseFrames(t, p.serverConn(0).Bytes()); countCmd(down, CmdUpdatePaddingScheme) != 1 {
			t.Fatal("first session: want exactly one push")
		}
		st1.Close()
		st2.Close()
		// the other client, connecting now, gets its own push
		st3, err := other.OpenStream(context.Background(), mustAddr(t, "example.com:82"))
		if err != nil {
			t.Fatal(err)
		}
		echo(t, st3, []byte("three"))
		st3.Close()
		synctest.Wait()
		if other.PaddingScheme().MD5() != pushed.MD5() {
			t.Fatal("second client did not take the pushed scheme")
		}
		if !bytes.Equal(p.client.PaddingScheme().Raw(), pushed.Raw()) {
			t.Fatal("first client's scheme changed")
		}
	})
}
