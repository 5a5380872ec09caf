// Package deploy checks the files in deploy/: the Dockerfile's build command, run as a plain go
// build with the same flags, gives a static binary that runs the image's command; the systemd unit
// passes `systemd-analyze verify` and its offline security review, and its hardening is asserted
// key by key by a parser (which runs whether or not systemd-analyze is installed). The binary is
// built once, without -race (the build flags are the Dockerfile's); the first run on a machine
// compiles sing-box and mihomo with -trimpath, which takes minutes, later runs hit the build cache.
package deploy

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/anytls-engine/anytls/internal/testnet"
)

const root = "../.."

// ---------------------------------------------------------------------------------------------
// Dockerfile

type dockerfile struct {
	args  map[string]string // ARG defaults
	build []string          // the go build command: env assignments, then go build and its args
	cmd   []string          // the final stage's CMD (exec form)
	entry []string          // ENTRYPOINT (exec form)
}

// parseDockerfile reads the instructions this test needs (line continuations joined).
func parseDockerfile(t *testing.T, path string) dockerfile {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(data), "\\\n", " ")
	d := dockerfile{args: map[string]string{}}
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		inst, rest, _ := strings.Cut(line, " ")
		rest = strings.TrimSpace(rest)
		switch strings.ToUpper(inst) {
		case "ARG":
			name, def, _ := strings.Cut(rest, "=")
			d.args[name] = def
		case "RUN":
			if strings.Contains(rest, "go build") {
				if d.build != nil {
					t.Fatal("Dockerfile: more than one RUN with go build")
				}
				d.build = shellWords(t, rest)
			}
		case "CMD":
			if err := json.Unmarshal([]byte(rest), &d.cmd); err != nil {
				t.Fatalf("Dockerfile CMD %s: want the exec form: %v", rest, err)
			}
		case "ENTRYPOINT":
			if err := json.Unmarshal([]byte(rest), &d.entry); err != nil {
				t.Fatalf("Dockerfile ENTRYPOINT %s: want the exec form: %v", rest, err)
			}
		}
	}
	if d.build == nil {
		t.Fatal("Dockerfile: no RUN with go build")
	}
	return d
}

// shellWords splits a simple shell command line: words, single and double quotes, no
// operators (a build line with && or ; would run more than go build: refused).
func shellWords(t *testing.T, s string) []string {
	t.Helper()
	var words []string
	var cur strings.Builder
	inWord := false
	var quote rune
	for _, r := range s {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case strings.ContainsRune("&;|<>`", r):
			t.Fatalf("build line %q: shell operator %q; keep it one go build command", s, r)
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		t.Fatalf("build line %q: unterminated quote", s)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	buildOut  []byte
)

// dockerBinary runs the Dockerfile's build command as a plain go build in the module root, with
// -o into a temporary directory, once per test binary.
func dockerBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		d := parseDockerfile(t, filepath.Join(root, "deploy", "Dockerfile"))
		dir, err := os.MkdirTemp("", "anytls-deploy-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "anytls")
		env := os.Environ()
		words := d.build
		for len(words) > 0 && strings.Contains(words[0], "=") {
			env = append(env, words[0])
			words = words[1:]
		}
		if len(words) < 2 || words[0] != "go" || words[1] != "build" {
			buildErr = fmt.Errorf("Dockerfile build command %q: want [VAR=value...] go build ...", d.build)
			return
		}
		args := slices.Clone(words[1:])
		expand := func(s string) string {
			return os.Expand(s, func(name string) string { return d.args[name] })
		}
		out := -1
		for i := range args {
			args[i] = expand(args[i])
			if args[i] == "-o" && i+1 < len(args) {
				out = i + 1
			}
		}
		if out < 0 {
			buildErr = fmt.Errorf("Dockerfile build command %q has no -o", d.build)
			return
		}
		args[out] = binPath
		cmd := exec.Command("go", args...)
		cmd.Dir = root
		cmd.Env = env
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("the Dockerfile's go build: %v\n%s", buildErr, buildOut)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// TestDockerBuildIsStatic: the build command works as a plain go build and the binary needs no
// dynamic loader (it runs FROM scratch).
func TestDockerBuildIsStatic(t *testing.T) {
	d := parseDockerfile(t, filepath.Join(root, "deploy", "Dockerfile"))
	if !slices.Contains(d.build, "CGO_ENABLED=0") {
		t.Errorf("build command %q: CGO_ENABLED=0 missing (the image has no C library)", d.build)
	}
	bin := dockerBinary(t)
	f, err := elf.Open(bin)
	if err != nil {
		if runtime.GOOS != "linux" {
			t.Skipf("not an ELF system: %v", err)
		}
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary has a PT_INTERP (dynamic loader): not static")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the binary needs shared libraries %v", libs)
	}
	if f.Section(".symtab") != nil {
		t.Error("the binary has a symbol table: -s was not applied")
	}
}

// TestDockerBinaryVersion: -X main.version with the ARG default, and the hosts built in.
func TestDockerBinaryVersion(t *testing.T) {
	d := parseDockerfile(t, filepath.Join(root, "deploy", "Dockerfile"))
	out, err := exec.Command(dockerBinary(t), "version").CombinedOutput()
	if err != nil {
		t.Fatalf("anytls version: %v\n%s", err, out)
	}
	for _, want := range []string{"anytls " + d.args["VERSION"] + " (go1.", "sing-box v1.14.1", "mihomo v1.19.23"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("anytls version printed %q, want %q in it", out, want)
		}
	}
}

