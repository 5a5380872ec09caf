package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// mihomoRunner and mihomoChecker run and check a mihomo (YAML) configuration. The mihomo host
// sets them from its own file; args are the arguments after `run` or `check` with any --format
// flag removed. Nil means this binary was built without mihomo support.
var (
	mihomoRunner  func(ctx context.Context, args []string) error
	mihomoChecker func(ctx context.Context, args []string) error
)

func init() {
	register(&command{
		Name:  "run",
		Short: "run a sing-box (JSON) or mihomo (YAML) configuration with anytls on this engine",
		Run:   func(args []string) error { return runConfig(args, false) },
	})
	register(&command{
		Name:  "check",
		Short: "check a sing-box or mihomo configuration without running it",
		Run:   func(args []string) error { return runConfig(args, true) },
	})
}

const runUsage = `Usage: anytls %[1]s -c FILE [-c FILE...] [-C DIR] [-D DIR] [--format auto|sing-box|mihomo]

%[2]s a configuration. A JSON file (or -C directory of *.json) is a sing-box configuration:
"type": "anytls" inbounds and outbounds run on this engine beside sing-box's tun, direct,
block, dns, socks, http, mixed, redirect, tproxy, selector and urltest. A YAML file is a
mihomo configuration. --format overrides the detection (by file extension, then content).

Flags:
  -c, --config FILE             configuration file (repeatable; "stdin" reads standard input)
  -C, --config-directory DIR    directory of *.json configuration files (repeatable)
  -D, --directory DIR           working directory
      --format FORMAT           auto (default), sing-box or mihomo
      --disable-color           disable color in sing-box's log
`

func runConfig(args []string, check bool) error {
	name, verb := "run", "Run"
	if check {
		name, verb = "check", "Check"
	}
	format, rest, err := configFormat(args)
	if err != nil {
		return err
	}
	if format == "mihomo" {
		run := mihomoRunner
		if check {
			run = mihomoChecker
		}
		if run == nil {
			return errors.New("mihomo support not built")
		}
		return run(context.Background(), rest)
	}
	f, err := parseSingboxFlags(rest, false)
	if err != nil {
		fmt.Fprintf(os.Stderr, runUsage, name, verb)
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if f.help {
		fmt.Fprintf(os.Stdout, runUsage, name, verb)
		return nil
	}
	f.command = name
	return runSingbox(f, os.Stdout, os.Stderr)
}

// configFormat returns "sing-box" or "mihomo" for the command line, and args without --format.
// Auto detection looks at the first configuration file: .json is sing-box, .yaml/.yml is mihomo,
// otherwise a file whose first non-blank character opens a JSON object or a comment is sing-box.
// mihomo's own flags (-f, -d) mean mihomo; -C (JSON directories) means sing-box.
func configFormat(args []string) (string, []string, error) {
	format := "auto"
	var rest []string
	var first string
	var sawMihomoFlag, sawDirectory bool
	for i := 0; i < len(args); i++ {
		arg := args[i]
		flagName, value, hasValue := strings.Cut(strings.TrimLeft(arg, "-"), "=")
		if !strings.HasPrefix(arg, "-") {
			rest = append(rest, arg)
			continue
		}
		next := func() string {
			if hasValue {
				return value
			}
			if i+1 < len(args) {
				rest = append(rest, args[i+1])
				return args[i+1]
			}
			return ""
		}
		if flagName == "format" {
			if !hasValue && i+1 < len(args) {
				i++
				value = args[i]
			}
			format = value
			continue
		}
		rest = append(rest, arg)
		switch flagName {
		case "c", "config", "f":
			v := next()
			if !hasValue {
				i++
			}
			if first == "" {
				first = v
			}
			sawMihomoFlag = sawMihomoFlag || flagName == "f"
		case "C", "config-directory":
			sawDirectory = true
		case "d":
			sawMihomoFlag = true
		}
	}
	switch format {
	case "sing-box", "singbox", "json":
		return "sing-box", rest, nil
	case "mihomo", "clash", "yaml":
		return "mihomo", rest, nil
	case "auto", "":
	default:
		return "", nil, fmt.Errorf("--format %q: want auto, sing-box or mihomo", format)
	}
	switch {
	case sawMihomoFlag:
		return "mihomo", rest, nil
	case first != "":
		return sniffFormat(first), rest, nil
	case sawDirectory:
		return "sing-box", rest, nil
	}
	return "sing-box", rest, nil // sing-box's default: config.json
}

// sniffFormat guesses a configuration file's format; an unreadable file is left to sing-box,
// whose error names it.
func sniffFormat(path string) string {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".json", ".jsonc":
		return "sing-box"
	case ".yaml", ".yml":
		return "mihomo"
	}
	if path == "stdin" {
		return "sing-box"
	}
	content, err := os.ReadFile(path)
	if err != nil {
		return "sing-box"
	}
	content = bytes.TrimLeft(content, " \t\r\n\ufeff")
	if len(content) == 0 || content[0] == '{' || content[0] == '/' {
		return "sing-box"
	}
	return "mihomo"
}
