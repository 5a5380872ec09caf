package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/anytls-engine/anytls/protocol"
)

func runPadding(t *testing.T, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err = paddingMain(args, strings.NewReader(stdin), &out, &errOut)
	return out.String(), errOut.String(), err
}

func writeScheme(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "scheme.txt")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestPaddingCommandDefault(t *testing.T) {
	out, _, err := runPadding(t, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"(default scheme): a valid padding scheme",
		"md5: " + protocol.DefaultPaddingScheme.MD5(),
		"stop=8: packets 0 to 7",
		"sample 3",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "warning") {
		t.Errorf("the default scheme draws a warning:\n%s", out)
	}
	// packet 0 is 34 + 30 in every sample
	if !strings.Contains(out, "0       34+pad  30-30") || strings.Count(out, "64") < 3 {
		t.Errorf("packet 0 row is not 64 bytes in each sample:\n%s", out)
	}
}

// TestPaddingCommandFixed: with one size per item the table is exact.
func TestPaddingCommandFixed(t *testing.T) {
	path := writeScheme(t, "stop=4\n0=10-10\n1=100-100\n2=20-20,c,50-50,3-3\n3=9-9,40-40")
	out, _, err := runPadding(t, "", "-f", path, "-packets", "30,80,8,500", "-samples", "2")
	if err != nil {
		t.Fatal(err)
	}
	// packet 2: 20 (60 left), c passes, 50 (10 left), 3 (7 left), the 7 as is
	want := `packet  bytes   line               sample 1   sample 2
0       34+pad  10-10              44         44
1       30      100-100            100        100
2       80      20-20,c,50-50,3-3  20 50 3 7  20 50 3 7
3       8       9-9,40-40          8 40       8 40
4       500     (after stop)       500        500
`
	if !strings.HasSuffix(out, want) {
		t.Errorf("table:\n%s\nwant it to end with:\n%s", out, want)
	}
	if !strings.Contains(out, "md5: "+protocol.MustParsePaddingScheme("stop=4\n0=10-10\n1=100-100\n2=20-20,c,50-50,3-3\n3=9-9,40-40").MD5()) {
		t.Errorf("md5 missing:\n%s", out)
	}
}

func TestPaddingCommandErrors(t *testing.T) {
	path := writeScheme(t, "stop=8\n0=30-30\n1=100-x\n")
	_, _, err := runPadding(t, "", "-f", path)
	if err == nil || !strings.Contains(err.Error(), path+":3:") || !strings.Contains(err.Error(), `"1=100-x"`) {
		t.Fatalf("error %v, want it to name %s line 3 and quote it", err, path)
	}
	_, _, err = runPadding(t, "0=30-30\n", "-f", "-")
	if err == nil || !strings.Contains(err.Error(), "(standard input): missing stop=N line") {
		t.Fatalf("error %v, want the missing stop line", err)
	}
	if _, _, err = runPadding(t, "", "-f", filepath.Join(t.TempDir(), "nope")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	// the file as the argument
	if _, _, err := runPadding(t, "", path); err == nil || !strings.Contains(err.Error(), path+":3:") {
		t.Fatalf("file as argument: %v", err)
	}
	for _, args := range [][]string{{"-samples", "0"}, {"-packets", "1,x"}, {"-packets", "0"}, {"a", "b"}, {"-f", "a", "b"}, {"-bogus"}} {
		if _, stderr, err := runPadding(t, "", args...); !errors.Is(err, errUsage) || stderr == "" {
			t.Errorf("%v: %v (stderr %q), want a usage error", args, err, stderr)
		}
	}
	// through the dispatcher: exit code 1 and the message on stderr
	var stderr bytes.Buffer
	if code := dispatch([]string{"padding", "-f", path}, &stderr); code != 1 || !strings.Contains(stderr.String(), ":3:") {
		t.Fatalf("dispatch: code %d, stderr %q", code, stderr.String())
	}
}

func TestPaddingCommandWarnings(t *testing.T) {
	for _, c := range []struct {
		text, want string
	}{
		{"stop=3\r\n1=100-200\r\n2=300-400", "line 1: deployed clients (sing-anytls, mihomo) cannot read stop=\"3\\r\""},
		{"stop=3\n1=100-200\r\n2=300-400", "line 2: deployed clients (sing-anytls, mihomo) cannot read the item \"100-200\\r\""},
		{"stop=3\n1 = 100-200\n2=300-400", "line 2: deployed clients (sing-anytls, mihomo) read the key as \"1 \""},
		{"stop=3\n1=100-200, c\n2=300-400", "cannot read the item \" c\""},
		{"stop=3\n1=100-20000\n2=300-400", "line 2: size 100-20000 is above 16384"},
		{"stop=2\n1=100-200\n2=300-400", "line 3: packet 2 is at or after stop=2"},
		{"stop=4\n1=100-200\n2=300-400", "packet 3 is before stop=4 but has no line"},
		{protocol.DefaultPaddingSchemeText + "\n", "default scheme with different white space"},
	} {
		out, _, err := runPadding(t, c.text, "-f", "-")
		if err != nil {
			t.Errorf("%q: %v", c.text, err)
			continue
		}
		found := false
		for line := range strings.SplitSeq(out, "\n") {
			found = found || strings.HasPrefix(line, "warning: ") && strings.Contains(line, c.want)
		}
		if !found {
			t.Errorf("%q: output lacks the warning %q:\n%s", c.text, c.want, out)
		}
	}
}

// TestLayoutPacket pins the layout down with hand-computed cases (spec §6.1).
func TestLayoutPacket(t *testing.T) {
	p := protocol.MustParsePaddingScheme("stop=3\n1=20-20,30-30,c,40-40,3-3\n2=10-10")
	for _, c := range []struct {
		pkt, n int
		want   []int
	}{
		{1, 10, []int{20, 30}},            // data + cmdWaste, pure padding, c stops
		{1, 13, []int{20, 30}},            // room for an empty cmdWaste frame
		{1, 15, []int{15, 30}},            // 5 bytes of room hold no frame
		{1, 60, []int{20, 30, 40, 7}},     // c passes; 3-3 pure padding becomes 7
		{1, 100, []int{20, 30, 40, 3, 7}}, // data left after the list goes out as is
		{2, 3, []int{10}},                 // 3 bytes of data, a 7-byte cmdWaste frame
		{2, 4, []int{4}},                  // 6 bytes of room hold no frame
		{3, 4, []int{4}},                  // at stop: as is
	} {
		if got := layoutPacket(p, c.pkt, c.n); !slices.Equal(got, c.want) {
			t.Errorf("packet %d, %d bytes: %v, want %v", c.pkt, c.n, got, c.want)
		}
	}
}
