// Package mihomo tests mihomo v1.19.23 running with this module's anytls (internal/mihomorun,
// outbound/mihomo, inbound/mihomo), in process, on loopback only. The configuration is built from
// examples/mihomo/client.yaml and server.yaml (servers, ports and certificates rewritten) plus a
// few test-only proxies and mixed listeners, and applied once in TestMain: mihomo is
// package-level global state, one instance per process. Proof that ours, never the built-in,
// carries a proxy comes from a detector server that reads each session's cmdSettings: our client
// announces x-anytls-halfclose=1, mihomo's built-in does not, and the detector refuses it.
//
// These tests run WITHOUT the race detector (make test-peers): mihomo has data races of its
// own, which -race would report against mihomo, not against us.
package mihomo
