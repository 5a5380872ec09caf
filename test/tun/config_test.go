package tun

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/anytls-engine/anytls/internal/testcert"

	"gopkg.in/yaml.v3"
)

// The examples are loaded as written; only these change: the server's address and port, the
// password, the certificate (files for the servers, a trusted certificate or pin for the
// clients), the DNS server's address, and the TUN stack.

const (
	singboxServerPort = 443  // examples/singbox/server.json's own port
	mihomoServerPort  = 8443 // examples/mihomo/server.yaml's anytls-in (443 there; both servers share the namespace)
	mihomoRealityPort = 9443 // its Reality listener (8443 there)
	serverName        = "proxy.example.com"
)

// secrets are the password and certificate shared by a topology's servers and clients.
type secrets struct {
	password    string
	certPEM     []byte
	keyPEM      []byte
	certPath    string
	keyPath     string
	fingerprint string // SHA-256 of the certificate, mihomo's pin
}

func newSecrets(t *testing.T, dir string) secrets {
	t.Helper()
	cert, certPEM, keyPEM, err := testcert.New(serverName)
	if err != nil {
		t.Fatal(err)
	}
	s := secrets{password: rand.Text(), certPEM: certPEM, keyPEM: keyPEM,
		certPath: filepath.Join(dir, "cert.pem"), keyPath: filepath.Join(dir, "key.pem")}
	sum := sha256.Sum256(cert.Certificate[0])
	s.fingerprint = hex.EncodeToString(sum[:])
	writeFile(t, s.certPath, certPEM)
	writeFile(t, s.keyPath, keyPEM)
	return s
}

func writeFile(t *testing.T, path string, content []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
}

func readExample(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "examples", path))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ---- sing-box (JSON) ----

type jobj = map[string]any

func jsonExample(t *testing.T, path string) jobj {
	t.Helper()
	var cfg jobj
	if err := json.Unmarshal(readExample(t, path), &cfg); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return cfg
}

// byKey finds the object of a list (inbounds, outbounds, dns.servers, users) whose key is value.
func byKey(t *testing.T, list any, key, value string) jobj {
	t.Helper()
	items, _ := list.([]any)
	for _, it := range items {
		if o, ok := it.(jobj); ok && o[key] == value {
			return o
		}
	}
	t.Fatalf("no entry with %s %q in %v", key, value, list)
	return nil
}

// singboxServer is examples/singbox/server.json with the test certificate and alice's password.
func singboxServer(t *testing.T, s secrets) []byte {
	t.Helper()
	cfg := jsonExample(t, "singbox/server.json")
	in := byKey(t, cfg["inbounds"], "type", "anytls")
	in["listen_port"] = singboxServerPort
	byKey(t, in["users"], "name", "alice")["password"] = s.password
	tlsOpts := in["tls"].(jobj)
	tlsOpts["certificate_path"] = s.certPath
	tlsOpts["key_path"] = s.keyPath
	return mustJSON(t, cfg)
}

// singboxTUNClient is examples/singbox/tun-client.json pointed at the server (trusting the test
// certificate), with DNS through the tunnel to the target's DNS server, on the given stack.
func singboxTUNClient(t *testing.T, s secrets, port int, stack string) []byte {
	t.Helper()
	cfg := jsonExample(t, "singbox/tun-client.json")
	byKey(t, cfg["inbounds"], "type", "tun")["stack"] = stack
	out := byKey(t, cfg["outbounds"], "tag", "proxy")
	out["server"] = serverIP4
	out["server_port"] = port
	out["password"] = s.password
	out["tls"].(jobj)["certificate_path"] = s.certPath
	byKey(t, cfg["dns"].(jobj)["servers"], "tag", "remote")["server"] = targetIP4
	return mustJSON(t, cfg)
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ---- mihomo (YAML) ----

type ymap = map[string]any

func yamlExample(t *testing.T, path string) ymap {
	t.Helper()
	var cfg ymap
	if err := yaml.Unmarshal(readExample(t, path), &cfg); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return cfg
}

// mihomoServer writes examples/mihomo/server.yaml into home with alice's password and the
// test certificate at the paths the example names (./server.crt, ./server.key).
func mihomoServer(t *testing.T, s secrets, home string) string {
	t.Helper()
	cfg := yamlExample(t, "mihomo/server.yaml")
	for _, l := range cfg["listeners"].([]any) {
		l := l.(ymap)
		switch l["name"] {
		case "anytls-in":
			l["port"] = mihomoServerPort
			l["users"].(ymap)["alice"] = s.password
			writeFile(t, filepath.Join(home, l["certificate"].(string)), s.certPEM)
			writeFile(t, filepath.Join(home, l["private-key"].(string)), s.keyPEM)
		case "anytls-reality-in":
			l["port"] = mihomoRealityPort
		}
	}
	return writeYAML(t, home, cfg)
}

// mihomoTUNClient writes examples/mihomo/tun-client.yaml into home, pointed at the server
// (pinning the test certificate), with DNS through the tunnel to the target's DNS server.
func mihomoTUNClient(t *testing.T, s secrets, port int, stack, home string) string {
	t.Helper()
	cfg := yamlExample(t, "mihomo/tun-client.yaml")
	cfg["tun"].(ymap)["stack"] = stack
	p := cfg["proxies"].([]any)[0].(ymap)
	p["server"] = serverIP4
	p["port"] = port
	p["password"] = s.password
	p["fingerprint"] = s.fingerprint
	dns := cfg["dns"].(ymap)
	dns["nameserver"] = []any{targetIP4 + "#Proxy"}
	dns["proxy-server-nameserver"] = []any{targetIP4}
	return writeYAML(t, home, cfg)
}

func writeYAML(t *testing.T, home string, cfg ymap) string {
	t.Helper()
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(home, "config.yaml")
	writeFile(t, path, b)
	return path
}

func hostPort(host string, port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }
