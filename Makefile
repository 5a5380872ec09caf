# The Makefile is the interface: run, test, bench, lint, fuzz.
SHELL := /bin/bash
GO ?= go
TAGS ?= with_gvisor,with_utls,with_acme,with_clash_api
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.7.0
FUZZTIME ?= 60s
# Our own code runs under the race detector: the engine, options, adapters and the fault suite.
# Packages that link or run the hosts' and peers' code (sing-box, mihomo, sing-anytls: cmd/,
# inbound/, outbound/, the host wiring in internal/, and test/ but test/fault) run without it:
# those libraries have data races of their own, and a race build of both hosts would also double
# the cold build time of `make test`.
RACE_PKGS := ./protocol/... ./option/... ./adapter/... ./internal/testcert/... ./internal/testnet/... ./test/fault/...
PEER_PKGS = $(shell $(GO) list -tags $(TAGS) ./... | grep -v -E '/(protocol|option|adapter|internal/testcert|internal/testnet|test/fault)(/|$$)')

.PHONY: all build release run test test-race test-peers tun-prereqs bench lint fuzz soak clean

all: build

build:
	$(GO) build -tags $(TAGS) -o bin/anytls ./cmd/anytls

# Static, stripped binaries in bin/release/ for each target (test/release checks they resolve).
RELEASE_TARGETS := linux-amd64 linux-arm64 linux-armv7 linux-mipsle windows-amd64 darwin-arm64 android-arm64

release:
	@set -e; for t in $(RELEASE_TARGETS); do \
	  os=$${t%%-*}; arch=$${t#*-}; arm=; ext=; \
	  if [ $$arch = armv7 ]; then arch=arm; arm=7; fi; \
	  if [ $$os = windows ]; then ext=.exe; fi; \
	  echo "== $$t"; \
	  CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch GOARM=$$arm GOMIPS=softfloat \
	    $(GO) build -trimpath -ldflags '-s -w' -tags $(TAGS) -o bin/release/anytls-$$t$$ext ./cmd/anytls; \
	done

# A server and a client on loopback, and a request through them (Ctrl-C to stop).
run:
	$(GO) run -tags $(TAGS) ./cmd/anytls demo

test: test-race test-peers

test-race:
	$(GO) test -race -count=1 -timeout 10m -tags $(TAGS) $(RACE_PKGS)

# test/tun (full-device TUN routing in network namespaces) needs root, ip (iproute2) and
# /dev/net/tun, and fails naming what is missing; as root with apt-get, iproute2 is installed
# here when missing. ANYTLS_SKIP_TUN=1, set by the person running make (never here), skips it.
test-peers: tun-prereqs
	@if [ "$$ANYTLS_SKIP_TUN" = 1 ]; then echo "test/tun: SKIPPED (ANYTLS_SKIP_TUN=1): the TUN end-to-end tests will not run"; fi
	$(GO) test -count=1 -timeout 15m -tags $(TAGS) $(PEER_PKGS)

tun-prereqs:
	@if ! command -v ip >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "test/tun needs ip: apt-get install iproute2"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2; \
	fi

# Ours side by side with raw TCP, crypto/tls, sing-anytls and mihomo (see BENCHMARKS.md);
# BENCHFLAGS passes options, e.g. BENCHFLAGS='-runs 1 -metrics bulk'. Output also in bin/bench.txt.
bench:
	$(GO) build -tags $(TAGS) -o bin/anytls-bench ./test/bench
	set -o pipefail; bin/anytls-bench $(BENCHFLAGS) | tee bin/bench.txt

# The engine's own microbenchmarks.
bench-engine:
	$(GO) test -run '^$$' -bench . -benchmem -tags $(TAGS) ./protocol/...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	$(GO) vet -tags $(TAGS) ./...
	$(GO) run $(STATICCHECK) -tags $(TAGS) ./...

# Every fuzz target for FUZZTIME each (packages found by their func Fuzz, so that listing does not
# build every test binary in the module).
fuzz:
	@set -e; for pkg in $$(grep -rl --include='*_test.go' --exclude-dir=.git '^func Fuzz' . | xargs -r -n1 dirname | sort -u); do \
	  for f in $$($(GO) test -tags $(TAGS) -list '^Fuzz' ./$$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -tags $(TAGS) -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) ./$$pkg; \
	  done; \
	done

# The long forms of the fault suite (10 000 streams over 50 sessions, ...); see test/fault.
soak:
	ANYTLS_SOAK=1 $(GO) test -count=1 -run Soak -timeout 60m -v ./test/fault/

clean:
	rm -rf bin
