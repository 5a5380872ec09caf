package mihomohost

import (
	"net/netip"
	"testing"
	"time"

	"github.com/anytls-engine/anytls/protocol"

	"github.com/metacubex/mihomo/common/structure"
	M "github.com/metacubex/sing/common/metadata"
)

func TestDurationThroughMihomosDecoder(t *testing.T) {
	type opts struct {
		D Duration `proxy:"d,omitempty"`
	}
	dec := structure.NewDecoder(structure.Option{TagName: "proxy", WeaklyTypedInput: true, KeyReplacer: structure.DefaultKeyReplacer})
	for _, tc := range []struct {
		in   any
		want time.Duration
	}{
		{"10s", 10 * time.Second},
		{"1m30s", 90 * time.Second},
		{"-1s", -time.Second},
		{15, 15 * time.Second},
		{"2.5", 2500 * time.Millisecond},
		{0, 0},
	} {
		var o opts
		if err := dec.Decode(map[string]any{"d": tc.in}, &o); err != nil {
			t.Fatalf("%v: %v", tc.in, err)
		}
		if time.Duration(o.D) != tc.want {
			t.Errorf("%v: %v, want %v", tc.in, time.Duration(o.D), tc.want)
		}
	}
	for _, bad := range []any{"soon", "10 parsecs", "NaN", "1e300"} {
		var o opts
		if err := dec.Decode(map[string]any{"d": bad}, &o); err == nil {
			t.Errorf("%v accepted as %v", bad, time.Duration(o.D))
		}
	}
	if b, _ := Duration(90 * time.Second).MarshalText(); string(b) != "1m30s" {
		t.Errorf("MarshalText: %s", b)
	}
}

func TestAddrConversions(t *testing.T) {
	for _, s := range []M.Socksaddr{
		{Fqdn: "example.com", Port: 443},
		{Addr: netip.MustParseAddr("192.0.2.1"), Port: 80},
		{Addr: netip.MustParseAddr("2001:db8::1"), Port: 8443},
		{Fqdn: protocol.UoTMagicAddress},
	} {
		a, err := Addr(s)
		if err != nil {
			t.Fatalf("%v: %v", s, err)
		}
		if back := Socksaddr(a); back != s {
			t.Errorf("%v -> %v -> %v", s, a, back)
		}
	}
	if a, err := Addr(M.Socksaddr{Addr: netip.MustParseAddr("::ffff:192.0.2.1"), Port: 1}); err != nil || a.IP != netip.MustParseAddr("192.0.2.1") {
		t.Errorf("4-in-6: %v, %v", a, err)
	}
	if _, err := Addr(M.Socksaddr{}); err == nil {
		t.Error("empty destination accepted")
	}
}
