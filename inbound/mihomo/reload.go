package mihomo

import (
	"encoding/json"
	"maps"
	"slices"
	"strings"

	"github.com/anytls-engine/anytls/protocol"

	"github.com/metacubex/mihomo/log"
)

// adoptUsers takes the users of next when next differs from the running listener's options in
// its users only: sessions of users still present keep running, removed users' sessions are
// closed, new users can connect at once. It reports whether it did; otherwise mihomo replaces the
// listener (closing every session), as it does for any other change.
func (l *Listener) adoptUsers(next *Options) bool {
	cur, nxt := *l.opts, *next
	cur.Users, nxt.Users = nil, nil
	a, _ := json.Marshal(&cur)
	b, _ := json.Marshal(&nxt)
	if string(a) != string(b) {
		return false
	}
	l.mu.Lock()
	srv, closed := l.srv, l.closed
	l.mu.Unlock()
	if srv == nil || closed {
		return false
	}
	opts := next.ServerOptions()
	users := make([]protocol.User, len(opts.Users))
	for i, u := range opts.Users {
		users[i] = protocol.User{Name: u.Name, Password: u.Password}
	}
	if err := srv.UpdateUsers(users); err != nil {
		log.Warnln("AnyTLS[%s] users not updated in place, restarting the listener: %v", l.Name(), err)
		return false
	}
	var added, removed []string
	for name := range next.Users {
		if _, ok := l.opts.Users[name]; !ok {
			added = append(added, name)
		}
	}
	for name := range l.opts.Users {
		if _, ok := next.Users[name]; !ok {
			removed = append(removed, name)
		}
	}
	slices.Sort(added)
	slices.Sort(removed)
	l.opts.Users = maps.Clone(next.Users)
	log.Infoln("AnyTLS[%s] users updated in place (%d users; added [%s], removed [%s])", l.Name(), len(users), strings.Join(added, " "), strings.Join(removed, " "))
	return true
}
