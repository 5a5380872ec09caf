package mihomo

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anytls-engine/anytls/internal/mihomorun"
	"github.com/anytls-engine/anytls/internal/testcert"
	"github.com/anytls-engine/anytls/internal/testnet"

	"github.com/metacubex/mihomo/adapter/inbound"
	anytlsL "github.com/metacubex/mihomo/listener/anytls"
	LC "github.com/metacubex/mihomo/listener/config"
	"github.com/metacubex/mihomo/tunnel"

	"gopkg.in/yaml.v3"
)

// env is the running setup, built once in TestMain.
var env struct {
	home       string
	httpAddr   string
	echoAddr   string
	det        *detector
	cert       tls.Certificate
	certPEM    []byte
	keyPEM     []byte
	api        api
	configYAML []byte            // what mihomo was started with
	ports      map[string]int    // mixed listeners and anytls listeners by name
	passwords  map[string]string // users of anytls-in
	builtinIn  *anytlsL.Listener // mihomo's built-in anytls listener (a test partner)
}

// detectorUsers are the anytls proxies of the examples that point at the detector.
var detectorUsers = []string{"anytls-tls", "anytls-inline", "sub-tokyo", "sub-paris", "sub-lisbon", "reload-1", "http-1", "http-2"}

// mixedListeners are the test's entry points: a mixed listener whose traffic goes to one proxy
// or group.
var mixedListeners = map[string]string{
	"mix-loop":    "p-loop",         // our proxy -> our listener (anytls-in) -> DIRECT
	"mix-carol":   "p-carol",        // as mix-loop, as user carol (IN-USER,carol,REJECT)
	"mix-builtin": "p-builtin",      // our proxy -> mihomo's built-in listener
	"mix-reality": "anytls-reality", // our proxy -> our listener, both with Reality
	"mix-select":  "Proxy",          // select group
	"mix-auto":    "Auto",           // url-test group
	"mix-global":  "GLOBAL",         // GLOBAL
	"mix-sub":     "Subscription",   // select group over the file and inline providers
	"mix-remote":  "Remote",         // select group over an http provider (test-only)
	"mix-smux":    "p-smux",         // our proxy with smux -> our listener
}

func TestMain(m *testing.M) {
	if err := setup(); err != nil {
		fmt.Fprintln(os.Stderr, "setup:", err)
		os.Exit(1)
	}
	code := m.Run()
	mihomorun.Stop()
	os.Exit(code)
}

