// Package mihomorun runs mihomo configurations with every `type: anytls` proxy and listener served
// by this module's engine (outbound/mihomo, inbound/mihomo) instead of mihomo's built-in.
//
// mihomo has no registry for protocol types, so the wiring works from outside its source
// (../shared/notes/mihomo-host.md):
//
//   - Before mihomo parses a configuration, every anytls proxy entry (top level and in provider
//     payloads) is decoded and validated with our options, so that a bad entry is refused with
//     its name and key, and its password is replaced by a marker. Anytls listeners are taken out
//     of the configuration and built as ours.
//   - mihomo then parses the configuration as usual (groups, rules, providers, DNS, ...).
//   - Every proxy object mihomo built around a built-in anytls adapter (wherever it is: the proxy
//     map, groups, GLOBAL, inline providers, provider payloads) gets ours in its place. Groups and
//     health checks hold the same *adapter.Proxy, so they use ours. The marker finds the entry;
//     the built-in's decoded options carry what a provider's override changed.
//   - File and http providers parse their content later (and again on every change); their
//     parser is wrapped so the same replacement happens each time (pinned.go).
//   - The external controller's PUT /configs re-parses through this wiring; POST /upgrade, which
//     would replace this binary by an upstream mihomo download, is refused.
//
// A built-in that escaped replacement would carry a marker for a password and fail to
// authenticate: it can never silently carry traffic.
package mihomorun

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"

	inmihomo "github.com/anytls-engine/anytls/inbound/mihomo"
	outmihomo "github.com/anytls-engine/anytls/outbound/mihomo"

	"github.com/metacubex/mihomo/adapter"
	"github.com/metacubex/mihomo/adapter/outbound"
	"github.com/metacubex/mihomo/adapter/provider"
	"github.com/metacubex/mihomo/common/convert"
	"github.com/metacubex/mihomo/common/yaml"
	"github.com/metacubex/mihomo/config"
	C "github.com/metacubex/mihomo/constant"
	"github.com/metacubex/mihomo/log"
)

// Parse parses a mihomo configuration, as executor.ParseWithBytes does, with anytls on this
// engine. Nothing runs until the configuration is applied (hub.ApplyConfig).
func Parse(buf []byte) (*config.Config, error) {
	raw, err := config.UnmarshalRawConfig(buf)
	if err != nil {
		return nil, err
	}
	return ParseRaw(raw)
}

// ParseRaw is Parse for an unmarshalled configuration; it modifies raw.
func ParseRaw(raw *config.RawConfig) (*config.Config, error) {
	w, err := newWiring()
	if err != nil {
		return nil, err
	}
	listeners, err := w.prepare(raw)
	if err != nil {
		return nil, err
	}
	cfg, err := config.ParseRawConfig(raw)
	if err != nil {
		return nil, err
	}
	if err := w.patch(cfg, listeners); err != nil {
		Discard(cfg)
		return nil, err
	}
	return cfg, nil
}

// Discard releases what parsing a configuration created (proxy clients, providers) when the
// configuration will not be applied.
func Discard(cfg *config.Config) {
	for _, p := range cfg.Proxies {
		p.Close()
	}
	for _, pd := range cfg.Providers {
		for _, p := range pd.Proxies() {
			p.Close()
		}
		if c, ok := pd.(io.Closer); ok {
			c.Close()
		}
	}
}

// wiring holds the markers of one parse.
type wiring struct {
	nonce string
	n     int
	marks map[string]outmihomo.Options // marker password -> the entry's options
}

func newWiring() (*wiring, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	return &wiring{nonce: hex.EncodeToString(b[:]), marks: map[string]outmihomo.Options{}}, nil
}

func isAnyTLS(mapping map[string]any) bool {
	t, _ := mapping["type"].(string)
	return t == "anytls"
}

// mark validates an anytls proxy entry and returns a copy whose password is a marker.
func (w *wiring) mark(mapping map[string]any, ref string) (map[string]any, error) {
	opts, err := outmihomo.ParseOptions(mapping, ref, outbound.BasicOption{})
	if err != nil {
		return nil, err
	}
	marker := fmt.Sprintf("anytls-engine-%s-%d", w.nonce, w.n)
	w.n++
	w.marks[marker] = opts
	m := maps.Clone(mapping)
	m["password"] = marker
	return m, nil
}

// prepare validates and marks the anytls proxies of raw and takes its anytls listeners out,
// returning them built as ours.
func (w *wiring) prepare(raw *config.RawConfig) ([]*inmihomo.Listener, error) {
	for i, mapping := range raw.Proxy {
		if !isAnyTLS(mapping) {
			continue
		}
		m, err := w.mark(mapping, fmt.Sprintf("proxies[%d]", i))
		if err != nil {
			return nil, err
		}
		raw.Proxy[i] = m
	}
	for _, name := range slices.Sorted(maps.Keys(raw.ProxyProvider)) {
		pm := raw.ProxyProvider[name]
		payload, ok := pm["payload"].([]any)
		if !ok {
			continue
		}
		marked := slices.Clone(payload)
		changed := false
		for j, item := range payload {
			mapping, ok := item.(map[string]any)
			if !ok || !isAnyTLS(mapping) {
				continue
			}
			m, err := w.mark(mapping, fmt.Sprintf("proxy-providers.%s.payload[%d]", name, j))
			if err != nil {
				return nil, fmt.Errorf("proxy provider %s: %w", name, err)
			}
			marked[j] = m
			changed = true
		}
		if changed {
			pm = maps.Clone(pm)
			pm["payload"] = marked
			raw.ProxyProvider[name] = pm
		}
	}
	var ours []*inmihomo.Listener
	kept := make([]map[string]any, 0, len(raw.Listeners))
	names := map[string]bool{}
	for i, mapping := range raw.Listeners {
		if !isAnyTLS(mapping) {
			kept = append(kept, mapping)
			continue
		}
		opts, err := inmihomo.ParseOptions(mapping, fmt.Sprintf("listeners[%d]", i))
		if err != nil {
			return nil, err
		}
		l, err := inmihomo.New(opts)
		if err != nil {
			return nil, err
		}
		if names[l.Name()] {
			return nil, fmt.Errorf("listener %s is the duplicate name", l.Name())
		}
		names[l.Name()] = true
		ours = append(ours, l)
	}
	raw.Listeners = kept
	return ours, nil
}

