// Package singbox_test runs sing-box in-process with this module's anytls inbound and outbound,
// and against sing-box's built-in anytls (registered as "anytls-builtin"), from the configurations
// in examples/singbox. sing-box has data races of its own, so make test runs this package without
// -race. All traffic stays on loopback.
package singbox_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/anytls-engine/anytls/internal/sbrun"
	"github.com/anytls-engine/anytls/internal/testcert"
	"github.com/anytls-engine/anytls/internal/testnet"

	box "github.com/sagernet/sing-box"
	"github.com/sagernet/sing-box/adapter/inbound"
	"github.com/sagernet/sing-box/adapter/outbound"
	"github.com/sagernet/sing-box/option"
	builtin "github.com/sagernet/sing-box/protocol/anytls"
	M "github.com/sagernet/sing/common/metadata"
	N "github.com/sagernet/sing/common/network"
	"github.com/sagernet/sing/protocol/socks"
	sservice "github.com/sagernet/sing/service"
)

const targetBody = "hello from the target"

// env is one test's world: certificates, a registry context with both anytls implementations,
// an HTTP target and a UDP echo server, all on loopback.
type env struct {
	t        *testing.T
	ctx      context.Context
	certPath string
	keyPath  string
	roots    *x509.CertPool
	http     *httptest.Server
	httpPort int
	udpEcho  *net.UDPConn
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	_, certPEM, keyPEM, err := testcert.New("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, certPath: filepath.Join(dir, "cert.pem"), keyPath: filepath.Join(dir, "key.pem")}
	if err := os.WriteFile(e.certPath, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.keyPath, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	e.roots = x509.NewCertPool()
	e.roots.AppendCertsFromPEM(certPEM)

	reg := sbrun.NewRegistries()
	inbound.Register[option.AnyTLSInboundOptions](reg.Inbound, "anytls-builtin", builtin.NewInbound)
	outbound.Register[option.AnyTLSOutboundOptions](reg.Outbound, "anytls-builtin", builtin.NewOutbound)
	e.ctx = reg.Context(context.Background())

	e.http = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, targetBody)
	}))
	t.Cleanup(e.http.Close)
	e.httpPort = e.http.Listener.Addr().(*net.TCPAddr).Port

	e.udpEcho, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.udpEcho.Close() })
	go func() {
		buf := make([]byte, 65535)
		for {
			n, addr, err := e.udpEcho.ReadFromUDP(buf)
			if err != nil {
				return
			}
			e.udpEcho.WriteToUDP(buf[:n], addr)
		}
	}()
	return e
}

// example loads examples/singbox/name as a generic JSON tree to patch.
func example(t *testing.T, name string) map[string]any {
	t.Helper()
	content, err := os.ReadFile(filepath.Join("..", "..", "examples", "singbox", name))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(content, &cfg); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return cfg
}

// freePort reserves a loopback port for a listener that another program opens from its
// configuration (testnet.FreePort: not from the range that parallel tests' sockets use).
func freePort(t *testing.T) int {
	t.Helper()
	return testnet.FreePort(t)
}

func obj(v any) map[string]any { return v.(map[string]any) }

func first(cfg map[string]any, key string) map[string]any {
	return obj(cfg[key].([]any)[0])
}

// serverConfig is examples/singbox/server.json on loopback with the test certificate; typ is
// "anytls" (ours) or "anytls-builtin" (which has none of our extension keys).
func (e *env) serverConfig(typ string, port int) map[string]any {
	cfg := example(e.t, "server.json")
	cfg["log"] = map[string]any{"level": "warn"}
	in := first(cfg, "inbounds")
	in["type"] = typ
	in["listen"] = "127.0.0.1"
	in["listen_port"] = port
	tlsOpts := obj(in["tls"])
	tlsOpts["certificate_path"] = e.certPath
	tlsOpts["key_path"] = e.keyPath
	if typ == "anytls" {
		obj(in["fallback"])["server_port"] = e.httpPort
	} else {
		delete(in, "fallback")
		delete(in, "idle_session_timeout")
	}
	return cfg
}

