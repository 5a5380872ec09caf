package fault

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"testing/synctest"

	"github.com/anytls-engine/anytls/protocol"
)

// fuzzSeeds are sessions a client might send after authenticating, well-formed and not.
func fuzzSeeds() [][]byte {
	j := func(b ...[]byte) []byte { return bytes.Join(b, nil) }
	v2 := settingsFrame(v2Settings)
	half := settingsFrame(v2Settings + "\nx-anytls-halfclose=1")
	return [][]byte{
		j(v2, open(1, echoDest), frame(protocol.CmdPSH, 1, []byte("hello")), frame(protocol.CmdFIN, 1, nil)),
		j(half, open(1, echoDest), frame(protocol.CmdPSH, 1, []byte("hi")), frame(protocol.CmdFIN, 1, nil),
			frame(protocol.CmdPSH, 1, []byte("late")), frame(protocol.CmdFIN, 1, []byte("reset"))),
		j(v2, open(1, sourceDest), frame(protocol.CmdHeartRequest, 0, nil), frame(protocol.CmdFIN, 1, nil)),
		j(v2, frame(99, 0, open(2, echoDest)), frame(protocol.CmdWaste, 0, make([]byte, 40))),
		j(open(1, echoDest), v2),
		j(v2, open(1, echoDest), open(1, echoDest), frame(protocol.CmdPSH, 7, []byte("x"))),
		j(v2, frame(protocol.CmdSYN, 1, nil), frame(protocol.CmdPSH, 1, []byte{3, 255, 'a'})),
		j(v2, frame(protocol.CmdSYN, 1, nil), frame(protocol.CmdPSH, 1, []byte{9})),
		j(v2, frame(protocol.CmdUpdatePaddingScheme, 0, []byte("stop=1\n0=1-1")), frame(protocol.CmdAlert, 0, []byte("x"))),
		j(settingsFrame("v=999999999999999999"), frame(protocol.CmdSYNACK, 1, []byte("err"))),
		j(settingsFrame(v2Settings+"\nx-anytls-window=1000"), open(1, sourceDest), frame(0xE0, 1, []byte{0, 0, 4, 0}),
			frame(0xE0, 1, []byte{0, 1}), frame(protocol.CmdFIN, 1, nil)),
		frame(protocol.CmdPSH, 1, make([]byte, 100))[:50],
		{},
	}
}

// FuzzServerSession feeds arbitrary bytes to a server session after a valid authentication
// (plain pipe, no TLS: the bytes are what TLS would deliver). The server must not panic, must
// not need to recover from one (the session reader logs it), and must end the session and
// every goroutine it started once the connection closes (the synctest bubble fails otherwise).
func FuzzServerSession(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, input []byte) {
		rec := &logRecorder{}
		synctest.Test(t, func(t *testing.T) {
			srv, err := protocol.NewServer(protocol.ServerConfig{
				Users:   []protocol.User{{Name: testUser, Password: testPassword}},
				Handler: handler,
				Logger:  slog.New(rec),
			})
			if err != nil {
				t.Fatal(err)
			}
			cc, sc := net.Pipe()
			done := make(chan error, 1)
			go func() { done <- srv.ServeConn(context.Background(), sc) }()
			drained := make(chan struct{})
			go func() { io.Copy(io.Discard, cc); close(drained) }()
			cc.Write(auth)
			cc.Write(input)
			cc.Close()
			<-done
			<-drained
			srv.Close()
			synctest.Wait()
			if n := srv.SessionCount(); n != 0 {
				t.Errorf("%d sessions left after the connection closed", n)
			}
		})
		if p := rec.find("panic"); len(p) > 0 {
			t.Fatalf("the session reader recovered from a panic: %v", p)
		}
	})
}
