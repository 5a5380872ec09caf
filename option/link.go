package option

import (
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Link is an AnyTLS share link (spec §8, anytls-go's docs/uri_scheme.md):
//
//	anytls://[password@]host[:port]/?sni=NAME&insecure=0|1#label
//
// The password is the percent-encoded user part; the port defaults to 443; an sni that is an IP
// literal means no SNI is sent; insecure=1 skips certificate verification. ParseLink also reads
// the aliases other clients write: peer= for sni=, allowInsecure= and skip-cert-verify= for
// insecure=. String writes the canonical form.
type Link struct {
	Password string
	// Host is a domain name or an IP address (an IPv6 address without brackets).
	Host string
	// Port is the server port; ParseLink sets 443 when the link has none.
	Port uint16
	// SNI is the TLS server name from sni= (or peer=); empty when the link has none.
	SNI string
	// Insecure skips certificate verification.
	Insecure bool
	// Label is the link's name (the fragment).
	Label string
	// Extra holds query parameters this package does not know, kept for String. Nil when none.
	Extra url.Values
}

// Link query parameters and their aliases, in order of precedence.
var (
	sniKeys      = []string{"sni", "peer"}
	insecureKeys = []string{"insecure", "allowInsecure", "skip-cert-verify"}
)

// ParseLink parses an anytls:// share link. Errors are *LinkError naming the wrong part; they
// never contain the password.
func ParseLink(s string) (Link, error) {
	s = strings.TrimSpace(s)
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return Link{}, &LinkError{Part: "scheme", Reason: "missing: the link must start with anytls://"}
	}
	if !strings.EqualFold(scheme, "anytls") {
		return Link{}, &LinkError{Part: "scheme", Value: scheme, Reason: "want anytls"}
	}
	var l Link
	rest, fragment, hasFragment := strings.Cut(rest, "#")
	if hasFragment {
		label, err := url.PathUnescape(fragment)
		if err != nil {
			return Link{}, &LinkError{Part: "label", Value: fragment, Reason: "bad percent-encoding"}
		}
		l.Label = label
	}
	rest, query, _ := strings.Cut(rest, "?")
	authority, path, _ := strings.Cut(rest, "/")
	if strings.Contains(path, "@") {
		return Link{}, &LinkError{Part: "password", Reason: "contains '/': percent-encode it as %2F"}
	}
	if path != "" {
		return Link{}, &LinkError{Part: "path", Value: "/" + path, Reason: "want / or nothing before the query"}
	}
	hostport := authority
	if at := strings.LastIndexByte(authority, '@'); at >= 0 {
		password, err := url.PathUnescape(authority[:at])
		if err != nil {
			return Link{}, &LinkError{Part: "password", Reason: "bad percent-encoding"}
		}
		l.Password = password
		hostport = authority[at+1:]
	}
	if err := l.parseHostPort(hostport); err != nil {
		return Link{}, err
	}
	if err := l.parseQuery(query); err != nil {
		return Link{}, err
	}
	return l, nil
}

func (l *Link) parseHostPort(s string) error {
	host, port := s, ""
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return &LinkError{Part: "host", Value: s, Reason: "missing ] after IPv6 address"}
		}
		host = s[1:end]
		after := s[end+1:]
		switch {
		case after == "":
		case after[0] == ':':
			port = after[1:]
			if port == "" {
				return &LinkError{Part: "port", Reason: "empty after ':'"}
			}
		default:
			return &LinkError{Part: "host", Value: s, Reason: "unexpected text after ]"}
		}
		ip, err := netip.ParseAddr(host)
		if err != nil || !ip.Is6() || ip.Zone() != "" {
			return &LinkError{Part: "host", Value: host, Reason: "not an IPv6 address (without zone)"}
		}
	} else {
		if strings.Count(s, ":") > 1 {
			return &LinkError{Part: "host", Value: s, Reason: "an IPv6 address must be in brackets, as [::1]:443"}
		}
		if h, p, ok := strings.Cut(s, ":"); ok {
			host, port = h, p
			if port == "" {
				return &LinkError{Part: "port", Reason: "empty after ':'"}
			}
		}
		if host == "" {
			return &LinkError{Part: "host", Reason: "missing"}
		}
		if err := checkHostName(host); err != nil {
			return &LinkError{Part: "host", Value: host, Reason: err.Error()}
		}
	}
	l.Host = host
	l.Port = DefaultPort
	if port != "" {
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 || port[0] == '+' {
			return &LinkError{Part: "port", Value: port, Reason: "want a number from 1 to 65535"}
		}
		l.Port = uint16(n)
	}
	return nil
}

