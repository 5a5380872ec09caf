package protocol

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// sessionConfig holds the knobs a session needs, whichever side it is on.
type sessionConfig struct {
	logger            *slog.Logger
	metrics           Metrics
	bufferSize        int
	stallTimeout      time.Duration
	synAckTimeout     time.Duration
	heartbeatInterval time.Duration
	heartbeatTimeout  time.Duration
	halfClose         bool // we announce half-close
	maxVersion        int
}

// session is one authenticated connection carrying frames.
type session struct {
	conn     net.Conn
	reader   io.Reader
	isClient bool
	cfg      *sessionConfig
	client   *Client
	server   *Server

	// writes: wsem serializes them and keeps the packet counter
	wsem    chan struct{}
	pkt     int
	padding *PaddingScheme
	padOn   bool
	sizes   []int

	ctrlMu      sync.Mutex
	ctrlBuf     []byte
	ctrlRunning bool
	ctrlTimer   *time.Timer // flushes frames queued by queueControlSoon that no packet carried
	ctrlQueued  atomic.Bool // ctrlBuf is not empty

	mu        sync.Mutex
	streams   map[uint32]*Stream
	nextID    uint32
	closed    bool
	err       error
	die       chan struct{}
	closeDone chan struct{}

	peerVersion atomic.Int32
	halfClose   atomic.Bool
	flowControl atomic.Bool  // both ends announced settingWindow
	peerWindow  atomic.Int64 // the receive window the peer grants each stream
	lastAborted uint32       // stream id last answered with finAbort (reader goroutine only)

	// liveness: the receive clock counts frames received
	recvClock     atomic.Int64
	lastRecv      atomic.Int64 // unix nanos of the last frame received
	lastActivity  atomic.Int64 // unix nanos of the last stream activity (server idle)
	readerBlocked atomic.Int32
	hbMu          sync.Mutex
	hbTimer       *time.Timer
	probeClock    int64 // recvClock when the probe was sent; -1: no probe outstanding
	probeWrite    int64 // the packet being written when the probe was sent, or 0
	writesStarted atomic.Int64
	writesDone    atomic.Int64
	idleTimer     *time.Timer

	// client pool
	seq       uint64
	active    int          // streams attached (guarded by client.mu)
	ready     bool         // settings written, other streams may join (guarded by client.mu)
	dial      *pendingDial // streams waiting for this session (guarded by client.mu)
	idleSince time.Time

	// server
	user        string
	userHash    [32]byte
	gotSettings bool
	ctx         context.Context
	cancel      context.CancelFunc
}

func newSession(conn net.Conn, isClient bool, cfg *sessionConfig, scheme *PaddingScheme, padOn bool) *session {
	s := &session{
		conn:       conn,
		reader:     conn,
		isClient:   isClient,
		cfg:        cfg,
		wsem:       make(chan struct{}, 1),
		pkt:        1, // packet 0 is the client's authentication
		padding:    scheme,
		padOn:      padOn,
		streams:    map[uint32]*Stream{},
		die:        make(chan struct{}),
		closeDone:  make(chan struct{}),
		probeClock: -1,
	}
	now := time.Now().UnixNano()
	s.lastRecv.Store(now)
	s.lastActivity.Store(now)
	return s
}

func (s *session) isClosed() bool { return isClosedChan(s.die) }

func (s *session) closeErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	return ErrSessionClosed
}

// writePacket writes b as one packet (one write, or the records of its padding line).
// dl, if not nil, bounds the wait for the connection (a stream's write deadline).
func (s *session) writePacket(b []byte, dl *deadline) error {
	return s.writePacketOpt(b, dl, 0, false)
}

// maxControlWaste bounds the random cmdWaste added to a control-only packet after stop.
const maxControlWaste = 256

// writePacketOpt is writePacket; control marks a packet of control frames only (heartbeat, FIN,
// a bare SYN): after the padding scheme's stop such a packet carries a random cmdWaste frame in
// the same record, so that no fixed-size record betrays it.
// The wait for the connection ends at dl (if not nil) or after timeout (if > 0).
func (s *session) writePacketOpt(b []byte, dl *deadline, timeout time.Duration, control bool) error {
	if err := s.acquireWrite(dl, timeout); err != nil {
		return err
	}
	return s.writeAcquired(b, control)
}

