// Package sbrun runs sing-box from a sing-box configuration with this module's anytls inbound and
// outbound behind "type": "anytls". sing-box's include package cannot be built here, so the
// registries are built from the individual protocol packages: a curated set of the usual ones.
// The anytls command uses it for `anytls run`/`check` and for its sing-box drop-in mode; tests use
// it in-process (they may add sing-box's built-in anytls under another type name).
package sbrun

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"syscall"
	"time"

	sbinbound "github.com/anytls-engine/anytls/inbound/singbox"
	sboutbound "github.com/anytls-engine/anytls/outbound/singbox"

	box "github.com/sagernet/sing-box"
	"github.com/sagernet/sing-box/adapter/certificate"
	"github.com/sagernet/sing-box/adapter/endpoint"
	"github.com/sagernet/sing-box/adapter/inbound"
	"github.com/sagernet/sing-box/adapter/outbound"
	"github.com/sagernet/sing-box/adapter/service"
	C "github.com/sagernet/sing-box/constant"
	"github.com/sagernet/sing-box/dns"
	"github.com/sagernet/sing-box/dns/transport"
	"github.com/sagernet/sing-box/dns/transport/fakeip"
	"github.com/sagernet/sing-box/dns/transport/hosts"
	"github.com/sagernet/sing-box/dns/transport/local"
	"github.com/sagernet/sing-box/experimental/deprecated"
	"github.com/sagernet/sing-box/log"
	"github.com/sagernet/sing-box/option"
	"github.com/sagernet/sing-box/protocol/block"
	"github.com/sagernet/sing-box/protocol/direct"
	protocolDNS "github.com/sagernet/sing-box/protocol/dns"
	"github.com/sagernet/sing-box/protocol/group"
	"github.com/sagernet/sing-box/protocol/http"
	"github.com/sagernet/sing-box/protocol/mixed"
	"github.com/sagernet/sing-box/protocol/redirect"
	"github.com/sagernet/sing-box/protocol/socks"
	"github.com/sagernet/sing-box/protocol/tun"
	E "github.com/sagernet/sing/common/exceptions"
	"github.com/sagernet/sing/common/json"
	"github.com/sagernet/sing/common/json/badjson"
	sservice "github.com/sagernet/sing/service"
)

func init() {
	// Report the sing-box version this binary is built with (clash API, `version`, user agents)
	// instead of "unknown", which it only is without the release ldflags.
	if C.Version != "unknown" {
		return
	}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path == "github.com/sagernet/sing-box" {
				C.Version = strings.TrimPrefix(dep.Version, "v")
			}
		}
	}
}

// Registries are the six registries box.Context needs.
type Registries struct {
	Inbound     *inbound.Registry
	Outbound    *outbound.Registry
	Endpoint    *endpoint.Registry
	DNS         *dns.TransportRegistry
	Service     *service.Registry
	Certificate *certificate.Registry
}

// NewRegistries returns the curated registries: tun, redirect, tproxy, direct, socks, http,
// mixed inbounds; direct, block, dns, selector, urltest, socks, http outbounds; udp, tcp, tls,
// https, local, hosts, fakeip DNS servers; the ACME certificate provider (with_acme); and this
// module's anytls inbound and outbound as "anytls". Never sing-box's built-in anytls.
func NewRegistries() Registries {
	r := Registries{
		Inbound:     inbound.NewRegistry(),
		Outbound:    outbound.NewRegistry(),
		Endpoint:    endpoint.NewRegistry(),
		DNS:         dns.NewTransportRegistry(),
		Service:     service.NewRegistry(),
		Certificate: certificate.NewRegistry(),
	}
	tun.RegisterInbound(r.Inbound)
	redirect.RegisterRedirect(r.Inbound)
	redirect.RegisterTProxy(r.Inbound)
	direct.RegisterInbound(r.Inbound)
	socks.RegisterInbound(r.Inbound)
	http.RegisterInbound(r.Inbound)
	mixed.RegisterInbound(r.Inbound)
	sbinbound.RegisterInbound(r.Inbound)

	direct.RegisterOutbound(r.Outbound)
	block.RegisterOutbound(r.Outbound)
	protocolDNS.RegisterOutbound(r.Outbound)
	group.RegisterSelector(r.Outbound)
	group.RegisterURLTest(r.Outbound)
	socks.RegisterOutbound(r.Outbound)
	http.RegisterOutbound(r.Outbound)
	sboutbound.RegisterOutbound(r.Outbound)

	transport.RegisterTCP(r.DNS)
	transport.RegisterUDP(r.DNS)
	transport.RegisterTLS(r.DNS)
	transport.RegisterHTTPS(r.DNS)
	hosts.RegisterTransport(r.DNS)
	local.RegisterTransport(r.DNS)
	fakeip.RegisterTransport(r.DNS)

	registerACME(r.Certificate)
	return r
}

