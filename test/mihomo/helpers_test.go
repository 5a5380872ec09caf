package mihomo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anytls-engine/anytls/internal/testnet"
	"github.com/anytls-engine/anytls/protocol"

	"github.com/metacubex/mihomo/adapter/outbound"
	C "github.com/metacubex/mihomo/constant"
)

// ioTimeout bounds every exchange, so that a broken path fails a test instead of hanging it.
const ioTimeout = 15 * time.Second

// freePort reserves a loopback port for a listener that another program opens from its
// configuration (testnet.FreePort: not from the range that parallel tests' sockets use).
func freePort(t testing.TB) int {
	t.Helper()
	return testnet.FreePort(t)
}

// ---------------------------------------------------------------------------------------------
// Targets: an HTTP server and a UDP echo on loopback.

// httpProviderContent is what the HTTP server serves as /provider.yaml (an http proxy provider).
var httpProviderContent atomic.Value

// startHTTP serves /hello ("hello"), /generate_204, /blob?size=N (N pseudo-random bytes) and
// /provider.yaml.
func startHTTP(t testing.TB) (addr string, closeFn func()) {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") })
	mux.HandleFunc("/generate_204", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("/provider.yaml", func(w http.ResponseWriter, r *http.Request) {
		b, _ := httpProviderContent.Load().([]byte)
		w.Write(b)
	})
	mux.HandleFunc("/blob", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("size"))
		w.Header().Set("Content-Length", strconv.Itoa(n))
		w.Write(blob(n))
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: ioTimeout}
	go srv.Serve(ln)
	return ln.Addr().String(), func() { srv.Close() }
}

// blob returns n deterministic bytes.
func blob(n int) []byte {
	b := make([]byte, n)
	var x uint32 = 2463534242
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

// startUDPEcho echoes every datagram.
func startUDPEcho(t testing.TB) (addr string, closeFn func()) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	return pc.LocalAddr().String(), func() { pc.Close() }
}

// ---------------------------------------------------------------------------------------------
// The detector: an anytls server of ours that serves only clients announcing
// x-anytls-halfclose=1 in their cmdSettings (ours), and counts and refuses the others (mihomo's
// built-in never announces it).

type detector struct {
	ln      net.Listener
	srv     *protocol.Server
	users   map[[32]byte]string // password hash -> user (proxy name)
	mu      sync.Mutex
	ours    map[string]int // sessions from our client, by user
	builtin map[string]int // sessions from another client, by user
	unknown int            // sessions whose password no user has
	streams map[string]int // streams served (all from our client), by user
}

// detectorPassword is the password of the proxy named name at the detector.
func detectorPassword(name string) string { return "pw-" + name }

func startDetector(t testing.TB, cert tls.Certificate, names ...string) *detector {
	t.Helper()
	d := &detector{users: map[[32]byte]string{}, ours: map[string]int{}, builtin: map[string]int{}, streams: map[string]int{}}
	var users []protocol.User
	for _, n := range names {
		users = append(users, protocol.User{Name: n, Password: detectorPassword(n)})
		d.users[sha256.Sum256([]byte(detectorPassword(n)))] = n
	}
	srv, err := protocol.NewServer(protocol.ServerConfig{Users: users, Handler: func(ctx context.Context, st *protocol.Stream) {
		d.mu.Lock()
		d.streams[st.User()]++
		d.mu.Unlock()
		relayHandler(ctx, st)
	}})
	if err != nil {
		t.Fatal(err)
	}
	d.srv = srv
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	d.ln = ln
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go d.serve(c)
		}
	}()
	return d
}

func (d *detector) port() int { return d.ln.Addr().(*net.TCPAddr).Port }

func (d *detector) close() {
	d.ln.Close()
	d.srv.Close()
}

