// Package sbhost is the glue that inbound/singbox and outbound/singbox share: it turns sing-box's
// logger into the engine's slog.Logger and converts destinations between sing's M.Socksaddr and
// the engine's protocol.Addr.
package sbhost

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/anytls-engine/anytls/adapter/logline"
	"github.com/anytls-engine/anytls/protocol"

	"github.com/sagernet/sing/common/logger"
	M "github.com/sagernet/sing/common/metadata"
)

// Logger returns an slog.Logger that writes to a sing-box logger, so the engine's diagnostics
// appear in sing-box's log with its level filter and per-connection ids.
func Logger(l logger.ContextLogger) *slog.Logger {
	return logline.New(sink{l})
}

type sink struct{ l logger.ContextLogger }

// Enabled lets sing-box's own level filter decide.
func (sink) Enabled(context.Context, slog.Level) bool { return true }

func (s sink) Emit(ctx context.Context, l slog.Level, msg string) {
	switch {
	case l >= slog.LevelError:
		s.l.ErrorContext(ctx, msg)
	case l >= slog.LevelWarn:
		s.l.WarnContext(ctx, msg)
	case l >= slog.LevelInfo:
		s.l.InfoContext(ctx, msg)
	default:
		s.l.DebugContext(ctx, msg)
	}
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