// clientConfig is examples/singbox/client.json (a mixed inbound) pointed at the server.
func (e *env) clientConfig(typ string, serverPort, mixedPort int, password string) map[string]any {
	cfg := example(e.t, "client.json")
	cfg["log"] = map[string]any{"level": "warn"}
	first(cfg, "inbounds")["listen_port"] = mixedPort
	out := first(cfg, "outbounds")
	out["type"] = typ
	out["server"] = "127.0.0.1"
	out["server_port"] = serverPort
	out["password"] = password
	tlsOpts := obj(out["tls"])
	tlsOpts["server_name"] = "localhost"
	tlsOpts["certificate_path"] = e.certPath
	return cfg
}

func (e *env) decode(cfg map[string]any) option.Options {
	e.t.Helper()
	content, err := json.Marshal(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	options, err := sbrun.Decode(e.ctx, content)
	if err != nil {
		e.t.Fatal(err)
	}
	return options
}

func (e *env) start(cfg map[string]any) *box.Box {
	e.t.Helper()
	instance, cancel, err := sbrun.Start(e.ctx, e.decode(cfg))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		cancel()
		instance.Close()
	})
	return instance
}

// startPair starts a server of serverType and a client of clientType; it returns the client's
// mixed (SOCKS/HTTP proxy) port and the server's port.
func (e *env) startPair(serverType, clientType, password string) (mixedPort, serverPort int) {
	serverPort, mixedPort = freePort(e.t), freePort(e.t)
	e.start(e.serverConfig(serverType, serverPort))
	e.start(e.clientConfig(clientType, serverPort, mixedPort, password))
	return mixedPort, serverPort
}

// get fetches the HTTP target through the SOCKS5 proxy at mixedPort.
func (e *env) get(mixedPort int) (string, error) {
	proxy, _ := url.Parse("socks5://127.0.0.1:" + itoa(mixedPort))
	client := &http.Client{
		Transport: &http.Transport{Proxy: http.ProxyURL(proxy), DisableKeepAlives: true},
		Timeout:   10 * time.Second,
	}
	resp, err := client.Get(e.http.URL)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return string(body), err
}

func (e *env) mustGet(mixedPort int) {
	e.t.Helper()
	body, err := e.get(mixedPort)
	if err != nil {
		e.t.Fatalf("GET through proxy: %v", err)
	}
	if body != targetBody {
		e.t.Fatalf("GET through proxy: body %q, want %q", body, targetBody)
	}
}

// mustEchoUDP sends datagrams to the echo server through the SOCKS5 proxy (UDP ASSOCIATE) and
// checks each comes back.
func (e *env) mustEchoUDP(mixedPort int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := socks.NewClient(N.SystemDialer, M.ParseSocksaddrHostPort("127.0.0.1", uint16(mixedPort)), socks.Version5, "", "")
	echo := e.udpEcho.LocalAddr().(*net.UDPAddr)
	pc, err := client.ListenPacket(ctx, M.SocksaddrFromNet(echo))
	if err != nil {
		e.t.Fatalf("UDP associate: %v", err)
	}
	defer pc.Close()
	pc.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2048)
	for i, size := range []int{1, 500, 1400} {
		msg := bytes.Repeat([]byte{byte('a' + i)}, size)
		if _, err := pc.WriteTo(msg, echo); err != nil {
			e.t.Fatalf("UDP write: %v", err)
		}
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			e.t.Fatalf("UDP read (datagram %d): %v", i, err)
		}
		if !bytes.Equal(buf[:n], msg) {
			e.t.Fatalf("UDP echo %d: got %d bytes, want %d", i, n, size)
		}
		if got := M.SocksaddrFromNet(from).Unwrap(); got.Port != uint16(echo.Port) {
			e.t.Fatalf("UDP echo from %v, want port %d", from, echo.Port)
		}
	}
}

// tlsDial dials the server with the test certificate trusted.
func (e *env) tlsDial(ctx context.Context, port int) (net.Conn, error) {
	d := &tls.Dialer{Config: &tls.Config{ServerName: "localhost", RootCAs: e.roots}}
	return d.DialContext(ctx, "tcp", "127.0.0.1:"+itoa(port))
}

func itoa(n int) string { return strconv.Itoa(n) }

func jsonMarshal(v any) ([]byte, error) { return json.MarshalIndent(v, "", "  ") }

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	content, err := jsonMarshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
}

// newBox builds a box without starting it.
func newBox(ctx context.Context, options option.Options) (*box.Box, error) {
	return box.New(box.Options{Context: sservice.ExtendContext(ctx), Options: options})
}
