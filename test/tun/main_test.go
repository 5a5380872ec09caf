package tun

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// roleEnv selects a helper role when this test binary is re-executed inside a namespace.
	roleEnv = "ANYTLS_TUN_ROLE"
	// argsEnv carries the role's parameters (JSON).
	argsEnv = "ANYTLS_TUN_ARGS"
	// skipEnv, set to 1 by the person running the tests, skips them. Never set by the
	// Makefile or CI.
	skipEnv = "ANYTLS_SKIP_TUN"
	// logsEnv names a directory that receives every process's log (for debugging).
	logsEnv = "ANYTLS_TUN_LOGS"
	// buildTags are the Makefile's TAGS: the binary under test is the one `make build` makes.
	buildTags = "with_gvisor,with_utls,with_acme,with_clash_api"
)

var (
	skipped bool   // ANYTLS_SKIP_TUN=1
	envErr  error  // what this machine lacks (root, ip, /dev/net/tun)
	selfBin string // this test binary, re-executed for the helper roles

	anytlsBin string // cmd/anytls, built by the first test that needs it (buildOnce)
	binDir    string
	buildOnce = sync.OnceValue(func() error {
		var err error
		if binDir, err = os.MkdirTemp("", fmt.Sprintf("%s-%d-bin-", nsPrefix, os.Getpid())); err != nil {
			return err
		}
		anytlsBin = filepath.Join(binDir, "anytls")
		return buildAnytls(anytlsBin)
	})
)

func TestMain(m *testing.M) {
	if role := os.Getenv(roleEnv); role != "" {
		os.Exit(runRole(role, os.Getenv(argsEnv)))
	}
	flag.Parse()
	if os.Getenv(skipEnv) == "1" {
		skipped = true
		fmt.Println("test/tun: SKIPPED: ANYTLS_SKIP_TUN=1 is set; the TUN end-to-end tests did not run")
		os.Exit(m.Run())
	}
	envErr = checkPrerequisites()
	if envErr == nil {
		var err error
		if selfBin, err = os.Executable(); err != nil {
			envErr = err
		}
		sweepStale()
	}
	// Whatever happens, nothing the tests created outlives them: a deferred cleanup after the
	// tests, one on SIGINT/SIGTERM, and one shortly before go test's -timeout would kill the
	// binary without running deferred code. Child processes also get SIGKILL when this
	// process dies (Pdeathsig), and stale namespaces of dead runs are swept at start.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "test/tun: %v: removing the test namespaces\n", s)
		cleanupAll()
		if binDir != "" {
			os.RemoveAll(binDir)
		}
		os.Exit(1)
	}()
	if f := flag.Lookup("test.timeout"); f != nil {
		if d, err := time.ParseDuration(f.Value.String()); err == nil && d > time.Minute {
			watchdog := time.AfterFunc(d-30*time.Second, func() {
				fmt.Fprintln(os.Stderr, "test/tun: -timeout is near: removing the test namespaces")
				cleanupAll()
			})
			defer watchdog.Stop()
		}
	}
	code := m.Run()
	cleanupAll()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// checkPrerequisites names everything this machine lacks for the tests.
func checkPrerequisites() error {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (the tests create network namespaces and TUN devices; run them as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		missing = append(missing, "the ip command from iproute2 (apt-get install -y iproute2)")
	}
	if f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0); err != nil {
		missing = append(missing, fmt.Sprintf("a usable /dev/net/tun (%v; load the tun module, or give the container the device)", err))
	} else {
		f.Close() // opening it creates nothing; a device needs TUNSETIFF
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("test/tun cannot run: missing %s. Set %s=1 to skip these tests deliberately",
		strings.Join(missing, "; "), skipEnv)
}

// buildAnytls builds cmd/anytls with the Makefile's tags.
func buildAnytls(out string) error {
	start := time.Now()
	// -s -w (as make release) only leaves out the symbol tables: linking is much faster.
	cmd := exec.Command("go", "build", "-tags", buildTags, "-ldflags", "-s -w", "-o", out, "github.com/anytls-engine/anytls/cmd/anytls")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/anytls: %v\n%s", err, b)
	}
	fmt.Fprintf(os.Stderr, "test/tun: built anytls in %.1fs\n", time.Since(start).Seconds())
	return nil
}

// requireTUN fails the test when the machine cannot run it, and skips it only on ANYTLS_SKIP_TUN=1.
func requireTUN(t *testing.T) {
	t.Helper()
	if skipped {
		t.Skipf("%s=1: skipped by request", skipEnv)
	}
	if envErr != nil {
		t.Fatal(envErr)
	}
	if err := buildOnce(); err != nil {
		t.Fatal(err)
	}
}