// Context returns ctx carrying the registries (and sing-box's deprecation reporter), ready for
// decoding a configuration and for box.New.
func (r Registries) Context(ctx context.Context) context.Context {
	if sservice.FromContext[deprecated.Manager](ctx) == nil {
		ctx = sservice.ContextWith(ctx, deprecated.NewStderrManager(log.StdLogger()))
	}
	return box.Context(ctx, r.Inbound, r.Outbound, r.Endpoint, r.DNS, r.Service, r.Certificate)
}

// Decode parses one sing-box configuration (JSON with comments, sing-box's syntax). ctx must
// carry the registries (Registries.Context).
func Decode(ctx context.Context, content []byte) (option.Options, error) {
	return json.UnmarshalExtendedContext[option.Options](ctx, content)
}

// Config names the configuration files as sing-box's command line does: -c files (in order;
// "stdin" reads standard input) and -C directories (their *.json files). With neither,
// config.json in the working directory.
type Config struct {
	Paths       []string
	Directories []string
}

type entry struct {
	path    string
	content []byte
	options option.Options
}

func (c Config) read(ctx context.Context) ([]entry, error) {
	paths := append([]string(nil), c.Paths...)
	if len(paths) == 0 && len(c.Directories) == 0 {
		paths = []string{"config.json"}
	}
	for _, dir := range c.Directories {
		files, err := os.ReadDir(dir)
		if err != nil {
			return nil, E.Cause(err, "read config directory at ", dir)
		}
		for _, f := range files {
			if !f.IsDir() && strings.HasSuffix(f.Name(), ".json") {
				paths = append(paths, filepath.Join(dir, f.Name()))
			}
		}
	}
	var entries []entry
	for _, path := range paths {
		var (
			content []byte
			err     error
		)
		if path == "stdin" {
			content, err = io.ReadAll(os.Stdin)
		} else {
			content, err = os.ReadFile(path)
		}
		if err != nil {
			return nil, E.Cause(err, "read config at ", path)
		}
		options, err := Decode(ctx, content)
		if err != nil {
			return nil, E.Cause(err, "decode config at ", path)
		}
		entries = append(entries, entry{path, content, options})
	}
	sort.SliceStable(entries, func(i, j int) bool { return entries[i].path < entries[j].path })
	return entries, nil
}

// Read reads and merges the configuration, as sing-box does with several -c and -C.
func (c Config) Read(ctx context.Context) (option.Options, error) {
	entries, err := c.read(ctx)
	if err != nil {
		return option.Options{}, err
	}
	if len(entries) == 1 {
		return entries[0].options, nil
	}
	var merged json.RawMessage
	for _, e := range entries {
		merged, err = badjson.MergeJSON(ctx, e.options.RawMessage, merged, false)
		if err != nil {
			return option.Options{}, E.Cause(err, "merge config at ", e.path)
		}
	}
	var options option.Options
	if err := options.UnmarshalJSONContext(ctx, merged); err != nil {
		return option.Options{}, E.Cause(err, "unmarshal merged config")
	}
	return options, nil
}

// Check builds every inbound, outbound, DNS server and service of the configuration without
// starting anything, as `sing-box check` does. ctx must carry the registries.
func Check(ctx context.Context, c Config) error {
	options, err := c.Read(ctx)
	if err != nil {
		return err
	}
	return CheckOptions(ctx, options)
}

