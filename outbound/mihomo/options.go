package mihomo

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/anytls-engine/anytls/internal/mihomohost"
	aoption "github.com/anytls-engine/anytls/option"

	"github.com/metacubex/mihomo/adapter/outbound"
	"github.com/metacubex/mihomo/common/structure"
	"github.com/metacubex/mihomo/component/ca"
	"github.com/metacubex/mihomo/ntp"
)

// Options is one `type: anytls` entry under `proxies:`. The embedded AnyTLSOption is exactly
// mihomo's built-in (same keys, same decoder, same meaning); the rest are this engine's keys,
// each the mihomo spelling (kebab-case) of the option.ClientOptions field of the same name, whose
// defaults apply when a key is absent.
type Options struct {
	outbound.AnyTLSOption

	// RealityOpts connects with Reality (as mihomo's vless proxies spell it: public-key,
	// short-id); it needs a client-fingerprint (uTLS), as with vless.
	RealityOpts outbound.RealityOptions `proxy:"reality-opts,omitempty"`
	// Smux wraps the proxy in sing-mux, as mihomo does for every proxy type.
	Smux outbound.SingMuxOption `proxy:"smux,omitempty"`

	PaddingScheme        string              `proxy:"padding-scheme,omitempty"`
	DisableSessionReuse  bool                `proxy:"disable-session-reuse,omitempty"`
	MaxStreamsPerSession int                 `proxy:"max-streams-per-session,omitempty"`
	ClientName           string              `proxy:"client-name,omitempty"`
	HeartbeatInterval    mihomohost.Duration `proxy:"heartbeat-interval,omitempty"`
	HeartbeatTimeout     mihomohost.Duration `proxy:"heartbeat-timeout,omitempty"`
	SynAckTimeout        mihomohost.Duration `proxy:"synack-timeout,omitempty"`
	DialTimeout          mihomohost.Duration `proxy:"dial-timeout,omitempty"`
	StreamBufferSize     int                 `proxy:"stream-buffer-size,omitempty"`
	StreamStallTimeout   mihomohost.Duration `proxy:"stream-stall-timeout,omitempty"`
	DisableHalfClose     bool                `proxy:"disable-half-close,omitempty"`
	MaxVersion           int                 `proxy:"max-version,omitempty"`
}

// ConfigError names the proxy and, where one key is at fault, the key.
type ConfigError struct {
	Proxy string // the proxy's name, or "#3" (its index) when it has none
	Key   string // mihomo's key, e.g. "padding-scheme"; empty when the decoder's text names it
	Err   error
}

func (e *ConfigError) Error() string {
	if e.Key == "" {
		return fmt.Sprintf("anytls proxy %q: %v", e.Proxy, e.Err)
	}
	return fmt.Sprintf("anytls proxy %q: key %q: %v", e.Proxy, e.Key, e.Err)
}

func (e *ConfigError) Unwrap() error { return e.Err }

// decoder is mihomo's own proxy decoder (adapter/parser.go), so keys mean what they mean there.
var decoder = structure.NewDecoder(structure.Option{TagName: "proxy", WeaklyTypedInput: true, KeyReplacer: structure.DefaultKeyReplacer})

// ParseOptions decodes and validates one proxy mapping. ref names the entry in errors when the
// mapping has no usable name (for example "proxies[3]"). basic carries the fields mihomo sets
// itself (provider name, API dialer).
func ParseOptions(mapping map[string]any, ref string, basic outbound.BasicOption) (Options, error) {
	name := ref
	if n, ok := mapping["name"].(string); ok && n != "" {
		name = n
	}
	opts := Options{AnyTLSOption: outbound.AnyTLSOption{BasicOption: basic}}
	if err := decoder.Decode(mapping, &opts); err != nil {
		return Options{}, &ConfigError{Proxy: name, Err: err}
	}
	if err := opts.Validate(); err != nil {
		return Options{}, err
	}
	return opts, nil
}

