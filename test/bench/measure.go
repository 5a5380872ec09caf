package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ioTimeout bounds one transfer or one stream set-up, so that a stuck implementation fails
// the run instead of hanging it.
const ioTimeout = 2 * time.Minute

// job is one measurement, run in a process of its own (see runJob).
type job struct {
	Metric     string // metricBulk, metricParallel, metricLatency, metricFirst, metricMem
	Impl       string
	Bytes      int64  // bulk, parallel: bytes per direction (all streams together)
	Dir        string // bulk, parallel: "up" or "down" only (for profiling); default both
	Streams    int    // parallel: concurrent streams; mem: streams held open
	PerSession int    // mem: streams per session (ours only; 0 or 1: one each)
	Opens      int    // latency: warm opens measured
	Fresh      int    // latency: fresh clients measured
	Target     string // mem: echo target (in the parent process, for the open-file limit)
	Profile    string // if set, a CPU profile of the measured part is written here
}

const (
	metricBulk     = "bulk"
	metricParallel = "parallel"
	metricLatency  = "latency"
	metricFirst    = "first"
	metricMem      = "mem"
)

// result maps a figure's key to its value (keys in report.go).
type result map[string]float64

// stack is a running server of one implementation, its targets and a client.
type stack struct {
	env    *env
	impl   string
	srv    *server
	bulk   *target
	echo   *target
	client client
}

func newStack(impl string, echoAddr netip.AddrPort, perSession int) (*stack, error) {
	e, err := newEnv()
	if err != nil {
		return nil, err
	}
	s := &stack{env: e, impl: impl}
	if !echoAddr.IsValid() {
		if s.bulk, err = startBulkTarget(); err != nil {
			return nil, err
		}
		if s.echo, err = startEchoTarget(); err != nil {
			return nil, err
		}
	} else {
		s.echo = &target{addr: echoAddr, stop: func() {}}
	}
	if s.srv, err = e.startServer(impl); err != nil {
		return nil, fmt.Errorf("start %s server: %w", impl, err)
	}
	if s.client, err = e.newClient(impl, s.srv.addr, perSession); err != nil {
		return nil, fmt.Errorf("start %s client: %w", impl, err)
	}
	return s, nil
}

func (s *stack) close() {
	s.client.Close()
	s.srv.stop()
	if s.bulk != nil {
		s.bulk.stop()
	}
	s.echo.stop()
}

func (s *stack) dial(c client, dest netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	conn, err := c.Dial(ctx, dest)
	if err != nil {
		return nil, fmt.Errorf("open stream: %w", err)
	}
	conn.SetDeadline(time.Now().Add(ioTimeout))
	return conn, nil
}

// transfer moves n bytes on conn, up to or down from the bulk target, and checks them.
func transfer(conn net.Conn, up bool, n int64) error {
	var want uint32
	var err error
	if up {
		if _, err = conn.Write(request('U', n)); err == nil {
			want, err = sendN(conn, n)
		}
	} else {
		if _, err = conn.Write(request('D', n)); err == nil {
			want, err = recvN(conn, n, make([]byte, ioChunk))
		}
	}
	if err != nil {
		return err
	}
	var sum [4]byte
	if _, err := io.ReadFull(conn, sum[:]); err != nil {
		return fmt.Errorf("read checksum: %w", err)
	}
	if got := binary.BigEndian.Uint32(sum[:]); got != want {
		if up {
			return fmt.Errorf("upload of %d bytes: target received CRC %08x, sent %08x", n, got, want)
		}
		return fmt.Errorf("download of %d bytes: target sent CRC %08x, received %08x", n, got, want)
	}
	return nil
}

// cpuTime is the process's user plus system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// timed runs f and returns its wall and CPU time; a profile, if asked for, covers f only.
func timed(profile string, f func() error) (wall, cpu time.Duration, err error) {
	runtime.GC()
	if profile != "" {
		pf, perr := os.Create(profile)
		if perr != nil {
			return 0, 0, perr
		}
		defer pf.Close()
		pprof.StartCPUProfile(pf)
		defer pprof.StopCPUProfile()
	}
	c0, t0 := cpuTime(), time.Now()
	err = f()
	return time.Since(t0), cpuTime() - c0, err
}

func throughput(key string, r result, n int64, wall, cpu time.Duration) {
	r[key+"_MBps"] = float64(n) / 1e6 / wall.Seconds()
	r[key+"_cpu"] = cpu.Seconds() / (float64(n) / (1 << 30))
}

// profileName returns the profile path for one part of a job.
func (j *job) profileName(part string) string {
	if j.Profile == "" {
		return ""
	}
	return strings.TrimSuffix(j.Profile, ".pprof") + "-" + part + ".pprof"
}

