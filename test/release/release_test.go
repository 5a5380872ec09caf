// Package release checks that cmd/anytls resolves for every target of `make release`.
//
// A cold cross build of cmd/anytls costs about 3.5 CPU-minutes per target on this project's
// 2-core machines (measured: 18 min wall for linux/arm64 on a loaded machine), too much for
// `make test`; `make release` does the full builds. What this test runs in seconds is the part
// that breaks when a dependency or a build tag does not support a target: resolving the whole
// import graph with that target's GOOS/GOARCH and build tags, with every package's errors
// (missing packages, build constraints excluding all files, import cycles) reported.
package release

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

const tags = "with_gvisor,with_utls,with_acme,with_clash_api"

// targets reads RELEASE_TARGETS from the Makefile, so the test and the release cannot drift.
func targets(t *testing.T) []string {
	t.Helper()
	makefile, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^RELEASE_TARGETS\s*:?=\s*(.+)$`).FindSubmatch(makefile)
	if m == nil {
		t.Fatal("no RELEASE_TARGETS in the Makefile")
	}
	list := strings.Fields(string(m[1]))
	want := []string{"linux-amd64", "linux-arm64", "linux-armv7", "linux-mipsle", "windows-amd64", "darwin-arm64", "android-arm64"}
	for _, w := range want {
		if !strings.Contains(" "+strings.Join(list, " ")+" ", " "+w+" ") {
			t.Fatalf("RELEASE_TARGETS %v lacks %s", list, w)
		}
	}
	return list
}

func TestReleaseTargetsResolve(t *testing.T) {
	for _, target := range targets(t) {
		t.Run(target, func(t *testing.T) {
			t.Parallel()
			goos, arch, _ := strings.Cut(target, "-")
			env := append(os.Environ(), "CGO_ENABLED=0", "GOOS="+goos, "GOMIPS=softfloat")
			if arch == "armv7" {
				env = append(env, "GOARCH=arm", "GOARM=7")
			} else {
				env = append(env, "GOARCH="+arch)
			}
			cmd := exec.Command("go", "list", "-e", "-deps", "-tags", tags,
				"-f", "{{.ImportPath}}{{if .Error}} ERROR {{.Error}}{{end}}{{range .DepsErrors}} ERROR {{.}}{{end}}",
				"github.com/anytls-engine/anytls/cmd/anytls")
			cmd.Env = env
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("go list: %v\n%s", err, out)
			}
			deps := map[string]bool{}
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if strings.Contains(line, " ERROR ") {
					t.Errorf("%s", line)
				}
				path, _, _ := strings.Cut(line, " ")
				deps[path] = true
			}
			// The release carries the sing-box host with its tagged features and our adapters.
			for _, want := range []string{
				"github.com/anytls-engine/anytls/inbound/singbox",
				"github.com/anytls-engine/anytls/outbound/singbox",
				"github.com/sagernet/sing-box/protocol/tun",
				"github.com/sagernet/sing-box/experimental/clashapi",
				"github.com/sagernet/sing-box/service/acme",
			} {
				if !deps[want] {
					t.Errorf("%s: %s not linked", target, want)
				}
			}
		})
	}
}
