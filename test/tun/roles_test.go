package tun

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/anytls-engine/anytls/internal/testnet"
)

// The names the target's DNS server answers (.test is reserved for testing, RFC 6761).
const (
	testName   = "target.anytls.test"    // A targetIP4
	testName6  = "v6.target.anytls.test" // AAAA targetIP6
	whoamiName = "whoami.anytls.test"    // TXT: the address the query came from
	httpPort   = "80"
	echoPort   = "7"
)

// runRole runs a helper role of the re-executed test binary and returns its exit code.
func runRole(role, args string) int {
	var err error
	switch role {
	case "target":
		err = runTarget()
	case "probe":
		err = runProbe(args, os.Stdout)
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", role, err)
		return 1
	}
	return 0
}

// ---- target: HTTP, UDP echo and DNS servers, each reporting the address it sees ----

// runTarget serves until SIGTERM: HTTP on :80 (/whoami, /blob), UDP echo on :7, DNS on :53
// (UDP and TCP), all on both IPv4 and IPv6.
func runTarget() error {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	udpEcho, err := net.ListenUDP("udp", &net.UDPAddr{Port: 7})
	if err != nil {
		return err
	}
	go serveEcho(udpEcho)
	dnsUDP, err := net.ListenUDP("udp", &net.UDPAddr{Port: 53})
	if err != nil {
		return err
	}
	go serveDNSUDP(dnsUDP)
	dnsTCP, err := net.Listen("tcp", ":53")
	if err != nil {
		return err
	}
	serveDNSTCP(dnsTCP)
	mux := http.NewServeMux()
	mux.HandleFunc("/whoami", func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		io.WriteString(w, unmap(host))
	})
	mux.HandleFunc("/blob", serveBlob)
	mux.HandleFunc("/sink", serveSink)
	ln, err := net.Listen("tcp", ":"+httpPort) // readiness is probed on this port: open it last
	if err != nil {
		return err
	}
	go http.Serve(ln, mux)
	fmt.Println("target ready")
	<-stop
	return nil
}

func unmap(host string) string {
	if a, err := netip.ParseAddr(host); err == nil {
		return a.Unmap().String()
	}
	return host
}

// serveEcho answers each datagram with "SOURCE|payload", SOURCE being the sender's address.
func serveEcho(c *net.UDPConn) {
	buf := make([]byte, 65536)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		reply := append([]byte(from.Addr().Unmap().String()+"|"), buf[:n]...)
		c.WriteToUDPAddrPort(reply, from)
	}
}

// blobStream is the deterministic content of /blob?size=N&seed=S (ChaCha8 keyed by the seed),
// which the probe regenerates to check what it received.
func blobStream(seed uint64) *rand.ChaCha8 {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	return rand.NewChaCha8(key)
}

func serveBlob(w http.ResponseWriter, r *http.Request) {
	size, err1 := strconv.ParseInt(r.URL.Query().Get("size"), 10, 64)
	seed, err2 := strconv.ParseUint(r.URL.Query().Get("seed"), 10, 64)
	if err1 != nil || err2 != nil || size < 0 {
		http.Error(w, "size and seed wanted", http.StatusBadRequest)
		return
	}
	host, _, _ := net.SplitHostPort(r.RemoteAddr)
	w.Header().Set("X-Seen", unmap(host))
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	io.Copy(w, io.LimitReader(blobStream(seed), size))
}

// serveSink reads the request body and answers "SOURCE BYTES SHA256".
func serveSink(w http.ResponseWriter, r *http.Request) {
	sum := sha256.New()
	n, err := io.Copy(sum, r.Body)
	if err != nil {
		http.Error(w, fmt.Sprintf("after %d bytes: %v", n, err), http.StatusBadRequest)
		return
	}
	host, _, _ := net.SplitHostPort(r.RemoteAddr)
	fmt.Fprintf(w, "%s %d %x", unmap(host), n, sum.Sum(nil))
}

// dnsAnswer answers the test names; other names are NXDOMAIN.
func dnsAnswer(query []byte, from netip.Addr) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, RecursionAvailable: true})
	b.EnableCompression()
	name := strings.ToLower(strings.TrimSuffix(q.Name.String(), "."))
	known := name == testName || name == testName6 || name == whoamiName
	if !known {
		b = dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, RCode: dnsmessage.RCodeNameError, RecursionDesired: h.RecursionDesired, RecursionAvailable: true})
	}
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(q); err != nil {
		return nil, err
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}
	switch {
	case name == testName && q.Type == dnsmessage.TypeA:
		err = b.AResource(rh, dnsmessage.AResource{A: netip.MustParseAddr(targetIP4).As4()})
	case name == testName6 && q.Type == dnsmessage.TypeAAAA:
		err = b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: netip.MustParseAddr(targetIP6).As16()})
	case name == whoamiName && q.Type == dnsmessage.TypeTXT:
		rh.TTL = 0
		err = b.TXTResource(rh, dnsmessage.TXTResource{TXT: []string{from.Unmap().String()}})
	}
	if err != nil {
		return nil, err
	}
	return b.Finish()
}

