package pgtls

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"syscall"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/hostmatch"
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
	CheckHost     bool   // verify-full
	Host          string // the host keyword (never hostaddr)
	Now           time.Time
}

// VerifyServer verifies the chain a server presented (leaf first) the way
// libpq and OpenSSL do, then the host name when CheckHost is set. The first
// problem found is returned as a *failure.Error.
func VerifyServer(chain []*x509.Certificate, o VerifyOptions) ([][]*x509.Certificate, error) {
	if len(chain) == 0 {
		return nil, failure.New(failure.ProtocolError, "certificate could not be obtained: the server sent no certificate")
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	leaf := chain[0]
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	for _, c := range o.Intermediates {
		inter.AddCert(c)
	}
	chains, err := leaf.Verify(x509.VerifyOptions{
		Roots:         o.Roots,
		Intermediates: inter,
		CurrentTime:   o.Now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return nil, classifyChainError(err, chain, o)
	}
	if len(o.CRLs) > 0 {
		if err := checkRevocation(chains[0], o); err != nil {
			return nil, err
		}
	}
	if o.CheckHost {
		if err := hostmatch.Verify(leaf, o.Host); err != nil {
			return chains, err
		}
	}
	return chains, nil
}

// verifyFailed is libpq's message for every chain failure; pgtrust adds the
// real reason as evidence.
const verifyFailed = "SSL error: certificate verify failed"

func classifyChainError(err error, chain []*x509.Certificate, o VerifyOptions) error {
	leaf := chain[0]
	// When a certificate is out of its validity window, first ask whether
	// the chain would verify inside it: if not, the real cause is the CA
	// (OpenSSL builds the chain before it looks at dates).
	if when, ok := validInstant(chain); ok && !when.Equal(o.Now) {
		inter := x509.NewCertPool()
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
		for _, c := range o.Intermediates {
			inter.AddCert(c)
		}
		_, again := leaf.Verify(x509.VerifyOptions{Roots: o.Roots, Intermediates: inter, CurrentTime: when,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		var ua x509.UnknownAuthorityError
		if errors.As(again, &ua) {
			o2 := o
			o2.Now = when
			return classifyChainError(again, chain, o2)
		}
	}
	for _, c := range chain {
		if o.Now.After(c.NotAfter) {
			days := int(o.Now.Sub(c.NotAfter).Hours() / 24)
			return failure.Wrap(failure.CertExpired, err, verifyFailed).
				WithEvidence("%s expired %s (%d days ago)", describeCert(c, c == leaf), c.NotAfter.UTC().Format("2006-01-02 15:04:05 MST"), days).
				WithFix("renew the server certificate (and reload PostgreSQL: SELECT pg_reload_conf()); inspect it with: pgtrust certs inspect --server HOST:PORT")
		}
		if o.Now.Before(c.NotBefore) {
			return failure.Wrap(failure.CertNotYetValid, err, verifyFailed).
				WithEvidence("%s is not valid until %s", describeCert(c, c == leaf), c.NotBefore.UTC().Format("2006-01-02 15:04:05 MST")).
				WithFix("check the clocks of this machine and the server (timedatectl), or reissue the certificate with an earlier notBefore")
		}
	}
	var ua x509.UnknownAuthorityError
	var ci x509.CertificateInvalidError
	e := failure.Wrap(failure.UnknownCA, err, verifyFailed)
	switch {
	case errors.As(err, &ua):
		issuer := leaf.Issuer.String()
		if len(chain) > 1 {
			issuer = chain[len(chain)-1].Issuer.String()
		}
		e.Evidence = fmt.Sprintf("the server's chain (%s) does not lead to a self-signed CA in %s; it needs the certificate of %q", chainSummary(chain), o.RootFile, issuer)
		if len(chain) == 1 && leaf.Issuer.String() == leaf.Subject.String() {
			e.Evidence = fmt.Sprintf("the server presented a self-signed certificate (%s) that is not in %s", leaf.Subject, o.RootFile)
		}
		e.Fix = "put the CA that issued the server certificate in sslrootcert (only self-signed roots are trust anchors; intermediates belong in the server's ssl_cert_file after its certificate)"
	case errors.As(err, &ci):
		e.Evidence = fmt.Sprintf("%s: %v", describeCert(ci.Cert, ci.Cert == leaf), err)
		e.Fix = "reissue the server certificate with the serverAuth extended key usage and valid CA constraints"
	default:
		e.Evidence = err.Error()
		e.Fix = "check the server certificate chain with: pgtrust certs verify --ca CA --cert SERVER.crt"
	}
	return e
}

// checkRevocation applies OpenSSL's X509_V_FLAG_CRL_CHECK|CRL_CHECK_ALL:
// every certificate below the trust anchor needs a current CRL from its
// issuer, and must not be on it.
func checkRevocation(chain []*x509.Certificate, o VerifyOptions) error {
	for i := 0; i < len(chain)-1; i++ {
		cert, issuer := chain[i], chain[i+1]
		var found *x509.RevocationList
		for _, crl := range o.CRLs {
			if string(crl.RawIssuer) != string(issuer.RawSubject) {
				continue
			}
			if crl.CheckSignatureFrom(issuer) != nil {
				continue
			}
			found = crl
			break
		}
		if found == nil {
			return failure.New(failure.UnknownCA, verifyFailed).
				WithEvidence("revocation checking is on (sslcrl/sslcrldir loaded) but there is no CRL from %q, the issuer of %s; OpenSSL then rejects the chain (unable to get certificate CRL)", issuer.Subject, describeCert(cert, i == 0)).
				WithFix("add the CRL of %q to sslcrl (or to sslcrldir after openssl rehash)", issuer.Subject)
		}
		if o.Now.Before(found.ThisUpdate) {
			return failure.New(failure.CertNotYetValid, verifyFailed).
				WithEvidence("the CRL from %q is not valid until %s (CRL is not yet valid)", issuer.Subject, found.ThisUpdate.UTC().Format(time.RFC3339)).
				WithFix("check the clocks, or regenerate the CRL")
		}
		if !found.NextUpdate.IsZero() && o.Now.After(found.NextUpdate) {
			return failure.New(failure.CertExpired, verifyFailed).
				WithEvidence("the CRL from %q expired %s (CRL has expired)", issuer.Subject, found.NextUpdate.UTC().Format(time.RFC3339)).
				WithFix("publish a fresh CRL from the CA (openssl ca -gencrl) and update sslcrl")
		}
		for _, rc := range found.RevokedCertificateEntries {
			if rc.SerialNumber != nil && rc.SerialNumber.Cmp(cert.SerialNumber) == 0 {
				return failure.New(failure.CertRevoked, verifyFailed).
					WithEvidence("%s (serial %s) was revoked on %s by %q", describeCert(cert, i == 0), serialHex(cert.SerialNumber), rc.RevocationTime.UTC().Format("2006-01-02"), issuer.Subject).
					WithFix("the server must present a new, unrevoked certificate; if the revocation is a mistake, reissue the CRL without it")
			}
		}
	}
	return nil
}

func describeCert(c *x509.Certificate, leaf bool) string {
	name := c.Subject.CommonName
	if len(c.DNSNames) > 0 {
		name = c.DNSNames[0]
	}
	if name == "" {
		name = c.Subject.String()
	}
	if leaf {
		return "server certificate for " + name
	}
	return "CA certificate " + c.Subject.String()
}

func chainSummary(chain []*x509.Certificate) string {
	parts := make([]string, len(chain))
	for i, c := range chain {
		parts[i] = fmt.Sprintf("%q issued by %q", c.Subject.String(), c.Issuer.String())
	}
	return strings.Join(parts, " → ")
}

func serialHex(n *big.Int) string {
	if n == nil {
		return ""
	}
	return strings.ToUpper(n.Text(16))
}

// parseCRLs decodes one or more PEM "X509 CRL" blocks, or one DER CRL.
func parseCRLs(data []byte) ([]*x509.RevocationList, error) {
	var out []*x509.RevocationList
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "X509 CRL" {
			continue
		}
		crl, err := x509.ParseRevocationList(b.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, crl)
	}
	if len(out) > 0 {
		return out, nil
	}
	crl, err := x509.ParseRevocationList(data)
	if err != nil {
		return nil, fmt.Errorf("no PEM X509 CRL block and not a DER CRL: %w", err)
	}
	return []*x509.RevocationList{crl}, nil
}

// validInstant returns a moment inside every certificate's validity window,
// if there is one.
func validInstant(chain []*x509.Certificate) (time.Time, bool) {
	lo, hi := chain[0].NotBefore, chain[0].NotAfter
	for _, c := range chain[1:] {
		if c.NotBefore.After(lo) {
			lo = c.NotBefore
		}
		if c.NotAfter.Before(hi) {
			hi = c.NotAfter
		}
	}
	if hi.Before(lo) {
		return time.Time{}, false
	}
	return lo.Add(hi.Sub(lo) / 2), true
}
