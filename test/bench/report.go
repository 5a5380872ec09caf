package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
)

// results holds every sample, by implementation and figure key.
type results struct {
	samples map[string]map[string][]float64
	bench   []string // Go benchmark lines, one per sample
	// load averages (1 minute) when the run started and ended: the machine may be shared
	loadStart, loadEnd string
}

func newResults() *results {
	return &results{samples: map[string]map[string][]float64{}, loadStart: loadAverage()}
}

// loadAverage returns the 1-minute load average, or "?".
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	if f := strings.Fields(string(b)); len(f) > 0 {
		return f[0]
	}
	return "?"
}

func (r *results) put(impl, key string, v float64) {
	if r.samples[impl] == nil {
		r.samples[impl] = map[string][]float64{}
	}
	r.samples[impl][key] = append(r.samples[impl][key], v)
}

// median returns the median of impl's samples of key.
func (r *results) median(impl, key string) (float64, bool) {
	s := slices.Clone(r.samples[impl][key])
	if len(s) == 0 {
		return 0, false
	}
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2], true
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2, true
}

// memPrefix names the figures of a memory job.
func memPrefix(j job) string {
	if j.PerSession > 1 {
		return fmt.Sprintf("mux%d_", j.Streams)
	}
	return fmt.Sprintf("mem%d_", j.Streams)
}

func (r *results) add(j job, out result) {
	impl := j.Impl
	line := func(name string, iters int, pairs ...any) {
		var b strings.Builder
		fmt.Fprintf(&b, "Benchmark%s/impl=%s-%d %d", name, impl, runtime.GOMAXPROCS(0), iters)
		for i := 0; i+1 < len(pairs); i += 2 {
			fmt.Fprintf(&b, " %.6g %s", pairs[i], pairs[i+1])
		}
		r.bench = append(r.bench, b.String())
	}
	prefix := ""
	switch j.Metric {
	case metricBulk:
		line("Bulk/dir=up", 1, out["up_MBps"], "MB/s", out["up_cpu"], "cpu-s/GiB")
		line("Bulk/dir=down", 1, out["down_MBps"], "MB/s", out["down_cpu"], "cpu-s/GiB")
	case metricParallel:
		name := fmt.Sprintf("Parallel/streams=%d", j.Streams)
		line(name+"/dir=up", 1, out["par_up_MBps"], "MB/s", out["par_up_cpu"], "cpu-s/GiB")
		line(name+"/dir=down", 1, out["par_down_MBps"], "MB/s", out["par_down_cpu"], "cpu-s/GiB")
	case metricLatency:
		line("WarmOpen", j.Opens, out["open_p50_us"]*1e3, "p50-ns/op", out["open_p99_us"]*1e3, "p99-ns/op", out["open_cpu_us"]*1e3, "cpu-ns/op")
		line("FirstStream/client=fresh", j.Fresh, out["first_client_us"]*1e3, "ns/op", out["first_cpu_us"]*1e3, "cpu-ns/op")
	case metricFirst:
		line("FirstStream/client=fresh-process", 1, out["first_process_us"]*1e3, "ns/op")
	case metricMem:
		prefix = memPrefix(j)
		per := max(j.PerSession, 1)
		line(fmt.Sprintf("IdleStreams/streams=%d/per-session=%d", j.Streams, per), 1,
			out["heap_KB"]*1e3, "heap-B/stream", out["rss_KB"]*1e3, "rss-B/stream",
			out["left_goroutines"], "goroutines-left")
	}
	for k, v := range out {
		r.put(impl, prefix+k, v)
	}
}

// figure is one row of the table.
type figure struct {
	key    string
	label  string
	format string
	higher bool // a higher value is better
	// target for ours, as a ratio: vs tls, vs the best peer, or vs our own figure (selfKey)
	vsTLS, vsPeer, vsSelf float64
	selfKey               string
	maxAbs                float64 // target as an absolute maximum
	text                  string  // the target as written in the issue
}

