package option

import (
	"errors"
	"net/url"
	"reflect"
	"strings"
	"testing"
)

func TestParseLink(t *testing.T) {
	tests := []struct {
		in   string
		want Link
	}{
		{"anytls://pw@example.com/?sni=real.example&insecure=1#my%20server",
			Link{Password: "pw", Host: "example.com", Port: 443, SNI: "real.example", Insecure: true, Label: "my server"}},
		{"anytls://pw@example.com:8443",
			Link{Password: "pw", Host: "example.com", Port: 8443}},
		{"ANYTLS://example.com/",
			Link{Host: "example.com", Port: 443}},
		{"anytls://p%40ss%3Aw%2Fo%2Brd%20@1.2.3.4:443/?insecure=0",
			Link{Password: "p@ss:w/o+rd ", Host: "1.2.3.4", Port: 443}},
		{"anytls://pw@[2001:db8::1]:9443/?peer=alias.example&allowInsecure=1",
			Link{Password: "pw", Host: "2001:db8::1", Port: 9443, SNI: "alias.example", Insecure: true}},
		{"anytls://pw@[::1]/?skip-cert-verify=true",
			Link{Password: "pw", Host: "::1", Port: 443, Insecure: true}},
		// sni= wins over peer=, insecure= over the aliases.
		{"anytls://pw@h.example/?peer=b.example&sni=a.example&allowInsecure=1&insecure=0",
			Link{Password: "pw", Host: "h.example", Port: 443, SNI: "a.example"}},
		// An unencoded colon in the user part is part of the password.
		{"anytls://user:pass@h.example:1",
			Link{Password: "user:pass", Host: "h.example", Port: 1}},
		// Unknown parameters are kept.
		{"anytls://pw@h.example/?fp=chrome&alpn=h2",
			Link{Password: "pw", Host: "h.example", Port: 443, Extra: url.Values{"fp": {"chrome"}, "alpn": {"h2"}}}},
		{"  anytls://pw@h.example/?sni=10.0.0.1  ",
			Link{Password: "pw", Host: "h.example", Port: 443, SNI: "10.0.0.1"}},
		{"anytls://pw@bücher.example/",
			Link{Password: "pw", Host: "bücher.example", Port: 443}},
	}
	for _, tt := range tests {
		got, err := ParseLink(tt.in)
		if err != nil {
			t.Errorf("ParseLink(%q): %v", tt.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseLink(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

func TestParseLinkErrors(t *testing.T) {
	tests := []struct {
		in, part string
	}{
		{"example.com:443", "scheme"},
		{"vless://pw@example.com", "scheme"},
		{"anytls://pw@", "host"},
		{"anytls://pw@:443", "host"},
		{"anytls://pw@exa mple.com", "host"},
		{"anytls://pw@2001:db8::1", "host"},
		{"anytls://pw@[2001:db8::1", "host"},
		{"anytls://pw@[example.com]:443", "host"},
		{"anytls://pw@[fe80::1%25eth0]:443", "host"},
		{"anytls://pw@[::1]x", "host"},
		{"anytls://pw@example.com:", "port"},
		{"anytls://pw@example.com:0", "port"},
		{"anytls://pw@example.com:65536", "port"},
		{"anytls://pw@example.com:https", "port"},
		{"anytls://pw@[::1]:", "port"},
		{"anytls://p%zzw@example.com", "password"},
		{"anytls://pa/ss@example.com", "password"},
		{"anytls://pw@example.com/path", "path"},
		{"anytls://pw@example.com/?a=%zz", "query"},
		{"anytls://pw@example.com/?insecure=maybe", "insecure"},
		{"anytls://pw@example.com/?allowInsecure=2", "allowInsecure"},
		{"anytls://pw@example.com/?sni=bad%20name", "sni"},
		{"anytls://pw@example.com/?peer=a/b", "peer"},
		{"anytls://pw@example.com/#%zz", "label"},
	}
	for _, tt := range tests {
		_, err := ParseLink(tt.in)
		var le *LinkError
		if !errors.As(err, &le) {
			t.Errorf("ParseLink(%q): error %v, want a *LinkError", tt.in, err)
			continue
		}
		if le.Part != tt.part {
			t.Errorf("ParseLink(%q): error names %q (%v), want %q", tt.in, le.Part, err, tt.part)
		}
		if !errors.Is(err, ErrBadLink) {
			t.Errorf("ParseLink(%q): error does not match ErrBadLink", tt.in)
		}
		if !strings.Contains(err.Error(), tt.part) {
			t.Errorf("ParseLink(%q): message %q does not name %q", tt.in, err, tt.part)
		}
	}
}

func TestParseLinkErrorHidesPassword(t *testing.T) {
	for _, in := range []string{
		"anytls://s3cret%zz@example.com",
		"anytls://s3cret@example.com:99999",
		"anytls://s3cret@exa mple.com",
		"anytls://s3cret@example.com/?insecure=x",
	} {
		_, err := ParseLink(in)
		if err == nil {
			t.Fatalf("ParseLink(%q) succeeded", in)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("ParseLink(%q): error %q shows the password", in, err)
		}
	}
}

func TestLinkString(t *testing.T) {
	tests := []struct {
		link Link
		want string
	}{
		{Link{Password: "pw", Host: "example.com", Port: 443, SNI: "example.com", Insecure: true, Label: "my server"},
			"anytls://pw@example.com:443/?sni=example.com&insecure=1#my%20server"},
		{Link{Password: "p@ss:w/o+rd ", Host: "2001:db8::1", Port: 8443},
			"anytls://p%40ss%3Aw%2Fo%2Brd%20@[2001:db8::1]:8443/"},
		{Link{Host: "h.example"}, "anytls://h.example:443/"},
		{Link{Password: "x", Host: "h.example", Port: 1, Extra: url.Values{"b": {"2"}, "a": {"1 2"}}},
			"anytls://x@h.example:1/?a=1+2&b=2"},
	}
	for _, tt := range tests {
		if got := tt.link.String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
	}
}

func TestLinkCanonicalFromAliases(t *testing.T) {
	l, err := ParseLink("anytls://pw@h.example/?peer=n.example&skip-cert-verify=1#x")
	if err != nil {
		t.Fatal(err)
	}
	const want = "anytls://pw@h.example:443/?sni=n.example&insecure=1#x"
	if got := l.String(); got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if got := l.Redacted(); strings.Contains(got, "pw@") || !strings.Contains(got, "xxxxx@") {
		t.Errorf("Redacted() = %q", got)
	}
}

func TestLinkServerName(t *testing.T) {
	tests := []struct {
		link     string
		name     string
		sendsSNI bool
		address  string
	}{
		{"anytls://pw@1.2.3.4:8443/?sni=real.example", "real.example", true, "1.2.3.4:8443"},
		{"anytls://pw@h.example", "h.example", true, "h.example:443"},
		{"anytls://pw@h.example/?sni=10.0.0.1", "10.0.0.1", false, "h.example:443"},
		{"anytls://pw@[::1]:1", "::1", false, "[::1]:1"},
	}
	for _, tt := range tests {
		l, err := ParseLink(tt.link)
		if err != nil {
			t.Fatal(err)
		}
		if l.ServerName() != tt.name || l.SendsSNI() != tt.sendsSNI || l.Address() != tt.address {
			t.Errorf("%s: ServerName %q SendsSNI %v Address %q, want %q %v %q", tt.link,
				l.ServerName(), l.SendsSNI(), l.Address(), tt.name, tt.sendsSNI, tt.address)
		}
	}
}

// FuzzParseLink: ParseLink never panics, and a link it accepts survives String and ParseLink
// unchanged.
func FuzzParseLink(f *testing.F) {
	for _, s := range []string{
		"anytls://pw@example.com/?sni=example.com&insecure=1#label",
		"anytls://p%40ss@[2001:db8::1]:8443/?peer=a.example&allowInsecure=1",
		"anytls://h.example",
		"anytls://user:pass@h.example:1/?skip-cert-verify=true&fp=chrome#%E2%9C%93",
		"anytls://pw@1.2.3.4:443/?sni=10.0.0.1&a&=b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseLink(s)
		if err != nil {
			var le *LinkError
			if !errors.As(err, &le) {
				t.Fatalf("ParseLink(%q): error %T is not a *LinkError", s, err)
			}
			return
		}
		if l.Host == "" || l.Port == 0 {
			t.Fatalf("ParseLink(%q) accepted an empty host or port: %+v", s, l)
		}
		out := l.String()
		l2, err := ParseLink(out)
		if err != nil {
			t.Fatalf("ParseLink(%q) = %+v; its String %q does not parse: %v", s, l, out, err)
		}
		if !reflect.DeepEqual(l, l2) {
			t.Fatalf("round trip of %q through %q: %+v != %+v", s, out, l, l2)
		}
		if out2 := l2.String(); out2 != out {
			t.Fatalf("String not stable: %q then %q", out, out2)
		}
	})
}
