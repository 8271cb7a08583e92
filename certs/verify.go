package certs

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/chain"
	"github.com/pgtrust/pgtrust/internal/hostmatch"
	"github.com/pgtrust/pgtrust/internal/keyfile"
)

// VerifyOptions name the files to verify together. Only CAFile is required.
type VerifyOptions struct {
	CAFile        string // trust anchors (sslrootcert / ssl_ca_file)
	CertFile      string // certificate (chain) to verify
	KeyFile       string // its private key
	KeyPassword   string // passphrase of an encrypted key
	Host          string // server host name to check under libpq's rules
	CRLFile       string // certificate revocation list(s), PEM or DER
	UntrustedFile string // extra intermediates
	Now           time.Time
}

// Finding is the outcome of one check.
type Finding struct {
	Check    string        `json:"check"`  // e.g. "chain", "host", "key-permissions"
	Status   string        `json:"status"` // "ok", "fail" or "skip"
	Class    failure.Class `json:"class"`
	Message  string        `json:"message,omitempty"`
	Evidence string        `json:"evidence,omitempty"`
	Fix      string        `json:"fix,omitempty"`
}

// Report is the result of Verify.
type Report struct {
	Findings []Finding `json:"findings"`
	Leaf     *Info     `json:"certificate,omitempty"`
}

// OK reports whether no check failed.
func (r *Report) OK() bool {
	for _, f := range r.Findings {
		if f.Status == "fail" {
			return false
		}
	}
	return true
}

func (r *Report) add(check string, err error, okMsg string) {
	if err == nil {
		r.Findings = append(r.Findings, Finding{Check: check, Status: "ok", Class: failure.OK, Message: okMsg})
		return
	}
	f := Finding{Check: check, Status: "fail", Class: failure.ClassOf(err), Message: err.Error()}
	if fe, ok := failure.As(err); ok {
		// The cause is in the evidence; the message stays libpq's.
		if fe.Message != "" && fe.Evidence != "" {
			f.Message = fe.Message
		}
		f.Evidence, f.Fix = fe.Evidence, fe.Fix
	}
	r.Findings = append(r.Findings, f)
}

func (r *Report) skip(check, why string) {
	r.Findings = append(r.Findings, Finding{Check: check, Status: "skip", Class: failure.OK, Message: why})
}

// Verify checks certificate material the way libpq and PostgreSQL will use
// it: the CA file loads and holds a root, the certificate chains to it
// (with intermediates from the certificate file and UntrustedFile), the
// validity window, the host name under libpq's rules, the key-file
// permission rule, that the key decrypts and matches, and revocation. Each
// problem carries its class, evidence and fix.
func Verify(opts VerifyOptions) *Report {
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	r := &Report{}
	roots, cas, err := loadRoots(opts.CAFile)
	r.add("ca", err, fmt.Sprintf("%s: %d certificate(s)", opts.CAFile, len(cas)))

	var leaf *x509.Certificate
	var inter []*x509.Certificate
	if opts.CertFile != "" {
		chain, err := keyfile.LoadCertificates(opts.CertFile)
		r.add("certificate", err, opts.CertFile)
		if err == nil {
			leaf, inter = chain[0], chain[1:]
			info := Describe(leaf, now)
			r.Leaf = &info
		}
	}
	if opts.UntrustedFile != "" {
		extra, err := keyfile.LoadCertificates(opts.UntrustedFile)
		r.add("untrusted", err, opts.UntrustedFile)
		inter = append(inter, extra...)
	}
	// CA certificates that are not self-signed are intermediates to
	// OpenSSL, never anchors.
	for _, c := range cas {
		if !chain.IsSelfSigned(c) {
			inter = append(inter, c)
		}
	}

	if leaf != nil {
		r.add("validity", checkValidity(leaf, now, opts.CertFile), validityText(leaf, now))
		if roots != nil {
			chain, err := verifyChain(leaf, inter, roots, now, opts.CertFile, opts.CAFile)
			r.add("chain", err, chainText(chain))
			if opts.CRLFile != "" {
				if err != nil {
					r.skip("revocation", "needs a chain")
				} else {
					r.add("revocation", checkRevocation(chain, opts.CRLFile, now), "not revoked ("+opts.CRLFile+")")
				}
			}
		} else {
			r.skip("chain", "no usable CA file")
		}
		if opts.Host != "" {
			err := hostmatch.Verify(leaf, opts.Host)
			if fe, ok := failure.As(err); ok && fe.Fix == "" {
				fe.Fix = fmt.Sprintf("issue a server certificate with the SAN %s (pgtrust certs issue server --hosts %s), or connect with a host name the certificate has", opts.Host, opts.Host)
			}
			r.add("host", err, fmt.Sprintf("matches %q under libpq's rules", opts.Host))
		}
	} else if opts.Host != "" {
		r.skip("host", "needs --cert")
	}

	if opts.KeyFile != "" {
		err := keyfile.CheckPermissions(opts.KeyFile)
		r.add("key-permissions", err, "libpq's permission rule holds")
		if err == nil || failure.ClassOf(err) == failure.KeyPermissions {
			// Read past a permission problem so that every problem with the
			// key shows at once.
			key, err := readKey(opts.KeyFile, opts.KeyPassword)
			r.add("key", err, "loads")
			if err == nil && leaf != nil {
				var mm error
				if !keyfile.KeyMatches(leaf, key) {
					mm = failure.New(failure.KeyMismatch, "certificate does not match private key file \"%s\": key values mismatch", opts.KeyFile).
						WithEvidence("certificate %s (subject %q) has public key %s; the key has public key %s",
							opts.CertFile, leaf.Subject.String(), keyfile.PublicKeyFingerprint(leaf.PublicKey), keyfile.PublicKeyFingerprint(key.Public())).
						WithFix("use the key the certificate was issued for, or issue a new certificate for this key")
				}
				r.add("key-match", mm, "key matches the certificate")
			}
		}
	}
	return r
}

