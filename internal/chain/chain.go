// Package chain verifies X.509 certificate chains the way libpq's OpenSSL
// does, where that differs from crypto/x509's defaults:
//
//   - only self-signed certificates are trust anchors (OpenSSL without
//     X509_V_FLAG_PARTIAL_CHAIN); other certificates in a root file only
//     help build the chain;
//   - once any CRL is loaded, every certificate below the anchor needs a
//     current CRL from its issuer and must not be on it
//     (X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL);
//   - a chain that is out of date but otherwise leads nowhere is reported as
//     an unknown CA (OpenSSL builds the chain before it checks dates).
//
// Errors are *failure.Error values whose message is libpq's
// ("SSL error: certificate verify failed") and whose evidence says why.
package chain

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/keyfile"
)

// VerifyFailed is libpq's message for every chain failure.
const VerifyFailed = "SSL error: certificate verify failed"

// Roots is the content of a root certificate file, split as OpenSSL uses it.
type Roots struct {
	File          string
	Pool          *x509.CertPool      // the self-signed anchors
	Anchors       []*x509.Certificate // the same, as a list
	Intermediates []*x509.Certificate // the file's other certificates
}

// LoadRoots reads a root certificate file (PEM bundle or DER). A missing
// file is returned as an error wrapping fs.ErrNotExist.
func LoadRoots(path string) (*Roots, error) {
	certs, err := keyfile.LoadCertificates(path)
	if err != nil {
		return nil, err
	}
	return SplitRoots(path, certs), nil
}

// SplitRoots separates anchors (self-signed) from other certificates.
func SplitRoots(file string, certs []*x509.Certificate) *Roots {
	r := &Roots{File: file, Pool: x509.NewCertPool()}
	for _, c := range certs {
		if IsSelfSigned(c) {
			r.Pool.AddCert(c)
			r.Anchors = append(r.Anchors, c)
		} else {
			r.Intermediates = append(r.Intermediates, c)
		}
	}
	return r
}

// IsSelfSigned reports whether c is issued by itself and its signature
// verifies with its own key (CA flag or not, as OpenSSL accepts a
// self-signed leaf put in a root file).
func IsSelfSigned(c *x509.Certificate) bool {
	if !bytes.Equal(c.RawIssuer, c.RawSubject) {
		return false
	}
	return c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil
}

// Options describe one verification.
type Options struct {
	Roots         *x509.CertPool
	RootFile      string              // named in evidence
	Intermediates []*x509.Certificate // extra chain material
	CRLs          []*x509.RevocationList
	// CRLDir is a hashed CRL directory (sslcrldir, `openssl rehash`), looked
	// up per issuer as OpenSSL's X509_LOOKUP_hash_dir does; set, it turns
	// revocation checking on even when it holds no CRL, as in libpq.
	CRLDir    string
	KeyUsages []x509.ExtKeyUsage // default: server authentication
	Now       time.Time
	Role      string // "server" or "client", for messages; "" for neither
}

