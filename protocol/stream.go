package protocol

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Stream is one proxied connection inside a session. It is a net.Conn; reads and writes honour
// deadlines, and it is safe for concurrent use.
type Stream struct {
	dest     Addr
	user     string
	isClient bool

	// wmu serializes writes of this stream (its data, its SYN and its FIN keep their order).
	wmu sync.Mutex

	mu       sync.Mutex
	sess     *session
	id       uint32
	rq       chunkQueue // buffered data chunks (pooled)
	roff     int        // read offset into the first chunk
	rbytes   int
	rerr     error         // no more data will arrive after the buffer: io.EOF or the reason
	werr     error         // writes fail with this
	readable chan struct{} // cap 1: data or rerr arrived
	// Rarely awaited: made by their first waiter (lazyChan), signalled under mu.
	space   chan struct{} // cap 1: the reader freed buffer space
	credit  chan struct{} // cap 1: the peer granted room, or the stream failed (flow control)
	closed  bool          // Close called
	wclosed bool          // CloseWrite or Close called
	finSent bool
	finRecv bool
	removed bool // no longer in the session's stream map

	// client side
	pending     []byte      // SYN + PSH(address) not yet written (reused session)
	flushTimer  *time.Timer // writes pending if the caller does not write first
	synSentAt   time.Time
	acked       bool
	synAckTimer *time.Timer
	reused      bool   // attached to a session that had carried streams before
	attachedAt  int64  // session receive clock when attached, for the retry decision
	replay      []byte // data written before any answer, replayed if the session was dead
	replayOff   bool   // replay overflowed or the stream answered: no retry
	retried     bool
	synAckMore  bool // the SYNACK wait was extended once while the session is judged
	migrating   bool
	gotData     bool

	// flow control (settingWindow), counted per session the stream is on
	sent       int64       // data bytes sent, the address included
	granted    int64       // bytes the peer's reader consumed (cmdWindowUpdate)
	unacked    int64       // bytes our reader consumed and we have not granted back yet
	reads      int64       // reads that consumed data, for stall detection
	stallTimer *time.Timer // buffer over half full with flow control on: reset if no reads

	// server side
	reported   bool
	earlyAcked bool
	earlyTimer *time.Timer
	ackPending bool        // success reported, cmdSYNACK not written yet (rides with the first data)
	ackTimer   *time.Timer // writes a pending cmdSYNACK alone when no data came in time
	upBytes    atomic.Int64
	downBytes  atomic.Int64

	rdl, wdl deadline
}

const maxReplay = 64 << 10

func newStream(sess *session, id uint32, dest Addr) *Stream {
	return &Stream{
		sess:     sess,
		id:       id,
		dest:     dest,
		isClient: sess != nil && sess.isClient,
		readable: make(chan struct{}, 1),
	}
}

