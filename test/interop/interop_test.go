package interop

import (
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	singpadding "github.com/anytls/sing-anytls/padding"

	"github.com/anytls-engine/anytls/protocol"
)

type pair struct {
	name   string
	client clientFactory
	server serverFactory
}

// interopPairs are the four directions this package exists for.
var interopPairs = []pair{
	{"ours-to-sing-anytls", ourClientFactory, singServerFactory},
	{"sing-anytls-to-ours", singClientFactory, ourServerFactory},
	{"ours-to-mihomo", ourClientFactory, mihomoServerFactory},
	{"mihomo-to-ours", mihomoClientFactory, ourServerFactory},
}

// allPairs adds the baselines: ours with ours, and each peer with itself.
var allPairs = append(append([]pair{
	{"ours-to-ours", ourClientFactory, ourServerFactory},
}, interopPairs...),
	pair{"sing-anytls-to-sing-anytls", singClientFactory, singServerFactory},
	pair{"mihomo-to-mihomo", mihomoClientFactory, mihomoServerFactory},
)

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*ioTimeout)
	t.Cleanup(cancel)
	return ctx
}

// bulkSize is what each direction of TestBulkTransfer carries per pair, and what each
// measurement of TestThroughput moves.
const bulkSize = 64 << 20

// TestBulkTransfer moves 64 MiB up and 64 MiB down through one stream per direction, checked
// with sha256. Both ends of ours write 1 MiB at a time into their streams; what goes into a
// peer's stream is written in pieces of at most 65535 bytes.
func TestBulkTransfer(t *testing.T) {
	pairs := []pair{
		{"ours-to-ours", ourClientFactory, ourBigWritesServerFactory},
		{"ours-to-sing-anytls", ourClientFactory, singServerFactory},
		{"sing-anytls-to-ours", singClientFactory, ourBigWritesServerFactory},
		{"ours-to-mihomo", ourClientFactory, mihomoServerFactory},
		{"mihomo-to-ours", mihomoClientFactory, ourBigWritesServerFactory},
	}
	for _, p := range pairs {
		t.Run(p.name, func(t *testing.T) {
			checkLeaks(t)
			ctx := testContext(t)
			tg := startTarget(t)
			srv := p.server(t)
			c := p.client(t, srv.Addr())

			conn, err := c.Dial(ctx, tg.addr)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			_, err = upload(conn, bulkSize, c.MaxWrite())
			conn.Close()
			if err != nil {
				t.Fatalf("upload: %v", err)
			}
			conn, err = c.Dial(ctx, tg.addr)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			_, err = download(conn, bulkSize)
			conn.Close()
			if err != nil {
				t.Fatalf("download: %v", err)
			}
		})
	}
}

type throughput struct {
	pair           string
	up, down       float64 // MB/s, wall clock
	upCPU, downCPU float64 // MB per CPU second of the whole process (both ends and the target)
}

func mbps(n int64, d time.Duration) float64 { return float64(n) / 1e6 / d.Seconds() }