// loadRoots reads a CA file; self-signed certificates become anchors, as
// OpenSSL (without PARTIAL_CHAIN) uses only those.
func loadRoots(path string) (*x509.CertPool, []*x509.Certificate, error) {
	if path == "" {
		return nil, nil, failure.New(failure.RootCertMissing, "no root certificate file given").
			WithFix("pass --ca with the CA certificate that issued the certificate")
	}
	cas, err := keyfile.LoadCertificates(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, failure.Wrap(failure.RootCertMissing, err, "root certificate file \"%s\" does not exist", path).
				WithFix("pass the CA certificate file that issued the certificate")
		}
		return nil, nil, err
	}
	roots := chain.SplitRoots(path, cas)
	if len(roots.Anchors) == 0 {
		return nil, cas, failure.New(failure.UnknownCA, "root certificate file \"%s\" holds no self-signed root", path).
			WithEvidence("it holds %s; libpq (OpenSSL) trusts only self-signed roots, an intermediate alone is never a trust anchor", subjects(cas)).
			WithFix("append the root CA certificate that issued %q to %s", cas[0].Issuer.String(), path)
	}
	return roots.Pool, cas, nil
}

func subjects(cs []*x509.Certificate) string {
	s := make([]string, len(cs))
	for i, c := range cs {
		s[i] = fmt.Sprintf("%q", c.Subject.String())
	}
	return strings.Join(s, ", ")
}

func checkValidity(c *x509.Certificate, now time.Time, path string) error {
	switch {
	case now.After(c.NotAfter):
		return failure.New(failure.CertExpired, "certificate has expired").
			WithEvidence("%s (subject %q) expired %s (notAfter %s)", path, c.Subject.String(), ago(c.NotAfter, now), c.NotAfter.UTC().Format(time.RFC3339)).
			WithFix("issue a new certificate (pgtrust certs issue ...) and replace %s", path)
	case now.Before(c.NotBefore):
		return failure.New(failure.CertNotYetValid, "certificate is not yet valid").
			WithEvidence("%s (subject %q) is valid from %s; now is %s", path, c.Subject.String(), c.NotBefore.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339)).
			WithFix("check the clock on this machine (and the issuing one), or wait until notBefore")
	}
	return nil
}

func validityText(c *x509.Certificate, now time.Time) string {
	return fmt.Sprintf("valid until %s (%s)", c.NotAfter.UTC().Format(time.RFC3339), ExpiryText(c, now))
}

