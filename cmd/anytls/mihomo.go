package main

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/anytls-engine/anytls/internal/mihomorun"

	"github.com/metacubex/mihomo/component/geodata"
	C "github.com/metacubex/mihomo/constant"
)

// The mihomo side of the binary: `anytls run`/`check` for mihomo (YAML) configurations (run.go
// picks the format) and, when the binary runs under the name mihomo, mihomo's own command line,
// so that GUI clients which launch a mihomo core (Clash Verge Rev, FlClash, Clash Party) can
// launch this one in its place. Every `type: anytls` proxy and listener runs on this engine
// (internal/mihomorun); everything else is mihomo v1.19.23 itself.

func init() {
	mihomoRunner = func(ctx context.Context, args []string) error { return mihomoRunConfig(ctx, args, false) }
	mihomoChecker = func(ctx context.Context, args []string) error { return mihomoRunConfig(ctx, args, true) }
	personas["mihomo"] = mihomoPersona
	if v := mihomorun.MihomoVersion(); v != "" {
		C.Version = v // what the external controller's /version reports to GUI clients
	}
}

const mihomoRunUsage = `Usage: anytls %[1]s -c FILE [-d DIR] [--ext-ctl ADDR] [--secret S] [--ext-ui DIR]

%[2]s a mihomo configuration with every "type: anytls" proxy and listener on this engine.

Flags:
  -c, --config FILE   configuration file ("-" reads standard input); -f is accepted too
  -d, -D DIR          mihomo's home directory (default: the configuration file's directory)
  --ext-ctl ADDR      override external-controller
  --ext-ctl-unix P    override external-controller-unix
  --ext-ui DIR        override external-ui
  --secret S          override the external controller's secret
`

// mihomoRunConfig serves `anytls run` and `anytls check` for a mihomo configuration.
func mihomoRunConfig(ctx context.Context, args []string, check bool) error {
	name, verb := "run", "Run"
	if check {
		name, verb = "check", "Check"
	}
	fs := flag.NewFlagSet("anytls "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var o mihomorun.Options
	for _, n := range []string{"c", "config", "f"} {
		fs.StringVar(&o.ConfigFile, n, "", "")
	}
	for _, n := range []string{"d", "D", "directory"} {
		fs.StringVar(&o.HomeDir, n, "", "")
	}
	fs.StringVar(&o.ExternalController, "ext-ctl", "", "")
	fs.StringVar(&o.ExternalControllerUnix, "ext-ctl-unix", "", "")
	fs.StringVar(&o.ExternalUI, "ext-ui", "", "")
	fs.StringVar(&o.Secret, "secret", "", "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(os.Stdout, mihomoRunUsage, name, verb)
			return flag.ErrHelp
		}
		fmt.Fprintf(os.Stderr, "%v\n"+mihomoRunUsage, err, name, verb)
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "unexpected arguments: %s\n"+mihomoRunUsage, strings.Join(fs.Args(), " "), name, verb)
		return errUsage
	}
	if o.ConfigFile == "" {
		fmt.Fprintf(os.Stderr, "a configuration file is required (-c FILE)\n"+mihomoRunUsage, name, verb)
		return errUsage
	}
	if o.HomeDir == "" && o.ConfigFile != "-" {
		o.HomeDir = filepath.Dir(o.ConfigFile)
	}
	if check {
		if err := mihomorun.Check(o); err != nil {
			return err
		}
		fmt.Fprintf(os.Stdout, "configuration %s is valid\n", o.ConfigFile)
		return nil
	}
	return mihomorun.Run(ctx, o)
}

// mihomoPersona is mihomo's command line (main.go of mihomo v1.19.23): the same flags and
// environment variables, the same output for -v and -t.
func mihomoPersona(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("mihomo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o mihomorun.Options
	var configString string
	var geodataMode, showVersion, testConfig bool
	fs.StringVar(&o.HomeDir, "d", os.Getenv("CLASH_HOME_DIR"), "set configuration directory")
	fs.StringVar(&o.ConfigFile, "f", os.Getenv("CLASH_CONFIG_FILE"), "specify configuration file")
	fs.StringVar(&configString, "config", os.Getenv("CLASH_CONFIG_STRING"), "specify base64-encoded configuration string")
	fs.StringVar(&o.ExternalUI, "ext-ui", os.Getenv("CLASH_OVERRIDE_EXTERNAL_UI_DIR"), "override external ui directory")
	fs.StringVar(&o.ExternalController, "ext-ctl", os.Getenv("CLASH_OVERRIDE_EXTERNAL_CONTROLLER"), "override external controller address")
	fs.StringVar(&o.ExternalControllerUnix, "ext-ctl-unix", os.Getenv("CLASH_OVERRIDE_EXTERNAL_CONTROLLER_UNIX"), "override external controller unix address")
	fs.StringVar(&o.ExternalControllerPipe, "ext-ctl-pipe", os.Getenv("CLASH_OVERRIDE_EXTERNAL_CONTROLLER_PIPE"), "override external controller pipe address")
	fs.StringVar(&o.Secret, "secret", os.Getenv("CLASH_OVERRIDE_SECRET"), "override secret for RESTful API")
	fs.BoolVar(&geodataMode, "m", false, "set geodata mode")
	fs.BoolVar(&showVersion, "v", false, "show current version of mihomo")
	fs.BoolVar(&testConfig, "t", false, "test configuration and exit")
	if len(args) > 0 && (args[0] == "convert-ruleset" || args[0] == "generate") {
		fmt.Fprintf(stderr, "mihomo %s is not available in the anytls build; use an upstream mihomo for it\n", args[0])
		return 2
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if showVersion {
		fmt.Printf("Mihomo Meta %s %s %s with %s %s\n", C.Version, runtime.GOOS, runtime.GOARCH, runtime.Version(), C.BuildTime)
		fmt.Printf("anytls engine %s serves type: anytls\n", versionString())
		return 0
	}
	if geodataMode {
		geodata.SetGeodataMode(true)
	}
	if configString != "" {
		buf, err := base64.StdEncoding.DecodeString(configString)
		if err != nil {
			fmt.Fprintf(stderr, "Initial configuration error: %v\n", err)
			return 1
		}
		o.Config = buf
	}
	if testConfig {
		if err := mihomorun.Check(o); err != nil {
			fmt.Fprintln(stderr, err)
			if o.Config != nil || o.ConfigFile == "-" {
				fmt.Println("configuration test failed")
			} else {
				fmt.Printf("configuration file %s test failed\n", C.Path.Config())
			}
			return 1
		}
		fmt.Printf("configuration file %s test is successful\n", C.Path.Config())
		return 0
	}
	if err := mihomorun.Run(context.Background(), o); err != nil {
		fmt.Fprintf(stderr, "Parse config error: %v\n", err)
		return 1
	}
	return 0
}