// cpuTime returns the CPU time (user + system) this process has used so far. On a shared
// machine it is a steadier measure than wall time: other processes do not inflate it.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestThroughput measures single-stream upload and download for every pair, ours with ours
// and each peer with itself included, in this one run, and logs them side by side. Data is a
// repeated random block and only counted (TestBulkTransfer checks content), so the figures
// are about the proxies, not about hashing.
func TestThroughput(t *testing.T) {
	var results []throughput
	for _, p := range allPairs {
		t.Run(p.name, func(t *testing.T) {
			checkLeaks(t)
			ctx := testContext(t)
			tg := startTarget(t)
			srv := p.server(t)
			c := p.client(t, srv.Addr())
			// Warm up: the first connection pays for one-time set-up (mihomo loads the
			// system CA pool), and the session it leaves idle is reused below.
			if err := dialEcho(ctx, c, tg.addr, 1024, 0); err != nil {
				t.Fatalf("warm-up: %v", err)
			}

			conn, err := c.Dial(ctx, tg.addr)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			cpu0 := cpuTime()
			up, err := sink(conn, bulkSize, c.MaxWrite())
			cpu1 := cpuTime()
			conn.Close()
			if err != nil {
				t.Fatalf("upload: %v", err)
			}
			conn, err = c.Dial(ctx, tg.addr)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			cpu2 := cpuTime()
			down, err := source(conn, bulkSize)
			cpu3 := cpuTime()
			conn.Close()
			if err != nil {
				t.Fatalf("download: %v", err)
			}
			r := throughput{
				pair: p.name,
				up:   mbps(bulkSize, up), down: mbps(bulkSize, down),
				upCPU: mbps(bulkSize, cpu1-cpu0), downCPU: mbps(bulkSize, cpu3-cpu2),
			}
			t.Logf("upload %.0f MB/s (%.0f MB per CPU second), download %.0f MB/s (%.0f MB per CPU second)",
				r.up, r.upCPU, r.down, r.downCPU)
			results = append(results, r)
		})
	}
	if len(results) == 0 {
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, "single-stream throughput over TLS 1.3 on loopback, %d MiB per direction, %d CPUs\n", bulkSize>>20, runtime.NumCPU())
	fmt.Fprintf(&b, "wall-clock MB/s, and MB per CPU second of the whole process (client, server and target); (ratio to ours-to-ours)\n")
	base := results[0]
	for _, r := range results {
		fmt.Fprintf(&b, "  %-28s up %5.0f MB/s (%.2f) %5.0f MB/cpu-s (%.2f)   down %5.0f MB/s (%.2f) %5.0f MB/cpu-s (%.2f)\n",
			r.pair, r.up, r.up/base.up, r.upCPU, r.upCPU/base.upCPU, r.down, r.down/base.down, r.downCPU, r.downCPU/base.downCPU)
	}
	t.Log(b.String())
}

