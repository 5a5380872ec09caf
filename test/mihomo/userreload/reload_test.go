// Package userreload checks that mihomo's reloads (SIGHUP through `anytls run`, PUT /configs)
// update the users of an anytls listener in place: sessions of users still present keep running,
// removed users' sessions are closed, new users connect at once. mihomo is one instance per
// process, so this runs in a package of its own; it runs mihomo's code, so without -race.
package userreload

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/anytls-engine/anytls/internal/mihomorun"
	"github.com/anytls-engine/anytls/internal/testcert"
	"github.com/anytls-engine/anytls/internal/testnet"
	"github.com/anytls-engine/anytls/protocol"

	"github.com/metacubex/mihomo/tunnel"
	"github.com/metacubex/mihomo/tunnel/statistic"
)

const timeout = 10 * time.Second

// freePort reserves a loopback port for a listener that another program opens from its
// configuration (testnet.FreePort: not from the range that parallel tests' sockets use).
func freePort(t *testing.T) int {
	t.Helper()
	return testnet.FreePort(t)
}

func config(port int, users string) string {
	return fmt.Sprintf(`mode: rule
log-level: warning
ipv6: false
listeners:
  - name: anytls-in
    type: anytls
    listen: 127.0.0.1
    port: %d
    users: {%s}
    certificate: ./server.crt
    private-key: ./server.key
rules:
  - MATCH,DIRECT
`, port, users)
}

// open opens a stream through the listener as the user with password.
func open(t *testing.T, port int, password, dest string) net.Conn {
	t.Helper()
	c, err := protocol.NewClient(protocol.ClientConfig{
		Password: password,
		Dial: func(ctx context.Context) (net.Conn, error) {
			d := &tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true}}
			return d.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	addr, _ := protocol.ParseAddr(dest)
	st, err := c.OpenStream(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func roundTrip(c net.Conn) error {
	c.SetDeadline(time.Now().Add(timeout))
	msg := bytes.Repeat([]byte("m"), 3000)
	if _, err := c.Write(msg); err != nil {
		return err
	}
	_, err := io.ReadFull(c, make([]byte, len(msg)))
	return err
}

func TestUsersReloadInPlace(t *testing.T) {
	home := t.TempDir()
	_, certPEM, keyPEM, err := testcert.New("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(home, "server.crt"), certPEM, 0o600)
	os.WriteFile(filepath.Join(home, "server.key"), keyPEM, 0o600)
	path := filepath.Join(home, "config.yaml")
	port := freePort(t)
	write := func(users string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(config(port, users)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("alice: pw-alice, bob: pw-bob")

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mihomorun.Run(ctx, mihomorun.Options{HomeDir: home, ConfigFile: path}) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	// The listener runs before mihomo's tunnel takes connections (it drops them until then).
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
			if tunnel.Status() == tunnel.Running {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("listener or tunnel did not start: %v (tunnel %v)", err, tunnel.Status())
		}
		time.Sleep(10 * time.Millisecond)
	}
	echo := testnet.TCPEcho(t)
	alice := open(t, port, "pw-alice", echo)
	bob := open(t, port, "pw-bob", echo)
	for _, c := range []net.Conn{alice, bob} {
		if err := roundTrip(c); err != nil {
			t.Fatalf("before the reload: %v", err)
		}
	}
	// mihomo's connection list (what GET /connections serves) names each stream's user, with
	// its traffic. Its relay counts a write after it returns, which can be after the echo is
	// back: look again for a while.
	var seen map[string]int64
	var snap []byte
	for wait := time.Now().Add(timeout); ; {
		snap, err = json.Marshal(statistic.DefaultManager.Snapshot())
		if err != nil {
			t.Fatal(err)
		}
		var conns struct {
			Connections []struct {
				Metadata struct {
					InboundUser string `json:"inboundUser"`
					InboundName string `json:"inboundName"`
				} `json:"metadata"`
				Upload int64 `json:"upload"`
			} `json:"connections"`
		}
		json.Unmarshal(snap, &conns)
		seen = map[string]int64{}
		for _, c := range conns.Connections {
			if c.Metadata.InboundName == "anytls-in" {
				seen[c.Metadata.InboundUser] += c.Upload
			}
		}
		if seen["alice"] >= 3000 && seen["bob"] >= 3000 || time.Now().After(wait) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("mihomo connections by user (upload bytes): %v", seen)
	if seen["alice"] < 3000 || seen["bob"] < 3000 {
		t.Errorf("connections by user (upload) %v, want alice and bob with at least 3000 bytes each:\n%s", seen, snap)
	}

	// SIGHUP with bob removed and carol added.
	write("alice: pw-alice, carol: pw-carol")
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	bob.SetDeadline(time.Now().Add(timeout))
	if _, err := bob.Read(make([]byte, 1)); err == nil || strings.Contains(err.Error(), "timeout") {
		t.Fatalf("bob's stream after the reload: %v, want it closed", err)
	}
	if err := roundTrip(alice); err != nil {
		t.Fatalf("alice's stream did not survive the reload (listener restarted?): %v", err)
	}
	// bob's session closed while the configuration was applied; new connections are taken once
	// the tunnel runs again.
	for deadline := time.Now().Add(timeout); tunnel.Status() != tunnel.Running; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the tunnel did not run again after the reload")
		}
	}
	carol := open(t, port, "pw-carol", echo)
	if err := roundTrip(carol); err != nil {
		t.Fatalf("carol after the reload: %v", err)
	}

	// A configuration that does not parse keeps everything as it is.
	write("alice: pw-alice, carol: ''")
	if err := mihomorun.Reload(mihomorun.Options{HomeDir: home, ConfigFile: path}); err == nil || !strings.Contains(err.Error(), "carol") {
		t.Fatalf("reload with an empty password: %v, want an error naming carol", err)
	}
	for name, c := range map[string]net.Conn{"alice": alice, "carol": carol} {
		if err := roundTrip(c); err != nil {
			t.Fatalf("%s after a refused reload: %v", name, err)
		}
	}

	// Another change (the port) replaces the listener, as mihomo does: sessions end.
	port2 := freePort(t)
	if err := os.WriteFile(path, []byte(config(port2, "alice: pw-alice")), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := mihomorun.Reload(mihomorun.Options{HomeDir: home, ConfigFile: path}); err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(alice); err == nil {
		t.Fatal("alice's stream survived a listener that moved to another port")
	}
	if err := roundTrip(open(t, port2, "pw-alice", echo)); err != nil {
		t.Fatalf("alice on the new port: %v", err)
	}
}
