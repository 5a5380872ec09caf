package protocol

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"
)

// Defaults. option/ maps host options onto these; zero values in the configs mean "default".
const (
	DefaultIdleSessionCheckInterval = 30 * time.Second
	DefaultIdleSessionTimeout       = 30 * time.Second
	DefaultHeartbeatInterval        = 10 * time.Second
	DefaultHeartbeatTimeout         = 5 * time.Second
	DefaultSynAckTimeout            = 10 * time.Second
	DefaultDialTimeout              = 10 * time.Second
	DefaultAuthTimeout              = 30 * time.Second
	DefaultServerIdleTimeout        = 5 * time.Minute
	DefaultEarlySynAckDelay         = 2 * time.Second
	DefaultStreamBufferSize         = 4 << 20
	DefaultStreamStallTimeout       = 30 * time.Second
	DefaultMaxStreamsPerSession     = 1024
	DefaultAddressTimeout           = 30 * time.Second
	DefaultWriteTimeout             = 30 * time.Second
)

// ClientConfig configures a Client. Zero values select the defaults above.
type ClientConfig struct {
	// Dial returns an established connection to the server, normally a completed TLS
	// connection. Required. It is called with a context bounded by DialTimeout.
	Dial func(ctx context.Context) (net.Conn, error)
	// Password is the user's password (required).
	Password string
	// PaddingScheme is the initial scheme; nil selects DefaultPaddingScheme. A scheme pushed by
	// the server replaces it for sessions created afterwards.
	PaddingScheme *PaddingScheme
	// IdleSessionCheckInterval is how often idle sessions are checked (default 30 s).
	IdleSessionCheckInterval time.Duration
	// IdleSessionTimeout closes sessions idle for longer than this at a check (default 30 s).
	IdleSessionTimeout time.Duration
	// MinIdleSession idle sessions (the newest) are kept open regardless of the timeout.
	MinIdleSession int
	// DisableSessionReuse gives every stream a session of its own, closed when the stream ends.
	DisableSessionReuse bool
	// MaxStreamsPerSession > 1 lets a session carry several streams at once. The default, 1,
	// reuses a session only when its stream has ended, as deployed clients do (traffic shape).
	MaxStreamsPerSession int
	// ClientName is sent as client= in the settings. Empty by default: deployed servers accept
	// an empty name, and a name identifies the implementation to anyone who reads it.
	ClientName string
	// HeartbeatInterval: a v2 session that received nothing for this long is probed with
	// cmdHeartRequest (default 10 s; negative disables heartbeats).
	HeartbeatInterval time.Duration
	// HeartbeatTimeout: a probed session that receives nothing for this long is dead (default 5 s).
	HeartbeatTimeout time.Duration
	// SynAckTimeout bounds the wait for cmdSYNACK on a v2 session; on expiry only that stream
	// fails (default 10 s; negative disables the wait).
	SynAckTimeout time.Duration
	// DialTimeout bounds Dial plus authentication (default 10 s).
	DialTimeout time.Duration
	// StreamBufferSize bounds the data buffered for one stream's reader (default 4 MiB).
	StreamBufferSize int
	// StreamStallTimeout resets a stream whose buffer stayed full for this long, so a stalled
	// reader cannot hold its session hostage (default 30 s).
	StreamStallTimeout time.Duration
	// DisableHalfClose stops announcing the half-close extension.
	DisableHalfClose bool
	// MaxVersion is the highest protocol version announced (default 2; 1 for a v1 client).
	MaxVersion int
	// Logger receives diagnostics; nil discards them.
	Logger *slog.Logger
}

// User is a server-side credential.
type User struct {
	Name     string
	Password string
}

// StreamHandler serves one proxied stream on the server. It owns s: it must Close it when done,
// and should call s.Report with the result of connecting to s.Destination() (it becomes
// cmdSYNACK). Streams to UoTMagicAddress carry UDP-over-TCP v2; hosts serve them.
type StreamHandler func(ctx context.Context, s *Stream)

// FallbackHandler receives a connection that did not authenticate, with every byte the server
// had read replayed first. It owns conn.
type FallbackHandler func(ctx context.Context, conn net.Conn)

// ServerConfig configures a Server. Zero values select the defaults above.
type ServerConfig struct {
	// Users that may authenticate (at least one).
	Users []User
	// PaddingScheme the server pushes to clients whose scheme differs; nil: default.
	PaddingScheme *PaddingScheme
	// Handler serves streams (required).
	Handler StreamHandler
	// Fallback, if set, receives connections that fail authentication. Without it they are held
	// open, their input discarded, and closed after a random delay.
	Fallback FallbackHandler
	// AuthTimeout bounds the wait for the authentication request (default 30 s).
	AuthTimeout time.Duration
	// IdleSessionTimeout closes sessions with no stream activity for this long (default 5 min;
	// negative disables).
	IdleSessionTimeout time.Duration
	// MaxSessions bounds concurrent sessions (0: unlimited).
	MaxSessions int
	// MaxStreamsPerSession bounds concurrent streams in one session (default 1024).
	MaxStreamsPerSession int
	// EarlySynAckDelay: when the handler has not reported a result by then, an empty cmdSYNACK is
	// sent (deployed clients kill a session that waits 3 s); a later failure closes the stream.
	EarlySynAckDelay time.Duration
	// AddressTimeout bounds the wait for a new stream's destination address (default 30 s).
	AddressTimeout time.Duration
	// StreamBufferSize and StreamStallTimeout as in ClientConfig.
	StreamBufferSize   int
	StreamStallTimeout time.Duration
	// PadDownstream pads the server's first packets of a session with its scheme (extension).
	PadDownstream bool
	// DisableHalfClose stops announcing the half-close extension.
	DisableHalfClose bool
	// MaxVersion is the highest version served (default 2; 1 behaves as a v1 server).
	MaxVersion int
	// Logger receives diagnostics; nil discards them.
	Logger *slog.Logger
	// Metrics receives counters; nil disables them.
	Metrics Metrics
}