// serve reads the authentication and the frames up to cmdSettings, decides, and hands the
// connection with everything read replayed to the engine.
func (d *detector) serve(c net.Conn) {
	c.SetDeadline(time.Now().Add(ioTimeout))
	var read bytes.Buffer
	r := io.TeeReader(c, &read)
	var auth [34]byte
	if _, err := io.ReadFull(r, auth[:]); err != nil {
		c.Close()
		return
	}
	if _, err := io.CopyN(io.Discard, r, int64(binary.BigEndian.Uint16(auth[32:]))); err != nil {
		c.Close()
		return
	}
	user, known := d.users[[32]byte(auth[:32])]
	var settings protocol.Settings
	for {
		var h [7]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			c.Close()
			return
		}
		data := make([]byte, binary.BigEndian.Uint16(h[5:]))
		if _, err := io.ReadFull(r, data); err != nil {
			c.Close()
			return
		}
		if h[0] == 4 { // cmdSettings
			settings = protocol.ParseSettings(data)
			break
		}
	}
	d.mu.Lock()
	switch {
	case !known:
		d.unknown++
	case settings["x-anytls-halfclose"] == "1":
		d.ours[user]++
	default:
		d.builtin[user]++
	}
	d.mu.Unlock()
	if !known || settings["x-anytls-halfclose"] != "1" {
		c.Close()
		return
	}
	c.SetDeadline(time.Time{})
	d.srv.ServeConn(context.Background(), &prefixConn{Conn: c, prefix: read.Bytes()})
}

// counts returns how many sessions of user came from ours and from another client, and how
// many streams of user were served.
func (d *detector) counts(user string) (ours, builtin, streams int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ours[user], d.builtin[user], d.streams[user]
}

// refused returns every session the detector refused (not ours, or unknown password).
func (d *detector) refused() (builtin map[string]int, unknown int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	b := map[string]int{}
	for k, v := range d.builtin {
		b[k] = v
	}
	return b, d.unknown
}

