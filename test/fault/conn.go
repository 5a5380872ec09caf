// Package fault holds the reliability and security suite: a fault-injecting net.Conn used under
// the real TLS stack, and scenarios (blackholed paths, server restarts, stalled readers, silent
// and idle connections, hostile frames, load) run against the engine in protocol/.
//
// Only our own code runs here, so the package runs under the race detector (make test-race).
// The long forms of the load scenarios run under `make soak` (ANYTLS_SOAK=1).
package fault

import (
	"errors"
	"math/rand/v2"
	"net"
	"sync"
	"syscall"
	"time"
)

// Mode is what a Conn does to the traffic crossing it.
type Mode int

const (
	// Pass forwards everything.
	Pass Mode = iota
	// Blackhole swallows writes (they report success) and discards everything that arrives:
	// reads return only when the connection is closed or a read deadline passes. A path that
	// went silent without a FIN or RST looks like this to both ends.
	Blackhole
	// Reset fails every read and write with ECONNRESET, as after a TCP reset.
	Reset
)

// ErrReset is returned by a Conn in Reset mode (errors.Is(err, syscall.ECONNRESET) holds).
var ErrReset = &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}

// Conn wraps a net.Conn and injects faults into it: latency, dropped writes, a blackhole, a
// reset, writes cut into small pieces. Put it under TLS (wrap the TCP connection, then run TLS
// over it) so that the faults hit the real record layer. Faults can be changed at any time.
type Conn struct {
	net.Conn

	mu        sync.Mutex
	mode      Mode
	delay     time.Duration // added before every write
	bandwidth int64         // bytes per second a write is paced to (0: unlimited)
	dropRate  float64       // probability that a write is swallowed whole
	fragment  int           // writes are cut into pieces of at most this many bytes (0: off)
	closed    chan struct{}
	closeOnce sync.Once

	stats Stats
}

// Stats counts what a Conn did.
type Stats struct {
	Writes, Dropped, Fragments int
	BytesIn, BytesOut          int64 // delivered to the reader, passed to the wrapped conn
	BytesSwallowed             int64 // written while blackholed or dropped
}

// New wraps c. It passes everything until a fault is set.
func New(c net.Conn) *Conn {
	return &Conn{Conn: c, closed: make(chan struct{})}
}

// SetMode switches the connection to m.
func (c *Conn) SetMode(m Mode) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.mode = m
}

// Mode returns the current mode.
func (c *Conn) Mode() Mode {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mode
}

// SetDelay adds d of latency before every write.
func (c *Conn) SetDelay(d time.Duration) { c.mu.Lock(); c.delay = d; c.mu.Unlock() }

// SetBandwidth paces writes to bps bytes per second (0 turns it off): a write of n bytes takes
// n/bps. Under synctest the pacing is in fake time, so throughput figures are exact.
func (c *Conn) SetBandwidth(bps int64) { c.mu.Lock(); c.bandwidth = bps; c.mu.Unlock() }

// SetDropRate makes each write vanish with probability p (under TLS this corrupts the record
// stream, as a middlebox that eats segments would).
func (c *Conn) SetDropRate(p float64) { c.mu.Lock(); c.dropRate = p; c.mu.Unlock() }

// SetFragment cuts every write into pieces of at most n bytes (0 turns it off), so that the
// reader sees TLS records split across many reads.
func (c *Conn) SetFragment(n int) { c.mu.Lock(); c.fragment = n; c.mu.Unlock() }

// Stats returns a copy of the counters.
func (c *Conn) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// Closed is closed once Close was called.
func (c *Conn) Closed() <-chan struct{} { return c.closed }

// Read reads from the wrapped connection; a blackhole discards what arrives.
func (c *Conn) Read(b []byte) (int, error) {
	for {
		c.mu.Lock()
		mode := c.mode
		c.mu.Unlock()
		switch mode {
		case Reset:
			return 0, ErrReset
		case Blackhole:
			// Keep draining the wrapped connection so that the far end's writes "succeed" and
			// vanish, as packets do on a blackholed path; return only on close or deadline.
			var scratch [4096]byte
			n, err := c.Conn.Read(scratch[:])
			c.count(func(s *Stats) { s.BytesSwallowed += int64(n) })
			if err != nil {
				return 0, c.closedErr(err)
			}
			continue
		}
		n, err := c.Conn.Read(b)
		c.mu.Lock()
		mode = c.mode
		if mode == Pass {
			c.stats.BytesIn += int64(n)
		}
		c.mu.Unlock()
		if mode != Pass && n > 0 {
			continue // arrived as the fault began: lost
		}
		return n, err
	}
}

func (c *Conn) closedErr(err error) error {
	select {
	case <-c.closed:
		return net.ErrClosed
	default:
		return err
	}
}

// Write writes b, subject to the current faults.
func (c *Conn) Write(b []byte) (int, error) {
	c.mu.Lock()
	mode, delay, drop, frag := c.mode, c.delay, c.dropRate, c.fragment
	if c.bandwidth > 0 {
		delay += time.Duration(int64(len(b)) * int64(time.Second) / c.bandwidth)
	}
	c.stats.Writes++
	c.mu.Unlock()
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-c.closed:
			t.Stop()
			return 0, net.ErrClosed
		}
	}
	switch mode {
	case Reset:
		return 0, &net.OpError{Op: "write", Net: "tcp", Err: syscall.ECONNRESET}
	case Blackhole:
		c.count(func(s *Stats) { s.BytesSwallowed += int64(len(b)) })
		return len(b), nil
	}
	if drop > 0 && rand.Float64() < drop {
		c.count(func(s *Stats) { s.Dropped++; s.BytesSwallowed += int64(len(b)) })
		return len(b), nil
	}
	if frag <= 0 || len(b) <= frag {
		n, err := c.Conn.Write(b)
		c.count(func(s *Stats) { s.BytesOut += int64(n) })
		return n, err
	}
	total := 0
	for total < len(b) {
		end := min(total+frag, len(b))
		n, err := c.Conn.Write(b[total:end])
		total += n
		c.count(func(s *Stats) { s.BytesOut += int64(n); s.Fragments++ })
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

func (c *Conn) count(f func(*Stats)) {
	c.mu.Lock()
	f(&c.stats)
	c.mu.Unlock()
}

// Close closes the wrapped connection.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// Abort resets the connection: on TCP the kernel sends an RST (linger 0); every later read and
// write on c fails with ECONNRESET.
func (c *Conn) Abort() error {
	if tc, ok := c.Conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.SetMode(Reset)
	return c.Close()
}

// IsReset reports whether err is a connection reset.
func IsReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }
