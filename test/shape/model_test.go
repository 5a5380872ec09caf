package shape

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// This file is the test's own reading of spec §6 and §6.1, written without the engine's code:
// a scheme parser that keeps the ranges, and a checker that walks observed record sizes
// through the rules packet by packet, given each packet's framed length.

// checkItem is one item of a scheme line: a size range or a check mark.
type checkItem struct {
	check    bool
	min, max int // a size s is allowed when min <= s < max, or s == min when min == max
}

func (it checkItem) allows(s int) bool {
	if it.min == it.max {
		return s == it.min
	}
	return s >= it.min && s < it.max
}

// lowest and highest size the item can pick.
func (it checkItem) lo() int { return it.min }
func (it checkItem) hi() int {
	if it.min == it.max {
		return it.min
	}
	return it.max - 1
}

func (it checkItem) String() string {
	if it.check {
		return "c"
	}
	return fmt.Sprintf("%d-%d", it.min, it.max)
}

type schemeModel struct {
	text  string
	stop  int
	lines map[int][]checkItem
}

func parseScheme(t testing.TB, text string) *schemeModel {
	t.Helper()
	m := &schemeModel{text: text, stop: -1, lines: map[int][]checkItem{}}
	for line := range strings.SplitSeq(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("scheme line %q", line)
		}
		if k == "stop" {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatal(err)
			}
			m.stop = n
			continue
		}
		pkt, err := strconv.Atoi(k)
		if err != nil {
			t.Fatal(err)
		}
		var items []checkItem
		for item := range strings.SplitSeq(v, ",") {
			if item == "c" {
				items = append(items, checkItem{check: true})
				continue
			}
			a, b, _ := strings.Cut(item, "-")
			lo, err1 := strconv.Atoi(a)
			hi, err2 := strconv.Atoi(b)
			if err1 != nil || err2 != nil {
				t.Fatalf("scheme item %q", item)
			}
			items = append(items, checkItem{min: lo, max: hi})
		}
		m.lines[pkt] = items
	}
	if m.stop < 0 {
		t.Fatal("scheme without stop")
	}
	return m
}

// shapeRules are the padding rules an implementation follows.
type shapeRules struct {
	name string
	// pureExtra: a pure-padding record asked to be s bytes is s+pureExtra bytes (0 in the spec;
	// deployed clients do not count the cmdWaste header: 7).
	pureExtra int
	// pureMin: the smallest pure-padding record (the spec: a frame header, 7).
	pureMin int
	// minWaste: the smallest cmdWaste frame appended after the last data of a packet (the spec:
	// a bare header, 7; deployed clients append one only with at least 1 byte of data: 8).
	minWaste int
	// controlWaste: a control-only packet that the scheme does not pad (at or after stop, or
	// with no line) carries a cmdWaste frame of 0..255 data bytes in the same record.
	controlWaste bool
}

var (
	specRules     = shapeRules{name: "spec §6.1 (ours)", pureExtra: 0, pureMin: 7, minWaste: 7, controlWaste: true}
	deployedRules = shapeRules{name: "deployed (sing-anytls, mihomo)", pureExtra: 7, pureMin: 0, minWaste: 8}
	// unpaddedRules: nothing is padded (a server without downstream padding).
	unpaddedRules = shapeRules{name: "unpadded"}
)

// packet is one write of the session, as the checker needs it.
type packet struct {
	n       int  // framed length: frame headers and data of every frame in the packet
	control bool // control frames only (no stream data)
	what    string
}

func dataPacket(what string, n int) packet    { return packet{n: n, what: what} }
func controlPacket(what string, n int) packet { return packet{n: n, control: true, what: what} }

