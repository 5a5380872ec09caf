package main

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/anytls-engine/anytls/internal/sbrun"
)

func TestParseSingboxFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want singboxFlags
	}{
		{[]string{"run", "-c", "a.json"}, singboxFlags{command: "run", config: configOf([]string{"a.json"}, nil)}},
		// global flags before the command, in every pflag spelling, repeated
		{[]string{"-D", "/w", "--config=a.json", "-cb.json", "--config", "c.json", "-C", "d", "--disable-color", "run"},
			singboxFlags{command: "run", directory: "/w", disableColor: true, config: configOf([]string{"a.json", "b.json", "c.json"}, []string{"d"})}},
		{[]string{"format", "-w", "-c", "x.json"}, singboxFlags{command: "format", write: true, config: configOf([]string{"x.json"}, nil)}},
		{[]string{"version", "-n"}, singboxFlags{command: "version", nameOnly: true}},
		{[]string{"--help"}, singboxFlags{help: true}},
	} {
		got, err := parseSingboxFlags(tc.args, true)
		if err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Fatalf("%q:\n got %+v\nwant %+v", tc.args, got, tc.want)
		}
	}
	for _, args := range [][]string{{"run", "-c"}, {"run", "--bogus"}, {"run", "extra"}} {
		if _, err := parseSingboxFlags(args, true); err == nil {
			t.Fatalf("%q accepted", args)
		}
	}
}

func configOf(paths, dirs []string) sbrun.Config {
	return sbrun.Config{Paths: paths, Directories: dirs}
}

func TestConfigFormat(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	jsonNoExt := write("conf1", "\n  // comment\n{}")
	yamlNoExt := write("conf2", "mixed-port: 7890\n")
	for _, tc := range []struct {
		args []string
		want string
		rest []string
	}{
		{[]string{"-c", "x.json"}, "sing-box", []string{"-c", "x.json"}},
		{[]string{"-c", "x.yaml"}, "mihomo", []string{"-c", "x.yaml"}},
		{[]string{"--config=x.yml"}, "mihomo", []string{"--config=x.yml"}},
		{[]string{"-c", jsonNoExt}, "sing-box", []string{"-c", jsonNoExt}},
		{[]string{"-c", yamlNoExt}, "mihomo", []string{"-c", yamlNoExt}},
		{[]string{"-f", "config"}, "mihomo", []string{"-f", "config"}},
		{[]string{"-d", "/etc/mihomo"}, "mihomo", []string{"-d", "/etc/mihomo"}},
		{[]string{"-C", "confs"}, "sing-box", []string{"-C", "confs"}},
		{nil, "sing-box", nil},
		{[]string{"--format", "mihomo", "-c", "x.json"}, "mihomo", []string{"-c", "x.json"}},
		{[]string{"-c", "x.yaml", "--format=sing-box"}, "sing-box", []string{"-c", "x.yaml"}},
	} {
		got, rest, err := configFormat(tc.args)
		if err != nil || got != tc.want || !reflect.DeepEqual(rest, tc.rest) {
			t.Fatalf("%q: got %q %q %v, want %q %q", tc.args, got, rest, err, tc.want, tc.rest)
		}
	}
	if _, _, err := configFormat([]string{"--format", "toml"}); err == nil || !strings.Contains(err.Error(), "toml") {
		t.Fatalf("bad --format: %v", err)
	}
}

func TestSingboxVersion(t *testing.T) {
	var out bytes.Buffer
	printSingboxVersion(&out, false)
	// GUI clients read the version from the first line.
	if line, _, _ := strings.Cut(out.String(), "\n"); !strings.HasPrefix(line, "sing-box version 1.") {
		t.Fatalf("first line %q", line)
	}
}
