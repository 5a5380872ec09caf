package mihomorun

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	outmihomo "github.com/anytls-engine/anytls/outbound/mihomo"

	"github.com/metacubex/mihomo/adapter"
	"github.com/metacubex/mihomo/adapter/outbound"
	"github.com/metacubex/mihomo/adapter/provider"
	C "github.com/metacubex/mihomo/constant"
)

// These tests guard pinned.go: they fail when mihomo is upgraded or its internals change shape,
// so that the reflection is re-verified before anything ships.

func TestPinnedMihomoVersion(t *testing.T) {
	if v := MihomoVersion(); v != PinnedMihomoVersion {
		t.Fatalf("linked mihomo is %q, pinned.go was verified against %s: re-verify its field accesses, then update PinnedMihomoVersion", v, PinnedMihomoVersion)
	}
}

func builtinForTest(t *testing.T) *outbound.AnyTLS {
	t.Helper()
	b, err := outbound.NewAnyTLS(outbound.AnyTLSOption{
		BasicOption: outbound.BasicOption{DialerProxy: "dp", ProviderName: "pv"},
		Name:        "b", Server: "127.0.0.1", Port: 9, Password: "secret", SNI: "example.test", UDP: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func TestPinnedBuiltinOptions(t *testing.T) {
	b := builtinForTest(t)
	opt, err := builtinOptions(b)
	if err != nil {
		t.Fatal(err)
	}
	if opt.Name != "b" || opt.Password != "secret" || opt.SNI != "example.test" || !opt.UDP || opt.DialerProxy != "dp" || opt.ProviderName != "pv" {
		t.Fatalf("options read back: %+v", opt)
	}
}

func TestPinnedFindBuiltin(t *testing.T) {
	b := builtinForTest(t)
	if got := findBuiltin(b); got != b {
		t.Fatal("bare adapter not found")
	}
	if got := findBuiltin(outbound.NewAutoCloseProxyAdapter(b)); got != b {
		t.Fatal("not found inside the auto-close wrapper")
	}
	mux, err := outbound.NewSingMux(outbound.SingMuxOption{Enabled: true}, b)
	if err != nil {
		t.Fatal(err)
	}
	if got := findBuiltin(outbound.NewAutoCloseProxyAdapter(mux)); got != b {
		t.Fatal("not found inside sing-mux inside the auto-close wrapper")
	}
	if got := findBuiltin(outbound.NewDirect()); got != nil {
		t.Fatal("found in DIRECT")
	}
}

// TestProviderParserWrapped builds a real file provider, wraps its fetcher's parser, updates it
// from the file and checks that the proxies carry our adapter with the provider's override
// applied and the entry's own keys kept.
func TestProviderParserWrapped(t *testing.T) {
	home := t.TempDir()
	C.SetHomeDir(home)
	path := filepath.Join(home, "sub.yaml")
	content := `proxies:
  - {name: a, type: anytls, server: 127.0.0.1, port: 9, password: real-secret, heartbeat-interval: 7s, udp: true}
  - {name: b, type: socks5, server: 127.0.0.1, port: 9}
`
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	pd, err := provider.ParseProxyProvider("sub", map[string]any{
		"type": "file",
		"path": path,
		"override": map[string]any{
			"additional-prefix": "x-",
			"skip-cert-verify":  true,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	pp, ok := pd.(*provider.ProxySetProvider)
	if !ok {
		t.Fatalf("file provider is %T", pd)
	}
	defer pp.Close()
	if err := wrapProviderParser(pp); err != nil {
		t.Fatal(err)
	}
	if err := pp.Update(); err != nil {
		t.Fatal(err)
	}
	proxies := pp.Proxies()
	if len(proxies) != 2 {
		t.Fatalf("%d proxies", len(proxies))
	}
	defer func() {
		for _, p := range proxies {
			p.Close()
		}
	}()
	ours := unwrapOurs(t, proxies[0])
	o := ours.Options()
	if o.Name != "x-a" || o.Password != "real-secret" || !o.SkipCertVerify || time.Duration(o.HeartbeatInterval) != 7*time.Second || !o.UDP {
		t.Fatalf("options of ours: name %q password %q skip-cert-verify %v heartbeat-interval %v udp %v",
			o.Name, o.Password, o.SkipCertVerify, time.Duration(o.HeartbeatInterval), o.UDP)
	}
	if got := ours.ProxyInfo().ProviderName; got != "sub" {
		t.Fatalf("provider name %q", got)
	}
	if proxies[1].Type() != C.Socks5 {
		t.Fatalf("second proxy is %v", proxies[1].Type())
	}

	// A bad anytls entry fails the update with the proxy and the key.
	bad := `proxies:
  - {name: c, type: anytls, server: 127.0.0.1, port: 9, password: p, padding-scheme: "stop=x"}
`
	if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	err = pp.Update()
	if err == nil || !strings.Contains(err.Error(), `"c"`) || !strings.Contains(err.Error(), "padding-scheme") {
		t.Fatalf("update with a bad entry: %v", err)
	}
}

func unwrapOurs(t *testing.T, p C.Proxy) *outmihomo.Proxy {
	t.Helper()
	a := p.(*adapter.Proxy).ProxyAdapter
	if findBuiltin(a) != nil {
		t.Fatal("the built-in anytls adapter is still in place")
	}
	for range 4 {
		if ours, ok := a.(*outmihomo.Proxy); ok {
			return ours
		}
		if sm, ok := a.(*outbound.SingMux); ok {
			a = sm.ProxyAdapter
			continue
		}
		inner, ok := unwrapField(a)
		if !ok {
			break
		}
		a = inner
	}
	t.Fatalf("adapter is %T, not ours", a)
	return nil
}
