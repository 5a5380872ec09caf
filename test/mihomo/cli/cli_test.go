// Package cli_test runs the anytls binary (built once, in TestMain) on mihomo configurations:
// `anytls check`, `anytls run`, and the binary under the name mihomo with mihomo's own command
// line, as GUI clients launch their core. Each run is a subprocess, so several mihomo instances
// never share a process. Built without the race detector, like the other packages under test/
// that run mihomo. All traffic stays on loopback.
package cli_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/anytls-engine/anytls/internal/testcert"
	"github.com/anytls-engine/anytls/internal/testnet"
)

const ioTimeout = 20 * time.Second

// tags are the Makefile's build tags.
const tags = "with_gvisor,with_utls,with_acme,with_clash_api"

var anytlsBin, mihomoBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "anytls-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	anytlsBin = filepath.Join(dir, "anytls")
	mihomoBin = filepath.Join(dir, "mihomo")
	build := exec.Command("go", "build", "-tags", tags, "-ldflags=-s -w", "-o", anytlsBin, "github.com/anytls-engine/anytls/cmd/anytls")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build anytls:", err)
		os.Exit(1)
	}
	if err := os.Symlink(anytlsBin, mihomoBin); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freePort reserves a loopback port for a listener that another program opens from its
// configuration (testnet.FreePort: not from the range that parallel tests' sockets use).
func freePort(t *testing.T) int {
	t.Helper()
	return testnet.FreePort(t)
}

// run runs the binary to completion.
func run(t *testing.T, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code = cmd.ProcessState.ExitCode()
	if err != nil && code < 0 {
		t.Fatalf("%s %v: %v", bin, args, err)
	}
	return out.String(), errb.String(), code
}

// start starts the binary and stops it (SIGTERM, then the exit status must be 0) at cleanup.
func start(t *testing.T, bin string, args ...string) *testnet.SyncBuffer {
	t.Helper()
	cmd := exec.Command(bin, args...)
	out := &testnet.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s exited with %v after SIGTERM; output:\n%s", bin, err, out.String())
			}
		case <-time.After(ioTimeout):
			cmd.Process.Kill()
			t.Errorf("%s did not exit after SIGTERM", bin)
		}
	})
	return out
}

