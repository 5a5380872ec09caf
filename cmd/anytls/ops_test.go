package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"image"
	"image/color"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/makiuchi-d/gozxing"
	gozxingqr "github.com/makiuchi-d/gozxing/qrcode"

	"github.com/anytls-engine/anytls/adapter/metrics/metricstest"
	"github.com/anytls-engine/anytls/internal/testnet"
	"github.com/anytls-engine/anytls/option"
)

// writeUsers replaces the users file the way editors save: a new file renamed over the old.
func writeUsers(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// echoThrough writes n bytes into conn and reads them back; it returns the first error.
func echoThrough(conn net.Conn, n int) error {
	conn.SetDeadline(time.Now().Add(testTimeout))
	defer conn.SetDeadline(time.Time{})
	msg := bytes.Repeat([]byte{'u'}, n)
	errc := make(chan error, 1)
	go func() {
		_, err := conn.Write(msg)
		errc <- err
	}()
	got := make([]byte, n)
	if _, err := io.ReadFull(conn, got); err != nil {
		return err
	}
	if err := <-errc; err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return errors.New("echo mismatch")
	}
	return nil
}

// opsServer starts a server with a users file and metrics on loopback; reloads reports each
// reload's result.
func opsServer(t *testing.T, users string) (s *server, path string, reloads chan error) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "users.json")
	writeUsers(t, path, users)
	reloads = make(chan error, 10)
	ctx, cancel := context.WithCancel(context.Background())
	s, err := startServer(ctx, serverConfig{
		Listen: "127.0.0.1:0", UsersFile: path, MetricsListen: "127.0.0.1:0", StateDir: t.TempDir(),
		AllowPrivate: true, onReload: func(err error) { reloads <- err },
		// Connections with a removed user's password are turned away within a second.
		Options: option.ServerOptions{AuthTimeout: time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		s.Close()
	})
	return s, path, reloads
}

func waitReload(t *testing.T, reloads <-chan error) error {
	t.Helper()
	select {
	case err := <-reloads:
		return err
	case <-time.After(testTimeout):
		t.Fatal("no reload")
		return nil
	}
}

// userStream opens a stream to dest as the named user.
func userStream(t *testing.T, s *server, name, dest string) (net.Conn, error) {
	t.Helper()
	link, err := s.LinkFor(name)
	if err != nil {
		t.Fatal(err)
	}
	return openAs(t, link, dest)
}

func openAs(t *testing.T, link option.Link, dest string) (net.Conn, error) {
	t.Helper()
	c := testEngineClient(t, link)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	return c.OpenStream(ctx, mustAddr(t, dest))
}