// writeAcquired is writePacketOpt for a caller that took the write slot (acquireWrite); it
// gives the slot back.
func (s *session) writeAcquired(b []byte, control bool) error {
	if s.isClosed() {
		<-s.wsem
		return s.closeErr()
	}
	if q := s.takeQueuedControl(); q != nil {
		// Queued control frames go first, in this packet (they were queued before it).
		b = append(q, b...)
	}
	seq := s.writesStarted.Add(1)
	var err error
	switch {
	case s.padOn && s.pkt < s.padding.stop && (!control || s.padding.hasLine(s.pkt)):
		err = s.writePadded(b)
		s.pkt++
	case control && s.padOn:
		// After stop, or a packet the scheme has no line for: the scheme leaves it as is, which
		// for a control-only packet would be a record of a fixed size.
		if s.pkt < s.padding.stop {
			s.pkt++
		}
		waste := rand.IntN(maxControlWaste)
		rec := getBuf(len(b) + HeaderSize + waste)
		copy(rec, b)
		PutFrameHeader(rec[len(b):], CmdWaste, 0, waste)
		clear(rec[len(b)+HeaderSize:])
		_, err = s.conn.Write(rec)
		putBuf(rec)
	default:
		_, err = s.conn.Write(b)
	}
	if err == nil {
		s.writesDone.Store(seq)
	}
	<-s.wsem
	if err != nil {
		err = fmt.Errorf("anytls: write to session: %w", err)
		s.close(err)
		return err
	}
	return nil
}

var errDeadline = timeoutError{errDeadlineExceeded}

var errDeadlineExceeded = ErrDeadlineExceeded

// writePadded sends b as packet s.pkt of the padding scheme (spec §6, §6.1).
func (s *session) writePadded(b []byte) error {
	sizes, ok := s.padding.RecordSizes(s.pkt, s.sizes[:0])
	s.sizes = sizes
	if !ok {
		_, err := s.conn.Write(b)
		return err
	}
	for _, size := range sizes {
		if size == CheckMark {
			if len(b) == 0 {
				break
			}
			continue
		}
		var err error
		switch room := size - len(b); {
		case room < 0: // the record is all data
			_, err = s.conn.Write(b[:size])
			b = b[size:]
		case len(b) > 0: // the data ends here; fill the record with a cmdWaste frame if it fits
			if room >= HeaderSize {
				rec := getBuf(size)
				copy(rec, b)
				PutFrameHeader(rec[len(b):], CmdWaste, 0, room-HeaderSize)
				clear(rec[len(b)+HeaderSize:])
				_, err = s.conn.Write(rec)
				putBuf(rec)
			} else {
				_, err = s.conn.Write(b)
			}
			b = nil
		default: // pure padding: one cmdWaste frame, header included in the size
			n := max(size, HeaderSize)
			rec := getBuf(n)
			PutFrameHeader(rec, CmdWaste, 0, n-HeaderSize)
			clear(rec[HeaderSize:])
			_, err = s.conn.Write(rec)
			putBuf(rec)
		}
		if err != nil {
			return err
		}
	}
	if len(b) > 0 {
		_, err := s.conn.Write(b)
		return err
	}
	return nil
}

// acquireWrite takes the session's write slot. Only a wait (the slot is busy) sets up what
// may end it: the deadline's channel, a timer.
func (s *session) acquireWrite(dl *deadline, timeout time.Duration) error {
	select {
	case s.wsem <- struct{}{}:
		return nil
	default:
	}
	var cancel <-chan struct{}
	if dl != nil {
		cancel = dl.wait()
	}
	var expired <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		expired = t.C
	}
	select {
	case s.wsem <- struct{}{}:
		return nil
	case <-s.die:
		return s.closeErr()
	case <-cancel:
		return errDeadline
	case <-expired:
		return errDeadline
	}
}