func notify(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// lazyChan returns *c, made on first use. The waiter calls it under the lock that guards *c and
// checks its condition under the same lock; notifiers read *c under that lock too (a nil channel
// means no one waits yet, and notify on it does nothing).
func lazyChan(c *chan struct{}) chan struct{} {
	if *c == nil {
		*c = make(chan struct{}, 1)
	}
	return *c
}

// Destination returns the stream's target address.
func (st *Stream) Destination() Addr { return st.dest }

// User returns the name of the user who opened the stream (server side).
func (st *Stream) User() string { return st.user }

// ID returns the stream id in its current session.
func (st *Stream) ID() uint32 {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.id
}

// Read reads stream data. After the peer finished the stream it returns io.EOF.
func (st *Stream) Read(b []byte) (int, error) {
	for {
		st.mu.Lock()
		if st.rbytes > 0 {
			n := st.readLocked(b)
			st.mu.Unlock()
			if !st.isClient {
				st.upBytes.Add(int64(n))
			}
			return n, nil
		}
		if st.closed {
			st.mu.Unlock()
			return 0, net.ErrClosed
		}
		if st.rerr != nil {
			err := st.rerr
			st.mu.Unlock()
			return 0, err
		}
		if len(b) == 0 {
			st.mu.Unlock()
			return 0, nil
		}
		ch := st.readable
		st.mu.Unlock()
		select {
		case <-ch:
		case <-st.rdl.wait():
			// data that raced the deadline is still returned first
			st.mu.Lock()
			has := st.rbytes > 0
			st.mu.Unlock()
			if !has {
				return 0, os.ErrDeadlineExceeded
			}
		}
	}
}

// bufferedAddr decodes the destination when the first received chunk holds all of it, and
// consumes it (server side, before the first read): the common case needs no read deadline.
func (st *Stream) bufferedAddr() (Addr, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.rq.len() == 0 {
		return Addr{}, false
	}
	a, n, err := ParseAddrBytes(st.rq.front()[st.roff:])
	if err != nil {
		return Addr{}, false
	}
	st.consumeFrontLocked(n)
	st.rbytes -= n
	st.consumedLocked(n)
	st.upBytes.Add(int64(n))
	return a, true
}

// chunkQueue is a FIFO of received chunks. It keeps its backing array between bursts (a stream
// whose reader keeps up empties it at every frame), unless that grew large.
type chunkQueue struct {
	q    [][]byte
	head int
}

func (q *chunkQueue) len() int { return len(q.q) - q.head }

func (q *chunkQueue) front() []byte { return q.q[q.head] }

func (q *chunkQueue) push(c []byte) {
	if q.head > 0 && len(q.q) == cap(q.q) { // full: move the live chunks to the front
		n := copy(q.q, q.q[q.head:])
		clear(q.q[n:])
		q.q, q.head = q.q[:n], 0
	}
	q.q = append(q.q, c)
}

func (q *chunkQueue) pop() []byte {
	c := q.q[q.head]
	q.q[q.head] = nil
	q.head++
	if q.head == len(q.q) {
		q.head = 0
		if cap(q.q) > 16 {
			q.q = nil // a deep queue drained: do not keep its array
		} else {
			q.q = q.q[:0]
		}
	}
	return c
}

// free returns every chunk to the pool and drops the array.
func (q *chunkQueue) free() {
	for _, c := range q.q[q.head:] {
		putBuf(c)
	}
	q.q, q.head = nil, 0
}

// consumeFrontLocked marks k more bytes of the first chunk read, and frees it once all are.
func (st *Stream) consumeFrontLocked(k int) {
	st.roff += k
	if st.roff == len(st.rq.front()) {
		putBuf(st.rq.pop())
		st.roff = 0
	}
}

// readLocked copies buffered data into b and frees consumed chunks.
func (st *Stream) readLocked(b []byte) int {
	n := 0
	for n < len(b) && st.rq.len() > 0 {
		k := copy(b[n:], st.rq.front()[st.roff:])
		n += k
		st.consumeFrontLocked(k)
	}
	st.rbytes -= n
	st.consumedLocked(n)
	return n
}

// consumedLocked records that the reader consumed n bytes: the pusher may go on, and with flow
// control on the peer is granted the room back once a quarter of the window was consumed.
func (st *Stream) consumedLocked(n int) {
	notify(st.space)
	s := st.sess
	if n <= 0 || s == nil {
		return
	}
	st.reads++
	st.unacked += int64(n)
	if s.flowControl.Load() && st.unacked >= int64(s.cfg.bufferSize)/4 {
		s.sendWindowUpdate(st.id, st.unacked)
		st.unacked = 0
	}
}

// WriteTo writes buffered data straight from the receive buffers to w (saves a copy).
func (st *Stream) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		st.mu.Lock()
		if st.rq.len() > 0 {
			chunk := st.rq.pop()
			c := chunk[st.roff:]
			st.roff = 0
			st.rbytes -= len(c)
			st.consumedLocked(len(c))
			st.mu.Unlock()
			n, err := w.Write(c)
			putBuf(chunk)
			total += int64(n)
			if !st.isClient {
				st.upBytes.Add(int64(n))
			}
			if err != nil {
				return total, err
			}
			continue
		}
		if st.closed {
			st.mu.Unlock()
			return total, net.ErrClosed
		}
		if st.rerr != nil {
			err := st.rerr
			st.mu.Unlock()
			if err == io.EOF {
				return total, nil
			}
			return total, err
		}
		ch := st.readable
		st.mu.Unlock()
		select {
		case <-ch:
		case <-st.rdl.wait():
			st.mu.Lock()
			has := st.rbytes > 0
			st.mu.Unlock()
			if !has {
				return total, os.ErrDeadlineExceeded
			}
		}
	}
}

