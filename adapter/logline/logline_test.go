package logline

import (
	"context"
	"log/slog"
	"testing"
)

type recorder struct{ lines []string }

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) Emit(_ context.Context, l slog.Level, line string) {
	r.lines = append(r.lines, l.String()+" "+line)
}

func TestRendering(t *testing.T) {
	r := &recorder{}
	l := New(r).With("session", 3).WithGroup("s")
	l.Warn("stream reset", "id", 7, slog.Group("g", "k", "v"))
	want := "WARN stream reset session=3 s.id=7 s.g.k=v"
	if len(r.lines) != 1 || r.lines[0] != want {
		t.Fatalf("lines = %q, want %q", r.lines, want)
	}
}