type hostError string

func (e hostError) Error() string { return string(e) }

// checkHostName accepts IP literals and domain names (letters, digits, '-', '_', '.', and
// non-ASCII letters of internationalised names).
func checkHostName(host string) error {
	if _, err := netip.ParseAddr(host); err == nil {
		if strings.Contains(host, "%") {
			return hostError("zoned addresses are not supported")
		}
		return nil
	}
	if len(host) > 253 {
		return hostError("longer than 253 bytes")
	}
	if !utf8.ValidString(host) {
		return hostError("not valid UTF-8")
	}
	for _, r := range host {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
		case r >= utf8.RuneSelf && (unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.IsMark(r)):
		default:
			return hostError("character " + strconv.QuoteRune(r) + " is not allowed in a host name")
		}
	}
	return nil
}

func (l *Link) parseQuery(query string) error {
	if query == "" {
		return nil
	}
	values, err := url.ParseQuery(query)
	if err != nil {
		return &LinkError{Part: "query", Reason: err.Error()}
	}
	for _, k := range sniKeys {
		if vs, ok := values[k]; ok {
			if l.SNI == "" && len(vs) > 0 && vs[0] != "" {
				if err := checkHostName(vs[0]); err != nil {
					return &LinkError{Part: k, Value: vs[0], Reason: err.Error()}
				}
				l.SNI = vs[0]
			}
			delete(values, k)
		}
	}
	decided := false
	for _, k := range insecureKeys {
		vs, ok := values[k]
		if !ok {
			continue
		}
		delete(values, k)
		if decided || len(vs) == 0 {
			continue
		}
		b, ok := parseFlag(vs[0])
		if !ok {
			return &LinkError{Part: k, Value: vs[0], Reason: "want 0 or 1"}
		}
		l.Insecure, decided = b, true
	}
	if len(values) > 0 {
		l.Extra = values
	}
	return nil
}

func parseFlag(s string) (value, ok bool) {
	switch strings.ToLower(s) {
	case "1", "true", "yes", "on":
		return true, true
	case "0", "false", "no", "off", "":
		return false, true
	}
	return false, false
}

// Address returns host:port for dialing.
func (l Link) Address() string {
	return net.JoinHostPort(l.Host, strconv.Itoa(int(l.Port)))
}

// ServerName returns the name to verify the server's certificate against: the SNI if set, else
// the host. When it is an IP literal, TLS sends no SNI (crypto/tls does so by itself) and the
// certificate must name that IP.
func (l Link) ServerName() string {
	if l.SNI != "" {
		return l.SNI
	}
	return l.Host
}

// SendsSNI reports whether a TLS client hello for this link carries an SNI.
func (l Link) SendsSNI() bool {
	_, err := netip.ParseAddr(l.ServerName())
	return err != nil
}

// String returns the canonical link: the password percent-encoded, the port always written,
// sni= and insecure=1 only when set, unknown parameters after them in key order.
func (l Link) String() string {
	var b strings.Builder
	b.WriteString("anytls://")
	if l.Password != "" {
		b.WriteString(escapeUnreserved(l.Password))
		b.WriteByte('@')
	}
	port := l.Port
	if port == 0 {
		port = DefaultPort
	}
	b.WriteString(net.JoinHostPort(l.Host, strconv.Itoa(int(port))))
	b.WriteByte('/')
	var params []string
	if l.SNI != "" {
		params = append(params, "sni="+url.QueryEscape(l.SNI))
	}
	if l.Insecure {
		params = append(params, "insecure=1")
	}
	if len(l.Extra) > 0 {
		keys := make([]string, 0, len(l.Extra))
		for k := range l.Extra {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			if slices.Contains(sniKeys, k) || slices.Contains(insecureKeys, k) {
				continue
			}
			for _, v := range l.Extra[k] {
				params = append(params, url.QueryEscape(k)+"="+url.QueryEscape(v))
			}
		}
	}
	if len(params) > 0 {
		b.WriteByte('?')
		b.WriteString(strings.Join(params, "&"))
	}
	if l.Label != "" {
		b.WriteByte('#')
		b.WriteString(escapeUnreserved(l.Label))
	}
	return b.String()
}

// Redacted returns String with the password replaced by "xxxxx", for logs.
func (l Link) Redacted() string {
	if l.Password != "" {
		l.Password = "xxxxx"
	}
	return l.String()
}

// escapeUnreserved percent-encodes every byte outside RFC 3986's unreserved set.
func escapeUnreserved(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}