// push appends data received for this stream (session reader goroutine). It blocks while the
// buffer is full, up to stallTimeout; then the stream is reset. It takes ownership of data.
func (st *Stream) push(s *session, data []byte, limit int, stallTimeout time.Duration) {
	st.mu.Lock()
	if st.closed || st.rerr != nil || st.sess != s {
		st.mu.Unlock()
		putBuf(data)
		return
	}
	var stall *time.Timer
	for st.rbytes >= limit {
		space := lazyChan(&st.space)
		st.mu.Unlock()
		if stall == nil {
			stall = time.NewTimer(stallTimeout)
			s.readerBlocked.Add(1)
		}
		select {
		case <-space:
			// The reader made progress: a slow reader is back-pressured, not reset. Only a
			// reader that frees nothing for stallTimeout is.
			stall.Reset(stallTimeout)
		case <-stall.C:
			s.readerBlocked.Add(-1)
			putBuf(data)
			s.cfg.logger.Warn("anytls: stream reader stalled, resetting stream", "stream", st.id, "buffered", limit)
			st.reset(ErrStreamStalled, true)
			return
		case <-s.die:
			s.readerBlocked.Add(-1)
			stall.Stop()
			putBuf(data)
			return
		}
		st.mu.Lock()
		if st.closed || st.rerr != nil || st.sess != s {
			st.mu.Unlock()
			s.readerBlocked.Add(-1)
			stall.Stop()
			putBuf(data)
			return
		}
	}
	if stall != nil {
		stall.Stop()
		s.readerBlocked.Add(-1)
	}
	st.rq.push(data)
	st.rbytes += len(data)
	if s.flowControl.Load() && st.stallTimer == nil && st.rbytes > s.cfg.bufferSize/2 {
		// With flow control the sender stops by itself and nothing here blocks; a reader that
		// makes no progress for stallTimeout still has its stream reset, as without it.
		reads := st.reads
		st.stallTimer = time.AfterFunc(stallTimeout, func() { st.stallCheck(s, reads, stallTimeout) })
	}
	st.gotData = true
	st.replayOff = true
	st.replay = nil
	st.mu.Unlock()
	notify(st.readable)
}

// stallCheck resets the stream if its reader consumed nothing since the timer was armed while
// the buffer stayed over half full (flow control on).
func (st *Stream) stallCheck(s *session, reads int64, d time.Duration) {
	st.mu.Lock()
	if st.stallTimer == nil || st.sess != s || st.closed || st.rerr != nil || st.rbytes <= s.cfg.bufferSize/2 {
		st.stallTimer = nil
		st.mu.Unlock()
		return
	}
	if st.reads != reads { // progress: a slow reader, not a stalled one; look again later
		r := st.reads
		st.stallTimer = time.AfterFunc(d, func() { st.stallCheck(s, r, d) })
		st.mu.Unlock()
		return
	}
	st.stallTimer = nil
	buffered := st.rbytes
	st.mu.Unlock()
	s.cfg.logger.Warn("anytls: stream reader stalled, resetting stream", "stream", st.id, "buffered", buffered)
	st.reset(ErrStreamStalled, true)
}

// waitCredit blocks while flow control is on and the peer has granted no room. Failures
// (deadline, reset, session end) are left for the caller's own checks. Caller holds wmu.
func (st *Stream) waitCredit() {
	for {
		st.mu.Lock()
		s := st.sess
		if s == nil || !s.flowControl.Load() || st.closed || st.werr != nil ||
			s.peerWindow.Load()+st.granted-st.sent > 0 {
			st.mu.Unlock()
			return
		}
		credit := lazyChan(&st.credit)
		st.mu.Unlock()
		select {
		case <-credit:
		case <-st.wdl.wait():
			return
		case <-s.die:
			return
		}
	}
}

