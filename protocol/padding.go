package protocol

import (
	"crypto/md5"
	"encoding/hex"
	"math/rand/v2"
	"strconv"
	"strings"
)

// DefaultPaddingSchemeText is the protocol's default padding scheme (spec §6).
const DefaultPaddingSchemeText = `stop=8
0=30-30
1=100-400
2=400-500,c,500-1000,c,500-1000,c,500-1000,c,500-1000
3=9-9,500-1000
4=500-1000
5=500-1000
6=500-1000
7=500-1000`

// CheckMark in a record size list means: stop here if no user data is left.
const CheckMark = -1

// maxRecordSize bounds a size in a scheme (padding0 is a uint16).
const maxRecordSize = 65535

// PaddingScheme is a parsed padding scheme. It is immutable and safe to share.
type PaddingScheme struct {
	raw   []byte
	md5   string
	stop  int
	lines [][]sizeRange // index = packet number; nil = no line
}

type sizeRange struct{ min, max int } // min == CheckMark: a check mark

// DefaultPaddingScheme is the parsed default scheme.
var DefaultPaddingScheme = MustParsePaddingScheme(DefaultPaddingSchemeText)

// MustParsePaddingScheme is ParsePaddingScheme that panics; for constants only.
func MustParsePaddingScheme(text string) *PaddingScheme {
	p, err := ParsePaddingScheme([]byte(text))
	if err != nil {
		panic(err)
	}
	return p
}

// ParsePaddingScheme parses and validates a scheme. Errors are *PaddingSchemeError naming the line.
// The md5 is taken over the exact bytes given.
func ParsePaddingScheme(text []byte) (*PaddingScheme, error) {
	sum := md5.Sum(text)
	p := &PaddingScheme{raw: append([]byte(nil), text...), md5: hex.EncodeToString(sum[:]), stop: -1}
	seen := map[string]int{}
	for i, line := range strings.Split(string(text), "\n") {
		lineNo := i + 1
		line = strings.TrimRight(line, "\r")
		if strings.TrimSpace(line) == "" {
			continue
		}
		bad := func(reason string) error {
			return &PaddingSchemeError{Line: lineNo, Text: line, Reason: reason}
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			return nil, bad("expected key=value")
		}
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		if prev, dup := seen[key]; dup {
			return nil, bad("key " + strconv.Quote(key) + " already set on line " + strconv.Itoa(prev))
		}
		seen[key] = lineNo
		if key == "stop" {
			n, err := strconv.Atoi(value)
			if err != nil || n < 0 || n > 1024 {
				return nil, bad("stop must be an integer from 0 to 1024")
			}
			p.stop = n
			continue
		}
		pkt, err := strconv.Atoi(key)
		if err != nil || pkt < 0 || pkt > 1024 {
			return nil, bad("key must be \"stop\" or a packet number from 0 to 1024")
		}
		var ranges []sizeRange
		for _, item := range strings.Split(value, ",") {
			item = strings.TrimSpace(item)
			if item == "c" {
				if pkt == 0 {
					return nil, bad("line 0 (authentication padding) takes one size range, not check marks")
				}
				ranges = append(ranges, sizeRange{CheckMark, CheckMark})
				continue
			}
			lo, hi, ok := strings.Cut(item, "-")
			if !ok {
				return nil, bad("item " + strconv.Quote(item) + " is neither \"c\" nor min-max")
			}
			a, errA := strconv.Atoi(strings.TrimSpace(lo))
			b, errB := strconv.Atoi(strings.TrimSpace(hi))
			minSize := 1
			if pkt == 0 {
				minSize = 0
			}
			if errA != nil || errB != nil || a < minSize || b < minSize || a > maxRecordSize || b > maxRecordSize {
				return nil, bad("range " + strconv.Quote(item) + " must be min-max with sizes from " + strconv.Itoa(minSize) + " to 65535")
			}
			if a > b {
				return nil, bad("range " + strconv.Quote(item) + " has min greater than max")
			}
			ranges = append(ranges, sizeRange{a, b})
		}
		if pkt == 0 && len(ranges) != 1 {
			return nil, bad("line 0 (authentication padding) takes exactly one size range")
		}
		p.setLine(pkt, ranges)
	}
	return p.complete()
}