// patch puts our adapters and listeners into a parsed configuration.
func (w *wiring) patch(cfg *config.Config, listeners []*inmihomo.Listener) error {
	seen := map[*adapter.Proxy]bool{}
	for _, name := range slices.Sorted(maps.Keys(cfg.Proxies)) {
		if err := w.replace(cfg.Proxies[name], seen); err != nil {
			return err
		}
	}
	for _, name := range slices.Sorted(maps.Keys(cfg.Providers)) {
		pd := cfg.Providers[name]
		for _, p := range pd.Proxies() {
			if err := w.replace(p, seen); err != nil {
				return fmt.Errorf("proxy provider %s: %w", name, err)
			}
		}
		if pp, ok := pd.(*provider.ProxySetProvider); ok {
			if err := wrapProviderParser(pp); err != nil {
				return fmt.Errorf("proxy provider %s: %w", name, err)
			}
		}
	}
	for _, l := range listeners {
		if _, dup := cfg.Listeners[l.Name()]; dup {
			return fmt.Errorf("listener %s is the duplicate name", l.Name())
		}
		cfg.Listeners[l.Name()] = l
	}
	return nil
}

// replace gives p our adapter if mihomo built it around its built-in anytls adapter.
func (w *wiring) replace(p C.Proxy, seen map[*adapter.Proxy]bool) error {
	ap, ok := p.(*adapter.Proxy)
	if !ok || seen[ap] {
		return nil
	}
	seen[ap] = true
	builtin := findBuiltin(ap.ProxyAdapter)
	if builtin == nil {
		return nil
	}
	effective, err := builtinOptions(builtin)
	if err != nil {
		return err
	}
	opts, ok := w.marks[effective.Password]
	if !ok {
		return fmt.Errorf("anytls proxy %q: built by mihomo outside the anytls engine's wiring", effective.Name)
	}
	password := opts.Password
	// What mihomo decoded (with a provider's override, dialer-proxy and name changes applied)
	// wins; the engine's keys, reality-opts and smux come from the entry itself.
	opts.AnyTLSOption = effective
	opts.Password = password
	a, err := outmihomo.NewAdapter(opts)
	if err != nil {
		return err
	}
	old := ap.ProxyAdapter
	ap.ProxyAdapter = a
	old.Close()
	return nil
}

// proxySchema is the content of a proxy provider's file or URL.
type proxySchema struct {
	Proxies []map[string]any `yaml:"proxies"`
}

// wrapProviderParser makes a file or http provider build our adapters whenever it parses its
// content.
func wrapProviderParser(pp *provider.ProxySetProvider) error {
	field, err := fetcherParser(pp.Fetcher)
	if err != nil {
		return err
	}
	orig := *field
	name := pp.Name()
	*field = func(buf []byte) ([]C.Proxy, error) {
		proxies, err := parseProviderContent(name, buf, orig)
		if err != nil {
			log.Errorln("[Provider] %s: %v", name, err)
		}
		return proxies, err
	}
	return nil
}

// parseProviderContent marks the anytls entries of a provider's content, lets mihomo's parser
// (filters, override, dialer-proxy) build the proxies, then gives them our adapters.
func parseProviderContent(name string, buf []byte, orig func([]byte) ([]C.Proxy, error)) ([]C.Proxy, error) {
	w, err := newWiring()
	if err != nil {
		return nil, err
	}
	var schema proxySchema
	if yaml.Unmarshal(buf, &schema) != nil {
		schema.Proxies, _ = convert.ConvertsV2Ray(buf) // as mihomo's parser: base64 share links
	}
	changed := false
	for i, mapping := range schema.Proxies {
		if mapping == nil || !isAnyTLS(mapping) {
			continue
		}
		m, err := w.mark(mapping, fmt.Sprintf("proxies[%d]", i))
		if err != nil {
			return nil, err
		}
		schema.Proxies[i] = m
		changed = true
	}
	if changed {
		if buf, err = yaml.Marshal(schema); err != nil {
			return nil, err
		}
	}
	proxies, err := orig(buf)
	if err != nil {
		return nil, err
	}
	seen := map[*adapter.Proxy]bool{}
	var errs []error
	for _, p := range proxies {
		if err := w.replace(p, seen); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		for _, p := range proxies {
			p.Close()
		}
		return nil, err
	}
	return proxies, nil
}