// setup starts the targets, the detector, the built-in listener and mihomo.
func setup() error {
	t := &setupT{}
	home, err := os.MkdirTemp("", "anytls-mihomo-test-")
	if err != nil {
		return err
	}
	env.home = home
	env.cert, env.certPEM, env.keyPEM, err = testcert.New("localhost", "127.0.0.1")
	if err != nil {
		return err
	}
	env.httpAddr, _ = startHTTP(t)
	env.echoAddr, _ = startUDPEcho(t)
	env.det = startDetector(t, env.cert, detectorUsers...)
	realityDest := startTLS13(t, env.cert)

	// mihomo's built-in anytls listener, in front of mihomo's tunnel.
	env.builtinIn, err = anytlsL.New(LC.AnyTLSServer{
		Enable:      true,
		Listen:      "127.0.0.1:0",
		Users:       map[string]string{"builtin-user": "pw-builtin"},
		Certificate: string(env.certPEM),
		PrivateKey:  string(env.keyPEM),
	}, tunnel.Tunnel, inbound.WithInName("builtin-in"))
	if err != nil {
		return err
	}
	builtinPort := env.builtinIn.AddrList()[0].(*net.TCPAddr).Port

	env.ports = map[string]int{"api": freePort(t), "anytls-in": freePort(t), "anytls-reality-in": freePort(t)}
	for name := range mixedListeners {
		env.ports[name] = freePort(t)
	}
	cfg, err := buildConfig(builtinPort, realityDest)
	if err != nil {
		return err
	}
	if t.failed != nil {
		return t.failed
	}
	env.configYAML = cfg
	path := filepath.Join(home, "config.yaml")
	if err := os.WriteFile(path, cfg, 0o600); err != nil {
		return err
	}
	env.api = api{base: fmt.Sprintf("http://127.0.0.1:%d", env.ports["api"]), secret: "test-secret"}
	if err := mihomorun.Start(mihomorun.Options{HomeDir: home, ConfigFile: path}); err != nil {
		return err
	}
	// The controller starts in the background.
	deadline := time.Now().Add(ioTimeout)
	for {
		code, _, err := env.api.do(http.MethodGet, "/version", nil)
		if err == nil && code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("external controller did not come up: %d %v", code, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// buildConfig merges examples/mihomo/client.yaml and server.yaml into one configuration that
// runs on loopback: every anytls proxy of the examples points at the detector, except
// anytls-reality, which points at the example's Reality listener; the listeners use the test
// certificate and reserved ports; test proxies and mixed listeners are added.
func buildConfig(builtinPort int, realityDest string) ([]byte, error) {
	var client, server map[string]any
	if err := readYAML("../../examples/mihomo/client.yaml", &client); err != nil {
		return nil, err
	}
	if err := readYAML("../../examples/mihomo/server.yaml", &server); err != nil {
		return nil, err
	}
	detPort := env.det.port()
	toDetector := func(p map[string]any) {
		name := p["name"].(string)
		p["server"] = "127.0.0.1"
		p["port"] = detPort
		p["password"] = detectorPassword(name)
		p["sni"] = "localhost"
		p["fingerprint"] = certFingerprint(env.cert) // pinning instead of a CA
	}

	cfg := map[string]any{
		"mode":                "rule",
		"log-level":           logLevel(),
		"ipv6":                false,
		"external-controller": fmt.Sprintf("127.0.0.1:%d", env.ports["api"]),
		"secret":              "test-secret",
	}

	// Proxies of the client example.
	var proxies []any
	for _, item := range client["proxies"].([]any) {
		p := item.(map[string]any)
		switch p["name"] {
		case "anytls-tls":
			toDetector(p)
		case "anytls-reality":
			p["server"] = "127.0.0.1"
			p["port"] = env.ports["anytls-reality-in"]
			p["sni"] = "reality.test"
		default:
			return nil, fmt.Errorf("client.yaml: unexpected proxy %v", p["name"])
		}
		proxies = append(proxies, p)
	}
	// Test proxies toward our listener (as alice and carol) and toward mihomo's built-in one.
	users := server["listeners"].([]any)[0].(map[string]any)["users"].(map[string]any)
	env.passwords = map[string]string{}
	for k, v := range users {
		env.passwords[k] = v.(string)
	}
	loop := func(name, user string) map[string]any {
		return map[string]any{
			"name": name, "type": "anytls", "server": "127.0.0.1", "port": env.ports["anytls-in"],
			"password": env.passwords[user], "skip-cert-verify": true, "udp": true,
		}
	}
	smux := loop("p-smux", "alice")
	smux["smux"] = map[string]any{"enabled": true, "protocol": "h2mux"}
	proxies = append(proxies, loop("p-loop", "alice"), loop("p-carol", "carol"), smux, map[string]any{
		"name": "p-builtin", "type": "anytls", "server": "127.0.0.1", "port": builtinPort,
		"password": "pw-builtin", "skip-cert-verify": true, "udp": true,
	})
	cfg["proxies"] = proxies

	// Providers: the inline payload and the file point at the detector.
	providers := client["proxy-providers"].(map[string]any)
	for _, item := range providers["pinned"].(map[string]any)["payload"].([]any) {
		toDetector(item.(map[string]any))
	}
	sub := providers["subscription"].(map[string]any)
	sub["health-check"].(map[string]any)["url"] = "http://" + env.httpAddr + "/generate_204"
	var content map[string]any
	if err := readYAML("../../examples/mihomo/providers/anytls.yaml", &content); err != nil {
		return nil, err
	}
	for _, item := range content["proxies"].([]any) {
		toDetector(item.(map[string]any))
	}
	if err := writeProviderFile(content); err != nil {
		return nil, err
	}
	// An http provider (test-only) whose content the HTTP server serves.
	setHTTPProvider("http-1")
	providers["remote"] = map[string]any{
		"type": "http", "url": "http://" + env.httpAddr + "/provider.yaml", "interval": 3600,
		"path":         "./providers/remote.yaml",
		"health-check": map[string]any{"enable": true, "url": "http://" + env.httpAddr + "/generate_204", "interval": 600},
	}
	cfg["proxy-providers"] = providers

	// Groups: health checks go to the local HTTP server.
	for _, item := range client["proxy-groups"].([]any) {
		g := item.(map[string]any)
		if _, ok := g["url"]; ok {
			g["url"] = "http://" + env.httpAddr + "/generate_204"
		}
	}
	cfg["proxy-groups"] = append(client["proxy-groups"].([]any), map[string]any{"name": "Remote", "type": "select", "use": []any{"remote"}})

	// Listeners of the server example, on loopback with the test certificate.
	var listeners []any
	for _, item := range server["listeners"].([]any) {
		l := item.(map[string]any)
		l["listen"] = "127.0.0.1"
		l["port"] = env.ports[l["name"].(string)]
		switch l["name"] {
		case "anytls-in":
			if err := os.WriteFile(filepath.Join(env.home, l["certificate"].(string)), env.certPEM, 0o600); err != nil {
				return nil, err
			}
			if err := os.WriteFile(filepath.Join(env.home, l["private-key"].(string)), env.keyPEM, 0o600); err != nil {
				return nil, err
			}
			l["fallback"] = env.httpAddr
		case "anytls-reality-in":
			rc := l["reality-config"].(map[string]any)
			rc["dest"] = realityDest
			rc["server-names"] = []any{"reality.test"}
		default:
			return nil, fmt.Errorf("server.yaml: unexpected listener %v", l["name"])
		}
		listeners = append(listeners, l)
	}
	for name, target := range mixedListeners {
		listeners = append(listeners, map[string]any{
			"name": name, "type": "mixed", "listen": "127.0.0.1", "port": env.ports[name],
			"udp": true, "proxy": target,
		})
	}
	cfg["listeners"] = listeners
	// The server example's rules: IN-USER,carol,REJECT then MATCH,DIRECT. Entry points name their
	// proxy, so rules only route what arrives at the anytls listeners.
	cfg["rules"] = server["rules"]
	return yaml.Marshal(cfg)
}

// logLevel is mihomo's log level in the tests: warning, or $MIHOMO_TEST_LOG (debug, info, ...).
func logLevel() string {
	if l := os.Getenv("MIHOMO_TEST_LOG"); l != "" {
		return l
	}
	return "warning"
}

func readYAML(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return yaml.Unmarshal(b, v)
}

// setHTTPProvider makes the http provider's content one anytls proxy at the detector.
func setHTTPProvider(name string) {
	b, _ := yaml.Marshal(map[string]any{"proxies": []any{map[string]any{
		"name": name, "type": "anytls", "server": "127.0.0.1", "port": env.det.port(),
		"password": detectorPassword(name), "sni": "localhost", "fingerprint": certFingerprint(env.cert),
	}}})
	httpProviderContent.Store(b)
}

// providerFile is the file provider's content in the home directory (as client.yaml names it).
func providerFile() string { return filepath.Join(env.home, "providers", "anytls.yaml") }

func writeProviderFile(content map[string]any) error {
	b, err := yaml.Marshal(content)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(providerFile()), 0o700); err != nil {
		return err
	}
	return os.WriteFile(providerFile(), b, 0o600)
}

// startTLS13 is the Reality listener's dest: a TLS 1.3 server whose handshake Reality borrows.
func startTLS13(t testing.TB, cert tls.Certificate) string {
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	testnet.ServeEach(ln, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(ioTimeout))
		c.(*tls.Conn).Handshake()
		c.Read(make([]byte, 1))
	})
	return ln.Addr().String()
}

// setupT lets the helpers that take a testing.TB run in TestMain.
type setupT struct {
	testing.TB
	failed error
}

func (s *setupT) Helper() {}
func (s *setupT) Fatal(args ...any) {
	s.failed = fmt.Errorf("%s", strings.TrimSpace(fmt.Sprintln(args...)))
	panic(s.failed)
}
func (s *setupT) Fatalf(format string, args ...any) {
	s.failed = fmt.Errorf(format, args...)
	panic(s.failed)
}
