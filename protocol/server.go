package protocol

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// authMinSize is the size of an authentication request without padding.
const authMinSize = 32 + 2

// firstReadSize holds any single TLS record's plaintext.
const firstReadSize = 16 << 10

// Server authenticates connections and serves their sessions.
type Server struct {
	cfg   ServerConfig
	scfg  sessionConfig
	users atomic.Pointer[[]userEntry]

	mu       sync.Mutex
	sessions map[*session]struct{}
	authing  map[net.Conn]struct{} // connections not yet authenticated, or being turned away
	closed   bool
}

type userEntry struct {
	name string
	hash [32]byte
}

// NewServer validates cfg and returns a server.
func NewServer(cfg ServerConfig) (*Server, error) {
	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, sessions: map[*session]struct{}{}, authing: map[net.Conn]struct{}{}}
	s.scfg = sessionConfig{
		logger:       cfg.Logger,
		metrics:      cfg.Metrics,
		bufferSize:   cfg.StreamBufferSize,
		stallTimeout: cfg.StreamStallTimeout,
		halfClose:    !cfg.DisableHalfClose,
		maxVersion:   cfg.MaxVersion,
	}
	s.setUsers(cfg.Users)
	return s, nil
}

func (srv *Server) setUsers(users []User) {
	table := make([]userEntry, len(users))
	for i, u := range users {
		table[i] = userEntry{name: u.Name, hash: sha256.Sum256([]byte(u.Password))}
	}
	srv.users.Store(&table)
}

// UpdateUsers replaces the users. Sessions of users no longer present (same name and
// password) are closed; the others keep running.
func (srv *Server) UpdateUsers(users []User) error {
	if err := checkUsers(users); err != nil {
		return err
	}
	srv.setUsers(users)
	table := *srv.users.Load()
	srv.mu.Lock()
	var gone []*session
	for s := range srv.sessions {
		keep := false
		for _, u := range table {
			if u.name == s.user && u.hash == s.userHash {
				keep = true
			}
		}
		if !keep {
			gone = append(gone, s)
		}
	}
	srv.mu.Unlock()
	for _, s := range gone {
		s.close(fmt.Errorf("%w: user %q removed", ErrSessionClosed, s.user))
	}
	return nil
}

// matchUser compares hash with every user's hash in constant time and returns the index of
// the match or -1. The time taken does not depend on where or whether it matched.
func matchUser(table []userEntry, hash []byte) int {
	found := -1
	for i := range table {
		eq := subtle.ConstantTimeCompare(table[i].hash[:], hash)
		found = subtle.ConstantTimeSelect(eq, i, found)
	}
	return found
}

// Serve accepts connections from ln until it fails, ctx is done or the server is closed (ln is
// closed then). A *tls.Conn is handshaken (bounded by AuthTimeout) before ServeConn.
func (srv *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		conn, err := ln.Accept()
		if err != nil {
			srv.mu.Lock()
			closed := srv.closed
			srv.mu.Unlock()
			if closed {
				return ErrSessionClosed
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return err
		}
		go func() {
			if err := srv.ServeConn(ctx, conn); err != nil {
				srv.cfg.Logger.Debug("anytls: connection ended", "remote", conn.RemoteAddr().String(), "error", err)
			}
		}()
	}
}

// ServeConn authenticates conn (normally a server-side TLS connection) and serves its session
// until it ends. It owns conn.
func (srv *Server) ServeConn(ctx context.Context, conn net.Conn) error {
	srv.mu.Lock()
	if srv.closed {
		srv.mu.Unlock()
		conn.Close()
		return ErrSessionClosed
	}
	srv.authing[conn] = struct{}{}
	srv.mu.Unlock()
	authDone := sync.OnceFunc(func() {
		srv.mu.Lock()
		delete(srv.authing, conn)
		srv.mu.Unlock()
	})
	defer authDone()
	deadline := time.Now().Add(srv.cfg.AuthTimeout)
	conn.SetDeadline(deadline)
	if tc, ok := conn.(*tls.Conn); ok {
		hctx, cancel := context.WithDeadline(ctx, deadline)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			conn.Close()
			return fmt.Errorf("anytls: tls handshake: %w", err)
		}
	}
	buf := getBuf(firstReadSize)
	n, err := conn.Read(buf)
	if err != nil && n == 0 {
		putBuf(buf)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return srv.reject(ctx, conn, nil, fmt.Errorf("%w: nothing received within %v", ErrAuthFailed, srv.cfg.AuthTimeout))
		}
		conn.Close()
		return fmt.Errorf("anytls: read authentication: %w", err)
	}
	first := bytes.Clone(buf[:n])
	putBuf(buf)
	if n < authMinSize {
		return srv.reject(ctx, conn, first, fmt.Errorf("%w: first record holds %d bytes", ErrNotAnyTLS, n))
	}
	table := *srv.users.Load()
	idx := matchUser(table, first[:32])
	if idx < 0 {
		return srv.reject(ctx, conn, first, fmt.Errorf("%w: unknown password", ErrAuthFailed))
	}
	padLen := int(binary.BigEndian.Uint16(first[32:34]))
	var extra []byte
	if have := n - authMinSize; have < padLen {
		if _, err := io.CopyN(io.Discard, conn, int64(padLen-have)); err != nil {
			conn.Close()
			return fmt.Errorf("anytls: read authentication padding: %w", err)
		}
	} else {
		extra = first[authMinSize+padLen:]
	}
	conn.SetDeadline(time.Time{})
	authDone()
	user := table[idx]
	return srv.serveSession(ctx, conn, user, extra)
}