// Metrics receives server-side events. Implementations must be safe for concurrent use.
type Metrics interface {
	SessionOpened(user string)
	SessionClosed(user string)
	StreamOpened(user string)
	BytesTransferred(user string, up, down int64)
	AuthFailed()
	Fallback()
	LimitReached(limit string)
}

var discardLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

func orDuration(v, def time.Duration) time.Duration {
	if v == 0 {
		return def
	}
	return v
}

func orInt(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

func (c *ClientConfig) normalize() error {
	if c.Dial == nil {
		return fmt.Errorf("%w: client: Dial is required", ErrBadConfig)
	}
	if c.Password == "" {
		return fmt.Errorf("%w: client: password is required", ErrBadConfig)
	}
	if c.PaddingScheme == nil {
		c.PaddingScheme = DefaultPaddingScheme
	}
	if c.MinIdleSession < 0 {
		return fmt.Errorf("%w: client: min idle session %d is negative", ErrBadConfig, c.MinIdleSession)
	}
	if c.MaxStreamsPerSession < 0 {
		return fmt.Errorf("%w: client: max streams per session %d is negative", ErrBadConfig, c.MaxStreamsPerSession)
	}
	if c.IdleSessionCheckInterval < 0 || c.IdleSessionTimeout < 0 {
		return fmt.Errorf("%w: client: idle session check interval and timeout must not be negative", ErrBadConfig)
	}
	c.IdleSessionCheckInterval = orDuration(c.IdleSessionCheckInterval, DefaultIdleSessionCheckInterval)
	c.IdleSessionTimeout = orDuration(c.IdleSessionTimeout, DefaultIdleSessionTimeout)
	c.MaxStreamsPerSession = orInt(c.MaxStreamsPerSession, 1)
	c.HeartbeatInterval = orDuration(c.HeartbeatInterval, DefaultHeartbeatInterval)
	c.HeartbeatTimeout = orDuration(c.HeartbeatTimeout, DefaultHeartbeatTimeout)
	c.SynAckTimeout = orDuration(c.SynAckTimeout, DefaultSynAckTimeout)
	c.DialTimeout = orDuration(c.DialTimeout, DefaultDialTimeout)
	c.StreamBufferSize = orInt(c.StreamBufferSize, DefaultStreamBufferSize)
	c.StreamStallTimeout = orDuration(c.StreamStallTimeout, DefaultStreamStallTimeout)
	c.MaxVersion = orInt(c.MaxVersion, 2)
	if c.MaxVersion < 1 || c.MaxVersion > 2 {
		return fmt.Errorf("%w: client: max version %d (want 1 or 2)", ErrBadConfig, c.MaxVersion)
	}
	if c.Logger == nil {
		c.Logger = discardLogger
	}
	return nil
}

func (c *ServerConfig) normalize() error {
	if c.Handler == nil {
		return fmt.Errorf("%w: server: Handler is required", ErrBadConfig)
	}
	if err := checkUsers(c.Users); err != nil {
		return err
	}
	if c.PaddingScheme == nil {
		c.PaddingScheme = DefaultPaddingScheme
	}
	if c.MaxSessions < 0 || c.MaxStreamsPerSession < 0 {
		return fmt.Errorf("%w: server: session and stream limits must not be negative", ErrBadConfig)
	}
	c.AuthTimeout = orDuration(c.AuthTimeout, DefaultAuthTimeout)
	c.IdleSessionTimeout = orDuration(c.IdleSessionTimeout, DefaultServerIdleTimeout)
	c.MaxStreamsPerSession = orInt(c.MaxStreamsPerSession, DefaultMaxStreamsPerSession)
	c.EarlySynAckDelay = orDuration(c.EarlySynAckDelay, DefaultEarlySynAckDelay)
	c.AddressTimeout = orDuration(c.AddressTimeout, DefaultAddressTimeout)
	c.StreamBufferSize = orInt(c.StreamBufferSize, DefaultStreamBufferSize)
	c.StreamStallTimeout = orDuration(c.StreamStallTimeout, DefaultStreamStallTimeout)
	c.MaxVersion = orInt(c.MaxVersion, 2)
	if c.MaxVersion < 1 || c.MaxVersion > 2 {
		return fmt.Errorf("%w: server: max version %d (want 1 or 2)", ErrBadConfig, c.MaxVersion)
	}
	if c.Logger == nil {
		c.Logger = discardLogger
	}
	return nil
}

func checkUsers(users []User) error {
	if len(users) == 0 {
		return fmt.Errorf("%w: server: at least one user is required", ErrBadConfig)
	}
	names := map[string]bool{}
	passwords := map[string]int{}
	for i, u := range users {
		if u.Password == "" {
			return fmt.Errorf("%w: server: user %d (%q) has an empty password", ErrBadConfig, i, u.Name)
		}
		// The password is all that identifies a user on the wire: two users sharing one would
		// make user names, rules and metrics ambiguous.
		if j, dup := passwords[u.Password]; dup {
			return fmt.Errorf("%w: server: users %d (%q) and %d (%q) have the same password", ErrBadConfig, j, users[j].Name, i, u.Name)
		}
		passwords[u.Password] = i
		if u.Name != "" && names[u.Name] {
			return fmt.Errorf("%w: server: user name %q appears twice", ErrBadConfig, u.Name)
		}
		names[u.Name] = true
	}
	return nil
}