func serveDNSUDP(c *net.UDPConn) {
	buf := make([]byte, 65536)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		if reply, err := dnsAnswer(buf[:n], from.Addr()); err == nil {
			c.WriteToUDPAddrPort(reply, from)
		}
	}
}

// serveDNSTCP answers DNS over TCP (length-prefixed messages) on each connection ln accepts.
func serveDNSTCP(ln net.Listener) {
	testnet.ServeEach(ln, func(c net.Conn) {
		from := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr()
		for {
			c.SetDeadline(time.Now().Add(10 * time.Second))
			var l [2]byte
			if _, err := io.ReadFull(c, l[:]); err != nil {
				return
			}
			q := make([]byte, binary.BigEndian.Uint16(l[:]))
			if _, err := io.ReadFull(c, q); err != nil {
				return
			}
			reply, err := dnsAnswer(q, from)
			if err != nil {
				return
			}
			c.Write(binary.BigEndian.AppendUint16(nil, uint16(len(reply))))
			c.Write(reply)
		}
	})
}

// ---- probe: a plain program in the client namespace (no proxy settings) ----

// check is one probe: kind "dns" (resolve the test names, and ask whoamiName who asked),
// "http" (GET /whoami), "udp" (datagrams to the echo server), "bulk" (GET /blob, checked) or
// "upload" (POST to /sink, which returns the checksum).
// Addr is host:port, by name or address; Want is the address the target must report.
type check struct {
	Kind string
	Addr string `json:",omitempty"`
	Want string `json:",omitempty"`
	Size int64  `json:",omitempty"`
	// Timeout overrides the probe's per-attempt timeout.
	Timeout time.Duration `json:",omitempty"`
}

func (c check) String() string {
	if c.Addr == "" {
		return c.Kind
	}
	return c.Kind + " " + c.Addr
}

type probeArgs struct {
	Checks   []check
	Timeout  time.Duration // per attempt (bulk: the whole transfer)
	Attempts int           // attempts per check
	// RetryFor, when set, replaces Attempts: a check is tried every 100 ms until it passes or
	// this long has passed (waiting for a client to be ready).
	RetryFor time.Duration
	Parallel bool
}

type result struct {
	Check   check
	OK      bool
	Err     string  `json:",omitempty"`
	Seen    string  `json:",omitempty"` // the address the target reported
	Bytes   int64   `json:",omitempty"`
	Seconds float64 `json:",omitempty"`
	Tries   int     `json:",omitempty"`
	// FirstErr is the first failed try's error, when a later one passed.
	FirstErr string `json:",omitempty"`
}

// runProbe runs the checks and writes their results as JSON; it fails only when it cannot run.
func runProbe(argsJSON string, out io.Writer) error {
	var a probeArgs
	if err := json.Unmarshal([]byte(argsJSON), &a); err != nil {
		return err
	}
	if a.Attempts < 1 {
		a.Attempts = 1
	}
	results := make([]result, len(a.Checks))
	var wg sync.WaitGroup
	for i, c := range a.Checks {
		run := func() {
			var r result
			var firstErr string
			start := time.Now()
			for tries := 1; ; tries++ {
				timeout := a.Timeout
				if c.Timeout > 0 {
					timeout = c.Timeout
				}
				r = runCheck(c, timeout)
				r.Tries = tries
				if r.OK {
					if tries > 1 {
						r.FirstErr = firstErr
					}
					break
				}
				if firstErr == "" {
					firstErr = r.Err
				}
				if a.RetryFor > 0 {
					if time.Since(start) > a.RetryFor {
						break
					}
					time.Sleep(100 * time.Millisecond) // polling for readiness
				} else if tries >= a.Attempts {
					break
				}
			}
			if a.RetryFor > 0 {
				r.Seconds = time.Since(start).Seconds()
			}
			results[i] = r
		}
		if a.Parallel {
			wg.Go(run)
		} else {
			run()
		}
	}
	wg.Wait()
	return json.NewEncoder(out).Encode(results)
}

func runCheck(c check, timeout time.Duration) (r result) {
	r.Check = c
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	var err error
	switch c.Kind {
	case "dns":
		r.Seen, err = checkDNS(ctx, c)
	case "http":
		r.Seen, err = checkHTTP(ctx, c)
	case "udp":
		r.Seen, err = checkUDP(ctx, c)
	case "bulk":
		r.Seen, r.Bytes, r.Seconds, err = checkBulk(ctx, c)
	case "upload":
		r.Seen, r.Bytes, r.Seconds, err = checkUpload(ctx, c)
	default:
		err = fmt.Errorf("unknown check %q", c.Kind)
	}
	if r.Seconds == 0 {
		r.Seconds = time.Since(start).Seconds()
	}
	if err == nil && c.Want != "" && r.Seen != c.Want {
		err = fmt.Errorf("the target saw %s, want %s (the server's address)", r.Seen, c.Want)
	}
	if err != nil {
		r.Err = err.Error()
		return r
	}
	r.OK = true
	return r
}