// reject hands a connection that did not authenticate to the fallback, or holds it and closes
// it after a random delay so that a prober learns nothing from the timing.
func (srv *Server) reject(ctx context.Context, conn net.Conn, read []byte, reason error) error {
	if srv.cfg.Metrics != nil {
		srv.cfg.Metrics.AuthFailed()
	}
	if srv.cfg.Fallback != nil {
		if srv.cfg.Metrics != nil {
			srv.cfg.Metrics.Fallback()
		}
		conn.SetDeadline(time.Time{})
		srv.cfg.Fallback(ctx, &replayConn{Conn: conn, prefix: read})
		return reason
	}
	if read != nil {
		// Hold the connection, discarding input, and close it at a random moment within the
		// authentication timeout, so neither the answer nor its timing tells a prober anything.
		hold := srv.cfg.AuthTimeout/4 + time.Duration(rand.Int64N(int64(srv.cfg.AuthTimeout*3/4)))
		conn.SetDeadline(time.Now().Add(hold))
		io.Copy(io.Discard, conn)
	}
	conn.Close()
	return reason
}

func (srv *Server) serveSession(ctx context.Context, conn net.Conn, user userEntry, extra []byte) error {
	s := newSession(conn, false, &srv.scfg, srv.cfg.PaddingScheme, srv.cfg.PadDownstream)
	s.server = srv
	s.user = user.name
	s.userHash = user.hash
	if len(extra) > 0 {
		s.reader = io.MultiReader(bytes.NewReader(extra), conn)
	}
	s.ctx, s.cancel = context.WithCancel(ContextWithUser(ctx, user.name))
	srv.mu.Lock()
	if srv.closed {
		srv.mu.Unlock()
		conn.Close()
		return ErrSessionClosed
	}
	if srv.cfg.MaxSessions > 0 && len(srv.sessions) >= srv.cfg.MaxSessions {
		srv.mu.Unlock()
		srv.limit("sessions")
		s.writeControl(CmdAlert, 0, []byte("server busy"))
		conn.Close()
		return ErrTooManySessions
	}
	srv.sessions[s] = struct{}{}
	srv.mu.Unlock()
	if srv.cfg.Metrics != nil {
		srv.cfg.Metrics.SessionOpened(user.name)
	}
	if srv.cfg.IdleSessionTimeout > 0 {
		s.hbMu.Lock()
		s.idleTimer = time.AfterFunc(srv.cfg.IdleSessionTimeout, s.idleCheck)
		s.hbMu.Unlock()
	}
	s.readLoop()
	<-s.closeDone
	return s.closeErr()
}

func (srv *Server) limit(what string) {
	srv.cfg.Logger.Warn("anytls: limit reached", "limit", what)
	if srv.cfg.Metrics != nil {
		srv.cfg.Metrics.LimitReached(what)
	}
}

func (srv *Server) sessionClosed(s *session) {
	srv.mu.Lock()
	delete(srv.sessions, s)
	srv.mu.Unlock()
	if srv.cfg.Metrics != nil {
		srv.cfg.Metrics.SessionClosed(s.user)
	}
}

// SessionCount returns the number of open sessions.
func (srv *Server) SessionCount() int {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	return len(srv.sessions)
}

// ReportBytes passes the bytes every open stream carried since its last report to
// Metrics.BytesTransferred now. Streams otherwise report once, when they close, so a long download
// would show on a dashboard only at its end; a metrics exporter calls this before each scrape.
func (srv *Server) ReportBytes() {
	if srv.cfg.Metrics == nil {
		return
	}
	srv.mu.Lock()
	sessions := make([]*session, 0, len(srv.sessions))
	for s := range srv.sessions {
		sessions = append(sessions, s)
	}
	srv.mu.Unlock()
	var streams []*Stream
	for _, s := range sessions {
		s.mu.Lock()
		for _, st := range s.streams {
			streams = append(streams, st)
		}
		s.mu.Unlock()
	}
	for _, st := range streams {
		if st.upBytes.Load() != 0 || st.downBytes.Load() != 0 {
			st.reportBytes() // swaps the counters: a byte is reported once, here or at Close
		}
	}
}

// Close closes every session and makes ServeConn refuse new ones.
func (srv *Server) Close() error {
	srv.mu.Lock()
	srv.closed = true
	sessions := make([]*session, 0, len(srv.sessions))
	for s := range srv.sessions {
		sessions = append(sessions, s)
	}
	for c := range srv.authing {
		c.Close()
	}
	srv.mu.Unlock()
	for _, s := range sessions {
		s.close(ErrSessionClosed)
	}
	return nil
}

