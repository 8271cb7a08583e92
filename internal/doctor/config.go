package doctor

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/chain"
	"github.com/pgtrust/pgtrust/internal/keyfile"
)

// configCheck is the result of stage 1: what the files hold, and the
// problems that libpq will hit if (and only if) it loads them.
type configCheck struct {
	notes    []string
	warnings []Warning
	// predicted holds failures that libpq reports when it loads the
	// files, which it does only after the server agreed to TLS; they do
	// not decide the verdict, the connection does.
	predicted []*failure.Error

	roots      *x509.CertPool
	rootFile   string
	interms    []*x509.Certificate
	crls       []*x509.RevocationList
	crlDir     string // sslcrldir, looked up per issuer during verification
	clientLeaf *x509.Certificate
}

// checkConfig inspects the files the settings name, under libpq's rules.
func checkConfig(cfg *connstring.Config, now time.Time, warnDays int) *configCheck {
	c := &configCheck{}
	c.notes = append(c.notes, fmt.Sprintf("settings valid; sslmode=%s", cfg.SSLMode))
	for _, w := range cfg.Warnings {
		c.warnings = append(c.warnings, Warning{Code: WarnLibpq, Message: w})
	}
	if cfg.SSLMode == connstring.SSLDisable {
		c.notes = append(c.notes, "sslmode=disable: no TLS, so no certificate or key file is used")
		return c
	}
	c.checkRoot(cfg, now, warnDays)
	c.checkCRL(cfg)
	c.checkClient(cfg, now, warnDays)
	return c
}

func (c *configCheck) checkRoot(cfg *connstring.Config, now time.Time, warnDays int) {
	verifies := cfg.SSLMode == connstring.SSLVerifyCA || cfg.SSLMode == connstring.SSLVerifyFull
	path := cfg.SSLRootCert
	switch {
	case path == "system":
		pool, err := x509.SystemCertPool()
		if err != nil {
			c.notes = append(c.notes, "sslrootcert=system: the system trust store could not be loaded: "+err.Error())
			return
		}
		c.roots, c.rootFile = pool, "system"
		c.notes = append(c.notes, "sslrootcert=system: the server is verified against the system trust store")
		return
	case path == "":
		c.notes = append(c.notes, "no root certificate (no home directory for the default ~/.postgresql/root.crt)")
		if verifies {
			c.predicted = append(c.predicted, failure.New(failure.RootCertMissing, "no root certificate file"))
		}
		return
	}
	st, err := os.Stat(path)
	if err != nil {
		what := "sslrootcert=" + path
		if cfg.SSLRootCertDefault {
			what = "default root certificate " + path
		}
		if verifies {
			c.notes = append(c.notes, what+" does not exist, and sslmode="+string(cfg.SSLMode)+" needs it")
			c.predicted = append(c.predicted, failure.New(failure.RootCertMissing, "%s does not exist", path))
		} else {
			c.notes = append(c.notes, what+" does not exist: the server certificate will not be verified")
		}
		return
	}
	if st.IsDir() {
		c.notes = append(c.notes, "sslrootcert="+path+" is a directory, not a certificate file")
		c.predicted = append(c.predicted, failure.New(failure.ConfigInvalid, "sslrootcert %s is a directory", path))
		return
	}
	list, err := keyfile.LoadCertificates(path)
	if err != nil {
		c.notes = append(c.notes, "sslrootcert="+path+" does not load: "+err.Error())
		c.predicted = append(c.predicted, failure.Wrap(failure.ConfigInvalid, err, "sslrootcert %s does not load", path))
		return
	}
	c.roots, c.rootFile = x509.NewCertPool(), path
	var anchors []string
	for _, cert := range list {
		if chain.IsSelfSigned(cert) {
			c.roots.AddCert(cert)
			anchors = append(anchors, fmt.Sprintf("%q (%s)", cert.Subject.String(), certs.ExpiryText(cert, now)))
			if isServerLeaf(cert) {
				c.warnings = append(c.warnings, Warning{Code: WarnRootIsLeaf,
					Message: fmt.Sprintf("sslrootcert %s holds a self-signed server certificate (%q, not a CA): it pins that one certificate, and every renewal breaks the connection", path, cert.Subject.String()),
					Fix:     "issue the server certificate from a CA and put the CA certificate in sslrootcert (pgtrust certs init --dir DIR makes one)"})
			}
		} else {
			c.interms = append(c.interms, cert)
		}
		c.expiry(cert, "root certificate file "+path, now, warnDays)
	}
	note := fmt.Sprintf("sslrootcert=%s: %d trust anchor(s) %s", path, len(anchors), strings.Join(anchors, ", "))
	if len(c.interms) > 0 {
		note += fmt.Sprintf("; %d non-self-signed certificate(s) used only to build the chain", len(c.interms))
	}
	if len(anchors) == 0 {
		note += " — no self-signed certificate, so nothing can verify (OpenSSL trusts only self-signed roots)"
	}
	c.notes = append(c.notes, note)
}

