package option

import (
	"context"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/anytls-engine/anytls/protocol"
)

// User is one server credential. Name is optional (it names the user in logs and to the stream
// handler); names, when set, must be unique.
type User struct {
	Name     string
	Password string
}

// ServerOptions are the protocol options of an AnyTLS server (inbound). TLS (certificate, key,
// ALPN) and the listen address are the host's business. Zero values select the defaults.
type ServerOptions struct {
	// Users that may authenticate (key "users"; at least one). Every password must be non-empty.
	Users []User
	// PaddingScheme is the scheme text pushed to clients whose scheme differs
	// (key "padding_scheme"). Default: the protocol's default scheme.
	PaddingScheme string
	// Fallback is a host:port that receives, over plain TCP, connections that fail
	// authentication, with every byte already read replayed first, so a prober sees that
	// service (key "fallback"; typically a local web server). Default: none; such connections
	// are held open and closed after a random delay.
	Fallback string

	// AuthTimeout bounds the TLS handshake plus the wait for the authentication request
	// (key "auth_timeout"). Default 30 s.
	AuthTimeout time.Duration
	// IdleSessionTimeout closes sessions that carried no stream activity for this long
	// (key "idle_session_timeout"). Default 5 min; negative disables.
	IdleSessionTimeout time.Duration
	// MaxSessions bounds concurrent sessions (key "max_sessions"). Default 0: unlimited.
	MaxSessions int
	// MaxStreamsPerSession bounds concurrent streams in one session
	// (key "max_streams_per_session"). Default 1024.
	MaxStreamsPerSession int
	// EarlySynAckDelay: when the outbound dial of a stream has not finished after this long, an
	// empty cmdSYNACK is sent anyway (deployed clients kill the whole session when none arrives
	// within 3 s); a later dial failure then closes the stream (key "early_synack_delay").
	// Default 2 s.
	EarlySynAckDelay time.Duration
	// AddressTimeout bounds the wait for a new stream's destination address
	// (key "address_timeout"). Default 30 s.
	AddressTimeout time.Duration
	// StreamBufferSize bounds the data buffered for one stream's reader
	// (key "stream_buffer_size"). Default 4 MiB, minimum 65535.
	StreamBufferSize int
	// StreamStallTimeout resets a stream whose buffer stayed full for this long
	// (key "stream_stall_timeout"). Default 30 s.
	StreamStallTimeout time.Duration
	// PadDownstream pads the server's first packets of each session with its padding scheme, as
	// clients pad theirs (key "pad_downstream"; an extension deployed clients accept, since
	// they discard cmdWaste). Default false.
	PadDownstream bool
	// DisableHalfClose stops accepting the half-close extension (key "disable_half_close").
	// Default false.
	DisableHalfClose bool
	// MaxVersion is the highest protocol version served (key "max_version"): 2 (default) or 1.
	MaxVersion int
}

// Validate reports the first invalid option as a *FieldError.
func (o ServerOptions) Validate() error {
	v := validator{side: "server"}
	if len(o.Users) == 0 {
		v.fail("users", "[]", "at least one user is required")
	}
	names := map[string]int{}
	for i, u := range o.Users {
		field := "users[" + strconv.Itoa(i) + "]"
		if u.Password == "" {
			v.fail(field+".password", "", "is required")
		}
		if u.Name == "" {
			continue
		}
		if j, dup := names[u.Name]; dup {
			v.fail(field+".name", u.Name, "is already used by users["+strconv.Itoa(j)+"]")
		}
		names[u.Name] = i
	}
	v.paddingScheme(o.PaddingScheme)
	if o.Fallback != "" {
		if _, err := protocol.ParseAddr(o.Fallback); err != nil {
			v.fail("fallback", o.Fallback, "must be host:port")
		} else if _, port, _ := net.SplitHostPort(o.Fallback); port == "0" {
			v.fail("fallback", o.Fallback, "port must not be 0")
		}
	}
	v.nonNegativeDuration("auth_timeout", o.AuthTimeout)
	v.nonNegativeInt("max_sessions", o.MaxSessions)
	v.nonNegativeInt("max_streams_per_session", o.MaxStreamsPerSession)
	v.nonNegativeDuration("early_synack_delay", o.EarlySynAckDelay)
	v.nonNegativeDuration("address_timeout", o.AddressTimeout)
	v.bufferSize(o.StreamBufferSize)
	v.nonNegativeDuration("stream_stall_timeout", o.StreamStallTimeout)
	v.version(o.MaxVersion)
	return v.err
}

