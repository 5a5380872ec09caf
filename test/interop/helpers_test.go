package interop

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// password shared by every client and server in these tests.
const password = "interop-password"

// ioTimeout bounds any single transfer so that a stuck peer fails the test instead of hanging it.
const ioTimeout = 60 * time.Second

// peerMaxWrite is the largest single write the peers' streams carry intact.
const peerMaxWrite = 65535

// ourWrite is the write size used on our streams.
const ourWrite = 1 << 20

// ---------------------------------------------------------------------------------------------
// TLS material

type testCert struct {
	cert    tls.Certificate
	pool    *x509.CertPool
	certPEM string
	keyPEM  string
}

var (
	certOnce sync.Once
	certVal  *testCert
	certErr  error
)

// certificate returns a self-signed ECDSA P-256 certificate for "localhost" and 127.0.0.1,
// generated once per test binary.
func certificate(t testing.TB) *testCert {
	t.Helper()
	certOnce.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			certErr = err
			return
		}
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(time.Now().UnixNano()),
			Subject:               pkix.Name{CommonName: "localhost"},
			DNSNames:              []string{"localhost"},
			IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().Add(24 * time.Hour),
			KeyUsage:              x509.KeyUsageDigitalSignature,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			BasicConstraintsValid: true,
			IsCA:                  true,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			certErr = err
			return
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			certErr = err
			return
		}
		c := &testCert{
			certPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
			keyPEM:  string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})),
			pool:    x509.NewCertPool(),
		}
		c.cert, certErr = tls.X509KeyPair([]byte(c.certPEM), []byte(c.keyPEM))
		if certErr != nil {
			return
		}
		leaf, err := x509.ParseCertificate(der)
		if err != nil {
			certErr = err
			return
		}
		c.pool.AddCert(leaf)
		certVal = c
	})
	if certErr != nil {
		t.Fatalf("generate certificate: %v", certErr)
	}
	return certVal
}

func serverTLSConfig(t testing.TB) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{certificate(t).cert},
		MinVersion:   tls.VersionTLS13,
	}
}

func clientTLSConfig(t testing.TB) *tls.Config {
	return &tls.Config{
		RootCAs:    certificate(t).pool,
		ServerName: "localhost",
		MinVersion: tls.VersionTLS13,
	}
}

// ---------------------------------------------------------------------------------------------
// Targets: in-process TCP servers the proxies connect to.
//
// A request is a 13-byte header: op (1 byte), n (uint64), delay in ms (uint32).
//   'U' upload:   the target reads n bytes and answers with their sha256, then closes.
//   'D' download: the target sends n pseudo-random bytes and then their sha256, then closes.
//   'E' echo:     after the delay, the target echoes n bytes, then waits for the client to
//                 close (so that the client's Close, not the server's cmdFIN, ends the stream:
//                 the stream is then back in its client's pool when Close returns, and the
//                 next stream deterministically reuses the session).
//   'S' sink:     the target reads n bytes and answers with their count (uint64), then closes.
//   'R' source:   the target sends n bytes (a repeated random block), then closes.
//   'H' half:     the target reads until EOF (the client's half-close), then answers with the
//                 sha256 of what it read, then closes.
// 'S' and 'R' measure throughput: they skip the checksums, whose cost would dominate.
// Lengths are in-band because deployed peers have no half-close.

const headerSize = 13

