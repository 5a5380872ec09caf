package mihomo

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/anytls-engine/anytls/internal/mihomorun"
	outmihomo "github.com/anytls-engine/anytls/outbound/mihomo"
	"github.com/anytls-engine/anytls/protocol"

	"github.com/metacubex/mihomo/adapter"
	"github.com/metacubex/mihomo/adapter/outbound"
	C "github.com/metacubex/mihomo/constant"
	"github.com/metacubex/mihomo/tunnel"
)

// ourProxy returns the adapter inside the running proxy named name, failing unless it is ours.
func ourProxy(t *testing.T, name string) *outmihomo.Proxy {
	t.Helper()
	p, ok := tunnel.Proxies()[name]
	if !ok {
		t.Fatalf("no proxy %s", name)
	}
	a := p.(*adapter.Proxy).ProxyAdapter
	for range 4 {
		if ours, ok := a.(*outmihomo.Proxy); ok {
			return ours
		}
		if sm, ok := a.(*outbound.SingMux); ok {
			a = sm.ProxyAdapter
			continue
		}
		if w, ok := unwrapAutoClose(a); ok {
			a = w
			continue
		}
		break
	}
	t.Fatalf("proxy %s is %T, not ours", name, a)
	return nil
}

// TestLoopback: mixed listener -> our anytls proxy -> our anytls listener -> DIRECT -> local HTTP
// server and UDP echo.
func TestLoopback(t *testing.T) {
	ourProxy(t, "p-loop")
	s := socksClient(t, env.ports["mix-loop"])
	checkTCP(t, s, env.httpAddr)
	checkUDP(t, s, env.echoAddr)
}

// TestReality: the same through our proxy with reality-opts and our listener with reality-config.
func TestReality(t *testing.T) {
	ourProxy(t, "anytls-reality")
	s := socksClient(t, env.ports["mix-reality"])
	checkTCP(t, s, env.httpAddr)
	checkUDP(t, s, env.echoAddr)
}

