// Package mihomo is a mihomo proxy adapter of type "anytls" served by this module's engine. It
// reads every YAML key of mihomo's built-in anytls proxy with the same meaning, plus Reality
// (reality-opts, as vless spells it) and the engine's extra knobs (see Options), and only
// translates: mihomo's dialer (dialer-proxy, interface-name, routing-mark, ...) and TLS helpers
// (client-fingerprint uTLS, fingerprint pinning, ECH, Reality) make the connection, the engine runs
// the sessions, and UDP goes over UDP-over-TCP v2 in an anytls stream, as with the built-in.
//
// mihomo has no registry for proxy types; internal/mihomorun puts this adapter in place of the
// built-in wherever a configuration says `type: anytls`.
package mihomo

import (
	"context"
	"fmt"
	"net"
	"strconv"

	"github.com/anytls-engine/anytls/internal/mihomohost"
	"github.com/anytls-engine/anytls/protocol"

	"github.com/metacubex/mihomo/adapter"
	"github.com/metacubex/mihomo/adapter/outbound"
	N "github.com/metacubex/mihomo/common/net"
	"github.com/metacubex/mihomo/common/utils"
	C "github.com/metacubex/mihomo/constant"
	"github.com/metacubex/mihomo/transport/vmess"

	M "github.com/metacubex/sing/common/metadata"
	"github.com/metacubex/sing/common/uot"
)

// Proxy is the adapter. It implements mihomo's outbound.ProxyAdapter (so sing-mux can wrap it).
type Proxy struct {
	*outbound.Base
	opts   Options
	tls    *vmess.TLSConfig
	client *protocol.Client
}

var _ outbound.ProxyAdapter = (*Proxy)(nil)

// New builds the adapter from validated options (see ParseOptions).
func New(opts Options) (*Proxy, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	p := &Proxy{
		Base: outbound.NewBase(outbound.BaseOption{
			Name:        opts.Name,
			Addr:        net.JoinHostPort(opts.Server, strconv.Itoa(opts.Port)),
			Type:        C.AnyTLS,
			UDP:         opts.UDP,
			TFO:         opts.TFO,
			MPTCP:       opts.MPTCP,
			Interface:   opts.Interface,
			RoutingMark: opts.RoutingMark,
			Prefer:      opts.IPVersion,
		}),
		opts: opts,
	}
	echConfig, _ := opts.ECHOpts.Parse()         // validated
	realityConfig, _ := opts.RealityOpts.Parse() // validated
	p.tls = &vmess.TLSConfig{
		Host:              opts.SNI,
		SkipCertVerify:    opts.SkipCertVerify,
		NextProtos:        opts.ALPN,
		FingerPrint:       opts.Fingerprint,
		Certificate:       opts.Certificate,
		PrivateKey:        opts.PrivateKey,
		ClientFingerprint: opts.ClientFingerprint,
		ECH:               echConfig,
		Reality:           realityConfig,
	}
	if p.tls.Host == "" {
		p.tls.Host = opts.Server
	}
	dialer := opts.NewDialer(p.DialOptions())
	cfg, err := opts.ClientOptions().ProtocolConfig()
	if err != nil {
		return nil, &ConfigError{Proxy: opts.Name, Err: err}
	}
	cfg.Logger = mihomohost.Logger("[AnyTLS] " + opts.Name)
	cfg.Dial = func(ctx context.Context) (net.Conn, error) {
		conn, err := dialer.DialContext(ctx, "tcp", p.Addr())
		if err != nil {
			return nil, err
		}
		tlsConn, err := vmess.StreamTLSConn(ctx, conn, p.tls)
		if err != nil {
			conn.Close()
			return nil, err
		}
		return tlsConn, nil
	}
	if p.client, err = protocol.NewClient(cfg); err != nil {
		return nil, &ConfigError{Proxy: opts.Name, Err: err}
	}
	return p, nil
}

// NewAdapter builds the adapter as mihomo's adapter.ParseProxy would hand it out: wrapped in
// sing-mux when `smux: {enabled: true}`, and closed automatically once unreferenced.
func NewAdapter(opts Options) (C.ProxyAdapter, error) {
	p, err := New(opts)
	if err != nil {
		return nil, err
	}
	var a outbound.ProxyAdapter = p
	if opts.Smux.Enabled {
		if a, err = outbound.NewSingMux(opts.Smux, p); err != nil {
			p.Close()
			return nil, &ConfigError{Proxy: opts.Name, Key: "smux", Err: err}
		}
	}
	return outbound.NewAutoCloseProxyAdapter(a), nil
}

// ParseProxy is adapter.ParseProxy for a `type: anytls` mapping, served by this engine.
func ParseProxy(mapping map[string]any, providerName string) (C.Proxy, error) {
	opts, err := ParseOptions(mapping, "", outbound.BasicOption{ProviderName: providerName})
	if err != nil {
		return nil, err
	}
	a, err := NewAdapter(opts)
	if err != nil {
		return nil, err
	}
	return adapter.NewProxy(a), nil
}

// Options returns the options the adapter was built with.
func (p *Proxy) Options() Options { return p.opts }

// Client returns the engine client (for statistics such as SessionCount).
func (p *Proxy) Client() *protocol.Client { return p.client }

