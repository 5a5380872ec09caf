package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/anytls-engine/anytls/adapter/userfile"
	inmihomo "github.com/anytls-engine/anytls/inbound/mihomo"
	sbinbound "github.com/anytls-engine/anytls/inbound/singbox"
	"github.com/anytls-engine/anytls/internal/sbrun"
	"github.com/anytls-engine/anytls/option"

	"github.com/metacubex/mihomo/config"
	"github.com/skip2/go-qrcode"
)

func init() {
	register(&command{
		Name:  "link",
		Short: "print share links (anytls://) of a server's users, as text or QR codes for phones",
		Run: func(args []string) error {
			return linkMain(args, os.Stdout, os.Stderr)
		},
	})
}

const linkSynopsis = `(--users FILE [--user NAME] | -p PASSWORD | -c CONFIG [--inbound NAME] [--user NAME]) --host HOST [flags]

Prints the share link of each user (or only --user), one a line; --qr draws each as a QR code
that phone clients (Shadowrocket, Karing, NekoBox, Clash Meta for Android) scan. CONFIG is a
sing-box (JSON) or mihomo (YAML) server configuration: its anytls inbounds give the users, the
port and the TLS server name.`

type linkFlags struct {
	usersFile, user, password string
	config, inbound           string
	host, sni, label          string
	port                      int
	insecure, qr, qrInvert    bool
}

func linkMain(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("link", linkSynopsis)
	fs.SetOutput(stderr)
	var f linkFlags
	fs.StringVar(&f.usersFile, "users", "", "users `file` (as anytls server --users)")
	fs.StringVar(&f.user, "user", "", "only the user `name`d")
	fs.StringVar(&f.password, "p", "", "the `password` of a server started with -p")
	fs.StringVar(&f.config, "c", "", "server configuration `file` (sing-box JSON or mihomo YAML)")
	fs.StringVar(&f.inbound, "inbound", "", "with -c: only the anytls inbound with this `tag` (sing-box) or name (mihomo)")
	fs.StringVar(&f.host, "host", "", "`host` clients connect to: the server's domain name or public IP (required, except with -c when the inbound listens on a specific address)")
	fs.IntVar(&f.port, "port", 0, "server `port` (default 443, or the inbound's with -c)")
	fs.StringVar(&f.sni, "sni", "", "TLS server `name` when it differs from --host (with -c: the inbound's tls.server_name)")
	fs.BoolVar(&f.insecure, "insecure", false, "clients skip certificate verification (self-signed certificates)")
	fs.StringVar(&f.label, "label", "", "the link's `name` shown in clients (default: the user's name, else the host)")
	fs.BoolVar(&f.qr, "qr", false, "print each link as a QR code too")
	fs.BoolVar(&f.qrInvert, "qr-invert", false, "QR code for terminals with a light background")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	links, err := f.links()
	if err != nil {
		return err
	}
	for _, l := range links {
		if f.qr {
			qr, err := qrText(l.String(), f.qrInvert)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s\n%s\n\n", qr, l)
			continue
		}
		fmt.Fprintln(stdout, l)
	}
	return nil
}

// linkUser is a user as a link needs it.
type linkUser struct{ name, password string }

// links builds the links the flags ask for.
func (f linkFlags) links() ([]option.Link, error) {
	sources := 0
	for _, s := range []string{f.usersFile, f.password, f.config} {
		if s != "" {
			sources++
		}
	}
	if sources != 1 {
		return nil, errors.New("give exactly one of --users FILE, -p PASSWORD and -c CONFIG")
	}
	if f.inbound != "" && f.config == "" {
		return nil, errors.New("--inbound goes with -c CONFIG")
	}
	base := option.Link{Host: f.host, Port: option.DefaultPort, SNI: f.sni, Insecure: f.insecure}
	var users []linkUser
	switch {
	case f.password != "":
		users = []linkUser{{password: f.password}}
	case f.usersFile != "":
		list, err := userfile.Load(f.usersFile)
		if err != nil {
			return nil, err
		}
		for _, u := range list {
			users = append(users, linkUser{u.Name, u.Password})
		}
	default:
		inbound, err := configInbound(f.config, f.inbound)
		if err != nil {
			return nil, err
		}
		users = inbound.users
		if base.Host == "" {
			base.Host = inbound.host
		}
		if inbound.port != 0 {
			base.Port = inbound.port
		}
		if base.SNI == "" && inbound.serverName != base.Host {
			base.SNI = inbound.serverName
		}
	}
	if f.port != 0 {
		if f.port < 1 || f.port > 65535 {
			return nil, fmt.Errorf("--port %d: want 1 to 65535", f.port)
		}
		base.Port = uint16(f.port)
	}
	if base.Host == "" {
		return nil, errors.New("--host HOST is required: the domain name or public IP clients connect to")
	}
	if f.user != "" {
		var only []linkUser
		for _, u := range users {
			if u.name == f.user {
				only = append(only, u)
			}
		}
		if len(only) == 0 {
			names := make([]string, 0, len(users))
			for _, u := range users {
				names = append(names, strconv.Quote(u.name))
			}
			return nil, fmt.Errorf("no user %q (users: %s)", f.user, strings.Join(names, ", "))
		}
		users = only
	}
	links := make([]option.Link, 0, len(users))
	for _, u := range users {
		l := base
		l.Password = u.password
		switch {
		case f.label != "":
			l.Label = f.label
		case u.name != "":
			l.Label = u.name
		default:
			l.Label = base.Host
		}
		// Round trip: what we print must be what a client reads.
		back, err := option.ParseLink(l.String())
		if err != nil {
			return nil, fmt.Errorf("user %q: %w", u.name, err)
		}
		links = append(links, back)
	}
	return links, nil
}

