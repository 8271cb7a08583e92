package pgtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/chain"
	"github.com/pgtrust/pgtrust/internal/keyfile"
)

// trustMaterial is what server verification needs, loaded the way libpq's
// initialize_SSL loads it: after the server agreed to TLS.
type trustMaterial struct {
	roots        *x509.CertPool      // nil: no root file, so no chain verification
	rootFile     string              // the file roots came from ("system" for the system store)
	extraInterms []*x509.Certificate // non-self-signed certificates found in the root file
	crls         []*x509.RevocationList
	crlDir       string // sslcrldir, looked up per issuer at verification
	verifyChain  bool   // a root file was loaded: verify the chain whatever the sslmode
	verifyHost   bool   // sslmode=verify-full
}

// loadTrust applies libpq's root-certificate and CRL rules.
func loadTrust(cfg *connstring.Config, opts *Options) (*trustMaterial, error) {
	m := &trustMaterial{verifyHost: cfg.SSLMode == connstring.SSLVerifyFull}
	needRoot := cfg.SSLMode == connstring.SSLVerifyCA || cfg.SSLMode == connstring.SSLVerifyFull
	switch {
	case opts != nil && opts.RootCAs != nil:
		pool := opts.RootCAs()
		if pool != nil {
			m.roots, m.rootFile, m.verifyChain = pool, "(provided by the certificate source)", true
		}
	case cfg.SSLRootCert == "system":
		pool, err := x509.SystemCertPool()
		if err != nil {
			return nil, failure.Wrap(failure.ConfigInvalid, err, "could not load system root certificate paths: %v", err).
				WithFix("install the ca-certificates package, or set sslrootcert to a CA file")
		}
		// libpq loads no CRL on the system path.
		m.roots, m.rootFile, m.verifyChain = pool, "system", true
		return m, nil
	default:
		path := cfg.SSLRootCert
		if path != "" {
			if _, err := os.Stat(path); err == nil {
				roots, err := loadRootFile(path)
				if err != nil {
					reason := err
					e, _ := failure.As(err)
					if e != nil && e.Err != nil {
						reason = e.Err
					}
					out := failure.Wrap(failure.ConfigInvalid, err, "could not read root certificate file \"%s\": %s", path, keyfile.Reason(reason)).CauseInMessage()
					if e != nil {
						out.Evidence, out.Fix = e.Evidence, e.Fix
					}
					return nil, out
				}
				m.roots, m.extraInterms = roots.Pool, roots.Intermediates
				m.rootFile, m.verifyChain = path, true
			}
		}
	}
	if !m.verifyChain {
		if needRoot {
			return nil, rootMissing(cfg)
		}
		return m, nil
	}
	if err := m.loadCRLs(cfg); err != nil {
		return nil, err
	}
	return m, nil
}

func rootMissing(cfg *connstring.Config) error {
	path := cfg.SSLRootCert
	e := failure.New(failure.RootCertMissing,
		"root certificate file \"%s\" does not exist\nEither provide the file, use the system's trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification.", path)
	if cfg.SSLRootCertDefault {
		e.Evidence = fmt.Sprintf("sslmode=%s needs a CA to verify the server; sslrootcert is not set and the default %s does not exist", cfg.SSLMode, path)
	} else {
		e.Evidence = fmt.Sprintf("sslmode=%s needs a CA to verify the server; sslrootcert=%s does not exist", cfg.SSLMode, path)
	}
	e.Fix = "set sslrootcert=/path/to/ca.crt (the CA that signed the server certificate; fetch the server's chain with: pgtrust certs inspect --server HOST:PORT), or sslrootcert=system for a publicly trusted server"
	return e
}

// loadCRLs loads sslcrl and sslcrldir. libpq only reads them when a root
// file was loaded, and silently ignores a CRL file that does not exist.
func (m *trustMaterial) loadCRLs(cfg *connstring.Config) error {
	if cfg.SSLCRL != "" {
		data, err := os.ReadFile(cfg.SSLCRL)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			// "if not found, silently ignore; we do not require CRL"
		case err != nil:
			return failure.Wrap(failure.ConfigInvalid, err, "SSL certificate revocation list file \"%s\" could not be read", cfg.SSLCRL).
				WithFix("check the permissions of %s", cfg.SSLCRL)
		default:
			crls, err := chain.ParseCRLs(data)
			if err != nil {
				return failure.Wrap(failure.ConfigInvalid, err, "could not load SSL certificate revocation list \"%s\"", cfg.SSLCRL).
					WithFix("sslcrl must be a PEM or DER X.509 CRL; check it with: openssl crl -in %s -noout -text", cfg.SSLCRL)
			}
			m.crls = append(m.crls, crls...)
		}
	}
	if cfg.SSLCRLDir != "" {
		// OpenSSL's hashed-directory lookup reads the directory per issuer
		// during verification (chain.CheckRevocationWithDir); registering it
		// turns revocation checking on even when it holds no CRL.
		m.crlDir = cfg.SSLCRLDir
	}
	return nil
}

// loadClientCert applies libpq's client-certificate rules: no sslcert file
// means no certificate (silently); a certificate without its key, a key
// readable by others, a key that does not open or does not match are errors.
func loadClientCert(cfg *connstring.Config, opts *Options) (*tls.Certificate, func(*tls.CertificateRequestInfo) (*tls.Certificate, error), error) {
	if cfg.SSLCertMode == "disable" {
		return nil, nil, nil
	}
	if opts != nil && opts.GetClientCertificate != nil {
		return nil, opts.GetClientCertificate, nil
	}
	if cfg.SSLCert == "" {
		return nil, nil, nil
	}
	st, err := os.Stat(cfg.SSLCert)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errNotDir) {
			return nil, nil, nil
		}
		return nil, nil, failure.Wrap(failure.ConfigInvalid, err, "could not open certificate file \"%s\": %s", cfg.SSLCert, keyfile.Reason(err)).
			WithFix("check the path and permissions of %s", cfg.SSLCert)
	}
	if st.IsDir() {
		return nil, nil, failure.New(failure.ConfigInvalid, "could not read certificate file \"%s\": is a directory", cfg.SSLCert).
			WithEvidence("sslcert=%s is a directory", cfg.SSLCert).WithFix("point sslcert at the client certificate file (PEM)")
	}
	if _, err := os.Stat(cfg.SSLKey); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, failure.New(failure.KeyMissing, "certificate present, but not private key file \"%s\"", cfg.SSLKey).
				WithEvidence("client certificate %s exists, so libpq sends it and needs its key, but %s does not exist", cfg.SSLCert, cfg.SSLKey).
				WithFix("set sslkey=/path/to/client.key, or remove/rename %s if no client certificate should be sent (or set sslcertmode=disable)", cfg.SSLCert)
		}
		return nil, nil, failure.Wrap(failure.ConfigInvalid, err, "could not stat private key file \"%s\": %s", cfg.SSLKey, keyfile.Reason(err))
	}
	pair, err := keyfile.LoadKeyPair(cfg.SSLCert, cfg.SSLKey, cfg.SSLPassword)
	if err != nil {
		return nil, nil, err
	}
	return &pair, nil, nil
}
