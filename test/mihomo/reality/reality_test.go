// Package reality_test connects our mihomo anytls proxy with reality-opts (the entry
// anytls-reality of examples/mihomo/client.yaml) to sing-box anytls inbounds with Reality: sing-box's
// built-in and ours as sing-box hosts it. mihomo's own anytls proxy cannot use Reality at all. It
// lives apart from test/mihomo because it links sing-box as well.
//
// It runs WITHOUT the race detector (make test-peers): mihomo and sing-box have data races of
// their own. All traffic stays on loopback.
package reality_test

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/anytls-engine/anytls/internal/sbrun"
	"github.com/anytls-engine/anytls/internal/testcert"
	"github.com/anytls-engine/anytls/internal/testnet"
	outmihomo "github.com/anytls-engine/anytls/outbound/mihomo"

	C "github.com/metacubex/mihomo/constant"
	"github.com/sagernet/sing-box/adapter/inbound"
	"github.com/sagernet/sing-box/option"
	builtin "github.com/sagernet/sing-box/protocol/anytls"

	"gopkg.in/yaml.v3"
)

const ioTimeout = 15 * time.Second

func TestOurRealityProxyToSingBox(t *testing.T) {
	httpAddr := startHTTP(t)
	echoAddr := startUDPEcho(t)
	dest := startTLS13(t)

	key, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	privateKey := base64.RawURLEncoding.EncodeToString(key.Bytes())
	publicKey := base64.RawURLEncoding.EncodeToString(key.PublicKey().Bytes())
	const shortID = "0123456789abcdef"

	reg := sbrun.NewRegistries() // "anytls" is ours
	inbound.Register[option.AnyTLSInboundOptions](reg.Inbound, "anytls-builtin", builtin.NewInbound)
	ctx := reg.Context(context.Background())

	for _, server := range []string{"anytls-builtin", "anytls"} {
		t.Run(server, func(t *testing.T) {
			port := freePort(t)
			destHost, destPort, _ := net.SplitHostPort(dest)
			cfg := map[string]any{
				"log": map[string]any{"level": "warn"},
				"inbounds": []any{map[string]any{
					"type": server, "tag": "in", "listen": "127.0.0.1", "listen_port": port,
					"users": []any{map[string]any{"name": "bob", "password": "pw-bob"}},
					"tls": map[string]any{
						"enabled": true, "server_name": "reality.test",
						"reality": map[string]any{
							"enabled":     true,
							"handshake":   map[string]any{"server": destHost, "server_port": atoi(t, destPort)},
							"private_key": privateKey,
							"short_id":    []any{shortID},
						},
					},
				}},
				"outbounds": []any{map[string]any{"type": "direct", "tag": "direct"}},
			}
			content, _ := json.Marshal(cfg)
			options, err := sbrun.Decode(ctx, content)
			if err != nil {
				t.Fatal(err)
			}
			box, cancel, err := sbrun.Start(ctx, options)
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				box.Close()
				cancel()
			}()

			mapping := exampleRealityProxy(t)
			mapping["server"] = "127.0.0.1"
			mapping["port"] = port
			mapping["password"] = "pw-bob"
			mapping["sni"] = "reality.test"
			mapping["reality-opts"] = map[string]any{"public-key": publicKey, "short-id": shortID}
			p, err := outmihomo.ParseProxy(mapping, "")
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()

			checkTCP(t, p, httpAddr)
			checkUDP(t, p, echoAddr)

			// A wrong public key fails the handshake: Reality really is in use.
			mapping["reality-opts"] = map[string]any{"public-key": base64.RawURLEncoding.EncodeToString(make([]byte, 32)), "short-id": shortID}
			wrong, err := outmihomo.ParseProxy(mapping, "")
			if err != nil {
				t.Fatal(err)
			}
			defer wrong.Close()
			ctx, cancelDial := context.WithTimeout(context.Background(), ioTimeout)
			defer cancelDial()
			if c, err := wrong.DialContext(ctx, metadataFor(t, C.TCP, httpAddr)); err == nil {
				c.SetDeadline(time.Now().Add(ioTimeout))
				io.WriteString(c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
				if b, _ := io.ReadAll(c); bytes.Contains(b, []byte("hello")) {
					t.Fatal("a wrong Reality public key got through")
				}
				c.Close()
			}
		})
	}
}

// exampleRealityProxy is the anytls-reality entry of examples/mihomo/client.yaml.
func exampleRealityProxy(t *testing.T) map[string]any {
	t.Helper()
	b, err := os.ReadFile("../../../examples/mihomo/client.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var client struct {
		Proxies []map[string]any `yaml:"proxies"`
	}
	if err := yaml.Unmarshal(b, &client); err != nil {
		t.Fatal(err)
	}
	for _, p := range client.Proxies {
		if p["name"] == "anytls-reality" {
			return p
		}
	}
	t.Fatal("examples/mihomo/client.yaml has no anytls-reality proxy")
	return nil
}

func atoi(t *testing.T, s string) int {
	n, err := netip.ParseAddrPort("0.0.0.0:" + s)
	if err != nil {
		t.Fatal(err)
	}
	return int(n.Port())
}

// freePort reserves a loopback port for a listener that another program opens from its
// configuration (testnet.FreePort: not from the range that parallel tests' sockets use).
func freePort(t *testing.T) int {
	t.Helper()
	return testnet.FreePort(t)
}

func startHTTP(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") })}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func startUDPEcho(t *testing.T) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	return pc.LocalAddr().String()
}

// startTLS13 is the Reality handshake server (dest): TLS 1.3 on loopback.
func startTLS13(t *testing.T) string {
	cert, _, _, err := testcert.New("reality.test")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	testnet.ServeEach(ln, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(ioTimeout))
		c.(*tls.Conn).Handshake()
		io.Copy(io.Discard, c)
	})
	return ln.Addr().String()
}

func metadataFor(t *testing.T, network C.NetWork, addr string) *C.Metadata {
	t.Helper()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return &C.Metadata{NetWork: network, DstIP: ap.Addr(), DstPort: ap.Port()}
}

func checkTCP(t *testing.T, p C.Proxy, httpAddr string) {
	t.Helper()
	client := &http.Client{Timeout: ioTimeout, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			return p.DialContext(ctx, metadataFor(t, C.TCP, a))
		},
	}}
	resp, err := client.Get("http://" + httpAddr + "/hello")
	if err != nil {
		t.Fatalf("GET through Reality: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || string(b) != "hello" {
		t.Fatalf("GET through Reality: %q, %v", b, err)
	}
}

func checkUDP(t *testing.T, p C.Proxy, echoAddr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	pc, err := p.ListenPacketContext(ctx, metadataFor(t, C.UDP, echoAddr))
	if err != nil {
		t.Fatalf("UDP through Reality: %v", err)
	}
	defer pc.Close()
	to := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(echoAddr))
	msg := []byte("reality datagram")
	buf := make([]byte, 2048)
	deadline := time.Now().Add(ioTimeout)
	for {
		if time.Now().After(deadline) {
			t.Fatal("UDP through Reality: no echo")
		}
		pc.WriteTo(msg, to)
		pc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, _, err := pc.ReadFrom(buf)
		if err == nil && bytes.Equal(buf[:n], msg) {
			return
		}
	}
}