type target struct {
	ln    net.Listener
	addr  netip.AddrPort
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func startTarget(t testing.TB) *target {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tg := &target{ln: ln, addr: ln.Addr().(*net.TCPAddr).AddrPort(), conns: map[net.Conn]struct{}{}}
	tg.wg.Add(1)
	go func() {
		defer tg.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tg.mu.Lock()
			tg.conns[c] = struct{}{}
			tg.mu.Unlock()
			tg.wg.Add(1)
			go func() {
				defer tg.wg.Done()
				tg.serve(c)
				tg.mu.Lock()
				delete(tg.conns, c)
				tg.mu.Unlock()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		tg.mu.Lock()
		for c := range tg.conns {
			c.Close()
		}
		tg.mu.Unlock()
		tg.wg.Wait()
	})
	return tg
}

func (tg *target) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * ioTimeout))
	var hdr [headerSize]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	n := int64(binary.BigEndian.Uint64(hdr[1:9]))
	delay := time.Duration(binary.BigEndian.Uint32(hdr[9:13])) * time.Millisecond
	switch hdr[0] {
	case 'U':
		h := sha256.New()
		if _, err := io.CopyN(h, c, n); err != nil {
			return
		}
		c.Write(h.Sum(nil))
	case 'D':
		h := sha256.New()
		src := newGenerator(uint64(n))
		buf := make([]byte, 1<<20)
		for left := n; left > 0; {
			chunk := buf[:min(int64(len(buf)), left)]
			src.Read(chunk)
			h.Write(chunk)
			if _, err := c.Write(chunk); err != nil {
				return
			}
			left -= int64(len(chunk))
		}
		c.Write(h.Sum(nil))
	case 'S':
		buf := make([]byte, 1<<20)
		var got int64
		for got < n {
			m, err := c.Read(buf[:min(int64(len(buf)), n-got)])
			got += int64(m)
			if err != nil {
				return
			}
		}
		c.Write(binary.BigEndian.AppendUint64(nil, uint64(got)))
	case 'R':
		block := randomBlock()
		for left := n; left > 0; {
			m := min(int64(len(block)), left)
			if _, err := c.Write(block[:m]); err != nil {
				return
			}
			left -= m
		}
	case 'H':
		// Read until the client half-closes, then answer with the sha256 of what came.
		h := sha256.New()
		if _, err := io.Copy(h, c); err != nil {
			return
		}
		c.Write(h.Sum(nil))
	case 'E':
		if delay > 0 {
			time.Sleep(delay) // a slow target, not a protocol timeout
		}
		if _, err := io.CopyN(c, c, n); err != nil {
			return
		}
		io.Copy(io.Discard, c) // until the client closes
	}
}

func requestHeader(op byte, n int64, delay time.Duration) []byte {
	hdr := make([]byte, headerSize)
	hdr[0] = op
	binary.BigEndian.PutUint64(hdr[1:9], uint64(n))
	binary.BigEndian.PutUint32(hdr[9:13], uint32(delay/time.Millisecond))
	return hdr
}

// newGenerator returns a fast deterministic pseudo-random byte source.
func newGenerator(seed uint64) *mrand.ChaCha8 {
	var s [32]byte
	binary.BigEndian.PutUint64(s[:], seed)
	binary.BigEndian.PutUint64(s[8:], uint64(time.Now().UnixNano()))
	return mrand.NewChaCha8(s)
}

var (
	blockOnce sync.Once
	block     []byte
)

// randomBlock returns 1 MiB of random bytes, shared and read-only.
func randomBlock() []byte {
	blockOnce.Do(func() {
		block = make([]byte, 1<<20)
		rand.Read(block)
	})
	return block
}

// sink sends n bytes (writes of at most chunk bytes) to an 'S' target and waits for its count.
func sink(conn net.Conn, n int64, chunk int) (time.Duration, error) {
	conn.SetDeadline(time.Now().Add(ioTimeout))
	start := time.Now()
	if _, err := conn.Write(requestHeader('S', n, 0)); err != nil {
		return 0, fmt.Errorf("write sink header: %w", err)
	}
	block := randomBlock()
	for left := n; left > 0; {
		b := block[:min(int64(len(block)), left)]
		if err := writeChunked(conn, b, chunk); err != nil {
			return 0, fmt.Errorf("sink after %d bytes: %w", n-left, err)
		}
		left -= int64(len(b))
	}
	var cnt [8]byte
	if _, err := io.ReadFull(conn, cnt[:]); err != nil {
		return 0, fmt.Errorf("read sink count: %w", err)
	}
	d := time.Since(start)
	if got := int64(binary.BigEndian.Uint64(cnt[:])); got != n {
		return d, fmt.Errorf("sink: target counted %d bytes, sent %d", got, n)
	}
	return d, nil
}

// source reads n bytes from an 'R' target.
func source(conn net.Conn, n int64) (time.Duration, error) {
	conn.SetDeadline(time.Now().Add(ioTimeout))
	start := time.Now()
	if _, err := conn.Write(requestHeader('R', n, 0)); err != nil {
		return 0, fmt.Errorf("write source header: %w", err)
	}
	buf := make([]byte, 256<<10)
	var got int64
	for got < n {
		m, err := conn.Read(buf[:min(int64(len(buf)), n-got)])
		got += int64(m)
		if err != nil {
			return 0, fmt.Errorf("source: got %d of %d bytes: %w", got, n, err)
		}
	}
	return time.Since(start), nil
}

// writeChunked writes b in writes of at most chunk bytes.
func writeChunked(w io.Writer, b []byte, chunk int) error {
	for len(b) > 0 {
		n := min(len(b), chunk)
		if _, err := w.Write(b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// upload sends n bytes through conn to a target (writes of at most chunk bytes) and checks the
// sha256 the target computed. It returns the time from the first byte to the answer.
func upload(conn net.Conn, n int64, chunk int) (time.Duration, error) {
	conn.SetDeadline(time.Now().Add(ioTimeout))
	start := time.Now()
	if _, err := conn.Write(requestHeader('U', n, 0)); err != nil {
		return 0, fmt.Errorf("write upload header: %w", err)
	}
	h := sha256.New()
	src := newGenerator(uint64(n))
	buf := make([]byte, max(chunk, 1<<20))
	for left := n; left > 0; {
		b := buf[:min(int64(len(buf)), left)]
		src.Read(b)
		h.Write(b)
		if err := writeChunked(conn, b, chunk); err != nil {
			return 0, fmt.Errorf("upload after %d bytes: %w", n-left, err)
		}
		left -= int64(len(b))
	}
	var sum [32]byte
	if _, err := io.ReadFull(conn, sum[:]); err != nil {
		return 0, fmt.Errorf("read upload checksum: %w", err)
	}
	d := time.Since(start)
	if !bytes.Equal(sum[:], h.Sum(nil)) {
		return d, fmt.Errorf("upload of %d bytes: checksum mismatch: target %x, sent %x", n, sum, h.Sum(nil))
	}
	return d, nil
}

// download asks the target for n bytes and checks them against the sha256 it sends after them.
func download(conn net.Conn, n int64) (time.Duration, error) {
	conn.SetDeadline(time.Now().Add(ioTimeout))
	start := time.Now()
	if _, err := conn.Write(requestHeader('D', n, 0)); err != nil {
		return 0, fmt.Errorf("write download header: %w", err)
	}
	h := sha256.New()
	if got, err := io.CopyBuffer(h, io.LimitReader(conn, n), make([]byte, 256<<10)); err != nil || got != n {
		return 0, fmt.Errorf("download: got %d of %d bytes: %v", got, n, err)
	}
	var sum [32]byte
	if _, err := io.ReadFull(conn, sum[:]); err != nil {
		return 0, fmt.Errorf("read download checksum: %w", err)
	}
	d := time.Since(start)
	if !bytes.Equal(sum[:], h.Sum(nil)) {
		return d, fmt.Errorf("download of %d bytes: checksum mismatch: target sent %x, received %x", n, sum, h.Sum(nil))
	}
	return d, nil
}

// dialEcho opens a stream to addr through c, echoes n bytes over it (as echo) and closes it.
func dialEcho(ctx context.Context, c client, addr netip.AddrPort, n int, delay time.Duration) error {
	conn, err := c.Dial(ctx, addr)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	return echo(conn, n, c.MaxWrite(), delay)
}

// echo sends n random bytes to an echo target (writes of at most chunk bytes, concurrently with
// reading) and checks that the same bytes come back.
func echo(conn net.Conn, n int, chunk int, delay time.Duration) error {
	conn.SetDeadline(time.Now().Add(ioTimeout))
	data := make([]byte, n)
	newGenerator(uint64(n)).Read(data)
	werr := make(chan error, 1)
	go func() {
		if _, err := conn.Write(requestHeader('E', int64(n), delay)); err != nil {
			werr <- fmt.Errorf("write echo header: %w", err)
			return
		}
		werr <- writeChunked(conn, data, chunk)
	}()
	got := make([]byte, n)
	_, rerr := io.ReadFull(conn, got)
	if err := <-werr; err != nil {
		return fmt.Errorf("echo write: %w", err)
	}
	if rerr != nil {
		return fmt.Errorf("echo read: %w", rerr)
	}
	if sha256.Sum256(got) != sha256.Sum256(data) {
		return fmt.Errorf("echo of %d bytes: data differs", n)
	}
	return nil
}

// closedPort returns a loopback address where nothing listens.
func closedPort(t testing.TB) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	return ap
}

// startUDPEcho starts a UDP server on loopback that returns every datagram to its sender.
func startUDPEcho(t testing.TB) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			pc.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// relayUDP serves one UDP-over-TCP association: datagrams read from pc go out of a fresh UDP
// socket to the address pc names; replies go back through pc with their source address.
func relayUDP(pc net.PacketConn) {
	out, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			n, from, err := out.ReadFromUDP(buf)
			if err != nil {
				return
			}
			if _, err := pc.WriteTo(buf[:n], from); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 65535)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			break
		}
		ua, ok := addr.(*net.UDPAddr)
		if !ok {
			ua, err = net.ResolveUDPAddr("udp", addr.String())
			if err != nil {
				break
			}
		}
		if _, err := out.WriteToUDP(buf[:n], ua); err != nil {
			break
		}
	}
	out.Close()
	<-done
}

