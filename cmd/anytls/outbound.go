package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"

	"github.com/sagernet/sing/common"
	N "github.com/sagernet/sing/common/network"

	"github.com/anytls-engine/anytls/protocol"
)

// errPrivateRefused: a destination is an address of the server's own networks and
// --allow-private is off.
var errPrivateRefused = errors.New("destination refused: loopback, private, link-local and unspecified addresses are not served (server flag --allow-private permits them)")

// Address ranges refused by default besides what netip classifies: "this network" (0/8 reaches
// the local host on Linux), shared address space (carrier-grade NAT) and limited broadcast.
var extraRefused = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("255.255.255.255/32"),
}

// isPrivate reports whether ip is an address of the server's own networks: loopback, private,
// link-local, unspecified and the ranges in extraRefused.
func isPrivate(ip netip.Addr) bool {
	ip = ip.Unmap()
	if !ip.IsValid() || ip.IsUnspecified() || ip.IsLoopback() || ip.IsPrivate() ||
		ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || ip.IsInterfaceLocalMulticast() {
		return true
	}
	for _, p := range extraRefused {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// outbound connects the server's streams to their destinations.
type outbound struct {
	allowPrivate bool
	resolver     *net.Resolver
	dialer       net.Dialer
}

// resolve returns the addresses dest may be reached at, the refused ones left out. Domains
// are resolved here, and the dial goes to the checked address, so a name cannot lead past the
// policy (DNS rebinding).
func (o *outbound) resolve(ctx context.Context, dest protocol.Addr) ([]netip.AddrPort, error) {
	if ap, ok := dest.AddrPort(); ok {
		if !o.allowPrivate && isPrivate(ap.Addr()) {
			return nil, fmt.Errorf("%s: %w", dest, errPrivateRefused)
		}
		return []netip.AddrPort{netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}, nil
	}
	ips, err := o.resolver.LookupNetIP(ctx, "ip", dest.Fqdn)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", dest.Fqdn, err)
	}
	var out []netip.AddrPort
	for _, ip := range ips {
		if o.allowPrivate || !isPrivate(ip) {
			out = append(out, netip.AddrPortFrom(ip.Unmap(), dest.Port))
		}
	}
	if len(out) == 0 {
		if len(ips) == 0 {
			return nil, fmt.Errorf("resolve %s: no addresses", dest.Fqdn)
		}
		return nil, fmt.Errorf("%s resolves to %s: %w", dest, ips[0], errPrivateRefused)
	}
	return out, nil
}

// dialTCP connects to dest, trying its addresses in order.
func (o *outbound) dialTCP(ctx context.Context, dest protocol.Addr) (net.Conn, error) {
	addrs, err := o.resolve(ctx, dest)
	if err != nil {
		return nil, err
	}
	var firstErr error
	for _, ap := range addrs {
		conn, err := o.dialer.DialContext(ctx, "tcp", ap.String())
		if err == nil {
			return conn, nil
		}
		if firstErr == nil {
			firstErr = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, firstErr
}

// relay copies between near (the side that asked for the connection) and far (the side that
// was dialed) until both directions end, then closes both.
//
// When near's data ends, far's write side is closed (TCP FIN, or a half-close where both ends
// of an AnyTLS stream support it) and far's reply keeps flowing. When far's data ends, or a
// copy fails, both are closed at once: deployed AnyTLS peers treat the end of a stream as a full
// close and have no way to learn of a half-close, so waiting for near to end could wait forever.
func relay(near, far net.Conn) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, err := io.Copy(far, near)
		if err == nil {
			if cw, ok := common.Cast[N.WriteCloser](far); ok && cw.CloseWrite() == nil {
				return
			}
		}
		far.Close()
		near.Close()
	}()
	io.Copy(near, far)
	near.Close()
	far.Close()
	<-done
}