// Write sends b as one or more frames (at most MaxFrameData bytes each).
func (st *Stream) Write(b []byte) (int, error) {
	st.wmu.Lock()
	defer st.wmu.Unlock()
	n := 0
	for {
		chunk := b[n:]
		if len(chunk) > MaxFrameData {
			chunk = chunk[:alignedFrameData] // frames that fill whole TLS records, no runt after each
		}
		if len(chunk) == 0 && n > 0 {
			return n, nil
		}
		buf := getBuf(HeaderSize + len(chunk))
		copy(buf[HeaderSize:], chunk)
		err := st.writeFrameLocked(buf, len(chunk))
		putBuf(buf)
		if err != nil {
			return n, err
		}
		n += len(chunk)
		if n == len(b) {
			return n, nil
		}
	}
}

// alignedFrameData is the frame data size whose frame fills whole TLS records (4 × 16 KiB):
// a relay reading at most this much per frame writes no runt record after each frame.
const alignedFrameData = 4*16384 - HeaderSize

// ReadFrom reads from r straight into frame buffers (saves a copy). A stream whose source is
// an idle socket holds no frame buffer while it waits.
func (st *Stream) ReadFrom(r io.Reader) (int64, error) {
	if sr := socketReader(r); sr != nil {
		// The loop of readFromSocket, here: a relay's goroutine waits in it for most of its
		// life, and the runtime shrinks a waiting goroutine's stack only if few frames are on it.
		var total int64
		for {
			buf, n, rerr := sr.result(sr.rc.Read(sr.fn))
			sent, err := st.sendRead(buf, n, rerr)
			putBuf(buf)
			total += sent
			if err != nil {
				if err == io.EOF {
					return total, nil
				}
				return total, err
			}
		}
	}
	return st.readFromReader(r)
}

// readFromReader is ReadFrom from anything but a TCP connection.
//
//go:noinline
func (st *Stream) readFromReader(r io.Reader) (int64, error) {
	// When the last read did not fill the buffer the source may be drained: wait for it
	// holding no buffer (sockets other than plain TCP connections).
	wait := readWaiter(r)
	var buf []byte
	full := false
	var total int64
	for {
		if wait != nil && !full {
			putBuf(buf)
			buf = nil
			wait()
		}
		if buf == nil {
			buf = getBuf(HeaderSize + MaxFrameData)
		}
		n, rerr := r.Read(buf[HeaderSize : HeaderSize+alignedFrameData])
		full = n == alignedFrameData
		sent, err := st.sendRead(buf, n, rerr)
		total += sent
		if err != nil {
			putBuf(buf)
			if err == io.EOF {
				return total, nil
			}
			return total, err
		}
	}
}

// sendRead writes the n bytes a read put behind buf's header as a frame. It returns the bytes
// sent and the error that ends ReadFrom: the write's, else the read's (io.EOF included).
//
//go:noinline
func (st *Stream) sendRead(buf []byte, n int, rerr error) (int64, error) {
	if n > 0 {
		st.wmu.Lock()
		err := st.writeFrameLocked(buf, n)
		st.wmu.Unlock()
		if err != nil {
			return 0, err
		}
	}
	return int64(n), rerr
}

