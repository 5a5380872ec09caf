// Package sbhost is the glue that inbound/singbox and outbound/singbox share: it turns sing-box's
// logger into the engine's slog.Logger and converts destinations between sing's M.Socksaddr and
// the engine's protocol.Addr.
package sbhost

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/anytls-engine/anytls/protocol"

	"github.com/sagernet/sing/common/logger"
	M "github.com/sagernet/sing/common/metadata"
)

// Logger returns an slog.Logger that writes to a sing-box logger, so the engine's diagnostics
// appear in sing-box's log with its level filter and per-connection ids.
func Logger(l logger.ContextLogger) *slog.Logger {
	return slog.New(&handler{l: l})
}

type handler struct {
	l      logger.ContextLogger
	prefix string // rendered attributes from WithAttrs
	group  string
}

// Enabled lets sing-box's own level filter decide.
func (h *handler) Enabled(context.Context, slog.Level) bool { return true }

func (h *handler) Handle(ctx context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	b.WriteString(h.prefix)
	r.Attrs(func(a slog.Attr) bool {
		appendAttr(&b, h.group, a)
		return true
	})
	msg := b.String()
	if ctx == nil {
		ctx = context.Background()
	}
	switch {
	case r.Level >= slog.LevelError:
		h.l.ErrorContext(ctx, msg)
	case r.Level >= slog.LevelWarn:
		h.l.WarnContext(ctx, msg)
	case r.Level >= slog.LevelInfo:
		h.l.InfoContext(ctx, msg)
	default:
		h.l.DebugContext(ctx, msg)
	}
	return nil
}

func (h *handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	var b strings.Builder
	b.WriteString(h.prefix)
	for _, a := range attrs {
		appendAttr(&b, h.group, a)
	}
	return &handler{l: h.l, prefix: b.String(), group: h.group}
}

func (h *handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	g := name
	if h.group != "" {
		g = h.group + "." + name
	}
	return &handler{l: h.l, prefix: h.prefix, group: g}
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
	if s.Fqdn != "" {
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
