package tun

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The addresses of the three namespaces (see doc.go). TEST-NET and 2001:db8::/32 addresses:
// none of them exists outside the namespaces.
const (
	clientIP4 = "198.51.100.2"
	clientIP6 = "2001:db8:1::2"
	serverIP4 = "198.51.100.1" // where the anytls inbounds listen
	serverIP6 = "2001:db8:1::1"
	egressIP4 = "203.0.113.1" // the server's side toward the target: what the target sees
	egressIP6 = "2001:db8:2::1"
	targetIP4 = "203.0.113.2"
	targetIP6 = "2001:db8:2::2"
	// resolverIP is the client's nameserver in /etc/resolv.conf: an address that exists
	// nowhere, as an ISP's resolver would be out of reach; only the TUN's DNS hijack answers.
	resolverIP = "192.0.2.53"

	tunDevice = "anytls0" // interface name in both TUN examples
)

// nsPrefix starts the name of every namespace these tests create: nsPrefix-PID-N-role.
const nsPrefix = "anytls-tun"

var nsNameRE = regexp.MustCompile(`^` + nsPrefix + `-(\d+)-`)

// cleanups are what cleanupAll undoes: every topology and process not yet removed.
var (
	cleanupMu sync.Mutex
	cleanups  = map[int]func(){}
	cleanupID int
	topoSeq   atomic.Int32
)

func addCleanup(f func()) (remove func()) {
	cleanupMu.Lock()
	defer cleanupMu.Unlock()
	cleanupID++
	id := cleanupID
	cleanups[id] = f
	return func() {
		cleanupMu.Lock()
		delete(cleanups, id)
		cleanupMu.Unlock()
	}
}

// cleanupAll stops every process and removes every namespace still registered.
func cleanupAll() {
	cleanupMu.Lock()
	fs := cleanups
	cleanups = map[int]func(){}
	cleanupMu.Unlock()
	// Processes were registered after their topology: undo newest first.
	ids := slices.Sorted(maps.Keys(fs))
	slices.Reverse(ids)
	for _, id := range ids {
		fs[id]()
	}
}

// sweepStale removes namespaces (and their /etc/netns files) and binaries left by runs whose
// process is gone, for example a test binary killed with SIGKILL.
func sweepStale() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		m := nsNameRE.FindStringSubmatch(name)
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		if pid == os.Getpid() || syscall.Kill(pid, 0) == nil {
			continue // a live run (or this one)
		}
		killNSProcesses(name)
		exec.Command("ip", "netns", "del", name).Run()
		os.RemoveAll(filepath.Join("/etc/netns", name))
		fmt.Fprintf(os.Stderr, "test/tun: removed stale namespace %s\n", name)
	}
	// and the anytls binaries of such runs
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), nsPrefix+"-*-bin-*"))
	for _, dir := range dirs {
		m := nsNameRE.FindStringSubmatch(filepath.Base(dir))
		if m == nil {
			continue
		}
		if pid, _ := strconv.Atoi(m[1]); pid != os.Getpid() && syscall.Kill(pid, 0) != nil {
			os.RemoveAll(dir)
		}
	}
}

