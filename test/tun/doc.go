// Package tun tests full-device (TUN) routing through anytls end to end, the way a phone or a PC
// uses it: a TUN device captures every connection of a machine and hands it to an anytls
// outbound. It runs the real `anytls run -c` binary with the example configurations
// (examples/singbox/tun-client.json, examples/mihomo/tun-client.yaml and the server examples),
// with only addresses, ports, certificates and passwords substituted, in three network
// namespaces that the test creates with unique names and removes afterwards:
//
//	client  198.51.100.2  2001:db8:1::2   the TUN client; its only route leads to the server
//	   |  veth
//	server  198.51.100.1  2001:db8:1::1   anytls inbound + direct outbound (forwarding off)
//	        203.0.113.1   2001:db8:2::1
//	   |  veth
//	target  203.0.113.2   2001:db8:2::2   HTTP, UDP echo and DNS servers (this test binary)
//
// Documentation addresses (TEST-NET-2/3, 2001:db8::/32) stand in for the Internet: they are
// public for sing-box's ip_is_private and mihomo's private-range rules, so the examples' "private
// addresses go direct" rules stay as written. Every packet stays inside these namespaces: none
// of them is connected to the root namespace, and nothing (TUN devices, routes, rules) is
// created there.
//
// From the client namespace, a probe with no proxy settings (this test binary again, resolving
// names through the namespace's /etc/resolv.conf like any program) runs DNS, HTTP over IPv4 and
// IPv6, UDP round trips (UDP over TCP in anytls), and a 64 MiB download and upload with
// checksums (their rates are logged, beside the direct path's from the server namespace); the
// target reports the address it sees, which must be the server's. The same probe must fail
// before the client starts and after it stops (proof that the path is the tunnel), and the
// client must remove its TUN device and its routing rules when it stops.
//
// The processes' logs are shown when a test fails; ANYTLS_TUN_LOGS=DIR also copies them all to
// DIR.
//
// Requirements: root, `ip` (iproute2) and /dev/net/tun. A missing one fails the tests with a
// message naming it; ANYTLS_SKIP_TUN=1, set by the person running the tests, skips them.
//
// These tests run without the race detector (make test-peers): the processes under test are
// separate binaries, and this package runs no peer code in-process.
package tun
