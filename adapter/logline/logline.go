// Package logline renders the engine's slog records as one-line messages for host loggers that
// take a string (sing-box's and mihomo's): the message followed by key=value attributes.
package logline

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
)

// Sink is a host logger.
type Sink interface {
	// Enabled reports whether the host logs records of this level.
	Enabled(ctx context.Context, level slog.Level) bool
	// Emit logs one rendered line.
	Emit(ctx context.Context, level slog.Level, line string)
}

// New returns a logger writing to sink.
func New(sink Sink) *slog.Logger { return slog.New(&handler{sink: sink}) }

type handler struct {
	sink  Sink
	attrs string // rendered attributes from WithAttrs
	group string
}

func (h *handler) Enabled(ctx context.Context, l slog.Level) bool { return h.sink.Enabled(ctx, l) }

func (h *handler) Handle(ctx context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	b.WriteString(h.attrs)
	r.Attrs(func(a slog.Attr) bool {
		appendAttr(&b, h.group, a)
		return true
	})
	if ctx == nil {
		ctx = context.Background()
	}
	h.sink.Emit(ctx, r.Level, b.String())
	return nil
}

func (h *handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	var b strings.Builder
	b.WriteString(h.attrs)
	for _, a := range attrs {
		appendAttr(&b, h.group, a)
	}
	return &handler{sink: h.sink, attrs: b.String(), group: h.group}
}

func (h *handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	g := name
	if h.group != "" {
		g = h.group + "." + name
	}
	return &handler{sink: h.sink, attrs: h.attrs, group: g}
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