// TestBuiltinProxyToOurListener: mihomo's built-in anytls proxy against our listener.
func TestBuiltinProxyToOurListener(t *testing.T) {
	b, err := outbound.NewAnyTLS(outbound.AnyTLSOption{
		Name: "builtin-client", Server: "127.0.0.1", Port: env.ports["anytls-in"],
		Password: env.passwords["alice"], SkipCertVerify: true, UDP: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	checkTCP(t, b, env.httpAddr)
	checkUDP(t, b, env.echoAddr)
}

// TestOurProxyToBuiltinListener: our proxy against mihomo's built-in anytls listener.
func TestOurProxyToBuiltinListener(t *testing.T) {
	ourProxy(t, "p-builtin")
	s := socksClient(t, env.ports["mix-builtin"])
	checkTCP(t, s, env.httpAddr)
	checkUDP(t, s, env.echoAddr)
}

// TestDialResultReported: our listener reports mihomo's dial result to the client (cmdSYNACK):
// a refused destination fails the stream with the server's text, a reachable one carries data.
// This also guards inbound/mihomo's reading of the tunnel's behaviour (reportConn), and shows the
// listener is ours: mihomo's built-in acknowledges every stream before dialing.
func TestDialResultReported(t *testing.T) {
	p := ourProxy(t, "p-loop")
	// The configuration disables IPv6, so mihomo refuses [::1] at once (a refused IPv4 port would
	// be retried for about 3 s, past the early SYNACK, and then only close the stream).
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	c, err := p.DialContext(ctx, metadataFor(t, C.TCP, "[::1]:"+itoa(freePort(t))))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("ping"))
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	start := time.Now()
	_, err = c.Read(make([]byte, 1))
	if !errors.Is(err, protocol.ErrRemoteRefused) {
		t.Fatalf("read from a refused destination: %v, want the server's refusal", err)
	}
	if !strings.Contains(err.Error(), "could not connect") {
		t.Errorf("refusal text %q does not say what failed", err)
	}
	if d := time.Since(start); d > protocol.DefaultEarlySynAckDelay {
		t.Errorf("refusal took %v: the early SYNACK went out before the result", d)
	}
	body, err := httpGet(t, p, env.httpAddr, "/hello")
	if err != nil || string(body) != "hello" {
		t.Fatalf("GET through the same proxy: %q, %v", body, err)
	}
}

// TestInUserRule: the user of our listener is in the metadata, so IN-USER,carol,REJECT (the
// server example's rule) rejects carol and lets alice through.
func TestInUserRule(t *testing.T) {
	if _, err := httpGet(t, socksClient(t, env.ports["mix-carol"]), env.httpAddr, "/hello"); err == nil {
		t.Fatal("carol got through IN-USER,carol,REJECT")
	}
	if body, err := httpGet(t, socksClient(t, env.ports["mix-loop"]), env.httpAddr, "/hello"); err != nil || string(body) != "hello" {
		t.Fatalf("alice: %q, %v", body, err)
	}
}

// TestFallback: a TLS client that is not anytls reaches the listener's fallback web server.
func TestFallback(t *testing.T) {
	c, err := tls.Dial("tcp", "127.0.0.1:"+itoa(env.ports["anytls-in"]), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ioTimeout))
	io.WriteString(c, "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	b, _ := io.ReadAll(c)
	if !strings.HasPrefix(string(b), "HTTP/1.1 200") || !strings.HasSuffix(string(b), "hello") {
		t.Fatalf("fallback answered %q", b)
	}
}

// TestGroupsAndProvidersUseOurs: select, url-test, GLOBAL, the inline provider and the file
// provider (also after the file changes) carry traffic on our client, and so do health checks;
// the detector refuses and counts anything else.
func TestGroupsAndProvidersUseOurs(t *testing.T) {
	a := env.api
	// Health checks started by ApplyConfig: url-test (Auto) and the file provider's.
	env.det.waitOurs(t, "anytls-tls", 1)
	env.det.waitOurs(t, "sub-tokyo", 1)
	env.det.waitOurs(t, "sub-paris", 1)
	for _, name := range []string{"anytls-tls"} {
		ourProxy(t, name)
	}

	get := func(entry, user string) {
		t.Helper()
		_, _, before := env.det.counts(user)
		body, err := httpGet(t, socksClient(t, env.ports[entry]), env.httpAddr, "/hello")
		if err != nil || string(body) != "hello" {
			t.Fatalf("%s: %q, %v", entry, body, err)
		}
		if user != "" {
			env.det.waitOurs(t, user, before+1)
		}
	}

	// select
	a.selectProxy(t, "Proxy", "anytls-tls")
	get("mix-select", "anytls-tls")
	// url-test: whichever it picked, it is ours (anytls-tls at the detector or anytls-reality).
	get("mix-auto", "")
	a.must(t, http.StatusOK, http.MethodGet, "/group/Auto/delay?url=http://"+env.httpAddr+"/generate_204&timeout=5000", nil)
	// GLOBAL
	a.selectProxy(t, "GLOBAL", "anytls-tls")
	get("mix-global", "anytls-tls")
	// The file provider, then the inline provider.
	a.selectProxy(t, "Subscription", "sub-tokyo")
	get("mix-sub", "sub-tokyo")
	a.selectProxy(t, "Subscription", "anytls-inline")
	get("mix-sub", "anytls-inline")

	// The file changes while running: sub-paris becomes sub-lisbon (and back afterwards).
	renameInProviderFile(t, "sub-paris", "sub-lisbon")
	t.Cleanup(func() { renameInProviderFile(t, "sub-lisbon", "sub-paris") })
	a.selectProxy(t, "Subscription", "sub-lisbon")
	get("mix-sub", "sub-lisbon")

	// The http provider: its health check, traffic, and an update through the controller.
	env.det.waitOurs(t, "http-1", 1)
	get("mix-remote", "http-1")
	setHTTPProvider("http-2")
	t.Cleanup(func() {
		setHTTPProvider("http-1")
		a.must(t, http.StatusNoContent, http.MethodPut, "/providers/proxies/remote", nil)
	})
	a.must(t, http.StatusNoContent, http.MethodPut, "/providers/proxies/remote", nil)
	if names := a.providerProxies(t, "remote"); !contains(names, "http-2") {
		t.Fatalf("http provider after update: %v", names)
	}
	get("mix-remote", "http-2")

	builtin, unknown := env.det.refused()
	if len(builtin) > 0 || unknown > 0 {
		t.Fatalf("detector refused sessions: built-in %v, unknown password %d", builtin, unknown)
	}
}

// TestSmux: smux on an anytls proxy is honoured as mihomo does (sing-mux over our streams; our
// listener hands the mux stream to mihomo's sing handler).
func TestSmux(t *testing.T) {
	p := tunnel.Proxies()["p-smux"]
	if !p.ProxyInfo().SMUX {
		t.Fatal("p-smux is not wrapped in sing-mux")
	}
	ourProxy(t, "p-smux")
	s := socksClient(t, env.ports["mix-smux"])
	checkTCP(t, s, env.httpAddr)
	checkUDP(t, s, env.echoAddr)
}

// renameInProviderFile renames a proxy of the file provider (its password follows) and waits
// until the running provider lists the new name.
func renameInProviderFile(t *testing.T, from, to string) {
	t.Helper()
	var content map[string]any
	if err := readYAML(providerFile(), &content); err != nil {
		t.Fatal(err)
	}
	for _, item := range content["proxies"].([]any) {
		p := item.(map[string]any)
		if p["name"] == from {
			p["name"] = to
			p["password"] = detectorPassword(to)
		}
	}
	if err := writeProviderFile(content); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(ioTimeout)
	for !contains(env.api.providerProxies(t, "subscription"), to) {
		if time.Now().After(deadline) {
			t.Fatalf("the file provider did not pick up %s: %v", to, env.api.providerProxies(t, "subscription"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestReloadKeepsOurs: PUT /configs through the external controller (from the file and with a
// payload) keeps our adapters and listeners, and a bad anytls entry is refused with its name and
// key while the running configuration stays.
func TestReloadKeepsOurs(t *testing.T) {
	a := env.api
	a.must(t, http.StatusNoContent, http.MethodPut, "/configs?force=true", map[string]string{"path": ""})
	ourProxy(t, "p-loop")
	ourProxy(t, "anytls-tls")
	checkTCP(t, socksClient(t, env.ports["mix-loop"]), env.httpAddr)

	// A payload with one more anytls proxy at the detector.
	payload := strings.Replace(string(env.configYAML), "proxies:\n", "proxies:\n    - {name: reload-1, type: anytls, server: 127.0.0.1, port: "+itoa(env.det.port())+", password: "+detectorPassword("reload-1")+", sni: localhost, skip-cert-verify: true}\n", 1)
	if payload == string(env.configYAML) {
		t.Fatal("could not add a proxy to the configuration")
	}
	a.must(t, http.StatusNoContent, http.MethodPut, "/configs", map[string]string{"payload": payload})
	ourProxy(t, "reload-1")
	a.selectProxy(t, "GLOBAL", "reload-1")
	body, err := httpGet(t, socksClient(t, env.ports["mix-global"]), env.httpAddr, "/hello")
	if err != nil || string(body) != "hello" {
		t.Fatalf("after reload: %q, %v", body, err)
	}
	env.det.waitOurs(t, "reload-1", 1)
	checkUDP(t, socksClient(t, env.ports["mix-loop"]), env.echoAddr)

	bad := strings.Replace(payload, "name: reload-1,", "name: reload-1, padding-scheme: 'stop=x',", 1)
	code, b, err := a.do(http.MethodPut, "/configs", map[string]string{"payload": bad})
	if err != nil || code != http.StatusBadRequest || !strings.Contains(string(b), `reload-1`) || !strings.Contains(string(b), `padding-scheme`) {
		t.Fatalf("bad reload: %d %s %v", code, b, err)
	}
	ourProxy(t, "reload-1") // still running

	builtin, unknown := env.det.refused()
	if len(builtin) > 0 || unknown > 0 {
		t.Fatalf("detector refused sessions: built-in %v, unknown password %d", builtin, unknown)
	}
}

// TestUpgradeRefused: the controller's core upgrade would replace this binary.
func TestUpgradeRefused(t *testing.T) {
	for _, path := range []string{"/upgrade", "/upgrade/"} {
		code, b, err := env.api.do(http.MethodPost, path, nil)
		if err != nil || code != http.StatusForbidden {
			t.Errorf("POST %s: %d %s %v", path, code, b, err)
		}
	}
	_ = mihomorun.PinnedMihomoVersion
}

func itoa(n int) string { return strconv.Itoa(n) }

// unwrapAutoClose returns the adapter inside mihomo's (unexported) auto-close wrapper, which
// embeds it as the exported field ProxyAdapter.
func unwrapAutoClose(a C.ProxyAdapter) (C.ProxyAdapter, bool) {
	v := reflect.ValueOf(a)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return nil, false
	}
	f := v.Elem().FieldByName("ProxyAdapter")
	if !f.IsValid() || !f.CanInterface() || f.IsNil() {
		return nil, false
	}
	inner, ok := f.Interface().(C.ProxyAdapter)
	return inner, ok
}

// TestDetectorTellsClientsApart: the detector used above refuses mihomo's built-in anytls client
// and serves ours, so its counts prove which one carried a proxy.
func TestDetectorTellsClientsApart(t *testing.T) {
	d := startDetector(t, env.cert, "x")
	defer d.close()
	b, err := outbound.NewAnyTLS(outbound.AnyTLSOption{
		Name: "x", Server: "127.0.0.1", Port: d.port(), Password: detectorPassword("x"), SkipCertVerify: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := httpGet(t, b, env.httpAddr, "/hello"); err == nil {
		t.Fatal("the detector served mihomo's built-in client")
	}
	if _, builtin, _ := d.counts("x"); builtin != 1 {
		t.Fatalf("built-in sessions counted: %d, want 1", builtin)
	}
	ours, err := outmihomo.ParseProxy(map[string]any{
		"name": "x", "type": "anytls", "server": "127.0.0.1", "port": d.port(),
		"password": detectorPassword("x"), "skip-cert-verify": true,
	}, "")
	if err != nil {
		t.Fatal(err)
	}
	defer ours.Close()
	if body, err := httpGet(t, ours, env.httpAddr, "/hello"); err != nil || string(body) != "hello" {
		t.Fatalf("our client at the detector: %q, %v", body, err)
	}
	if n, _, _ := d.counts("x"); n != 1 {
		t.Fatalf("our sessions counted: %d, want 1", n)
	}
}
