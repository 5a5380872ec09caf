package main

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/sagernet/sing/common/buf"
	M "github.com/sagernet/sing/common/metadata"
	"github.com/sagernet/sing/common/uot"

	"github.com/anytls-engine/anytls/protocol"
)

const (
	// udpIdleTimeout ends a UDP relay with no packet in either direction for this long.
	udpIdleTimeout = 2 * time.Minute
	// uotRequestTimeout bounds the wait for the UoT request header.
	uotRequestTimeout = 30 * time.Second
	// maxResolved bounds the per-relay cache of resolved domain destinations.
	maxResolved = 256
)

// serveUoT serves a UDP-over-TCP v2 stream (sing's common/uot): the request header, then
// packets relayed to a real UDP socket, connect mode (one destination) or not (an address per
// packet). Destinations obey the same private-address policy as TCP.
func (s *server) serveUoT(ctx context.Context, st *protocol.Stream) {
	st.SetReadDeadline(time.Now().Add(uotRequestTimeout))
	req, err := uot.ReadRequest(st)
	st.SetReadDeadline(time.Time{})
	if err != nil {
		st.Report(err)
		s.log.Debug("udp-over-tcp: bad request", "user", st.User(), "error", err)
		return
	}
	var fixed netip.AddrPort
	if req.IsConnect {
		fixed, err = s.resolveUDP(ctx, req.Destination)
		if err != nil {
			st.Report(err)
			s.log.Info("udp-over-tcp: destination refused", "user", st.User(), "destination", req.Destination.String(), "error", err)
			return
		}
	}
	udp, err := net.ListenUDP("udp", nil)
	if err != nil {
		st.Report(err)
		return
	}
	st.Report(nil)
	s.log.Debug("udp-over-tcp", "user", st.User(), "connect", req.IsConnect, "destination", req.Destination.String())
	r := &udpRelay{server: s, stream: uot.NewConn(st, *req), udp: udp, fixed: fixed, resolved: map[string]netip.AddrPort{}}
	r.run(ctx)
}

// resolveUDP returns the checked address for a UDP destination.
func (s *server) resolveUDP(ctx context.Context, dest M.Socksaddr) (netip.AddrPort, error) {
	addr, err := toAddr(dest)
	if err != nil {
		return netip.AddrPort{}, err
	}
	addrs, err := s.out.resolve(ctx, addr)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return addrs[0], nil
}

type udpRelay struct {
	server   *server
	stream   *uot.Conn
	udp      *net.UDPConn
	fixed    netip.AddrPort // connect mode
	resolved map[string]netip.AddrPort
	active   atomic.Int64 // unix nanos of the last packet
}

func (r *udpRelay) run(ctx context.Context) {
	r.active.Store(time.Now().UnixNano())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.downlink()
		r.stream.Close()
	}()
	r.uplink(ctx)
	r.udp.Close()
	<-done
}

// uplink sends the stream's packets out of the UDP socket.
func (r *udpRelay) uplink(ctx context.Context) {
	buffer := buf.NewPacket()
	defer buffer.Release()
	for {
		buffer.Reset()
		dest, err := r.stream.ReadPacket(buffer)
		if err != nil {
			return
		}
		r.active.Store(time.Now().UnixNano())
		to := r.fixed
		if !to.IsValid() {
			if to, err = r.destination(ctx, dest); err != nil {
				r.server.log.Debug("udp-over-tcp: packet dropped", "destination", dest.String(), "error", err)
				continue
			}
		}
		if _, err := r.udp.WriteToUDPAddrPort(buffer.Bytes(), to); err != nil {
			r.server.log.Debug("udp-over-tcp: send", "destination", to.String(), "error", err)
		}
	}
}

// destination resolves and checks a non-connect packet's destination, caching domains.
func (r *udpRelay) destination(ctx context.Context, dest M.Socksaddr) (netip.AddrPort, error) {
	if !dest.IsDomain() {
		return r.server.resolveUDP(ctx, dest)
	}
	key := dest.String()
	if ap, ok := r.resolved[key]; ok {
		return ap, nil
	}
	ap, err := r.server.resolveUDP(ctx, dest)
	if err != nil {
		return ap, err
	}
	if len(r.resolved) >= maxResolved {
		clear(r.resolved)
	}
	r.resolved[key] = ap
	return ap, nil
}

// downlink sends the UDP socket's packets back into the stream, with their source address.
func (r *udpRelay) downlink() {
	b := make([]byte, 65535)
	for {
		r.udp.SetReadDeadline(time.Now().Add(udpIdleTimeout))
		n, from, err := r.udp.ReadFromUDPAddrPort(b)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && time.Since(time.Unix(0, r.active.Load())) < udpIdleTimeout {
				continue
			}
			return
		}
		r.active.Store(time.Now().UnixNano())
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if err := r.stream.WritePacket(buf.As(b[:n]), M.SocksaddrFromNetIP(from)); err != nil {
			return
		}
	}
}

// toAddr converts a sing address to an engine address.
func toAddr(d M.Socksaddr) (protocol.Addr, error) {
	if d.IsDomain() {
		return protocol.MakeAddr(d.Fqdn, d.Port)
	}
	if d.Addr.IsValid() {
		return protocol.AddrFromAddrPort(d.AddrPort()), nil
	}
	return protocol.Addr{}, errors.New("empty destination")
}
