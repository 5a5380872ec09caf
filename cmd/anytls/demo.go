package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

func init() {
	register(&command{
		Name:  "demo",
		Short: "start a server, a client and a test site on loopback, and fetch the site through them (make run)",
		Run: func(args []string) error {
			fs := newFlagSet("demo", "[-v]")
			verbose := fs.Bool("v", false, "log every stream (debug level)")
			if err := parseFlags(fs, args); err != nil {
				return err
			}
			ctx, cancel := signalContext()
			defer cancel()
			return runDemo(ctx, os.Stdout, newLogger(os.Stderr, *verbose))
		},
	})
}

// demoBody is what the demo's HTTP target answers.
const demoBody = "hello from the AnyTLS demo target\n"

// demoSuccess starts the line runDemo prints once a request through the proxy worked.
const demoSuccess = "demo: request through the proxy worked"

// runDemo starts, on loopback, an HTTP target, an AnyTLS server (generated certificate, random
// password, temporary state directory, private destinations allowed so that it can reach the
// target) and a client; prints the share link and the proxy address; fetches the target through
// the proxy; then runs until ctx is done.
func runDemo(ctx context.Context, out io.Writer, log *slog.Logger) error {
	stateDir, err := os.MkdirTemp("", "anytls-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stateDir)

	targetLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	target := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, demoBody)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go target.Serve(targetLn)
	defer target.Close()

	secret := make([]byte, 12)
	rand.Read(secret)
	srv, err := startServer(ctx, serverConfig{
		Listen:       "127.0.0.1:0",
		Password:     hex.EncodeToString(secret),
		StateDir:     stateDir,
		AllowPrivate: true,
		Logger:       log,
	})
	if err != nil {
		return fmt.Errorf("start server: %w", err)
	}
	defer srv.Close()
	cl, err := startClient(ctx, clientConfig{Listen: "127.0.0.1:0", Link: srv.Link(), Logger: log})
	if err != nil {
		return fmt.Errorf("start client: %w", err)
	}
	defer cl.Close()

	targetURL := "http://" + targetLn.Addr().String() + "/"
	fmt.Fprintf(out, "demo: AnyTLS server on %s (self-signed certificate, random password)\n", srv.Addr())
	fmt.Fprintf(out, "demo: share link: %s\n", srv.Link())
	fmt.Fprintf(out, "demo: local proxy (SOCKS5 and HTTP) on %s\n", cl.Addr())
	fmt.Fprintf(out, "demo: test site on %s\n", targetURL)

	body, err := fetchThroughProxy(ctx, cl.Addr().String(), targetURL)
	if err != nil {
		return fmt.Errorf("request through the proxy failed: %w", err)
	}
	if body != demoBody {
		return fmt.Errorf("request through the proxy: unexpected answer %q", body)
	}
	fmt.Fprintf(out, "%s: GET %s answered %q\n", demoSuccess, targetURL, strings.TrimSpace(body))
	fmt.Fprintf(out, "demo: try it yourself: curl -x socks5h://%s %s   (Ctrl-C to stop)\n", cl.Addr(), targetURL)
	<-ctx.Done()
	fmt.Fprintln(out, "demo: stopping")
	return nil
}

// fetchThroughProxy GETs targetURL through the HTTP proxy at proxyAddr and returns the body.
func fetchThroughProxy(ctx context.Context, proxyAddr, targetURL string) (string, error) {
	proxyURL := &url.URL{Scheme: "http", Host: proxyAddr}
	transport := &http.Transport{Proxy: http.ProxyURL(proxyURL), DisableKeepAlives: true}
	defer transport.CloseIdleConnections()
	hc := &http.Client{Transport: transport, Timeout: 15 * time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, targetURL, nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", errors.New(resp.Status)
	}
	return string(b), nil
}
