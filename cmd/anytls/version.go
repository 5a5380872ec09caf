package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3"; otherwise the module
// version from the build info is used.
var version = ""

func init() {
	register(&command{
		Name:  "version",
		Short: "print the version of anytls, Go, and the sing-box and mihomo built in",
		Run: func(args []string) error {
			fs := newFlagSet("version", "")
			if err := parseFlags(fs, args); err != nil {
				return err
			}
			fmt.Fprintf(os.Stdout, "anytls %s (%s, %s/%s)\n", versionString(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
			for _, h := range builtInHosts() {
				fmt.Fprintf(os.Stdout, "%s %s\n", h.name, h.version)
			}
			return nil
		},
	})
}

func versionString() string {
	if version != "" {
		return version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	v := info.Main.Version
	if v == "" || v == "(devel)" {
		v = "devel"
	}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += "+" + s.Value[:12]
		}
	}
	return v
}

// hostModules are the hosts a build may carry, by module path.
var hostModules = []struct{ name, path string }{
	{"sing-box", "github.com/sagernet/sing-box"},
	{"mihomo", "github.com/metacubex/mihomo"},
}

type hostVersion struct{ name, version string }

// builtInHosts returns the versions of the hosts linked into this binary, from its build info
// (a replaced module shows its replacement).
func builtInHosts() []hostVersion {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return nil
	}
	var out []hostVersion
	for _, h := range hostModules {
		for _, dep := range info.Deps {
			if dep.Path != h.path {
				continue
			}
			v := dep.Version
			if dep.Replace != nil {
				v = dep.Replace.Path + " " + dep.Replace.Version
			}
			out = append(out, hostVersion{h.name, v})
		}
	}
	return out
}