// writeControl writes one control frame and waits for it, bounded by DefaultWriteTimeout.
func (s *session) writeControl(cmd Command, sid uint32, data []byte) {
	frame := AppendFrame(getBuf(HeaderSize + len(data))[:0], cmd, sid, data)
	_ = s.writePacketOpt(frame, nil, DefaultWriteTimeout, true)
	putBuf(frame)
}

// finAbort is the data of a cmdFIN that resets a stream. Only where half-close was negotiated
// (both ends ours; deployed peers never see it): there an empty cmdFIN means "no more data from
// me", and a cmdFIN with data means "stream gone, stop sending" (read and write fail).
var finAbort = []byte("reset")

// maxControlQueue bounds the control frames waiting for the connection. A peer that sends
// requests (heartbeats, data for closed streams) but never reads the answers would otherwise make
// the queue grow without end; past the bound the session is closed.
const maxControlQueue = 256 << 10

// queueControl sends a control frame without blocking the caller (the session reader must
// never block on a write: two peers blocked writing to each other would deadlock).
func (s *session) queueControl(cmd Command, sid uint32, data []byte) {
	s.ctrlMu.Lock()
	if len(s.ctrlBuf) > maxControlQueue {
		s.ctrlMu.Unlock()
		go s.close(fmt.Errorf("%w: peer does not read (over %d bytes of control frames queued)", ErrProtocol, maxControlQueue))
		return
	}
	s.ctrlBuf = AppendFrame(s.ctrlBuf, cmd, sid, data)
	s.ctrlQueued.Store(true)
	start := !s.ctrlRunning
	s.ctrlRunning = true
	s.ctrlMu.Unlock()
	if start {
		go s.flushControl()
	}
}

// ctrlCoalesceDelay bounds how long a frame queued by queueControlSoon waits for a packet to
// ride in.
const ctrlCoalesceDelay = 5 * time.Millisecond

// queueControlSoon queues a control frame that the next packet of the session carries (the
// server's settings answer, with the first stream's SYNACK and data: one write and one wake-up
// less per session at each end), or that goes alone after ctrlCoalesceDelay. The caller never
// blocks.
func (s *session) queueControlSoon(cmd Command, sid uint32, data []byte) {
	s.ctrlMu.Lock()
	defer s.ctrlMu.Unlock()
	s.ctrlBuf = AppendFrame(s.ctrlBuf, cmd, sid, data)
	s.ctrlQueued.Store(true)
	if !s.ctrlRunning && s.ctrlTimer == nil {
		s.ctrlTimer = time.AfterFunc(ctrlCoalesceDelay, s.flushControlLater)
	}
}

// flushControlLater writes what queueControlSoon queued and no packet carried (timer goroutine).
func (s *session) flushControlLater() {
	s.ctrlMu.Lock()
	s.ctrlTimer = nil
	start := !s.ctrlRunning && len(s.ctrlBuf) > 0
	if start {
		s.ctrlRunning = true
	}
	s.ctrlMu.Unlock()
	if start {
		s.flushControl()
	}
}

// takeQueuedControl returns the queued control frames for the caller to write, or nil.
func (s *session) takeQueuedControl() []byte {
	if !s.ctrlQueued.Load() {
		return nil
	}
	s.ctrlMu.Lock()
	defer s.ctrlMu.Unlock()
	q := s.ctrlBuf
	s.ctrlBuf = nil
	s.ctrlQueued.Store(false)
	if s.ctrlTimer != nil {
		s.ctrlTimer.Stop()
		s.ctrlTimer = nil
	}
	if len(q) == 0 {
		return nil
	}
	return q
}

func (s *session) flushControl() {
	for {
		s.ctrlMu.Lock()
		b := s.ctrlBuf
		s.ctrlBuf = nil
		s.ctrlQueued.Store(false)
		if len(b) == 0 || s.isClosed() {
			s.ctrlRunning = false
			s.ctrlMu.Unlock()
			return
		}
		s.ctrlMu.Unlock()
		if err := s.writePacketOpt(b, nil, DefaultWriteTimeout, true); errors.Is(err, ErrDeadlineExceeded) {
			s.close(fmt.Errorf("anytls: control write timed out: %w", err))
		}
	}
}

