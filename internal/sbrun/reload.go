package sbrun

import (
	"context"
	"fmt"
	"slices"

	sbinbound "github.com/anytls-engine/anytls/inbound/singbox"
	aoption "github.com/anytls-engine/anytls/option"

	box "github.com/sagernet/sing-box"
	"github.com/sagernet/sing-box/option"
	"github.com/sagernet/sing/common/json"
)

// ReloadUsers applies a re-read configuration to a running box in place when the only change is
// in the users of anytls inbounds: those inbounds take the new users (sessions of users still
// present keep running, removed users' sessions are closed, new users connect at once) and
// nothing restarts. It reports false, doing nothing, when anything else changed or nothing did
// (then the caller restarts the box, as sing-box does on SIGHUP, which also re-reads the files a
// configuration names). ctx must carry the registries.
func ReloadUsers(ctx context.Context, instance *box.Box, running, next option.Options) (bool, []string, error) {
	a, err := withoutAnyTLSUsers(ctx, running)
	if err != nil {
		return false, nil, err
	}
	b, err := withoutAnyTLSUsers(ctx, next)
	if err != nil {
		return false, nil, err
	}
	if string(a) != string(b) {
		return false, nil, nil
	}
	before := anytlsUsers(running)
	var changed []string
	for tag, users := range anytlsUsers(next) {
		if !slices.Equal(before[tag], users) {
			changed = append(changed, tag)
		}
	}
	if len(changed) == 0 {
		return false, nil, nil
	}
	slices.Sort(changed)
	// Check every inbound's users before changing any, so that a bad entry changes nothing.
	targets := make([]*sbinbound.Inbound, len(changed))
	for i, tag := range changed {
		in, ok := instance.Inbound().Get(tag)
		if !ok {
			return false, nil, nil
		}
		h, ok := in.(*sbinbound.Inbound)
		if !ok {
			return false, nil, nil
		}
		targets[i] = h
		check := h.EffectiveOptions()
		check.Users = toUsers(anytlsUsers(next)[tag])
		if _, err := check.ProtocolConfig(nil); err != nil {
			return true, nil, fmt.Errorf("inbound[%s]: %w", tag, err)
		}
	}
	for i, h := range targets {
		if err := h.UpdateUsers(anytlsUsers(next)[changed[i]]); err != nil {
			return true, changed[:i], fmt.Errorf("inbound[%s]: %w", changed[i], err)
		}
	}
	return true, changed, nil
}

// anytlsUsers maps the tag of each anytls inbound (this engine's) to its users.
func anytlsUsers(o option.Options) map[string][]option.AnyTLSUser {
	out := map[string][]option.AnyTLSUser{}
	for _, in := range o.Inbounds {
		if opts, ok := in.Options.(*sbinbound.Options); ok {
			out[in.Tag] = opts.Users
		}
	}
	return out
}

func toUsers(users []option.AnyTLSUser) []aoption.User {
	out := make([]aoption.User, len(users))
	for i, u := range users {
		out[i] = aoption.User{Name: u.Name, Password: u.Password}
	}
	return out
}

// withoutAnyTLSUsers encodes o with the users of anytls inbounds left out.
func withoutAnyTLSUsers(ctx context.Context, o option.Options) ([]byte, error) {
	o.Inbounds = slices.Clone(o.Inbounds)
	for i, in := range o.Inbounds {
		if opts, ok := in.Options.(*sbinbound.Options); ok {
			c := *opts
			c.Users = nil
			o.Inbounds[i].Options = &c
		}
	}
	if o.Log != nil {
		// Run sets DisableColor (and creates Log for it) on the running options only.
		l := *o.Log
		l.DisableColor = false
		o.Log = &l
		if l == (option.LogOptions{}) {
			o.Log = nil
		}
	}
	return json.MarshalContext(ctx, o)
}
