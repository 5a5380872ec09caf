package option

import (
	"context"
	"errors"
	"io"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/anytls-engine/anytls/protocol"
)

func TestClientOptionsValidate(t *testing.T) {
	tests := []struct {
		name  string
		opts  ClientOptions
		field string
		value string
	}{
		{"no password", ClientOptions{}, "password", `""`},
		{"negative interval", ClientOptions{Password: "x", IdleSessionCheckInterval: -time.Second}, "idle_session_check_interval", "-1s"},
		{"negative timeout", ClientOptions{Password: "x", IdleSessionTimeout: -time.Second}, "idle_session_timeout", "-1s"},
		{"negative min idle", ClientOptions{Password: "x", MinIdleSession: -1}, "min_idle_session", "-1"},
		{"negative streams", ClientOptions{Password: "x", MaxStreamsPerSession: -2}, "max_streams_per_session", "-2"},
		{"client name newline", ClientOptions{Password: "x", ClientName: "a\nv=1"}, "client_name", `"a\nv=1"`},
		{"negative hb timeout", ClientOptions{Password: "x", HeartbeatTimeout: -1}, "heartbeat_timeout", "-1ns"},
		{"negative dial timeout", ClientOptions{Password: "x", DialTimeout: -time.Minute}, "dial_timeout", "-1m0s"},
		{"small buffer", ClientOptions{Password: "x", StreamBufferSize: 1000}, "stream_buffer_size", "1000"},
		{"negative stall", ClientOptions{Password: "x", StreamStallTimeout: -time.Second}, "stream_stall_timeout", "-1s"},
		{"version", ClientOptions{Password: "x", MaxVersion: 3}, "max_version", "3"},
		{"padding line", ClientOptions{Password: "x", PaddingScheme: "stop=2\n0=30-30\n1=abc"}, "padding_scheme", `"1=abc"`},
		{"padding stop", ClientOptions{Password: "x", PaddingScheme: "0=30-30"}, "padding_scheme", `""`},
	}
	for _, tt := range tests {
		err := tt.opts.Validate()
		var fe *FieldError
		if !errors.As(err, &fe) {
			t.Errorf("%s: error %v, want a *FieldError", tt.name, err)
			continue
		}
		if fe.Field != tt.field {
			t.Errorf("%s: field %q, want %q (%v)", tt.name, fe.Field, tt.field, err)
		}
		if !strings.Contains(err.Error(), tt.field+" = "+tt.value) {
			t.Errorf("%s: message %q does not name %s = %s", tt.name, err, tt.field, tt.value)
		}
		if !errors.Is(err, ErrInvalid) || !errors.Is(err, protocol.ErrBadConfig) {
			t.Errorf("%s: error does not match ErrInvalid and protocol.ErrBadConfig", tt.name)
		}
		if _, err := tt.opts.ProtocolConfig(); err == nil {
			t.Errorf("%s: ProtocolConfig accepted invalid options", tt.name)
		}
	}
	// Negative heartbeat interval and SYNACK timeout mean "disabled" and are valid.
	ok := ClientOptions{Password: "x", HeartbeatInterval: -1, SynAckTimeout: -1}
	if err := ok.Validate(); err != nil {
		t.Errorf("disabled heartbeat and SYNACK wait: %v", err)
	}
}

func TestClientOptionsDefaults(t *testing.T) {
	cfg, err := ClientOptions{Password: "pw"}.ProtocolConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Password != "pw" || cfg.IdleSessionCheckInterval != 30*time.Second || cfg.IdleSessionTimeout != 30*time.Second ||
		cfg.MinIdleSession != 0 || cfg.DisableSessionReuse || cfg.MaxStreamsPerSession != 1 || cfg.ClientName != "" ||
		cfg.HeartbeatInterval != 10*time.Second || cfg.HeartbeatTimeout != 5*time.Second || cfg.SynAckTimeout != 10*time.Second ||
		cfg.DialTimeout != 10*time.Second || cfg.StreamBufferSize != 4<<20 || cfg.StreamStallTimeout != 30*time.Second ||
		cfg.DisableHalfClose || cfg.MaxVersion != 2 {
		t.Errorf("defaults: %+v", cfg)
	}
	if cfg.PaddingScheme == nil || cfg.PaddingScheme.MD5() != protocol.DefaultPaddingScheme.MD5() {
		t.Errorf("default padding scheme not selected")
	}
}

func TestClientOptionsMapping(t *testing.T) {
	const scheme = "stop=3\n0=10-20\n1=100-200\n2=300-400,c,500-600"
	o := ClientOptions{
		Password: "pw", PaddingScheme: scheme, IdleSessionCheckInterval: time.Second, IdleSessionTimeout: 2 * time.Second,
		MinIdleSession: 3, DisableSessionReuse: true, MaxStreamsPerSession: 4, ClientName: "x/1",
		HeartbeatInterval: -1, HeartbeatTimeout: 6 * time.Second, SynAckTimeout: 7 * time.Second, DialTimeout: 8 * time.Second,
		StreamBufferSize: 1 << 20, StreamStallTimeout: 9 * time.Second, DisableHalfClose: true, MaxVersion: 1,
	}
	cfg, err := o.ProtocolConfig()
	if err != nil {
		t.Fatal(err)
	}
	want := protocol.ClientConfig{
		Password: "pw", PaddingScheme: cfg.PaddingScheme, IdleSessionCheckInterval: time.Second, IdleSessionTimeout: 2 * time.Second,
		MinIdleSession: 3, DisableSessionReuse: true, MaxStreamsPerSession: 4, ClientName: "x/1",
		HeartbeatInterval: -1, HeartbeatTimeout: 6 * time.Second, SynAckTimeout: 7 * time.Second, DialTimeout: 8 * time.Second,
		StreamBufferSize: 1 << 20, StreamStallTimeout: 9 * time.Second, DisableHalfClose: true, MaxVersion: 1,
	}
	if cfg.PaddingScheme.String() != scheme {
		t.Errorf("padding scheme %q, want %q", cfg.PaddingScheme.String(), scheme)
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("mapping:\n got %+v\nwant %+v", cfg, want)
	}
}

