package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	M "github.com/sagernet/sing/common/metadata"
	N "github.com/sagernet/sing/common/network"
	"github.com/sagernet/sing/common/uot"
	"github.com/sagernet/sing/protocol/socks"
	"go.uber.org/goleak"

	"github.com/anytls-engine/anytls/option"
	"github.com/anytls-engine/anytls/protocol"
)

const testTimeout = 15 * time.Second

// startPair starts a server (self-signed certificate in a temporary state directory) and a
// client on loopback, both stopped when the test ends.
func startPair(t *testing.T, allowPrivate bool) (*server, *client) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := startServer(ctx, serverConfig{
		Listen: "127.0.0.1:0", Password: "test-password", StateDir: t.TempDir(), AllowPrivate: allowPrivate,
	})
	if err != nil {
		t.Fatal(err)
	}
	cl, err := startClient(ctx, clientConfig{Listen: "127.0.0.1:0", Link: srv.Link()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		cl.Close()
		srv.Close()
	})
	return srv, cl
}

func newTarget(t *testing.T) *httptest.Server {
	t.Helper()
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "target says hi to "+r.URL.Path)
	}))
	t.Cleanup(ts.Close)
	return ts
}

func get(t *testing.T, hc *http.Client, u string) string {
	t.Helper()
	resp, err := hc.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", u, resp.Status)
	}
	return string(b)
}

func proxyClient(proxy string, base *http.Transport) *http.Client {
	u, err := url.Parse(proxy)
	if err != nil {
		panic(err)
	}
	tr := base.Clone()
	tr.Proxy = http.ProxyURL(u)
	tr.DisableKeepAlives = true
	return &http.Client{Transport: tr, Timeout: testTimeout}
}

func TestSOCKS5Connect(t *testing.T) {
	_, cl := startPair(t, true)
	ts := newTarget(t)
	hc := proxyClient("socks5://"+cl.Addr().String(), http.DefaultTransport.(*http.Transport))
	for i := range 3 { // several streams; sessions are reused
		path := "/socks/" + string(rune('a'+i))
		if got := get(t, hc, ts.URL+path); got != "target says hi to "+path {
			t.Fatalf("through SOCKS5: %q", got)
		}
	}
	// sing's SOCKS5 client, with a domain destination resolved by the server.
	sc := socks.NewClient(N.SystemDialer, M.ParseSocksaddr(cl.Addr().String()), socks.Version5, "", "")
	_, port, _ := net.SplitHostPort(ts.Listener.Addr().String())
	conn, err := sc.DialContext(context.Background(), "tcp", M.ParseSocksaddr("localhost:"+port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(testTimeout))
	io.WriteString(conn, "GET /by-name HTTP/1.0\r\nHost: localhost\r\n\r\n")
	b, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(string(b), "target says hi to /by-name") {
		t.Fatalf("HTTP/1.0 through SOCKS5 by name: %q", b)
	}
}

func TestHTTPConnect(t *testing.T) {
	_, cl := startPair(t, true)
	ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "tls target "+r.URL.Path)
	}))
	defer ts.Close()
	// An https URL through an HTTP proxy makes net/http use CONNECT.
	hc := proxyClient("http://"+cl.Addr().String(), ts.Client().Transport.(*http.Transport))
	if got := get(t, hc, ts.URL+"/connect"); got != "tls target /connect" {
		t.Fatalf("through HTTP CONNECT: %q", got)
	}
	// A large body both ways through CONNECT, with a checksum.
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	ts2 := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, _ := io.Copy(h, r.Body)
		w.Header().Set("X-Sum", hex.EncodeToString(h.Sum(nil)))
		w.Write(bytes.Repeat([]byte{'x'}, int(n)))
	}))
	defer ts2.Close()
	hc = proxyClient("http://"+cl.Addr().String(), ts2.Client().Transport.(*http.Transport))
	resp, err := hc.Post(ts2.URL, "application/octet-stream", bytes.NewReader(payload))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	back, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(payload)
	if resp.Header.Get("X-Sum") != hex.EncodeToString(sum[:]) || len(back) != len(payload) {
		t.Fatalf("1 MiB through CONNECT: %d bytes back, checksum %s, want %x", len(back), resp.Header.Get("X-Sum"), sum)
	}
}

// udpEcho answers every datagram with "echo: " + datagram.
func udpEcho(t *testing.T) *net.UDPConn {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		b := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			pc.WriteToUDPAddrPort(append([]byte("echo: "), b[:n]...), from)
		}
	}()
	return pc
}

