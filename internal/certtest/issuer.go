// Package certtest is test support: a certs.Issuer backed by an in-memory
// CA, for tests that renew certificates on demand without a CA server.
package certtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"time"

	"github.com/pgtrust/pgtrust/certs"
)

// Issuer signs a new client certificate for CommonName on every Issue,
// valid for Validity from now (to the second), with CA as its chain, so a
// certs.RenewingSource with TrustIssuedCA also verifies servers with CA.
type Issuer struct {
	CA         *certs.KeyPair
	CommonName string
	Validity   time.Duration
}

var _ certs.Issuer = Issuer{}

// Name implements certs.Issuer.
func (Issuer) Name() string { return "local-ca" }

// Issue implements certs.Issuer.
func (i Issuer) Issue(_ context.Context, _ *tls.Certificate) (*certs.Issued, error) {
	kp, err := certs.IssueClient(i.CA, certs.Options{CommonName: i.CommonName, Validity: i.Validity, NotBefore: time.Now().Truncate(time.Second)})
	if err != nil {
		return nil, err
	}
	cert := tls.Certificate{Certificate: [][]byte{kp.Cert.Raw}, PrivateKey: kp.Key, Leaf: kp.Cert}
	return &certs.Issued{Certificate: cert, CAs: []*x509.Certificate{i.CA.Cert}}, nil
}
