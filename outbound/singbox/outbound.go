// Package singbox is a sing-box outbound of type "anytls" served by this module's engine. It reads
// every JSON key of sing-box's built-in anytls outbound with the same meaning, plus the engine's
// extra knobs (see Options), and only translates: sing-box's dialer and TLS layer (uTLS, Reality,
// ECH) make the connection, the engine runs the sessions, and UDP goes over UDP-over-TCP v2 (sing's
// common/uot) in an anytls stream, as with the built-in.
package singbox

import (
	"context"
	"net"
	"os"
	"strings"
	"time"

	"github.com/anytls-engine/anytls/internal/sbhost"
	aoption "github.com/anytls-engine/anytls/option"
	"github.com/anytls-engine/anytls/protocol"

	"github.com/sagernet/sing-box/adapter"
	"github.com/sagernet/sing-box/adapter/outbound"
	"github.com/sagernet/sing-box/common/dialer"
	"github.com/sagernet/sing-box/common/tls"
	C "github.com/sagernet/sing-box/constant"
	"github.com/sagernet/sing-box/log"
	"github.com/sagernet/sing-box/option"
	"github.com/sagernet/sing/common"
	E "github.com/sagernet/sing/common/exceptions"
	"github.com/sagernet/sing/common/json/badoption"
	M "github.com/sagernet/sing/common/metadata"
	N "github.com/sagernet/sing/common/network"
	"github.com/sagernet/sing/common/uot"
)

// Options is the JSON of the outbound. The first block is exactly sing-box's
// option.AnyTLSOutboundOptions; the rest are this engine's extensions, each mapping to the
// option.ClientOptions field of the same key (defaults there). client_metadata (the built-in's
// key) and client_name are the same setting: the client= value of the settings frame.
type Options struct {
	option.DialerOptions
	option.ServerOptions
	option.OutboundTLSOptionsContainer
	Password                 string             `json:"password,omitempty"`
	IdleSessionCheckInterval badoption.Duration `json:"idle_session_check_interval,omitempty"`
	IdleSessionTimeout       badoption.Duration `json:"idle_session_timeout,omitempty"`
	MinIdleSession           int                `json:"min_idle_session,omitempty"`
	ClientMetadata           string             `json:"client_metadata,omitempty"`

	PaddingScheme        badoption.Listable[string] `json:"padding_scheme,omitempty"`
	ClientName           string                     `json:"client_name,omitempty"`
	DisableSessionReuse  bool                       `json:"disable_session_reuse,omitempty"`
	MaxStreamsPerSession int                        `json:"max_streams_per_session,omitempty"`
	HeartbeatInterval    badoption.Duration         `json:"heartbeat_interval,omitempty"`
	HeartbeatTimeout     badoption.Duration         `json:"heartbeat_timeout,omitempty"`
	SynAckTimeout        badoption.Duration         `json:"synack_timeout,omitempty"`
	DialTimeout          badoption.Duration         `json:"dial_timeout,omitempty"`
	StreamBufferSize     int                        `json:"stream_buffer_size,omitempty"`
	StreamStallTimeout   badoption.Duration         `json:"stream_stall_timeout,omitempty"`
	DisableHalfClose     bool                       `json:"disable_half_close,omitempty"`
	MaxVersion           int                        `json:"max_version,omitempty"`
}

// ClientOptions maps the JSON onto the host-neutral client options.
func (o Options) ClientOptions() (aoption.ClientOptions, error) {
	name := o.ClientName
	if o.ClientMetadata != "" {
		if name != "" && name != o.ClientMetadata {
			return aoption.ClientOptions{}, E.New("client_metadata ", `"`, o.ClientMetadata, `"`, " and client_name ", `"`, name, `"`, " disagree: set one")
		}
		name = o.ClientMetadata
	}
	return aoption.ClientOptions{
		Password:                 o.Password,
		PaddingScheme:            strings.Join(o.PaddingScheme, "\n"),
		IdleSessionCheckInterval: time.Duration(o.IdleSessionCheckInterval),
		IdleSessionTimeout:       time.Duration(o.IdleSessionTimeout),
		MinIdleSession:           o.MinIdleSession,
		DisableSessionReuse:      o.DisableSessionReuse,
		MaxStreamsPerSession:     o.MaxStreamsPerSession,
		ClientName:               name,
		HeartbeatInterval:        time.Duration(o.HeartbeatInterval),
		HeartbeatTimeout:         time.Duration(o.HeartbeatTimeout),
		SynAckTimeout:            time.Duration(o.SynAckTimeout),
		DialTimeout:              time.Duration(o.DialTimeout),
		StreamBufferSize:         o.StreamBufferSize,
		StreamStallTimeout:       time.Duration(o.StreamStallTimeout),
		DisableHalfClose:         o.DisableHalfClose,
		MaxVersion:               o.MaxVersion,
	}, nil
}

// RegisterOutbound registers the outbound as type "anytls".
func RegisterOutbound(registry *outbound.Registry) {
	RegisterOutboundAs(registry, C.TypeAnyTLS)
}

// RegisterOutboundAs registers the outbound under another type name (tests run it beside
// sing-box's built-in anytls in one process).
func RegisterOutboundAs(registry *outbound.Registry, typeName string) {
	outbound.Register[Options](registry, typeName, func(ctx context.Context, router adapter.Router, logger log.ContextLogger, tag string, options Options) (adapter.Outbound, error) {
		return NewOutbound(ctx, router, logger, tag, typeName, options)
	})
}

