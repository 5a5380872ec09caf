package tun

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const bulkSize = 64 << 20

// rig is a topology with its target and servers running.
type rig struct {
	*topo
	s secrets
}

// newRig creates the namespaces, starts the target and the requested servers, and checks the
// probe itself: from the server namespace every check passes (the probe works), from the client
// namespace every check fails (no path to the target without the tunnel).
func newRig(t *testing.T, singbox, mihomo bool) *rig {
	t.Helper()
	r := &rig{topo: newTopo(t)}
	r.s = newSecrets(t, filepath.Join(r.dir, "certs"))
	target := r.start(t, r.target, "target", []string{roleEnv + "=target"}, selfBin)
	if err := waitTCP(r.target, hostPort(targetIP4, 80), 20*time.Second, target.done); err != nil {
		t.Fatal(err)
	}
	var servers []*proc
	if singbox {
		path := filepath.Join(r.dir, "singbox-server", "config.json")
		writeFile(t, path, singboxServer(t, r.s))
		servers = append(servers, r.start(t, r.server, "singbox-server", nil, anytlsBin, "run", "-c", path))
	}
	if mihomo {
		path := mihomoServer(t, r.s, filepath.Join(r.dir, "mihomo-server"))
		servers = append(servers, r.start(t, r.server, "mihomo-server", nil, anytlsBin, "run", "-c", path))
	}
	for _, p := range servers {
		port := singboxServerPort
		if p.name == "mihomo-server" {
			port = mihomoServerPort
		}
		if err := waitTCP(r.server, hostPort(serverIP4, port), 30*time.Second, p.done); err != nil {
			t.Fatalf("%s: %v", p.name, err)
		}
	}
	// The probe works: from the server namespace, the target is reached directly and sees the
	// server's addresses. Its transfer rates are the direct path's, to compare with the tunnel's.
	control := append(directChecks(true),
		check{Kind: "bulk", Addr: hostPort(targetIP4, 80), Want: egressIP4, Size: bulkSize, Timeout: 2 * time.Minute},
		check{Kind: "upload", Addr: hostPort(targetIP4, 80), Want: egressIP4, Size: bulkSize, Timeout: 2 * time.Minute})
	r.expect(t, r.server, "control probe from the server namespace", true, control)
	// Without a tunnel the client has no path to the target.
	r.expect(t, r.client, "before any client runs", false, directChecks(false))
	return r
}

// directChecks address the target by IP (and DNS through resolv.conf); want adds the address the
// target must see when they pass.
func directChecks(want bool) []check {
	w := func(a string) string {
		if want {
			return a
		}
		return ""
	}
	return []check{
		{Kind: "dns", Want: w(egressIP4)},
		{Kind: "http", Addr: hostPort(targetIP4, 80), Want: w(egressIP4)},
		{Kind: "http", Addr: hostPort(targetIP6, 80), Want: w(egressIP6)},
		{Kind: "udp", Addr: hostPort(targetIP4, 7), Want: w(egressIP4)},
		{Kind: "udp", Addr: hostPort(targetIP6, 7), Want: w(egressIP6)},
	}
}

// tunChecks is what a device behind the TUN does: resolve and use names, IPv4 and IPv6, TCP
// and UDP, and a large download and upload.
func tunChecks() []check {
	return []check{
		{Kind: "dns", Want: egressIP4},
		{Kind: "http", Addr: hostPort(testName, 80), Want: egressIP4},
		{Kind: "http", Addr: hostPort(testName6, 80), Want: egressIP6},
		{Kind: "http", Addr: hostPort(targetIP4, 80), Want: egressIP4},
		{Kind: "http", Addr: hostPort(targetIP6, 80), Want: egressIP6},
		{Kind: "udp", Addr: hostPort(testName, 7), Want: egressIP4},
		{Kind: "udp", Addr: hostPort(testName6, 7), Want: egressIP6},
		{Kind: "bulk", Addr: hostPort(testName, 80), Want: egressIP4, Size: bulkSize, Timeout: 2 * time.Minute},
		{Kind: "upload", Addr: hostPort(testName, 80), Want: egressIP4, Size: bulkSize, Timeout: 2 * time.Minute},
	}
}

// probe runs the checks in the namespace. Passing checks get 3 attempts of 10 s each (the
// first connections may race the TUN stack's start); failing ones 1 attempt of 1.5 s, in
// parallel.
func (r *rig) probe(t *testing.T, ns string, pass bool, checks []check) []result {
	t.Helper()
	args := probeArgs{Checks: checks, Timeout: 10 * time.Second, Attempts: 3}
	if !pass {
		args = probeArgs{Checks: checks, Timeout: 1500 * time.Millisecond, Attempts: 1, Parallel: true}
	}
	b, _ := json.Marshal(args)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := runRoleIn(ctx, ns, "probe", string(b))
	if err != nil {
		t.Fatal(err)
	}
	var results []result
	if err := json.Unmarshal(out, &results); err != nil {
		t.Fatalf("probe output %q: %v", out, err)
	}
	return results
}