// writeFrameLocked writes buf[HeaderSize:HeaderSize+n] as a PSH frame; buf[:HeaderSize] is
// scratch for the header. A pending SYN goes out in the same packet. Caller holds st.wmu.
func (st *Stream) writeFrameLocked(buf []byte, n int) error {
	st.waitCredit()
	st.mu.Lock()
	// As on a socket: closed first, then a passed deadline, then the stream's own error.
	if st.wdl.passed() && !st.closed {
		st.mu.Unlock()
		return os.ErrDeadlineExceeded
	}
	if err := st.writeErrLocked(); err != nil {
		st.mu.Unlock()
		return err
	}
	s, id := st.sess, st.id
	st.sent += int64(n)
	syn := st.pending // client: the SYN and address go first, in the same record
	st.pending = nil
	if st.flushTimer != nil {
		st.flushTimer.Stop()
		st.flushTimer = nil
	}
	if syn != nil {
		st.markSynSentLocked()
	}
	pending := syn
	var ack [HeaderSize]byte // stays on the stack: only copied from
	tookAck := st.takeAckLocked()
	if tookAck { // server: the SYNACK goes first, in the same record
		PutFrameHeader(ack[:], CmdSYNACK, id, 0)
		pending = ack[:]
	}
	if st.isClient && !st.replayOff {
		if len(st.replay)+n > maxReplay {
			st.replayOff, st.replay = true, nil
		} else {
			st.replay = append(st.replay, buf[HeaderSize:HeaderSize+n]...)
		}
	}
	st.mu.Unlock()

	PutFrameHeader(buf, CmdPSH, id, n)
	frame := buf[:HeaderSize+n]
	var err error
	if pending != nil {
		pkt := getBuf(len(pending) + len(frame))
		copy(pkt, pending)
		copy(pkt[len(pending):], frame)
		err = s.writePacket(pkt, &st.wdl)
		putBuf(pkt)
	} else {
		err = s.writePacket(frame, &st.wdl)
	}
	if err == nil {
		if !st.isClient {
			st.downBytes.Add(int64(n))
		}
		return nil
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		if syn != nil || tookAck {
			st.requeue(syn, tookAck)
		}
		return err
	}
	// The session failed. If the client moves this stream to a fresh session, the data is
	// in the replay buffer and goes out there.
	<-s.closeDone
	st.mu.Lock()
	moved := st.sess != s || st.migrating
	st.mu.Unlock()
	if !moved {
		return st.writeErr(err)
	}
	return nil
}

func (st *Stream) writeErrLocked() error {
	switch {
	case st.closed:
		return net.ErrClosed
	case st.werr != nil:
		return st.werr
	case st.wclosed:
		return fmt.Errorf("anytls: write after CloseWrite: %w", net.ErrClosed)
	}
	return nil
}

func (st *Stream) writeErr(fallback error) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if err := st.writeErrLocked(); err != nil {
		return err
	}
	return fallback
}

// flushPending writes a pending SYN without data (the caller has not written in time, or
// reads first on a protocol where the server speaks first).
func (st *Stream) flushPending() {
	st.wmu.Lock()
	defer st.wmu.Unlock()
	st.mu.Lock()
	pending := st.pending
	st.pending = nil
	st.flushTimer = nil
	s := st.sess
	if pending == nil || st.closed {
		st.mu.Unlock()
		return
	}
	st.markSynSentLocked()
	st.mu.Unlock()
	_ = s.writePacketOpt(pending, nil, 0, true)
}

func (st *Stream) markSynSentLocked() {
	st.synSentAt = time.Now()
	if st.sess.peerVersion.Load() >= 2 {
		st.armSynAckLocked()
		if st.reused {
			// The stream now depends on a pooled session: if that went silent, find out
			// before the SYNACK wait runs out, so the stream moves to a fresh session.
			st.sess.probeIfQuiet(st.sess.cfg.heartbeatInterval / 2)
		}
	}
}

// armSynAckLocked starts the wait for cmdSYNACK (v2 sessions only).
func (st *Stream) armSynAckLocked() {
	s := st.sess
	if st.acked || st.synAckTimer != nil || s.cfg.synAckTimeout < 0 || st.synSentAt.IsZero() {
		return
	}
	wait := s.cfg.synAckTimeout - time.Since(st.synSentAt)
	st.synAckTimer = time.AfterFunc(max(wait, 0), func() {
		st.mu.Lock()
		if st.acked || st.sess != s {
			st.mu.Unlock()
			return
		}
		if s.readerBlocked.Load() > 0 && st.synAckTimer != nil {
			// Our reader is blocked delivering to another stream's full buffer: nothing, this
			// SYNACK included, can arrive until it moves on (bounded by the stall timeout).
			st.synAckTimer.Reset(s.cfg.synAckTimeout)
			st.mu.Unlock()
			return
		}
		if !st.synAckMore && st.synAckTimer != nil && st.reused && !st.retried && !st.gotData &&
			!st.replayOff && s.recvClock.Load() == st.attachedAt && s.cfg.heartbeatInterval > 0 {
			// Nothing at all arrived on the session since this stream was attached: judge the
			// session by a heartbeat first. If it is dead the stream moves to a fresh session;
			// if it answers and still sends no SYNACK, the stream fails when this runs again.
			st.synAckMore = true
			st.synAckTimer.Reset(s.cfg.heartbeatTimeout + time.Second)
			st.mu.Unlock()
			s.probe()
			return
		}
		st.mu.Unlock()
		s.cfg.logger.Debug("anytls: no SYNACK, failing stream", "stream", st.id)
		st.reset(fmt.Errorf("%w within %v", ErrSynAckTimeout, s.cfg.synAckTimeout), true)
		s.probe() // the session may be dead: find out now
	})
}

