package certs_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/pgtrust/pgtrust/certs"
)

// localIssuer is a CA in memory that issues 10-minute client certificates.
// Real issuers (Vault PKI, step-ca) call their CA instead.
type localIssuer struct{ ca *certs.KeyPair }

func (l localIssuer) Name() string { return "local-ca" }

func (l localIssuer) Issue(_ context.Context, _ *tls.Certificate) (*certs.Issued, error) {
	kp, err := certs.IssueClient(l.ca, certs.Options{CommonName: "app", Validity: 10 * time.Minute, NotBefore: time.Now().Truncate(time.Second)})
	if err != nil {
		return nil, err
	}
	cert := tls.Certificate{Certificate: [][]byte{kp.Cert.Raw}, PrivateKey: kp.Key, Leaf: kp.Cert}
	return &certs.Issued{Certificate: cert, CAs: []*x509.Certificate{l.ca.Cert}}, nil
}

// A RenewingSource renews a 10-minute certificate at threshold 0.7 with
// jitter 0.05: between 6m30s and 7m after NotBefore. Rand is pinned here
// to show both ends of the window.
func ExampleNewRenewingSource() {
	ca, err := certs.NewCA(certs.Options{CommonName: "example CA"})
	if err != nil {
		panic(err)
	}
	for _, u := range []float64{0, 1} {
		src, err := certs.NewRenewingSource(context.Background(), localIssuer{ca}, certs.RenewOptions{
			Threshold: 0.7, Jitter: 0.05,
			Rand: func() float64 { return u },
		})
		if err != nil {
			panic(err)
		}
		c, _ := src.GetClientCertificate(nil)
		fmt.Printf("U=%v: renews %v after NotBefore\n", u, src.NextRenewal().Sub(c.Leaf.NotBefore))
		// In a program: go src.Run(ctx), and put src.GetClientCertificate
		// in the tls.Config (pgtls.Options takes the Source).
	}
	// Output:
	// U=0: renews 7m0s after NotBefore
	// U=1: renews 6m30s after NotBefore
}