// waitPort waits until something listens on the loopback port.
func waitPort(t *testing.T, port int, out *testnet.SyncBuffer) {
	t.Helper()
	deadline := time.Now().Add(ioTimeout)
	for {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on %d; output:\n%s", port, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// home writes a certificate pair and config.yaml (content with %[1]d..: the ports) into a new
// directory.
func home(t *testing.T, config string) string {
	t.Helper()
	dir := t.TempDir()
	_, certPEM, keyPEM, err := testcert.New("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "server.crt"), certPEM, 0o600)
	os.WriteFile(filepath.Join(dir, "server.key"), keyPEM, 0o600)
	if err := os.WriteFile(filepath.Join(dir, "config.yaml"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// loopConfig: a mixed listener whose traffic goes to an anytls proxy, whose server is an anytls
// listener of the same instance, which sends it out directly.
func loopConfig(mixedPort, anytlsPort int, extra string) string {
	return fmt.Sprintf(`log-level: warning
ipv6: false
proxies:
  - {name: p, type: anytls, server: 127.0.0.1, port: %[2]d, password: pw-alice, skip-cert-verify: true, udp: true}
listeners:
  - {name: in, type: anytls, listen: 127.0.0.1, port: %[2]d, users: {alice: pw-alice}, certificate: ./server.crt, private-key: ./server.key}
  - {name: mix, type: mixed, listen: 127.0.0.1, port: %[1]d, proxy: p}
rules:
  - MATCH,DIRECT
%[3]s`, mixedPort, anytlsPort, extra)
}

// getThroughSocks fetches /hello from a local HTTP server through the SOCKS5 side of a mixed
// listener. mihomo drops connections until it has applied its configuration, so a failed attempt
// is repeated until the deadline.
func getThroughSocks(t *testing.T, socksPort int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") })}
	go srv.Serve(ln)
	defer srv.Close()
	target := ln.Addr().(*net.TCPAddr)
	deadline := time.Now().Add(ioTimeout)
	for {
		err := socksGet(socksPort, target)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET through SOCKS5 and anytls: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func socksGet(socksPort int, target *net.TCPAddr) error {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(socksPort), ioTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ioTimeout))
	req := []byte{5, 1, 0, 5, 1, 0, 1}
	req = append(req, target.IP.To4()...)
	req = binary.BigEndian.AppendUint16(req, uint16(target.Port))
	if _, err := c.Write(req); err != nil {
		return err
	}
	reply := make([]byte, 2+10)
	if _, err := io.ReadFull(c, reply); err != nil || reply[0] != 5 || reply[1] != 0 || reply[3] != 0 {
		return fmt.Errorf("SOCKS5 handshake: % x, %v", reply, err)
	}
	io.WriteString(c, "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(resp.Body)
	if string(body) != "hello" {
		return fmt.Errorf("%s %q", resp.Status, body)
	}
	return nil
}

func TestCheck(t *testing.T) {
	dir := home(t, loopConfig(freePort(t), freePort(t), ""))
	out, errOut, code := run(t, anytlsBin, "check", "-c", filepath.Join(dir, "config.yaml"))
	if code != 0 || !strings.Contains(out, "valid") {
		t.Fatalf("check of a good configuration: exit %d\n%s%s", code, out, errOut)
	}
	bad := home(t, loopConfig(1, 2, "")+"\n")
	os.WriteFile(filepath.Join(bad, "config.yaml"), []byte(strings.Replace(loopConfig(1, 2, ""), "udp: true}", "udp: true, idle-session-timeout: -5}", 1)), 0o600)
	out, errOut, code = run(t, anytlsBin, "check", "-c", filepath.Join(bad, "config.yaml"))
	if code != 1 || !strings.Contains(errOut, `"p"`) || !strings.Contains(errOut, "idle-session-timeout") {
		t.Fatalf("check of a bad configuration: exit %d\n%s%s", code, out, errOut)
	}
	// The examples check as they are.
	for _, name := range []string{"client.yaml", "server.yaml"} {
		dir := t.TempDir()
		b, err := os.ReadFile(filepath.Join("..", "..", "..", "examples", "mihomo", name))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, name), b, 0o600)
		out, errOut, code := run(t, anytlsBin, "check", "--format", "mihomo", "-c", filepath.Join(dir, name))
		if code != 0 {
			t.Errorf("check examples/mihomo/%s: exit %d\n%s%s", name, code, out, errOut)
		}
	}
}

func TestRun(t *testing.T) {
	mixed, anytls := freePort(t), freePort(t)
	dir := home(t, loopConfig(mixed, anytls, ""))
	out := start(t, anytlsBin, "run", "-c", filepath.Join(dir, "config.yaml"))
	waitPort(t, mixed, out)
	waitPort(t, anytls, out)
	getThroughSocks(t, mixed)
}

func TestMihomoPersona(t *testing.T) {
	out, _, code := run(t, mihomoBin, "-v")
	if code != 0 || !strings.Contains(out, "Mihomo Meta v1.19.23") || !strings.Contains(out, "anytls engine") {
		t.Fatalf("mihomo -v: exit %d: %s", code, out)
	}

	mixed, anytls, ctl := freePort(t), freePort(t), freePort(t)
	dir := home(t, loopConfig(mixed, anytls, ""))
	out, errOut, code := run(t, mihomoBin, "-d", dir, "-f", filepath.Join(dir, "config.yaml"), "-t")
	if code != 0 || !strings.Contains(out, "test is successful") {
		t.Fatalf("mihomo -t: exit %d\n%s%s", code, out, errOut)
	}
	bad := home(t, strings.Replace(loopConfig(1, 2, ""), "pw-alice, skip", "'', skip", 1))
	out, errOut, code = run(t, mihomoBin, "-d", bad, "-f", filepath.Join(bad, "config.yaml"), "-t")
	if code != 1 || !strings.Contains(out, "test failed") || !strings.Contains(errOut, "password") {
		t.Fatalf("mihomo -t on a bad configuration: exit %d\n%s%s", code, out, errOut)
	}

	// As a GUI client launches its core: -d, -f, and the controller overridden on the command line.
	logs := start(t, mihomoBin, "-d", dir, "-f", filepath.Join(dir, "config.yaml"), "-ext-ctl", "127.0.0.1:"+strconv.Itoa(ctl), "-secret", "s3cret")
	waitPort(t, ctl, logs)
	waitPort(t, mixed, logs)
	getThroughSocks(t, mixed)
	api := func(method, path, body string) (int, string) {
		req, _ := http.NewRequest(method, "http://127.0.0.1:"+strconv.Itoa(ctl)+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer s3cret")
		resp, err := (&http.Client{Timeout: ioTimeout}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := api(http.MethodGet, "/version", ""); code != http.StatusOK || !strings.Contains(body, "v1.19.23") {
		t.Fatalf("/version: %d %s", code, body)
	}
	if code, body := api(http.MethodPut, "/configs?force=true", `{"path": ""}`); code != http.StatusNoContent {
		t.Fatalf("PUT /configs: %d %s", code, body)
	}
	getThroughSocks(t, mixed)
	if code, body := api(http.MethodPost, "/upgrade", ""); code != http.StatusForbidden {
		t.Fatalf("POST /upgrade: %d %s", code, body)
	}
}