var _ adapter.OutboundWithMultiplex = (*Outbound)(nil)

// Outbound is a sing-box outbound served by the engine.
type Outbound struct {
	outbound.Adapter
	logger    log.ContextLogger
	server    M.Socksaddr
	dialer    tls.Dialer
	config    protocol.ClientConfig
	effective aoption.ClientOptions
	client    *protocol.Client
	uot       *uot.Client
}

// NewOutbound creates the outbound; typeName is the type it was registered as.
func NewOutbound(ctx context.Context, router adapter.Router, logger log.ContextLogger, tag string, typeName string, options Options) (adapter.Outbound, error) {
	h := &Outbound{
		Adapter: outbound.NewAdapterWithDialerOptions(typeName, tag, []string{N.NetworkTCP, N.NetworkUDP}, options.DialerOptions),
		logger:  logger,
		server:  options.ServerOptions.Build(),
	}
	if options.Server == "" {
		return nil, E.New("missing server address")
	}
	if options.ServerPort == 0 {
		return nil, E.New("missing server_port for server ", options.Server)
	}
	if options.TLS == nil || !options.TLS.Enabled {
		return nil, E.Cause(C.ErrTLSRequired, "anytls outbound: tls.enabled must be true")
	}
	// The engine needs the server's address at once; a TFO connection has none until its
	// first write (the built-in refuses it too).
	if options.TCPFastOpen {
		return nil, E.New("tcp_fast_open = true is not supported with anytls outbound")
	}
	clientOptions, err := options.ClientOptions()
	if err != nil {
		return nil, err
	}
	h.config, err = clientOptions.ProtocolConfig()
	if err != nil {
		return nil, err
	}
	h.effective = clientOptions.WithDefaults()
	tlsConfig, err := tls.NewClient(ctx, logger, options.Server, common.PtrValueOrDefault(options.TLS))
	if err != nil {
		return nil, err
	}
	outboundDialer, err := dialer.NewWithOptions(dialer.Options{
		Context:        ctx,
		Options:        options.DialerOptions,
		RemoteIsDomain: options.ServerIsDomain(),
	})
	if err != nil {
		return nil, err
	}
	h.dialer = tls.NewDialer(outboundDialer, tlsConfig)
	h.config.Dial = func(ctx context.Context) (net.Conn, error) {
		return h.dialer.DialTLSContext(ctx, h.server)
	}
	h.config.Logger = sbhost.Logger(logger)
	h.uot = &uot.Client{Dialer: streamDialer{h}, Version: uot.Version}
	return h, nil
}

// EffectiveOptions returns the protocol options in effect, defaults filled in.
func (h *Outbound) EffectiveOptions() aoption.ClientOptions { return h.effective }

// Start creates the engine's client (at the initialize stage, as the built-in: a box that fails
// to build leaves nothing running).
func (h *Outbound) Start(stage adapter.StartStage) error {
	if stage != adapter.StartStateInitialize {
		return nil
	}
	client, err := protocol.NewClient(h.config)
	if err != nil {
		return err
	}
	h.client = client
	return nil
}

// Close closes every session.
func (h *Outbound) Close() error {
	return common.Close(common.PtrOrNil(h.client))
}

// MultiplexEnabled: streams share sessions.
func (h *Outbound) MultiplexEnabled() bool { return true }

func (h *Outbound) openStream(ctx context.Context, destination M.Socksaddr) (net.Conn, error) {
	if h.client == nil {
		return nil, E.New("anytls outbound not started")
	}
	dest, err := sbhost.Addr(destination)
	if err != nil {
		return nil, err
	}
	return h.client.OpenStream(ctx, dest)
}

// DialContext opens a stream (TCP) or a UoT connection in a stream (UDP, connect mode).
func (h *Outbound) DialContext(ctx context.Context, network string, destination M.Socksaddr) (net.Conn, error) {
	ctx, metadata := adapter.ExtendContext(ctx)
	metadata.Outbound = h.Tag()
	metadata.Destination = destination
	switch N.NetworkName(network) {
	case N.NetworkTCP:
		h.logger.InfoContext(ctx, "outbound connection to ", destination)
		return h.openStream(ctx, destination)
	case N.NetworkUDP:
		h.logger.InfoContext(ctx, "outbound UoT packet connection to ", destination)
		return h.uot.DialContext(ctx, network, destination)
	}
	return nil, E.Extend(N.ErrUnknownNetwork, network)
}

// ListenPacket opens a UoT v2 connection in a stream to protocol.UoTMagicAddress.
func (h *Outbound) ListenPacket(ctx context.Context, destination M.Socksaddr) (net.PacketConn, error) {
	ctx, metadata := adapter.ExtendContext(ctx)
	metadata.Outbound = h.Tag()
	metadata.Destination = destination
	h.logger.InfoContext(ctx, "outbound UoT packet connection to ", destination)
	return h.uot.ListenPacket(ctx, destination)
}

// streamDialer gives sing's UoT client the streams it speaks through; it only ever asks for
// TCP to the magic address.
type streamDialer struct{ h *Outbound }

func (d streamDialer) DialContext(ctx context.Context, network string, destination M.Socksaddr) (net.Conn, error) {
	return d.h.openStream(ctx, destination)
}

func (d streamDialer) ListenPacket(context.Context, M.Socksaddr) (net.PacketConn, error) {
	return nil, os.ErrInvalid
}