// readLoop reads frames until the connection fails or the session closes.
func (s *session) readLoop() {
	err := s.readFrames()
	if s.isClient && errors.Is(err, io.EOF) {
		err = fmt.Errorf("%w: server closed the connection", ErrSessionClosed)
	}
	s.close(err)
}

func (s *session) readFrames() (err error) {
	defer func() {
		if r := recover(); r != nil { // peer input must never take the process down
			err = fmt.Errorf("%w: internal error on peer input: %v", ErrProtocol, r)
			s.cfg.logger.Error("anytls: recovered from panic in session reader", "panic", r)
		}
	}()
	var hdr [HeaderSize]byte
	for {
		if _, err := io.ReadFull(s.reader, hdr[:]); err != nil {
			if s.isClosed() {
				return s.closeErr()
			}
			return fmt.Errorf("anytls: read frame header: %w", err)
		}
		h := ParseFrameHeader(hdr[:])
		s.recvClock.Add(1)
		s.lastRecv.Store(time.Now().UnixNano())
		if err := s.handleFrame(h); err != nil {
			return err
		}
	}
}

// readData reads a frame's data into a pooled buffer.
func (s *session) readData(n uint16) ([]byte, error) {
	b := getBuf(int(n))
	if _, err := io.ReadFull(s.reader, b); err != nil {
		putBuf(b)
		return nil, fmt.Errorf("anytls: read frame data: %w", err)
	}
	return b, nil
}

func (s *session) discard(n uint16) error {
	if n == 0 {
		return nil
	}
	b, err := s.readData(n)
	putBuf(b)
	return err
}

func (s *session) stream(id uint32) *Stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams[id]
}

func (s *session) handleFrame(h FrameHeader) error {
	switch h.Cmd {
	case CmdPSH:
		if h.Length == 0 {
			return nil
		}
		data, err := s.readData(h.Length)
		if err != nil {
			return err
		}
		if !s.isClient {
			s.lastActivity.Store(time.Now().UnixNano())
		}
		if st := s.stream(h.StreamID); st != nil {
			limit := s.cfg.bufferSize
			if s.flowControl.Load() {
				limit += MaxFrameData // a sender may overshoot its credit by one frame
			}
			st.push(s, data, limit, s.cfg.stallTimeout)
		} else {
			putBuf(data)
			if s.halfClose.Load() && h.StreamID != s.lastAborted {
				// Half-close: the peer read our cmdFIN as "no more data" and keeps sending to a
				// stream we closed or reset. Tell it to stop, as TCP answers with an RST.
				s.lastAborted = h.StreamID
				s.queueControl(CmdFIN, h.StreamID, finAbort)
			}
		}
		return nil
	case CmdFIN:
		if err := s.discard(h.Length); err != nil {
			return err
		}
		if !s.isClient {
			s.lastActivity.Store(time.Now().UnixNano())
		}
		if st := s.stream(h.StreamID); st != nil {
			if h.Length > 0 && s.halfClose.Load() {
				st.reset(fmt.Errorf("anytls: peer reset the stream: %w", ErrStreamReset), false)
			} else {
				st.remoteFin(s)
			}
		}
		return nil
	case CmdWaste:
		return s.discard(h.Length)
	case CmdHeartRequest:
		if err := s.discard(h.Length); err != nil {
			return err
		}
		s.queueControl(CmdHeartResponse, h.StreamID, nil)
		return nil
	case CmdHeartResponse:
		return s.discard(h.Length)
	case cmdWindowUpdate:
		if s.flowControl.Load() {
			return s.windowUpdate(h)
		}
		// not negotiated: an unknown command, skipped below
	}
	if s.isClient {
		return s.handleClientFrame(h)
	}
	return s.handleServerFrame(h)
}