// waitOurs waits until user has at least n streams served, all on sessions of our client.
func (d *detector) waitOurs(t testing.TB, user string, n int) {
	t.Helper()
	deadline := time.Now().Add(ioTimeout)
	for {
		_, builtin, streams := d.counts(user)
		if builtin > 0 {
			t.Fatalf("detector: %d session(s) of %s came from mihomo's built-in anytls", builtin, user)
		}
		if streams >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("detector: %d stream(s) of %s from our client, want at least %d", streams, user, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// relayHandler dials the destination directly and relays.
func relayHandler(ctx context.Context, st *protocol.Stream) {
	defer st.Close()
	if st.Destination().IsUoT() {
		st.Report(errors.New("no UDP at the detector"))
		return
	}
	var d net.Dialer
	out, err := d.DialContext(ctx, "tcp", st.Destination().String())
	st.Report(err)
	if err != nil {
		return
	}
	defer out.Close()
	go func() {
		io.Copy(out, st)
		out.(*net.TCPConn).CloseWrite()
	}()
	io.Copy(st, out)
}

// ---------------------------------------------------------------------------------------------
// Clients: mihomo's own socks5 adapter against a mixed listener.

func socksClient(t testing.TB, port int) *outbound.Socks5 {
	t.Helper()
	s, err := outbound.NewSocks5(outbound.Socks5Option{Name: "test-socks", Server: "127.0.0.1", Port: port, UDP: true})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func metadataFor(t testing.TB, network C.NetWork, addr string) *C.Metadata {
	t.Helper()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return &C.Metadata{NetWork: network, DstIP: ap.Addr(), DstPort: ap.Port()}
}

// dialer is what httpGet needs from a proxy adapter.
type dialer interface {
	DialContext(ctx context.Context, metadata *C.Metadata) (C.Conn, error)
}

// httpGet fetches http://addr+path through d and returns the body.
func httpGet(t testing.TB, d dialer, addr, path string) ([]byte, error) {
	t.Helper()
	client := &http.Client{
		Timeout: ioTimeout,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
				return d.DialContext(ctx, metadataFor(t, C.TCP, a))
			},
		},
	}
	resp, err := client.Get("http://" + addr + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNoContent {
		return body, fmt.Errorf("status %s", resp.Status)
	}
	return body, nil
}

// checkTCP fetches /hello and a 3 MiB blob through d.
func checkTCP(t testing.TB, d dialer, httpAddr string) {
	t.Helper()
	body, err := httpGet(t, d, httpAddr, "/hello")
	if err != nil || string(body) != "hello" {
		t.Fatalf("GET /hello: %q, %v", body, err)
	}
	const size = 3 << 20
	body, err = httpGet(t, d, httpAddr, "/blob?size="+strconv.Itoa(size))
	if err != nil {
		t.Fatalf("GET /blob: %v", err)
	}
	if !bytes.Equal(body, blob(size)) {
		t.Fatalf("GET /blob: %d bytes, content differs", len(body))
	}
}

// packetDialer is what checkUDP needs from a proxy adapter.
type packetDialer interface {
	ListenPacketContext(ctx context.Context, metadata *C.Metadata) (C.PacketConn, error)
}

// checkUDP sends datagrams of a few sizes to the echo through d and expects them back. A
// datagram is resent (every 300 ms) until its echo arrives, as UDP allows.
func checkUDP(t testing.TB, d packetDialer, echoAddr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	pc, err := d.ListenPacketContext(ctx, metadataFor(t, C.UDP, echoAddr))
	if err != nil {
		t.Fatalf("ListenPacketContext: %v", err)
	}
	defer pc.Close()
	to := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(echoAddr))
	buf := make([]byte, 65536)
	for _, size := range []int{1, 512, 1400, 8000} {
		msg := blob(size)
		msg[0] = byte(size)
		deadline := time.Now().Add(ioTimeout)
		for got := false; !got; {
			if time.Now().After(deadline) {
				t.Fatalf("UDP %d bytes: no echo", size)
			}
			if _, err := pc.WriteTo(msg, to); err != nil {
				t.Fatalf("UDP write: %v", err)
			}
			pc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			for {
				n, _, err := pc.ReadFrom(buf)
				if err != nil {
					break
				}
				if bytes.Equal(buf[:n], msg) {
					got = true
					break
				}
			}
		}
	}
}

// ---------------------------------------------------------------------------------------------
// The external controller.

type api struct {
	base, secret string
}

func (a api) do(method, path string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, a.base+path, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+a.secret)
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: ioTimeout}).Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// must performs a request and fails the test unless the status is want.
func (a api) must(t testing.TB, want int, method, path string, body any) []byte {
	t.Helper()
	code, b, err := a.do(method, path, body)
	if err != nil || code != want {
		t.Fatalf("%s %s: status %d (want %d), %s, %v", method, path, code, want, b, err)
	}
	return b
}

// selectProxy makes group select name.
func (a api) selectProxy(t testing.TB, group, name string) {
	t.Helper()
	a.must(t, http.StatusNoContent, http.MethodPut, "/proxies/"+group, map[string]string{"name": name})
}

// providerProxies lists the names of a proxy provider's proxies.
func (a api) providerProxies(t testing.TB, provider string) []string {
	t.Helper()
	var p struct {
		Proxies []struct {
			Name string `json:"name"`
			Type string `json:"type"`
		} `json:"proxies"`
	}
	if err := json.Unmarshal(a.must(t, http.StatusOK, http.MethodGet, "/providers/proxies/"+provider, nil), &p); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, x := range p.Proxies {
		names = append(names, x.Name)
	}
	return names
}

// certFingerprint is mihomo's `fingerprint` (certificate pinning) for cert.
func certFingerprint(cert tls.Certificate) string {
	sum := sha256.Sum256(cert.Certificate[0])
	return hex.EncodeToString(sum[:])
}

// contains reports whether list holds s.
func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