// relay copies both ways between a and b with reads of at most chunk bytes (so that a peer's
// stream never sees a write larger than chunk), and closes both when either direction ends.
func relay(a, b net.Conn, chunk int) {
	var once sync.Once
	closeBoth := func() { a.Close(); b.Close() }
	done := make(chan struct{})
	cp := func(dst, src net.Conn) {
		buf := make([]byte, chunk)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		once.Do(closeBoth)
	}
	go func() {
		defer close(done)
		cp(a, b)
	}()
	cp(b, a)
	<-done
}

// checkUDP sends datagrams of several sizes through pc to the echo server at dst, one at a time,
// and checks each reply and its source address. With big, a 60000-byte datagram is included: a
// UoT packet that our streams must split into two frames. (mihomo's listener reads UoT packets
// into 16 KiB buffers and drops the association on a larger one: big is for our servers only.)
func checkUDP(pc net.PacketConn, dst netip.AddrPort, big bool) error {
	sizes := []int{1, 100, 512, 1200, 1400, 4000, 8000, 16000}
	if big {
		sizes = append(sizes, 60000)
	}
	buf := make([]byte, 65535)
	to := net.UDPAddrFromAddrPort(dst)
	for i := range 3 * len(sizes) {
		msg := make([]byte, sizes[i%len(sizes)])
		newGenerator(uint64(i)).Read(msg)
		if _, err := pc.WriteTo(msg, to); err != nil {
			return fmt.Errorf("datagram %d (%d bytes): write: %w", i, len(msg), err)
		}
		pc.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return fmt.Errorf("datagram %d (%d bytes): read: %w", i, len(msg), err)
		}
		if !bytes.Equal(buf[:n], msg) {
			return fmt.Errorf("datagram %d: sent %d bytes, got %d different bytes back", i, len(msg), n)
		}
		if fa, err := netip.ParseAddrPort(from.String()); err != nil || fa != dst {
			return fmt.Errorf("datagram %d: reply from %v, want %v", i, from, dst)
		}
	}
	return nil
}

// ---------------------------------------------------------------------------------------------
// Recording the plaintext of an AnyTLS connection (inside TLS) to check what a peer sent.

type recorder struct {
	net.Conn
	limit int

	mu     sync.Mutex
	reads  []byte
	writes []byte
}

func newRecorder(c net.Conn) *recorder { return &recorder{Conn: c, limit: 256 << 10} }

