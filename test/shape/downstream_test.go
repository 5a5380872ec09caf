package shape

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/anytls-engine/anytls/protocol"
)

// downScheme has fixed sizes: a check mark stopping after padding, a 9-byte record, pure
// padding below 7 bytes, a check mark passed with data left and data after the list, a packet
// with no line before stop.
const downScheme = `stop=7
0=30-30
1=100-100
2=20-20,c,50-50
3=9-9,40-40
4=200-200,5-5
5=c,60-60`

// runHalfClosed is runStream for our client, ending with CloseWrite and a read to EOF, so that
// the server's last packet (its cmdFIN) has arrived before the test goes on.
func runHalfClosed(t *testing.T, c ourClient, writes []int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	conn, err := c.open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range writes {
		echoOnce(t, conn, n)
	}
	st := conn.(*protocol.Stream)
	if err := st.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(st); err != nil || len(rest) != 0 {
		t.Fatalf("after CloseWrite: %d bytes, %v; want EOF", len(rest), err)
	}
	st.Close()
}

// checkDownstream checks the server's records of a session against scheme: with the spec's
// rules when padded, as is otherwise. The server's packet boundaries are not known to the test
// (its control frames are queued and may share a write), so the checker searches for a
// grouping of the server's frames that explains the records.
func checkDownstream(t *testing.T, s session, scheme string, padded bool) []packet {
	t.Helper()
	frames := serverFrames(t, s.writes)
	m := parseScheme(t, scheme)
	rules := specRules
	if !padded {
		rules = unpaddedRules
	}
	pkts, err := m.checkGrouped(rules, padded, 1, frames, s.down)
	if err != nil {
		t.Fatalf("downstream: %v", err)
	}
	// the log: each packet with its records
	var b strings.Builder
	i := 0
	for k, p := range pkts {
		j, _ := m.consume(rules, padded, k+1, p, s.down, i)
		fmt.Fprintf(&b, "  packet %2d  %-5s %4d bytes -> records %v\n", k+1, kind(p), p.n, s.down[i:j])
		i = j
	}
	t.Logf("server records (%s):\n%s", rules.name, b.String())
	return pkts
}

func kind(p packet) string {
	if p.control {
		return "ctrl"
	}
	return "data"
}

// TestDownstreamRecordSizes measures the server's records with ServerConfig.PadDownstream:
// its packets, counted from 1, follow line k exactly as the client's do; without it they go
// out as is (the default, for compatibility).
func TestDownstreamRecordSizes(t *testing.T) {
	t.Run("fixed", func(t *testing.T) {
		r := startRig(t, rigConfig{scheme: downScheme, padDownstream: true})
		c := newOurClient(t, r.Addr(), downScheme)
		// The settings answer and the SYNACK ride with the first echo (packet 1): five echoes
		// take the packets through every line, and the cmdFIN goes out in packet 6, which has
		// no line.
		runHalfClosed(t, c, []int{30, 3, 150, 20, 40})
		c.close()
		s := r.session(t, 0)
		checkDownstream(t, s, downScheme, true)
		// Packet 1 holds the cmdServerSettings answer (31 bytes with the half-close key): one
		// 100-byte record, whatever else shares it.
		if s.down[0] != 100 {
			t.Fatalf("first server record = %d bytes, want 100 (line 1)", s.down[0])
		}
	})
	t.Run("default", func(t *testing.T) {
		r := startRig(t, rigConfig{padDownstream: true})
		for i := range 3 {
			c := newOurClient(t, r.Addr(), "")
			runHalfClosed(t, c, []int{517, 80, 40, 700})
			c.close()
			s := r.session(t, i)
			checkDownstream(t, s, protocol.DefaultPaddingSchemeText, true)
			if s.down[0] < 100 || s.down[0] >= 400 {
				t.Fatalf("first server record = %d bytes, want 100..399 (line 1)", s.down[0])
			}
		}
	})
	t.Run("off", func(t *testing.T) {
		r := startRig(t, rigConfig{})
		c := newOurClient(t, r.Addr(), "")
		runHalfClosed(t, c, []int{517, 80})
		c.close()
		s := r.session(t, 0)
		checkDownstream(t, s, protocol.DefaultPaddingSchemeText, false)
		frames, _ := parseFrames(bytes.Join(s.writes, nil))
		for _, f := range frames {
			if f.cmd == cmdWaste {
				t.Fatal("server sent cmdWaste without PadDownstream")
			}
		}
	})
}

// TestPeerClientsWithDownstreamPadding: the deployed clients work with a server that pads
// downstream (cmdWaste frames in the server's first packets): the server's records follow the
// scheme, small echoes in the padded packets come back intact, and a transfer of 1 MiB each
// way (writes of at most 16 KiB: the peers corrupt writes above 65535 bytes) has the right
// checksum.
func TestPeerClientsWithDownstreamPadding(t *testing.T) {
	for _, p := range peers {
		t.Run(p.impl.name, func(t *testing.T) {
			r := startRig(t, rigConfig{padDownstream: true})
			c := p.make(t, r.Addr())
			runStream(t, c, []int{517, 80, 40, 700, 1, 300})
			c.close()
			s := r.session(t, 0)
			checkDownstream(t, s, protocol.DefaultPaddingSchemeText, true)
			frames, _ := parseFrames(bytes.Join(s.writes, nil))
			waste := 0
			for _, f := range frames {
				if f.cmd == cmdWaste {
					waste++
				}
			}
			if waste == 0 {
				t.Fatal("no cmdWaste frame reached the client: nothing was tested")
			}

			bulk := p.make(t, r.Addr())
			defer bulk.close()
			ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
			defer cancel()
			conn, err := bulk.open(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if err := echoChecksum(conn, 1<<20, 16<<10); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// echoChecksum writes n random bytes in writes of chunk bytes while reading the echo, and
// compares the sha256 of both.
func echoChecksum(conn io.ReadWriter, n, chunk int) error {
	if dc, ok := conn.(interface{ SetDeadline(time.Time) error }); ok {
		dc.SetDeadline(time.Now().Add(ioTimeout))
	}
	data := make([]byte, n)
	rand.Read(data)
	werr := make(chan error, 1)
	go func() {
		for b := data; len(b) > 0; {
			k := min(len(b), chunk)
			if _, err := conn.Write(b[:k]); err != nil {
				werr <- err
				return
			}
			b = b[k:]
		}
		werr <- nil
	}()
	h := sha256.New()
	got, rerr := io.CopyN(h, conn, int64(n))
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if rerr != nil {
		return fmt.Errorf("read %d of %d bytes: %w", got, n, rerr)
	}
	if want := sha256.Sum256(data); !bytes.Equal(h.Sum(nil), want[:]) {
		return errors.New("echo checksum mismatch")
	}
	return nil
}
