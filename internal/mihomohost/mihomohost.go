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

	"github.com/anytls-engine/anytls/adapter/logline"
	"github.com/anytls-engine/anytls/protocol"

	"github.com/metacubex/mihomo/log"
	M "github.com/metacubex/sing/common/metadata"
)

// Logger returns an slog.Logger that writes to mihomo's log (so the engine's diagnostics appear in
// mihomo's output and its /logs API) under prefix, with mihomo's level filter.
func Logger(prefix string) *slog.Logger {
	return logline.New(sink{prefix: prefix})
}

type sink struct {
	prefix string // "[AnyTLS] name"
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
func (s sink) Enabled(_ context.Context, l slog.Level) bool {
	return mihomoLevel(l) >= log.Level()
}

func (s sink) Emit(_ context.Context, l slog.Level, msg string) {
	if s.prefix != "" {
		msg = s.prefix + " " + msg
	}
	switch mihomoLevel(l) {
	case log.ERROR:
		log.Errorln("%s", msg)
	case log.WARNING:
		log.Warnln("%s", msg)
	case log.INFO:
		log.Infoln("%s", msg)
	default:
		log.Debugln("%s", msg)
	}
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
