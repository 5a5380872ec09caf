//go:build with_clash_api

package sbrun

// The clash API registers its server constructor when linked.
import _ "github.com/sagernet/sing-box/experimental/clashapi"