// killNSProcesses SIGKILLs whatever still runs in the namespace.
func killNSProcesses(ns string) {
	out, _ := exec.Command("ip", "netns", "pids", ns).Output()
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// topo is one client/server/target layout.
type topo struct {
	t                      *testing.T
	client, server, target string
	dir                    string // logs and configurations
	createdEtcNetns        bool
	baseRules              string // the client's `ip rule` output before any TUN client ran
	unregister             func()
	closeOnce              sync.Once
}

// ip runs an ip command and returns its output.
func ip(args ...string) (string, error) {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// newTopo creates the three namespaces, their links, addresses and routes, and per-namespace
// resolv.conf files. It is removed by t.Cleanup, and by cleanupAll if the test binary stops
// before that.
func newTopo(t *testing.T) *topo {
	t.Helper()
	n := topoSeq.Add(1)
	base := fmt.Sprintf("%s-%d-%d", nsPrefix, os.Getpid(), n)
	tp := &topo{t: t, client: base + "-client", server: base + "-server", target: base + "-target", dir: t.TempDir()}
	tp.unregister = addCleanup(tp.close)
	t.Cleanup(tp.close)
	if _, err := os.Stat("/etc/netns"); os.IsNotExist(err) {
		tp.createdEtcNetns = true
	}
	// resolv.conf per namespace: `ip netns exec` bind-mounts /etc/netns/NAME/* over /etc.
	// The client asks a resolver that only the TUN's DNS hijack answers; the server resolves
	// names with the target's DNS server. (The probes' own deadlines bound failing lookups.)
	resolv := map[string]string{
		tp.client: "nameserver " + resolverIP + "\noptions timeout:3 attempts:2\n",
		tp.server: "nameserver " + targetIP4 + "\noptions timeout:2 attempts:2\n",
	}
	for ns, content := range resolv {
		dir := filepath.Join("/etc/netns", ns)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	steps := [][]string{
		{"netns", "add", tp.client},
		{"netns", "add", tp.server},
		{"netns", "add", tp.target},
		// veth pairs created from inside the namespaces: nothing appears in the root namespace
		{"-n", tp.client, "link", "add", "c0", "type", "veth", "peer", "name", "s0", "netns", tp.server},
		{"-n", tp.server, "link", "add", "s1", "type", "veth", "peer", "name", "t0", "netns", tp.target},
		{"-n", tp.client, "addr", "add", clientIP4 + "/24", "dev", "c0"},
		{"-n", tp.client, "addr", "add", clientIP6 + "/64", "dev", "c0", "nodad"},
		{"-n", tp.server, "addr", "add", serverIP4 + "/24", "dev", "s0"},
		{"-n", tp.server, "addr", "add", serverIP6 + "/64", "dev", "s0", "nodad"},
		{"-n", tp.server, "addr", "add", egressIP4 + "/24", "dev", "s1"},
		{"-n", tp.server, "addr", "add", egressIP6 + "/64", "dev", "s1", "nodad"},
		{"-n", tp.target, "addr", "add", targetIP4 + "/24", "dev", "t0"},
		{"-n", tp.target, "addr", "add", targetIP6 + "/64", "dev", "t0", "nodad"},
	}
	for _, ns := range []string{tp.client, tp.server, tp.target} {
		steps = append(steps, []string{"-n", ns, "link", "set", "lo", "up"})
	}
	steps = append(steps,
		[]string{"-n", tp.client, "link", "set", "c0", "up"},
		[]string{"-n", tp.server, "link", "set", "s0", "up"},
		[]string{"-n", tp.server, "link", "set", "s1", "up"},
		[]string{"-n", tp.target, "link", "set", "t0", "up"},
		// The client's default route leads to the server, as a device's leads to its
		// gateway; the target has no route back to the client's network.
		[]string{"-n", tp.client, "route", "add", "default", "via", serverIP4},
		[]string{"-n", tp.client, "-6", "route", "add", "default", "via", serverIP6},
	)
	for _, s := range steps {
		if _, err := ip(s...); err != nil {
			t.Fatal(err)
		}
	}
	// The server does not forward: the only way from the client to the target is a proxy.
	if err := inNS(tp.server, func() error {
		for _, f := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
			if err := os.WriteFile(f, []byte("0\n"), 0o644); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	tp.baseRules = tp.rules(t)
	return tp
}

// rules is the client's routing policy (IPv4 and IPv6) and links, to compare before and after.
func (tp *topo) rules(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{{"-n", tp.client, "-4", "rule"}, {"-n", tp.client, "-6", "rule"}, {"-n", tp.client, "-o", "link"}} {
		out, err := ip(args...)
		if err != nil {
			t.Fatal(err)
		}
		if args[3] == "link" {
			// one line per link; keep the names only
			var names []string
			for _, line := range strings.Split(out, "\n") {
				if f := strings.Fields(line); len(f) > 1 {
					names = append(names, strings.TrimSuffix(f[1], ":"))
				}
			}
			out = "links: " + strings.Join(names, " ") + "\n"
		}
		b.WriteString(out)
	}
	return b.String()
}

func (tp *topo) close() {
	tp.closeOnce.Do(func() {
		for _, ns := range []string{tp.client, tp.server, tp.target} {
			killNSProcesses(ns)
			exec.Command("ip", "netns", "del", ns).Run()
			os.RemoveAll(filepath.Join("/etc/netns", ns))
		}
		if tp.createdEtcNetns {
			os.Remove("/etc/netns") // only if empty
		}
		tp.unregister()
	})
}

// inNS runs fn on an OS thread moved into the namespace, then moves the thread back. If it
// cannot go back, the goroutine exits still locked and the runtime discards the thread.
func inNS(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer home.Close()
		f, err := os.Open(filepath.Join("/run/netns", ns))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %v", ns, err)
			return
		}
		err = fn()
		if unix.Setns(int(home.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// waitTCP waits until something accepts TCP connections at addr inside the namespace.
func waitTCP(ns, addr string, timeout time.Duration, exited <-chan struct{}) error {
	deadline := time.Now().Add(timeout)
	for {
		err := inNS(ns, func() error {
			c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
			if err == nil {
				c.Close()
			}
			return err
		})
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("process exited before listening on %s", addr)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listens on %s in %s after %v: %v", addr, ns, timeout, err)
		}
		time.Sleep(50 * time.Millisecond) // polling for readiness
	}
}

// proc is a process running in a namespace.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error
	stopped atomic.Bool
}

// start runs argv in the namespace with `ip netns exec`, output to a log file in the topology's
// directory. The process is stopped by t.Cleanup (SIGTERM, then SIGKILL).
func (tp *topo) start(t *testing.T, ns, name string, env []string, argv ...string) *proc {
	t.Helper()
	p := &proc{name: name, logPath: filepath.Join(tp.dir, name+".log"), done: make(chan struct{})}
	logf, err := os.Create(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	p.cmd.Env = append(cleanEnv(), env...)
	p.cmd.Stdout = logf
	p.cmd.Stderr = logf
	p.cmd.Dir = tp.dir
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := spawn(p.cmd); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	unregister := addCleanup(func() { p.kill() })
	t.Cleanup(func() {
		p.stop()
		unregister()
		if dir := os.Getenv(logsEnv); dir != "" {
			keepLog(t, dir, p)
		}
		if t.Failed() {
			t.Logf("--- %s log (%s), last lines:\n%s", name, p.logPath, p.tail(60))
		}
	})
	return p
}

// spawner starts every child process from one OS thread that never exits: Pdeathsig fires when
// the parent *thread* ends, and the runtime may end threads (inNS, if it cannot restore one).
var spawner = sync.OnceValue(func() chan func() {
	ch := make(chan func())
	go func() {
		runtime.LockOSThread()
		for f := range ch {
			f()
		}
	}()
	return ch
})

func spawn(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	spawner() <- func() { errc <- cmd.Start() }
	return <-errc
}

// cleanEnv is this process's environment without proxy settings and roles: the probes are
// plain programs.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(k) {
		case "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", roleEnv, argsEnv:
			continue
		}
		env = append(env, kv)
	}
	return env
}

// stop sends SIGTERM and waits; a process that does not exit in 10 s is killed and stop
// reports it.
func (p *proc) stop() error {
	if p.stopped.Swap(true) {
		<-p.done
		return nil
	}
	select {
	case <-p.done:
		return fmt.Errorf("%s had already exited: %v", p.name, p.err)
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not exit within 10s of SIGTERM; killed", p.name)
	}
}

func (p *proc) kill() {
	p.stopped.Store(true)
	p.cmd.Process.Kill()
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// keepLog copies the process's log into dir (ANYTLS_TUN_LOGS), named after the test.
func keepLog(t *testing.T, dir string, p *proc) {
	b, err := os.ReadFile(p.logPath)
	if err == nil {
		name := strings.ReplaceAll(t.Name(), "/", "_") + "." + p.name + ".log"
		err = os.WriteFile(filepath.Join(dir, name), b, 0o644)
	}
	if err != nil {
		t.Logf("%s: %v", logsEnv, err)
	}
}

func (p *proc) tail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// runRoleIn runs this test binary in a helper role inside the namespace and returns its
// standard output; the role's parameters are JSON in argsEnv.
func runRoleIn(ctx context.Context, ns, role, args string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, selfBin)
	cmd.Env = append(cleanEnv(), roleEnv+"="+role, argsEnv+"="+args)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	err := spawn(cmd)
	if err == nil {
		err = cmd.Wait()
	}
	out := stdout.Bytes()
	if err != nil {
		return out, fmt.Errorf("%s in %s: %v: %s", role, ns, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

var errNoDevice = errors.New("no TUN device")

// waitDevice waits until the client's TUN device exists and is up, or the process exits.
func (tp *topo) waitDevice(p *proc, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		out, err := ip("-n", tp.client, "-o", "link", "show", "dev", tunDevice)
		if err == nil && strings.Contains(out, ",UP") {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("%s exited: %v", p.name, p.err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w %s in %s after %v", errNoDevice, tunDevice, tp.client, timeout)
		}
		time.Sleep(50 * time.Millisecond) // polling for readiness
	}
}
