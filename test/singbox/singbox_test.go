package singbox_test

import (
	"bufio"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	sbinbound "github.com/anytls-engine/anytls/inbound/singbox"
	"github.com/anytls-engine/anytls/internal/sbrun"
	sboutbound "github.com/anytls-engine/anytls/outbound/singbox"
	"github.com/anytls-engine/anytls/protocol"

	"github.com/sagernet/sing/common/uot"
)

// mixed inbound -> our anytls outbound -> our anytls inbound -> direct -> HTTP target / UDP echo.
func TestOursToOurs(t *testing.T) {
	e := newEnv(t)
	mixed, _ := e.startPair("anytls", "anytls", "change-me-alice")
	e.mustGet(mixed)
	e.mustEchoUDP(mixed)
	e.mustGet(mixed) // a reused session
}

// Our outbound against sing-box's built-in anytls inbound.
func TestOurOutboundBuiltinInbound(t *testing.T) {
	e := newEnv(t)
	mixed, _ := e.startPair("anytls-builtin", "anytls", "change-me-alice")
	e.mustGet(mixed)
	e.mustEchoUDP(mixed)
	e.mustGet(mixed)
}

// sing-box's built-in anytls outbound against our inbound.
func TestBuiltinOutboundOurInbound(t *testing.T) {
	e := newEnv(t)
	mixed, _ := e.startPair("anytls", "anytls-builtin", "change-me-alice")
	e.mustGet(mixed)
	e.mustEchoUDP(mixed)
	e.mustGet(mixed)
}

