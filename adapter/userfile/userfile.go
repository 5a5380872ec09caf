// Package userfile reads a users file, a JSON list in sing-box's users form
//
//	[{"name": "bob", "password": "…"}, {"name": "alice", "password": "…"}]
//
// and watches it for changes, so that a server can take new users without a restart.
package userfile

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/anytls-engine/anytls/option"

	"github.com/fsnotify/fsnotify"
)

// Error is a problem with a users file; Entry is the index of the user at fault, or -1 when
// the file as a whole is wrong.
type Error struct {
	Path   string
	Entry  int
	Name   string // the entry's name, when it has one
	Reason string
}

func (e *Error) Error() string {
	where := e.Path
	if where == "" {
		where = "users"
	}
	switch {
	case e.Entry < 0:
		return fmt.Sprintf("%s: %s", where, e.Reason)
	case e.Name != "":
		return fmt.Sprintf("%s: users[%d] (%q): %s", where, e.Entry, e.Name, e.Reason)
	default:
		return fmt.Sprintf("%s: users[%d]: %s", where, e.Entry, e.Reason)
	}
}

// Load reads and checks the users file at path.
func Load(path string) ([]option.User, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	users, err := Parse(data)
	var ue *Error
	if errors.As(err, &ue) {
		ue.Path = path
	}
	return users, err
}

type entry struct {
	Name     *string `json:"name"`
	Password *string `json:"password"`
}

// Parse parses and checks a users list. Every entry needs a unique name (it labels the user's
// metrics, logs and share link) and a password no other entry has (the password is what
// identifies the user); unknown keys are refused, so a misspelt "password" cannot go unnoticed.
func Parse(data []byte) ([]option.User, error) {
	var raw []json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, &Error{Entry: -1, Reason: describeJSONError(data, err, "a JSON list of {\"name\": ..., \"password\": ...}")}
	}
	if len(raw) == 0 {
		return nil, &Error{Entry: -1, Reason: "no users: the list is empty"}
	}
	users := make([]option.User, len(raw))
	names := map[string]int{}
	passwords := map[string]int{}
	for i, r := range raw {
		var e entry
		dec := json.NewDecoder(bytes.NewReader(r))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&e); err != nil {
			name := ""
			var loose struct {
				Name string `json:"name"`
			}
			if json.Unmarshal(r, &loose) == nil {
				name = loose.Name
			}
			return nil, &Error{Entry: i, Name: name, Reason: describeJSONError(r, err, "an object with the keys name and password")}
		}
		fail := func(reason string) error {
			name := ""
			if e.Name != nil {
				name = *e.Name
			}
			return &Error{Entry: i, Name: name, Reason: reason}
		}
		switch {
		case e.Name == nil || *e.Name == "":
			return nil, fail("name is missing (it labels the user's metrics, logs and share link)")
		case e.Password == nil || *e.Password == "":
			return nil, fail("password is missing or empty")
		}
		if j, dup := names[*e.Name]; dup {
			return nil, fail(fmt.Sprintf("name already used by users[%d]", j))
		}
		if j, dup := passwords[*e.Password]; dup {
			return nil, fail(fmt.Sprintf("same password as users[%d] (%q): passwords identify users, they must differ", j, users[j].Name))
		}
		names[*e.Name] = i
		passwords[*e.Password] = i
		users[i] = option.User{Name: *e.Name, Password: *e.Password}
	}
	return users, nil
}

// describeJSONError turns a decoding error into a message with the line and column.
func describeJSONError(data []byte, err error, want string) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		line, col := position(data, se.Offset)
		return fmt.Sprintf("line %d column %d: %v", line, col, se)
	case errors.As(err, &te):
		line, col := position(data, te.Offset)
		field := ""
		if te.Field != "" {
			field = " for " + te.Field
		}
		return fmt.Sprintf("line %d column %d: found a JSON %s%s, want %s", line, col, te.Value, field, want)
	}
	return err.Error()
}

// position converts a byte offset into a 1-based line and column.
func position(data []byte, offset int64) (line, col int) {
	offset = min(max(offset, 0), int64(len(data)))
	before := data[:offset]
	line = bytes.Count(before, []byte("\n")) + 1
	col = int(offset) - (bytes.LastIndexByte(before, '\n') + 1)
	return line, max(col, 1)
}

// Debounce is how long the Watcher waits after the last change it saw before calling back:
// editors and deploy tools write a file in several steps.
const Debounce = 100 * time.Millisecond

// Watcher calls back when the content of a file changes. It watches the file's directory, not the
// file, so it follows editors that save by writing a new file and renaming it over the old one,
// and symlink swaps (Kubernetes ConfigMaps).
type Watcher struct {
	path    string
	changed func()
	fsw     *fsnotify.Watcher
	done    chan struct{}

	mu   sync.Mutex
	last [32]byte // hash of the content last seen
}

// Watch starts watching path; changed runs (on the Watcher's goroutine, never concurrently with
// itself) each time the file's content differs from what it was when last seen. Close the
// Watcher to stop.
func Watch(path string, changed func()) (*Watcher, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", path, err)
	}
	if err := fsw.Add(filepath.Dir(abs)); err != nil {
		fsw.Close()
		return nil, fmt.Errorf("watch %s: %w", filepath.Dir(abs), err)
	}
	w := &Watcher{path: abs, changed: changed, fsw: fsw, done: make(chan struct{})}
	w.last, _ = w.hash()
	go w.run()
	return w, nil
}

// Close stops watching and waits for a callback in progress.
func (w *Watcher) Close() error {
	err := w.fsw.Close()
	<-w.done
	return err
}

func (w *Watcher) hash() ([32]byte, error) {
	data, err := os.ReadFile(w.path)
	if err != nil {
		return [32]byte{}, err
	}
	return sha256.Sum256(data), nil
}

func (w *Watcher) relevant(ev fsnotify.Event) bool {
	if filepath.Clean(ev.Name) == w.path {
		return true
	}
	// A symlinked file changes when a link on its way is swapped (..data in a ConfigMap).
	fi, err := os.Lstat(w.path)
	return err == nil && fi.Mode()&os.ModeSymlink != 0
}

func (w *Watcher) run() {
	defer close(w.done)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case ev, ok := <-w.fsw.Events:
			if !ok {
				return
			}
			if w.relevant(ev) {
				timer.Reset(Debounce)
			}
		case _, ok := <-w.fsw.Errors:
			if !ok {
				return
			}
			// An overflow loses events: look at the file anyway.
			timer.Reset(Debounce)
		case <-timer.C:
			h, err := w.hash()
			if err != nil {
				// Mid-rename or deleted: the next event brings it back. A deleted file keeps
				// the users in force; the owner's reload reports the error if asked.
				continue
			}
			w.mu.Lock()
			same := h == w.last
			w.last = h
			w.mu.Unlock()
			if !same {
				w.changed()
			}
		}
	}
}
