package protocol

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// synCoalesceDelay: on a reused session a new stream's SYN waits this long for the caller's
// first data, so that both go out in one packet.
const synCoalesceDelay = 5 * time.Millisecond

// Client opens proxied streams over pooled sessions to one server.
type Client struct {
	cfg    ClientConfig
	scfg   sessionConfig
	hash   [32]byte
	scheme atomic.Pointer[PaddingScheme]

	mu       sync.Mutex
	sessions map[*session]struct{}
	dialing  []*pendingDial
	seq      uint64
	closed   bool
	done     chan struct{}
	wg       sync.WaitGroup
}

// NewClient validates cfg and returns a client. Close it to release its sessions.
func NewClient(cfg ClientConfig) (*Client, error) {
	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	c := &Client{
		cfg:      cfg,
		hash:     sha256.Sum256([]byte(cfg.Password)),
		sessions: map[*session]struct{}{},
		done:     make(chan struct{}),
	}
	c.scfg = sessionConfig{
		logger:            cfg.Logger,
		bufferSize:        cfg.StreamBufferSize,
		stallTimeout:      cfg.StreamStallTimeout,
		synAckTimeout:     cfg.SynAckTimeout,
		heartbeatInterval: cfg.HeartbeatInterval,
		heartbeatTimeout:  cfg.HeartbeatTimeout,
		halfClose:         !cfg.DisableHalfClose,
		maxVersion:        cfg.MaxVersion,
	}
	c.scheme.Store(cfg.PaddingScheme)
	c.wg.Add(1)
	go c.cleanupLoop()
	return c, nil
}

// PaddingScheme returns the scheme new sessions use (the server may have pushed one).
func (c *Client) PaddingScheme() *PaddingScheme { return c.scheme.Load() }

func (c *Client) setPaddingScheme(p *PaddingScheme) {
	if old := c.scheme.Swap(p); old == nil || old.md5 != p.md5 {
		c.cfg.Logger.Debug("anytls: padding scheme updated by server", "md5", p.md5)
	}
}

// OpenStream opens a stream to dest and returns at once: the SYN and address go out with the
// stream's first data (on a fresh session, in the packet after the authentication).
func (c *Client) OpenStream(ctx context.Context, dest Addr) (*Stream, error) {
	if !dest.IsValid() {
		return nil, fmt.Errorf("%w: empty destination", ErrBadAddress)
	}
	var enc [1 + 1 + 255 + 2]byte
	if _, err := dest.AppendTo(enc[:0]); err != nil {
		return nil, err
	}
	st := newStream(nil, 0, dest)
	st.isClient = true
	if err := c.attach(ctx, st, false); err != nil {
		return nil, err
	}
	return st, nil
}

// Close closes every session; open streams fail.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.done)
	sessions := make([]*session, 0, len(c.sessions))
	for s := range c.sessions {
		sessions = append(sessions, s)
	}
	c.mu.Unlock()
	for _, s := range sessions {
		s.close(ErrClientClosed)
	}
	c.wg.Wait()
	return nil
}

// SessionCount returns the number of open sessions and how many are idle.
func (c *Client) SessionCount() (open, idle int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for s := range c.sessions {
		open++
		if s.active == 0 {
			idle++
		}
	}
	return
}

func (c *Client) attach(ctx context.Context, st *Stream, fresh bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var mine *pendingDial
	for !fresh {
		if s := c.take(); s != nil {
			if err := s.attachStream(st, false); err == nil {
				return nil
			}
		}
		d, dialer := c.joinDial()
		if d == nil || dialer {
			mine = d
			break
		}
		select {
		case <-d.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if s := c.takeFrom(d); s != nil {
			if err := s.attachStream(st, false); err == nil {
				return nil
			}
		}
		if d.s == nil {
			break // that dial failed: make one of our own
		}
		// others filled that session first: look again, join or make the next dial
	}
	s, err := c.dialSession(ctx, mine)
	if err != nil {
		return err
	}
	return s.attachStream(st, true)
}

// pendingDial is a session being dialled. With MaxStreamsPerSession > 1, streams opened
// meanwhile wait for it instead of each dialling a session of its own (a burst of a thousand
// streams at start-up dialled a thousand sessions).
type pendingDial struct {
	done    chan struct{}
	waiters int
	s       *session // the session it produced (set when done)
}

// takeFrom reserves a slot on the session d produced, or on the newest session with room.
func (c *Client) takeFrom(d *pendingDial) *session {
	c.mu.Lock()
	s := d.s
	if s != nil && s.ready && s.active < c.cfg.MaxStreamsPerSession && !s.isClosed() {
		s.active++
		c.mu.Unlock()
		return s
	}
	c.mu.Unlock()
	return c.take()
}

// endDial wakes the streams waiting for d. Caller holds c.mu.
func (c *Client) endDial(d *pendingDial) {
	c.dialing = slices.DeleteFunc(c.dialing, func(x *pendingDial) bool { return x == d })
	close(d.done)
}

// sessionReady marks a new session's packet 1 (settings first) as written: only now may other
// streams join it, or their SYN could overtake the settings (the server must refuse a session
// whose first frame is a SYN).
func (c *Client) sessionReady(s *session) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s.ready = true
	if s.dial != nil {
		s.dial.s = s
		c.endDial(s.dial)
		s.dial = nil
	}
}