// checkDNS resolves the test names through the system's resolver configuration.
func checkDNS(ctx context.Context, c check) (string, error) {
	var res net.Resolver
	for _, want := range []struct{ name, addr string }{{testName, targetIP4}, {testName6, targetIP6}} {
		addrs, err := res.LookupHost(ctx, want.name)
		if err != nil {
			return "", err
		}
		if !slices.Equal(addrs, []string{want.addr}) {
			return "", fmt.Errorf("%s resolved to %v, want [%s]", want.name, addrs, want.addr)
		}
	}
	txt, err := res.LookupTXT(ctx, whoamiName)
	if err != nil {
		return "", err
	}
	if len(txt) != 1 {
		return "", fmt.Errorf("%s TXT %q, want one record", whoamiName, txt)
	}
	return txt[0], nil
}

var httpClient = &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}

func checkHTTP(ctx context.Context, c check) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.Addr+"/whoami", nil)
	resp, err := httpClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %s", resp.Status)
	}
	return string(body), nil
}

// udpSizes are the datagram sizes of a UDP check: the TUN's MTU is 9000, the links' 1500.
var udpSizes = []int{1, 1200, 8000}

func checkUDP(ctx context.Context, c check) (string, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "udp", c.Addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	var seen string
	buf := make([]byte, 65536)
	for i, size := range udpSizes {
		payload := make([]byte, size)
		rand.NewChaCha8([32]byte{byte(i)}).Read(payload)
		if _, err := conn.Write(payload); err != nil {
			return "", err
		}
		n, err := conn.Read(buf)
		if err != nil {
			return "", fmt.Errorf("datagram %d (%d bytes): %w", i, size, err)
		}
		source, echoed, ok := bytes.Cut(buf[:n], []byte("|"))
		if !ok || !bytes.Equal(echoed, payload) {
			return "", fmt.Errorf("datagram %d (%d bytes): echo corrupted (%d bytes back)", i, size, n)
		}
		if seen != "" && string(source) != seen {
			return "", fmt.Errorf("datagrams seen from %s and %s", seen, source)
		}
		seen = string(source)
	}
	return seen, nil
}

// bulkSeed keys the bulk content.
const bulkSeed = 20250101

// checkBulk downloads Size bytes and compares their SHA-256 with the regenerated content's; the
// seconds are those of the transfer (request to last byte).
func checkBulk(ctx context.Context, c check) (seen string, n int64, seconds float64, err error) {
	url := fmt.Sprintf("http://%s/blob?size=%d&seed=%d", c.Addr, c.Size, bulkSeed)
	start := time.Now()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := httpClient.Do(req)
	if err != nil {
		return "", 0, 0, err
	}
	defer resp.Body.Close()
	seen = resp.Header.Get("X-Seen")
	got := sha256.New()
	n, err = io.Copy(got, resp.Body)
	seconds = time.Since(start).Seconds()
	if err != nil {
		return seen, n, seconds, fmt.Errorf("after %d bytes: %w", n, err)
	}
	if n != c.Size {
		return seen, n, seconds, fmt.Errorf("%d bytes, want %d", n, c.Size)
	}
	want := sha256.New()
	io.Copy(want, io.LimitReader(blobStream(bulkSeed), c.Size))
	if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		return seen, n, seconds, errors.New("checksum mismatch: sha256 " + hex.EncodeToString(got.Sum(nil)) + ", want " + hex.EncodeToString(want.Sum(nil)))
	}
	return seen, n, seconds, nil
}

// checkUpload sends Size bytes and compares the SHA-256 the target computed with its own.
func checkUpload(ctx context.Context, c check) (seen string, n int64, seconds float64, err error) {
	sent := sha256.New()
	body := io.TeeReader(io.LimitReader(blobStream(bulkSeed+1), c.Size), sent)
	start := time.Now()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+c.Addr+"/sink", body)
	req.ContentLength = c.Size
	resp, err := httpClient.Do(req)
	if err != nil {
		return "", 0, 0, err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	seconds = time.Since(start).Seconds()
	if err != nil {
		return "", 0, seconds, err
	}
	if resp.StatusCode != http.StatusOK {
		return "", 0, seconds, fmt.Errorf("status %s: %s", resp.Status, bytes.TrimSpace(answer))
	}
	var sum string
	if _, err := fmt.Sscanf(string(answer), "%s %d %s", &seen, &n, &sum); err != nil {
		return "", 0, seconds, fmt.Errorf("answer %q: %v", answer, err)
	}
	if n != c.Size {
		return seen, n, seconds, fmt.Errorf("the target received %d bytes, want %d", n, c.Size)
	}
	if want := hex.EncodeToString(sent.Sum(nil)); sum != want {
		return seen, n, seconds, fmt.Errorf("checksum mismatch: the target got sha256 %s, sent %s", sum, want)
	}
	return seen, n, seconds, nil
}