// TestUsersReload: users added and removed through the file (rename-on-save), a bad file, and
// SIGHUP, with traffic through clients before and after.
func TestUsersReload(t *testing.T) {
	s, path, reloads := opsServer(t, `[{"name": "alice", "password": "pw-alice"}, {"name": "bob", "password": "pw-bob"}]`)
	echo := testnet.TCPEcho(t)
	alice, err := userStream(t, s, "alice", echo)
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	bobLink, _ := s.LinkFor("bob")
	bob, err := openAs(t, bobLink, echo)
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()
	for name, c := range map[string]net.Conn{"alice": alice, "bob": bob} {
		if err := echoThrough(c, 1000); err != nil {
			t.Fatalf("%s before the reload: %v", name, err)
		}
	}

	// bob removed, carol added.
	writeUsers(t, path, `[{"name": "alice", "password": "pw-alice"}, {"name": "carol", "password": "pw-carol"}]`)
	if err := waitReload(t, reloads); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if err := echoThrough(alice, 1000); err != nil {
		t.Fatalf("alice's stream did not survive the reload: %v", err)
	}
	if err := echoThrough(bob, 1000); err == nil {
		t.Fatal("bob's stream still works after bob was removed")
	}
	if c, err := openAs(t, bobLink, echo); err == nil {
		if echoThrough(c, 10) == nil {
			t.Fatal("bob can still connect after he was removed")
		}
		c.Close()
	}
	carol, err := userStream(t, s, "carol", echo)
	if err != nil {
		t.Fatalf("carol: %v", err)
	}
	defer carol.Close()
	if err := echoThrough(carol, 1000); err != nil {
		t.Fatalf("carol right after the reload: %v", err)
	}

	// A bad file keeps the users in force.
	writeUsers(t, path, `[{"name": "alice", "password": "pw-alice"}, {"name": "dave"}]`)
	err = waitReload(t, reloads)
	if err == nil || !strings.Contains(err.Error(), `users[1] ("dave"): password is missing`) {
		t.Fatalf("reload of a bad file: %v, want an error naming users[1] (dave)", err)
	}
	for name, c := range map[string]net.Conn{"alice": alice, "carol": carol} {
		if err := echoThrough(c, 1000); err != nil {
			t.Fatalf("%s after a bad file: %v", name, err)
		}
	}
	if c, err := userStream(t, s, "carol", echo); err != nil || echoThrough(c, 10) != nil {
		t.Fatalf("carol cannot connect after a bad file: %v", err)
	} else {
		c.Close()
	}
	if _, err := s.LinkFor("dave"); err == nil {
		t.Fatal("dave is in force although the file was refused")
	}

	// Metrics saw it all.
	m, err := metricstest.Scrape(fmt.Sprintf("http://%s/metrics", s.MetricsAddr()))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		value  float64
		name   string
		labels []string
	}{
		{1, "anytls_user_reloads_total", []string{"result", "ok"}},
		{1, "anytls_user_reloads_total", []string{"result", "error"}},
		{2, "anytls_users", nil},
		{0, "anytls_sessions", []string{"user", "bob"}},
	} {
		if got, ok := m.Get(c.name, c.labels...); !ok || got != c.value {
			t.Errorf("%s = %v (present %v), want %v", metricstest.Key(c.name, c.labels...), got, ok, c.value)
		}
	}
}

// TestServerCommandSIGHUP: `anytls server --users` reloads on SIGHUP (here with a file whose
// watcher is not given the chance: the content is unchanged, so only the signal reloads).
func TestServerCommandSIGHUP(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users.json")
	writeUsers(t, path, `[{"name": "alice", "password": "pw-alice"}]`)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := newLineWriter()
	errOut := newLineWriter()
	done := make(chan error, 1)
	go func() {
		done <- serverMain(ctx, []string{"-l", "127.0.0.1:0", "--users", path, "--metrics", "127.0.0.1:0", "--state", t.TempDir(), "--public-host", "127.0.0.1"}, out, errOut)
	}()
	hint := out.waitLine(t, "anytls link --users", done)
	if !strings.Contains(hint, "--host 127.0.0.1 --port ") || !strings.Contains(hint, "--insecure") {
		t.Errorf("link hint %q", hint)
	}
	metricsLine := out.waitLine(t, "metrics at ", done)
	url := strings.TrimSpace(strings.SplitN(metricsLine, "metrics at ", 2)[1])
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	line := errOut.waitLine(t, "users reloaded", done)
	if !strings.Contains(line, "reason=SIGHUP") || !strings.Contains(line, "users=1") {
		t.Errorf("reload log %q", line)
	}
	m, err := metricstest.Scrape(url)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := m.Get("anytls_user_reloads_total", "result", "ok"); v != 1 {
		t.Errorf("reloads after SIGHUP = %v, want 1", v)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestServerUsersFileErrors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "users.json")
	os.WriteFile(path, []byte(`[{"name": "bob", "password": "x"}, {"name": "eve", "pasword": "y"}]`), 0o600)
	_, err := startServer(context.Background(), serverConfig{Listen: "127.0.0.1:0", UsersFile: path, StateDir: dir})
	if err == nil || !strings.Contains(err.Error(), path+`: users[1] ("eve"): json: unknown field "pasword"`) {
		t.Fatalf("startServer with a bad users file: %v", err)
	}
	os.WriteFile(path, []byte(`[{"name": "bob", "password": "same"}]`), 0o600)
	_, err = startServer(context.Background(), serverConfig{Listen: "127.0.0.1:0", UsersFile: path, Password: "same", StateDir: dir})
	if err == nil || !strings.Contains(err.Error(), "same password as -p") {
		t.Fatalf("a file user with the -p password: %v", err)
	}
	if _, err := startServer(context.Background(), serverConfig{Listen: "127.0.0.1:0", StateDir: dir}); err == nil {
		t.Fatal("a server without -p or --users started")
	}
}

