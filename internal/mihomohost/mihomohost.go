// Package mihomohost is the glue that inbound/mihomo and outbound/mihomo share: it turns mihomo's
// logger into the engine's slog.Logger, converts destinations between sing's M.Socksaddr (mihomo's
// fork, metacubex/sing) and the engine's protocol.Addr, and decodes the engine's extra YAML values.
package mihomohost

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/anytls-engine/anytls/protocol"

	"github.com/metacubex/mihomo/log"
	M "github.com/metacubex/sing/common/metadata"
)

// Logger returns an slog.Logger that writes to mihomo's log (so the engine's diagnostics appear in
// mihomo's output and its /logs API) under prefix, with mihomo's level filter.
func Logger(prefix string) *slog.Logger {
	return slog.New(&handler{prefix: prefix})
}

type handler struct {
	prefix string // "[AnyTLS] name"
	attrs  string // rendered attributes from WithAttrs
	group  string
}

func mihomoLevel(l slog.Level) log.LogLevel {
	switch {
	case l >= slog.LevelError:
		return log.ERROR
	case l >= slog.LevelWarn:
		return log.WARNING
	case l >= slog.LevelInfo:
		return log.INFO
	}
	return log.DEBUG
}

// Enabled follows mihomo's log-level, so debug lines cost nothing unless asked for.
func (h *handler) Enabled(_ context.Context, l slog.Level) bool {
	return mihomoLevel(l) >= log.Level()
}

func (h *handler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	if h.prefix != "" {
		b.WriteString(h.prefix)
		b.WriteByte(' ')
	}
	b.WriteString(r.Message)
	b.WriteString(h.attrs)
	r.Attrs(func(a slog.Attr) bool {
		appendAttr(&b, h.group, a)
		return true
	})
	msg := b.String()
	switch mihomoLevel(r.Level) {
	case log.ERROR:
		log.Errorln("%s", msg)
	case log.WARNING:
		log.Warnln("%s", msg)
	case log.INFO:
		log.Infoln("%s", msg)
	default:
		log.Debugln("%s", msg)
	}
	return nil
}

func (h *handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	var b strings.Builder
	b.WriteString(h.attrs)
	for _, a := range attrs {
		appendAttr(&b, h.group, a)
	}
	return &handler{prefix: h.prefix, attrs: b.String(), group: h.group}
}

func (h *handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	g := name
	if h.group != "" {
		g = h.group + "." + name
	}
	return &handler{prefix: h.prefix, attrs: h.attrs, group: g}
}

func appendAttr(b *strings.Builder, group string, a slog.Attr) {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return
	}
	if a.Value.Kind() == slog.KindGroup {
		g := a.Key
		if group != "" && g != "" {
			g = group + "." + g
		} else if g == "" {
			g = group
		}
		for _, sub := range a.Value.Group() {
			appendAttr(b, g, sub)
		}
		return
	}
	key := a.Key
	if group != "" {
		key = group + "." + key
	}
	fmt.Fprintf(b, " %s=%v", key, a.Value.Any())
}

// Addr converts a sing destination into the engine's. An IPv6 zone is dropped: it means nothing
// to the server.
func Addr(s M.Socksaddr) (protocol.Addr, error) {
	if s.IsFqdn() {
		return protocol.MakeAddr(s.Fqdn, s.Port)
	}
	if s.IsIP() {
		return protocol.Addr{IP: s.Addr.WithZone("").Unmap(), Port: s.Port}, nil
	}
	return protocol.Addr{}, fmt.Errorf("%w: empty destination", protocol.ErrBadAddress)
}

// Socksaddr converts an engine destination into sing's.
func Socksaddr(a protocol.Addr) M.Socksaddr {
	if a.Fqdn != "" {
		return M.Socksaddr{Fqdn: a.Fqdn, Port: a.Port}
	}
	return M.Socksaddr{Addr: a.IP, Port: a.Port}
}

// Duration is a YAML duration for the engine's extra keys: a Go duration ("10s", "1m30s",
// "-1s") or a bare number of seconds, as mihomo's own interval keys are written. mihomo's decoder
// hands it the text through UnmarshalText.
type Duration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(text []byte) error {
	s := strings.TrimSpace(string(text))
	if s == "" {
		*d = 0
		return nil
	}
	if n, err := strconv.ParseFloat(s, 64); err == nil {
		if math.IsNaN(n) || math.Abs(n) > float64(math.MaxInt64/int64(time.Second)) {
			return fmt.Errorf("%q seconds is out of range", s)
		}
		*d = Duration(n * float64(time.Second))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is neither a duration (10s, 1m) nor a number of seconds", s)
	}
	*d = Duration(v)
	return nil
}

// MarshalText renders the duration as Go does ("10s"); mihomo compares listener options by
// their JSON.
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(time.Duration(d).String()), nil
}