// setLine sets the size ranges of packet pkt's records.
func (p *PaddingScheme) setLine(pkt int, ranges []sizeRange) {
	for len(p.lines) <= pkt {
		p.lines = append(p.lines, nil)
	}
	p.lines[pkt] = ranges
}

// complete returns the parsed scheme, or an error if it has no stop line.
func (p *PaddingScheme) complete() (*PaddingScheme, error) {
	if p.stop < 0 {
		return nil, &PaddingSchemeError{Reason: "missing stop=N line"}
	}
	return p, nil
}

// Raw returns the scheme's exact text.
func (p *PaddingScheme) Raw() []byte { return p.raw }

// String returns the scheme's text.
func (p *PaddingScheme) String() string { return string(p.raw) }

// MD5 returns the lowercase hex md5 of the scheme text.
func (p *PaddingScheme) MD5() string { return p.md5 }

// Stop returns N of stop=N: packets 0..N-1 are padded.
func (p *PaddingScheme) Stop() int { return p.stop }

// pick returns a size for r: min <= size < max, or min when min == max (as deployed).
func (r sizeRange) pick() int {
	if r.max <= r.min {
		return r.min
	}
	return r.min + rand.IntN(r.max-r.min)
}

// hasLine reports whether the scheme has a line for packet pkt.
func (p *PaddingScheme) hasLine(pkt int) bool { return pkt < len(p.lines) && p.lines[pkt] != nil }

// AuthPadding returns the padding0 length for a new session's authentication packet.
func (p *PaddingScheme) AuthPadding() int {
	if p.stop == 0 || len(p.lines) == 0 || len(p.lines[0]) == 0 {
		return 0
	}
	return p.lines[0][0].pick()
}

// RecordSizes appends to dst the record sizes for packet pkt (CheckMark for a check mark) and
// reports whether the packet is padded at all (pkt < stop and the scheme has a line for it).
func (p *PaddingScheme) RecordSizes(pkt int, dst []int) ([]int, bool) {
	if pkt >= p.stop || pkt >= len(p.lines) || p.lines[pkt] == nil {
		return dst, false
	}
	for _, r := range p.lines[pkt] {
		if r.min == CheckMark {
			dst = append(dst, CheckMark)
		} else {
			dst = append(dst, r.pick())
		}
	}
	return dst, true
}

// parsePushedScheme reads a scheme pushed by a server as deployed clients do: unknown keys and
// unreadable items are skipped, min > max is swapped, sizes below 1 are dropped; only a missing
// or bad stop= line refuses it. Deployed servers push what their own lenient parser accepted, and
// refusing it would draw a new push on every session.
func parsePushedScheme(text []byte) (*PaddingScheme, error) {
	if p, err := ParsePaddingScheme(text); err == nil {
		return p, nil
	}
	sum := md5.Sum(text)
	p := &PaddingScheme{raw: append([]byte(nil), text...), md5: hex.EncodeToString(sum[:]), stop: -1}
	for line := range strings.SplitSeq(string(text), "\n") {
		key, value, ok := strings.Cut(strings.TrimRight(line, "\r"), "=")
		if !ok {
			continue
		}
		if key == "stop" {
			if n, err := strconv.Atoi(value); err == nil && n >= 0 && n <= 1024 {
				p.stop = n
			}
			continue
		}
		pkt, err := strconv.Atoi(key)
		if err != nil || pkt < 0 || pkt > 1024 {
			continue
		}
		var ranges []sizeRange
		for item := range strings.SplitSeq(value, ",") {
			if item == "c" {
				if pkt > 0 {
					ranges = append(ranges, sizeRange{CheckMark, CheckMark})
				}
				continue
			}
			lo, hi, ok := strings.Cut(item, "-")
			a, errA := strconv.Atoi(lo)
			b, errB := strconv.Atoi(hi)
			if !ok || errA != nil || errB != nil {
				continue
			}
			if a > b {
				a, b = b, a
			}
			if a < 1 || b > maxRecordSize {
				continue
			}
			ranges = append(ranges, sizeRange{a, b})
		}
		if pkt == 0 && len(ranges) > 1 {
			ranges = ranges[:1]
		}
		p.setLine(pkt, ranges)
	}
	return p.complete()
}
