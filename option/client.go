package option

import (
	"errors"
	"strconv"
	"time"

	"github.com/anytls-engine/anytls/protocol"
)

// Defaults, in one place. The engine uses the same values for zero fields; they are repeated
// here (as references) so that hosts can print and document them.
const (
	DefaultIdleSessionCheckInterval = protocol.DefaultIdleSessionCheckInterval // 30 s
	DefaultIdleSessionTimeout       = protocol.DefaultIdleSessionTimeout       // 30 s
	DefaultMinIdleSession           = 0
	DefaultMaxStreamsPerSession     = 1                                  // client: one stream per session at a time, as deployed clients
	DefaultClientName               = ""                                 // says nothing about this implementation
	DefaultHeartbeatInterval        = protocol.DefaultHeartbeatInterval  // 10 s
	DefaultHeartbeatTimeout         = protocol.DefaultHeartbeatTimeout   // 5 s
	DefaultSynAckTimeout            = protocol.DefaultSynAckTimeout      // 10 s
	DefaultDialTimeout              = protocol.DefaultDialTimeout        // 10 s
	DefaultStreamBufferSize         = protocol.DefaultStreamBufferSize   // 4 MiB
	DefaultStreamStallTimeout       = protocol.DefaultStreamStallTimeout // 30 s
	DefaultMaxVersion               = 2

	DefaultAuthTimeout                = protocol.DefaultAuthTimeout          // 30 s
	DefaultServerIdleSessionTimeout   = protocol.DefaultServerIdleTimeout    // 5 min
	DefaultServerMaxStreamsPerSession = protocol.DefaultMaxStreamsPerSession // 1024
	DefaultMaxSessions                = 0                                    // unlimited
	DefaultEarlySynAckDelay           = protocol.DefaultEarlySynAckDelay     // 2 s
	DefaultAddressTimeout             = protocol.DefaultAddressTimeout       // 30 s

	// DefaultPort is the server port of a share link without one.
	DefaultPort = 443
	// MinStreamBufferSize is the smallest accepted StreamBufferSize: one full frame.
	MinStreamBufferSize = 65535
)

// ClientOptions are the protocol options of an AnyTLS client (outbound). TLS (server name,
// certificates, uTLS, Reality, ECH) and the server address are the host's business; a share link
// (Link) carries the basic ones. Zero values select the defaults.
type ClientOptions struct {
	// Password authenticates the client (key "password"). Required.
	Password string
	// PaddingScheme is the initial padding scheme text (key "padding_scheme"); a server pushes its
	// own when they differ, and the pushed one is used for sessions created afterwards.
	// Default: the protocol's default scheme (protocol.DefaultPaddingSchemeText).
	PaddingScheme string

	// IdleSessionCheckInterval is how often idle pooled sessions are checked
	// (key "idle_session_check_interval"). Default 30 s.
	IdleSessionCheckInterval time.Duration
	// IdleSessionTimeout closes pooled sessions idle for longer than this at a check
	// (key "idle_session_timeout"). Default 30 s.
	IdleSessionTimeout time.Duration
	// MinIdleSession keeps at least this many (the newest) idle sessions open regardless of the
	// timeout (key "min_idle_session"). Default 0.
	MinIdleSession int
	// DisableSessionReuse gives every stream a session (TLS connection) of its own, closed when
	// the stream ends (key "disable_session_reuse"). Some providers break with reuse. Default
	// false: sessions are reused, newest first.
	DisableSessionReuse bool
	// MaxStreamsPerSession > 1 lets one session carry several streams at once
	// (key "max_streams_per_session"). Default 1: a session is reused only after its stream
	// ended, as deployed clients do, which keeps the traffic shape they have.
	MaxStreamsPerSession int
	// ClientName is what the settings frame sends as client= (key "client_name"). Default empty:
	// deployed servers accept it, and a name identifies the implementation to anyone reading it.
	ClientName string

	// HeartbeatInterval: a v2 session that received nothing for this long is probed
	// (key "heartbeat_interval"). Default 10 s; negative disables heartbeats.
	HeartbeatInterval time.Duration
	// HeartbeatTimeout: a probed session that hears nothing for this long is dead and dropped;
	// its streams are retried once on a fresh session (key "heartbeat_timeout"). Default 5 s.
	HeartbeatTimeout time.Duration
	// SynAckTimeout bounds the wait for the server's cmdSYNACK on a v2 session; on expiry only
	// that stream fails (key "synack_timeout"). Default 10 s; negative disables the wait.
	SynAckTimeout time.Duration
	// DialTimeout bounds connecting to the server, TLS handshake and authentication included
	// (key "dial_timeout"). Default 10 s.
	DialTimeout time.Duration
	// StreamBufferSize bounds the data buffered for one stream's reader; a slow reader
	// back-pressures its own stream only (key "stream_buffer_size"). Default 4 MiB, minimum 65535.
	StreamBufferSize int
	// StreamStallTimeout resets a stream whose buffer stayed full for this long, so a stalled
	// reader cannot hold its session hostage (key "stream_stall_timeout"). Default 30 s.
	StreamStallTimeout time.Duration
	// DisableHalfClose stops announcing the half-close extension (key "disable_half_close").
	// Default false; deployed servers ignore the announcement anyway.
	DisableHalfClose bool
	// MaxVersion is the highest protocol version announced (key "max_version"): 2 (default) or 1.
	MaxVersion int
}