func figures(cfg config) []figure {
	f := []figure{
		{key: "up_MBps", label: "upload, 1 stream (MB/s)", format: "%.0f", higher: true, vsTLS: 0.97, text: "≥ 0.97× tls"},
		{key: "down_MBps", label: "download, 1 stream (MB/s)", format: "%.0f", higher: true, vsTLS: 0.97, text: "≥ 0.97× tls"},
		{key: "up_cpu", label: "CPU per GiB up (s)", format: "%.2f", vsTLS: 1.05, text: "≤ 1.05× tls"},
		{key: "down_cpu", label: "CPU per GiB down (s)", format: "%.2f", vsTLS: 1.05, text: "≤ 1.05× tls"},
		{key: "par_up_MBps", label: fmt.Sprintf("upload, %d streams (MB/s)", cfg.ParStreams), format: "%.0f", higher: true},
		{key: "par_down_MBps", label: fmt.Sprintf("download, %d streams (MB/s)", cfg.ParStreams), format: "%.0f", higher: true},
		{key: "par_up_cpu", label: fmt.Sprintf("CPU per GiB up, %d streams (s)", cfg.ParStreams), format: "%.2f"},
		{key: "par_down_cpu", label: fmt.Sprintf("CPU per GiB down, %d streams (s)", cfg.ParStreams), format: "%.2f"},
		{key: "open_p50_us", label: "warm open p50 (µs)", format: "%.0f", vsPeer: 0.8, text: "≤ 0.8× best peer"},
		{key: "open_p99_us", label: "warm open p99 (µs)", format: "%.0f", vsSelf: 2, selfKey: "open_p50_us", text: "≤ 2× our p50"},
		{key: "open_cpu_us", label: "CPU per warm open (µs)", format: "%.0f"},
		{key: "first_client_us", label: "first stream, fresh client (µs)", format: "%.0f", vsTLS: 1.1, text: "≤ 1.1× tls"},
		{key: "first_cpu_us", label: "CPU per first stream, fresh client (µs)", format: "%.0f"},
		{key: "first_process_us", label: "first stream, fresh process (µs)", format: "%.0f", vsTLS: 1.1, text: "≤ 1.1× tls"},
	}
	for _, n := range cfg.Mem {
		p := fmt.Sprintf("mem%d_", n)
		f = append(f,
			figure{key: p + "heap_KB", label: fmt.Sprintf("Go heap+stacks per stream, %d streams (KB)", n), format: "%.1f", vsTLS: 1.2, text: "≤ 1.2× tls"},
			figure{key: p + "rss_KB", label: fmt.Sprintf("RSS per stream, %d streams (KB)", n), format: "%.1f", vsTLS: 1.2, text: "≤ 1.2× tls"},
			figure{key: p + "left_goroutines", label: fmt.Sprintf("goroutines left after closing %d", n), format: "%.0f", text: "0 (ours)"},
		)
	}
	if cfg.Mux > 0 {
		p := fmt.Sprintf("mux%d_", cfg.Mux)
		f = append(f,
			figure{key: p + "heap_KB", label: fmt.Sprintf("Go heap+stacks per stream, %d streams, %d per session (KB)", cfg.Mux, cfg.MuxPerSession), format: "%.1f", maxAbs: 16, text: "≤ 16 KB"},
			figure{key: p + "rss_KB", label: fmt.Sprintf("RSS per stream, %d streams, %d per session (KB)", cfg.Mux, cfg.MuxPerSession), format: "%.1f", maxAbs: 16, text: "≤ 16 KB"},
			figure{key: p + "left_goroutines", label: fmt.Sprintf("goroutines left after closing %d", cfg.Mux), format: "%.0f", text: "0"},
		)
	}
	return f
}

// bestPeer returns the best peer's median of key.
func (r *results) bestPeer(f figure) (float64, bool) {
	var best float64
	found := false
	for _, p := range peers {
		v, ok := r.median(p, f.key)
		if !ok {
			continue
		}
		if !found || (f.higher && v > best) || (!f.higher && v < best) {
			best, found = v, true
		}
	}
	return best, found
}

