// Package testpeer builds the deployed implementations' AnyTLS clients the same way for the
// interop tests, the traffic-shape tests and the benchmark: sing-anytls (what sing-box 1.14.1
// runs) and mihomo's transport/anytls.
package testpeer

import (
	"context"
	"errors"
	"net"
	"net/netip"

	anytls "github.com/anytls/sing-anytls"
	mihomoanytls "github.com/metacubex/mihomo/transport/anytls"
	"github.com/metacubex/mihomo/transport/vmess"
	mM "github.com/metacubex/sing/common/metadata"
	mN "github.com/metacubex/sing/common/network"
	"github.com/sagernet/sing/common/logger"
)

// SingClient returns sing-anytls's client; dial opens its TLS connection to the server.
func SingClient(password string, dial func(ctx context.Context) (net.Conn, error)) (*anytls.Client, error) {
	return anytls.NewClient(context.Background(), anytls.ClientConfig{
		Password: password,
		DialOut:  dial,
		Logger:   logger.NOP(),
	})
}

// MihomoClient returns mihomo's client for the server at addr. It does its own TLS (mihomo's
// crypto/tls fork, "localhost", no certificate check) over a plain TCP connection.
func MihomoClient(password string, addr netip.AddrPort) *mihomoanytls.Client {
	return mihomoanytls.NewClient(context.Background(), mihomoanytls.ClientConfig{
		Password:  password,
		Server:    mM.SocksaddrFromNetIP(addr),
		Dialer:    tcpDialer{},
		TLSConfig: &vmess.TLSConfig{Host: "localhost", SkipCertVerify: true},
	})
}

// tcpDialer is the plain TCP dialer mihomo's client wraps in its own TLS.
type tcpDialer struct{}

func (tcpDialer) DialContext(ctx context.Context, network string, dest mM.Socksaddr) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", dest.String())
}

func (tcpDialer) ListenPacket(context.Context, mM.Socksaddr) (net.PacketConn, error) {
	return nil, errors.New("not used")
}

var _ mN.Dialer = tcpDialer{}
