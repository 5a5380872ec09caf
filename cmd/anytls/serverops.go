package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/anytls-engine/anytls/adapter/metrics"
	"github.com/anytls-engine/anytls/adapter/userfile"
	"github.com/anytls-engine/anytls/option"
	"github.com/anytls-engine/anytls/protocol"
)

// What `anytls server` offers an operator beyond serving: users from a file reloaded on SIGHUP
// and on change, and Prometheus metrics.

// serverOps is the operations side of a running server.
type serverOps struct {
	reloadMu sync.Mutex
	users    []option.User // in force

	watcher   *userfile.Watcher
	metrics   *metrics.Collector // nil without --metrics
	metricsLn net.Listener
	httpSrv   *http.Server
	httpDone  chan struct{}
}

// users returns the users to serve: the -p user (unnamed) and the users file's.
func (cfg *serverConfig) users() ([]option.User, error) {
	var users []option.User
	if cfg.Password != "" {
		users = append(users, option.User{Password: cfg.Password})
	}
	if cfg.UsersFile != "" {
		fromFile, err := userfile.Load(cfg.UsersFile)
		if err != nil {
			return nil, err
		}
		for i, u := range fromFile {
			if u.Password == cfg.Password {
				return nil, &userfile.Error{Path: cfg.UsersFile, Entry: i, Name: u.Name, Reason: "same password as -p: passwords identify users, they must differ"}
			}
		}
		users = append(users, fromFile...)
	}
	return users, nil
}

// startOps starts the users file watcher and the metrics endpoint (as configured).
func (s *server) startOps() error {
	if s.cfg.MetricsListen != "" {
		ln, err := net.Listen("tcp", s.cfg.MetricsListen)
		if err != nil {
			return fmt.Errorf("--metrics: %w", err)
		}
		if ta, ok := ln.Addr().(*net.TCPAddr); ok && !ta.IP.IsLoopback() {
			s.log.Warn("metrics are served without authentication on a non-loopback address: restrict access to it", "address", ln.Addr().String())
		}
		s.ops.metricsLn = ln
		s.ops.httpSrv = &http.Server{Handler: s.ops.metrics.Mux(), ReadHeaderTimeout: 10 * time.Second}
		s.ops.httpDone = make(chan struct{})
		go func() {
			defer close(s.ops.httpDone)
			s.ops.httpSrv.Serve(ln)
		}()
	}
	if s.cfg.UsersFile != "" {
		w, err := userfile.Watch(s.cfg.UsersFile, func() { s.Reload("file changed") })
		if err != nil {
			s.stopOps()
			return fmt.Errorf("--users: %w", err)
		}
		s.ops.watcher = w
	}
	return nil
}

// stopOps stops what startOps started.
func (s *server) stopOps() {
	if s.ops.watcher != nil {
		s.ops.watcher.Close()
	}
	if s.ops.httpSrv != nil {
		s.ops.httpSrv.Close()
		<-s.ops.httpDone
	}
}

// setUsers records the users in force (the engine has them).
func (s *server) setUsers(users []option.User) {
	s.ops.users = users
	if s.ops.metrics != nil {
		names := make([]string, len(users))
		for i, u := range users {
			names[i] = u.Name
		}
		s.ops.metrics.SetUsers(names)
	}
}

// Reload re-reads the users file and gives the engine the new users: sessions of users still
// present keep running, sessions of removed users (or users whose password changed) are closed,
// new users can connect at once. A file that does not check keeps the old users; the error is
// logged and returned.
func (s *server) Reload(why string) error {
	s.ops.reloadMu.Lock()
	defer s.ops.reloadMu.Unlock()
	err := s.reload(why)
	if s.ops.metrics != nil {
		s.ops.metrics.Reloaded(err)
	}
	if s.cfg.onReload != nil {
		s.cfg.onReload(err)
	}
	return err
}

func (s *server) reload(why string) error {
	if s.cfg.UsersFile == "" {
		err := errors.New("no users file to reload (start with --users FILE)")
		s.log.Warn("reload", "reason", why, "error", err)
		return err
	}
	users, err := s.cfg.users()
	if err == nil {
		pusers := make([]protocol.User, len(users))
		for i, u := range users {
			pusers[i] = protocol.User{Name: u.Name, Password: u.Password}
		}
		err = s.engine.UpdateUsers(pusers)
	}
	if err != nil {
		s.log.Error("users not reloaded, the old users stay in force", "reason", why, "error", err)
		return err
	}
	added, removed, changed := diffUsers(s.ops.users, users)
	s.setUsers(users)
	s.log.Info("users reloaded", "reason", why, "users", len(users), "added", added, "removed", removed, "new_password", changed)
	return nil
}

// diffUsers names the users added, removed and whose password changed from old to new.
func diffUsers(old, new []option.User) (added, removed, changed []string) {
	before := map[string]string{}
	for _, u := range old {
		before[u.Name] = u.Password
	}
	after := map[string]bool{}
	for _, u := range new {
		after[u.Name] = true
		pw, ok := before[u.Name]
		switch {
		case !ok:
			added = append(added, u.Name)
		case pw != u.Password:
			changed = append(changed, u.Name)
		}
	}
	for _, u := range old {
		if !after[u.Name] {
			removed = append(removed, u.Name)
		}
	}
	slices.Sort(added)
	slices.Sort(removed)
	slices.Sort(changed)
	return added, removed, changed
}

// MetricsAddr is the metrics endpoint's address (nil without --metrics).
func (s *server) MetricsAddr() net.Addr {
	if s.ops.metricsLn == nil {
		return nil
	}
	return s.ops.metricsLn.Addr()
}

// LinkFor returns the share link of the named user in force.
func (s *server) LinkFor(name string) (option.Link, error) {
	s.ops.reloadMu.Lock()
	defer s.ops.reloadMu.Unlock()
	for _, u := range s.ops.users {
		if u.Name == name {
			l := s.link
			l.Password, l.Label = u.Password, u.Name
			return l, nil
		}
	}
	return option.Link{}, fmt.Errorf("no user %q", name)
}