// joinDial returns a dial in progress with room for one more stream to wait for, or registers
// a new one that the caller must make (dialer true). Nil when sessions carry one stream.
func (c *Client) joinDial() (d *pendingDial, dialer bool) {
	if c.cfg.MaxStreamsPerSession <= 1 || c.cfg.DisableSessionReuse {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, d := range c.dialing {
		if d.waiters < c.cfg.MaxStreamsPerSession-1 {
			d.waiters++
			return d, false
		}
	}
	d = &pendingDial{done: make(chan struct{})}
	c.dialing = append(c.dialing, d)
	return d, true
}

// take reserves the newest session with room for a stream, or returns nil.
func (c *Client) take() *session {
	if c.cfg.DisableSessionReuse {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var best *session
	for s := range c.sessions {
		if s.ready && s.active < c.cfg.MaxStreamsPerSession && !s.isClosed() && (best == nil || s.seq > best.seq) {
			best = s
		}
	}
	if best != nil {
		best.active++
	}
	return best
}

// dialSession connects, authenticates and starts a new session with one stream reserved. d, if
// not nil, is the pending dial registered for it: its waiters wake when the session is ready.
func (c *Client) dialSession(ctx context.Context, d *pendingDial) (*session, error) {
	defer func() { // failed: wake the waiters (on success sessionReady does)
		if d != nil {
			c.mu.Lock()
			c.endDial(d)
			c.mu.Unlock()
		}
	}()
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return nil, ErrClientClosed
	}
	dctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	conn, err := c.cfg.Dial(dctx)
	if err != nil {
		return nil, fmt.Errorf("anytls: dial server: %w", err)
	}
	scheme := c.scheme.Load()
	pad := scheme.AuthPadding()
	auth := make([]byte, 32+2+pad)
	copy(auth, c.hash[:])
	binary.BigEndian.PutUint16(auth[32:], uint16(pad))
	if dl, ok := dctx.Deadline(); ok {
		conn.SetWriteDeadline(dl)
	}
	if _, err := conn.Write(auth); err != nil {
		conn.Close()
		return nil, fmt.Errorf("anytls: send authentication: %w", err)
	}
	conn.SetWriteDeadline(time.Time{})

	s := newSession(conn, true, &c.scfg, scheme, true)
	s.client = c
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		conn.Close()
		return nil, ErrClientClosed
	}
	c.seq++
	s.seq = c.seq
	s.active = 1
	s.dial, d = d, nil
	c.sessions[s] = struct{}{}
	c.wg.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.wg.Done()
		s.readLoop()
	}()
	return s, nil
}

func (c *Client) settingsFrame(dst []byte, scheme *PaddingScheme) []byte {
	settings := Settings{
		settingVersion:    fmt.Sprint(c.cfg.MaxVersion),
		settingClient:     c.cfg.ClientName,
		settingPaddingMD5: scheme.md5,
	}
	if !c.cfg.DisableHalfClose {
		settings[settingHalfClose] = "1"
	}
	if c.cfg.MaxStreamsPerSession > 1 {
		// Flow control matters only where streams share a session: a stream alone on its
		// session is back-pressured by TCP itself, and its settings stay as deployed clients'.
		settings[settingWindow] = strconv.Itoa(c.cfg.StreamBufferSize)
	}
	return AppendFrame(dst, CmdSettings, 0, settings.Encode())
}

// attachStream puts st on the session (a slot was reserved by take or dialSession). On a fresh
// session it writes packet 1: settings, SYN and the address.
func (s *session) attachStream(st *Stream, fresh bool) error {
	c := s.client
	if fresh {
		defer c.sessionReady(s)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.streamDone(s)
		return s.closeErr()
	}
	s.nextID++
	id := s.nextID
	s.streams[id] = st
	s.mu.Unlock()

	var addr [1 + 1 + 255 + 2]byte
	a, _ := st.dest.AppendTo(addr[:0])
	prefix := AppendFrame(make([]byte, 0, 2*HeaderSize+len(a)), CmdSYN, id, nil)
	prefix = AppendFrame(prefix, CmdPSH, id, a)

	st.mu.Lock()
	st.sess, st.id = s, id
	st.reused = !fresh
	st.attachedAt = s.recvClock.Load()
	st.removed, st.acked, st.migrating = false, false, false
	st.synSentAt = time.Time{}
	st.sent, st.granted, st.unacked = int64(len(a)), 0, 0 // flow control counts per session
	if fresh {
		st.markSynSentLocked()
		st.mu.Unlock()
		pkt := c.settingsFrame(nil, s.padding)
		pkt = append(pkt, prefix...)
		return s.writePacket(pkt, nil)
	}
	if st.closed {
		st.mu.Unlock()
		s.removeStream(st)
		return nil
	}
	st.pending = prefix
	st.flushTimer = time.AfterFunc(synCoalesceDelay, st.flushPending)
	st.mu.Unlock()
	return nil
}

