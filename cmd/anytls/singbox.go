package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/user"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/anytls-engine/anytls/internal/sbrun"

	C "github.com/sagernet/sing-box/constant"
	"github.com/sagernet/sing/service/filemanager"
)

// The sing-box side of the binary: `anytls run`/`check` for sing-box configurations (run.go picks
// the format) and, when the binary runs under the name sing-box, sing-box's own command line, so
// that GUI clients which launch a sing-box core can launch this one in its place. The registries
// (internal/sbrun) serve "anytls" with this module's engine and never link sing-box's built-in.

func init() {
	personas["sing-box"] = singboxPersona
}

// singboxFlags is sing-box's command line: global flags may stand before or after the command,
// in pflag's spellings (-c X, -cX, -c=X, --config X, --config=X).
type singboxFlags struct {
	command      string
	config       sbrun.Config
	directory    string
	disableColor bool
	write        bool   // format -w
	nameOnly     bool   // version -n
	format       string // anytls run --format: auto, sing-box or mihomo
	help         bool
}

// parseSingboxFlags parses args. With wantCommand, the first positional argument is the command.
func parseSingboxFlags(args []string, wantCommand bool) (singboxFlags, error) {
	var f singboxFlags
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if arg == "--" {
			if rest := args[i+1:]; len(rest) > 0 {
				return f, fmt.Errorf("unexpected arguments: %s", strings.Join(rest, " "))
			}
			break
		}
		if !strings.HasPrefix(arg, "-") || arg == "-" {
			if wantCommand && f.command == "" {
				f.command = arg
				continue
			}
			return f, fmt.Errorf("unexpected argument %q", arg)
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(arg, "-"), "=")
		long := strings.HasPrefix(arg, "--")
		if !long && len(name) > 1 && !hasValue {
			// -cconfig.json: a shorthand with its value attached
			name, value, hasValue = name[:1], name[1:], true
		}
		takeValue := func() (string, error) {
			if hasValue {
				return value, nil
			}
			if i+1 >= len(args) {
				return "", fmt.Errorf("flag needs an argument: %s", arg)
			}
			i++
			return args[i], nil
		}
		var err error
		var v string
		switch name {
		case "c", "config":
			if v, err = takeValue(); err == nil {
				f.config.Paths = append(f.config.Paths, v)
			}
		case "C", "config-directory":
			if v, err = takeValue(); err == nil {
				f.config.Directories = append(f.config.Directories, v)
			}
		case "D", "directory":
			f.directory, err = takeValue()
		case "format":
			f.format, err = takeValue()
		case "disable-color":
			f.disableColor = true
		case "w", "write":
			f.write = true
		case "n", "name":
			f.nameOnly = true
		case "h", "help":
			f.help = true
		default:
			err = fmt.Errorf("unknown flag: %s", arg)
		}
		if err != nil {
			return f, err
		}
	}
	return f, nil
}

// singboxContext prepares what sing-box's command does before any command: the working
// directory (-D, created if missing), files owned by the invoking user under sudo, and the
// registries.
func singboxContext(f singboxFlags) (context.Context, error) {
	ctx := context.Background()
	uid, _ := strconv.Atoi(os.Getenv("SUDO_UID"))
	gid, _ := strconv.Atoi(os.Getenv("SUDO_GID"))
	if sudoUser := os.Getenv("SUDO_USER"); uid == 0 && gid == 0 && sudoUser != "" {
		if u, err := user.Lookup(sudoUser); err == nil {
			uid, _ = strconv.Atoi(u.Uid)
			gid, _ = strconv.Atoi(u.Gid)
		}
	}
	if uid > 0 && gid > 0 {
		ctx = filemanager.WithDefault(ctx, "", "", uid, gid)
	}
	if f.directory != "" {
		if _, err := os.Stat(f.directory); err != nil {
			filemanager.MkdirAll(ctx, f.directory, 0o777)
		}
		if err := os.Chdir(f.directory); err != nil {
			return nil, err
		}
	}
	return sbrun.NewRegistries().Context(ctx), nil
}

// runSingbox runs `run`, `check`, `format` or `version` on parsed flags.
func runSingbox(f singboxFlags, stdout, stderr io.Writer) error {
	if f.command == "version" {
		printSingboxVersion(stdout, f.nameOnly)
		return nil
	}
	ctx, err := singboxContext(f)
	if err != nil {
		return err
	}
	switch f.command {
	case "run":
		return sbrun.Run(ctx, f.config, f.disableColor)
	case "check":
		return sbrun.Check(ctx, f.config)
	case "format":
		return sbrun.Format(ctx, f.config, f.write, stdout, stderr)
	}
	return fmt.Errorf("unknown command %q", f.command)
}

// singboxPersona is main for the binary run under the name sing-box.
func singboxPersona(args []string, stderr io.Writer) int {
	f, err := parseSingboxFlags(args, true)
	if err == nil && (f.help || f.command == "" || f.command == "help") {
		singboxUsage(os.Stdout)
		return 0
	}
	if err == nil {
		err = runSingbox(f, os.Stdout, stderr)
	}
	if err != nil {
		fmt.Fprintf(stderr, "FATAL %v\n", err)
		return 1
	}
	return 0
}

func singboxUsage(w io.Writer) {
	fmt.Fprint(w, `Usage:
  sing-box [command]

Available Commands:
  check       Check configuration
  format      Format configuration
  run         Run service
  version     Print current version of sing-box

Flags:
  -c, --config stringArray             set configuration file path
  -C, --config-directory stringArray   set configuration directory path
  -D, --directory string               set working directory
      --disable-color                  disable color output
  -h, --help                           help for sing-box

This is anytls standing in for sing-box: "type": "anytls" runs on the anytls engine.
`)
}

// printSingboxVersion prints what `sing-box version` prints; GUI clients parse its first line.
func printSingboxVersion(w io.Writer, nameOnly bool) {
	if nameOnly {
		fmt.Fprintln(w, C.Version)
		return
	}
	fmt.Fprintf(w, "sing-box version %s\n\nEnvironment: %s %s/%s\n", C.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			switch s.Key {
			case "-tags":
				fmt.Fprintf(w, "Tags: %s\n", s.Value)
			case "vcs.revision":
				fmt.Fprintf(w, "Revision: %s\n", s.Value)
			}
		}
	}
	if C.CGO_ENABLED {
		fmt.Fprintln(w, "CGO: enabled")
	} else {
		fmt.Fprintln(w, "CGO: disabled")
	}
	fmt.Fprintf(w, "anytls engine: %s\n", versionString())
}