func (s *session) handleClientFrame(h FrameHeader) error {
	switch h.Cmd {
	case CmdSYNACK:
		var text []byte
		if h.Length > 0 {
			b, err := s.readData(h.Length)
			if err != nil {
				return err
			}
			text = bytes.Clone(b)
			putBuf(b)
		}
		if st := s.stream(h.StreamID); st != nil {
			st.synAck(s, text)
		}
		return nil
	case CmdServerSettings:
		b, err := s.readData(h.Length)
		if err != nil {
			return err
		}
		settings := ParseSettings(b)
		putBuf(b)
		s.serverSettings(settings)
		return nil
	case CmdUpdatePaddingScheme:
		b, err := s.readData(h.Length)
		if err != nil {
			return err
		}
		scheme, perr := parsePushedScheme(b)
		putBuf(b)
		if perr != nil {
			s.cfg.logger.Warn("anytls: server pushed a padding scheme we cannot use; keeping ours", "error", perr)
			return nil
		}
		if s.client != nil {
			s.client.setPaddingScheme(scheme)
		}
		return nil
	case CmdAlert:
		b, err := s.readData(h.Length)
		if err != nil {
			return err
		}
		text := string(b)
		putBuf(b)
		s.cfg.logger.Error("anytls: alert from server", "text", text)
		return &AlertError{Text: text}
	}
	// Unknown commands, and commands a server never sends: skip the frame with its data.
	s.cfg.logger.Debug("anytls: ignoring frame", "cmd", h.Cmd, "length", h.Length)
	return s.discard(h.Length)
}

// windowUpdate handles cmdWindowUpdate: the peer's reader consumed data, we may send more.
func (s *session) windowUpdate(h FrameHeader) error {
	if h.Length != 4 {
		return s.discard(h.Length) // malformed: skipped
	}
	b, err := s.readData(h.Length)
	if err != nil {
		return err
	}
	n := int64(binary.BigEndian.Uint32(b))
	putBuf(b)
	if st := s.stream(h.StreamID); st != nil {
		st.mu.Lock()
		st.granted += n
		notify(st.credit)
		st.mu.Unlock()
	}
	return nil
}

// sendWindowUpdate grants the peer n more bytes on stream id.
func (s *session) sendWindowUpdate(id uint32, n int64) {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(min(n, 1<<32-1)))
	s.queueControl(cmdWindowUpdate, id, b[:])
}

// serverSettings handles cmdServerSettings: the session becomes v2.
func (s *session) serverSettings(settings Settings) {
	v := min(settings.Version(), s.cfg.maxVersion)
	if v < 2 {
		return
	}
	s.peerVersion.Store(int32(v))
	if s.cfg.halfClose && settings[settingHalfClose] == "1" {
		s.halfClose.Store(true)
	}
	if w := settings.window(); w > 0 {
		s.peerWindow.Store(w)
		s.flowControl.Store(true)
	}
	fc := s.flowControl.Load()
	s.mu.Lock()
	streams := make([]*Stream, 0, len(s.streams))
	for _, st := range s.streams {
		streams = append(streams, st)
	}
	s.mu.Unlock()
	half := s.halfClose.Load()
	for _, st := range streams {
		st.mu.Lock()
		if st.sess == s {
			st.armSynAckLocked()
			if fc && st.unacked > 0 { // consumed before flow control was known to be on
				s.sendWindowUpdate(st.id, st.unacked)
				st.unacked = 0
			}
		}
		// A CloseWrite made before this answer could not know that half-close would be on and
		// sent nothing: send its cmdFIN now, or the server never sees the end of the stream.
		sendFin := half && st.sess == s && st.wclosed && !st.closed && !st.finSent &&
			st.werr == nil && st.pending == nil
		if sendFin {
			st.finSent = true
		}
		id := st.id
		st.mu.Unlock()
		if sendFin {
			s.queueControl(CmdFIN, id, nil)
		}
	}
	s.startHeartbeat()
}

// startHeartbeat arms the liveness check of a v2 client session.
func (s *session) startHeartbeat() {
	if s.cfg.heartbeatInterval <= 0 {
		return
	}
	s.hbMu.Lock()
	defer s.hbMu.Unlock()
	if s.hbTimer == nil && !s.isClosed() {
		s.hbTimer = time.AfterFunc(s.cfg.heartbeatInterval, s.heartbeat)
	}
}