// streamDone releases a stream's slot; an unused session becomes idle.
func (c *Client) streamDone(s *session) {
	c.mu.Lock()
	if s.active > 0 {
		s.active--
	}
	closeIt := false
	if s.active == 0 {
		s.idleSince = time.Now()
		closeIt = c.cfg.DisableSessionReuse || c.closed
	}
	c.mu.Unlock()
	if closeIt {
		go s.close(nil)
	}
}

func (c *Client) sessionClosed(s *session) {
	c.mu.Lock()
	delete(c.sessions, s)
	c.mu.Unlock()
}

// retryStream decides, while s closes, whether st goes to a fresh session: only a stream on a
// reused session that has received no data, whose written data still fits the replay buffer,
// and which the server never answered: either the session heard nothing at all since the stream
// was attached (it was dead when picked), or, on a v2 session, no cmdSYNACK came for the stream
// (the server had not finished with its SYN; other streams of the session may have been served).
func (c *Client) retryStream(s *session, st *Stream) bool {
	st.mu.Lock()
	unanswered := s.recvClock.Load() == st.attachedAt || (s.peerVersion.Load() >= 2 && !st.acked)
	ok := st.sess == s && st.reused && !st.retried && !st.gotData && !st.replayOff &&
		!st.closed && st.werr == nil && st.rerr == nil && unanswered
	if ok {
		c.mu.Lock()
		ok = !c.closed
		c.mu.Unlock()
	}
	if !ok {
		st.mu.Unlock()
		return false
	}
	st.retried = true
	st.migrating = true
	st.removed = true
	st.pending = nil
	st.stopTimersLocked()
	st.mu.Unlock()
	c.streamDone(s)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.migrate(st)
	}()
	return true
}

// migrate moves st to a fresh session and replays what the caller had written.
func (c *Client) migrate(st *Stream) {
	st.wmu.Lock()
	defer st.wmu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.DialTimeout)
	defer cancel()
	c.cfg.Logger.Debug("anytls: pooled session was dead, retrying stream on a fresh session", "dest", st.dest.String())
	s, err := c.dialSession(ctx, nil)
	if err == nil {
		err = s.attachStream(st, true)
	}
	if err != nil {
		st.sessionDone(fmt.Errorf("anytls: retry on a fresh session: %w", err))
		return
	}
	st.mu.Lock()
	st.migrating = false
	replay := st.replay
	st.sent += int64(len(replay))
	id := st.id
	st.mu.Unlock()
	if len(replay) > 0 {
		var pkt []byte
		for len(replay) > 0 {
			n := min(len(replay), MaxFrameData)
			pkt = AppendFrame(pkt, CmdPSH, id, replay[:n])
			replay = replay[n:]
		}
		_ = s.writePacket(pkt, nil)
	}
	// A CloseWrite made on the dead session sent its cmdFIN there: send it again here, after
	// the data. If this session has not agreed half-close yet, serverSettings sends it.
	st.mu.Lock()
	refin := st.wclosed && st.finSent && !st.closed && st.werr == nil
	if refin {
		st.finSent = s.halfClose.Load()
		refin = st.finSent
	}
	st.mu.Unlock()
	if refin {
		_ = s.writePacketOpt(AppendFrame(nil, CmdFIN, id, nil), nil, 0, true)
	}
}

func (c *Client) cleanupLoop() {
	defer c.wg.Done()
	t := time.NewTicker(c.cfg.IdleSessionCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
			c.cleanup()
		}
	}
}

// cleanup closes sessions idle longer than the timeout, keeping the newest MinIdleSession.
func (c *Client) cleanup() {
	c.mu.Lock()
	var idle []*session
	for s := range c.sessions {
		if s.active == 0 {
			idle = append(idle, s)
		}
	}
	slices.SortFunc(idle, func(a, b *session) int { return cmp.Compare(b.seq, a.seq) })
	now := time.Now()
	var victims []*session
	for i, s := range idle {
		if i < c.cfg.MinIdleSession {
			continue
		}
		if now.Sub(s.idleSince) >= c.cfg.IdleSessionTimeout {
			victims = append(victims, s)
		}
	}
	c.mu.Unlock()
	for _, s := range victims {
		s.close(fmt.Errorf("%w: idle", ErrSessionClosed))
	}
}

var _ net.Conn = (*Stream)(nil)
