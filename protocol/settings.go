package protocol

import (
	"sort"
	"strings"
)

// Settings keys.
const (
	settingVersion    = "v"
	settingClient     = "client"
	settingPaddingMD5 = "padding-md5"
	// settingHalfClose announces that cmdFIN means "no more data from me" (half-close) rather
	// than a full close. Deployed peers ignore unknown keys, so only two ends of ours both
	// announcing it switch to half-close.
	settingHalfClose = "x-anytls-halfclose"
	// settingWindow announces per-stream flow control (this project's extension): its value is
	// the receive window, in bytes, the sender grants each stream. Only when both ends announce
	// it do they send cmdWindowUpdate; deployed peers ignore the key and never see the command.
	settingWindow = "x-anytls-window"
)

// Settings is a parsed settings text (`key=value` lines separated by `\n`).
type Settings map[string]string

// ParseSettings parses a settings text: lines in any order, unknown keys kept, lines without
// '=' and a trailing newline ignored. The first value of a repeated key wins.
func ParseSettings(b []byte) Settings {
	m := Settings{}
	for line := range strings.SplitSeq(string(b), "\n") {
		line = strings.TrimRight(line, "\r")
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" {
			continue
		}
		if _, dup := m[k]; !dup {
			m[k] = v
		}
	}
	return m
}

// Encode returns the settings as text, keys in a stable order.
func (s Settings) Encode() []byte {
	keys := make([]string, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		// v first, as deployed peers send it; the rest sorted.
		if (keys[i] == settingVersion) != (keys[j] == settingVersion) {
			return keys[i] == settingVersion
		}
		return keys[i] < keys[j]
	})
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(s[k])
	}
	return []byte(b.String())
}

// number returns the value of key as a decimal number of at most 10 digits; ok is false when
// the key is missing or its value is anything else.
func (s Settings) number(key string) (n int64, ok bool) {
	v := s[key]
	if v == "" || len(v) > 10 {
		return 0, false
	}
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// window returns the receive window announced with settingWindow, or 0 if absent or invalid.
func (s Settings) window() int64 {
	n, _ := s.number(settingWindow)
	return min(n, 1<<30)
}

// Version returns the integer value of v=, or 1 when missing or malformed (a v1 peer).
func (s Settings) Version() int {
	n, ok := s.number(settingVersion)
	if !ok || n < 1 {
		return 1
	}
	return int(n)
}
