package shape

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"
)

// TLS record content types.
const (
	recChangeCipherSpec = 20
	recAlert            = 21
	recHandshake        = 22
	recApplicationData  = 23
)

// wireRecord is one TLS record seen by the proxy.
type wireRecord struct {
	typ    byte
	length int // the record header's length field (ciphertext)
	// plain is the plaintext length of an application record after the handshake
	// (length minus the cipher's overhead); -1 for handshake records.
	plain int
}

// wireProxy is a TCP proxy that records the TLS records passing in each direction.
type wireProxy struct {
	ln       net.Listener
	upstream string

	mu    sync.Mutex
	conns []*wireConn
	added chan struct{} // a connection was accepted
	wg    sync.WaitGroup
}

// wireConn is what the proxy saw on one connection.
type wireConn struct {
	upLocal string // local address of the proxy's connection to the server
	done    chan struct{}

	mu             sync.Mutex
	up, down       []wireRecord // client to server, server to client
	clientFinished bool         // the client's encrypted Finished went by
	overhead       int          // plaintext = length - overhead (0 until the ServerHello)
	version        uint16       // negotiated version (supported_versions)
	suite          uint16
	err            error
}

func startWireProxy(t testing.TB, upstream string) *wireProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &wireProxy{ln: ln, upstream: upstream, added: make(chan struct{}, 1)}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.wg.Wait()
	})
	return p
}

func (p *wireProxy) Addr() string { return p.ln.Addr().String() }

func (p *wireProxy) serve(client net.Conn) {
	defer client.Close()
	server, err := net.Dial("tcp", p.upstream)
	if err != nil {
		return
	}
	defer server.Close()
	wc := &wireConn{upLocal: server.LocalAddr().String(), done: make(chan struct{})}
	defer close(wc.done)
	p.mu.Lock()
	p.conns = append(p.conns, wc)
	p.mu.Unlock()
	select {
	case p.added <- struct{}{}:
	default:
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		wc.pump(client, server, false)
	}()
	wc.pump(server, client, true)
	wg.Wait()
}

// pump copies src to dst, parsing records first, so that a record is recorded before its last
// byte is forwarded (the other direction's classification depends on that order). On EOF the
// write side of dst is shut; a failed write to dst does not stop the recording.
func (wc *wireConn) pump(dst, src net.Conn, up bool) {
	var pending []byte
	buf := make([]byte, 64<<10)
	writeOK := true
	for {
		n, err := src.Read(buf)
		if n > 0 {
			pending = append(pending, buf[:n]...)
			pending = wc.parse(pending, up)
			if writeOK {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					writeOK = false
				}
			}
		}
		if err != nil {
			if len(pending) > 0 {
				wc.fail(fmt.Errorf("%d bytes of an incomplete record at the end (up=%v)", len(pending), up))
			}
			if tc, ok := dst.(*net.TCPConn); ok {
				tc.CloseWrite()
			}
			return
		}
	}
}

func (wc *wireConn) fail(err error) {
	wc.mu.Lock()
	if wc.err == nil {
		wc.err = err
	}
	wc.mu.Unlock()
}

// parse records every complete record in b and returns what is left.
func (wc *wireConn) parse(b []byte, up bool) []byte {
	for len(b) >= 5 {
		n := int(binary.BigEndian.Uint16(b[3:5]))
		if len(b) < 5+n {
			break
		}
		wc.record(b[0], b[5:5+n], up)
		b = b[5+n:]
	}
	return bytes.Clone(b)
}

func (wc *wireConn) record(typ byte, body []byte, up bool) {
	wc.mu.Lock()
	defer wc.mu.Unlock()
	r := wireRecord{typ: typ, length: len(body), plain: -1}
	switch {
	case up && typ == recApplicationData && !wc.clientFinished:
		// The client's first encrypted record is its Finished: the handshake ends here.
		wc.clientFinished = true
	case up && typ == recApplicationData, !up && typ == recApplicationData && wc.clientFinished:
		// Server records before the client's Finished are its encrypted handshake flight:
		// the server cannot send application data before it has the client's Finished, and
		// the proxy records that Finished before forwarding it.
		if wc.overhead == 0 {
			wc.setErr("application data before a ServerHello")
		} else {
			r.plain = len(body) - wc.overhead
		}
	case !up && typ == recHandshake && !wc.clientFinished:
		wc.serverHello(body)
	}
	if up {
		wc.up = append(wc.up, r)
	} else {
		wc.down = append(wc.down, r)
	}
}