// Validate checks what the built-in would only find out when dialing, and the engine's options.
func (o *Options) Validate() error {
	fail := func(key string, err error) error { return &ConfigError{Proxy: o.Name, Key: key, Err: err} }
	if o.Name == "" {
		return fail("name", errors.New("is required"))
	}
	if o.Server == "" {
		return fail("server", errors.New("is required"))
	}
	if o.Port < 1 || o.Port > 65535 {
		return fail("port", fmt.Errorf("%d is not a port (1-65535)", o.Port))
	}
	if o.IdleSessionCheckInterval < 0 {
		return fail("idle-session-check-interval", fmt.Errorf("%d must not be negative", o.IdleSessionCheckInterval))
	}
	if o.IdleSessionTimeout < 0 {
		return fail("idle-session-timeout", fmt.Errorf("%d must not be negative", o.IdleSessionTimeout))
	}
	if _, err := o.ECHOpts.Parse(); err != nil {
		return fail("ech-opts", err)
	}
	if _, err := o.RealityOpts.Parse(); err != nil {
		return fail("reality-opts", err)
	}
	if o.RealityOpts.PublicKey != "" && o.ClientFingerprint == "none" {
		return fail("client-fingerprint", errors.New(`"none" cannot carry reality-opts: Reality needs a uTLS fingerprint such as chrome`))
	}
	if o.Fingerprint != "" {
		if _, err := ca.NewFingerprintVerifier(o.Fingerprint, ntp.Now); err != nil {
			return fail("fingerprint", err)
		}
	}
	if o.Certificate != "" || o.PrivateKey != "" {
		if _, err := ca.NewTLSKeyPairLoader(o.Certificate, o.PrivateKey); err != nil {
			return fail("certificate", err)
		}
	}
	if _, err := o.ClientOptions().ProtocolConfig(); err != nil {
		var fe *aoption.FieldError
		if errors.As(err, &fe) {
			return fail(mihomoKey(fe.Field), errors.New(strings.TrimPrefix(fieldReason(fe), " ")))
		}
		return &ConfigError{Proxy: o.Name, Err: err}
	}
	return nil
}

// ClientOptions maps the options onto the engine's host-neutral client options.
func (o *Options) ClientOptions() aoption.ClientOptions {
	return aoption.ClientOptions{
		Password:                 o.Password,
		PaddingScheme:            o.PaddingScheme,
		IdleSessionCheckInterval: time.Duration(o.IdleSessionCheckInterval) * time.Second,
		IdleSessionTimeout:       time.Duration(o.IdleSessionTimeout) * time.Second,
		MinIdleSession:           o.MinIdleSession,
		DisableSessionReuse:      o.DisableSessionReuse,
		MaxStreamsPerSession:     o.MaxStreamsPerSession,
		ClientName:               o.ClientName,
		HeartbeatInterval:        time.Duration(o.HeartbeatInterval),
		HeartbeatTimeout:         time.Duration(o.HeartbeatTimeout),
		SynAckTimeout:            time.Duration(o.SynAckTimeout),
		DialTimeout:              time.Duration(o.DialTimeout),
		StreamBufferSize:         o.StreamBufferSize,
		StreamStallTimeout:       time.Duration(o.StreamStallTimeout),
		DisableHalfClose:         o.DisableHalfClose,
		MaxVersion:               o.MaxVersion,
	}
}

// mihomoKey turns option's snake_case field ("padding_scheme", "users[0].password") into the
// mihomo key that set it.
func mihomoKey(field string) string {
	return strings.ReplaceAll(field, "_", "-")
}

func fieldReason(fe *aoption.FieldError) string {
	switch v := fe.Value.(type) {
	case string:
		if v == "" {
			return fe.Reason
		}
		return strconv.Quote(v) + ": " + fe.Reason
	case nil:
		return fe.Reason
	default:
		return fmt.Sprint(v) + ": " + fe.Reason
	}
}