// WithDefaults returns o with every zero field set to its default (Fallback stays empty).
func (o ServerOptions) WithDefaults() ServerOptions {
	if o.PaddingScheme == "" {
		o.PaddingScheme = protocol.DefaultPaddingSchemeText
	}
	o.AuthTimeout = orDuration(o.AuthTimeout, DefaultAuthTimeout)
	o.IdleSessionTimeout = orDuration(o.IdleSessionTimeout, DefaultServerIdleSessionTimeout)
	o.MaxStreamsPerSession = orInt(o.MaxStreamsPerSession, DefaultServerMaxStreamsPerSession)
	o.EarlySynAckDelay = orDuration(o.EarlySynAckDelay, DefaultEarlySynAckDelay)
	o.AddressTimeout = orDuration(o.AddressTimeout, DefaultAddressTimeout)
	o.StreamBufferSize = orInt(o.StreamBufferSize, DefaultStreamBufferSize)
	o.StreamStallTimeout = orDuration(o.StreamStallTimeout, DefaultStreamStallTimeout)
	o.MaxVersion = orInt(o.MaxVersion, DefaultMaxVersion)
	return o
}

// DialFunc dials a plain connection, as net.Dialer.DialContext does. Hosts pass their own
// dialer (routing marks, interfaces, ...).
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// ProtocolConfig validates o and maps it onto the engine's configuration. The caller sets
// Handler and Logger (and Metrics). When Fallback is set, the config's Fallback splices
// unauthenticated connections to it through dial (nil: a net.Dialer with DialTimeout).
func (o ServerOptions) ProtocolConfig(dial DialFunc) (protocol.ServerConfig, error) {
	if err := o.Validate(); err != nil {
		return protocol.ServerConfig{}, err
	}
	o = o.WithDefaults()
	scheme, err := protocol.ParsePaddingScheme([]byte(o.PaddingScheme))
	if err != nil {
		return protocol.ServerConfig{}, err // unreachable: Validate parsed it
	}
	users := make([]protocol.User, len(o.Users))
	for i, u := range o.Users {
		users[i] = protocol.User{Name: u.Name, Password: u.Password}
	}
	cfg := protocol.ServerConfig{
		Users:                users,
		PaddingScheme:        scheme,
		AuthTimeout:          o.AuthTimeout,
		IdleSessionTimeout:   o.IdleSessionTimeout,
		MaxSessions:          o.MaxSessions,
		MaxStreamsPerSession: o.MaxStreamsPerSession,
		EarlySynAckDelay:     o.EarlySynAckDelay,
		AddressTimeout:       o.AddressTimeout,
		StreamBufferSize:     o.StreamBufferSize,
		StreamStallTimeout:   o.StreamStallTimeout,
		PadDownstream:        o.PadDownstream,
		DisableHalfClose:     o.DisableHalfClose,
		MaxVersion:           o.MaxVersion,
	}
	if o.Fallback != "" {
		cfg.Fallback = SpliceFallback(o.Fallback, dial)
	}
	return cfg, nil
}

// SpliceFallback returns a fallback handler that connects to address over TCP through dial
// (nil: a net.Dialer with a 10 s timeout) and relays both ways until either side ends. The
// connection it receives already replays the bytes the server read while authenticating.
func SpliceFallback(address string, dial DialFunc) protocol.FallbackHandler {
	if dial == nil {
		d := &net.Dialer{Timeout: DefaultDialTimeout}
		dial = d.DialContext
	}
	return func(ctx context.Context, conn net.Conn) {
		defer conn.Close()
		target, err := dial(ctx, "tcp", address)
		if err != nil {
			return
		}
		defer target.Close()
		// Stop relaying when the server shuts down.
		stop := context.AfterFunc(ctx, func() {
			conn.Close()
			target.Close()
		})
		defer stop()
		splice(conn, target)
	}
}

// splice copies both ways; when one direction ends, the other side's write half is closed
// (if it can be) so the peer sees the end, and once both directions end both are closed.
func splice(a, b net.Conn) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		copyThenClose(b, a)
	}()
	copyThenClose(a, b)
	wg.Wait()
}

func copyThenClose(dst, src net.Conn) {
	_, err := io.Copy(dst, src)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok && err == nil {
		cw.CloseWrite()
		return
	}
	dst.Close()
	src.Close()
}