// TestMetricsAfterClientTraffic: exact byte counts per user and direction after traffic through
// clients, counted while a stream is still open, and the other counters.
func TestMetricsAfterClientTraffic(t *testing.T) {
	s, _, _ := opsServer(t, `[{"name": "alice", "password": "pw-alice"}, {"name": "bob", "password": "pw-bob"}]`)
	url := fmt.Sprintf("http://%s/metrics", s.MetricsAddr())
	echo := testnet.TCPEcho(t)
	hdr := float64(mustAddr(t, echo).EncodedLen()) // the destination travels up in the stream

	alice, err := userStream(t, s, "alice", echo)
	if err != nil {
		t.Fatal(err)
	}
	if err := echoThrough(alice, 300_000); err != nil {
		t.Fatal(err)
	}
	// Open stream: the scrape collects its bytes so far. The server counts a write once it
	// returned, which can be a moment after the client read the echo: scrape until it shows.
	var m metricstest.Samples
	for deadline := time.Now().Add(10 * time.Second); ; {
		if m, err = metricstest.Scrape(url); err != nil {
			t.Fatal(err)
		}
		if down, _ := m.Get("anytls_user_bytes_total", "user", "alice", "direction", "down"); down >= 300_000 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	check := func(m metricstest.Samples, value float64, name string, labels ...string) {
		t.Helper()
		if got, ok := m.Get(name, labels...); !ok || got != value {
			t.Errorf("%s = %v (present %v), want %v", metricstest.Key(name, labels...), got, ok, value)
		}
	}
	check(m, hdr+300_000, "anytls_user_bytes_total", "user", "alice", "direction", "up")
	check(m, 300_000, "anytls_user_bytes_total", "user", "alice", "direction", "down")
	check(m, 1, "anytls_sessions", "user", "alice")
	check(m, 1, "anytls_streams_total", "user", "alice")
	check(m, 0, "anytls_user_bytes_total", "user", "bob", "direction", "down")
	check(m, 0, "anytls_sessions", "user", "bob")
	alice.Close()

	// The local proxy client (SOCKS5) as bob, and a prober failing authentication.
	bobLink, _ := s.LinkFor("bob")
	cl, err := startClient(context.Background(), clientConfig{Listen: "127.0.0.1:0", Link: bobLink})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ts := newTarget(t)
	hc := proxyClient("socks5://"+cl.Addr().String(), http.DefaultTransport.(*http.Transport))
	body := get(t, hc, ts.URL+"/metrics-test")
	hc.CloseIdleConnections()
	probe, err := tls.Dial("tcp", s.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	probe.Write(bytes.Repeat([]byte("?"), 40)) // a wrong password
	defer probe.Close()

	deadline := time.Now().Add(testTimeout)
	for {
		m, err = metricstest.Scrape(url)
		if err != nil {
			t.Fatal(err)
		}
		down, _ := m.Get("anytls_user_bytes_total", "user", "bob", "direction", "down")
		fails, _ := m.Get("anytls_auth_failures_total")
		aliceUp, _ := m.Get("anytls_user_bytes_total", "user", "alice", "direction", "up")
		if down > float64(len(body)) && fails == 1 && aliceUp == hdr+300_000 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bob down %v (body %d), auth failures %v, alice up %v", down, len(body), fails, aliceUp)
		}
		time.Sleep(20 * time.Millisecond)
	}
	check(m, 300_000, "anytls_user_bytes_total", "user", "alice", "direction", "down")
	if up, _ := m.Get("anytls_user_bytes_total", "user", "bob", "direction", "up"); up < hdr {
		t.Errorf("bob up = %v", up)
	}
	if n, _ := m.Get("anytls_streams_total", "user", "bob"); n < 1 {
		t.Errorf("bob streams = %v", n)
	}
	check(m, 0, "anytls_fallbacks_total")
	check(m, 0, "anytls_limits_reached_total", "limit", "sessions")
	check(m, 2, "anytls_users")
	if _, ok := m.Get("process_resident_memory_bytes"); !ok {
		t.Error("process metrics missing")
	}
	t.Logf("sample: %s", sampleLine(m, "alice", "bob"))
}

// sampleLine summarises per-user series for the test log.
func sampleLine(m metricstest.Samples, users ...string) string {
	var b strings.Builder
	for _, u := range users {
		up, _ := m.Get("anytls_user_bytes_total", "user", u, "direction", "up")
		down, _ := m.Get("anytls_user_bytes_total", "user", u, "direction", "down")
		sess, _ := m.Get("anytls_sessions", "user", u)
		streams, _ := m.Get("anytls_streams_total", "user", u)
		fmt.Fprintf(&b, "%s: up %.0f down %.0f sessions %.0f streams %.0f; ", u, up, down, sess, streams)
	}
	fails, _ := m.Get("anytls_auth_failures_total")
	fmt.Fprintf(&b, "auth failures %.0f", fails)
	return b.String()
}

func TestLinkCommand(t *testing.T) {
	dir := t.TempDir()
	users := filepath.Join(dir, "users.json")
	os.WriteFile(users, []byte(`[{"name": "bob", "password": "pw/bob+1"}, {"name": "alice", "password": "pw-alice"}]`), 0o600)
	run := func(args ...string) (string, error) {
		var out, errOut bytes.Buffer
		err := linkMain(args, &out, &errOut)
		if err != nil && errOut.Len() > 0 {
			err = fmt.Errorf("%w: %s", err, errOut.String())
		}
		return out.String(), err
	}
	out, err := run("--users", users, "--user", "bob", "--host", "example.com", "--port", "8443", "--sni", "front.example.com", "--insecure")
	if err != nil {
		t.Fatal(err)
	}
	l, err := option.ParseLink(strings.TrimSpace(out))
	want := option.Link{Password: "pw/bob+1", Host: "example.com", Port: 8443, SNI: "front.example.com", Insecure: true, Label: "bob"}
	if err != nil || l.String() != want.String() {
		t.Fatalf("link %q (%v), want %s", out, err, want)
	}
	out, err = run("--users", users, "--host", "203.0.113.7")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); err != nil || len(lines) != 2 || !strings.HasSuffix(lines[1], "#alice") || !strings.Contains(lines[0], ":443/") {
		t.Fatalf("all users: %q %v", out, err)
	}
	out, err = run("-p", "secret", "--host", "example.com", "--label", "home")
	if err != nil || strings.TrimSpace(out) != "anytls://secret@example.com:443/#home" {
		t.Fatalf("-p: %q %v", out, err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--users", users, "--user", "carol", "--host", "h.example"}, `no user "carol" (users: "bob", "alice")`},
		{[]string{"--users", users}, "--host HOST is required"},
		{[]string{"--host", "h.example"}, "give exactly one of"},
		{[]string{"--users", users, "-p", "x", "--host", "h.example"}, "give exactly one of"},
		{[]string{"--users", users, "--host", "bad host"}, `host "bad host"`},
	} {
		if _, err := run(c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("link %v: %v, want an error containing %q", c.args, err, c.want)
		}
	}
}

func TestLinkFromServerConfigs(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-c", "../../examples/singbox/server.json", "--user", "bob", "--host", "proxy.example.com"},
			"anytls://change-me-bob@proxy.example.com:443/#bob"},
		{[]string{"-c", "../../examples/singbox/server.json", "--user", "alice", "--host", "203.0.113.7"},
			"anytls://change-me-alice@203.0.113.7:443/?sni=proxy.example.com#alice"},
		{[]string{"-c", "../../examples/mihomo/server.yaml", "--inbound", "anytls-in", "--user", "carol", "--host", "proxy.example.com"},
			"anytls://change-me-carol@proxy.example.com:443/#carol"},
	} {
		var out, errOut bytes.Buffer
		if err := linkMain(c.args, &out, &errOut); err != nil {
			t.Errorf("link %v: %v %s", c.args, err, errOut.String())
			continue
		}
		if got := strings.TrimSpace(out.String()); got != c.want {
			t.Errorf("link %v = %q, want %q", c.args, got, c.want)
		}
	}
	var out bytes.Buffer
	err := linkMain([]string{"-c", "../../examples/mihomo/server.yaml", "--host", "h.example"}, &out, io.Discard)
	if err == nil || !strings.Contains(err.Error(), `2 anytls inbounds ("anytls-in", "anytls-reality-in"): choose one with --inbound`) {
		t.Errorf("two inbounds: %v", err)
	}
	err = linkMain([]string{"-c", "../../examples/mihomo/server.yaml", "--inbound", "anytls-reality-in", "--host", "h.example"}, &out, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "Reality") {
		t.Errorf("Reality inbound: %v", err)
	}
}