// Validate reports the first invalid option as a *FieldError.
func (o ClientOptions) Validate() error {
	v := validator{side: "client"}
	if o.Password == "" {
		v.fail("password", "", "is required")
	}
	v.paddingScheme(o.PaddingScheme)
	v.nonNegativeDuration("idle_session_check_interval", o.IdleSessionCheckInterval)
	v.nonNegativeDuration("idle_session_timeout", o.IdleSessionTimeout)
	v.nonNegativeInt("min_idle_session", o.MinIdleSession)
	v.nonNegativeInt("max_streams_per_session", o.MaxStreamsPerSession)
	if len(o.ClientName) > 255 {
		v.fail("client_name", o.ClientName, "is longer than 255 bytes")
	}
	for _, r := range o.ClientName {
		if r == '\n' || r == '\r' || r == '=' {
			v.fail("client_name", o.ClientName, "must not contain a line break or '='")
			break
		}
	}
	v.nonNegativeDuration("heartbeat_timeout", o.HeartbeatTimeout)
	v.nonNegativeDuration("dial_timeout", o.DialTimeout)
	v.bufferSize(o.StreamBufferSize)
	v.nonNegativeDuration("stream_stall_timeout", o.StreamStallTimeout)
	v.version(o.MaxVersion)
	return v.err
}

// WithDefaults returns o with every zero field set to its default, so that the values in effect
// can be shown. Validate first: WithDefaults does not check anything.
func (o ClientOptions) WithDefaults() ClientOptions {
	if o.PaddingScheme == "" {
		o.PaddingScheme = protocol.DefaultPaddingSchemeText
	}
	o.IdleSessionCheckInterval = orDuration(o.IdleSessionCheckInterval, DefaultIdleSessionCheckInterval)
	o.IdleSessionTimeout = orDuration(o.IdleSessionTimeout, DefaultIdleSessionTimeout)
	o.MaxStreamsPerSession = orInt(o.MaxStreamsPerSession, DefaultMaxStreamsPerSession)
	o.HeartbeatInterval = orDuration(o.HeartbeatInterval, DefaultHeartbeatInterval)
	o.HeartbeatTimeout = orDuration(o.HeartbeatTimeout, DefaultHeartbeatTimeout)
	o.SynAckTimeout = orDuration(o.SynAckTimeout, DefaultSynAckTimeout)
	o.DialTimeout = orDuration(o.DialTimeout, DefaultDialTimeout)
	o.StreamBufferSize = orInt(o.StreamBufferSize, DefaultStreamBufferSize)
	o.StreamStallTimeout = orDuration(o.StreamStallTimeout, DefaultStreamStallTimeout)
	o.MaxVersion = orInt(o.MaxVersion, DefaultMaxVersion)
	return o
}

// ProtocolConfig validates o and maps it onto the engine's configuration. The caller sets the
// fields that are not options: Dial (which returns an established TLS connection to the server)
// and Logger.
func (o ClientOptions) ProtocolConfig() (protocol.ClientConfig, error) {
	if err := o.Validate(); err != nil {
		return protocol.ClientConfig{}, err
	}
	o = o.WithDefaults()
	scheme, err := protocol.ParsePaddingScheme([]byte(o.PaddingScheme))
	if err != nil {
		return protocol.ClientConfig{}, err // unreachable: Validate parsed it
	}
	return protocol.ClientConfig{
		Password:                 o.Password,
		PaddingScheme:            scheme,
		IdleSessionCheckInterval: o.IdleSessionCheckInterval,
		IdleSessionTimeout:       o.IdleSessionTimeout,
		MinIdleSession:           o.MinIdleSession,
		DisableSessionReuse:      o.DisableSessionReuse,
		MaxStreamsPerSession:     o.MaxStreamsPerSession,
		ClientName:               o.ClientName,
		HeartbeatInterval:        o.HeartbeatInterval,
		HeartbeatTimeout:         o.HeartbeatTimeout,
		SynAckTimeout:            o.SynAckTimeout,
		DialTimeout:              o.DialTimeout,
		StreamBufferSize:         o.StreamBufferSize,
		StreamStallTimeout:       o.StreamStallTimeout,
		DisableHalfClose:         o.DisableHalfClose,
		MaxVersion:               o.MaxVersion,
	}, nil
}

// validator collects the first error.
type validator struct {
	side string
	err  error
}

func (v *validator) fail(field string, value any, reason string) {
	if v.err == nil {
		v.err = &FieldError{Side: v.side, Field: field, Value: value, Reason: reason}
	}
}

func (v *validator) nonNegativeDuration(field string, d time.Duration) {
	if d < 0 {
		v.fail(field, d, "must not be negative (0 selects the default)")
	}
}

func (v *validator) nonNegativeInt(field string, n int) {
	if n < 0 {
		v.fail(field, n, "must not be negative")
	}
}

func (v *validator) bufferSize(n int) {
	if n != 0 && n < MinStreamBufferSize {
		v.fail("stream_buffer_size", n, "must be 0 (default) or at least 65535 bytes (one frame)")
	}
}

func (v *validator) version(n int) {
	if n != 0 && n != 1 && n != 2 {
		v.fail("max_version", n, "must be 1 or 2")
	}
}

// paddingScheme checks a scheme text; the error names the bad line, not the whole text.
func (v *validator) paddingScheme(text string) {
	if text == "" {
		return
	}
	_, err := protocol.ParsePaddingScheme([]byte(text))
	if err == nil {
		return
	}
	var pe *protocol.PaddingSchemeError
	if errors.As(err, &pe) && pe.Line > 0 {
		v.fail("padding_scheme", pe.Text, "line "+strconv.Itoa(pe.Line)+": "+pe.Reason)
		return
	}
	if pe != nil {
		v.fail("padding_scheme", "", pe.Reason)
		return
	}
	v.fail("padding_scheme", "", err.Error())
}

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
