package mihomo

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/anytls-engine/anytls/internal/mihomohost"
	aoption "github.com/anytls-engine/anytls/option"

	"github.com/metacubex/mihomo/common/structure"
	C "github.com/metacubex/mihomo/constant"
	IN "github.com/metacubex/mihomo/listener/inbound"
)

// Options is one `type: anytls` entry under `listeners:`. The first block has exactly the keys of
// mihomo's built-in anytls listener (listener/inbound.AnyTLSOption), except that certificate and
// private-key may be left out when reality-config is given; reality-config is spelled as mihomo's
// vless listener spells it. The rest are this engine's keys, each the mihomo spelling of the
// option.ServerOptions field of the same name, whose defaults apply when a key is absent.
type Options struct {
	IN.BaseOption
	Users          map[string]string `inbound:"users,omitempty"`
	Certificate    string            `inbound:"certificate,omitempty"`
	PrivateKey     string            `inbound:"private-key,omitempty"`
	ClientAuthType string            `inbound:"client-auth-type,omitempty"`
	ClientAuthCert string            `inbound:"client-auth-cert,omitempty"`
	EchKey         string            `inbound:"ech-key,omitempty"`
	PaddingScheme  string            `inbound:"padding-scheme,omitempty"`
	RealityConfig  IN.RealityConfig  `inbound:"reality-config,omitempty"`

	Fallback             string              `inbound:"fallback,omitempty"`
	AuthTimeout          mihomohost.Duration `inbound:"auth-timeout,omitempty"`
	IdleSessionTimeout   mihomohost.Duration `inbound:"idle-session-timeout,omitempty"`
	MaxSessions          int                 `inbound:"max-sessions,omitempty"`
	MaxStreamsPerSession int                 `inbound:"max-streams-per-session,omitempty"`
	EarlySynAckDelay     mihomohost.Duration `inbound:"early-synack-delay,omitempty"`
	AddressTimeout       mihomohost.Duration `inbound:"address-timeout,omitempty"`
	StreamBufferSize     int                 `inbound:"stream-buffer-size,omitempty"`
	StreamStallTimeout   mihomohost.Duration `inbound:"stream-stall-timeout,omitempty"`
	PadDownstream        bool                `inbound:"pad-downstream,omitempty"`
	DisableHalfClose     bool                `inbound:"disable-half-close,omitempty"`
	MaxVersion           int                 `inbound:"max-version,omitempty"`

	listener *Listener `inbound:"-"` // the listener built from these options (see Equal)
}

var _ C.InboundConfig = (*Options)(nil)

// Equal implements C.InboundConfig: mihomo keeps a running listener across a reload when the
// new options are equal. Options of another listener type are never equal. mihomo calls it on a
// running listener's options while applying a configuration; when only the users differ, the
// running listener takes the new users in place (see Listener.adoptUsers) and the options count
// as equal, so that the other users' sessions are not dropped.
func (o *Options) Equal(config C.InboundConfig) bool {
	other, ok := config.(*Options)
	if !ok {
		return false
	}
	a, _ := json.Marshal(o)
	b, _ := json.Marshal(other)
	return string(a) == string(b) || (o.listener != nil && o.listener.adoptUsers(other))
}

// ConfigError names the listener and, where one key is at fault, the key.
type ConfigError struct {
	Listener string // the listener's name, or a reference such as "listeners[2]"
	Key      string // mihomo's key, e.g. "users"; empty when the decoder's text names it
	Err      error
}

func (e *ConfigError) Error() string {
	if e.Key == "" {
		return fmt.Sprintf("anytls listener %q: %v", e.Listener, e.Err)
	}
	return fmt.Sprintf("anytls listener %q: key %q: %v", e.Listener, e.Key, e.Err)
}

func (e *ConfigError) Unwrap() error { return e.Err }

// decoder is mihomo's own listener decoder (listener/parse.go).
var decoder = structure.NewDecoder(structure.Option{TagName: "inbound", WeaklyTypedInput: true, KeyReplacer: structure.DefaultKeyReplacer})

