package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/anytls-engine/anytls/adapter/metrics"
	"github.com/anytls-engine/anytls/option"
	"github.com/anytls-engine/anytls/protocol"
)

func init() {
	register(&command{
		Name:  "server",
		Short: "run an AnyTLS server that connects streams directly to their destinations",
		Run: func(args []string) error {
			ctx, cancel := signalContext()
			defer cancel()
			return serverMain(ctx, args, os.Stdout, os.Stderr)
		},
	})
}

// serverConfig configures startServer.
type serverConfig struct {
	// Listen is the TCP address to listen on (host:port).
	Listen string
	// Password of an unnamed user (-p); Password, UsersFile or both.
	Password string
	// UsersFile is a JSON users list (userfile), reloaded on SIGHUP and when it changes.
	UsersFile string
	// MetricsListen, if set, serves Prometheus metrics at /metrics on this host:port.
	MetricsListen string
	// onReload, if set, learns the result of every users reload (tests).
	onReload func(error)
	// CertFile and KeyFile: a PEM certificate and key. Empty: a self-signed certificate kept in
	// StateDir.
	CertFile, KeyFile string
	// PaddingSchemeFile holds a padding scheme text; empty: the default scheme.
	PaddingSchemeFile string
	// Fallback receives connections that fail authentication (host:port).
	Fallback string
	// AllowPrivate permits destinations on loopback, private, link-local and unspecified
	// addresses.
	AllowPrivate bool
	// StateDir keeps the generated certificate; empty: defaultStateDir().
	StateDir string
	// PublicHost is the host written into the share link; empty: see linkHost.
	PublicHost string
	// Options are further protocol options (Users, PaddingScheme and Fallback are set from the
	// fields above).
	Options option.ServerOptions
	Logger  *slog.Logger
}

// server is a running AnyTLS server.
type server struct {
	cfg        serverConfig
	log        *slog.Logger
	ln         net.Listener
	engine     *protocol.Server
	out        *outbound
	link       option.Link
	selfSigned bool
	ops        serverOps

	mu        sync.Mutex
	closed    bool
	streams   sync.WaitGroup
	done      chan struct{} // closed when Serve returned
	closeOnce sync.Once
}

// startServer listens and serves until ctx is done or Close is called.
func startServer(ctx context.Context, cfg serverConfig) (*server, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Password == "" && cfg.UsersFile == "" {
		return nil, errors.New("a password (-p PASSWORD) or a users file (--users FILE) is required")
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, errors.New("--cert and --key go together")
	}
	opts := cfg.Options
	users, err := cfg.users()
	if err != nil {
		return nil, err
	}
	opts.Users = users
	opts.Fallback = cfg.Fallback
	if cfg.PaddingSchemeFile != "" {
		text, err := os.ReadFile(cfg.PaddingSchemeFile)
		if err != nil {
			return nil, fmt.Errorf("padding scheme: %w", err)
		}
		opts.PaddingScheme = string(text)
	}
	pcfg, err := opts.ProtocolConfig(nil)
	if err != nil {
		if cfg.PaddingSchemeFile != "" {
			err = fmt.Errorf("%s: %w", cfg.PaddingSchemeFile, err)
		}
		return nil, err
	}

	s := &server{
		cfg:  cfg,
		log:  log,
		out:  &outbound{allowPrivate: cfg.AllowPrivate, resolver: net.DefaultResolver, dialer: net.Dialer{Timeout: option.DefaultDialTimeout}},
		done: make(chan struct{}),
	}
	pcfg.Handler = s.handle
	pcfg.Logger = log
	if cfg.MetricsListen != "" {
		s.ops.metrics = metrics.New()
		pcfg.Metrics = s.ops.metrics
	}
	s.engine, err = protocol.NewServer(pcfg)
	if err != nil {
		return nil, err
	}
	s.setUsers(users)
	if s.ops.metrics != nil {
		s.ops.metrics.Watch(s.engine)
	}

	var cert tls.Certificate
	if cfg.CertFile != "" {
		cert, err = tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("load certificate: %w", err)
		}
	}

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, err
	}
	s.ln = ln
	host := linkHost(cfg.PublicHost, ln.Addr())
	if cfg.CertFile == "" {
		dir := cfg.StateDir
		if dir == "" {
			if dir, err = defaultStateDir(); err != nil {
				ln.Close()
				return nil, err
			}
		}
		var created string
		cert, created, err = loadOrCreateCert(dir, []string{"localhost", host}, time.Now())
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("self-signed certificate in %s: %w", dir, err)
		}
		s.selfSigned = true
		if created != "" {
			log.Info("generated a self-signed certificate", "dir", dir, "reason", created, "expires", cert.Leaf.NotAfter.Format(time.DateOnly))
		} else {
			log.Info("reusing the self-signed certificate", "dir", dir, "expires", cert.Leaf.NotAfter.Format(time.DateOnly))
		}
	}
	port, _ := strconv.Atoi(portOf(ln.Addr()))
	s.link = option.Link{Password: cfg.Password, Host: host, Port: uint16(port), Insecure: s.selfSigned, Label: "anytls"}

	if err := s.startOps(); err != nil {
		ln.Close()
		return nil, err
	}
	tlsConfig := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	go func() {
		defer close(s.done)
		err := s.engine.Serve(ctx, tls.NewListener(ln, tlsConfig))
		if !s.isClosed() && ctx.Err() == nil {
			log.Error("server stopped", "error", err)
		}
	}()
	context.AfterFunc(ctx, func() { s.Close() })
	return s, nil
}

// Addr is the listening address.
func (s *server) Addr() net.Addr { return s.ln.Addr() }

// Link is the server's share link.
func (s *server) Link() option.Link { return s.link }

