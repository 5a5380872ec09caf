// Command anytls-bench measures our AnyTLS engine side by side with raw TCP, crypto/tls,
// sing-anytls v0.0.11 (sing-box 1.14.1's) and mihomo v1.19.23's transport/anytls, over real
// TLS 1.3 on loopback with one certificate and the default padding scheme. `make bench` runs it.
//
// Each measurement runs in a fresh process (the binary re-executes itself with the job in
// ANYTLS_BENCH_JOB), so that one implementation's heap, goroutines and process-wide
// initialisation do not bleed into another's figures, and "first stream of a fresh process"
// means what it says. Runs are interleaved (every implementation once, then again), and the
// report gives medians, ratios against crypto/tls and against the best peer, and Go benchmark
// lines for benchstat.
//
// The proxies' code runs without the race detector: the peers have data races of their own.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// envJob carries a child's job; a process started with it runs that job and exits.
const envJob = "ANYTLS_BENCH_JOB"

// Prefixes of the child's answer on stdout.
const (
	resultPrefix = "anytls-bench-result: "
	errorPrefix  = "anytls-bench-error: "
)

// config is one benchmark run.
type config struct {
	Runs          int
	MemRuns       int // memory figures vary little between runs
	Impls         []string
	Metrics       []string
	Bytes         int64 // single stream, per direction
	ParBytes      int64 // all parallel streams together, per direction
	ParStreams    int
	Opens         int   // warm opens per run
	Fresh         int   // fresh clients per run
	Procs         int   // fresh processes per implementation and run
	Mem           []int // concurrent streams, one session each
	Mux           int   // concurrent streams on our client with MuxPerSession streams per session
	MuxPerSession int
	ProfileDir    string   // CPU profiles of the measured parts go here
	ProfileImpls  []string // implementations profiled
	Exe           string   // the executable that runs jobs (this binary, or the test binary)
	Timeout       time.Duration
	Progress      io.Writer
}

var allMetrics = []string{metricBulk, metricParallel, metricLatency, metricFirst, metricMem}

func defaultConfig() config {
	return config{
		Runs:          3,
		MemRuns:       1,
		Impls:         allImpls,
		Metrics:       allMetrics,
		Bytes:         1 << 30,
		ParBytes:      1 << 30,
		ParStreams:    8,
		Opens:         2000,
		Fresh:         200,
		Procs:         10,
		Mem:           []int{1000, 5000},
		Mux:           10000,
		MuxPerSession: 100,
		Timeout:       10 * time.Minute,
		Progress:      os.Stderr,
	}
}

func main() {
	if os.Getenv(envJob) != "" {
		os.Exit(childMain())
	}
	cfg := defaultConfig()
	impls := flag.String("impls", strings.Join(cfg.Impls, ","), "implementations to measure")
	metrics := flag.String("metrics", strings.Join(cfg.Metrics, ","), "metrics to measure")
	mem := flag.String("mem", "1000,5000", "concurrent idle streams, one session each (comma-separated)")
	flag.IntVar(&cfg.Runs, "runs", cfg.Runs, "repetitions; the report gives medians")
	flag.IntVar(&cfg.MemRuns, "mem-runs", cfg.MemRuns, "repetitions of the memory measurements")
	flag.Int64Var(&cfg.Bytes, "bytes", cfg.Bytes, "bytes per direction, single stream")
	flag.Int64Var(&cfg.ParBytes, "par-bytes", cfg.ParBytes, "bytes per direction, all parallel streams together")
	flag.IntVar(&cfg.ParStreams, "par-streams", cfg.ParStreams, "parallel streams")
	flag.IntVar(&cfg.Opens, "opens", cfg.Opens, "warm stream opens per run")
	flag.IntVar(&cfg.Fresh, "fresh", cfg.Fresh, "fresh clients per run")
	flag.IntVar(&cfg.Procs, "procs", cfg.Procs, "fresh processes per implementation and run")
	flag.IntVar(&cfg.Mux, "mux", cfg.Mux, "concurrent idle streams on our client carrying several per session (0: skip)")
	flag.IntVar(&cfg.MuxPerSession, "mux-per-session", cfg.MuxPerSession, "streams per session for -mux")
	flag.StringVar(&cfg.ProfileDir, "profile", "", "write CPU profiles of the measured parts to this directory")
	profileImpls := flag.String("profile-impls", implOurs, "implementations to profile with -profile")
	flag.Parse()
	cfg.Impls = splitList(*impls)
	cfg.Metrics = splitList(*metrics)
	cfg.ProfileImpls = splitList(*profileImpls)
	cfg.Mem = nil
	for _, f := range splitList(*mem) {
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			fmt.Fprintf(os.Stderr, "anytls-bench: -mem: bad stream count %q\n", f)
			os.Exit(2)
		}
		cfg.Mem = append(cfg.Mem, n)
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "anytls-bench:", err)
		os.Exit(1)
	}
	cfg.Exe = exe
	res, err := run(cfg)
	if res != nil {
		res.write(os.Stdout, cfg)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "anytls-bench:", err)
		os.Exit(1)
	}
}