// openStream opens a stream with the engine's own client straight to a sing-box server, so the
// test sees cmdSYNACK's content (the router's dial result) as the stream's error.
func (e *env) openStream(t *testing.T, serverPort int, password string, dest string) (*protocol.Stream, *protocol.Client) {
	t.Helper()
	client, err := protocol.NewClient(protocol.ClientConfig{
		Password: password,
		Dial:     func(ctx context.Context) (net.Conn, error) { return e.tlsDial(ctx, serverPort) },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	addr, err := protocol.ParseAddr(dest)
	if err != nil {
		t.Fatal(err)
	}
	st, err := client.OpenStream(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	st.SetDeadline(time.Now().Add(10 * time.Second))
	return st, client
}

func httpOverStream(st *protocol.Stream) (string, error) {
	if _, err := io.WriteString(st, "GET / HTTP/1.1\r\nHost: target\r\nConnection: close\r\n\r\n"); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(st), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return string(body), err
}

// The example server blocks bob (auth_user) from private addresses and lets alice through: the
// user name reaches sing-box's routing metadata, and the block outbound's refusal comes back to
// the client as cmdSYNACK with an error.
func TestAuthUserRouting(t *testing.T) {
	e := newEnv(t)
	port := freePort(t)
	e.start(e.serverConfig("anytls", port))
	target := "127.0.0.1:" + itoa(e.httpPort)

	alice, _ := e.openStream(t, port, "change-me-alice", target)
	body, err := httpOverStream(alice)
	if err != nil || body != targetBody {
		t.Fatalf("alice: body %q, err %v", body, err)
	}

	bob, _ := e.openStream(t, port, "change-me-bob", target)
	_, err = httpOverStream(bob)
	if !errors.Is(err, protocol.ErrRemoteRefused) {
		t.Fatalf("bob: err %v, want the server's refusal (cmdSYNACK with an error)", err)
	}

	// Through sing-box on both sides too: alice's client works, bob's does not.
	mixedAlice, mixedBob := freePort(t), freePort(t)
	e.start(e.clientConfig("anytls", port, mixedAlice, "change-me-alice"))
	e.start(e.clientConfig("anytls", port, mixedBob, "change-me-bob"))
	e.mustGet(mixedAlice)
	if body, err := e.get(mixedBob); err == nil {
		t.Fatalf("bob reached the private target through sing-box: %q", body)
	}
}

// The router's failed dial becomes cmdSYNACK with the error text.
func TestDialFailureReported(t *testing.T) {
	e := newEnv(t)
	port := freePort(t)
	e.start(e.serverConfig("anytls", port))
	closed := freePort(t) // nothing listens there any more
	st, _ := e.openStream(t, port, "change-me-alice", "127.0.0.1:"+itoa(closed))
	_, err := st.Read(make([]byte, 1))
	var remote *protocol.RemoteError
	if !errors.As(err, &remote) {
		t.Fatalf("read: %v, want a *protocol.RemoteError from cmdSYNACK", err)
	}
	if !strings.Contains(remote.Text, "refused") {
		t.Fatalf("SYNACK text %q does not carry the dial error", remote.Text)
	}
}

// A wrong password is refused (the example server's fallback answers instead) and the server
// keeps serving the right one.
func TestWrongPasswordRejected(t *testing.T) {
	e := newEnv(t)
	serverPort := freePort(t)
	e.start(e.serverConfig("anytls", serverPort))
	bad, good := freePort(t), freePort(t)
	e.start(e.clientConfig("anytls", serverPort, bad, "wrong-password"))
	e.start(e.clientConfig("anytls", serverPort, good, "change-me-alice"))
	if body, err := e.get(bad); err == nil {
		t.Fatalf("wrong password got through: %q", body)
	}
	e.mustGet(good)
	if body, err := e.get(bad); err == nil {
		t.Fatalf("wrong password got through: %q", body)
	}
	e.mustGet(good)
}

// A TLS connection that is not anytls goes to the fallback (here the HTTP target), replayed.
func TestFallback(t *testing.T) {
	e := newEnv(t)
	port := freePort(t)
	e.start(e.serverConfig("anytls", port))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := e.tlsDial(ctx, port)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("fallback: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if string(body) != targetBody {
		t.Fatalf("fallback body %q", body)
	}
}

// The example configurations pass `anytls check` (the same code path, in-process). The server's
// certificate paths point at a generated certificate; nothing else changes.
func TestExamplesCheck(t *testing.T) {
	e := newEnv(t)
	ctx := sbrun.NewRegistries().Context(context.Background()) // what cmd/anytls uses
	for _, name := range []string{"server.json", "client.json", "tun-client.json"} {
		t.Run(name, func(t *testing.T) {
			cfg := example(t, name)
			if name == "server.json" {
				tlsOpts := obj(first(cfg, "inbounds")["tls"])
				tlsOpts["certificate_path"] = e.certPath
				tlsOpts["key_path"] = e.keyPath
			}
			path := filepath.Join(t.TempDir(), name)
			writeJSON(t, path, cfg)
			if err := sbrun.Check(ctx, sbrun.Config{Paths: []string{path}}); err != nil {
				t.Fatal(err)
			}
		})
	}
	// The unpatched server example fails only for its missing certificate, naming it.
	err := sbrun.Check(ctx, sbrun.Config{Paths: []string{filepath.Join("..", "..", "examples", "singbox", "server.json")}})
	if err == nil || !strings.Contains(err.Error(), "/etc/anytls/cert.pem") {
		t.Fatalf("unpatched server example: %v", err)
	}
}

// Bad configurations are refused with errors that name the field and value.
func TestConfigErrors(t *testing.T) {
	e := newEnv(t)
	ctx := sbrun.NewRegistries().Context(context.Background())
	client := func(mod func(out map[string]any)) map[string]any {
		cfg := e.clientConfig("anytls", 443, 1080, "pw")
		mod(first(cfg, "outbounds"))
		return cfg
	}
	server := func(mod func(in map[string]any)) map[string]any {
		cfg := e.serverConfig("anytls", 443)
		mod(first(cfg, "inbounds"))
		return cfg
	}
	for _, tc := range []struct {
		name string
		cfg  map[string]any
		want []string
	}{
		{"missing password", client(func(o map[string]any) { delete(o, "password") }), []string{"password", "required"}},
		{"no tls", client(func(o map[string]any) { delete(o, "tls") }), []string{"tls.enabled", "TLS required"}},
		{"tls disabled", client(func(o map[string]any) { obj(o["tls"])["enabled"] = false }), []string{"tls.enabled"}},
		{"tcp fast open", client(func(o map[string]any) { o["tcp_fast_open"] = true }), []string{"tcp_fast_open"}},
		{"client padding line", client(func(o map[string]any) { o["padding_scheme"] = []any{"stop=2", "0=10-20", "1=x"} }), []string{"padding_scheme", `"1=x"`, "line 3"}},
		{"client name conflict", client(func(o map[string]any) { o["client_metadata"] = "a"; o["client_name"] = "b" }), []string{"client_metadata", "client_name"}},
		{"missing user password", server(func(i map[string]any) { i["users"] = []any{map[string]any{"name": "x"}} }), []string{"users[0].password", "required"}},
		{"no users", server(func(i map[string]any) { delete(i, "users") }), []string{"users", "at least one"}},
		{"server padding line", server(func(i map[string]any) { i["padding_scheme"] = []any{"stop=8", "0=30-30", "1=100-400", "2=oops"} }), []string{"padding_scheme", `"2=oops"`, "line 4"}},
		{"bad fallback", server(func(i map[string]any) { i["fallback"] = map[string]any{"server": "127.0.0.1"} }), []string{"fallback", "127.0.0.1"}},
		{"negative buffer", server(func(i map[string]any) { i["stream_buffer_size"] = 100 }), []string{"stream_buffer_size", "100"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := sbrun.CheckOptions(ctx, e.decode(tc.cfg))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Fatalf("error %q does not name %q", err, w)
				}
			}
		})
	}
	// An unknown key is refused by sing-box's decoder, naming it.
	cfg := client(func(o map[string]any) { o["no_such_key"] = 1 })
	content, _ := jsonMarshal(cfg)
	if _, err := sbrun.Decode(ctx, content); err == nil || !strings.Contains(err.Error(), "no_such_key") {
		t.Fatalf("unknown key: %v", err)
	}
}

// Where the built-in rewrites idle values of 5 s or less to 30 s, ours uses what is written; the
// extension keys reach the engine's options; omitted ones are the defaults from option/.
func TestOptionsHonoured(t *testing.T) {
	e := newEnv(t)
	cfg := e.clientConfig("anytls", 443, 1080, "pw")
	out := first(cfg, "outbounds")
	out["idle_session_check_interval"] = "1s"
	out["idle_session_timeout"] = "2s"
	out["min_idle_session"] = 3
	out["client_metadata"] = "x/1"
	out["disable_session_reuse"] = true
	out["heartbeat_interval"] = "7s"
	scfg := e.serverConfig("anytls", 443)
	in := first(scfg, "inbounds")
	in["pad_downstream"] = true
	in["max_sessions"] = 9
	cfg["inbounds"] = append(cfg["inbounds"].([]any), in)

	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	instance, err := newBox(ctx, e.decode(cfg))
	if err != nil {
		t.Fatal(err)
	}
	defer instance.Close()
	ob, _ := instance.Outbound().Outbound("proxy")
	got := ob.(*sboutbound.Outbound).EffectiveOptions()
	if got.IdleSessionCheckInterval != time.Second || got.IdleSessionTimeout != 2*time.Second || got.MinIdleSession != 3 ||
		got.ClientName != "x/1" || !got.DisableSessionReuse || got.HeartbeatInterval != 7*time.Second {
		t.Fatalf("client options not honoured: %+v", got)
	}
	if got.SynAckTimeout != protocol.DefaultSynAckTimeout || got.MaxStreamsPerSession != 1 {
		t.Fatalf("client defaults: %+v", got)
	}
	ib, _ := instance.Inbound().Get("anytls-in")
	sgot := ib.(*sbinbound.Inbound).EffectiveOptions()
	if !sgot.PadDownstream || sgot.MaxSessions != 9 || sgot.IdleSessionTimeout != 5*time.Minute || len(sgot.Users) != 2 {
		t.Fatalf("server options not honoured: %+v", sgot)
	}
}

// cmd/anytls serves "anytls" with this module's engine and never links sing-box's built-in.
func TestCommandDoesNotLinkBuiltin(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Fatal("go tool not found")
	}
	cmd := exec.Command("go", "list", "-deps", "-tags", "with_gvisor,with_utls,with_acme,with_clash_api", "github.com/anytls-engine/anytls/cmd/anytls")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := strings.Fields(string(out))
	var sawOurs bool
	for _, d := range deps {
		if d == "github.com/sagernet/sing-box/protocol/anytls" || d == "github.com/anytls/sing-anytls" {
			t.Fatalf("cmd/anytls links %s", d)
		}
		sawOurs = sawOurs || d == "github.com/anytls-engine/anytls/inbound/singbox"
	}
	if !sawOurs {
		t.Fatalf("cmd/anytls does not link inbound/singbox (%d deps, %s)", len(deps), runtime.Version())
	}
}