// expect runs the checks and requires them all to pass (pass) or all to fail.
func (r *rig) expect(t *testing.T, ns, what string, pass bool, checks []check) []result {
	t.Helper()
	results := r.probe(t, ns, pass, checks)
	for _, res := range results {
		switch {
		case pass && !res.OK:
			t.Errorf("%s: %v failed: %s", what, res.Check, res.Err)
		case !pass && res.OK:
			t.Errorf("%s: %v succeeded (target saw %s); it must fail without the tunnel", what, res.Check, res.Seen)
		case pass:
			if res.Check.Kind == "bulk" || res.Check.Kind == "upload" {
				dir := "download"
				if res.Check.Kind == "upload" {
					dir = "upload"
				}
				t.Logf("%s: %s %d MiB in %.2fs = %.1f MB/s, sha256 ok (target saw %s)", what, dir, res.Bytes>>20, res.Seconds, float64(res.Bytes)/res.Seconds/1e6, res.Seen)
			} else {
				t.Logf("%s: %v ok (target saw %s, %.0f ms)", what, res.Check, res.Seen, res.Seconds*1000)
			}
		default:
			t.Logf("%s: %v fails as it must: %s", what, res.Check, firstLine(res.Err))
		}
	}
	return results
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// waitReady waits until a connection from the client namespace reaches the target.
func (r *rig) waitReady(t *testing.T, p *proc) {
	t.Helper()
	args, _ := json.Marshal(probeArgs{
		Checks:  []check{{Kind: "http", Addr: hostPort(targetIP4, 80), Want: egressIP4}},
		Timeout: 2 * time.Second, RetryFor: 30 * time.Second,
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := runRoleIn(ctx, r.client, "probe", string(args))
	if err != nil {
		t.Fatal(err)
	}
	var results []result
	if err := json.Unmarshal(out, &results); err != nil || len(results) != 1 {
		t.Fatalf("probe output %q: %v", out, err)
	}
	if res := results[0]; !res.OK {
		t.Fatalf("no connection went through the tunnel in %.1fs (%d tries; the client is running: %v): %s",
			res.Seconds, res.Tries, !p.exited(), res.Err)
	} else if res.Tries > 1 {
		t.Logf("the tunnel passed its first connection at try %d (%.2fs); the first try failed: %s", res.Tries, res.Seconds, res.FirstErr)
	}
}

// client is one TUN client run: a host's example configuration against a server.
type client struct {
	host  string // "sing-box" or "mihomo"
	stack string
	port  int // the server's port: singboxServerPort or mihomoServerPort
}

// run starts the TUN client, probes through it, stops it and checks that it cleaned up and that
// the probe then fails.
func (r *rig) run(t *testing.T, c client) {
	dir := filepath.Join(r.dir, fmt.Sprintf("%s-%s-%d", c.host, c.stack, c.port))
	var path string
	if c.host == "sing-box" {
		path = filepath.Join(dir, "config.json")
		writeFile(t, path, singboxTUNClient(t, r.s, c.port, c.stack))
	} else {
		path = mihomoTUNClient(t, r.s, c.port, c.stack, dir)
	}
	name := strings.ReplaceAll(t.Name(), "/", "_") + "-client"
	start := time.Now()
	p := r.start(t, r.client, name, nil, anytlsBin, "run", "-c", path)
	if err := r.waitDevice(p, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("TUN device up after %.2fs", time.Since(start).Seconds())
	// mihomo brings its TUN up before its tunnel runs (executor.ApplyConfig: updateTun, then
	// providers and profile, then tunnel.OnRunning) and closes the connections it gets in
	// between. Wait until one connection goes through before the checks.
	r.waitReady(t, p)
	t.Logf("first connection through the tunnel after %.2fs", time.Since(start).Seconds())
	r.expect(t, r.client, "through the tunnel", true, tunChecks())
	if p.exited() {
		t.Fatalf("the client exited during the checks: %v", p.err)
	}
	stopStart := time.Now()
	if err := p.stop(); err != nil {
		t.Error(err)
	}
	t.Logf("the client exited %.2fs after SIGTERM", time.Since(stopStart).Seconds())
	if after := r.rules(t); after != r.baseRules {
		t.Errorf("the client left routing state behind after SIGTERM:\nbefore:\n%s\nafter:\n%s", r.baseRules, after)
	}
	r.expect(t, r.client, "client stopped", false, directChecks(false))
}

// sing-box's TUN inbound with our anytls outbound, against our anytls inbound in sing-box, on
// each of sing-box's stacks.
func TestSingBox(t *testing.T) {
	requireTUN(t)
	r := newRig(t, true, false)
	for _, stack := range []string{"system", "gvisor", "mixed"} {
		t.Run(stack, func(t *testing.T) {
			r.run(t, client{host: "sing-box", stack: stack, port: singboxServerPort})
		})
	}
}

// mihomo's TUN with our anytls proxy, against our anytls listener in mihomo.
func TestMihomo(t *testing.T) {
	requireTUN(t)
	r := newRig(t, false, true)
	for _, stack := range []string{"system", "gvisor", "mixed"} {
		t.Run(stack, func(t *testing.T) {
			r.run(t, client{host: "mihomo", stack: stack, port: mihomoServerPort})
		})
	}
}

// Crossed: a sing-box TUN client against the mihomo server configuration, and a mihomo TUN
// client against the sing-box server configuration.
func TestCrossed(t *testing.T) {
	requireTUN(t)
	r := newRig(t, true, true)
	t.Run("singbox-client-mihomo-server", func(t *testing.T) {
		r.run(t, client{host: "sing-box", stack: "system", port: mihomoServerPort})
	})
	t.Run("mihomo-client-singbox-server", func(t *testing.T) {
		r.run(t, client{host: "mihomo", stack: "system", port: singboxServerPort})
	})
}
