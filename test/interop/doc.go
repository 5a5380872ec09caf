// Package interop tests the engine in protocol/ against the AnyTLS implementations that are
// deployed today, over real TLS 1.3 on loopback, in both directions:
//
//   - github.com/anytls/sing-anytls v0.0.11, the library sing-box v1.14.1 ships (client and
//     service), with sing's common/uot for UDP as sing-box uses it;
//   - mihomo v1.19.23: its transport/anytls client and its real anytls listener
//     (listener/anytls) in front of a minimal tunnel, with its UoT path.
//
// The tests live in _test.go files; this file only documents the package.
//
// These tests run WITHOUT the race detector (make test-peers): both peers have data races of
// their own (for example sing-anytls' Session.peerVersion and Stream.dieErr are read and
// written from different goroutines without synchronisation), which -race would report
// against the peer, not against us. The engine itself is race-tested in protocol/.
//
// Peers' streams corrupt a single write larger than 65535 bytes (the frame length wraps), so
// everything written into a peer's stream is split into writes of at most 65535 bytes; our
// streams are written with 1 MiB writes.
package interop