// idleCheck closes a server session that carried no stream activity for IdleSessionTimeout.
func (s *session) idleCheck() {
	timeout := s.server.cfg.IdleSessionTimeout
	s.mu.Lock()
	busy := len(s.streams) > 0
	s.mu.Unlock()
	quiet := time.Duration(time.Now().UnixNano() - s.lastActivity.Load())
	if !busy && quiet >= timeout {
		s.server.limit("idle_timeout")
		s.close(fmt.Errorf("%w after %v", ErrIdleTimeout, timeout))
		return
	}
	s.hbMu.Lock()
	defer s.hbMu.Unlock()
	if !s.isClosed() {
		s.idleTimer.Reset(max(timeout-quiet, time.Second))
	}
}

func (s *session) handleServerFrame(h FrameHeader) error {
	srv := s.server
	switch h.Cmd {
	case CmdSettings:
		b, err := s.readData(h.Length)
		if err != nil {
			return err
		}
		settings := ParseSettings(b)
		putBuf(b)
		if s.gotSettings {
			return nil
		}
		s.gotSettings = true
		// The answers ride with the session's next packet (normally the first stream's SYNACK
		// and data), unless the client asked for flow control: it may not rely on it before the
		// answer arrives, so that goes at once.
		queue := s.queueControlSoon
		if settings.window() > 0 {
			queue = s.queueControl
		}
		if settings[settingPaddingMD5] != srv.cfg.PaddingScheme.md5 {
			queue(CmdUpdatePaddingScheme, 0, srv.cfg.PaddingScheme.raw)
		}
		if v := min(settings.Version(), s.cfg.maxVersion); v >= 2 {
			s.peerVersion.Store(int32(v))
			reply := Settings{settingVersion: "2"}
			if s.cfg.halfClose && settings[settingHalfClose] == "1" {
				reply[settingHalfClose] = "1"
				s.halfClose.Store(true)
			}
			if w := settings.window(); w > 0 {
				reply[settingWindow] = strconv.Itoa(s.cfg.bufferSize)
				s.peerWindow.Store(w)
				s.flowControl.Store(true)
			}
			queue(CmdServerSettings, 0, reply.Encode())
		}
		return nil
	case CmdSYN:
		if err := s.discard(h.Length); err != nil {
			return err
		}
		if !s.gotSettings {
			s.writeControl(CmdAlert, 0, []byte("client did not send its settings"))
			return fmt.Errorf("%w: cmdSYN before cmdSettings", ErrProtocol)
		}
		s.lastActivity.Store(time.Now().UnixNano())
		s.mu.Lock()
		if _, live := s.streams[h.StreamID]; live || s.closed {
			s.mu.Unlock() // a SYN for a live stream id is ignored, as deployed servers do
			return nil
		}
		if len(s.streams) >= srv.cfg.MaxStreamsPerSession {
			s.mu.Unlock()
			srv.limit("streams_per_session")
			if s.peerVersion.Load() >= 2 {
				s.queueControl(CmdSYNACK, h.StreamID, []byte(ErrTooManyStreams.Error()))
			} else {
				s.queueControl(CmdFIN, h.StreamID, nil)
			}
			return nil
		}
		st := newStream(s, h.StreamID, Addr{})
		st.user = s.user
		s.streams[h.StreamID] = st
		s.mu.Unlock()
		if srv.cfg.Metrics != nil {
			srv.cfg.Metrics.StreamOpened(s.user)
		}
		go srv.serveStream(s, st)
		return nil
	}
	// Unknown commands, and commands only a server sends: skip the frame with its data.
	s.cfg.logger.Debug("anytls: ignoring frame", "cmd", h.Cmd, "length", h.Length)
	return s.discard(h.Length)
}

// serveStream reads the destination and hands the stream to the handler.
func (srv *Server) serveStream(s *session, st *Stream) {
	if srv.prepareStream(s, st) {
		srv.cfg.Handler(s.ctx, st)
	}
}

// prepareStream reads the stream's destination and arms the early SYNACK. Out of line, so that
// its frame is not on the stack under the handler: a handler's goroutine waits for most of its
// life, and the runtime shrinks a waiting goroutine's stack only while little of it is in use.
//
//go:noinline
func (srv *Server) prepareStream(s *session, st *Stream) bool {
	dest, ok := st.bufferedAddr()
	var err error
	if !ok { // not all there yet (or malformed: ReadAddr says how)
		st.SetReadDeadline(time.Now().Add(srv.cfg.AddressTimeout))
		dest, err = ReadAddr(st)
		st.SetReadDeadline(time.Time{})
	}
	if err != nil {
		srv.cfg.Logger.Debug("anytls: bad stream destination", "error", err)
		st.Report(err)
		st.Close()
		return false
	}
	st.dest = dest
	if s.peerVersion.Load() >= 2 {
		st.mu.Lock()
		if !st.reported && !st.closed {
			st.earlyTimer = time.AfterFunc(srv.cfg.EarlySynAckDelay, st.earlyAck)
		}
		st.mu.Unlock()
	}
	return true
}

// replayConn returns prefix before reading from Conn.
type replayConn struct {
	net.Conn
	prefix []byte
}

func (c *replayConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}