func (c *configCheck) checkCRL(cfg *connstring.Config) {
	if c.rootFile == "" || c.rootFile == "system" {
		return
	}
	if cfg.SSLCRLDir != "" {
		c.crlDir = cfg.SSLCRLDir
		if st, err := os.Stat(cfg.SSLCRLDir); err != nil || !st.IsDir() {
			c.notes = append(c.notes, "sslcrldir="+cfg.SSLCRLDir+" is not a readable directory, but setting it turns revocation checking on: every issuer then lacks a CRL and verification fails")
		} else {
			c.notes = append(c.notes, "sslcrldir="+cfg.SSLCRLDir+": revocation is checked; each issuer's CRL is looked up as HASH.r0, HASH.r1, … (openssl rehash names)")
		}
	}
	if cfg.SSLCRL == "" {
		return
	}
	data, err := os.ReadFile(cfg.SSLCRL)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if !cfg.SSLCRLDefault {
			c.notes = append(c.notes, "sslcrl="+cfg.SSLCRL+" does not exist: libpq ignores it, so no revocation check")
		}
	case err != nil:
		c.notes = append(c.notes, "sslcrl="+cfg.SSLCRL+" cannot be read: "+err.Error())
		c.predicted = append(c.predicted, failure.Wrap(failure.ConfigInvalid, err, "sslcrl %s cannot be read", cfg.SSLCRL))
	default:
		crls, err := chain.ParseCRLs(data)
		if err != nil {
			c.notes = append(c.notes, "sslcrl="+cfg.SSLCRL+" is not a CRL: "+err.Error())
			c.predicted = append(c.predicted, failure.Wrap(failure.ConfigInvalid, err, "sslcrl %s is not a CRL", cfg.SSLCRL))
			return
		}
		c.crls = crls
		c.notes = append(c.notes, fmt.Sprintf("sslcrl=%s: %d CRL(s): revocation is checked", cfg.SSLCRL, len(crls)))
	}
}

