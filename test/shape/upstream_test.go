package shape

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/anytls-engine/anytls/protocol"
)

// Writes stay below Go's TLS dynamic record size (about 1200 bytes of plaintext in the first
// records of a connection), so that every write the session makes is one TLS record.

// defaultWrites look like the start of a TLS-in-TLS connection: a ClientHello, the client's
// second flight, then application data.
var defaultWrites = []int{517, 80, 40, 700, 1, 300, 1000}

// fixedScheme has one size per item (a-a), so every record is known: check marks with and
// without data left, data left after the list, a 9-byte record, pure padding below 7 bytes, a
// packet with no line before stop, control packets in and after the padded range.
const fixedScheme = `stop=12
0=20-20
1=150-150
2=40-40,c,300-300,c,60-60
3=9-9,100-100
4=30-30,20-20
5=200-200,5-5
6=3-3,c,50-50
7=c,80-80
8=100-100,c,100-100
9=64-64
11=90-90,90-90`

// fixedStreams run on one session: the first stream opens it, the others reuse it.
var fixedStreams = [][]int{{100, 1, 93, 10, 2}, {30, 60}, {80, 10}}

// rangeScheme mixes ranges, check marks and a short stop.
const rangeScheme = `stop=6
0=10-50
1=50-200,c,10-20
2=100-300,c,200-400
3=5-10,c,300-600,c,20-40
4=1-30,1-30,1-30
5=400-800`

var rangeStreams = [][]int{{250, 3, 500, 60, 20}, {100}}

// implementation says how a client lays out the packets of its streams.
type implementation struct {
	name string
	// reusedSynWithData: on a reused session the SYN and the address go out with the first
	// data (ours); otherwise the SYN is a packet of its own and the address another (deployed).
	reusedSynWithData bool
	rules             shapeRules
}

var (
	ours     = implementation{name: "ours", reusedSynWithData: true, rules: specRules}
	singImpl = implementation{name: "sing-anytls", rules: deployedRules}
	mihomo   = implementation{name: "mihomo", rules: deployedRules}
)

// expectedPackets returns the packets a client sends for streams run one after another on one
// session (each stream: open, one write per size, close), with the settings frame of
// settings bytes. Ours has alternatives: if the caller's first write on a reused session comes
// later than the engine's SYN coalescing delay, the SYN and address go out alone first.
func (im implementation) expectedPackets(settings int, streams [][]int) [][]packet {
	alts := [][]packet{{dataPacket("auth (34+padding0)", 34)}}
	add := func(ps ...packet) {
		for i := range alts {
			alts[i] = append(alts[i], ps...)
		}
	}
	for si, writes := range streams {
		rest := writes
		switch {
		case si == 0:
			add(dataPacket("settings+SYN+PSH(addr)", settings+7+7+targetLen))
		case im.reusedSynWithData && len(writes) > 0:
			var next [][]packet
			for _, a := range alts {
				together := append(append([]packet(nil), a...), dataPacket("SYN+PSH(addr)+PSH", 7+7+targetLen+7+writes[0]))
				alone := append(append([]packet(nil), a...), controlPacket("SYN+PSH(addr)", 7+7+targetLen), dataPacket("PSH", 7+writes[0]))
				next = append(next, together, alone)
			}
			alts = next
			rest = writes[1:]
		default:
			add(controlPacket("SYN", 7), dataPacket("PSH(addr)", 7+targetLen))
		}
		for _, n := range rest {
			add(dataPacket("PSH", 7+n))
		}
		add(controlPacket("FIN", 7))
	}
	return alts
}