// ParseOptions decodes and validates one listener mapping; ref names it in errors when it has no
// usable name.
func ParseOptions(mapping map[string]any, ref string) (*Options, error) {
	name := ref
	if n, ok := mapping["name"].(string); ok && n != "" {
		name = n
	}
	opts := &Options{}
	if err := decoder.Decode(mapping, opts); err != nil {
		return nil, &ConfigError{Listener: name, Err: err}
	}
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	return opts, nil
}

// Validate checks the options without touching files or ports.
func (o *Options) Validate() error {
	fail := func(key string, err error) error { return &ConfigError{Listener: o.NameStr, Key: key, Err: err} }
	if o.NameStr == "" {
		return fail("name", errors.New("is required"))
	}
	reality := o.RealityConfig.PrivateKey != ""
	switch {
	case reality && (o.Certificate != "" || o.PrivateKey != ""):
		return fail("certificate", errors.New("cannot be used with reality-config (Reality borrows the certificate of its dest)"))
	case reality && o.ClientAuthType != "" && o.ClientAuthType != "none":
		return fail("client-auth-type", errors.New("cannot be used with reality-config"))
	case !reality && (o.Certificate == "" || o.PrivateKey == ""):
		return fail("certificate", errors.New("certificate and private-key (or reality-config) are required"))
	}
	if reality {
		if _, err := o.RealityConfig.Build().Build(nil); err != nil {
			return fail("reality-config", err)
		}
	}
	if _, err := o.ServerOptions().ProtocolConfig(nil); err != nil {
		var fe *aoption.FieldError
		if errors.As(err, &fe) {
			return fail(o.key(fe.Field), errors.New(o.reason(fe)))
		}
		return &ConfigError{Listener: o.NameStr, Err: err}
	}
	return nil
}

// ServerOptions maps the options onto the engine's host-neutral server options. Users are
// sorted by name so the mapping is stable.
func (o *Options) ServerOptions() aoption.ServerOptions {
	names := make([]string, 0, len(o.Users))
	for name := range o.Users {
		names = append(names, name)
	}
	slices.Sort(names)
	users := make([]aoption.User, len(names))
	for i, name := range names {
		users[i] = aoption.User{Name: name, Password: o.Users[name]}
	}
	return aoption.ServerOptions{
		Users:                users,
		PaddingScheme:        o.PaddingScheme,
		Fallback:             o.Fallback,
		AuthTimeout:          time.Duration(o.AuthTimeout),
		IdleSessionTimeout:   time.Duration(o.IdleSessionTimeout),
		MaxSessions:          o.MaxSessions,
		MaxStreamsPerSession: o.MaxStreamsPerSession,
		EarlySynAckDelay:     time.Duration(o.EarlySynAckDelay),
		AddressTimeout:       time.Duration(o.AddressTimeout),
		StreamBufferSize:     o.StreamBufferSize,
		StreamStallTimeout:   time.Duration(o.StreamStallTimeout),
		PadDownstream:        o.PadDownstream,
		DisableHalfClose:     o.DisableHalfClose,
		MaxVersion:           o.MaxVersion,
	}
}

// key turns option's field ("users[1].password", "padding_scheme") into the mihomo key; a user
// is named by its name, since users is a map here.
func (o *Options) key(field string) string {
	if rest, ok := strings.CutPrefix(field, "users["); ok {
		if i, _, ok := strings.Cut(rest, "]"); ok {
			if n, err := strconv.Atoi(i); err == nil {
				users := o.ServerOptions().Users
				if n >= 0 && n < len(users) {
					return "users." + users[n].Name
				}
			}
		}
		return "users"
	}
	return strings.ReplaceAll(field, "_", "-")
}

func (o *Options) reason(fe *aoption.FieldError) string {
	if strings.HasPrefix(fe.Field, "users[") && strings.HasSuffix(fe.Field, ".password") {
		return "empty password"
	}
	switch v := fe.Value.(type) {
	case string:
		if v == "" || v == "[]" {
			return fe.Reason
		}
		return strconv.Quote(v) + ": " + fe.Reason
	case nil:
		return fe.Reason
	default:
		return fmt.Sprint(v) + ": " + fe.Reason
	}
}