func (r *recorder) Read(b []byte) (int, error) {
	n, err := r.Conn.Read(b)
	if n > 0 {
		r.mu.Lock()
		if room := r.limit - len(r.reads); room > 0 {
			r.reads = append(r.reads, b[:min(n, room)]...)
		}
		r.mu.Unlock()
	}
	return n, err
}

func (r *recorder) Write(b []byte) (int, error) {
	r.mu.Lock()
	if room := r.limit - len(r.writes); room > 0 {
		r.writes = append(r.writes, b[:min(len(b), room)]...)
	}
	r.mu.Unlock()
	return r.Conn.Write(b)
}

func (r *recorder) Reads() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Clone(r.reads)
}

func (r *recorder) Writes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Clone(r.writes)
}

type frame struct {
	cmd  byte
	sid  uint32
	data []byte
}

// Frame commands (spec §3), named here so that the test does not depend on engine internals.
const (
	cmdWaste          = 0
	cmdSettings       = 4
	cmdSYNACK         = 7
	cmdHeartRequest   = 8
	cmdHeartResponse  = 9
	cmdServerSettings = 10
)

// parseFrames splits b into frames; an incomplete frame at the end is dropped.
func parseFrames(b []byte) []frame {
	var out []frame
	for len(b) >= 7 {
		n := int(binary.BigEndian.Uint16(b[5:7]))
		if len(b) < 7+n {
			break
		}
		out = append(out, frame{cmd: b[0], sid: binary.BigEndian.Uint32(b[1:5]), data: b[7 : 7+n]})
		b = b[7+n:]
	}
	return out
}

// countFrames counts the frames of each command in b.
func countFrames(b []byte) map[byte]int {
	m := map[byte]int{}
	for _, f := range parseFrames(b) {
		m[f.cmd]++
	}
	return m
}

// afterAuth returns what a client wrote after its authentication request.
func afterAuth(b []byte) []byte {
	if len(b) < 34 {
		return nil
	}
	pad := int(binary.BigEndian.Uint16(b[32:34]))
	if len(b) < 34+pad {
		return nil
	}
	return b[34+pad:]
}

// clientSession decodes what a client sent in a session: the padding0 length of its
// authentication and the padding-md5 of its settings.
type clientSession struct {
	authPadding int
	paddingMD5  string
	settings    string
}

func parseClientSession(b []byte) (clientSession, error) {
	var cs clientSession
	if len(b) < 34 {
		return cs, fmt.Errorf("only %d bytes recorded", len(b))
	}
	if got, want := [32]byte(b[:32]), sha256.Sum256([]byte(password)); got != want {
		return cs, errors.New("recorded session does not start with the password hash")
	}
	cs.authPadding = int(binary.BigEndian.Uint16(b[32:34]))
	if len(b) < 34+cs.authPadding {
		return cs, fmt.Errorf("authentication padding %d longer than the %d bytes recorded", cs.authPadding, len(b))
	}
	for _, f := range parseFrames(b[34+cs.authPadding:]) {
		if f.cmd == cmdSettings {
			cs.settings = string(f.data)
			for line := range strings.SplitSeq(cs.settings, "\n") {
				if v, ok := strings.CutPrefix(line, "padding-md5="); ok {
					cs.paddingMD5 = v
				}
			}
			return cs, nil
		}
	}
	return cs, errors.New("no settings frame recorded")
}

// ---------------------------------------------------------------------------------------------
// Goroutine leaks: no goroutine running our engine's code may outlive the objects that
// started it. Peers' goroutines are not our business (sing-anytls' client, for one, sleeps
// 30 s in its cleanup loop after Close).

const ourPackage = "github.com/anytls-engine/anytls/protocol."

func ourGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, ourPackage) {
			out = append(out, g)
		}
	}
	return out
}

// checkLeaks registers a cleanup, to run after every other cleanup of t, that fails t if any
// goroutine of our engine is still running a few seconds later. Call it first in a test.
func checkLeaks(t testing.TB) {
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			left := ourGoroutines()
			if len(left) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("%d goroutines of the engine outlived their objects:\n%s", len(left), strings.Join(left, "\n\n"))
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}