// CloseWrite ends the sending direction. Toward a peer that announced half-close the other end
// reads io.EOF and can still send; toward a deployed peer (cmdFIN is a full close there) nothing
// is sent, and the stream is finished by Close.
func (st *Stream) CloseWrite() error {
	st.wmu.Lock()
	defer st.wmu.Unlock()
	st.mu.Lock()
	if st.closed || st.wclosed {
		st.mu.Unlock()
		return nil
	}
	st.wclosed = true
	s := st.sess
	if !s.halfClose.Load() || st.finSent || st.werr != nil {
		st.mu.Unlock()
		return nil
	}
	st.finSent = true
	pending := st.pending
	st.pending = nil
	if pending != nil {
		st.markSynSentLocked()
	}
	done := st.finRecv
	id := st.id
	if st.takeAckLocked() { // server: success reported, no data sent yet
		pending = AppendFrame(pending, CmdSYNACK, id, nil)
	}
	st.mu.Unlock()
	pkt := AppendFrame(pending, CmdFIN, id, nil)
	err := s.writePacketOpt(pkt, nil, 0, true)
	if done {
		s.removeStream(st)
	}
	return err
}

// Close closes the stream: the peer is told with cmdFIN unless it finished the stream already.
func (st *Stream) Close() error {
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		return nil
	}
	st.closed = true
	st.wclosed = true
	st.freeLocked()
	st.stopTimersLocked()
	ack := st.takeAckLocked()
	s, id := st.sess, st.id
	neverSent := st.pending != nil
	st.pending = nil
	half := s != nil && s.halfClose.Load()
	sendFin := !neverSent && !st.finSent && st.werr == nil && (half || !st.finRecv)
	if sendFin {
		st.finSent = true
	}
	notify(st.space)
	notify(st.credit)
	st.mu.Unlock()
	notify(st.readable)
	st.rdl.stop()
	st.wdl.stop()
	st.reportBytes()
	if s == nil {
		return nil
	}
	switch {
	case sendFin && ack: // success reported, no data sent: the SYNACK still comes first
		pkt := AppendFrame(getBuf(2 * HeaderSize)[:0], CmdSYNACK, id, nil)
		pkt = AppendFrame(pkt, CmdFIN, id, nil)
		_ = s.writePacketOpt(pkt, nil, DefaultWriteTimeout, true)
		putBuf(pkt)
	case sendFin:
		s.writeControl(CmdFIN, id, nil)
	}
	// The stream leaves the session at once; data the peer still sends for it is discarded.
	s.removeStream(st)
	return nil
}

func (st *Stream) freeLocked() {
	st.rq.free()
	st.roff, st.rbytes = 0, 0
	st.replay = nil
}

func (st *Stream) stopTimersLocked() {
	for _, t := range []*time.Timer{st.flushTimer, st.synAckTimer, st.earlyTimer, st.stallTimer} {
		if t != nil {
			t.Stop()
		}
	}
	st.flushTimer, st.synAckTimer, st.earlyTimer, st.stallTimer = nil, nil, nil, nil
}