// Verify verifies presented (leaf first, then what the peer sent) and
// returns the chain from the leaf to its anchor.
func Verify(presented []*x509.Certificate, o Options) ([]*x509.Certificate, error) {
	if len(presented) == 0 {
		return nil, failure.New(failure.ProtocolError, "certificate could not be obtained: no certificate was presented")
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	if len(o.KeyUsages) == 0 {
		o.KeyUsages = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	chains, err := build(presented, o, o.Now)
	if err != nil {
		return nil, classify(err, presented, o)
	}
	if len(o.CRLs) > 0 || o.CRLDir != "" {
		if err := CheckRevocationWithDir(chains[0], o.CRLs, o.CRLDir, o.Now, o.Role); err != nil {
			return nil, err
		}
	}
	return chains[0], nil
}

func build(presented []*x509.Certificate, o Options, at time.Time) ([][]*x509.Certificate, error) {
	inter := x509.NewCertPool()
	for _, c := range presented[1:] {
		inter.AddCert(c)
	}
	for _, c := range o.Intermediates {
		inter.AddCert(c)
	}
	return presented[0].Verify(x509.VerifyOptions{Roots: o.Roots, Intermediates: inter, CurrentTime: at, KeyUsages: o.KeyUsages})
}

func classify(err error, presented []*x509.Certificate, o Options) error {
	leaf := presented[0]
	// Out of date? First ask whether the chain would verify inside every
	// validity window: if not, the CA is the real problem.
	if at, ok := validInstant(presented); ok && !at.Equal(o.Now) {
		if _, again := build(presented, o, at); again != nil {
			var ua x509.UnknownAuthorityError
			if errors.As(again, &ua) {
				o2 := o
				o2.Now = at
				return classify(again, presented, o2)
			}
		}
	}
	for _, c := range presented {
		if o.Now.After(c.NotAfter) {
			days := int(o.Now.Sub(c.NotAfter).Hours() / 24)
			return failure.Wrap(failure.CertExpired, err, VerifyFailed).CauseInMessage().
				WithEvidence("%s expired %s (%d days ago)", Describe(c, c == leaf, o.Role), c.NotAfter.UTC().Format("2006-01-02 15:04:05 MST"), days).
				WithFix("renew the certificate (for a server: replace ssl_cert_file and run SELECT pg_reload_conf()); inspect it with: pgtrust certs inspect")
		}
		if o.Now.Before(c.NotBefore) {
			return failure.Wrap(failure.CertNotYetValid, err, VerifyFailed).CauseInMessage().
				WithEvidence("%s is not valid until %s", Describe(c, c == leaf, o.Role), c.NotBefore.UTC().Format("2006-01-02 15:04:05 MST")).
				WithFix("check the clocks of both machines (timedatectl), or reissue the certificate with an earlier notBefore")
		}
	}
	var ua x509.UnknownAuthorityError
	var ci x509.CertificateInvalidError
	// The cause stays reachable (errors.As) but is not rendered: the
	// evidence says it in our words, and the message is libpq's.
	e := failure.Wrap(failure.UnknownCA, err, VerifyFailed).CauseInMessage()
	if errors.As(err, &ua) {
		if s, ok := sameNameOtherKey(presented, o); ok {
			e.Evidence = s.Evidence(o.RootFile, Describe(s.Child, s.Child == leaf, o.Role))
			e.Fix = s.Fix(o.RootFile, o.Role)
			return e
		}
	}
	switch {
	case errors.As(err, &ua):
		issuer := presented[len(presented)-1].Issuer.String()
		e.Evidence = fmt.Sprintf("the chain (%s) does not lead to a self-signed CA in %s; it needs the certificate of %q", Summary(presented), o.RootFile, issuer)
		if len(presented) == 1 && IsSelfSigned(leaf) {
			e.Evidence = fmt.Sprintf("the certificate is self-signed (%s) and not in %s", leaf.Subject, o.RootFile)
		}
		e.Fix = "use the CA that issued the certificate as the root file (only self-signed roots are trust anchors); intermediates belong after the leaf in the certificate file (for a server: ssl_cert_file)"
	case errors.As(err, &ci):
		e.Evidence = reason(ci, leaf, o.Role)
		e.Fix = "reissue the certificate with the right extended key usage (serverAuth / clientAuth) from a CA with basicConstraints CA:TRUE"
	default:
		e.Evidence = reason(err, leaf, o.Role)
		e.Fix = "check the chain with: pgtrust certs verify --ca CA --cert CERT"
	}
	return e
}

// Describe names a certificate for evidence strings.
func Describe(c *x509.Certificate, leaf bool, role string) string {
	name := c.Subject.CommonName
	if len(c.DNSNames) > 0 {
		name = c.DNSNames[0]
	}
	if name == "" {
		name = c.Subject.String()
	}
	if leaf && role != "" {
		return role + " certificate for " + name
	}
	if leaf {
		return "certificate for " + name
	}
	return "CA certificate " + c.Subject.String()
}

// Summary renders a chain as `"CN=a" issued by "CN=b" → ...`.
func Summary(chain []*x509.Certificate) string {
	parts := make([]string, len(chain))
	for i, c := range chain {
		parts[i] = fmt.Sprintf("%q issued by %q", c.Subject.String(), c.Issuer.String())
	}
	return strings.Join(parts, " → ")
}

// SerialHex renders a serial number in upper-case hex with an even number
// of digits, as `openssl x509 -serial` does.
func SerialHex(n *big.Int) string {
	if n == nil {
		return ""
	}
	s := strings.ToUpper(n.Text(16))
	if len(s)%2 == 1 {
		s = "0" + s
	}
	return s
}

// validInstant returns a moment inside every certificate's validity window,
// if there is one.
func validInstant(certs []*x509.Certificate) (time.Time, bool) {
	lo, hi := certs[0].NotBefore, certs[0].NotAfter
	for _, c := range certs[1:] {
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
