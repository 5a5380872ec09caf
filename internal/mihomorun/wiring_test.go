package mihomorun

import (
	"strings"
	"testing"
	"time"

	"github.com/metacubex/mihomo/adapter"
	"github.com/metacubex/mihomo/adapter/outbound"
)

// TestParseRefusesBadEntries: a bad anytls entry is refused with an error that names the proxy
// (or listener) and the key, wherever the entry is.
func TestParseRefusesBadEntries(t *testing.T) {
	const proxy = "  - {name: bad-one, type: anytls, server: 127.0.0.1, port: 443, password: pw"
	const listener = "  - {name: bad-in, type: anytls, port: 0, users: {u: pw}"
	cases := []struct {
		name, yaml, key string
	}{
		{"padding scheme", "proxies:\n" + proxy + ", padding-scheme: 'stop=x'}\n", "padding-scheme"},
		{"reality public key", "proxies:\n" + proxy + ", client-fingerprint: chrome, reality-opts: {public-key: not-a-key}}\n", "reality-opts"},
		{"port", "proxies:\n  - {name: bad-one, type: anytls, server: 127.0.0.1, port: 70000, password: pw}\n", "port"},
		{"port type", "proxies:\n  - {name: bad-one, type: anytls, server: 127.0.0.1, port: https, password: pw}\n", "port"},
		{"empty password", "proxies:\n  - {name: bad-one, type: anytls, server: 127.0.0.1, port: 443, password: ''}\n", "password"},
		{"missing server", "proxies:\n  - {name: bad-one, type: anytls, port: 443, password: pw}\n", "server"},
		{"duration", "proxies:\n" + proxy + ", heartbeat-interval: soon}\n", "heartbeat-interval"},
		{"negative", "proxies:\n" + proxy + ", min-idle-session: -1}\n", "min-idle-session"},
		{"stream buffer", "proxies:\n" + proxy + ", stream-buffer-size: 10}\n", "stream-buffer-size"},
		{"max version", "proxies:\n" + proxy + ", max-version: 3}\n", "max-version"},
		{"fingerprint", "proxies:\n" + proxy + ", fingerprint: zz}\n", "fingerprint"},
		{"ech", "proxies:\n" + proxy + ", ech-opts: {enable: true, config: '%%%'}}\n", "ech-opts"},
		{"inline provider", "proxy-providers:\n  p:\n    type: inline\n    payload:\n    " + proxy + ", padding-scheme: 'stop=x'}\n", "padding-scheme"},
		{"file provider payload", "proxy-providers:\n  p:\n    type: file\n    path: ./p.yaml\n    payload:\n    " + proxy + ", max-version: 9}\n", "max-version"},
		{"listener certificate", "listeners:\n" + listener + "}\n", "certificate"},
		{"listener users", "listeners:\n  - {name: bad-in, type: anytls, port: 0, users: {}, certificate: c, private-key: k}\n", "users"},
		{"listener empty password", "listeners:\n  - {name: bad-in, type: anytls, port: 0, users: {u: ''}, certificate: c, private-key: k}\n", "users.u"},
		{"listener reality key", "listeners:\n" + listener + ", reality-config: {dest: 127.0.0.1:1, private-key: short, short-id: [''], server-names: [a]}}\n", "reality-config"},
		{"listener reality and certificate", "listeners:\n" + listener + ", certificate: c, private-key: k, reality-config: {dest: 127.0.0.1:1, private-key: YVhxpzXArFJdtUg0zqATLo99laaPaGo6N7z1EgBB94E, short-id: [''], server-names: [a]}}\n", "certificate"},
		{"listener duration", "listeners:\n" + listener + ", certificate: c, private-key: k, auth-timeout: x}\n", "auth-timeout"},
		{"listener padding", "listeners:\n" + listener + ", certificate: c, private-key: k, padding-scheme: 'stop=x'}\n", "padding-scheme"},
		{"listener fallback", "listeners:\n" + listener + ", certificate: c, private-key: k, fallback: nowhere}\n", "fallback"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tc.yaml))
			if err == nil {
				Discard(cfg)
				t.Fatal("accepted")
			}
			msg := err.Error()
			wantName := "bad-one"
			if strings.HasPrefix(tc.yaml, "listeners") {
				wantName = "bad-in"
			}
			if !strings.Contains(msg, wantName) || !strings.Contains(msg, tc.key) {
				t.Fatalf("error %q does not name %s and %s", msg, wantName, tc.key)
			}
		})
	}
}

// TestParseReplacesEverywhere: proxies, a proxy with smux, inline provider proxies with an
// override, and the groups holding them end up with our adapter; unrelated proxies stay as they
// are. Nothing is applied.
func TestParseReplacesEverywhere(t *testing.T) {
	cfg, err := Parse([]byte(`
proxies:
  - {name: a, type: anytls, server: 127.0.0.1, port: 9, password: pa, synack-timeout: 3s}
  - {name: m, type: anytls, server: 127.0.0.1, port: 9, password: pm, smux: {enabled: true, protocol: h2mux}}
  - {name: s, type: socks5, server: 127.0.0.1, port: 9}
proxy-providers:
  inl:
    type: inline
    override: {additional-suffix: "-x", skip-cert-verify: true, udp: true}
    payload:
      - {name: i, type: anytls, server: 127.0.0.1, port: 9, password: pi}
proxy-groups:
  - {name: G, type: select, proxies: [a, m, s], use: [inl]}
`))
	if err != nil {
		t.Fatal(err)
	}
	defer Discard(cfg)
	a := unwrapOurs(t, cfg.Proxies["a"])
	if o := a.Options(); o.Password != "pa" || time.Duration(o.SynAckTimeout) != 3*time.Second {
		t.Fatalf("a: %+v", o)
	}
	mux := cfg.Proxies["m"].(*adapter.Proxy).ProxyAdapter
	if !mux.ProxyInfo().SMUX {
		t.Fatal("m: smux not applied")
	}
	if o := unwrapOurs(t, cfg.Proxies["m"]).Options(); o.Password != "pm" {
		t.Fatalf("m: %+v", o)
	}
	if _, ok := cfg.Proxies["s"].(*adapter.Proxy).ProxyAdapter.(*outbound.Socks5); !ok {
		if inner, _ := unwrapField(cfg.Proxies["s"].(*adapter.Proxy).ProxyAdapter); inner == nil {
			t.Fatalf("s changed: %T", cfg.Proxies["s"].(*adapter.Proxy).ProxyAdapter)
		}
	}
	inl := cfg.Providers["inl"].Proxies()
	if len(inl) != 1 {
		t.Fatalf("inline provider has %d proxies", len(inl))
	}
	if o := unwrapOurs(t, inl[0]).Options(); o.Name != "i-x" || o.Password != "pi" || !o.SkipCertVerify || !o.UDP || o.ProviderName != "inl" {
		t.Fatalf("inline proxy: name %q password %q skip %v udp %v provider %q", o.Name, o.Password, o.SkipCertVerify, o.UDP, o.ProviderName)
	}
	// The group holds the same proxy objects.
	for _, p := range cfg.Providers["G"].Proxies() {
		if p.Type().String() == "AnyTLS" {
			unwrapOurs(t, p)
		}
	}
}
