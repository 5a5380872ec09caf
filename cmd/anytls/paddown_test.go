package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anytls-engine/anytls/protocol"
)

// readRecorder keeps what is read through it.
type readRecorder struct {
	net.Conn
	mu   sync.Mutex
	read []byte
}

func (r *readRecorder) Read(b []byte) (int, error) {
	n, err := r.Conn.Read(b)
	r.mu.Lock()
	r.read = append(r.read, b[:n]...)
	r.mu.Unlock()
	return n, err
}

// TestServerPadDownstreamFlag: `anytls server --pad-downstream` pads the server's first packets
// with cmdWaste frames (clients discard them); without the flag the server sends none.
func TestServerPadDownstreamFlag(t *testing.T) {
	for _, pad := range []bool{false, true} {
		t.Run(map[bool]string{false: "off", true: "on"}[pad], func(t *testing.T) {
			args := []string{"-l", "127.0.0.1:0", "-p", "pw", "--state", t.TempDir()}
			if pad {
				args = append(args, "--pad-downstream")
			}
			ctx, cancel := context.WithCancel(context.Background())
			pr, pw := io.Pipe()
			done := make(chan error, 1)
			go func() {
				done <- serverMain(ctx, args, pw, io.Discard)
				pw.Close()
			}()
			defer func() {
				cancel()
				go io.Copy(io.Discard, pr)
				if err := <-done; err != nil {
					t.Errorf("server: %v", err)
				}
			}()
			var addr string
			sc := bufio.NewScanner(pr)
			for addr == "" && sc.Scan() {
				addr, _ = strings.CutPrefix(sc.Text(), "anytls server listening on ")
			}
			if addr == "" {
				t.Fatal("the server did not print its address")
			}

			var rec *readRecorder
			client, err := protocol.NewClient(protocol.ClientConfig{
				Password: "pw",
				Dial: func(ctx context.Context) (net.Conn, error) {
					d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true}}
					c, err := d.DialContext(ctx, "tcp", addr)
					if err != nil {
						return nil, err
					}
					rec = &readRecorder{Conn: c}
					return rec, nil
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			// A loopback destination is refused by default: the server answers with an error
			// cmdSYNACK, after its cmdServerSettings.
			st, err := client.OpenStream(ctx, protocol.Addr{Fqdn: "localhost", Port: 9})
			if err != nil {
				t.Fatal(err)
			}
			st.SetDeadline(time.Now().Add(testTimeout))
			st.Write([]byte("x"))
			if _, err := st.Read(make([]byte, 1)); err == nil {
				t.Fatal("a refused stream read data")
			}
			st.Close()
			client.Close()

			rec.mu.Lock()
			b := bytes.Clone(rec.read)
			rec.mu.Unlock()
			waste, frames := 0, 0
			for len(b) >= protocol.HeaderSize {
				n := protocol.HeaderSize + int(binary.BigEndian.Uint16(b[5:7]))
				if len(b) < n {
					break
				}
				frames++
				if protocol.Command(b[0]) == protocol.CmdWaste {
					waste++
				}
				b = b[n:]
			}
			if frames < 2 {
				t.Fatalf("read %d frames from the server, want its settings and SYNACK at least", frames)
			}
			if pad && waste == 0 {
				t.Error("--pad-downstream: the server sent no cmdWaste frame")
			}
			if !pad && waste != 0 {
				t.Errorf("without --pad-downstream the server sent %d cmdWaste frames", waste)
			}
		})
	}
}
