package userfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anytls-engine/anytls/option"
)

func TestParse(t *testing.T) {
	users, err := Parse([]byte(`[{"name": "bob", "password": "pw-bob"}, {"name": "alice", "password": "pw-alice"}]`))
	if err != nil {
		t.Fatal(err)
	}
	want := []option.User{{Name: "bob", Password: "pw-bob"}, {Name: "alice", Password: "pw-alice"}}
	if len(users) != 2 || users[0] != want[0] || users[1] != want[1] {
		t.Fatalf("got %v, want %v", users, want)
	}
}

func TestParseErrorsNameTheEntry(t *testing.T) {
	for _, c := range []struct{ name, in, want string }{
		{"syntax", "[\n {\"name\": \"bob\", \"password\": \"x\"},\n {\"name\": \"eve\" \"password\": \"y\"}\n]", "line 3 column 17"},
		{"object", `{"name": "bob", "password": "x"}`, "found a JSON object, want a JSON list"},
		{"empty", `[]`, "no users"},
		{"missing password", `[{"name": "bob", "password": "x"}, {"name": "carol"}]`, `users[1] ("carol"): password is missing`},
		{"empty password", `[{"name": "carol", "password": ""}]`, `users[0] ("carol"): password is missing or empty`},
		{"missing name", `[{"password": "x"}]`, `users[0]: name is missing`},
		{"misspelt key", `[{"name": "bob", "password": "x"}, {"name": "dave", "passwd": "y"}]`, `users[1] ("dave"): json: unknown field "passwd"`},
		{"duplicate name", `[{"name": "bob", "password": "x"}, {"name": "bob", "password": "y"}]`, `users[1] ("bob"): name already used by users[0]`},
		{"duplicate password", `[{"name": "bob", "password": "x"}, {"name": "eve", "password": "x"}]`, `users[1] ("eve"): same password as users[0] ("bob")`},
		{"number password", `[{"name": "bob", "password": 12}]`, `users[0] ("bob"): line 1 column 30: found a JSON number for password`},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.in))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
		})
	}
}

func TestLoadNamesTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users.json")
	os.WriteFile(path, []byte(`[{"name": "bob"}]`), 0o600)
	_, err := Load(path)
	if err == nil || !strings.HasPrefix(err.Error(), path+`: users[0] ("bob"): password`) {
		t.Fatalf("error %v, want one naming the file and the entry", err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "none.json")); !os.IsNotExist(err) {
		t.Fatalf("missing file: %v", err)
	}
}

// watch starts a Watcher on path whose callbacks arrive on the returned channel.
func watch(t *testing.T, path string) <-chan struct{} {
	t.Helper()
	ch := make(chan struct{}, 10)
	w, err := Watch(path, func() { ch <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return ch
}

func expectCall(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no callback", what)
	}
}

// expectNoCall waits a few debounce periods: the callback would have come by then.
func expectNoCall(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
		t.Fatalf("%s: unexpected callback", what)
	case <-time.After(5 * Debounce):
	}
}

func TestWatchWriteRenameAndTouch(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "users.json")
	os.WriteFile(path, []byte(`[1]`), 0o600)
	ch := watch(t, path)

	os.WriteFile(path, []byte(`[2]`), 0o600) // in place
	expectCall(t, ch, "write in place")

	tmp := filepath.Join(dir, ".users.json.swp")
	os.WriteFile(tmp, []byte(`[3]`), 0o600) // editors' rename-on-save
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	expectCall(t, ch, "rename over")

	now := time.Now()
	os.Chtimes(path, now, now) // same content: nothing to reload
	os.WriteFile(filepath.Join(dir, "other.json"), []byte(`x`), 0o600)
	expectNoCall(t, ch, "touch and a neighbour's change")

	os.Remove(path)
	expectNoCall(t, ch, "removed")
	os.WriteFile(path, []byte(`[4]`), 0o600)
	expectCall(t, ch, "created again")
}

func TestWatchSymlinkSwap(t *testing.T) {
	// The layout of a Kubernetes ConfigMap volume: users.json -> ..data/users.json, and ..data a
	// symlink to a timestamped directory that is swapped atomically.
	dir := t.TempDir()
	for i, content := range []string{`[1]`, `[2]`} {
		d := filepath.Join(dir, "v"+string(rune('0'+i)))
		os.Mkdir(d, 0o700)
		os.WriteFile(filepath.Join(d, "users.json"), []byte(content), 0o600)
	}
	if err := os.Symlink("v0", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "users.json")
	os.Symlink(filepath.Join("..data", "users.json"), path)
	ch := watch(t, path)
	os.Symlink("v1", filepath.Join(dir, "..data_tmp"))
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	expectCall(t, ch, "symlink swap")
}