func (wc *wireConn) setErr(msg string) {
	if wc.err == nil {
		wc.err = errors.New(msg)
	}
}

// helloRetryRandom marks a HelloRetryRequest (RFC 8446 §4.1.3).
var helloRetryRandom = []byte{
	0xCF, 0x21, 0xAD, 0x74, 0xE5, 0x9A, 0x61, 0x11, 0xBE, 0x1D, 0x8C, 0x02, 0x1E, 0x65, 0xB8, 0x91,
	0xC2, 0xA2, 0x11, 0x16, 0x7A, 0xBB, 0x8C, 0x5E, 0x07, 0x9E, 0x09, 0xE2, 0xC8, 0xA8, 0x33, 0x9C,
}

// serverHello reads the negotiated version and cipher suite from a ServerHello and sets the
// record overhead. Only TLS 1.3 is accepted: its AEAD records carry one byte of inner content
// type and a 16-byte tag (every TLS 1.3 suite Go implements: AES-GCM and ChaCha20-Poly1305).
func (wc *wireConn) serverHello(b []byte) {
	if len(b) < 4 || b[0] != 2 { // handshake type 2: ServerHello
		return
	}
	b = b[4:]
	if len(b) < 2+32+1 {
		wc.setErr("short ServerHello")
		return
	}
	if bytes.Equal(b[2:34], helloRetryRandom) {
		return
	}
	b = b[34:]
	sid := int(b[0])
	if len(b) < 1+sid+2+1+2 {
		wc.setErr("short ServerHello")
		return
	}
	b = b[1+sid:]
	suite := binary.BigEndian.Uint16(b)
	b = b[3:]
	extLen := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	if len(b) < extLen {
		wc.setErr("short ServerHello extensions")
		return
	}
	b = b[:extLen]
	var version uint16
	for len(b) >= 4 {
		typ := binary.BigEndian.Uint16(b)
		n := int(binary.BigEndian.Uint16(b[2:]))
		if len(b) < 4+n {
			break
		}
		if typ == 43 && n == 2 { // supported_versions
			version = binary.BigEndian.Uint16(b[4:])
		}
		b = b[4+n:]
	}
	wc.version, wc.suite = version, suite
	switch {
	case version != 0x0304:
		wc.setErr(fmt.Sprintf("negotiated version %#04x, want TLS 1.3", version))
	case suite == 0x1301 || suite == 0x1302 || suite == 0x1303:
		wc.overhead = 1 + 16
	default:
		wc.setErr(fmt.Sprintf("cipher suite %#04x has no known overhead", suite))
	}
}

// plaintexts returns the plaintext sizes of the application records in one direction.
func plaintexts(recs []wireRecord) []int {
	var out []int
	for _, r := range recs {
		if r.plain >= 0 {
			out = append(out, r.plain)
		}
	}
	return out
}

// wait blocks until the connection has ended in both directions.
func (wc *wireConn) wait(t testing.TB) {
	t.Helper()
	select {
	case <-wc.done:
	case <-time.After(30 * time.Second):
		t.Fatal("proxied connection did not end")
	}
}

// result returns the plaintext record sizes seen in each direction once the connection ended.
func (wc *wireConn) result(t testing.TB) (up, down []int) {
	t.Helper()
	wc.wait(t)
	wc.mu.Lock()
	defer wc.mu.Unlock()
	if wc.err != nil {
		t.Fatalf("wire: %v", wc.err)
	}
	if !wc.clientFinished {
		t.Fatal("wire: the TLS handshake did not finish")
	}
	return plaintexts(wc.up), plaintexts(wc.down)
}

// conn returns the i-th connection the proxy accepted, waiting for it.
func (p *wireProxy) conn(t testing.TB, i int) *wireConn {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		p.mu.Lock()
		if i < len(p.conns) {
			wc := p.conns[i]
			p.mu.Unlock()
			return wc
		}
		p.mu.Unlock()
		select {
		case <-p.added:
		case <-deadline:
			t.Fatalf("proxy: connection %d never came", i)
		}
	}
}