// qrText draws text as a QR code with half-block characters, two modules a character cell. By
// default dark modules are blank cells (terminals with a dark background); invert for light ones.
func qrText(text string, invert bool) (string, error) {
	q, err := qrcode.New(text, qrcode.Medium)
	if err != nil {
		return "", fmt.Errorf("QR code: %w", err)
	}
	return strings.TrimRight(q.ToSmallString(invert), "\n"), nil
}

// serverInbound is what a share link takes from a server configuration's anytls inbound.
type serverInbound struct {
	name       string
	reality    bool
	users      []linkUser
	host       string // the listen address when it is a specific, public one
	port       uint16
	serverName string
}

// configInbound reads the anytls inbound of a sing-box or mihomo server configuration (the
// one named, or the only one).
func configInbound(path, name string) (serverInbound, error) {
	var found []serverInbound
	var names []string
	var err error
	if sniffFormat(path) == "mihomo" {
		found, names, err = mihomoInbounds(path, name)
	} else {
		found, names, err = singboxInbounds(path, name)
	}
	if err != nil {
		return serverInbound{}, err
	}
	switch {
	case len(found) == 1 && found[0].reality:
		return serverInbound{}, fmt.Errorf("%s: inbound %q uses Reality: anytls:// links carry no Reality parameters", path, found[0].name)
	case len(found) == 1:
		return found[0], nil
	case name != "":
		return serverInbound{}, fmt.Errorf("%s: no anytls inbound %q (anytls inbounds: %s)", path, name, strings.Join(names, ", "))
	case len(found) == 0:
		return serverInbound{}, fmt.Errorf("%s: no anytls inbound", path)
	}
	return serverInbound{}, fmt.Errorf("%s: %d anytls inbounds (%s): choose one with --inbound", path, len(found), strings.Join(names, ", "))
}

func singboxInbounds(path, name string) ([]serverInbound, []string, error) {
	ctx := sbrun.NewRegistries().Context(context.Background())
	options, err := sbrun.Config{Paths: []string{path}}.Read(ctx)
	if err != nil {
		return nil, nil, err
	}
	var found []serverInbound
	var names []string
	for _, in := range options.Inbounds {
		o, ok := in.Options.(*sbinbound.Options)
		if !ok {
			continue
		}
		names = append(names, strconv.Quote(in.Tag))
		if name != "" && in.Tag != name {
			continue
		}
		s := serverInbound{name: in.Tag, port: o.ListenPort}
		s.reality = o.TLS != nil && o.TLS.Reality != nil && o.TLS.Reality.Enabled
		if o.Listen != nil {
			s.host = publicListenHost(o.Listen.Build(netip.Addr{}))
		}
		if o.TLS != nil {
			s.serverName = o.TLS.ServerName
		}
		for _, u := range o.Users {
			s.users = append(s.users, linkUser{u.Name, u.Password})
		}
		found = append(found, s)
	}
	return found, names, nil
}

func mihomoInbounds(path, name string) ([]serverInbound, []string, error) {
	buf, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	raw, err := config.UnmarshalRawConfig(buf)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	var found []serverInbound
	var names []string
	for i, mapping := range raw.Listeners {
		if t, _ := mapping["type"].(string); !strings.EqualFold(t, "anytls") {
			continue
		}
		o, err := inmihomo.ParseOptions(mapping, fmt.Sprintf("listeners[%d]", i))
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", path, err)
		}
		names = append(names, strconv.Quote(o.NameStr))
		if name != "" && o.NameStr != name {
			continue
		}
		s := serverInbound{name: o.NameStr, host: publicListenHost(parseIP(o.Listen)), reality: o.RealityConfig.PrivateKey != ""}
		// port may be a list or range ("8443,9443-9445"): the first port is the link's.
		first := strings.FieldsFunc(o.Port, func(r rune) bool { return r == ',' || r == '-' || r == '/' })
		if len(first) > 0 {
			if p, err := strconv.ParseUint(strings.TrimSpace(first[0]), 10, 16); err == nil {
				s.port = uint16(p)
			}
		}
		for _, u := range o.ServerOptions().Users {
			s.users = append(s.users, linkUser{u.Name, u.Password})
		}
		found = append(found, s)
	}
	return found, names, nil
}

func parseIP(s string) netip.Addr {
	a, _ := netip.ParseAddr(s)
	return a
}

// publicListenHost is a listen address usable as the link's host: a specific address that is
// not loopback; otherwise empty.
func publicListenHost(a netip.Addr) string {
	a = a.Unmap()
	if !a.IsValid() || a.IsUnspecified() || a.IsLoopback() {
		return ""
	}
	return a.String()
}