// heartbeat runs on the heartbeat timer: probe a quiet session, judge an outstanding probe.
func (s *session) heartbeat() {
	s.hbMu.Lock()
	defer s.hbMu.Unlock()
	if s.isClosed() {
		return
	}
	if s.probeClock >= 0 {
		// A write that was stuck on the connection when the probe went out and has finished
		// since is proof of life too: the peer's TCP acknowledges our data, it only has a long
		// queue to work through before it reaches the probe (a slow upload without flow control).
		writeMoved := s.probeWrite > 0 && s.writesDone.Load() >= s.probeWrite
		if s.recvClock.Load() > s.probeClock || s.readerBlocked.Load() > 0 || writeMoved {
			s.probeClock = -1 // answered (anything received counts), or we are the slow side
		} else {
			go s.close(fmt.Errorf("%w: nothing received for %v after a heartbeat request", ErrHeartbeatTimeout, s.cfg.heartbeatTimeout))
			return
		}
	}
	quiet := time.Duration(time.Now().UnixNano() - s.lastRecv.Load())
	if quiet < s.cfg.heartbeatInterval || s.readerBlocked.Load() > 0 {
		s.hbTimer.Reset(max(s.cfg.heartbeatInterval-quiet, time.Millisecond))
		return
	}
	s.sendProbeLocked()
}

// probe sends a heartbeat request now unless one is outstanding (v2 sessions only).
func (s *session) probe() {
	if s.peerVersion.Load() < 2 || s.cfg.heartbeatInterval <= 0 {
		return
	}
	s.hbMu.Lock()
	defer s.hbMu.Unlock()
	if s.probeClock < 0 && !s.isClosed() && s.hbTimer != nil {
		s.hbTimer.Stop()
		s.sendProbeLocked()
	}
}

// probeIfQuiet probes the session if it received nothing for at least quiet.
func (s *session) probeIfQuiet(quiet time.Duration) {
	if time.Duration(time.Now().UnixNano()-s.lastRecv.Load()) >= quiet {
		s.probe()
	}
}

func (s *session) sendProbeLocked() {
	s.probeClock = s.recvClock.Load()
	s.probeWrite = 0
	if started := s.writesStarted.Load(); started > s.writesDone.Load() {
		s.probeWrite = started
	}
	s.queueControl(CmdHeartRequest, 0, nil)
	s.hbTimer.Reset(s.cfg.heartbeatTimeout)
}

// removeStream drops a finished stream from the session.
func (s *session) removeStream(st *Stream) {
	st.mu.Lock()
	if st.removed || st.sess != s {
		st.mu.Unlock()
		return
	}
	st.removed = true
	id := st.id
	st.mu.Unlock()
	s.mu.Lock()
	if s.streams[id] == st {
		delete(s.streams, id)
	}
	s.mu.Unlock()
	if s.client != nil {
		s.client.streamDone(s)
	}
}

// close ends the session and every stream in it (idempotent).
func (s *session) close(err error) {
	if err == nil {
		err = ErrSessionClosed
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	if !errors.Is(err, ErrSessionClosed) {
		err = fmt.Errorf("%w: %w", ErrSessionClosed, err)
	}
	s.err = err
	streams := s.streams
	s.streams = map[uint32]*Stream{}
	s.mu.Unlock()
	close(s.die)
	s.hbMu.Lock()
	if s.hbTimer != nil {
		s.hbTimer.Stop()
	}
	if s.idleTimer != nil {
		s.idleTimer.Stop()
	}
	s.hbMu.Unlock()
	s.ctrlMu.Lock()
	if s.ctrlTimer != nil {
		s.ctrlTimer.Stop()
		s.ctrlTimer = nil
	}
	s.ctrlMu.Unlock()
	if s.cancel != nil {
		s.cancel()
	}
	s.conn.Close()
	for _, st := range streams {
		if s.client != nil && s.client.retryStream(s, st) {
			continue
		}
		st.sessionDone(err)
	}
	if s.client != nil {
		s.client.sessionClosed(s)
	}
	if s.server != nil {
		s.server.sessionClosed(s)
	}
	close(s.closeDone)
}