// remoteFin handles cmdFIN from the peer (session reader).
func (st *Stream) remoteFin(s *session) {
	st.mu.Lock()
	if st.sess != s {
		st.mu.Unlock()
		return
	}
	st.finRecv = true
	half := s.halfClose.Load()
	if st.rerr == nil {
		st.rerr = io.EOF
	}
	if !half && st.werr == nil {
		st.werr = fmt.Errorf("anytls: peer closed the stream: %w", ErrStreamReset)
	}
	st.acked = true
	st.replayOff, st.replay = true, nil
	remove := !half || st.finSent || st.closed
	st.stopTimersLocked()
	if remove {
		st.takeAckLocked() // the client is done with the stream
	}
	notify(st.credit)
	st.mu.Unlock()
	notify(st.readable)
	if remove {
		s.removeStream(st)
	}
}

// reset fails the stream with err in both directions; sendFin tells the peer.
func (st *Stream) reset(err error, sendFin bool) {
	st.mu.Lock()
	s, id := st.sess, st.id
	if st.rerr == nil || st.rerr == io.EOF {
		st.rerr = err
	}
	if st.werr == nil {
		st.werr = err
	}
	st.freeLocked()
	st.stopTimersLocked()
	st.takeAckLocked()
	sendFin = sendFin && !st.finSent && st.pending == nil
	st.finSent = true
	st.pending = nil
	notify(st.space)
	notify(st.credit)
	st.mu.Unlock()
	notify(st.readable)
	if sendFin {
		var abort []byte
		if s.halfClose.Load() {
			abort = finAbort // an empty cmdFIN would only end our direction
		}
		s.queueControl(CmdFIN, id, abort)
	}
	s.removeStream(st)
}

// sessionDone fails the stream because its session ended.
func (st *Stream) sessionDone(err error) {
	st.mu.Lock()
	if st.rerr == nil {
		st.rerr = err
	}
	if st.werr == nil {
		st.werr = err
	}
	st.stopTimersLocked()
	st.takeAckLocked()
	st.pending = nil
	st.removed = true
	notify(st.space)
	notify(st.credit)
	st.mu.Unlock()
	notify(st.readable)
}

// synAck handles cmdSYNACK (client).
func (st *Stream) synAck(s *session, text []byte) {
	st.mu.Lock()
	if st.sess != s {
		st.mu.Unlock()
		return
	}
	st.acked = true
	if st.synAckTimer != nil {
		st.synAckTimer.Stop()
		st.synAckTimer = nil
	}
	st.mu.Unlock()
	if len(text) > 0 {
		st.reset(&RemoteError{Text: string(text)}, true)
	}
}

// Report tells the client the result of connecting to the destination (server side): nil
// sends an empty cmdSYNACK, an error sends its text and closes the stream. Only the first call
// counts. If the early SYNACK went out already, an error closes the stream.
func (st *Stream) Report(err error) {
	st.mu.Lock()
	if st.reported || st.isClient {
		st.mu.Unlock()
		return
	}
	st.reported = true
	if st.earlyTimer != nil {
		st.earlyTimer.Stop()
		st.earlyTimer = nil
	}
	s, id := st.sess, st.id
	answer := !st.earlyAcked && s.peerVersion.Load() >= 2 // v2, and no early SYNACK went out
	if err == nil {
		// The client sent its first data with the SYN, so the destination's answer often
		// follows within moments: the SYNACK goes out in the same record as it (one write and
		// one wake-up less at each end), or alone after synAckCoalesceDelay. A half-closed
		// stream is still answered.
		if answer && !st.closed && !st.removed && st.werr == nil {
			st.ackPending = true
			st.ackTimer = time.AfterFunc(synAckCoalesceDelay, st.flushAck)
		}
		st.mu.Unlock()
		return
	}
	st.mu.Unlock()
	if answer {
		text := []byte(err.Error())
		if len(text) > 1024 {
			text = text[:1024]
		}
		s.writeControl(CmdSYNACK, id, text)
	}
	st.Close()
}