// TLS is sing-box's own: a Reality server (handshakes borrowed from a local TLS server) and a
// Reality uTLS client work through our inbound and outbound, and the built-in outbound reaches
// our Reality inbound too.
func TestReality(t *testing.T) {
	e := newEnv(t)
	cover := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	cert, err := tls.LoadX509KeyPair(e.certPath, e.keyPath)
	if err != nil {
		t.Fatal(err)
	}
	cover.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	cover.StartTLS()
	t.Cleanup(cover.Close)
	coverPort := cover.Listener.Addr().(*net.TCPAddr).Port

	key, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	private := base64.RawURLEncoding.EncodeToString(key.Bytes())
	public := base64.RawURLEncoding.EncodeToString(key.PublicKey().Bytes())

	serverPort := freePort(t)
	scfg := e.serverConfig("anytls", serverPort)
	first(scfg, "inbounds")["tls"] = map[string]any{
		"enabled": true, "server_name": "localhost",
		"reality": map[string]any{
			"enabled": true, "private_key": private, "short_id": []any{"0123abcd"},
			"handshake": map[string]any{"server": "127.0.0.1", "server_port": coverPort},
		},
	}
	e.start(scfg)
	for _, typ := range []string{"anytls", "anytls-builtin"} {
		t.Run(typ, func(t *testing.T) {
			mixed := freePort(t)
			ccfg := e.clientConfig(typ, serverPort, mixed, "change-me-alice")
			first(ccfg, "outbounds")["tls"] = map[string]any{
				"enabled": true, "server_name": "localhost",
				"utls":    map[string]any{"enabled": true, "fingerprint": "chrome"},
				"reality": map[string]any{"enabled": true, "public_key": public, "short_id": "0123abcd"},
			}
			e.start(ccfg)
			e.mustGet(mixed)
			e.mustEchoUDP(mixed)
		})
	}
}

// The magic UoT name the engine recognises is sing's.
func TestUoTMagicAddress(t *testing.T) {
	if protocol.UoTMagicAddress != uot.MagicAddress {
		t.Fatalf("protocol.UoTMagicAddress %q, sing's uot.MagicAddress %q", protocol.UoTMagicAddress, uot.MagicAddress)
	}
}
