// Package singbox is a sing-box inbound of type "anytls" served by this module's engine. It reads
// every JSON key of sing-box's built-in anytls inbound with the same meaning, plus the engine's
// extra knobs (see Options), and only translates: sing-box's listener and TLS layer accept the
// connection, the engine authenticates and runs the session, and each stream goes to sing-box's
// router (UDP-over-TCP streams through sing-box's UoT router, as the built-in does).
package singbox

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/anytls-engine/anytls/internal/sbhost"
	aoption "github.com/anytls-engine/anytls/option"
	"github.com/anytls-engine/anytls/protocol"

	"github.com/sagernet/sing-box/adapter"
	"github.com/sagernet/sing-box/adapter/inbound"
	"github.com/sagernet/sing-box/common/listener"
	"github.com/sagernet/sing-box/common/tls"
	"github.com/sagernet/sing-box/common/uot"
	C "github.com/sagernet/sing-box/constant"
	"github.com/sagernet/sing-box/log"
	"github.com/sagernet/sing-box/option"
	"github.com/sagernet/sing/common"
	E "github.com/sagernet/sing/common/exceptions"
	"github.com/sagernet/sing/common/json/badoption"
	M "github.com/sagernet/sing/common/metadata"
	N "github.com/sagernet/sing/common/network"
)

// Options is the JSON of the inbound. The first block is exactly sing-box's
// option.AnyTLSInboundOptions; the rest are this engine's extensions, each mapping to the
// option.ServerOptions field of the same key (defaults there).
type Options struct {
	option.ListenOptions
	option.InboundTLSOptionsContainer
	Users         []option.AnyTLSUser        `json:"users,omitempty"`
	PaddingScheme badoption.Listable[string] `json:"padding_scheme,omitempty"`

	// Fallback receives connections that fail authentication, routed like any inbound
	// connection to this address with the bytes already read replayed (as trojan's fallback).
	Fallback             *option.ServerOptions `json:"fallback,omitempty"`
	AuthTimeout          badoption.Duration    `json:"auth_timeout,omitempty"`
	IdleSessionTimeout   badoption.Duration    `json:"idle_session_timeout,omitempty"`
	MaxSessions          int                   `json:"max_sessions,omitempty"`
	MaxStreamsPerSession int                   `json:"max_streams_per_session,omitempty"`
	EarlySynAckDelay     badoption.Duration    `json:"early_synack_delay,omitempty"`
	AddressTimeout       badoption.Duration    `json:"address_timeout,omitempty"`
	StreamBufferSize     int                   `json:"stream_buffer_size,omitempty"`
	StreamStallTimeout   badoption.Duration    `json:"stream_stall_timeout,omitempty"`
	PadDownstream        bool                  `json:"pad_downstream,omitempty"`
	DisableHalfClose     bool                  `json:"disable_half_close,omitempty"`
	MaxVersion           int                   `json:"max_version,omitempty"`
}

// RegisterInbound registers the inbound as type "anytls".
func RegisterInbound(registry *inbound.Registry) {
	RegisterInboundAs(registry, C.TypeAnyTLS)
}

// RegisterInboundAs registers the inbound under another type name (tests run it beside
// sing-box's built-in anytls in one process).
func RegisterInboundAs(registry *inbound.Registry, typeName string) {
	inbound.Register[Options](registry, typeName, func(ctx context.Context, router adapter.Router, logger log.ContextLogger, tag string, options Options) (adapter.Inbound, error) {
		return NewInbound(ctx, router, logger, tag, typeName, options)
	})
}

var _ adapter.TCPInjectableInbound = (*Inbound)(nil)

// Inbound is a sing-box inbound served by the engine.
type Inbound struct {
	inbound.Adapter
	router    adapter.ConnectionRouterEx
	logger    log.ContextLogger
	listener  *listener.Listener
	tlsConfig tls.ServerConfig
	server    *protocol.Server
	fallback  M.Socksaddr
	usersMu   sync.Mutex // guards effective.Users
	effective aoption.ServerOptions
}