func TestServerOptionsValidate(t *testing.T) {
	u := []User{{Password: "x"}}
	tests := []struct {
		name  string
		opts  ServerOptions
		field string
	}{
		{"no users", ServerOptions{}, "users"},
		{"empty password", ServerOptions{Users: []User{{Name: "a", Password: "x"}, {Name: "b"}}}, "users[1].password"},
		{"duplicate name", ServerOptions{Users: []User{{Name: "a", Password: "x"}, {Name: "a", Password: "y"}}}, "users[1].name"},
		{"fallback", ServerOptions{Users: u, Fallback: "nowhere"}, "fallback"},
		{"fallback port", ServerOptions{Users: u, Fallback: "127.0.0.1:0"}, "fallback"},
		{"auth timeout", ServerOptions{Users: u, AuthTimeout: -1}, "auth_timeout"},
		{"max sessions", ServerOptions{Users: u, MaxSessions: -1}, "max_sessions"},
		{"max streams", ServerOptions{Users: u, MaxStreamsPerSession: -1}, "max_streams_per_session"},
		{"early synack", ServerOptions{Users: u, EarlySynAckDelay: -1}, "early_synack_delay"},
		{"address timeout", ServerOptions{Users: u, AddressTimeout: -1}, "address_timeout"},
		{"buffer", ServerOptions{Users: u, StreamBufferSize: 10}, "stream_buffer_size"},
		{"stall", ServerOptions{Users: u, StreamStallTimeout: -1}, "stream_stall_timeout"},
		{"version", ServerOptions{Users: u, MaxVersion: -1}, "max_version"},
		{"padding", ServerOptions{Users: u, PaddingScheme: "stop=x"}, "padding_scheme"},
	}
	for _, tt := range tests {
		err := tt.opts.Validate()
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tt.field {
			t.Errorf("%s: error %v, want one naming %s", tt.name, err, tt.field)
			continue
		}
		if !strings.Contains(err.Error(), "server option "+tt.field) {
			t.Errorf("%s: message %q", tt.name, err)
		}
		if _, err := tt.opts.ProtocolConfig(nil); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: ProtocolConfig: %v", tt.name, err)
		}
	}
}

func TestServerOptionsMapping(t *testing.T) {
	cfg, err := ServerOptions{Users: []User{{Name: "a", Password: "pa"}, {Password: "pb"}}}.ProtocolConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Users) != 2 || cfg.Users[0] != (protocol.User{Name: "a", Password: "pa"}) || cfg.Users[1].Password != "pb" {
		t.Errorf("users %+v", cfg.Users)
	}
	if cfg.AuthTimeout != 30*time.Second || cfg.IdleSessionTimeout != 5*time.Minute || cfg.MaxSessions != 0 ||
		cfg.MaxStreamsPerSession != 1024 || cfg.EarlySynAckDelay != 2*time.Second || cfg.AddressTimeout != 30*time.Second ||
		cfg.StreamBufferSize != 4<<20 || cfg.StreamStallTimeout != 30*time.Second || cfg.PadDownstream || cfg.MaxVersion != 2 ||
		cfg.Fallback != nil || cfg.PaddingScheme.MD5() != protocol.DefaultPaddingScheme.MD5() {
		t.Errorf("defaults: %+v", cfg)
	}
	cfg, err = ServerOptions{
		Users: []User{{Password: "p"}}, AuthTimeout: time.Second, IdleSessionTimeout: -1, MaxSessions: 5,
		MaxStreamsPerSession: 6, EarlySynAckDelay: 7, AddressTimeout: 8, StreamBufferSize: 1 << 17,
		StreamStallTimeout: 9, PadDownstream: true, DisableHalfClose: true, MaxVersion: 1, Fallback: "127.0.0.1:80",
	}.ProtocolConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.AuthTimeout != time.Second || cfg.IdleSessionTimeout != -1 || cfg.MaxSessions != 5 || cfg.MaxStreamsPerSession != 6 ||
		cfg.EarlySynAckDelay != 7 || cfg.AddressTimeout != 8 || cfg.StreamBufferSize != 1<<17 || cfg.StreamStallTimeout != 9 ||
		!cfg.PadDownstream || !cfg.DisableHalfClose || cfg.MaxVersion != 1 || cfg.Fallback == nil {
		t.Errorf("mapping: %+v", cfg)
	}
}

// The fallback handler splices the replayed connection to the fallback address.
func TestSpliceFallback(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		req := make([]byte, 5)
		if _, err := io.ReadFull(c, req); err != nil {
			return
		}
		c.Write(append([]byte("got "), req...))
	}()
	var dialed string
	dial := func(ctx context.Context, network, address string) (net.Conn, error) {
		dialed = address
		var d net.Dialer
		return d.DialContext(ctx, network, address)
	}
	h := SpliceFallback(ln.Addr().String(), dial)
	a, b := net.Pipe()
	done := make(chan struct{})
	go func() {
		h(context.Background(), b)
		close(done)
	}()
	if _, err := a.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(a)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "got hello" {
		t.Errorf("fallback answered %q", got)
	}
	<-done
	if dialed != ln.Addr().String() {
		t.Errorf("dialed %q", dialed)
	}
}
