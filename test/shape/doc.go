// Package shape measures the traffic shape of AnyTLS connections on the wire: a TCP proxy in
// the middle records the TLS record headers in each direction and derives each record's
// plaintext length from the negotiated cipher's overhead. The tests check the record sizes of
// the first packets of new and reused sessions against the padding scheme (spec §6, §6.1), for
// our client, for the deployed clients (sing-anytls v0.0.11 and mihomo v1.19.23's
// transport/anytls), and for our server's downstream padding; and they check that the fallback
// makes a prober's view of our server indistinguishable from a TLS front of the web server.
//
// These tests run WITHOUT the race detector (make test-peers): they run the peers' code, which
// has data races of its own. The engine itself is race-tested in protocol/.
//
// The tests live in _test.go files; this file only documents the package.
package shape