func splitList(s string) []string {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// childMain runs the job in the environment and prints its result.
func childMain() int {
	var j job
	if err := json.Unmarshal([]byte(os.Getenv(envJob)), &j); err != nil {
		fmt.Printf("%s%s: %v\n", errorPrefix, envJob, err)
		return 1
	}
	r, err := runJob(&j)
	if err != nil {
		fmt.Printf("%s%s %s: %v\n", errorPrefix, j.Metric, j.Impl, err)
		return 1
	}
	b, _ := json.Marshal(r)
	fmt.Printf("%s%s\n", resultPrefix, b)
	return 0
}

// runChild runs j in a fresh process.
func runChild(cfg config, j job) (result, error) {
	b, err := json.Marshal(j)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, cfg.Exe)
	cmd.Env = append(os.Environ(), envJob+"="+string(b))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, runErr := cmd.Output()
	for line := range strings.Lines(string(out)) {
		line = strings.TrimSpace(line)
		if msg, ok := strings.CutPrefix(line, errorPrefix); ok {
			return nil, fmt.Errorf("%s", msg)
		}
		if text, ok := strings.CutPrefix(line, resultPrefix); ok {
			var r result
			if err := json.Unmarshal([]byte(text), &r); err != nil {
				return nil, fmt.Errorf("%s %s: bad result %q: %w", j.Metric, j.Impl, text, err)
			}
			return r, nil
		}
	}
	return nil, fmt.Errorf("%s %s: no result (%v): %s", j.Metric, j.Impl, runErr, lastLines(stderr.String(), 20))
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}

// run measures everything cfg asks for. A job that fails is reported and the others go on:
// the error lists the failures.
func run(cfg config) (*results, error) {
	res := newResults()
	var memTarget *target
	defer func() {
		if memTarget != nil {
			memTarget.stop()
		}
	}()
	if cfg.ProfileDir != "" {
		if err := os.MkdirAll(cfg.ProfileDir, 0o755); err != nil {
			return nil, err
		}
	}
	var failures []error
	for r := range max(cfg.Runs, cfg.MemRuns) {
		for _, metric := range cfg.Metrics {
			runs := cfg.Runs
			if metric == metricMem {
				runs = cfg.MemRuns
			}
			if r >= runs {
				continue
			}
			var jobs []job
			switch metric {
			case metricBulk:
				for _, impl := range cfg.Impls {
					jobs = append(jobs, job{Metric: metric, Impl: impl, Bytes: cfg.Bytes})
				}
			case metricParallel:
				for _, impl := range cfg.Impls {
					jobs = append(jobs, job{Metric: metric, Impl: impl, Bytes: cfg.ParBytes, Streams: cfg.ParStreams})
				}
			case metricLatency:
				for _, impl := range cfg.Impls {
					jobs = append(jobs, job{Metric: metric, Impl: impl, Opens: cfg.Opens, Fresh: cfg.Fresh})
				}
			case metricFirst:
				for range cfg.Procs {
					for _, impl := range cfg.Impls {
						jobs = append(jobs, job{Metric: metric, Impl: impl})
					}
				}
			case metricMem:
				if memTarget == nil {
					var err error
					if memTarget, err = startEchoTarget(); err != nil {
						return res, err
					}
				}
				for _, n := range cfg.Mem {
					for _, impl := range cfg.Impls {
						jobs = append(jobs, job{Metric: metric, Impl: impl, Streams: n, Target: memTarget.addr.String()})
					}
				}
				if cfg.Mux > 0 && slices.Contains(cfg.Impls, implOurs) {
					jobs = append(jobs, job{Metric: metric, Impl: implOurs, Streams: cfg.Mux, PerSession: cfg.MuxPerSession, Target: memTarget.addr.String()})
				}
			default:
				return res, fmt.Errorf("unknown metric %q (want %s)", metric, strings.Join(allMetrics, ", "))
			}
			for i, j := range jobs {
				if cfg.ProfileDir != "" && slices.Contains(cfg.ProfileImpls, j.Impl) {
					j.Profile = filepath.Join(cfg.ProfileDir, fmt.Sprintf("%s-%s-run%d-%d.pprof", metric, j.Impl, r+1, i))
				}
				fmt.Fprintf(cfg.Progress, "run %d/%d: %s %s%s ...", r+1, runs, metric, j.Impl, j.detail())
				t0 := time.Now()
				out, err := runChild(cfg, j)
				if err != nil {
					fmt.Fprintf(cfg.Progress, " failed: %v\n", err)
					failures = append(failures, fmt.Errorf("run %d: %w", r+1, err))
					continue
				}
				fmt.Fprintf(cfg.Progress, " %.1fs\n", time.Since(t0).Seconds())
				res.add(j, out)
			}
		}
	}
	return res, errors.Join(failures...)
}

func (j job) detail() string {
	switch j.Metric {
	case metricMem:
		if j.PerSession > 1 {
			return fmt.Sprintf(" (%d streams, %d per session)", j.Streams, j.PerSession)
		}
		return fmt.Sprintf(" (%d streams)", j.Streams)
	}
	return ""
}