// TestLinkQR: the QR code printed in the terminal decodes back to the link (gozxing), in both
// colour schemes.
func TestLinkQR(t *testing.T) {
	dir := t.TempDir()
	users := filepath.Join(dir, "users.json")
	os.WriteFile(users, []byte(`[{"name": "bob", "password": "Zq8-long-random-password-0123456789"}]`), 0o600)
	for _, invert := range []bool{false, true} {
		args := []string{"--users", users, "--user", "bob", "--host", "proxy.example.com", "--port", "8443", "--qr"}
		if invert {
			args = append(args, "--qr-invert")
		}
		var out bytes.Buffer
		if err := linkMain(args, &out, io.Discard); err != nil {
			t.Fatal(err)
		}
		text := strings.TrimRight(out.String(), "\n")
		qr, link, ok := cutLast(text, "\n")
		if !ok || !strings.HasPrefix(link, "anytls://") {
			t.Fatalf("output ends with %q, want the link", link)
		}
		got, err := decodeTerminalQR(strings.TrimRight(qr, "\n"), invert)
		if err != nil {
			t.Fatalf("invert %v: decode the printed QR code: %v\n%s", invert, err, qr)
		}
		if got != link {
			t.Fatalf("invert %v: QR code says %q, link is %q", invert, got, link)
		}
	}
}