// ServerOptions maps the JSON onto the host-neutral server options (Fallback excluded: it is
// routed through sing-box here).
func (o Options) ServerOptions() (aoption.ServerOptions, error) {
	users := make([]aoption.User, len(o.Users))
	for i, u := range o.Users {
		users[i] = aoption.User{Name: u.Name, Password: u.Password}
	}
	return aoption.ServerOptions{
		Users:                users,
		PaddingScheme:        strings.Join(o.PaddingScheme, "\n"),
		AuthTimeout:          time.Duration(o.AuthTimeout),
		IdleSessionTimeout:   time.Duration(o.IdleSessionTimeout),
		MaxSessions:          o.MaxSessions,
		MaxStreamsPerSession: o.MaxStreamsPerSession,
		EarlySynAckDelay:     time.Duration(o.EarlySynAckDelay),
		AddressTimeout:       time.Duration(o.AddressTimeout),
		StreamBufferSize:     o.StreamBufferSize,
		StreamStallTimeout:   time.Duration(o.StreamStallTimeout),
		PadDownstream:        o.PadDownstream,
		DisableHalfClose:     o.DisableHalfClose,
		MaxVersion:           o.MaxVersion,
	}, nil
}

// NewInbound creates the inbound; typeName is the type it was registered as.
func NewInbound(ctx context.Context, router adapter.Router, logger log.ContextLogger, tag string, typeName string, options Options) (adapter.Inbound, error) {
	h := &Inbound{
		Adapter: inbound.NewAdapter(typeName, tag),
		router:  uot.NewRouter(router, logger),
		logger:  logger,
	}
	serverOptions, err := options.ServerOptions()
	if err != nil {
		return nil, err
	}
	cfg, err := serverOptions.ProtocolConfig(nil)
	if err != nil {
		return nil, err
	}
	h.effective = serverOptions.WithDefaults()
	if options.Fallback != nil && options.Fallback.Server != "" {
		h.fallback = options.Fallback.Build()
		if !h.fallback.IsValid() || h.fallback.Port == 0 {
			return nil, E.New("invalid fallback address: ", h.fallback)
		}
		cfg.Fallback = h.newFallback
	}
	if options.TLS != nil && options.TLS.Enabled {
		h.tlsConfig, err = tls.NewServer(ctx, logger, common.PtrValueOrDefault(options.TLS))
		if err != nil {
			return nil, err
		}
	} else {
		// As the built-in: plain anytls is allowed behind a TLS-terminating front.
		logger.Warn("anytls inbound[", tag, "] without tls: clients must reach it through a TLS front")
	}
	cfg.Handler = h.newStream
	cfg.Logger = sbhost.Logger(logger)
	h.server, err = protocol.NewServer(cfg)
	if err != nil {
		return nil, err
	}
	h.listener = listener.New(listener.Options{
		Context:           ctx,
		Logger:            logger,
		Network:           []string{N.NetworkTCP},
		Listen:            options.ListenOptions,
		ConnectionHandler: h,
	})
	return h, nil
}

// EffectiveOptions returns the protocol options in effect, defaults filled in.
func (h *Inbound) EffectiveOptions() aoption.ServerOptions {
	h.usersMu.Lock()
	defer h.usersMu.Unlock()
	o := h.effective
	o.Users = slices.Clone(o.Users)
	return o
}

// UpdateUsers gives the running inbound new users without a restart: sessions of users still
// present (same name and password) keep running, the others' sessions are closed, new users can
// connect at once. The users are checked as at creation; on error nothing changes.
func (h *Inbound) UpdateUsers(users []option.AnyTLSUser) error {
	h.usersMu.Lock()
	defer h.usersMu.Unlock()
	next := h.effective
	next.Users = make([]aoption.User, len(users))
	for i, u := range users {
		next.Users[i] = aoption.User{Name: u.Name, Password: u.Password}
	}
	cfg, err := next.ProtocolConfig(nil)
	if err != nil {
		return err
	}
	if err := h.server.UpdateUsers(cfg.Users); err != nil {
		return err
	}
	h.effective = next
	return nil
}

