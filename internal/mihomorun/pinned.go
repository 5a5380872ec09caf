package mihomorun

// The only place where this module reads or writes mihomo's unexported state. It is written
// against github.com/metacubex/mihomo v1.19.23; pinned_test.go fails when the module version or
// any of the shapes below changes, and at run time a changed shape is an error, never a panic.
//
// Why it is needed: proxies of file and http proxy-providers are built by the provider's fetcher,
// inside ApplyConfig and again on every update of the file or URL, through a parser function
// stored in an unexported field; mihomo offers no hook. The wiring replaces that parser by one
// that delegates to it and then swaps the built-in anytls adapters for ours, and it reads each
// built-in adapter's decoded options (its unexported option field) to learn what the provider's
// override and filters made of the entry.

import (
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"runtime"
	"runtime/debug"
	"strings"
	"unsafe"

	"github.com/metacubex/mihomo/adapter/outbound"
	"github.com/metacubex/mihomo/component/resource"
	C "github.com/metacubex/mihomo/constant"
)

// PinnedMihomoVersion is the mihomo version whose internals pinned.go relies on.
const PinnedMihomoVersion = "v1.19.23"

// errInternals reports that mihomo's internals no longer have the expected shape.
var errInternals = errors.New("mihomo internals differ from " + PinnedMihomoVersion + " (internal/mihomorun/pinned.go needs updating)")

// MihomoVersion returns the version of the mihomo module linked in: from the build information,
// or (in test binaries, which carry none) from the source path of a mihomo function, which holds
// "mihomo@<version>". It is "" when neither says.
func MihomoVersion() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path == "github.com/metacubex/mihomo" {
				if dep.Replace != nil {
					return dep.Replace.Version
				}
				return dep.Version
			}
		}
	}
	pc := reflect.ValueOf(outbound.NewAnyTLS).Pointer()
	if fn := runtime.FuncForPC(pc); fn != nil {
		file, _ := fn.FileLine(pc)
		if _, rest, ok := strings.Cut(filepath.ToSlash(file), "/metacubex/mihomo@"); ok {
			v, _, _ := strings.Cut(rest, "/")
			return v
		}
	}
	return ""
}

// fetcherParser returns the address of the parser field of a proxy provider's fetcher.
func fetcherParser(f *resource.Fetcher[[]C.Proxy]) (*resource.Parser[[]C.Proxy], error) {
	if f == nil {
		return nil, fmt.Errorf("%w: proxy provider without fetcher", errInternals)
	}
	v := reflect.ValueOf(f).Elem().FieldByName("parser")
	if !v.IsValid() || v.Type() != reflect.TypeFor[resource.Parser[[]C.Proxy]]() {
		return nil, fmt.Errorf("%w: resource.Fetcher has no field parser of type resource.Parser", errInternals)
	}
	return (*resource.Parser[[]C.Proxy])(unsafe.Pointer(v.UnsafeAddr())), nil
}

// builtinOptions returns a copy of the options a built-in anytls adapter was decoded from.
func builtinOptions(a *outbound.AnyTLS) (outbound.AnyTLSOption, error) {
	v := reflect.ValueOf(a).Elem().FieldByName("option")
	if !v.IsValid() || v.Type() != reflect.TypeFor[*outbound.AnyTLSOption]() {
		return outbound.AnyTLSOption{}, fmt.Errorf("%w: outbound.AnyTLS has no field option of type *AnyTLSOption", errInternals)
	}
	p := *(**outbound.AnyTLSOption)(unsafe.Pointer(v.UnsafeAddr()))
	if p == nil {
		return outbound.AnyTLSOption{}, fmt.Errorf("%w: outbound.AnyTLS without options", errInternals)
	}
	return *p, nil
}

// findBuiltin unwraps the adapters mihomo puts around a proxy (its unexported auto-close
// wrapper and sing-mux, both of which embed the wrapped adapter as the exported field
// ProxyAdapter) and returns the built-in anytls adapter inside, or nil.
func findBuiltin(a C.ProxyAdapter) *outbound.AnyTLS {
	for range 8 {
		if b, ok := a.(*outbound.AnyTLS); ok {
			return b
		}
		inner, ok := unwrapField(a)
		if !ok {
			return nil
		}
		a = inner
	}
	return nil
}

// unwrapField returns the adapter a wrapper embeds as its exported field ProxyAdapter.
func unwrapField(a C.ProxyAdapter) (C.ProxyAdapter, bool) {
	v := reflect.ValueOf(a)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return nil, false
	}
	f := v.Elem().FieldByName("ProxyAdapter")
	if !f.IsValid() || f.Kind() != reflect.Interface || !f.CanInterface() || f.IsNil() {
		return nil, false
	}
	inner, ok := f.Interface().(C.ProxyAdapter)
	return inner, ok && inner != nil
}
