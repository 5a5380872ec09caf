package protocol

import (
	"bytes"
	"sync"
	"testing"
	"time"
)

// byteMetrics records BytesTransferred per user; other events are ignored.
type byteMetrics struct {
	mu       sync.Mutex
	up, down map[string]int64
	reports  int
}

func (m *byteMetrics) SessionOpened(string) {}
func (m *byteMetrics) SessionClosed(string) {}
func (m *byteMetrics) StreamOpened(string)  {}
func (m *byteMetrics) AuthFailed()          {}
func (m *byteMetrics) Fallback()            {}
func (m *byteMetrics) LimitReached(string)  {}
func (m *byteMetrics) BytesTransferred(user string, up, down int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.up[user] += up
	m.down[user] += down
	m.reports++
}

func (m *byteMetrics) get(user string) (up, down int64, reports int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.up[user], m.down[user], m.reports
}

// TestReportBytesWhileOpen: ReportBytes reports what an open stream carried so far, and the
// report at Close adds only the rest, so every byte is counted exactly once. Upload counts the
// stream's destination address too (the server reads it from the stream).
func TestReportBytesWhileOpen(t *testing.T) {
	m := &byteMetrics{up: map[string]int64{}, down: map[string]int64{}}
	p := newTestPair(t, ServerConfig{Metrics: m}, ClientConfig{})
	const dest = "example.com:80"
	hdr := int64(mustAddr(t, dest).EncodedLen())
	st := p.open(t, dest)
	echo(t, st, bytes.Repeat([]byte("a"), 1000))
	if up, down, _ := m.get("alice"); up != 0 || down != 0 {
		t.Fatalf("before ReportBytes: up %d down %d, want nothing reported while the stream is open", up, down)
	}
	p.srv.ReportBytes()
	if up, down, _ := m.get("alice"); up != hdr+1000 || down != 1000 {
		t.Fatalf("after ReportBytes: up %d down %d, want %d and 1000", up, down, hdr+1000)
	}
	_, _, reports := m.get("alice")
	p.srv.ReportBytes() // nothing new: no report at all
	if _, _, n := m.get("alice"); n != reports {
		t.Fatalf("ReportBytes without new traffic made %d reports", n-reports)
	}
	echo(t, st, bytes.Repeat([]byte("b"), 500))
	st.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		up, down, _ := m.get("alice")
		if up == hdr+1500 && down == 1500 {
			break
		}
		if up > hdr+1500 || down > 1500 || time.Now().After(deadline) {
			t.Fatalf("after Close: up %d down %d, want %d and 1500", up, down, hdr+1500)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (p *testPair) open(t testing.TB, dest string) *Stream {
	t.Helper()
	st, err := p.client.OpenStream(t.Context(), mustAddr(t, dest))
	if err != nil {
		t.Fatal(err)
	}
	return st
}