// checkAlternatives checks recs against each alternative and returns the per-packet records of
// the first that fits, with the index of that alternative.
func checkAlternatives(m *schemeModel, r shapeRules, alts [][]packet, recs []int) ([]packet, [][]int, int, error) {
	var firstErr error
	for i, pkts := range alts {
		groups, err := m.check(r, true, 0, pkts, recs)
		if err == nil {
			return pkts, groups, i, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return nil, nil, -1, firstErr
}

// table formats the records of each packet, for the log and the report.
func table(pkts []packet, groups [][]int) string {
	var b strings.Builder
	for i, g := range groups {
		fmt.Fprintf(&b, "  packet %2d  %-24s %5d bytes -> records %v\n", i, pkts[i].what, pkts[i].n, g)
	}
	return b.String()
}

// runUpstream runs streams through client c on one fresh session (the i-th connection of the
// rig), then checks the client's records against scheme with the rules of im (want true: they
// must fit) and with the spec's rules (logged: where a deployed client differs).
func runUpstream(t *testing.T, r *rig, i int, c shapeClient, im implementation, scheme string, streams [][]int) [][]int {
	t.Helper()
	for _, w := range streams {
		runStream(t, c, w)
	}
	c.close()
	s := r.session(t, i)
	_, frames := clientFrames(t, s.reads)
	alts := im.expectedPackets(settingsLen(t, frames), streams)
	m := parseScheme(t, scheme)
	pkts, groups, alt, err := checkAlternatives(m, im.rules, alts, s.up)
	if err != nil {
		t.Fatalf("%s client, %s rules: %v", im.name, im.rules.name, err)
	}
	if alt != 0 {
		t.Logf("%s: a reused session's SYN went out before the first data (alternative %d): the caller's write came after the coalescing delay", im.name, alt)
	}
	t.Logf("%s client, records fit %s:\n%s", im.name, im.rules.name, table(pkts, groups))
	if im.rules != specRules {
		if _, _, _, err := checkAlternatives(m, specRules, alts, s.up); err != nil {
			t.Logf("%s client against the spec's rules: %v", im.name, err)
		} else {
			t.Logf("%s client happens to fit the spec's rules too in this run", im.name)
		}
	}
	return groups
}

// TestOurClientRecordSizes checks our client's records on the wire against the scheme: exactly
// with a fixed-size scheme, within bounds with ranges and with the default scheme, for a new
// session and for reused ones.
func TestOurClientRecordSizes(t *testing.T) {
	t.Run("fixed", func(t *testing.T) {
		r := startRig(t, rigConfig{scheme: fixedScheme})
		groups := runUpstream(t, r, 0, newOurClient(t, r.Addr(), fixedScheme), ours, fixedScheme, fixedStreams)
		// Hand-computed from the scheme, independent of the checker (settings: 84 bytes with
		// v, client=, padding-md5 and the half-close key; packet 1 is 84+7+14 = 105).
		want := [][]int{{54}, {150}, {40, 300}, {8, 100}, {30, 20, 50}, {200, 7}, {3, 50}, {80},
			{100}, {64, 3}, nil, {90, 90}, {17}, nil}
		if len(groups) != len(want) {
			// A reused session's SYN went out alone (the checker, exact with this scheme,
			// accepted that layout); the hand-computed table is for the coalesced one.
			t.Logf("reused SYN not coalesced in this run; hand-computed table not compared")
			return
		}
		for i, w := range want {
			if w == nil { // a FIN with a random cmdWaste frame
				if len(groups[i]) != 1 || groups[i][0] < 14 || groups[i][0] > 14+255 {
					t.Errorf("packet %d (control) = %v, want one record of 14..269 bytes", i, groups[i])
				}
				continue
			}
			if fmt.Sprint(groups[i]) != fmt.Sprint(w) {
				t.Errorf("packet %d = %v, want %v", i, groups[i], w)
			}
		}
	})
	t.Run("ranges", func(t *testing.T) {
		r := startRig(t, rigConfig{scheme: rangeScheme})
		for i := range 4 {
			runUpstream(t, r, i, newOurClient(t, r.Addr(), rangeScheme), ours, rangeScheme, rangeStreams)
		}
	})
	t.Run("default", func(t *testing.T) {
		r := startRig(t, rigConfig{})
		for i := range 3 {
			runUpstream(t, r, i, newOurClient(t, r.Addr(), ""), ours, protocol.DefaultPaddingSchemeText, [][]int{defaultWrites, {200, 50}})
		}
	})
}

// peerFactory builds a deployed client for the server at addr.
type peerFactory struct {
	impl implementation
	make func(t *testing.T, addr string) shapeClient
}

var peers = []peerFactory{
	{singImpl, func(t *testing.T, addr string) shapeClient { return newSingClient(t, addr) }},
	{mihomo, func(t *testing.T, addr string) shapeClient { return newMihomoClient(t, addr) }},
}

// TestPeerClientRecordSizes records the deployed clients' records with the default scheme and
// with a fixed-size scheme our server pushes, and checks them against the deployed rules (so
// that the differences listed in the notes are measured facts): pure-padding records 7 bytes
// larger than the scheme, no cmdWaste frame where only its header would fit, a bare SYN and a
// separate address packet on a reused session, bare 7-byte FIN records after stop. What
// differs from the spec's rules is logged.
func TestPeerClientRecordSizes(t *testing.T) {
	for _, p := range peers {
		t.Run(p.impl.name, func(t *testing.T) {
			t.Run("default", func(t *testing.T) {
				r := startRig(t, rigConfig{})
				runUpstream(t, r, 0, p.make(t, r.Addr()), p.impl, protocol.DefaultPaddingSchemeText, [][]int{defaultWrites, {200, 50}})
			})
			t.Run("fixed", func(t *testing.T) {
				// Deployed clients take a pushed scheme mid-session; a second session, opened
				// while the first is busy, uses it from its first packet.
				r := startRig(t, rigConfig{scheme: fixedScheme})
				c := p.make(t, r.Addr())
				ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
				defer cancel()
				busy, err := c.open(ctx)
				if err != nil {
					t.Fatal(err)
				}
				r.waitPush(t, 0, busy)
				groups := runUpstream(t, r, 1, c, p.impl, fixedScheme, fixedStreams)
				busy.Close()
				// Hand-computed from the deployed code for this scheme (settings differ in
				// length between the two, but packet 1 fits the 150-byte record either way).
				want := [][]int{{54}, {150}, {40, 300}, {8, 107}, {30, 20, 50}, {200, 12}, {3, 50}, {80},
					{100}, {64}, {37}, {90, 97}, {7}, // second stream: SYN, address, data, data, FIN
					{7}, {14}, {87}, {17}, {7}} // third stream, after stop: bare SYN, address, data, data, FIN
				if fmt.Sprint(groups) != fmt.Sprint(want) {
					t.Errorf("%s records per packet\n got %v\nwant %v", p.impl.name, groups, want)
				}
			})
		})
	}
}
