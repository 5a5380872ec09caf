// Package option holds the host-neutral options of an AnyTLS client and server: their defaults
// (in one place), their validation, their mapping onto the engine's protocol.ClientConfig and
// protocol.ServerConfig, and share links (anytls://).
//
// Host adapters (sing-box, mihomo, the anytls command) translate their own configuration syntax
// into ClientOptions or ServerOptions and call ProtocolConfig; they never set engine defaults
// themselves. A zero value in an option means "the default" everywhere.
package option

import (
	"errors"
	"fmt"

	"github.com/anytls-engine/anytls/protocol"
)

// ErrInvalid is matched (errors.Is) by every validation error of this package. Validation errors
// also match protocol.ErrBadConfig.
var ErrInvalid = errors.New("invalid option")

// FieldError names an option whose value is invalid. Field is the option's key in the
// snake_case spelling sing-box uses (for example "idle_session_timeout"); hosts with another
// spelling can map it.
type FieldError struct {
	Side   string // "client" or "server"
	Field  string
	Value  any
	Reason string
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("anytls %s option %s = %v: %s", e.Side, e.Field, quoteValue(e.Value), e.Reason)
}

// Is makes a FieldError match ErrInvalid and protocol.ErrBadConfig.
func (e *FieldError) Is(target error) bool {
	return target == ErrInvalid || target == protocol.ErrBadConfig
}

func quoteValue(v any) string {
	if s, ok := v.(string); ok {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprint(v)
}

// LinkError names the part of a share link that is wrong. Part is one of "scheme", "password",
// "host", "port", "path", "query", "sni", "insecure", "label".
type LinkError struct {
	Part   string
	Value  string // the offending text (never the password)
	Reason string
}

// ErrBadLink is matched (errors.Is) by every error of ParseLink.
var ErrBadLink = errors.New("bad anytls link")

func (e *LinkError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("bad anytls link: %s: %s", e.Part, e.Reason)
	}
	return fmt.Sprintf("bad anytls link: %s %q: %s", e.Part, e.Value, e.Reason)
}

// Is makes a LinkError match ErrBadLink.
func (e *LinkError) Is(target error) bool { return target == ErrBadLink }