func (s *server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Close stops listening, closes every session and waits for the stream handlers to return.
func (s *server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.ln.Close()
		s.engine.Close()
		<-s.done
		s.streams.Wait()
		s.stopOps()
	})
	return nil
}

// handle serves one stream: UDP-over-TCP, or a TCP connection to its destination.
func (s *server) handle(ctx context.Context, st *protocol.Stream) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		st.Report(protocol.ErrSessionClosed)
		st.Close()
		return
	}
	s.streams.Add(1)
	s.mu.Unlock()
	defer s.streams.Done()
	defer st.Close()

	dest := st.Destination()
	if dest.IsUoT() {
		s.serveUoT(ctx, st)
		return
	}
	conn, err := s.out.dialTCP(ctx, dest)
	st.Report(err)
	if err != nil {
		level := slog.LevelDebug
		if errors.Is(err, errPrivateRefused) {
			level = slog.LevelInfo
		}
		s.log.Log(ctx, level, "stream refused", "user", st.User(), "destination", dest.String(), "error", err)
		return
	}
	s.log.Debug("stream", "user", st.User(), "destination", dest.String())
	relay(st, conn)
}

// linkHost picks the host for the share link: publicHost when given, else the listening IP
// when it is a specific address, else the first non-loopback address of this machine
// (global unicast preferred), else 127.0.0.1.
func linkHost(publicHost string, addr net.Addr) string {
	if publicHost != "" {
		return publicHost
	}
	if ta, ok := addr.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(ta.IP); ok && !ip.Unmap().IsUnspecified() {
			return ip.Unmap().String()
		}
	}
	addrs, _ := net.InterfaceAddrs()
	var fallback string
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.IsLoopback() || ip.IsUnspecified() || ip.IsLinkLocalUnicast() {
			continue
		}
		if ip.IsGlobalUnicast() && !ip.IsPrivate() {
			return ip.String()
		}
		if fallback == "" {
			fallback = ip.String()
		}
	}
	if fallback != "" {
		return fallback
	}
	return "127.0.0.1"
}

func portOf(a net.Addr) string {
	_, port, _ := net.SplitHostPort(a.String())
	return port
}

// serverMain runs the server command until ctx is done.
func serverMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("server", "-l ADDR (-p PASSWORD | --users FILE) [flags]")
	fs.SetOutput(stderr)
	var cfg serverConfig
	var verbose bool
	fs.StringVar(&cfg.Listen, "l", ":8443", "listen `address` (host:port)")
	fs.StringVar(&cfg.Password, "p", "", "`password` clients authenticate with (-p, --users or both)")
	fs.StringVar(&cfg.UsersFile, "users", "", "users `file`: a JSON list [{\"name\": \"bob\", \"password\": \"...\"}], reloaded on SIGHUP and when it changes")
	fs.StringVar(&cfg.MetricsListen, "metrics", "", "serve Prometheus metrics at http://`host:port`/metrics (e.g. 127.0.0.1:9090)")
	fs.StringVar(&cfg.CertFile, "cert", "", "TLS certificate `file` (PEM); without it a self-signed certificate is generated and kept in the state directory")
	fs.StringVar(&cfg.KeyFile, "key", "", "TLS private key `file` (PEM), with --cert")
	fs.StringVar(&cfg.PaddingSchemeFile, "padding-scheme", "", "padding scheme `file` pushed to clients (default: the protocol's default scheme)")
	fs.StringVar(&cfg.Fallback, "fallback", "", "`host:port` that receives connections failing authentication, over plain TCP (e.g. a local web server)")
	fs.BoolVar(&cfg.Options.PadDownstream, "pad-downstream", false, "pad the server's first packets of each session with the padding scheme too (clients discard the padding)")
	fs.BoolVar(&cfg.AllowPrivate, "allow-private", false, "permit destinations on loopback, private, link-local and unspecified addresses")
	fs.StringVar(&cfg.StateDir, "state", "", "state `directory` for the generated certificate (default: anytls under the user's config directory)")
	fs.StringVar(&cfg.PublicHost, "public-host", "", "`host` written into the share link (default: the listening IP, else the first non-loopback address)")
	fs.BoolVar(&verbose, "v", false, "log every stream (debug level)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if cfg.Password == "" && cfg.UsersFile == "" {
		fmt.Fprintln(fs.Output(), "flag -p PASSWORD or --users FILE is required")
		fs.Usage()
		return errUsage
	}
	cfg.Logger = newLogger(stderr, verbose)
	// Catch SIGHUP before anything is printed: a supervisor may send it as soon as it reads the
	// start-up lines, and an uncaught SIGHUP ends the process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	s, err := startServer(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "anytls server listening on %s\n", s.Addr())
	if s.selfSigned {
		fmt.Fprintln(stdout, "the certificate is self-signed: clients skip verification (insecure=1 in the link)")
	}
	if cfg.Password != "" {
		fmt.Fprintf(stdout, "share link: %s\n", s.Link())
	}
	if cfg.UsersFile != "" {
		l := s.Link()
		insecure := ""
		if l.Insecure {
			insecure = " --insecure"
		}
		fmt.Fprintf(stdout, "users from %s (reloaded on SIGHUP and when it changes); a user's share link: anytls link --users %s --user NAME --host %s --port %d%s\n",
			cfg.UsersFile, cfg.UsersFile, l.Host, l.Port, insecure)
	}
	if a := s.MetricsAddr(); a != nil {
		fmt.Fprintf(stdout, "metrics at http://%s/metrics\n", a)
	}
	for {
		select {
		case <-hup:
			s.Reload("SIGHUP")
			continue
		case <-ctx.Done():
		}
		break
	}
	cfg.Logger.Info("shutting down")
	return s.Close()
}