// directions returns the directions a bulk or parallel job measures: both unless Dir says.
func (j *job) directions() []bool {
	switch j.Dir {
	case "up":
		return []bool{true}
	case "down":
		return []bool{false}
	}
	return []bool{true, false}
}

// runBulk: one stream up, then one stream down, after a warm-up of both.
func runBulk(j *job) (result, error) {
	s, err := newStack(j.Impl, netip.AddrPort{}, 0)
	if err != nil {
		return nil, err
	}
	defer s.close()
	r := result{}
	for _, up := range j.directions() {
		dir := map[bool]string{true: "up", false: "down"}[up]
		warm := min(j.Bytes, 32<<20)
		if err := s.oneTransfer(up, warm); err != nil {
			return nil, fmt.Errorf("warm-up %s: %w", dir, err)
		}
		conn, err := s.dial(s.client, s.bulk.addr)
		if err != nil {
			return nil, err
		}
		wall, cpu, err := timed(j.profileName(dir), func() error { return transfer(conn, up, j.Bytes) })
		conn.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", dir, err)
		}
		throughput(dir, r, j.Bytes, wall, cpu)
	}
	return r, nil
}

func (s *stack) oneTransfer(up bool, n int64) error {
	conn, err := s.dial(s.client, s.bulk.addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	return transfer(conn, up, n)
}

// runParallel: j.Streams streams at once, up, then down; the figure is their aggregate.
func runParallel(j *job) (result, error) {
	s, err := newStack(j.Impl, netip.AddrPort{}, 0)
	if err != nil {
		return nil, err
	}
	defer s.close()
	r := result{}
	per := j.Bytes / int64(j.Streams)
	for _, up := range j.directions() {
		dir := map[bool]string{true: "par_up", false: "par_down"}[up]
		if err := s.oneTransfer(up, min(per, 8<<20)); err != nil {
			return nil, fmt.Errorf("warm-up %s: %w", dir, err)
		}
		conns := make([]net.Conn, j.Streams)
		for i := range conns {
			if conns[i], err = s.dial(s.client, s.bulk.addr); err != nil {
				return nil, err
			}
		}
		wall, cpu, err := timed(j.profileName(dir), func() error {
			errs := make([]error, len(conns))
			var wg sync.WaitGroup
			for i, c := range conns {
				wg.Go(func() { errs[i] = transfer(c, up, per) })
			}
			wg.Wait()
			return errors.Join(errs...)
		})
		for _, c := range conns {
			c.Close()
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", dir, err)
		}
		throughput(dir, r, per*int64(j.Streams), wall, cpu)
	}
	return r, nil
}

// echoOnce opens a stream to the echo target, sends one byte, reads it back and closes.
func (s *stack) echoOnce(c client) error {
	conn, err := s.dial(c, s.echo.addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	return echoByte(conn)
}

func echoByte(conn net.Conn) error {
	b := []byte{'x'}
	if _, err := conn.Write(b); err != nil {
		return fmt.Errorf("echo write: %w", err)
	}
	if _, err := io.ReadFull(conn, b); err != nil {
		return fmt.Errorf("echo read: %w", err)
	}
	if b[0] != 'x' {
		return fmt.Errorf("echo returned %q", b)
	}
	return nil
}

func percentile(d []time.Duration, p float64) float64 {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := min(int(float64(len(s))*p), len(s)-1)
	return float64(s[i]) / float64(time.Microsecond)
}

// runLatency: first streams of fresh clients (the first client of the process is a warm-up),
// then warm opens on one client.
func runLatency(j *job) (result, error) {
	s, err := newStack(j.Impl, netip.AddrPort{}, 0)
	if err != nil {
		return nil, err
	}
	defer s.close()
	var fresh []time.Duration
	var freshCPU time.Duration
	_, _, err = timed(j.profileName("fresh"), func() error {
		for i := range j.Fresh + 1 {
			c, err := s.env.newClient(j.Impl, s.srv.addr, 0)
			if err != nil {
				return err
			}
			c0, t0 := cpuTime(), time.Now()
			err = s.echoOnce(c)
			d, cd := time.Since(t0), cpuTime()-c0
			c.Close()
			if err != nil {
				return fmt.Errorf("fresh client: %w", err)
			}
			if i > 0 {
				fresh = append(fresh, d)
				freshCPU += cd
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for range max(j.Opens/10, 10) {
		if err := s.echoOnce(s.client); err != nil {
			return nil, fmt.Errorf("warm-up: %w", err)
		}
	}
	warm := make([]time.Duration, 0, j.Opens)
	_, cpu, err := timed(j.profileName("open"), func() error {
		for range j.Opens {
			t0 := time.Now()
			if err := s.echoOnce(s.client); err != nil {
				return err
			}
			warm = append(warm, time.Since(t0))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("warm open: %w", err)
	}
	return result{
		"open_p50_us":     percentile(warm, 0.5),
		"open_p99_us":     percentile(warm, 0.99),
		"open_cpu_us":     float64(cpu) / float64(time.Microsecond) / float64(j.Opens),
		"first_client_us": percentile(fresh, 0.5),
		"first_cpu_us":    float64(freshCPU) / float64(time.Microsecond) / float64(max(j.Fresh, 1)),
	}, nil
}

// runFirst: the first stream of this process, timed from the client's first open (the
// servers and the client are constructed, nothing has been dialled).
func runFirst(j *job) (result, error) {
	s, err := newStack(j.Impl, netip.AddrPort{}, 0)
	if err != nil {
		return nil, err
	}
	defer s.close()
	t0 := time.Now()
	if err := s.echoOnce(s.client); err != nil {
		return nil, err
	}
	return result{"first_process_us": float64(time.Since(t0)) / float64(time.Microsecond)}, nil
}

type memSnap struct {
	heap, rss  int64
	goroutines int
}

func snapshot() memSnap {
	runtime.GC()
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memSnap{
		heap:       int64(ms.HeapInuse + ms.StackInuse),
		rss:        rss(),
		goroutines: runtime.NumGoroutine(),
	}
}

// rss returns the resident set size from /proc/self/statm.
func rss() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

// runMem holds j.Streams established streams open (each has echoed a byte end to end) and
// measures the memory they cost, then closes them and counts what is left.
func runMem(j *job) (result, error) {
	echoAddr, err := netip.ParseAddrPort(j.Target)
	if err != nil {
		return nil, fmt.Errorf("target: %w", err)
	}
	s, err := newStack(j.Impl, echoAddr, j.PerSession)
	if err != nil {
		return nil, err
	}
	defer s.close()
	if err := s.echoOnce(s.client); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	before := snapshot()
	conns := make([]net.Conn, j.Streams)
	errs := make([]error, j.Streams)
	var next sync.Mutex
	i := 0
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for {
				next.Lock()
				k := i
				i++
				next.Unlock()
				if k >= len(conns) {
					return
				}
				c, err := s.dial(s.client, s.echo.addr)
				if err == nil {
					c.SetDeadline(time.Time{})
					conns[k] = c
					err = echoByte(c)
				}
				errs[k] = err
			}
		})
	}
	wg.Wait()
	closeAll := func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		closeAll()
		return nil, fmt.Errorf("establish %d streams: %w", j.Streams, err)
	}
	time.Sleep(200 * time.Millisecond) // let servers finish setting up the last streams
	held := snapshot()
	if err := writeProfiles(j); err != nil {
		closeAll()
		return nil, err
	}
	closeAll()
	s.client.Close()
	// What is left once everything closed: goroutines above the count before the streams
	// (the client's own goroutines have gone with it).
	var after memSnap
	for deadline := time.Now().Add(10 * time.Second); ; {
		time.Sleep(100 * time.Millisecond)
		after = snapshot()
		if after.goroutines <= before.goroutines || time.Now().After(deadline) {
			break
		}
	}
	n := float64(j.Streams)
	return result{
		"heap_KB":         float64(held.heap-before.heap) / n / 1000,
		"rss_KB":          float64(held.rss-before.rss) / n / 1000,
		"left_goroutines": float64(max(after.goroutines-before.goroutines, 0)),
		"left_heap_KB":    float64(max(after.heap-before.heap, 0)) / 1000,
	}, nil
}

// writeProfiles writes the heap profile (in use) and the goroutines of a memory job.
func writeProfiles(j *job) error {
	for _, name := range []string{"heap", "goroutine"} {
		path := j.profileName(name)
		if path == "" {
			return nil
		}
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		debugLevel := 0
		if name == "goroutine" {
			debugLevel = 1
		}
		err = pprof.Lookup(name).WriteTo(f, debugLevel)
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

func runJob(j *job) (result, error) {
	switch j.Metric {
	case metricBulk:
		return runBulk(j)
	case metricParallel:
		return runParallel(j)
	case metricLatency:
		return runLatency(j)
	case metricFirst:
		return runFirst(j)
	case metricMem:
		return runMem(j)
	}
	return nil, fmt.Errorf("unknown metric %q", j.Metric)
}
