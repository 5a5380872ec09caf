package main

import (
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary run benchmark jobs: the smoke test re-executes it as the
// bench binary re-executes itself.
//
// Like the interop tests, this package runs without the race detector: the peers' code has
// data races of its own.
func TestMain(m *testing.M) {
	if os.Getenv(envJob) != "" {
		os.Exit(childMain())
	}
	os.Exit(m.Run())
}

// TestSmoke runs every metric for every implementation with tiny sizes, so that `make bench`
// cannot rot. It checks that each figure is produced and plausible, never how fast anything is.
func TestSmoke(t *testing.T) {
	cfg := config{
		Runs:          1,
		MemRuns:       1,
		Impls:         allImpls,
		Metrics:       allMetrics,
		Bytes:         4 << 20,
		ParBytes:      4 << 20,
		ParStreams:    4,
		Opens:         20,
		Fresh:         2,
		Procs:         1,
		Mem:           []int{20},
		Mux:           40,
		MuxPerSession: 10,
		Exe:           os.Args[0],
		Timeout:       2 * time.Minute,
		Progress:      io.Discard,
	}
	if testing.Verbose() {
		cfg.Progress = os.Stderr
	}
	res, err := run(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range figures(cfg) {
		for _, impl := range cfg.Impls {
			if strings.HasPrefix(f.key, "mux") && impl != implOurs {
				continue
			}
			v, ok := res.median(impl, f.key)
			if !ok {
				t.Errorf("%s: no %q (%s)", impl, f.key, f.label)
				continue
			}
			// Memory figures are differences and may come out slightly negative for a
			// handful of streams; every other figure must be positive, and nothing may be
			// left running once the streams are closed.
			switch {
			case strings.HasSuffix(f.key, "left_goroutines"):
				if impl == implOurs && v != 0 {
					t.Errorf("%s: %v goroutines left after closing every stream", impl, v)
				}
			case strings.HasSuffix(f.key, "_KB"):
			case !(v > 0):
				t.Errorf("%s: %s = %v, want > 0", impl, f.key, v)
			}
		}
	}
	var sb strings.Builder
	res.write(&sb, cfg)
	out := sb.String()
	for _, want := range []string{"BenchmarkBulk/dir=up/impl=ours", "BenchmarkIdleStreams/streams=40/per-session=10/impl=ours", "| upload, 1 stream (MB/s)"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	t.Logf("\n%s", out)
}
