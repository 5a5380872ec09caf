//go:build !with_acme

package sbrun

import (
	"context"

	"github.com/sagernet/sing-box/adapter"
	"github.com/sagernet/sing-box/adapter/certificate"
	C "github.com/sagernet/sing-box/constant"
	"github.com/sagernet/sing-box/log"
	"github.com/sagernet/sing-box/option"
	E "github.com/sagernet/sing/common/exceptions"
)

func registerACME(registry *certificate.Registry) {
	certificate.Register[option.ACMECertificateProviderOptions](registry, C.TypeACME, func(context.Context, log.ContextLogger, string, option.ACMECertificateProviderOptions) (adapter.CertificateProviderService, error) {
		return nil, E.New("ACME is not included in this build, rebuild with -tags with_acme")
	})
}
