// Command anytls runs AnyTLS servers and clients: quick `server` and `client` modes, a
// self-contained `demo`, and (in other files) hosts for sing-box and mihomo configurations.
//
// Subcommands register themselves from init functions (see register), so a new subcommand is a
// new file: nothing here needs editing.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// command is one subcommand of anytls.
type command struct {
	// Name is the word after anytls on the command line.
	Name string
	// Short is a one-line description for the command list.
	Short string
	// Run runs the command with the arguments after its name. A flag.ErrHelp return means the
	// usage was printed on request.
	Run func(args []string) error
}

// commands maps a subcommand name to its command. Fill it with register.
var commands = map[string]*command{}

// register adds c to commands; call it from an init function. A duplicate name panics, so two
// files cannot silently claim the same subcommand.
func register(c *command) {
	if c.Name == "" || c.Run == nil {
		panic("anytls: register: command without name or Run")
	}
	if _, dup := commands[c.Name]; dup {
		panic("anytls: register: duplicate command " + c.Name)
	}
	commands[c.Name] = c
}

// personas maps the name the binary runs under (argv[0]'s base name, without ".exe") to a
// command line of another program it stands in for, such as "sing-box" for GUI clients that
// launch a sing-box core. Fill it from an init function in the persona's own file.
var personas = map[string]func(args []string, stderr io.Writer) int{}

func main() {
	name := strings.TrimSuffix(filepath.Base(os.Args[0]), ".exe")
	if persona, ok := personas[name]; ok {
		os.Exit(persona(os.Args[1:], os.Stderr))
	}
	os.Exit(dispatch(os.Args[1:], os.Stderr))
}

// dispatch runs the subcommand named by args[0] and returns the process exit code.
func dispatch(args []string, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	name := args[0]
	switch name {
	case "help", "-h", "-help", "--help":
		if len(args) > 1 {
			if c, ok := commands[args[1]]; ok {
				c.Run([]string{"-h"})
				return 0
			}
		}
		usage(stderr)
		return 0
	}
	c, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "anytls: unknown command %q\n\n", name)
		usage(stderr)
		return 2
	}
	err := c.Run(args[1:])
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		// The flag package printed the problem and the usage already.
		return 2
	default:
		fmt.Fprintf(stderr, "anytls %s: %v\n", name, err)
		return 1
	}
}

// errUsage marks a command-line error that has been reported already.
var errUsage = errors.New("usage error")

func usage(w io.Writer) {
	fmt.Fprintf(w, "anytls: AnyTLS proxy server and client.\n\nUsage:\n  anytls <command> [flags]\n\nCommands:\n")
	names := make([]string, 0, len(commands))
	width := 0
	for name := range commands {
		names = append(names, name)
		width = max(width, len(name))
	}
	slices.Sort(names)
	for _, name := range names {
		fmt.Fprintf(w, "  %-*s  %s\n", width, name, commands[name].Short)
	}
	fmt.Fprintf(w, "\nRun 'anytls <command> -h' for a command's flags. Flags take one or two dashes.\n")
}

// newFlagSet returns a flag set for a subcommand whose usage line is synopsis.
func newFlagSet(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet("anytls "+name, flag.ContinueOnError)
	fs.Usage = func() {
		out := fs.Output()
		fmt.Fprintf(out, "Usage: anytls %s %s\n\nFlags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args into fs; errors are returned as errUsage (the flag package has printed
// them) and extra positional arguments are refused.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "unexpected arguments: %s\n", strings.Join(fs.Args(), " "))
		fs.Usage()
		return errUsage
	}
	return nil
}