func (c *configCheck) checkClient(cfg *connstring.Config, now time.Time, warnDays int) {
	if cfg.SSLCertMode == "disable" {
		c.notes = append(c.notes, "sslcertmode=disable: no client certificate is sent")
		return
	}
	if cfg.SSLCert == "" {
		c.notes = append(c.notes, "no client certificate")
		return
	}
	st, err := os.Stat(cfg.SSLCert)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			if cfg.SSLCertDefault {
				c.notes = append(c.notes, "no client certificate (the default "+cfg.SSLCert+" does not exist; that is fine)")
			} else {
				c.notes = append(c.notes, "sslcert="+cfg.SSLCert+" does not exist: libpq silently sends no client certificate")
				c.warnings = append(c.warnings, Warning{Code: WarnFileNotUsed,
					Message: "sslcert=" + cfg.SSLCert + " does not exist, so no client certificate is sent",
					Fix:     "fix the path, or drop sslcert if no client certificate is wanted"})
			}
			return
		}
		c.predicted = append(c.predicted, failure.Wrap(failure.ConfigInvalid, err, "sslcert %s cannot be read", cfg.SSLCert))
		c.notes = append(c.notes, "sslcert="+cfg.SSLCert+" cannot be read: "+err.Error())
		return
	}
	if st.IsDir() {
		c.notes = append(c.notes, "sslcert="+cfg.SSLCert+" is a directory, not a certificate file")
		c.predicted = append(c.predicted, failure.New(failure.ConfigInvalid, "sslcert %s is a directory", cfg.SSLCert))
		return
	}
	chain, err := keyfile.LoadCertificates(cfg.SSLCert)
	if err != nil {
		c.notes = append(c.notes, "sslcert="+cfg.SSLCert+" does not load: "+err.Error())
		c.predicted = append(c.predicted, failure.Wrap(failure.ConfigInvalid, err, "sslcert does not load"))
		return
	}
	leaf := chain[0]
	c.clientLeaf = leaf
	c.expiry(leaf, "client certificate "+cfg.SSLCert, now, warnDays)
	c.notes = append(c.notes, fmt.Sprintf("sslcert=%s: %q issued by %q (%s)", cfg.SSLCert, leaf.Subject.String(), leaf.Issuer.String(), certs.ExpiryText(leaf, now)))

	kst, err := os.Stat(cfg.SSLKey)
	if err != nil {
		c.notes = append(c.notes, "sslkey="+cfg.SSLKey+" does not exist, but the certificate does")
		c.predicted = append(c.predicted, failure.New(failure.KeyMissing, "sslkey %s does not exist", cfg.SSLKey))
		return
	}
	if kst.Mode().IsRegular() {
		if perm := kst.Mode().Perm(); perm&0o177 != 0 && keyfile.CheckPermissions(cfg.SSLKey) == nil {
			c.warnings = append(c.warnings, Warning{Code: WarnKeyPermissive,
				Message: fmt.Sprintf("private key %s has mode %04o: libpq accepts it, but only the owner needs to read it", cfg.SSLKey, perm),
				Fix:     "chmod 0600 " + keyfile.ShellQuote(cfg.SSLKey)})
		}
	}
	if _, err := keyfile.LoadKeyPair(cfg.SSLCert, cfg.SSLKey, cfg.SSLPassword); err != nil {
		e, ok := failure.As(err)
		if !ok {
			e = failure.Wrap(failure.ConfigInvalid, err, "load client key")
		}
		c.notes = append(c.notes, "sslkey="+cfg.SSLKey+": "+e.Error())
		c.predicted = append(c.predicted, e)
		return
	}
	what := "opens"
	if cfg.SSLPassword != "" {
		what = "opens with sslpassword"
	}
	c.notes = append(c.notes, "sslkey="+cfg.SSLKey+": "+what+", permissions pass libpq's rule, matches the certificate")
}

// expiry warns about a certificate that is expired or expires soon.
func (c *configCheck) expiry(cert *x509.Certificate, where string, now time.Time, warnDays int) {
	if w, ok := expiryWarning(cert, where, now, warnDays); ok {
		c.warnings = append(c.warnings, w)
	}
}

func expiryWarning(cert *x509.Certificate, where string, now time.Time, warnDays int) (Warning, bool) {
	left := certs.DaysLeft(cert, now)
	switch {
	case now.After(cert.NotAfter):
		return Warning{Code: WarnExpiredNotFatal,
			Message: fmt.Sprintf("%s: %q expired %s (%s)", where, cert.Subject.String(), cert.NotAfter.UTC().Format("2006-01-02"), certs.ExpiryText(cert, now)),
			Fix:     "renew it: pgtrust certs issue ..."}, true
	case left < warnDays:
		return Warning{Code: WarnExpiring,
			Message: fmt.Sprintf("%s: %q expires %s (in %d days)", where, cert.Subject.String(), cert.NotAfter.UTC().Format("2006-01-02"), left),
			Fix:     "renew it before it expires; watch it with: pgtrust certs check"}, true
	}
	return Warning{}, false
}

// isServerLeaf tells a self-signed server certificate (openssl req -x509
// makes them CA:TRUE too) from a real CA: a CA names no host and is not
// for serverAuth.
func isServerLeaf(c *x509.Certificate) bool {
	if !c.IsCA || len(c.DNSNames) > 0 || len(c.IPAddresses) > 0 {
		return true
	}
	for _, u := range c.ExtKeyUsage {
		if u == x509.ExtKeyUsageServerAuth {
			return true
		}
	}
	return false
}
