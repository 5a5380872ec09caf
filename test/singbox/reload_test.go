package singbox_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/anytls-engine/anytls/internal/sbrun"
	"github.com/anytls-engine/anytls/internal/testnet"
	"github.com/anytls-engine/anytls/protocol"
)

// roundTrip writes a message into st and reads it back.
func roundTrip(st net.Conn) error {
	st.SetDeadline(time.Now().Add(10 * time.Second))
	msg := bytes.Repeat([]byte("r"), 4000)
	if _, err := st.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	_, err := io.ReadFull(st, got)
	return err
}

// usersServerConfig is the example server with the given users and no routing rules.
func (e *env) usersServerConfig(port int, users map[string]string) map[string]any {
	cfg := e.serverConfig("anytls", port)
	var list []any
	for name, pw := range users {
		list = append(list, map[string]any{"name": name, "password": pw})
	}
	first(cfg, "inbounds")["users"] = list
	cfg["route"] = map[string]any{"final": "direct"}
	return cfg
}

// TestReloadUsersOnSIGHUP: `anytls run` (sbrun.Run) on SIGHUP with only the anytls users changed
// updates them in place: alice's open stream goes on, bob's session is closed, carol connects.
func TestReloadUsersOnSIGHUP(t *testing.T) {
	e := newEnv(t)
	port := freePort(t)
	path := filepath.Join(t.TempDir(), "config.json")
	writeJSON(t, path, e.usersServerConfig(port, map[string]string{"alice": "pw-alice", "bob": "pw-bob"}))
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() { done <- sbrun.Run(ctx, sbrun.Config{Paths: []string{path}}, true) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	// Run listens only after it has registered for signals.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", "127.0.0.1:"+itoa(port))
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server did not start: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	echo := testnet.TCPEcho(t)
	alice, _ := e.openStream(t, port, "pw-alice", echo)
	bob, _ := e.openStream(t, port, "pw-bob", echo)
	for _, st := range []*protocol.Stream{alice, bob} {
		if err := roundTrip(st); err != nil {
			t.Fatalf("before the reload: %v", err)
		}
	}

	writeJSON(t, path, e.usersServerConfig(port, map[string]string{"alice": "pw-alice", "carol": "pw-carol"}))
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	// bob's session is closed by the reload: his stream fails.
	bob.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := bob.Read(make([]byte, 1)); err == nil || strings.Contains(err.Error(), "timeout") {
		t.Fatalf("bob's stream after the reload: %v, want it closed", err)
	}
	if err := roundTrip(alice); err != nil {
		t.Fatalf("alice's stream did not survive the reload (the box restarted?): %v", err)
	}
	carol, _ := e.openStream(t, port, "pw-carol", echo)
	if err := roundTrip(carol); err != nil {
		t.Fatalf("carol after the reload: %v", err)
	}
}

// TestReloadUsersDecides: in place only when nothing but anytls users changed; bad users change
// nothing.
func TestReloadUsersDecides(t *testing.T) {
	e := newEnv(t)
	port := freePort(t)
	base := e.usersServerConfig(port, map[string]string{"alice": "pw-alice"})
	running := e.decode(base)
	instance := e.start(base)
	echo := testnet.TCPEcho(t)
	alice, _ := e.openStream(t, port, "pw-alice", echo)

	same := e.decode(e.usersServerConfig(port, map[string]string{"alice": "pw-alice"}))
	if inPlace, _, err := sbrun.ReloadUsers(e.ctx, instance, running, same); inPlace || err != nil {
		t.Errorf("unchanged configuration: in place %v, %v; want a restart as sing-box does", inPlace, err)
	}
	other := e.usersServerConfig(port, map[string]string{"alice": "pw-alice", "carol": "pw-carol"})
	first(other, "inbounds")["idle_session_timeout"] = "1m"
	if inPlace, _, err := sbrun.ReloadUsers(e.ctx, instance, running, e.decode(other)); inPlace || err != nil {
		t.Errorf("users and another key changed: in place %v, %v; want a restart", inPlace, err)
	}
	bad := e.usersServerConfig(port, map[string]string{"alice": "pw-alice", "carol": ""})
	inPlace, _, err := sbrun.ReloadUsers(e.ctx, instance, running, e.decode(bad))
	if !inPlace || err == nil || !strings.Contains(err.Error(), "password") {
		t.Errorf("a user without password: in place %v, %v; want an error naming the password", inPlace, err)
	}
	if err := roundTrip(alice); err != nil {
		t.Fatalf("alice after the refused reload: %v", err)
	}
	good := e.decode(e.usersServerConfig(port, map[string]string{"alice": "pw-alice", "carol": "pw-carol"}))
	inPlace, tags, err := sbrun.ReloadUsers(e.ctx, instance, running, good)
	if !inPlace || err != nil || len(tags) != 1 || tags[0] != "anytls-in" {
		t.Fatalf("carol added: in place %v, tags %v, %v", inPlace, tags, err)
	}
	if err := roundTrip(alice); err != nil {
		t.Fatalf("alice after carol was added: %v", err)
	}
	carol, _ := e.openStream(t, port, "pw-carol", echo)
	if err := roundTrip(carol); err != nil {
		t.Fatalf("carol: %v", err)
	}
}
