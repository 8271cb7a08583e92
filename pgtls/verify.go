package pgtls

import (
	"crypto/x509"
	"syscall"
	"time"

	"github.com/pgtrust/pgtrust/internal/chain"
	"github.com/pgtrust/pgtrust/internal/hostmatch"
)

var errNotDir = syscall.ENOTDIR

// VerifyOptions describe one server-certificate verification under libpq's
// rules. Doctor uses it to say what verify-ca and verify-full would
// conclude even when the current sslmode does not check.
type VerifyOptions struct {
	Roots         *x509.CertPool
	RootFile      string              // for evidence
	Intermediates []*x509.Certificate // extra chain material (non-self-signed certificates from the root file)
	CRLs          []*x509.RevocationList
	CRLDir        string // sslcrldir: a hashed CRL directory, looked up per issuer; set, revocation is checked
	CheckHost     bool   // verify-full
	Host          string // the host keyword (never hostaddr)
	Now           time.Time
}

// VerifyServer verifies the chain a server presented (leaf first) the way
// libpq and OpenSSL do (package chain), then the host name when CheckHost
// is set (package hostmatch). The first problem found is returned as a
// *failure.Error.
func VerifyServer(presented []*x509.Certificate, o VerifyOptions) ([][]*x509.Certificate, error) {
	built, err := chain.Verify(presented, chain.Options{
		Roots: o.Roots, RootFile: o.RootFile, Intermediates: o.Intermediates, CRLs: o.CRLs, CRLDir: o.CRLDir, Now: o.Now, Role: "server",
	})
	if err != nil {
		return nil, err
	}
	chains := [][]*x509.Certificate{built}
	if o.CheckHost {
		if err := hostmatch.Verify(presented[0], o.Host); err != nil {
			return chains, err
		}
	}
	return chains, nil
}
