package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
)

// UoTMagicAddress is the destination of a stream that carries sing-box's UDP-over-TCP v2.
const UoTMagicAddress = "sp.v2.udp-over-tcp.arpa"

// SOCKS address types.
const (
	atypIPv4   = 1
	atypDomain = 3
	atypIPv6   = 4
)

// Addr is a proxy destination: a domain name or an IP address, and a port.
// Exactly one of Fqdn and IP is set.
type Addr struct {
	Fqdn string
	IP   netip.Addr
	Port uint16
}

// AddrFromAddrPort returns the destination for an IP and port.
func AddrFromAddrPort(ap netip.AddrPort) Addr {
	return Addr{IP: ap.Addr().Unmap(), Port: ap.Port()}
}

// ParseAddr parses "host:port", where host is a domain, an IPv4 address or a bracketed IPv6 address.
func ParseAddr(s string) (Addr, error) {
	host, portText, err := net.SplitHostPort(s)
	if err != nil {
		return Addr{}, fmt.Errorf("%w: %q: %v", ErrBadAddress, s, err)
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil {
		return Addr{}, fmt.Errorf("%w: %q: bad port %q", ErrBadAddress, s, portText)
	}
	return MakeAddr(host, uint16(port))
}

// MakeAddr builds a destination from a host (domain or IP literal) and a port.
func MakeAddr(host string, port uint16) (Addr, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" {
			return Addr{}, fmt.Errorf("%w: %q: zoned address", ErrBadAddress, host)
		}
		return Addr{IP: ip.Unmap(), Port: port}, nil
	}
	if host == "" || len(host) > 255 {
		return Addr{}, fmt.Errorf("%w: domain length %d", ErrBadAddress, len(host))
	}
	return Addr{Fqdn: host, Port: port}, nil
}

// IsFqdn reports whether the destination is a domain name.
func (a Addr) IsFqdn() bool { return a.Fqdn != "" }

// IsValid reports whether a holds a destination.
func (a Addr) IsValid() bool { return a.Fqdn != "" || a.IP.IsValid() }

// IsUoT reports whether the destination is the UDP-over-TCP v2 magic name.
func (a Addr) IsUoT() bool { return a.Fqdn == UoTMagicAddress }

// Host returns the domain or the IP address as text.
func (a Addr) Host() string {
	if a.Fqdn != "" {
		return a.Fqdn
	}
	if a.IP.IsValid() {
		return a.IP.String()
	}
	return ""
}

// String returns host:port.
func (a Addr) String() string {
	return net.JoinHostPort(a.Host(), strconv.Itoa(int(a.Port)))
}

// AddrPort returns the IP destination; ok is false for a domain.
func (a Addr) AddrPort() (netip.AddrPort, bool) {
	if a.Fqdn != "" || !a.IP.IsValid() {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a.IP, a.Port), true
}

// EncodedLen is the length of a's SOCKS encoding.
func (a Addr) EncodedLen() int {
	switch {
	case a.Fqdn != "":
		return 1 + 1 + len(a.Fqdn) + 2
	case a.IP.Is4():
		return 1 + 4 + 2
	default:
		return 1 + 16 + 2
	}
}

// AppendTo appends the SOCKS address encoding of a (ATYP, address, big-endian port) to b.
func (a Addr) AppendTo(b []byte) ([]byte, error) {
	switch {
	case a.Fqdn != "":
		if len(a.Fqdn) > 255 {
			return b, fmt.Errorf("%w: domain longer than 255 bytes", ErrBadAddress)
		}
		b = append(b, atypDomain, byte(len(a.Fqdn)))
		b = append(b, a.Fqdn...)
	case a.IP.Is4():
		ip := a.IP.As4()
		b = append(b, atypIPv4)
		b = append(b, ip[:]...)
	case a.IP.Is6():
		ip := a.IP.As16()
		b = append(b, atypIPv6)
		b = append(b, ip[:]...)
	default:
		return b, fmt.Errorf("%w: empty destination", ErrBadAddress)
	}
	return binary.BigEndian.AppendUint16(b, a.Port), nil
}

// ReadAddr reads one SOCKS address from r.
func ReadAddr(r io.Reader) (Addr, error) {
	var buf [1 + 1 + 255 + 2]byte
	if _, err := io.ReadFull(r, buf[:1]); err != nil {
		return Addr{}, fmt.Errorf("anytls: read address type: %w", err)
	}
	var a Addr
	switch buf[0] {
	case atypIPv4:
		if _, err := io.ReadFull(r, buf[:4+2]); err != nil {
			return Addr{}, fmt.Errorf("anytls: read IPv4 address: %w", err)
		}
		a.IP = netip.AddrFrom4([4]byte(buf[:4]))
		a.Port = binary.BigEndian.Uint16(buf[4:6])
	case atypIPv6:
		if _, err := io.ReadFull(r, buf[:16+2]); err != nil {
			return Addr{}, fmt.Errorf("anytls: read IPv6 address: %w", err)
		}
		a.IP = netip.AddrFrom16([16]byte(buf[:16])).Unmap()
		a.Port = binary.BigEndian.Uint16(buf[16:18])
	case atypDomain:
		if _, err := io.ReadFull(r, buf[:1]); err != nil {
			return Addr{}, fmt.Errorf("anytls: read domain length: %w", err)
		}
		n := int(buf[0])
		if n == 0 {
			return Addr{}, fmt.Errorf("%w: empty domain", ErrBadAddress)
		}
		if _, err := io.ReadFull(r, buf[:n+2]); err != nil {
			return Addr{}, fmt.Errorf("anytls: read domain: %w", err)
		}
		host := string(buf[:n])
		// A domain field holding an IP literal is treated as that IP, as peers do.
		if ip, err := parseIPLiteral(host); err == nil && ip.Zone() == "" {
			a.IP = ip.Unmap()
		} else {
			a.Fqdn = host
		}
		a.Port = binary.BigEndian.Uint16(buf[n : n+2])
	default:
		return Addr{}, fmt.Errorf("%w: unknown address type %d", ErrBadAddress, buf[0])
	}
	return a, nil
}

// parseIPLiteral is netip.ParseAddr for a host that is most often a domain: a host with a
// character no unzoned IP literal has fails at once, without the error value netip would make.
// (A zoned literal fails too; the caller treats it as a domain either way.)
func parseIPLiteral(host string) (netip.Addr, error) {
	for i := 0; i < len(host); i++ {
		switch c := host[i]; {
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f', 'A' <= c && c <= 'F', c == '.', c == ':':
		default:
			return netip.Addr{}, errNotIP
		}
	}
	return netip.ParseAddr(host)
}

var errNotIP = errors.New("not an IP literal")

// ParseAddrBytes decodes one SOCKS address from the start of b and returns its length.
func ParseAddrBytes(b []byte) (Addr, int, error) {
	r := &sliceReader{b: b}
	a, err := ReadAddr(r)
	if err != nil {
		return Addr{}, 0, err
	}
	return a, r.off, nil
}

type sliceReader struct {
	b   []byte
	off int
}

func (r *sliceReader) Read(p []byte) (int, error) {
	if r.off >= len(r.b) {
		return 0, io.EOF
	}
	n := copy(p, r.b[r.off:])
	r.off += n
	return n, nil
}