// consume checks the records a packet numbered k of length p.n produced, starting at
// recs[i], and returns the index after them. padded tells whether the packet is padded
// (the client pads, a server only with downstream padding).
func (m *schemeModel) consume(r shapeRules, padded bool, k int, p packet, recs []int, i int) (int, error) {
	next := func() (int, error) {
		if i >= len(recs) {
			return 0, fmt.Errorf("packet %d (%s, %d bytes): records end early", k, p.what, p.n)
		}
		i++
		return recs[i-1], nil
	}
	fail := func(format string, args ...any) (int, error) {
		return 0, fmt.Errorf("packet %d (%s, %d bytes), record %d: %s", k, p.what, p.n, i-1, fmt.Sprintf(format, args...))
	}
	line, hasLine := m.lines[k]
	if k == 0 {
		// Authentication: 34 bytes and padding0 from line 0, in one record.
		rec, err := next()
		if err != nil {
			return 0, err
		}
		pad := rec - 34
		switch {
		case m.stop > 0 && hasLine && len(line) == 1 && line[0].allows(pad):
		case (m.stop == 0 || !hasLine) && pad == 0:
		default:
			return fail("authentication record of %d bytes: padding0 %d not allowed by line 0 %v", rec, pad, line)
		}
		return i, nil
	}
	if !padded || k >= m.stop || !hasLine {
		rec, err := next()
		if err != nil {
			return 0, err
		}
		if p.control && padded && r.controlWaste {
			if rec < p.n+7 || rec > p.n+7+255 {
				return fail("control-only packet not padded by the scheme: record of %d bytes, want %d + a cmdWaste frame of 7..262", rec, p.n)
			}
			return i, nil
		}
		if rec != p.n {
			return fail("unpadded packet: record of %d bytes, want %d", rec, p.n)
		}
		return i, nil
	}
	n := p.n
	for _, it := range line {
		if it.check {
			if n == 0 {
				break
			}
			continue
		}
		rec, err := next()
		if err != nil {
			return 0, err
		}
		switch {
		case n > 0 && rec < n: // all data
			if !it.allows(rec) {
				return fail("data record of %d bytes outside %v", rec, it)
			}
			n -= rec
		case n > 0 && rec == n: // the data ends here and no cmdWaste frame fitted
			if it.hi() < n || it.lo() >= n+r.minWaste {
				return fail("record of the last %d bytes of data: %v leaves room for a cmdWaste frame (>= %d bytes) or is smaller", n, it, r.minWaste)
			}
			n = 0
		case n > 0: // the data ends here, a cmdWaste frame fills the record
			if !it.allows(rec) {
				return fail("record with the last %d bytes of data is %d bytes, outside %v", n, rec, it)
			}
			if rec-n < r.minWaste {
				return fail("record with the last %d bytes of data is %d bytes: a %d-byte remainder cannot be a cmdWaste frame", n, rec, rec-n)
			}
			n = 0
		default: // pure padding
			// the record is max(s+pureExtra, pureMin) for the size s picked
			ok := rec > r.pureMin && it.allows(rec-r.pureExtra) ||
				rec == r.pureMin && it.lo()+r.pureExtra <= r.pureMin
			if !ok {
				return fail("pure-padding record of %d bytes, want %v (+%d, at least %d)", rec, it, r.pureExtra, r.pureMin)
			}
		}
	}
	if n > 0 {
		rec, err := next()
		if err != nil {
			return 0, err
		}
		if rec != n {
			return fail("data left after the list: record of %d bytes, want %d as is", rec, n)
		}
	}
	return i, nil
}

// check walks the whole list of records through the packets, numbered from first, and
// returns the records of each packet.
func (m *schemeModel) check(r shapeRules, padded bool, first int, pkts []packet, recs []int) ([][]int, error) {
	i := 0
	var groups [][]int
	for j, p := range pkts {
		start := i
		var err error
		if i, err = m.consume(r, padded, first+j, p, recs, i); err != nil {
			return groups, fmt.Errorf("%s: %w (records %v)", r.name, err, recs)
		}
		groups = append(groups, recs[start:i])
	}
	if i != len(recs) {
		return groups, fmt.Errorf("%s: %d records left after the last packet: %v (records %v)", r.name, len(recs)-i, recs[i:], recs)
	}
	return groups, nil
}

// frameGroup is a run of frames as the checker sees it when packet boundaries are unknown.
type frameGroupItem struct {
	n       int
	control bool
}

// checkGrouped is check for a direction whose packet boundaries are unknown (a server's
// writes): it searches for a grouping of the frames, in order, into packets that explains the
// records. A packet holds whole frames, and a frame of stream data never shares a packet
// with a control frame.
func (m *schemeModel) checkGrouped(r shapeRules, padded bool, first int, frames []frameGroupItem, recs []int) ([]packet, error) {
	type key struct{ f, i, k int }
	dead := map[key]bool{}
	var path []packet
	var lastErr error
	var walk func(f, i, k int) bool
	walk = func(f, i, k int) bool {
		if f == len(frames) {
			if i == len(recs) {
				return true
			}
			lastErr = fmt.Errorf("%d records left after the last frame: %v", len(recs)-i, recs[i:])
			return false
		}
		if dead[key{f, i, k}] {
			return false
		}
		n := 0
		control := frames[f].control
		for g := f; g < len(frames); g++ {
			if frames[g].control != control {
				if !control {
					break
				}
				// Control frames may lead a data packet (our server's cmdSYNACK rides with
				// the stream's first data): the packet is then a data packet.
				control = false
			}
			n += frames[g].n
			p := packet{n: n, control: control, what: fmt.Sprintf("frames %d..%d", f, g)}
			j, err := m.consume(r, padded, k, p, recs, i)
			if err != nil {
				lastErr = err
				continue
			}
			path = append(path, p)
			if walk(g+1, j, k+1) {
				return true
			}
			path = path[:len(path)-1]
		}
		dead[key{f, i, k}] = true
		return false
	}
	if !walk(0, 0, first) {
		return nil, fmt.Errorf("%s: no grouping of the frames %v explains the records %v; last mismatch: %v", r.name, frames, recs, lastErr)
	}
	return path, nil
}