// DialContext implements C.ProxyAdapter.
func (p *Proxy) DialContext(ctx context.Context, metadata *C.Metadata) (C.Conn, error) {
	dest, err := mihomohost.Addr(M.ParseSocksaddrHostPort(metadata.String(), metadata.DstPort))
	if err != nil {
		return nil, err
	}
	st, err := p.client.OpenStream(ctx, dest)
	if err != nil {
		return nil, err
	}
	return newConn(st, p), nil
}

// ListenPacketContext implements C.ProxyAdapter: UDP-over-TCP v2 in one stream, as the built-in.
func (p *Proxy) ListenPacketContext(ctx context.Context, metadata *C.Metadata) (C.PacketConn, error) {
	if err := p.ResolveUDP(ctx, metadata); err != nil {
		return nil, err
	}
	magic, err := mihomohost.Addr(uot.RequestDestination(uot.Version))
	if err != nil {
		return nil, err
	}
	st, err := p.client.OpenStream(ctx, magic)
	if err != nil {
		return nil, err
	}
	pc := uot.NewLazyConn(st, uot.Request{Destination: M.SocksaddrFromNet(metadata.UDPAddr())})
	return newPacketConn(N.NewThreadSafePacketConn(pc), p), nil
}

// SupportUOT implements C.ProxyAdapter.
func (p *Proxy) SupportUOT() bool { return true }

// ProxyInfo implements C.ProxyAdapter; outbound.NewBase cannot carry the provider name.
func (p *Proxy) ProxyInfo() C.ProxyInfo {
	info := p.Base.ProxyInfo()
	info.DialerProxy = p.opts.DialerProxy
	info.ProviderName = p.opts.ProviderName
	return info
}

// Close implements C.ProxyAdapter.
func (p *Proxy) Close() error { return p.client.Close() }

// conn is the C.Conn of one stream (mihomo's own is unexported and adds a deadline goroutine
// that the engine's streams, whose deadlines work, do not need).
type conn struct {
	N.ExtendedConn
	chain, pdChain C.Chain
	adapterAddr    string
}

func newConn(c net.Conn, a C.ProxyAdapter) *conn {
	cc := &conn{ExtendedConn: N.NewExtendedConn(c), adapterAddr: a.Addr()}
	cc.AppendToChains(a)
	return cc
}

func (c *conn) Chains() C.Chain         { return c.chain }
func (c *conn) ProviderChains() C.Chain { return c.pdChain }
func (c *conn) AppendToChains(a C.ProxyAdapter) {
	c.chain = append(c.chain, a.Name())
	c.pdChain = append(c.pdChain, a.ProxyInfo().ProviderName)
}
func (c *conn) RemoteDestination() string {
	if ra := c.RemoteAddr(); ra != nil {
		m := C.Metadata{}
		if m.SetRemoteAddr(ra) == nil && m.Valid() {
			return m.String()
		}
	}
	host, _, _ := net.SplitHostPort(c.adapterAddr)
	return host
}
func (c *conn) Upstream() any           { return c.ExtendedConn }
func (c *conn) ReaderReplaceable() bool { return true }
func (c *conn) WriterReplaceable() bool { return true }

// AddRef keeps the auto-closing adapter alive while the connection is.
func (c *conn) AddRef(ref any) { c.ExtendedConn = N.NewRefConn(c.ExtendedConn, ref) }

// packetConn is the C.PacketConn of one UoT stream.
type packetConn struct {
	N.EnhancePacketConn
	chain, pdChain C.Chain
	adapterName    string
	connID         string
	adapterAddr    string
	resolveUDP     func(ctx context.Context, metadata *C.Metadata) error
}

func newPacketConn(pc N.EnhancePacketConn, a outbound.ProxyAdapter) *packetConn {
	c := &packetConn{
		EnhancePacketConn: pc,
		adapterName:       a.Name(),
		connID:            utils.NewUUIDV4().String(),
		adapterAddr:       a.Addr(),
		resolveUDP:        a.ResolveUDP,
	}
	c.AppendToChains(a)
	return c
}

func (c *packetConn) ResolveUDP(ctx context.Context, metadata *C.Metadata) error {
	return c.resolveUDP(ctx, metadata)
}
func (c *packetConn) Chains() C.Chain         { return c.chain }
func (c *packetConn) ProviderChains() C.Chain { return c.pdChain }
func (c *packetConn) AppendToChains(a C.ProxyAdapter) {
	c.chain = append(c.chain, a.Name())
	c.pdChain = append(c.pdChain, a.ProxyInfo().ProviderName)
}
func (c *packetConn) RemoteDestination() string {
	host, _, _ := net.SplitHostPort(c.adapterAddr)
	return host
}

// LocalAddr is unique per connection: mihomo's NAT table and quic-go key on it.
func (c *packetConn) LocalAddr() net.Addr {
	return N.NewCustomAddr(c.adapterName, c.connID, c.EnhancePacketConn.LocalAddr())
}
func (c *packetConn) Upstream() any           { return c.EnhancePacketConn }
func (c *packetConn) ReaderReplaceable() bool { return true }
func (c *packetConn) WriterReplaceable() bool { return true }
func (c *packetConn) AddRef(ref any) {
	c.EnhancePacketConn = N.NewRefPacketConn(c.EnhancePacketConn, ref)
}

// String describes the proxy for logs.
func (p *Proxy) String() string {
	return fmt.Sprintf("anytls[%s %s]", p.Name(), p.Addr())
}