// verdict says whether ours meets f's target ("yes", "no", or "" when it cannot be judged).
func (r *results) verdict(f figure) string {
	ours, ok := r.median(implOurs, f.key)
	if !ok {
		return ""
	}
	meets := func(ratio, limit float64) string {
		if (f.higher && ratio >= limit) || (!f.higher && ratio <= limit) {
			return "yes"
		}
		return "no"
	}
	switch {
	case f.vsTLS > 0:
		if tls, ok := r.median(implTLS, f.key); ok && tls > 0 {
			return meets(ours/tls, f.vsTLS)
		}
	case f.vsPeer > 0:
		if best, ok := r.bestPeer(f); ok && best > 0 {
			return meets(ours/best, f.vsPeer)
		}
	case f.vsSelf > 0:
		if self, ok := r.median(implOurs, f.selfKey); ok && self > 0 {
			return meets(ours/self, f.vsSelf)
		}
	case f.maxAbs > 0:
		return meets(ours, f.maxAbs)
	case strings.HasSuffix(f.key, "left_goroutines"):
		return meets(ours, 0)
	}
	return ""
}

// table returns the readable table: medians, each with its ratio to crypto/tls, ours against
// the best peer, and the target.
func (r *results) table(cfg config) string {
	impls := cfg.Impls
	header := []string{"figure (median of runs)"}
	for _, impl := range impls {
		header = append(header, implTitle[impl])
	}
	header = append(header, "ours ÷ best peer", "target for ours", "met")
	rows := [][]string{header}
	for _, f := range figures(cfg) {
		row := []string{f.label}
		any := false
		tls, tlsOK := r.median(implTLS, f.key)
		for _, impl := range impls {
			v, ok := r.median(impl, f.key)
			if !ok {
				row = append(row, "—")
				continue
			}
			any = true
			cell := fmt.Sprintf(f.format, v)
			if impl != implTLS && tlsOK && tls > 0 && !strings.HasSuffix(f.key, "left_goroutines") {
				cell += fmt.Sprintf(" (%.2fx)", v/tls)
			}
			row = append(row, cell)
		}
		if !any {
			continue
		}
		ratio := ""
		if ours, ok := r.median(implOurs, f.key); ok {
			if best, ok := r.bestPeer(f); ok && best > 0 {
				ratio = fmt.Sprintf("%.2fx", ours/best)
			}
		}
		row = append(row, ratio, f.text, r.verdict(f))
		rows = append(rows, row)
	}
	return markdownTable(rows)
}

func markdownTable(rows [][]string) string {
	width := make([]int, len(rows[0]))
	for _, row := range rows {
		for i, c := range row {
			width[i] = max(width[i], len([]rune(c)))
		}
	}
	var b strings.Builder
	for n, row := range rows {
		b.WriteString("|")
		for i, c := range row {
			pad := width[i] - len([]rune(c))
			if i == 0 {
				fmt.Fprintf(&b, " %s%s |", c, strings.Repeat(" ", pad))
			} else {
				fmt.Fprintf(&b, " %s%s |", strings.Repeat(" ", pad), c)
			}
		}
		b.WriteString("\n")
		if n == 0 {
			b.WriteString("|")
			for i := range row {
				if i == 0 {
					fmt.Fprintf(&b, "%s|", strings.Repeat("-", width[i]+2))
				} else {
					fmt.Fprintf(&b, "%s:|", strings.Repeat("-", width[i]+1))
				}
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

// machine describes where the run happened.
func machine() string {
	cpu := "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	kernel := "unknown"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(b))
	}
	return fmt.Sprintf("%s, %d CPUs (GOMAXPROCS %d), Linux %s, %s %s/%s",
		cpu, runtime.NumCPU(), runtime.GOMAXPROCS(0), kernel, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// write prints the benchmark lines (for benchstat) and then the table.
func (r *results) write(w io.Writer, cfg config) {
	fmt.Fprintf(w, "goos: %s\ngoarch: %s\npkg: github.com/anytls-engine/anytls/test/bench\n", runtime.GOOS, runtime.GOARCH)
	if r.loadEnd == "" {
		r.loadEnd = loadAverage()
	}
	fmt.Fprintf(w, "machine: %s\n", machine())
	fmt.Fprintf(w, "load: %s at the start, %s at the end (1-minute load average)\n", r.loadStart, r.loadEnd)
	for _, l := range r.bench {
		fmt.Fprintln(w, l)
	}
	fmt.Fprintf(w, "\n%s\n", r.table(cfg))
}
