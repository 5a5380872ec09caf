package protocol

import (
	"crypto/md5"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestPaddingSchemeErrorsNameTheLine(t *testing.T) {
	tests := []struct {
		name   string
		scheme string
		line   int    // 0: error without a line
		text   string // the offending line's text
	}{
		{"no equals", "stop=3\n1=10-20\nbogus", 3, "bogus"},
		{"missing stop", "0=30-30\n1=100-200", 0, ""},
		{"bad stop", "stop=x\n0=1-1", 1, "stop=x"},
		{"negative stop", "stop=-1", 1, "stop=-1"},
		{"huge stop", "stop=99999", 1, "stop=99999"},
		{"bad key", "stop=2\nfoo=1-2", 2, "foo=1-2"},
		{"negative packet", "stop=2\n-1=1-2", 2, "-1=1-2"},
		{"duplicate key", "stop=4\n1=10-20\n2=5-6\n1=30-40", 4, "1=30-40"},
		{"duplicate stop", "stop=4\nstop=5", 2, "stop=5"},
		{"bad item", "stop=4\n1=10-20,x,30-40", 2, "1=10-20,x,30-40"},
		{"not a number", "stop=4\n\n2=a-b", 3, "2=a-b"},
		{"min greater than max", "stop=4\n1=50-40", 2, "1=50-40"},
		{"zero size", "stop=4\n1=0-10", 2, "1=0-10"},
		{"too large", "stop=4\n1=10-65536", 2, "1=10-65536"},
		{"check mark on line 0", "stop=4\n0=c", 2, "0=c"},
		{"two ranges on line 0", "stop=4\n0=10-10,20-20", 2, "0=10-10,20-20"},
		{"empty item", "stop=4\n1=10-20,", 2, "1=10-20,"},
		{"crlf line reported without cr", "stop=4\r\n1=1-\r\n", 2, "1=1-"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParsePaddingScheme([]byte(tt.scheme))
			if err == nil {
				t.Fatalf("scheme %q accepted: %+v", tt.scheme, p)
			}
			if !errors.Is(err, ErrBadPaddingScheme) {
				t.Fatalf("error %v is not ErrBadPaddingScheme", err)
			}
			var pe *PaddingSchemeError
			if !errors.As(err, &pe) {
				t.Fatalf("error %T is not *PaddingSchemeError", err)
			}
			if pe.Line != tt.line || pe.Text != tt.text {
				t.Fatalf("error names line %d %q, want line %d %q (%v)", pe.Line, pe.Text, tt.line, tt.text, err)
			}
			if tt.line > 0 && !strings.Contains(err.Error(), "line ") {
				t.Fatalf("error text %q does not name the line", err)
			}
		})
	}
}

func TestPaddingSchemeValid(t *testing.T) {
	for _, s := range []string{
		"stop=0",
		"stop=1\n0=0-0",
		"stop=3\n\n1=1-1\n\n",        // blank lines and a trailing newline
		"stop=3\r\n1=1-2\r\n",        // CRLF
		"stop = 3\n 1 = 10 - 20 , c", // spaces
		"stop=1024\n1024=65535-65535",
	} {
		if _, err := ParsePaddingScheme([]byte(s)); err != nil {
			t.Errorf("ParsePaddingScheme(%q): %v", s, err)
		}
	}
}

func TestPaddingSchemeMD5(t *testing.T) {
	// md5 over the exact bytes: a trailing newline changes it.
	for _, s := range []string{DefaultPaddingSchemeText, DefaultPaddingSchemeText + "\n", "stop=1\r\n0=5-5"} {
		p, err := ParsePaddingScheme([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		sum := md5.Sum([]byte(s))
		if p.MD5() != hex.EncodeToString(sum[:]) {
			t.Errorf("MD5(%q) = %s, want %x", s, p.MD5(), sum)
		}
		if string(p.Raw()) != s || p.String() != s {
			t.Errorf("Raw() = %q, want the exact text %q", p.Raw(), s)
		}
	}
	// The md5 of github.com/anytls/sing-anytls v0.0.11's padding.DefaultPaddingScheme (and
	// anytls-go's): a client with the default scheme must not be sent a scheme update by a
	// deployed server with the default scheme, and vice versa.
	const deployedDefaultMD5 = "75cff2ad89aadf5e257059ee571ebe11"
	if got := DefaultPaddingScheme.MD5(); got != deployedDefaultMD5 {
		t.Fatalf("default scheme md5 = %s, want %s (deployed default)", got, deployedDefaultMD5)
	}
	if DefaultPaddingScheme.Stop() != 8 {
		t.Fatalf("default stop = %d", DefaultPaddingScheme.Stop())
	}
	// The buffer passed in is copied: changing it later does not change the scheme.
	b := []byte("stop=2\n1=3-3")
	p, _ := ParsePaddingScheme(b)
	b[5] = '1'
	if p.Stop() != 2 || string(p.Raw()) != "stop=2\n1=3-3" {
		t.Fatal("scheme aliases the caller's buffer")
	}
}

func TestPaddingRanges(t *testing.T) {
	p, err := ParsePaddingScheme([]byte("stop=4\n0=30-30\n1=10-13\n2=5-5,c,100-101\n3=1-2"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for range 2000 {
		sizes, ok := p.RecordSizes(1, nil)
		if !ok || len(sizes) != 1 {
			t.Fatalf("RecordSizes(1) = %v, %v", sizes, ok)
		}
		if sizes[0] < 10 || sizes[0] >= 13 {
			t.Fatalf("size %d outside [10, 13)", sizes[0])
		}
		seen[sizes[0]] = true
		if n := p.AuthPadding(); n != 30 {
			t.Fatalf("AuthPadding = %d, want exactly 30", n)
		}
		if s, _ := p.RecordSizes(3, nil); s[0] != 1 {
			t.Fatalf("1-2 picked %d, want 1 (a <= size < b)", s[0])
		}
	}
	if !seen[10] || !seen[11] || !seen[12] {
		t.Fatalf("range 10-13 produced only %v, want 10, 11 and 12", seen)
	}
	sizes, ok := p.RecordSizes(2, []int{99})
	if !ok || !slices.Equal(sizes, []int{99, 5, CheckMark, 100}) {
		t.Fatalf("RecordSizes(2) = %v, %v; want appended [5 c 100]", sizes, ok)
	}
}

func TestPaddingStop(t *testing.T) {
	p, err := ParsePaddingScheme([]byte("stop=3\n0=7-7\n1=10-10\n3=20-20\n5=1-1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := p.RecordSizes(1, nil); !ok {
		t.Error("packet 1 not padded")
	}
	if _, ok := p.RecordSizes(2, nil); ok {
		t.Error("packet 2 has no line but is padded")
	}
	for _, pkt := range []int{3, 4, 5, 100} {
		if _, ok := p.RecordSizes(pkt, nil); ok {
			t.Errorf("packet %d at or after stop=3 is padded", pkt)
		}
	}
	zero, _ := ParsePaddingScheme([]byte("stop=0\n0=50-50\n1=10-10"))
	if n := zero.AuthPadding(); n != 0 {
		t.Errorf("stop=0: AuthPadding = %d, want 0 (nothing is padded)", n)
	}
	if _, ok := zero.RecordSizes(1, nil); ok {
		t.Error("stop=0: packet 1 padded")
	}
	none, _ := ParsePaddingScheme([]byte("stop=5\n1=10-10"))
	if n := none.AuthPadding(); n != 0 {
		t.Errorf("no line 0: AuthPadding = %d, want 0", n)
	}
}