// CheckOptions is Check for a decoded configuration.
func CheckOptions(ctx context.Context, options option.Options) error {
	ctx, cancel := context.WithCancel(sservice.ExtendContext(ctx))
	defer cancel()
	instance, err := box.New(box.Options{Context: ctx, Options: options})
	if err != nil {
		return err
	}
	return instance.Close()
}

// Start creates and starts a box. Close it to stop; cancel is the box context's cancel.
func Start(ctx context.Context, options option.Options) (*box.Box, context.CancelFunc, error) {
	ctx, cancel := context.WithCancel(sservice.ExtendContext(ctx))
	instance, err := box.New(box.Options{Context: ctx, Options: options})
	if err != nil {
		cancel()
		return nil, nil, E.Cause(err, "create service")
	}
	if err := instance.Start(); err != nil { // Start closes the box on failure
		cancel()
		return nil, nil, E.Cause(err, "start service")
	}
	return instance, cancel, nil
}

// Run runs the configuration until ctx ends or SIGINT/SIGTERM arrives; SIGHUP re-reads it and
// restarts (a configuration that does not check keeps the running one), as `sing-box run`,
// except when only the users of anytls inbounds changed: those are updated in place
// (ReloadUsers) and no session of a remaining user is dropped.
// ctx must carry the registries.
func Run(ctx context.Context, c Config, disableColor bool) error {
	options, err := c.Read(ctx)
	if err != nil {
		return err
	}
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(signals)
	for {
		if disableColor {
			if options.Log == nil {
				options.Log = &option.LogOptions{}
			}
			options.Log.DisableColor = true
		}
		instance, cancel, err := Start(ctx, options)
		if err != nil {
			return err
		}
		debug.FreeOSMemory()
		reload := false
		for !reload {
			select {
			case <-ctx.Done():
				return closeBox(instance, cancel)
			case sig := <-signals:
				if sig != syscall.SIGHUP {
					return closeBox(instance, cancel)
				}
				next, err := c.Read(ctx)
				if err == nil {
					err = CheckOptions(ctx, next)
				}
				if err != nil {
					log.Error(E.Cause(err, "reload service"))
					continue
				}
				if inPlace, tags, err := ReloadUsers(ctx, instance, options, next); inPlace {
					// Only anytls users changed: no restart, the other users' sessions go on.
					if err != nil {
						log.Error(E.Cause(err, "reload users"))
						continue
					}
					log.Info("reload: users of anytls inbound ", strings.Join(tags, ", "), " updated in place")
					options = next
					continue
				}
				options, reload = next, true
			}
		}
		if err := closeBox(instance, cancel); err != nil {
			log.Error(err)
		}
	}
}

// closeBox closes a box, giving up after sing-box's fatal stop timeout.
func closeBox(instance *box.Box, cancel context.CancelFunc) error {
	cancel()
	done := make(chan error, 1)
	go func() { done <- instance.Close() }()
	select {
	case err := <-done:
		if err != nil {
			return E.Cause(err, "sing-box did not close properly")
		}
		return nil
	case <-time.After(C.FatalStopTimeout):
		return E.New("sing-box did not close within ", C.FatalStopTimeout)
	}
}

// Format writes each configuration file in sing-box's canonical form (as `sing-box format`):
// to out, or back to the file when write is set (names of rewritten files go to log).
func Format(ctx context.Context, c Config, write bool, out, logw io.Writer) error {
	entries, err := c.read(ctx)
	if err != nil {
		return err
	}
	for _, e := range entries {
		comments := e.options.Comments()
		options, err := badjson.Omitempty(ctx, e.options)
		if err != nil {
			return err
		}
		options.SetComments(comments)
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetIndent("", "  ")
		if err := enc.Encode(options); err != nil {
			return E.Cause(err, "encode config")
		}
		abs, _ := filepath.Abs(e.path)
		if !write {
			if len(entries) > 1 {
				fmt.Fprintln(out, abs)
			}
			fmt.Fprintln(out, buf.String())
			continue
		}
		if bytes.Equal(e.content, buf.Bytes()) {
			continue
		}
		if err := os.WriteFile(e.path, buf.Bytes(), 0o644); err != nil {
			return E.Cause(err, "write output")
		}
		fmt.Fprintln(logw, abs)
	}
	return nil
}
