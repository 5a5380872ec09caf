package mihomorun

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/metacubex/mihomo/component/updater"
	"github.com/metacubex/mihomo/config"
	C "github.com/metacubex/mihomo/constant"
	"github.com/metacubex/mihomo/hub"
	"github.com/metacubex/mihomo/hub/executor"
	"github.com/metacubex/mihomo/hub/route"
	"github.com/metacubex/mihomo/log"

	"github.com/metacubex/chi"
	"github.com/metacubex/chi/render"
	"github.com/metacubex/http"
)

// Options says where the configuration is and what the command line overrides, as mihomo's own
// flags do (-d, -f, -ext-ui, -ext-ctl, -ext-ctl-unix, -ext-ctl-pipe, -secret).
type Options struct {
	// HomeDir is mihomo's home directory: relative paths in the configuration (providers,
	// certificates, geodata) resolve against it, and files outside it are refused. Default:
	// mihomo's (~/.config/mihomo, or $CLASH_HOME_DIR as mihomo's command reads it).
	HomeDir string
	// ConfigFile is the configuration file; "-" reads standard input. Default: config.yaml in
	// HomeDir (created with `mixed-port: 7890` when missing, as mihomo does).
	ConfigFile string
	// Config, when set, is the configuration itself (ConfigFile is then only used for reloads).
	Config []byte

	ExternalUI             string
	ExternalController     string
	ExternalControllerUnix string
	ExternalControllerPipe string
	Secret                 string
}

// prepare sets mihomo's paths and returns the configuration bytes.
func (o *Options) prepare(stdin io.Reader) ([]byte, error) {
	if o.HomeDir != "" {
		abs, err := filepath.Abs(o.HomeDir)
		if err != nil {
			return nil, err
		}
		o.HomeDir = abs
		C.SetHomeDir(abs)
	}
	if o.Config != nil {
		return o.Config, nil
	}
	if o.ConfigFile == "-" {
		buf, err := io.ReadAll(stdin)
		if err != nil {
			return nil, fmt.Errorf("read configuration from standard input: %w", err)
		}
		o.Config = buf
		return buf, nil
	}
	if o.ConfigFile != "" {
		abs, err := filepath.Abs(o.ConfigFile)
		if err != nil {
			return nil, err
		}
		o.ConfigFile = abs
		C.SetConfig(abs)
	}
	if err := config.Init(C.Path.HomeDir()); err != nil {
		return nil, fmt.Errorf("initial configuration directory: %w", err)
	}
	return readConfig(C.Path.Config())
}

func readConfig(path string) ([]byte, error) {
	buf, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(buf) == 0 {
		return nil, fmt.Errorf("configuration file %s is empty", path)
	}
	return buf, nil
}

func (o *Options) hubOptions() []hub.Option {
	var opts []hub.Option
	if o.ExternalUI != "" {
		opts = append(opts, hub.WithExternalUI(o.ExternalUI))
	}
	if o.ExternalController != "" {
		opts = append(opts, hub.WithExternalController(o.ExternalController))
	}
	if o.ExternalControllerUnix != "" {
		opts = append(opts, hub.WithExternalControllerUnix(o.ExternalControllerUnix))
	}
	if o.ExternalControllerPipe != "" {
		opts = append(opts, hub.WithExternalControllerPipe(o.ExternalControllerPipe))
	}
	if o.Secret != "" {
		opts = append(opts, hub.WithSecret(o.Secret))
	}
	return opts
}

// Check parses the configuration as Run would, without starting anything.
func Check(o Options) error {
	buf, err := o.prepare(os.Stdin)
	if err != nil {
		return err
	}
	cfg, err := Parse(buf)
	if err != nil {
		return err
	}
	Discard(cfg)
	return nil
}

// Start parses and applies the configuration (mihomo is then running: listeners, TUN, DNS,
// the external controller), with the routes of this wiring registered. mihomo is one instance
// per process; call Stop to shut it down.
func Start(o Options) error {
	buf, err := o.prepare(os.Stdin)
	if err != nil {
		return err
	}
	cfg, err := Parse(buf)
	if err != nil {
		return err
	}
	RegisterRoutes()
	for _, opt := range o.hubOptions() {
		opt(cfg)
	}
	hub.ApplyConfig(cfg)
	if updater.GeoAutoUpdate() {
		updater.RegisterGeoUpdater()
	}
	return nil
}