// requeue puts back what a packet whose write deadline passed before it was written was to
// carry first: the client's SYN and address (syn), or the server's SYNACK (ack). The next
// packet carries it, or its timer sends it alone.
func (st *Stream) requeue(syn []byte, ack bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.closed || st.removed || st.werr != nil {
		return
	}
	switch {
	case ack:
		if !st.ackPending {
			st.ackPending = true
			st.ackTimer = time.AfterFunc(synAckCoalesceDelay, st.flushAck)
		}
	case syn != nil && st.pending == nil && !st.finSent:
		st.pending = syn
		if st.flushTimer == nil {
			st.flushTimer = time.AfterFunc(synCoalesceDelay, st.flushPending)
		}
	}
}

// synAckCoalesceDelay bounds how long a successful cmdSYNACK waits for the stream's first data
// (as the client's SYN waits for its first data on a reused session). Deployed clients watch
// for the SYNACK for 3 s; ours judge a session by heartbeats.
const synAckCoalesceDelay = 5 * time.Millisecond

// flushAck writes a pending cmdSYNACK that no data carried.
func (st *Stream) flushAck() {
	st.wmu.Lock() // after a data write in progress, which may carry it
	defer st.wmu.Unlock()
	st.mu.Lock()
	s := st.sess
	if !st.ackPending || st.closed || st.removed || s == nil {
		st.mu.Unlock()
		return
	}
	st.mu.Unlock()
	// Take the session's write slot before claiming the ack: a Close meanwhile claims it and
	// sends it with its FIN, or finds it claimed and writes its FIN after this.
	if s.acquireWrite(nil, DefaultWriteTimeout) != nil {
		return
	}
	st.mu.Lock()
	claimed := st.ackPending && !st.closed && !st.removed && st.sess == s
	if claimed {
		st.ackPending = false
		st.ackTimer = nil
	}
	id := st.id
	st.mu.Unlock()
	if !claimed {
		<-s.wsem
		return
	}
	frame := AppendFrame(getBuf(HeaderSize)[:0], CmdSYNACK, id, nil)
	_ = s.writeAcquired(frame, true)
	putBuf(frame)
}

// takeAckLocked clears a pending cmdSYNACK for the caller to send (true) or drop.
func (st *Stream) takeAckLocked() bool {
	if !st.ackPending {
		return false
	}
	st.ackPending = false
	if st.ackTimer != nil {
		st.ackTimer.Stop()
		st.ackTimer = nil
	}
	return true
}

func (st *Stream) earlyAck() {
	st.mu.Lock()
	if st.reported || st.closed {
		st.mu.Unlock()
		return
	}
	st.earlyAcked = true
	st.earlyTimer = nil
	s, id := st.sess, st.id
	st.mu.Unlock()
	s.writeControl(CmdSYNACK, id, nil)
}

func (st *Stream) reportBytes() {
	if st.isClient || st.sess == nil || st.sess.cfg.metrics == nil {
		return
	}
	st.sess.cfg.metrics.BytesTransferred(st.user, st.upBytes.Swap(0), st.downBytes.Swap(0))
}

// LocalAddr returns the session connection's local address.
func (st *Stream) LocalAddr() net.Addr {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.sess.conn.LocalAddr()
}

// RemoteAddr returns the session connection's remote address.
func (st *Stream) RemoteAddr() net.Addr {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.sess.conn.RemoteAddr()
}

// SetDeadline sets the read and write deadlines.
func (st *Stream) SetDeadline(t time.Time) error {
	st.rdl.set(t)
	st.wdl.set(t)
	return nil
}

// SetReadDeadline sets the read deadline.
func (st *Stream) SetReadDeadline(t time.Time) error { st.rdl.set(t); return nil }

// SetWriteDeadline sets the write deadline.
func (st *Stream) SetWriteDeadline(t time.Time) error { st.wdl.set(t); return nil }

type ctxKeyUser struct{}

// UserFromContext returns the authenticated user name in a server stream handler's context.
func UserFromContext(ctx context.Context) (string, bool) {
	u, ok := ctx.Value(ctxKeyUser{}).(string)
	return u, ok
}

// ContextWithUser records the user name in ctx.
func ContextWithUser(ctx context.Context, user string) context.Context {
	return context.WithValue(ctx, ctxKeyUser{}, user)
}