// BenchmarkTransfer measures single-stream upload and download per pair (16 MiB per op).
func BenchmarkTransfer(b *testing.B) {
	const n = 16 << 20
	for _, p := range allPairs {
		for _, dir := range []string{"up", "down"} {
			b.Run(p.name+"/"+dir, func(b *testing.B) {
				tg := startTarget(b)
				srv := p.server(b)
				c := p.client(b, srv.Addr())
				b.SetBytes(n)
				for b.Loop() {
					conn, err := c.Dial(context.Background(), tg.addr)
					if err != nil {
						b.Fatal(err)
					}
					if dir == "up" {
						_, err = sink(conn, n, c.MaxWrite())
					} else {
						_, err = source(conn, n)
					}
					conn.Close()
					if err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// TestConcurrentStreams runs 100 streams at once, each echoing 128 KiB checked with sha256.
// Deployed clients carry one stream per session, so they open 100 TLS connections; ours does
// the same by default, and with MaxStreamsPerSession it multiplexes them over one session,
// which both peers' servers accept.
func TestConcurrentStreams(t *testing.T) {
	const streams, size = 100, 128 << 10
	pairs := append(append([]pair(nil), interopPairs...),
		pair{"ours-mux-to-sing-anytls", ourMuxClientFactory, singServerFactory},
		pair{"ours-mux-to-mihomo", ourMuxClientFactory, mihomoServerFactory},
		pair{"ours-mux-to-ours", ourMuxClientFactory, ourServerFactory},
	)
	for _, p := range pairs {
		t.Run(p.name, func(t *testing.T) {
			checkLeaks(t)
			ctx := testContext(t)
			tg := startTarget(t)
			srv := p.server(t)
			c := p.client(t, srv.Addr())

			conns := make([]net.Conn, streams)
			for i := range conns {
				conn, err := c.Dial(ctx, tg.addr)
				if err != nil {
					t.Fatalf("dial stream %d: %v", i, err)
				}
				defer conn.Close()
				conns[i] = conn
			}
			wantSessions := streams
			if strings.Contains(p.name, "mux") {
				wantSessions = 1
			}
			if oc, ok := c.(*ourClient); ok {
				if open, _ := oc.SessionCount(); open != wantSessions {
					t.Errorf("our client has %d sessions for %d concurrent streams, want %d", open, streams, wantSessions)
				}
			}
			errs := make(chan error, streams)
			var wg sync.WaitGroup
			for i, conn := range conns {
				wg.Go(func() {
					if err := echo(conn, size, c.MaxWrite(), 0); err != nil {
						errs <- fmt.Errorf("stream %d: %w", i, err)
					}
					conn.Close()
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if os, ok := srv.(*ourServer); ok {
				if got := os.accepted.Load(); got != int64(wantSessions) {
					t.Errorf("our server accepted %d connections for %d concurrent streams, want %d", got, streams, wantSessions)
				}
			}
		})
	}
}

// TestSessionReuse runs five streams one after another: they must share one session (one TLS
// connection).
func TestSessionReuse(t *testing.T) {
	const rounds = 5
	for _, p := range interopPairs {
		t.Run(p.name, func(t *testing.T) {
			checkLeaks(t)
			ctx := testContext(t)
			tg := startTarget(t)
			srv := p.server(t)
			c := p.client(t, srv.Addr())
			for i := range rounds {
				if err := dialEcho(ctx, c, tg.addr, 64<<10, 0); err != nil {
					t.Fatalf("round %d: %v", i, err)
				}
			}
			checked := false
			if oc, ok := c.(*ourClient); ok {
				checked = true
				if open, idle := oc.SessionCount(); open != 1 || idle != 1 {
					t.Errorf("after %d sequential streams our client has %d sessions (%d idle), want 1 (1 idle)", rounds, open, idle)
				}
				if n := len(oc.recorders()); n != 1 {
					t.Errorf("our client dialled %d connections, want 1", n)
				}
			}
			var accepted int64 = -1
			switch s := srv.(type) {
			case *ourServer:
				accepted = s.accepted.Load()
			case *singServer:
				accepted = s.accepted.Load()
			}
			if accepted >= 0 {
				checked = true
				if accepted != 1 {
					t.Errorf("server accepted %d TLS connections for %d sequential streams, want 1", accepted, rounds)
				}
			}
			if !checked {
				t.Fatal("no side of this pair can count sessions")
			}
		})
	}
}

// customScheme differs from the default in every line, so that its use is visible: packet 0
// (the authentication) carries exactly 77 bytes of padding.
const customScheme = "stop=5\n0=77-77\n1=150-160\n2=300-310,c,200-210\n3=40-50\n4=60-70"

func md5Hex(b []byte) string {
	sum := md5.Sum(b)
	return hex.EncodeToString(sum[:])
}

// TestPaddingSchemePush checks both directions of cmdUpdatePaddingScheme: the server's scheme
// replaces the client's for the sessions the client creates afterwards.
func TestPaddingSchemePush(t *testing.T) {
	customMD5 := md5Hex([]byte(customScheme))
	defaultMD5 := protocol.DefaultPaddingScheme.MD5()
	if got := md5Hex(singpadding.DefaultPaddingScheme); got != defaultMD5 {
		t.Fatalf("default scheme md5: ours %s, sing-anytls %s", defaultMD5, got)
	}
	scheme, err := protocol.ParsePaddingScheme([]byte(customScheme))
	if err != nil {
		t.Fatal(err)
	}

	// twoSessions runs one stream, then a second while the first is still open, so that the
	// client must create a second session after the first one learnt the server's scheme.
	twoSessions := func(t *testing.T, c client, dest func() net.Conn) {
		first := dest()
		defer first.Close()
		// The target keeps the first stream open until we close it: its session stays busy.
		if err := echo(first, 1000, c.MaxWrite(), 0); err != nil {
			t.Fatalf("first stream: %v", err)
		}
		second := dest()
		defer second.Close()
		if err := echo(second, 1000, c.MaxWrite(), 0); err != nil {
			t.Fatalf("second stream: %v", err)
		}
	}
	checkSessions := func(t *testing.T, who string, recorded [][]byte) {
		t.Helper()
		if len(recorded) != 2 {
			t.Fatalf("%d sessions recorded, want 2", len(recorded))
		}
		for i, want := range []struct {
			pad int
			md5 string
		}{{30, defaultMD5}, {77, customMD5}} {
			cs, err := parseClientSession(recorded[i])
			if err != nil {
				t.Fatalf("session %d: %v", i+1, err)
			}
			if cs.authPadding != want.pad || cs.paddingMD5 != want.md5 {
				t.Errorf("%s session %d: authentication padding %d, padding-md5 %s; want %d, %s",
					who, i+1, cs.authPadding, cs.paddingMD5, want.pad, want.md5)
			}
		}
	}

	for _, name := range []string{"sing-anytls", "mihomo"} {
		t.Run("ours-pushes-to-"+name, func(t *testing.T) {
			checkLeaks(t)
			ctx := testContext(t)
			tg := startTarget(t)
			srv := startOurServer(t, ourServerConfig{scheme: scheme, record: true})
			var c client
			if name == "mihomo" {
				c = newMihomoClient(t, srv.Addr())
			} else {
				c = newSingClient(t, srv.Addr())
			}
			twoSessions(t, c, func() net.Conn {
				conn, err := c.Dial(ctx, tg.addr)
				if err != nil {
					t.Fatal(err)
				}
				return conn
			})
			var recorded [][]byte
			for _, r := range srv.recorders() {
				recorded = append(recorded, r.Reads())
			}
			checkSessions(t, name+" client", recorded)
		})
	}

	for _, name := range []string{"sing-anytls", "mihomo"} {
		t.Run(name+"-pushes-to-ours", func(t *testing.T) {
			checkLeaks(t)
			ctx := testContext(t)
			tg := startTarget(t)
			var srv server
			var singSrv *singServer
			if name == "mihomo" {
				srv = startMihomoServer(t, customScheme)
			} else {
				singSrv = startSingServer(t, singServerConfig{scheme: []byte(customScheme), record: true})
				srv = singSrv
			}
			c := newOurClient(t, srv.Addr(), nil)
			if got := c.PaddingScheme().MD5(); got != defaultMD5 {
				t.Fatalf("new client's scheme md5 %s, want the default %s", got, defaultMD5)
			}
			pushed := false
			twoSessions(t, c, func() net.Conn {
				if pushed {
					// The first stream's data came back after the server's settings
					// answer, so the scheme must have been replaced by now.
					if got := c.PaddingScheme().MD5(); got != customMD5 {
						t.Errorf("after the first session our client's scheme md5 is %s, want %s", got, customMD5)
					}
				}
				pushed = true
				conn, err := c.Dial(ctx, tg.addr)
				if err != nil {
					t.Fatal(err)
				}
				return conn
			})
			var recorded [][]byte
			for _, r := range c.recorders() {
				recorded = append(recorded, r.Writes())
			}
			checkSessions(t, "our client", recorded)
			if singSrv != nil { // the same, as the server read it
				recorded = nil
				for _, r := range singSrv.recorders() {
					recorded = append(recorded, r.Reads())
				}
				checkSessions(t, "our client (seen by sing-anytls)", recorded)
			}
		})
	}
}

// TestDialFailure opens a stream to a closed port. A server that reports the dial result in
// cmdSYNACK makes the client's stream fail with the server's error; mihomo's server
// acknowledges before dialing, so the stream just ends. Either way the session survives and
// carries the next stream.
func TestDialFailure(t *testing.T) {
	for _, p := range interopPairs {
		t.Run(p.name, func(t *testing.T) {
			checkLeaks(t)
			ctx := testContext(t)
			tg := startTarget(t)
			srv := p.server(t)
			c := p.client(t, srv.Addr())
			closed := closedPort(t)

			// The first refused stream opens the session, the second runs on the reused one.
			for round := range 2 {
				conn, err := c.Dial(ctx, closed)
				if err != nil {
					t.Fatalf("round %d: dial: %v", round, err)
				}
				conn.SetDeadline(time.Now().Add(ioTimeout))
				conn.Write(requestHeader('E', 1, 0)) // may fail if the refusal came first
				n, err := conn.Read(make([]byte, 16))
				conn.Close()
				t.Logf("round %d: read from a stream to a closed port: n=%d err=%v", round, n, err)
				if n != 0 || err == nil {
					t.Fatalf("round %d: read from a stream to a closed port: n=%d err=%v, want an error", round, n, err)
				}
				switch {
				case p.name == "ours-to-sing-anytls":
					if !errors.Is(err, protocol.ErrRemoteRefused) || !strings.Contains(err.Error(), "connection refused") {
						t.Errorf("round %d: error %q: want ErrRemoteRefused carrying the server's dial error", round, err)
					}
				case p.name == "ours-to-mihomo":
					// mihomo sends an empty cmdSYNACK before it dials, then closes the stream.
					if !errors.Is(err, io.EOF) {
						t.Errorf("round %d: error %q: want io.EOF (mihomo reports no dial error)", round, err)
					}
				default: // a peer's client reading our server's cmdSYNACK error
					if !strings.Contains(err.Error(), "connection refused") {
						t.Errorf("round %d: error %q: want our server's dial error text", round, err)
					}
				}

				if err := dialEcho(ctx, c, tg.addr, 4096, 0); err != nil {
					t.Fatalf("round %d: stream after the failure: %v", round, err)
				}
			}
			// No session may have been closed by a refused stream. (The next stream may
			// still land on a new session: the client's pool gets the session back only
			// after the failing stream's reader was woken, in both peers and ours.)
			if oc, ok := c.(*ourClient); ok {
				open, _ := oc.SessionCount()
				dials := len(oc.recorders())
				t.Logf("our client dialled %d sessions, %d open", dials, open)
				if open != dials {
					t.Errorf("our client dialled %d sessions but %d are open: a refused stream killed a session", dials, open)
				}
			}
			if os, ok := srv.(*ourServer); ok {
				accepted, open := os.accepted.Load(), os.srv.SessionCount()
				t.Logf("our server accepted %d sessions, %d open", accepted, open)
				if int64(open) != accepted {
					t.Errorf("our server accepted %d sessions but %d are open: a refused stream killed a session", accepted, open)
				}
			}
		})
	}
}

// TestV1Server talks to our server limited to protocol version 1 (a stand-in for old servers):
// it sends no cmdServerSettings and no cmdSYNACK, and every client must still work, our own
// without waiting for a cmdSYNACK that never comes.
func TestV1Server(t *testing.T) {
	clients := []struct {
		name    string
		factory clientFactory
	}{
		{"ours", func(t testing.TB, addr string) client {
			// A cmdSYNACK wait, if one were armed, would fail the delayed echo below.
			return newOurClient(t, addr, func(c *protocol.ClientConfig) { c.SynAckTimeout = 50 * time.Millisecond })
		}},
		{"sing-anytls", singClientFactory},
		{"mihomo", mihomoClientFactory},
	}
	for _, cl := range clients {
		t.Run(cl.name+"-to-v1-ours", func(t *testing.T) {
			checkLeaks(t)
			ctx := testContext(t)
			tg := startTarget(t)
			srv := startOurServer(t, ourServerConfig{maxVersion: 1})
			c := cl.factory(t, srv.Addr())
			for i := range 3 {
				conn, err := c.Dial(ctx, tg.addr)
				if err != nil {
					t.Fatalf("stream %d: dial: %v", i, err)
				}
				// The target answers 150 ms late, three times the client's SynAckTimeout.
				err = echo(conn, 8192, c.MaxWrite(), 150*time.Millisecond)
				conn.Close()
				if err != nil {
					t.Fatalf("stream %d: %v", i, err)
				}
			}
			if got := srv.accepted.Load(); got != 1 {
				t.Errorf("server accepted %d connections for 3 sequential streams, want 1", got)
			}
			if oc, ok := c.(*ourClient); ok {
				recs := oc.recorders()
				if len(recs) != 1 {
					t.Fatalf("our client dialled %d connections, want 1", len(recs))
				}
				for _, f := range parseFrames(recs[0].Reads()) {
					if f.cmd == cmdSYNACK || f.cmd == cmdServerSettings {
						t.Errorf("v1 server sent command %d", f.cmd)
					}
				}
			}
		})
	}
}

// TestUDP sends datagrams through UDP-over-TCP v2 with the code each host uses: sing's
// common/uot (connect mode as sing-box dials, packet mode as it listens), mihomo's
// uot.NewLazyConn (packet mode); servers decode with sing's uot (our test handler, sing-box's
// inbound code path) or mihomo's listener/sing.
func TestUDP(t *testing.T) {
	type udpCase struct {
		name   string
		client clientFactory
		server serverFactory
		packet bool // our client in packet mode (uot.Client.ListenPacket)
	}
	cases := []udpCase{{name: "ours-to-ours", client: ourClientFactory, server: ourServerFactory}}
	for _, p := range interopPairs {
		cases = append(cases, udpCase{name: p.name, client: p.client, server: p.server})
	}
	for _, s := range []struct {
		name string
		f    serverFactory
	}{{"ours", ourServerFactory}, {"sing-anytls", singServerFactory}, {"mihomo", mihomoServerFactory}} {
		cases = append(cases, udpCase{name: "ours-packet-mode-to-" + s.name, client: ourClientFactory, server: s.f, packet: true})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			checkLeaks(t)
			ctx := testContext(t)
			echoAddr := startUDPEcho(t)
			srv := tc.server(t)
			c := tc.client(t, srv.Addr())
			var pc net.PacketConn
			var err error
			if tc.packet {
				pc, err = c.(*ourClient).listenPacket(ctx, echoAddr)
			} else {
				pc, err = c.ListenUDP(ctx, echoAddr)
			}
			if err != nil {
				t.Fatalf("open UDP: %v", err)
			}
			defer pc.Close()
			_, oursServes := srv.(*ourServer)
			if err := checkUDP(pc, echoAddr, oursServes); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestDomainDestination proxies to a domain name (SOCKS address type 3) rather than an IP.
func TestDomainDestination(t *testing.T) {
	for _, p := range interopPairs {
		t.Run(p.name, func(t *testing.T) {
			checkLeaks(t)
			ctx := testContext(t)
			tg := startTarget(t)
			srv := p.server(t)
			c := p.client(t, srv.Addr())
			conn, err := c.DialFqdn(ctx, "localhost", tg.addr.Port())
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer conn.Close()
			if err := echo(conn, 100<<10, c.MaxWrite(), 0); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestHalfClose: between two ends of ours, CloseWrite is a half-close (the target reads EOF and
// still answers). Toward a peer, whose cmdFIN is a full close, CloseWrite must send nothing, so
// the reply to what was written before it still arrives.
func TestHalfClose(t *testing.T) {
	const n = 1 << 20
	for _, tc := range []struct {
		name   string
		server serverFactory
	}{{"ours", ourServerFactory}, {"sing-anytls", singServerFactory}, {"mihomo", mihomoServerFactory}} {
		t.Run("ours-to-"+tc.name, func(t *testing.T) {
			checkLeaks(t)
			ctx := testContext(t)
			tg := startTarget(t)
			srv := tc.server(t)
			c := newOurClient(t, srv.Addr(), nil)
			conn, err := c.Dial(ctx, tg.addr)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer conn.Close()
			st := conn.(*protocol.Stream)
			st.SetDeadline(time.Now().Add(ioTimeout))
			data := make([]byte, n)
			newGenerator(1).Read(data)
			op := byte('U') // the peer's target needs the length: no EOF will reach it
			if tc.name == "ours" {
				op = 'H' // the target reads until EOF
			}
			if _, err := st.Write(append(requestHeader(op, n, 0), data...)); err != nil {
				t.Fatalf("write: %v", err)
			}
			if err := st.CloseWrite(); err != nil {
				t.Fatalf("CloseWrite: %v", err)
			}
			var sum [32]byte
			if _, err := io.ReadFull(st, sum[:]); err != nil {
				t.Fatalf("read the reply after CloseWrite: %v", err)
			}
			if sum != sha256.Sum256(data) {
				t.Fatal("reply checksum differs from what was sent")
			}
			if tc.name == "ours" {
				if _, err := st.Read(make([]byte, 1)); err != io.EOF {
					t.Errorf("read after the reply: %v, want io.EOF", err)
				}
			}
		})
	}
}

// TestDownstreamPadding: our server padding its first packets (our extension) with cmdWaste
// frames must be transparent to every client.
func TestDownstreamPadding(t *testing.T) {
	for _, tc := range []struct {
		name   string
		client clientFactory
	}{{"ours", ourClientFactory}, {"sing-anytls", singClientFactory}, {"mihomo", mihomoClientFactory}} {
		t.Run(tc.name+"-to-padding-ours", func(t *testing.T) {
			checkLeaks(t)
			ctx := testContext(t)
			tg := startTarget(t)
			srv := startOurServer(t, ourServerConfig{padDownstream: true, record: true})
			c := tc.client(t, srv.Addr())
			for i, size := range []int{1, 100, 1000, 5000, 70000} {
				if err := dialEcho(ctx, c, tg.addr, size, 0); err != nil {
					t.Fatalf("stream %d: %v", i, err)
				}
			}
			conn, err := c.Dial(ctx, tg.addr)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			_, err = download(conn, 1<<20)
			conn.Close()
			if err != nil {
				t.Fatal(err)
			}
			recs := srv.recorders()
			if len(recs) != 1 {
				t.Fatalf("%d sessions, want 1", len(recs))
			}
			if got := countFrames(recs[0].Writes())[cmdWaste]; got == 0 {
				t.Error("the server sent no cmdWaste frame: downstream padding was not exercised")
			}
		})
	}
}

// TestHeartbeat: our client probes a quiet session with cmdHeartRequest; every server must
// answer, and the session must survive.
func TestHeartbeat(t *testing.T) {
	for _, tc := range []struct {
		name   string
		server serverFactory
	}{{"ours", ourServerFactory}, {"sing-anytls", singServerFactory}, {"mihomo", mihomoServerFactory}} {
		t.Run("ours-to-"+tc.name, func(t *testing.T) {
			checkLeaks(t)
			ctx := testContext(t)
			tg := startTarget(t)
			srv := tc.server(t)
			c := newOurClient(t, srv.Addr(), func(c *protocol.ClientConfig) {
				c.HeartbeatInterval = 50 * time.Millisecond
				c.HeartbeatTimeout = 5 * time.Second
			})
			for i := range 2 {
				conn, err := c.Dial(ctx, tg.addr)
				if err != nil {
					t.Fatalf("stream %d: dial: %v", i, err)
				}
				// The target answers after 300 ms: the session is quiet for six heartbeat
				// intervals meanwhile.
				err = echo(conn, 4096, c.MaxWrite(), 300*time.Millisecond)
				conn.Close()
				if err != nil {
					t.Fatalf("stream %d: %v", i, err)
				}
			}
			if open, _ := c.SessionCount(); open != 1 {
				t.Errorf("our client has %d sessions, want 1", open)
			}
			recs := c.recorders()
			if len(recs) != 1 {
				t.Fatalf("our client dialled %d connections, want 1", len(recs))
			}
			req := countFrames(afterAuth(recs[0].Writes()))[cmdHeartRequest]
			resp := countFrames(recs[0].Reads())[cmdHeartResponse]
			t.Logf("heartbeat requests sent %d, responses received %d", req, resp)
			if req == 0 || resp == 0 {
				t.Errorf("heartbeat requests sent %d, responses received %d; want both > 0", req, resp)
			}
		})
	}
}

// TestSlowDialEarlySynAck: deployed clients wait 3 s for cmdSYNACK on a reused session and
// then close the whole session. Our server answers early (empty cmdSYNACK after
// EarlySynAckDelay) when the outbound dial is slow, so a 3.5 s dial keeps the session alive.
func TestSlowDialEarlySynAck(t *testing.T) {
	checkLeaks(t) // here, not in the parallel subtests: it looks at the whole process
	for _, tc := range []struct {
		name    string
		factory clientFactory
	}{{"sing-anytls", singClientFactory}, {"mihomo", mihomoClientFactory}} {
		t.Run(tc.name+"-to-ours", func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			tg := startTarget(t)
			slow := startTarget(t)
			srv := startOurServer(t, ourServerConfig{
				slowPort:    slow.addr.Port(),
				slowDelay:   3500 * time.Millisecond,
				earlySynAck: 500 * time.Millisecond,
			})
			c := tc.factory(t, srv.Addr())
			// Stream 1 opens the session; stream 2 reuses it, which is where the peer's
			// 3 s SYNACK watchdog applies.
			if err := dialEcho(ctx, c, tg.addr, 1000, 0); err != nil {
				t.Fatalf("first stream: %v", err)
			}
			if err := dialEcho(ctx, c, slow.addr, 1000, 0); err != nil {
				t.Fatalf("stream with a 3.5 s dial on a reused session: %v", err)
			}
			if got := srv.accepted.Load(); got != 1 {
				t.Errorf("server accepted %d connections, want 1 (the peer must not have dropped its session)", got)
			}
		})
	}
}

// TestAbortedDownload closes a stream in the middle of a large download: the server must stop
// sending for it, the data already in flight must be dropped, and the session must carry the
// next stream.
func TestAbortedDownload(t *testing.T) {
	for _, p := range interopPairs {
		t.Run(p.name, func(t *testing.T) {
			checkLeaks(t)
			ctx := testContext(t)
			tg := startTarget(t)
			srv := p.server(t)
			c := p.client(t, srv.Addr())
			for i := range 2 {
				conn, err := c.Dial(ctx, tg.addr)
				if err != nil {
					t.Fatalf("round %d: dial: %v", i, err)
				}
				conn.SetDeadline(time.Now().Add(ioTimeout))
				if _, err := conn.Write(requestHeader('R', 1<<30, 0)); err != nil {
					t.Fatalf("round %d: write: %v", i, err)
				}
				if _, err := io.ReadFull(conn, make([]byte, 1<<20)); err != nil {
					t.Fatalf("round %d: read the first MiB: %v", i, err)
				}
				conn.Close() // 1023 MiB left unread

				if err := dialEcho(ctx, c, tg.addr, 100<<10, 0); err != nil {
					t.Fatalf("round %d: stream after the abort: %v", i, err)
				}
			}
			if oc, ok := c.(*ourClient); ok {
				if open, _ := oc.SessionCount(); open != 1 || len(oc.recorders()) != 1 {
					t.Errorf("our client dialled %d sessions, %d open; want 1", len(oc.recorders()), open)
				}
			}
			if os, ok := srv.(*ourServer); ok {
				if got := os.accepted.Load(); got != 1 {
					t.Errorf("our server accepted %d sessions, want 1", got)
				}
			}
		})
	}
}