// Reload re-reads the configuration file (or reuses Config) and applies it, as mihomo does on
// SIGHUP.
func Reload(o Options) error {
	buf := o.Config
	if buf == nil {
		var err error
		if buf, err = readConfig(C.Path.Config()); err != nil {
			return err
		}
	}
	cfg, err := Parse(buf)
	if err != nil {
		return err
	}
	for _, opt := range o.hubOptions() {
		opt(cfg)
	}
	hub.ApplyConfig(cfg)
	return nil
}

// Stop shuts mihomo's listeners down (executor.Shutdown).
func Stop() { executor.Shutdown() }

// Run starts mihomo and serves until ctx ends or SIGINT/SIGTERM arrives; SIGHUP reloads.
func Run(ctx context.Context, o Options) error {
	// Signals first: a SIGTERM that arrives while the configuration is applied still stops
	// mihomo cleanly.
	term := make(chan os.Signal, 1)
	hup := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGINT, syscall.SIGTERM)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(term)
	defer signal.Stop(hup)
	if err := Start(o); err != nil {
		return err
	}
	defer Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-term:
			return nil
		case <-hup:
			if err := Reload(o); err != nil {
				log.Errorln("Parse config error: %s", err.Error())
			}
		}
	}
}

var registerOnce sync.Once

// RegisterRoutes overrides the external controller's PUT /configs (reload through this wiring,
// so the built-in anytls never comes back) and refuses POST /upgrade (it would replace this
// binary with an upstream mihomo). Call it before the controller starts (hub.ApplyConfig).
func RegisterRoutes() {
	registerOnce.Do(func() {
		route.Register(func(r chi.Router) {
			r.Put("/configs", updateConfigs)
			r.Put("/configs/", updateConfigs)
			r.Post("/upgrade", refuseUpgrade)
			r.Post("/upgrade/", refuseUpgrade)
		})
	})
}

type httpError struct {
	Message string `json:"message"`
}

// updateConfigs is mihomo's PUT /configs (hub/route/configs.go) with this wiring's parser.
func updateConfigs(w http.ResponseWriter, r *http.Request) {
	req := struct {
		Path    string `json:"path"`
		Payload string `json:"payload"`
	}{}
	if err := render.DecodeJSON(r.Body, &req); err != nil {
		render.Status(r, http.StatusBadRequest)
		render.JSON(w, r, httpError{"Body invalid"})
		return
	}
	force := r.URL.Query().Get("force") == "true"
	var buf []byte
	if req.Payload != "" {
		buf = []byte(req.Payload)
	} else {
		if req.Path == "" {
			req.Path = C.Path.Config()
		} else if !filepath.IsAbs(req.Path) {
			render.Status(r, http.StatusBadRequest)
			render.JSON(w, r, httpError{"path is not a absolute path"})
			return
		} else if !C.Path.IsSafePath(req.Path) {
			render.Status(r, http.StatusBadRequest)
			render.JSON(w, r, httpError{C.Path.ErrNotSafePath(req.Path).Error()})
			return
		}
		var err error
		if buf, err = readConfig(req.Path); err != nil {
			render.Status(r, http.StatusBadRequest)
			render.JSON(w, r, httpError{err.Error()})
			return
		}
	}
	cfg, err := Parse(buf)
	if err != nil {
		render.Status(r, http.StatusBadRequest)
		render.JSON(w, r, httpError{err.Error()})
		return
	}
	executor.ApplyConfig(cfg, force)
	render.NoContent(w, r)
}

// errUpgradeRefused explains the refusal of POST /upgrade.
var errUpgradeRefused = errors.New("core upgrade is disabled: this binary serves anytls with its own engine, an upstream mihomo would replace it; update the anytls binary instead")

func refuseUpgrade(w http.ResponseWriter, r *http.Request) {
	render.Status(r, http.StatusForbidden)
	render.JSON(w, r, httpError{errUpgradeRefused.Error()})
}
