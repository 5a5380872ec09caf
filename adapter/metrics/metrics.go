// Package metrics exports the engine's server events (protocol.Metrics) as Prometheus metrics.
// The engine stays free of Prometheus: a Collector implements protocol.Metrics and
// prometheus.Collector, and before every scrape it asks the servers it watches to report the
// bytes of streams still open (protocol.Server.ReportBytes), so counters of long downloads move
// while they run rather than when they end.
//
// Metrics (users without a name are counted under user=""):
//
//	anytls_user_bytes_total{user,direction="up|down"}   bytes proxied (up: client to destination)
//	anytls_sessions{user}                               sessions open now
//	anytls_sessions_total{user}                         sessions opened
//	anytls_streams_total{user}                          streams opened
//	anytls_auth_failures_total                          connections that failed authentication
//	anytls_fallbacks_total                              of those, handed to the fallback
//	anytls_limits_reached_total{limit}                  sessions, streams_per_session, idle_timeout
//	anytls_users                                        users configured now
//	anytls_user_reloads_total{result="ok|error"}        users reloads
package metrics

import (
	"net/http"
	"sync"

	"github.com/anytls-engine/anytls/protocol"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Limits are the values of the limit label the engine reports; they are exported as zero from
// the start, so that a dashboard's rate() has a series before the first event.
var Limits = []string{"sessions", "streams_per_session", "idle_timeout"}

// Collector receives the engine's events and is a prometheus.Collector. Its zero value is not
// usable: call New.
type Collector struct {
	userBytes    *prometheus.CounterVec
	sessions     *prometheus.GaugeVec
	sessionsAll  *prometheus.CounterVec
	streams      *prometheus.CounterVec
	authFailures prometheus.Counter
	fallbacks    prometheus.Counter
	limits       *prometheus.CounterVec
	users        prometheus.Gauge
	reloads      *prometheus.CounterVec

	mu      sync.Mutex
	servers map[*protocol.Server]struct{}
}

var (
	_ protocol.Metrics     = (*Collector)(nil)
	_ prometheus.Collector = (*Collector)(nil)
)

// New returns a Collector with every metric at zero.
func New() *Collector {
	c := &Collector{
		userBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "anytls_user_bytes_total",
			Help: "Bytes proxied for a user; direction up is from the client to the destination.",
		}, []string{"user", "direction"}),
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "anytls_sessions",
			Help: "Sessions (authenticated connections) open now.",
		}, []string{"user"}),
		sessionsAll: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "anytls_sessions_total",
			Help: "Sessions opened.",
		}, []string{"user"}),
		streams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "anytls_streams_total",
			Help: "Streams (proxied connections) opened.",
		}, []string{"user"}),
		authFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "anytls_auth_failures_total",
			Help: "Connections that failed authentication (wrong password, not AnyTLS, nothing sent in time).",
		}),
		fallbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "anytls_fallbacks_total",
			Help: "Connections that failed authentication and were handed to the fallback.",
		}),
		limits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "anytls_limits_reached_total",
			Help: "Times a limit was reached: sessions (max sessions), streams_per_session (max streams per session), idle_timeout (idle session closed).",
		}, []string{"limit"}),
		users: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "anytls_users",
			Help: "Users configured now.",
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "anytls_user_reloads_total",
			Help: "Reloads of the users; result error means the old users were kept.",
		}, []string{"result"}),
		servers: map[*protocol.Server]struct{}{},
	}
	for _, l := range Limits {
		c.limits.WithLabelValues(l)
	}
	c.reloads.WithLabelValues("ok")
	c.reloads.WithLabelValues("error")
	return c
}

// Watch makes every scrape first collect the bytes of srv's open streams. srv must have been
// created with this Collector as its Metrics. Unwatch when srv is closed.
func (c *Collector) Watch(srv *protocol.Server) {
	c.mu.Lock()
	c.servers[srv] = struct{}{}
	c.mu.Unlock()
}

// Unwatch undoes Watch.
func (c *Collector) Unwatch(srv *protocol.Server) {
	c.mu.Lock()
	delete(c.servers, srv)
	c.mu.Unlock()
}

// SetUsers records the configured users: the count, and a zero series for each user, so that a
// user who has not connected yet shows on a dashboard.
func (c *Collector) SetUsers(names []string) {
	c.users.Set(float64(len(names)))
	for _, name := range names {
		c.userBytes.WithLabelValues(name, "up")
		c.userBytes.WithLabelValues(name, "down")
		c.sessions.WithLabelValues(name)
		c.streams.WithLabelValues(name)
	}
}

// Reloaded counts a reload of the users.
func (c *Collector) Reloaded(err error) {
	if err != nil {
		c.reloads.WithLabelValues("error").Inc()
		return
	}
	c.reloads.WithLabelValues("ok").Inc()
}

// SessionOpened implements protocol.Metrics.
func (c *Collector) SessionOpened(user string) {
	c.sessions.WithLabelValues(user).Inc()
	c.sessionsAll.WithLabelValues(user).Inc()
}

// SessionClosed implements protocol.Metrics.
func (c *Collector) SessionClosed(user string) { c.sessions.WithLabelValues(user).Dec() }

// StreamOpened implements protocol.Metrics.
func (c *Collector) StreamOpened(user string) { c.streams.WithLabelValues(user).Inc() }

// BytesTransferred implements protocol.Metrics.
func (c *Collector) BytesTransferred(user string, up, down int64) {
	if up > 0 {
		c.userBytes.WithLabelValues(user, "up").Add(float64(up))
	}
	if down > 0 {
		c.userBytes.WithLabelValues(user, "down").Add(float64(down))
	}
}

// AuthFailed implements protocol.Metrics.
func (c *Collector) AuthFailed() { c.authFailures.Inc() }

// Fallback implements protocol.Metrics.
func (c *Collector) Fallback() { c.fallbacks.Inc() }

// LimitReached implements protocol.Metrics.
func (c *Collector) LimitReached(limit string) { c.limits.WithLabelValues(limit).Inc() }

func (c *Collector) metrics() []prometheus.Collector {
	return []prometheus.Collector{c.userBytes, c.sessions, c.sessionsAll, c.streams, c.authFailures, c.fallbacks, c.limits, c.users, c.reloads}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range c.metrics() {
		m.Describe(ch)
	}
}

// Collect implements prometheus.Collector: the watched servers report their open streams'
// bytes first.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	servers := make([]*protocol.Server, 0, len(c.servers))
	for srv := range c.servers {
		servers = append(servers, srv)
	}
	c.mu.Unlock()
	for _, srv := range servers {
		srv.ReportBytes()
	}
	for _, m := range c.metrics() {
		m.Collect(ch)
	}
}

// Handler returns an http.Handler serving c, with the Go runtime and process metrics, in
// Prometheus' exposition formats.
func (c *Collector) Handler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Mux returns a ServeMux with Handler at /metrics.
func (c *Collector) Mux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", c.Handler())
	return mux
}