func cutLast(s, sep string) (before, after string, ok bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}

// decodeTerminalQR reads a QR code drawn with half blocks (two modules a cell: upper and lower)
// into an image and decodes it. Without invert a blank half is a dark module.
func decodeTerminalQR(text string, invert bool) (string, error) {
	var rows [][]bool // true: dark module
	for _, line := range strings.Split(text, "\n") {
		var top, bottom []bool
		for _, r := range line {
			// Which halves are drawn (light on a dark terminal, unless inverted).
			var up, low bool
			switch r {
			case '█':
				up, low = true, true
			case '▀':
				up = true
			case '▄':
				low = true
			case ' ':
			default:
				return "", fmt.Errorf("unexpected character %q", r)
			}
			top = append(top, up == invert)
			bottom = append(bottom, low == invert)
		}
		rows = append(rows, top, bottom)
	}
	const scale = 4
	img := image.NewGray(image.Rect(0, 0, len(rows[0])*scale, len(rows)*scale))
	for y, row := range rows {
		for x, dark := range row {
			c := color.Gray{Y: 255}
			if dark {
				c = color.Gray{Y: 0}
			}
			for dy := range scale {
				for dx := range scale {
					img.SetGray(x*scale+dx, y*scale+dy, c)
				}
			}
		}
	}
	bmp, err := gozxing.NewBinaryBitmapFromImage(img)
	if err != nil {
		return "", err
	}
	res, err := gozxingqr.NewQRCodeReader().Decode(bmp, nil)
	if err != nil {
		return "", err
	}
	return res.GetText(), nil
}

func TestVersionNamesHosts(t *testing.T) {
	got := map[string]string{}
	for _, h := range builtInHosts() {
		got[h.name] = h.version
	}
	if got["sing-box"] != "v1.14.1" || got["mihomo"] != "v1.19.23" {
		t.Fatalf("built-in hosts %v, want sing-box v1.14.1 and mihomo v1.19.23", got)
	}
}