// runServer starts the binary with args and waits until it prints that it listens and serves
// metrics; then it reloads (SIGHUP) and stops it (SIGTERM), expecting a clean exit.
func runServer(t *testing.T, bin string, args []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr testnet.SyncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)
	ready := false
	for lines.Scan() {
		if strings.HasPrefix(lines.Text(), "metrics at http://") {
			ready = true
			break
		}
	}
	if !ready {
		cmd.Wait()
		t.Fatalf("anytls %q did not start: %s", args, stderr.String())
	}
	go io.Copy(io.Discard, stdout)
	cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(stderr.String(), "users reloaded") {
		if time.Now().After(deadline) {
			t.Fatalf("no reload after SIGHUP: %s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("anytls %q: %v\n%s", args, err, stderr.String())
	}
}

// testUsers writes a users file and returns its path.
func testUsers(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "users.json")
	if err := os.WriteFile(path, []byte(`[{"name": "bob", "password": "pw-bob"}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestDockerCommandRuns: the image's ENTRYPOINT and CMD, with its paths and ports moved to
// temporary ones, start a server that reloads on SIGHUP and stops on SIGTERM.
func TestDockerCommandRuns(t *testing.T) {
	d := parseDockerfile(t, filepath.Join(root, "deploy", "Dockerfile"))
	if len(d.entry) != 1 || len(d.cmd) == 0 {
		t.Fatalf("ENTRYPOINT %q CMD %q: want the binary as ENTRYPOINT and its arguments as CMD", d.entry, d.cmd)
	}
	users, state := testUsers(t), t.TempDir()
	replace := map[string]string{
		"/etc/anytls/users.json": users, "/var/lib/anytls": state, ":443": "127.0.0.1:0", "0.0.0.0:9090": "127.0.0.1:0",
	}
	args := slices.Clone(d.cmd)
	for i, a := range args {
		if r, ok := replace[a]; ok {
			args[i] = r
			delete(replace, a)
		}
	}
	if len(replace) > 0 {
		t.Fatalf("CMD %q: the test expected %v in it; update the test with the Dockerfile", d.cmd, replace)
	}
	runServer(t, dockerBinary(t), args)
}

// ---------------------------------------------------------------------------------------------
// systemd unit

// unit is a parsed systemd unit: section -> key -> values (keys may repeat).
type unit map[string]map[string][]string

func parseUnit(t *testing.T, path string) unit {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := unit{}
	section := ""
	text := strings.ReplaceAll(string(data), "\\\n", " ")
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
		default:
			key, value, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: %q is not key=value in a section", path, n+1, line)
			}
			u[section][strings.TrimSpace(key)] = append(u[section][strings.TrimSpace(key)], strings.TrimSpace(value))
		}
	}
	return u
}

// TestUnitHardening asserts the unit's hardening key by key (this runs everywhere; the
// systemd-analyze checks below need systemd).
func TestUnitHardening(t *testing.T) {
	u := parseUnit(t, filepath.Join(root, "deploy", "anytls.service"))
	svc := u["Service"]
	if svc == nil {
		t.Fatal("no [Service] section")
	}
	exact := map[string]string{
		"DynamicUser":             "yes",
		"CapabilityBoundingSet":   "CAP_NET_BIND_SERVICE",
		"AmbientCapabilities":     "CAP_NET_BIND_SERVICE",
		"Restart":                 "on-failure",
		"ExecReload":              "/bin/kill -HUP $MAINPID",
		"NoNewPrivileges":         "yes",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"PrivateDevices":          "yes",
		"ProtectKernelTunables":   "yes",
		"ProtectKernelModules":    "yes",
		"ProtectControlGroups":    "yes",
		"RestrictNamespaces":      "yes",
		"RestrictSUIDSGID":        "yes",
		"LockPersonality":         "yes",
		"MemoryDenyWriteExecute":  "yes",
		"SystemCallArchitectures": "native",
		"StateDirectory":          "anytls",
	}
	for key, want := range exact {
		got := svc[key]
		if len(got) != 1 || got[0] != want {
			t.Errorf("[Service] %s = %q, want exactly %q", key, got, want)
		}
	}
	if f := svc["SystemCallFilter"]; !slices.Contains(f, "@system-service") || !slices.ContainsFunc(f, func(s string) bool { return strings.HasPrefix(s, "~") && strings.Contains(s, "@privileged") }) {
		t.Errorf("SystemCallFilter = %q: want @system-service and ~@privileged", f)
	}
	exec := svc["ExecStart"]
	if len(exec) != 1 {
		t.Fatalf("ExecStart = %q", exec)
	}
	for _, want := range []string{" server ", "--users /etc/anytls/users.json", "--state ${STATE_DIRECTORY}", "--metrics "} {
		if !strings.Contains(exec[0], want) {
			t.Errorf("ExecStart %q: %q missing", exec[0], want)
		}
	}
	if got := u["Install"]["WantedBy"]; !slices.Equal(got, []string{"multi-user.target"}) {
		t.Errorf("[Install] WantedBy = %q", got)
	}
	// The group the unit reads /etc/anytls with is created by the sysusers file, and the
	// directory by the tmpfiles file.
	group := svc["SupplementaryGroups"]
	sysusers, _ := os.ReadFile(filepath.Join(root, "deploy", "anytls.sysusers"))
	tmpfiles, _ := os.ReadFile(filepath.Join(root, "deploy", "anytls.tmpfiles"))
	if len(group) != 1 || !regexp.MustCompile(`(?m)^g `+regexp.QuoteMeta(group[0])+` `).Match(sysusers) {
		t.Errorf("SupplementaryGroups %q: no such group in anytls.sysusers", group)
	} else if !regexp.MustCompile(`(?m)^d /etc/anytls 2750 root ` + regexp.QuoteMeta(group[0]) + ` `).Match(tmpfiles) {
		t.Errorf("anytls.tmpfiles does not create /etc/anytls 2750 root:%s", group[0])
	}
}

// unitEnv expands the unit's ExecStart as systemd would, with Environment= defaults and the
// variables systemd sets, and splits it into words.
func unitExecStart(t *testing.T, u unit, vars map[string]string) []string {
	t.Helper()
	svc := u["Service"]
	env := map[string]string{}
	for _, line := range svc["Environment"] {
		for _, kv := range strings.Fields(line) {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
		}
	}
	for k, v := range vars {
		env[k] = v
	}
	var out []string
	for _, w := range strings.Fields(svc["ExecStart"][0]) {
		switch {
		case strings.HasPrefix(w, "$") && !strings.HasPrefix(w, "${"):
			// $VAR: split into words, absent means nothing
			out = append(out, strings.Fields(env[w[1:]])...)
		default:
			out = append(out, os.Expand(w, func(k string) string { return env[k] }))
		}
	}
	return out
}

// TestUnitCommandRuns: the unit's ExecStart, with its paths moved to temporary ones, starts a
// server that reloads on SIGHUP (ExecReload) and stops on SIGTERM (systemctl stop).
func TestUnitCommandRuns(t *testing.T) {
	u := parseUnit(t, filepath.Join(root, "deploy", "anytls.service"))
	users, state := testUsers(t), t.TempDir()
	words := unitExecStart(t, u, map[string]string{
		"STATE_DIRECTORY": state, "ANYTLS_LISTEN": "127.0.0.1:0", "ANYTLS_METRICS": "127.0.0.1:0",
	})
	if words[0] != "/usr/local/bin/anytls" {
		t.Fatalf("ExecStart runs %s, the README installs /usr/local/bin/anytls", words[0])
	}
	args := slices.Clone(words[1:])
	found := false
	for i, a := range args {
		if a == "/etc/anytls/users.json" {
			args[i], found = users, true
		}
	}
	if !found {
		t.Fatalf("ExecStart %q does not read /etc/anytls/users.json", words)
	}
	runServer(t, dockerBinary(t), args)
}

// TestUnitSystemdAnalyze runs `systemd-analyze verify` and the offline security review on the
// unit, its binary path pointed at the binary built here (verify checks that it exists).
func TestUnitSystemdAnalyze(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		// TestUnitHardening has checked the unit key by key; say plainly what did not run.
		t.Skip("systemd-analyze is not installed: only the parser-based checks (TestUnitHardening) ran")
	}
	data, err := os.ReadFile(filepath.Join(root, "deploy", "anytls.service"))
	if err != nil {
		t.Fatal(err)
	}
	unitPath := filepath.Join(t.TempDir(), "anytls.service")
	os.WriteFile(unitPath, bytes.ReplaceAll(data, []byte("/usr/local/bin/anytls"), []byte(dockerBinary(t))), 0o644)
	out, err := exec.Command(sa, "verify", unitPath).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	// Exposure 2.0 ("OK") at most; the threshold is in tenths.
	out, err = exec.Command(sa, "security", "--offline=true", "--threshold=20", unitPath).CombinedOutput()
	if err != nil {
		t.Errorf("systemd-analyze security: %v\n%s", err, out)
	}
	if m := regexp.MustCompile(`Overall exposure level for anytls.service: ([0-9.]+)`).FindSubmatch(out); m != nil {
		t.Logf("systemd-analyze security: exposure %s", m[1])
	}
}