// verifyChain builds the chain from leaf to a root in roots. Expiry is
// reported by checkValidity, so the chain is built at a time when every
// certificate involved is valid when there is one; an expired intermediate
// or root is still reported here.
func verifyChain(leaf *x509.Certificate, inter []*x509.Certificate, roots *x509.CertPool, now time.Time, certPath, caPath string) ([]*x509.Certificate, error) {
	pool := x509.NewCertPool()
	for _, c := range inter {
		pool.AddCert(c)
	}
	opts := x509.VerifyOptions{Roots: roots, Intermediates: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
	chains, err := leaf.Verify(opts)
	if err == nil {
		return chains[0], nil
	}
	if now.After(leaf.NotAfter) || now.Before(leaf.NotBefore) {
		// The leaf's own dates are checkValidity's finding; see whether the
		// chain builds at a time when the leaf was valid.
		for _, at := range []time.Time{leaf.NotAfter.Add(-time.Second), leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2), leaf.NotBefore.Add(time.Second)} {
			opts.CurrentTime = at
			if chains, err2 := leaf.Verify(opts); err2 == nil {
				return chains[0], nil
			}
		}
	}
	var inv x509.CertificateInvalidError
	if errors.As(err, &inv) && inv.Reason == x509.Expired {
		e := failure.Wrap(failure.CertExpired, err, "SSL error: certificate verify failed").
			WithEvidence("%q in the chain of %s is outside its validity: %s", inv.Cert.Subject.String(), certPath, inv.Detail)
		if inv.Cert.Equal(leaf) {
			e.Fix = "issue a new certificate and replace " + certPath
		} else {
			e.Fix = fmt.Sprintf("renew the CA or intermediate %q and redistribute it", inv.Cert.Subject.String())
		}
		return nil, e
	}
	e := failure.Wrap(failure.UnknownCA, err, "SSL error: certificate verify failed").
		WithEvidence("%s (subject %q) was issued by %q; %s does not lead to that issuer: %v", certPath, leaf.Subject.String(), leaf.Issuer.String(), caPath, err).
		WithFix("use the CA certificate that issued %q as the CA file (sslrootcert / ssl_ca_file), and supply any intermediate CA after the leaf in %s or with --untrusted", leaf.Issuer.String(), certPath)
	return nil, e
}

func chainText(chain []*x509.Certificate) string {
	var parts []string
	for _, c := range chain {
		parts = append(parts, fmt.Sprintf("%q", c.Subject.String()))
	}
	return "chain: " + strings.Join(parts, " <- ")
}

// validateLeaf is the check a reload or a reused PKI must pass: in date and
// chained to roots (when given).
func validateLeaf(leaf *x509.Certificate, chainDER [][]byte, roots *x509.CertPool, now time.Time, certPath, caPath string) error {
	if err := checkValidity(leaf, now, certPath); err != nil {
		return err
	}
	if roots == nil {
		return nil
	}
	var inter []*x509.Certificate
	for _, der := range chainDER {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return failure.Wrap(failure.ConfigInvalid, err, "could not read certificate file \"%s\": %v", certPath, err)
		}
		inter = append(inter, c)
	}
	_, err := verifyChain(leaf, inter, roots, now, certPath, caPath)
	return err
}

// checkRevocation applies OpenSSL's CRL_CHECK|CRL_CHECK_ALL, as libpq
// does, with the CRLs in crlPath.
func checkRevocation(built []*x509.Certificate, crlPath string, now time.Time) error {
	crls, err := chain.LoadCRLs(crlPath)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return failure.Wrap(failure.ConfigInvalid, err, "CRL file \"%s\" does not exist", crlPath).
				WithFix("pass the CRL file the server or client will use (libpq silently ignores a missing sslcrl: check the path)")
		}
		return err
	}
	return chain.CheckRevocation(built, crls, now, "")
}

func readKey(path, password string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, failure.Wrap(failure.ConfigInvalid, err, "could not load private key file \"%s\"", path).WithEvidence("%v", err)
	}
	return keyfile.ParsePrivateKey(data, password, path)
}