// Start starts the TLS config and the listener.
func (h *Inbound) Start(stage adapter.StartStage) error {
	if stage != adapter.StartStateStart {
		return nil
	}
	if h.tlsConfig != nil {
		if err := h.tlsConfig.Start(); err != nil {
			return E.Cause(err, "create TLS config")
		}
	}
	return h.listener.Start()
}

// Close stops the listener and ends every session.
func (h *Inbound) Close() error {
	return common.Close(h.listener, common.PtrOrNil(h.server), h.tlsConfig)
}

type ctxKeyMetadata struct{}

// NewConnection serves one accepted connection: TLS handshake, then the engine's session.
func (h *Inbound) NewConnection(ctx context.Context, conn net.Conn, metadata adapter.InboundContext, onClose N.CloseHandlerFunc) {
	if h.tlsConfig != nil {
		tlsConn, err := tls.ServerHandshake(ctx, conn, h.tlsConfig)
		if err != nil {
			N.CloseOnHandshakeFailure(conn, onClose, err)
			h.logger.ErrorContext(ctx, E.Cause(err, "process connection from ", metadata.Source, ": TLS handshake"))
			return
		}
		conn = tlsConn
	}
	metadata.Inbound = h.Tag()
	metadata.InboundType = h.Type()
	err := h.server.ServeConn(context.WithValue(ctx, ctxKeyMetadata{}, metadata), conn)
	switch {
	case errors.Is(err, protocol.ErrAuthFailed) || errors.Is(err, protocol.ErrNotAnyTLS):
		h.logger.ErrorContext(ctx, E.Cause(err, "process connection from ", metadata.Source))
	case err != nil && !E.IsClosedOrCanceled(err):
		h.logger.DebugContext(ctx, E.Cause(err, "session from ", metadata.Source, " ended"))
	}
	if onClose != nil {
		onClose(err)
	}
}

func metadataFrom(ctx context.Context) adapter.InboundContext {
	m, _ := ctx.Value(ctxKeyMetadata{}).(adapter.InboundContext)
	return m
}

// newStream routes one stream. sing-box's router reports the outbound dial result on the conn
// (streamConn), which the engine turns into cmdSYNACK.
func (h *Inbound) newStream(ctx context.Context, st *protocol.Stream) {
	metadata := metadataFrom(ctx)
	metadata.Destination = sbhost.Socksaddr(st.Destination()).Unwrap()
	ctx = log.ContextWithNewID(ctx)
	if user := st.User(); user != "" {
		metadata.User = user
		h.logger.InfoContext(ctx, "[", user, "] inbound connection to ", metadata.Destination)
	} else {
		h.logger.InfoContext(ctx, "inbound connection to ", metadata.Destination)
	}
	h.router.RouteConnectionEx(ctx, &streamConn{st}, metadata, nil)
}

// newFallback routes a connection that failed authentication to the fallback address.
func (h *Inbound) newFallback(ctx context.Context, conn net.Conn) {
	metadata := metadataFrom(ctx)
	metadata.Destination = h.fallback
	h.logger.InfoContext(ctx, "fallback connection from ", metadata.Source, " to ", h.fallback)
	h.router.RouteConnectionEx(ctx, conn, metadata, nil)
}

// streamConn is the stream as sing-box's router sees it: the router's handshake reports
// become the engine's Report (cmdSYNACK with the real dial result).
type streamConn struct {
	*protocol.Stream
}

func (c *streamConn) HandshakeFailure(err error) error {
	c.Report(err)
	return nil
}

func (c *streamConn) HandshakeSuccess() error {
	c.Report(nil)
	return nil
}

func (c *streamConn) Upstream() any { return c.Stream }