// TestCheckerRules pins the checker down with hand-computed cases, so that a wrong checker
// cannot pass a wrong engine.
func TestCheckerRules(t *testing.T) {
	m := parseScheme(t, "stop=5\n0=30-30\n1=20-20,30-30,c,40-40,3-3\n2=100-200\n3=9-9,50-50")
	for _, c := range []struct {
		rules shapeRules
		pkts  []packet
		recs  []int
		ok    bool
	}{
		{specRules, []packet{dataPacket("auth", 0)}, []int{64}, true},
		{specRules, []packet{dataPacket("auth", 0)}, []int{63}, false},
		// packet 1: 10 bytes of data + cmdWaste to 20, pure padding 30, c stops.
		{specRules, []packet{{}, dataPacket("d", 10)}, []int{64, 20, 30}, true},
		{deployedRules, []packet{{}, dataPacket("d", 10)}, []int{64, 20, 37}, true},
		{specRules, []packet{{}, dataPacket("d", 10)}, []int{64, 20, 37}, false},
		{deployedRules, []packet{{}, dataPacket("d", 10)}, []int{64, 20, 30}, false},
		// 13 bytes: room for exactly an empty cmdWaste frame in the spec, not when deployed.
		{specRules, []packet{{}, dataPacket("d", 13)}, []int{64, 20, 30}, true},
		{deployedRules, []packet{{}, dataPacket("d", 13)}, []int{64, 13, 37}, true},
		{specRules, []packet{{}, dataPacket("d", 13)}, []int{64, 13, 30}, false},
		// 15 bytes: 5 bytes of room hold no frame.
		{specRules, []packet{{}, dataPacket("d", 15)}, []int{64, 15, 30}, true},
		// 60 bytes: c passes, 10 + waste to 40, 3-3 pure padding becomes 7 (spec) or 10.
		{specRules, []packet{{}, dataPacket("d", 60)}, []int{64, 20, 30, 40, 7}, true},
		{deployedRules, []packet{{}, dataPacket("d", 60)}, []int{64, 20, 30, 40, 10}, true},
		{specRules, []packet{{}, dataPacket("d", 60)}, []int{64, 20, 30, 40, 3}, false},
		// data left after the list goes out as is.
		{specRules, []packet{{}, dataPacket("d", 100)}, []int{64, 20, 30, 40, 3, 7}, true},
		{specRules, []packet{{}, dataPacket("d", 100)}, []int{64, 20, 30, 40, 10}, false},
		// ranges: 100 <= s < 200.
		{specRules, []packet{{}, dataPacket("d", 10), dataPacket("d", 50)}, []int{64, 20, 30, 199}, true},
		{specRules, []packet{{}, dataPacket("d", 10), dataPacket("d", 50)}, []int{64, 20, 30, 200}, false},
		{specRules, []packet{{}, dataPacket("d", 10), dataPacket("d", 150)}, []int{64, 20, 30, 150}, true},
		{specRules, []packet{{}, dataPacket("d", 10), dataPacket("d", 150)}, []int{64, 20, 30, 120, 30}, true},
		// 9-9 then 50-50: a 8-byte packet is one 8-byte record (1 byte of room) then pure padding.
		{specRules, []packet{{}, dataPacket("d", 10), dataPacket("d", 150), dataPacket("d", 8)}, []int{64, 20, 30, 150, 8, 50}, true},
		// at and after stop: as is; a control-only packet carries a cmdWaste frame.
		{specRules, []packet{{}, dataPacket("d", 10), dataPacket("d", 150), dataPacket("d", 8), dataPacket("d", 9), dataPacket("d", 5)}, []int{64, 20, 30, 150, 8, 50, 9, 5}, true},
		{specRules, []packet{{}, dataPacket("d", 10), dataPacket("d", 150), dataPacket("d", 8), dataPacket("d", 9), controlPacket("FIN", 7)}, []int{64, 20, 30, 150, 8, 50, 9, 7}, false},
		{specRules, []packet{{}, dataPacket("d", 10), dataPacket("d", 150), dataPacket("d", 8), dataPacket("d", 9), controlPacket("FIN", 7)}, []int{64, 20, 30, 150, 8, 50, 9, 14}, true},
		{deployedRules, []packet{{}, dataPacket("d", 10), dataPacket("d", 150), dataPacket("d", 8), dataPacket("d", 9), controlPacket("FIN", 7)}, []int{64, 20, 37, 150, 8, 57, 9, 7}, true},
	} {
		_, err := m.check(c.rules, true, 0, c.pkts, c.recs)
		if (err == nil) != c.ok {
			t.Errorf("%s, records %v: err = %v, want ok = %v", c.rules.name, c.recs, err, c.ok)
		}
	}
	// The grouping search finds packet boundaries: two control frames in one packet or two.
	frames := []frameGroupItem{{31, true}, {7, true}, {57, false}}
	down := parseScheme(t, "stop=4\n1=100-100\n2=100-100\n3=100-100")
	if got, err := down.checkGrouped(specRules, true, 1, frames, []int{100, 100, 100}); err != nil || len(got) != 3 {
		t.Errorf("three packets: %v, %v", got, err)
	}
	if got, err := down.checkGrouped(specRules, true, 1, frames, []int{100, 100}); err != nil || len(got) != 2 {
		t.Errorf("two packets: %v, %v", got, err)
	}
	if _, err := down.checkGrouped(specRules, true, 1, frames, []int{100, 100, 57}); err == nil {
		t.Error("an unpadded data packet before stop passed")
	}
}