func TestSOCKS5UDPAssociate(t *testing.T) {
	_, cl := startPair(t, true)
	echo := udpEcho(t)
	sc := socks.NewClient(N.SystemDialer, M.ParseSocksaddr(cl.Addr().String()), socks.Version5, "", "")
	echoAddr := M.SocksaddrFromNet(echo.LocalAddr())
	pc, err := sc.ListenPacket(context.Background(), echoAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	pc.SetDeadline(time.Now().Add(testTimeout))
	b := make([]byte, 2048)
	for _, msg := range []string{"one", "two", strings.Repeat("z", 1200)} {
		if _, err := pc.WriteTo([]byte(msg), echoAddr.UDPAddr()); err != nil {
			t.Fatal(err)
		}
		n, from, err := pc.ReadFrom(b)
		if err != nil {
			t.Fatal(err)
		}
		if string(b[:n]) != "echo: "+msg {
			t.Fatalf("UDP through SOCKS5: %q", b[:n])
		}
		if got := M.SocksaddrFromNet(from); got.AddrPort() != echoAddr.AddrPort() {
			t.Fatalf("reply from %v, want %v", got, echoAddr)
		}
	}
}

// testEngineClient is an AnyTLS client straight on the engine, for what a local proxy hides.
func testEngineClient(t *testing.T, link option.Link) *protocol.Client {
	t.Helper()
	cfg, err := option.ClientOptions{Password: link.Password}.ProtocolConfig()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Dial = tlsDialer(link)
	c, err := protocol.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// UoT connect mode (what sing-box's client uses) served by our server.
func TestUoTConnectMode(t *testing.T) {
	srv, _ := startPair(t, true)
	echo := udpEcho(t)
	ec := testEngineClient(t, srv.Link())
	uc := &uot.Client{Dialer: streamDialer{ec}, Version: uot.Version}
	conn, err := uc.DialContext(context.Background(), "udp", M.SocksaddrFromNet(echo.LocalAddr()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(testTimeout))
	if _, err := conn.Write([]byte("connected")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 100)
	n, err := conn.Read(b)
	if err != nil || string(b[:n]) != "echo: connected" {
		t.Fatalf("UoT connect mode: %q %v", b[:n], err)
	}
}

func TestPrivateDestinationRefused(t *testing.T) {
	srv, cl := startPair(t, false)
	ts := newTarget(t)
	_, port, _ := net.SplitHostPort(ts.Listener.Addr().String())
	ec := testEngineClient(t, srv.Link())
	for _, dest := range []string{ts.Listener.Addr().String(), "localhost:" + port, "[::ffff:127.0.0.1]:" + port, "0.0.0.0:" + port, "10.1.2.3:80"} {
		st, err := ec.OpenStream(context.Background(), mustAddr(t, dest))
		if err != nil {
			t.Fatal(err)
		}
		st.SetDeadline(time.Now().Add(testTimeout))
		io.WriteString(st, "GET / HTTP/1.0\r\n\r\n")
		b, err := io.ReadAll(st)
		if !errors.Is(err, protocol.ErrRemoteRefused) || !strings.Contains(err.Error(), "--allow-private") {
			t.Errorf("stream to %s: read %q, error %v; want the server's refusal", dest, b, err)
		}
		st.Close()
	}
	// Through the local proxy the connection ends without data.
	sc := socks.NewClient(N.SystemDialer, M.ParseSocksaddr(cl.Addr().String()), socks.Version5, "", "")
	conn, err := sc.DialContext(context.Background(), "tcp", M.ParseSocksaddr(ts.Listener.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(testTimeout))
	io.WriteString(conn, "GET / HTTP/1.0\r\n\r\n")
	if b, _ := io.ReadAll(conn); len(b) != 0 {
		t.Errorf("SOCKS5 to a private address got %q", b)
	}
	// UDP to a private address, connect mode: refused.
	uc := &uot.Client{Dialer: streamDialer{ec}, Version: uot.Version}
	uconn, err := uc.DialContext(context.Background(), "udp", M.ParseSocksaddr("127.0.0.1:53"))
	if err != nil {
		t.Fatal(err)
	}
	defer uconn.Close()
	uconn.SetDeadline(time.Now().Add(testTimeout))
	uconn.Write([]byte("x"))
	if _, err := uconn.Read(make([]byte, 10)); !errors.Is(err, protocol.ErrRemoteRefused) {
		t.Errorf("UoT to 127.0.0.1: %v, want the server's refusal", err)
	}
}

func TestIsPrivate(t *testing.T) {
	for s, want := range map[string]bool{
		"127.0.0.1": true, "10.0.0.1": true, "172.16.0.1": true, "192.168.1.1": true, "169.254.1.1": true,
		"0.0.0.0": true, "0.1.2.3": true, "100.64.0.1": true, "255.255.255.255": true, "::1": true, "::": true,
		"fe80::1": true, "fd00::1": true, "::ffff:10.0.0.1": true,
		"8.8.8.8": false, "1.1.1.1": false, "2001:4860:4860::8888": false, "100.128.0.1": false,
	} {
		if got := isPrivate(netip.MustParseAddr(s)); got != want {
			t.Errorf("isPrivate(%s) = %v, want %v", s, got, want)
		}
	}
}

func mustAddr(t *testing.T, s string) protocol.Addr {
	t.Helper()
	a, err := protocol.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func peerCert(t *testing.T, addr string) []byte {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	certs := conn.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		t.Fatal("no certificate")
	}
	if left := time.Until(certs[0].NotAfter); left < 365*24*time.Hour {
		t.Errorf("certificate valid for %v only", left)
	}
	return certs[0].Raw
}

func TestCertificatePersisted(t *testing.T) {
	dir := t.TempDir()
	var certs [][]byte
	for range 2 {
		srv, err := startServer(context.Background(), serverConfig{Listen: "127.0.0.1:0", Password: "p", StateDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, peerCert(t, srv.Addr().String()))
		srv.Close()
	}
	if !bytes.Equal(certs[0], certs[1]) {
		t.Fatal("the second start did not reuse the stored certificate")
	}
	if fi, err := os.Stat(filepath.Join(dir, keyFileName)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file: %v, mode %v", err, fi.Mode())
	}
	// A certificate close to expiry is replaced.
	_, created, err := loadOrCreateCert(dir, nil, time.Now().Add(certValidity-certRenewBefore/2))
	if err != nil || !strings.Contains(created, "expires") {
		t.Errorf("expiring certificate: created %v, error %v", created, err)
	}
	// So is a damaged one.
	os.WriteFile(filepath.Join(dir, certFileName), []byte("garbage"), 0o644)
	_, created, err = loadOrCreateCert(dir, nil, time.Now())
	if err != nil || !strings.Contains(created, "unusable") {
		t.Errorf("damaged certificate: created %v, error %v", created, err)
	}
}

// lineWriter delivers what is written to it line by line.
type lineWriter struct {
	mu    sync.Mutex
	buf   []byte
	lines chan string
}

func newLineWriter() *lineWriter { return &lineWriter{lines: make(chan string, 100)} }

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		select {
		case w.lines <- string(w.buf[:i]):
		default:
		}
		w.buf = w.buf[i+1:]
	}
}

// waitLine returns the first line containing substr.
func (w *lineWriter) waitLine(t *testing.T, substr string, errc <-chan error) string {
	t.Helper()
	timeout := time.After(testTimeout)
	for {
		select {
		case l := <-w.lines:
			if strings.Contains(l, substr) {
				return l
			}
		case err := <-errc:
			t.Fatalf("command ended before printing %q: %v", substr, err)
		case <-timeout:
			t.Fatalf("no line containing %q", substr)
		}
	}
}

// The server and client commands, run from their flags: the printed share link parses back,
// and the client takes it (and the reference client's form) to reach a target.
func TestCommandsEndToEnd(t *testing.T) {
	ts := newTarget(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srvOut := newLineWriter()
	srvErr := make(chan error, 1)
	go func() {
		srvErr <- serverMain(ctx, []string{"-l", "127.0.0.1:0", "--p", "pass word/+", "--state", t.TempDir(), "--allow-private", "--public-host", "127.0.0.1"}, srvOut, io.Discard)
	}()
	line := srvOut.waitLine(t, "share link: ", srvErr)
	link, err := option.ParseLink(strings.TrimPrefix(line, "share link: "))
	if err != nil {
		t.Fatalf("printed link %q: %v", line, err)
	}
	if link.Password != "pass word/+" || link.Host != "127.0.0.1" || !link.Insecure || link.Port == 0 {
		t.Fatalf("printed link %+v", link)
	}

	for _, args := range [][]string{
		{"-l", "127.0.0.1:0", "-s", link.String()},
		{"-l", "127.0.0.1:0", "-s", link.Address(), "-p", link.Password, "--sni", "example.com"},
	} {
		cliOut := newLineWriter()
		cliErrOut := &bytes.Buffer{}
		cliErr := make(chan error, 1)
		cctx, ccancel := context.WithCancel(ctx)
		go func() { cliErr <- clientMain(cctx, args, cliOut, cliErrOut) }()
		line := cliOut.waitLine(t, "proxy on ", cliErr)
		proxyAddr, _, _ := strings.Cut(strings.SplitN(line, "proxy on ", 2)[1], ",")
		if strings.Contains(line, link.Password) {
			t.Errorf("client prints the password: %q", line)
		}
		hc := proxyClient("socks5://"+proxyAddr, http.DefaultTransport.(*http.Transport))
		if got := get(t, hc, ts.URL+"/cmd"); got != "target says hi to /cmd" {
			t.Errorf("client %v: %q", args, got)
		}
		ccancel()
		if err := <-cliErr; err != nil {
			t.Errorf("client %v: %v", args, err)
		}
		if warned := strings.Contains(cliErrOut.String(), "skips certificate verification"); warned != (len(args) > 4) {
			t.Errorf("client %v: warning printed %v", args, warned)
		}
	}
	cancel()
	if err := <-srvErr; err != nil {
		t.Errorf("server: %v", err)
	}
}

func TestClientLink(t *testing.T) {
	l, warn, err := clientLink("anytls://pw@h.example:8443/?sni=a.example", "", "b.example")
	if err != nil || warn != "" || l.SNI != "b.example" || l.Password != "pw" || l.Insecure {
		t.Errorf("link with --sni: %+v %q %v", l, warn, err)
	}
	l, warn, err = clientLink("h.example:8443", "secret", "")
	if err != nil || !strings.Contains(warn, "skips certificate verification") || !l.Insecure || l.Address() != "h.example:8443" || l.Password != "secret" {
		t.Errorf("reference form: %+v %q %v", l, warn, err)
	}
	l, _, err = clientLink("anytls://pw@h.example", "other", "")
	if err != nil || l.Password != "other" {
		t.Errorf("-p over the link: %+v %v", l, err)
	}
	for _, bad := range []string{"", "h.example:8443", "anytls://h.example", "nonsense", "anytls://pw@h.example:0"} {
		if _, _, err := clientLink(bad, "", ""); err == nil {
			t.Errorf("clientLink(%q) accepted", bad)
		}
	}
}

// A connection that does not authenticate is spliced to the fallback.
func TestFallback(t *testing.T) {
	web := newTarget(t)
	srv, err := startServer(context.Background(), serverConfig{
		Listen: "127.0.0.1:0", Password: "p", StateDir: t.TempDir(), Fallback: web.Listener.Addr().String(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	hc := &http.Client{Timeout: testTimeout, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true,
	}}
	if got := get(t, hc, "https://"+srv.Addr().String()+"/probe"); got != "target says hi to /probe" {
		t.Fatalf("prober got %q", got)
	}
}

// The demo (make run) in-process: it reports a working request, then stops on cancel.
func TestDemo(t *testing.T) {
	// Everything the demo starts stops with it: server, client, sessions, relays, target.
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := newLineWriter()
	errc := make(chan error, 1)
	go func() { errc <- runDemo(ctx, out, newLogger(io.Discard, false)) }()
	out.waitLine(t, demoSuccess, errc)
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(testTimeout):
		t.Fatal("demo did not stop")
	}
}

func TestDispatch(t *testing.T) {
	var stderr bytes.Buffer
	if code := dispatch([]string{"nope"}, &stderr); code != 2 || !strings.Contains(stderr.String(), `unknown command "nope"`) {
		t.Errorf("unknown command: %d %q", code, stderr.String())
	}
	stderr.Reset()
	if code := dispatch(nil, &stderr); code != 2 || !strings.Contains(stderr.String(), "server") || !strings.Contains(stderr.String(), "demo") {
		t.Errorf("usage: %d %q", code, stderr.String())
	}
	if code := dispatch([]string{"server", "--bogus"}, io.Discard); code != 2 {
		t.Errorf("bad flag: exit %d", code)
	}
	if err := serverMain(context.Background(), []string{"-l", "127.0.0.1:0"}, io.Discard, io.Discard); !errors.Is(err, errUsage) {
		t.Errorf("server without -p: %v", err)
	}
	if err := clientMain(context.Background(), []string{"-s", "anytls://pw@h.example:99999"}, io.Discard, io.Discard); !errors.Is(err, errUsage) {
		t.Errorf("client with a bad link: %v", err)
	}
}
