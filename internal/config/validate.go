package config

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/keyfile"
	"github.com/pgtrust/pgtrust/internal/proxy"
	"github.com/pgtrust/pgtrust/internal/serverpool"
)

// ExpiryWarning is how close to its notAfter a certificate draws a warning.
const ExpiryWarning = 30 * 24 * time.Hour

// Finding statuses.
const (
	StatusOK   = "ok"
	StatusWarn = "warn"
	StatusFail = "fail"
)

// Finding is the outcome of one validation check.
type Finding struct {
	Check    string        `json:"check"`  // what was checked, as a key: "upstreams.main.sslrootcert"
	Status   string        `json:"status"` // ok, warn or fail
	Class    failure.Class `json:"class"`
	Message  string        `json:"message"`
	Evidence string        `json:"evidence,omitempty"`
	Fix      string        `json:"fix,omitempty"`
}

// Failed reports whether any finding is a failure.
func Failed(findings []Finding) bool {
	for _, f := range findings {
		if f.Status == StatusFail {
			return true
		}
	}
	return false
}

// Validate checks everything the proxy needs, without starting it or
// connecting anywhere: every upstream's settings resolve, the files they
// name exist and load (CA, client certificate, key under libpq's permission
// rule, key decrypts and matches), no certificate has expired (a warning
// within ExpiryWarning), listen and health addresses parse, and Unix
// socket and certificate directories are writable.
func Validate(f *File) []Finding {
	return validate(f, Environ(), time.Now())
}

type validator struct {
	out []Finding
	now time.Time
}

func (v *validator) ok(check, format string, args ...any) {
	v.out = append(v.out, Finding{Check: check, Status: StatusOK, Class: failure.OK, Message: fmt.Sprintf(format, args...)})
}

func (v *validator) warn(check string, class failure.Class, msg, evidence, fix string) {
	v.out = append(v.out, Finding{Check: check, Status: StatusWarn, Class: class, Message: msg, Evidence: evidence, Fix: fix})
}

// fail records err; for a *failure.Error its class, evidence and fix.
func (v *validator) fail(check string, err error) {
	fd := Finding{Check: check, Status: StatusFail, Class: failure.ClassOf(err), Message: err.Error()}
	if fe, ok := failure.As(err); ok {
		fd.Evidence, fd.Fix = fe.Evidence, fe.Fix
	}
	v.out = append(v.out, fd)
}

func validate(f *File, env map[string]string, now time.Time) []Finding {
	v := &validator{now: now}
	if addr := f.HealthListen(); addr == "" {
		v.ok("health.listen", "health server disabled")
	} else if err := checkAddr(addr); err != nil {
		v.fail("health.listen", f.invalid("health.listen", "%q: %v", addr, err).
			WithFix(`write host:port, e.g. "127.0.0.1:9090", or "" to disable`))
	} else {
		v.ok("health.listen", "%s", addr)
	}
	if len(f.Upstreams) == 0 {
		v.fail("upstreams", failure.New(failure.ConfigInvalid, "%s defines no upstream", f.where()).
			WithFix("add an [upstreams.NAME] table with listen and dsn"))
	}
	for _, name := range f.UpstreamNames() {
		u := f.Upstreams[name]
		key := f.upstreamKey(name)
		if u.Listen != "" {
			if err := checkAddr(u.Listen); err != nil {
				v.fail(key+".listen", f.invalid(key+".listen", "%q: %v", u.Listen, err).
					WithFix(`write host:port, e.g. "127.0.0.1:6432"`))
			} else {
				v.ok(key+".listen", "%s", u.Listen)
			}
		}
		if u.UnixSocketDir != "" {
			if v.writableDir(key+".unix_socket_dir", u.UnixSocketDir, true) { // the proxy creates it
				v.socketDir(key+".unix_socket_dir", u.UnixSocketDir)
			}
		}
		r, err := f.resolve(name, env)
		if err != nil {
			v.fail(key+".dsn", err)
		} else {
			v.ok(key+".dsn", "%s", r.cfg.Redacted())
			if r.weakenedBy != "" {
				from := "pgtrust's default verify-full"
				if r.written != "" {
					from = "sslmode=" + string(r.written) + " in the configuration (allowed by proxy.allow_weaker_env_sslmode)"
				}
				v.warn(key+".sslmode", failure.ConfigInvalid,
					fmt.Sprintf("the environment variable %s weakens the upstream's sslmode to %s", r.weakenedBy, r.cfg.SSLMode),
					fmt.Sprintf("%s=%s in the proxy's environment overrides %s", r.weakenedBy, envValue(env, u, r.weakenedBy), from),
					fmt.Sprintf("unset %s in the proxy's environment, or write the sslmode you want in the configuration", r.weakenedBy))
			}
			v.upstreamTLS(key, r.cfg, u.Attestation != nil, u.trustIssuedCA())
			v.renewal(f, name, u, r.cfg.User)
		}
		if u.Manifest != "" {
			if _, err := f.follower(name, u, nil); err != nil {
				v.fail(key+".epoch_file", err)
			} else if v.writableDir(key+".epoch_file", filepath.Dir(u.EpochFile), false) {
				v.ok(key+".manifest", "following the leader manifest %s", u.Manifest)
			}
		}
		if a := u.Attestation; a != nil {
			if _, err := a.Policy(key + ".attestation"); err != nil {
				v.fail(key+".attestation", err)
			} else {
				v.ok(key+".attestation", "RA-TLS attestation policy, handshake timeout %dms", a.Timeout().Milliseconds())
			}
		}
		if t := u.ClientTLS; t != nil {
			if t.CertFile != "" {
				v.pair(key+".client_tls", t.CertFile, t.KeyFile, "")
			}
			if t.AutoCertDir != "" {
				v.writableDir(key+".client_tls.auto_cert_dir", t.AutoCertDir, true)
			}
		}
		v.gateways(f, name, u, env)
		v.pool(key, name, u)
	}
	return v.out
}

// pool checks the [pool] table the way the proxy will: the mode, the
// values, and that some front of the upstream can use it.
func (v *validator) pool(key, name string, u *Upstream) {
	if u.Pool == nil {
		return
	}
	uc := proxy.UpstreamConfig{Name: name, Pool: u.Pool.proxyConfig(), Auth: nil}
	if u.Auth != nil {
		uc.Auth = &proxy.UpstreamAuth{Role: u.Auth.Role}
	}
	for _, g := range u.Gateway {
		uc.Gateways = append(uc.Gateways, proxy.GatewayConfig{Listen: g.Listen, Auth: proxy.AuthMode(g.Auth), PoolMode: g.PoolMode})
	}
	if err := proxy.ValidatePool(uc); err != nil {
		v.fail(key+".pool", err)
		return
	}
	size := u.Pool.Size
	if size == 0 {
		size = serverpool.DefaultSize
	}
	v.ok(key+".pool", "%s mode, %d server connections per (database, role)", u.Pool.Mode, size)
}

// gateways checks the gateway listeners of upstream name: addresses,
// certificate pairs, client CA and CRL files, every verifier parses and
// every downgrade pair shares its salt, the identity map parses, the
// secrets' files and variables are there.
func (v *validator) gateways(f *File, name string, u *Upstream, env map[string]string) {
	key := "upstreams." + name
	if len(u.Gateway) == 0 && u.Auth == nil {
		return
	}
	for i, g := range u.Gateway {
		gk := fmt.Sprintf("%s.gateway[%d]", key, i)
		if g.Listen != "" {
			if err := checkAddr(g.Listen); err != nil {
				v.fail(gk+".listen", f.invalid(gk+".listen", "%q: %v", g.Listen, err).WithFix(`write host:port, e.g. ":5433"`))
			}
		}
		if g.CertFile != "" {
			v.pair(gk, g.CertFile, g.KeyFile, "")
		}
		if g.Vault != nil || g.Step != nil {
			v.renewalTable(f, gk, g.Vault, g.Step, "", "server")
		}
		if g.ClientCAFile != "" {
			v.certFile(gk+".client_ca_file", g.ClientCAFile, true)
		}
		if g.ClientCRLFile != "" {
			if _, err := os.Stat(g.ClientCRLFile); err != nil {
				v.fail(gk+".client_crl_file", failure.Wrap(failure.ConfigInvalid, err, "%s: cannot read %s", gk, g.ClientCRLFile).WithFix("make the CRL file readable"))
			}
		}
	}
	gws, err := f.gatewayConfigs(key, u, env)
	if err != nil {
		v.fail(key+".gateway", err)
		return
	}
	auth, err := f.upstreamAuth(key, u, env)
	if err != nil {
		v.fail(key+".auth", err)
	}
	if conn, cerr := f.upstream(name, env); cerr == nil && err == nil && (len(gws) > 0 || auth != nil) {
		// The upstream-level rules the proxy applies at start: no
		// passthrough gateway lending the gateway's own transport
		// credentials, no UpstreamAuth on a public listener.
		uc := proxy.UpstreamConfig{Name: name, Listen: u.Listen, UnixSocketDir: u.UnixSocketDir, Conn: conn, Gateways: gws, Auth: auth}
		if err := proxy.ValidateUpstream(uc); err != nil {
			v.fail(key, err)
		}
	}
	for i, g := range gws {
		gk := fmt.Sprintf("%s.gateway[%d]", key, i)
		if g.RATLS != nil && g.Auth != "" && g.RATLS.Kind == "simulator" {
			v.warn(gk+".ratls", failure.ConfigInvalid, "the RA-TLS certificate comes from the simulator", "ratls = \"simulator\" signs quotes with throwaway keys no verifier trusts",
				"use ratls = \"configfs\" in a TDX guest; the simulator is for development")
		}
		if err := g.Validate(name, i); err != nil {
			v.fail(gk, err)
			continue
		}
		v.ok(gk, "gateway listener %s, auth %s, %d role(s)", g.Listen, g.Auth, len(g.Roles))
	}
}

// upstreamTLS checks the files libpq would use for cfg.
func (v *validator) upstreamTLS(key string, cfg *connstring.Config, attested, trustIssued bool) {
	switch cfg.SSLMode {
	case connstring.SSLDisable, connstring.SSLAllow, connstring.SSLPrefer:
		v.warn(key+".sslmode", failure.ConfigInvalid, fmt.Sprintf("sslmode=%s may connect without TLS and never verifies the server", cfg.SSLMode),
			"the connection can be read and altered by anyone on the path to the server",
			"set sslmode=verify-full with sslrootcert=/path/to/ca.crt")
	case connstring.SSLRequire:
		if attested {
			v.ok(key+".sslmode", "require: the server is verified by its attestation")
			break
		}
		v.warn(key+".sslmode", failure.ConfigInvalid, "sslmode=require encrypts but verifies the server only when a root certificate file exists",
			"without a CA, any server (or interceptor) is accepted", "set sslmode=verify-full with sslrootcert=/path/to/ca.crt")
	default:
		v.ok(key+".sslmode", "%s", cfg.SSLMode)
	}
	needRoot := cfg.SSLMode == connstring.SSLVerifyCA || cfg.SSLMode == connstring.SSLVerifyFull
	switch {
	case cfg.SSLMode == connstring.SSLDisable:
	case trustIssued:
		v.ok(key+".sslrootcert", "the server is verified against the CA that issues the client certificate (trust_issued_ca = true)")
	case cfg.SSLRootCert == "system":
		if _, err := x509.SystemCertPool(); err != nil {
			v.fail(key+".sslrootcert", failure.Wrap(failure.ConfigInvalid, err, "could not load system root certificate paths").
				WithFix("install the ca-certificates package, or set sslrootcert to a CA file"))
		} else {
			v.ok(key+".sslrootcert", "system trust store")
		}
	default:
		_, err := os.Stat(cfg.SSLRootCert)
		switch {
		case cfg.SSLRootCert != "" && err == nil:
			v.certFile(key+".sslrootcert", cfg.SSLRootCert, true)
		case needRoot:
			v.fail(key+".sslrootcert", rootMissing(cfg))
		}
	}

	if cfg.SSLCertMode != "disable" && cfg.SSLCert != "" {
		if _, err := os.Stat(cfg.SSLCert); err == nil {
			v.pair(key+".sslcert", cfg.SSLCert, cfg.SSLKey, cfg.SSLPassword)
		} else if !cfg.SSLCertDefault {
			// libpq goes on silently without a certificate; a configured
			// path that is not there is almost certainly a mistake.
			v.warn(key+".sslcert", failure.ClientCertRequired, fmt.Sprintf("client certificate file %q does not exist", cfg.SSLCert),
				"libpq then connects without a client certificate; a server that requires one refuses the connection",
				"fix the sslcert path, or remove it if no client certificate is needed")
		}
	}
	if cfg.SSLCRL != "" && !cfg.SSLCRLDefault {
		if _, err := os.Stat(cfg.SSLCRL); err != nil {
			v.warn(key+".sslcrl", failure.ConfigInvalid, fmt.Sprintf("certificate revocation list %q does not exist", cfg.SSLCRL),
				"libpq silently ignores a missing CRL file, so no revocation is checked", "fix the sslcrl path")
		}
	}
}

func rootMissing(cfg *connstring.Config) error {
	e := failure.New(failure.RootCertMissing,
		"root certificate file \"%s\" does not exist\nEither provide the file, use the system's trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification.", cfg.SSLRootCert)
	if cfg.SSLRootCertDefault {
		e.Evidence = fmt.Sprintf("sslmode=%s needs a CA to verify the server; sslrootcert is not set and the default %q does not exist (pgtrust's default sslmode is verify-full)", cfg.SSLMode, cfg.SSLRootCert)
	} else {
		e.Evidence = fmt.Sprintf("sslmode=%s needs a CA to verify the server; sslrootcert=%s does not exist", cfg.SSLMode, cfg.SSLRootCert)
	}
	e.Fix = "set sslrootcert=/path/to/ca.crt (the CA that signed the server certificate; see it with: pgtrust certs inspect --server HOST:PORT), or sslrootcert=system for a publicly trusted server"
	return e
}

// certFile loads a certificate file and checks every certificate's validity.
func (v *validator) certFile(check, path string, isCA bool) []*x509.Certificate {
	chain, err := keyfile.LoadCertificates(path)
	if err != nil {
		v.fail(check, err)
		return nil
	}
	if isCA {
		anchors := 0
		for _, c := range chain {
			if string(c.RawIssuer) == string(c.RawSubject) && c.CheckSignatureFrom(c) == nil {
				anchors++
			}
		}
		if anchors == 0 {
			v.fail(check, failure.New(failure.UnknownCA, "root certificate file \"%s\" holds no self-signed root", path).
				WithEvidence("libpq (OpenSSL) trusts only self-signed roots; an intermediate alone is never a trust anchor").
				WithFix("append the root CA certificate to %s", path))
		}
	}
	for _, c := range chain {
		v.expiry(check, path, c)
	}
	return chain
}

func (v *validator) expiry(check, path string, c *x509.Certificate) {
	subject := c.Subject.String()
	switch {
	case v.now.After(c.NotAfter):
		v.fail(check, failure.New(failure.CertExpired, "certificate has expired").
			WithEvidence("%s (subject %q) expired on %s", path, subject, c.NotAfter.UTC().Format(time.RFC3339)).
			WithFix("issue a new certificate (pgtrust certs issue ...) and replace %s", path))
	case v.now.Before(c.NotBefore):
		v.fail(check, failure.New(failure.CertNotYetValid, "certificate is not yet valid").
			WithEvidence("%s (subject %q) is valid from %s", path, subject, c.NotBefore.UTC().Format(time.RFC3339)).
			WithFix("check this machine's clock, or wait until notBefore"))
	case c.NotAfter.Sub(v.now) < ExpiryWarning:
		v.warn(check, failure.CertExpiring, "certificate "+certs.ExpiryText(c, v.now),
			fmt.Sprintf("%s (subject %q) notAfter %s", path, subject, c.NotAfter.UTC().Format(time.RFC3339)),
			fmt.Sprintf("renew %s before it expires", path))
	default:
		v.ok(check, "%s: %q valid until %s", path, subject, c.NotAfter.UTC().Format("2006-01-02"))
	}
}

// pair checks a certificate and its key: the key exists, obeys libpq's
// permission rule, opens with the password and matches the certificate.
func (v *validator) pair(check, certPath, keyPath, password string) {
	chain := v.certFile(check, certPath, false)
	if err := keyfile.CheckPermissions(keyPath); err != nil {
		v.fail(check+".key", err)
		if failure.ClassOf(err) != failure.KeyPermissions {
			return
		}
	}
	// Parse directly: LoadPrivateKey would report the permissions again.
	data, err := os.ReadFile(keyPath)
	if err != nil {
		v.fail(check+".key", failure.Wrap(failure.KeyMissing, err, "could not read private key file \"%s\"", keyPath).
			WithFix("check the path and that uid %d can read it", os.Getuid()))
		return
	}
	key, err := keyfile.ParsePrivateKey(data, password, keyPath)
	if err != nil {
		v.fail(check+".key", err)
		return
	}
	if len(chain) == 0 {
		return
	}
	if !keyfile.KeyMatches(chain[0], key) {
		v.fail(check+".key", failure.New(failure.KeyMismatch, "certificate does not match private key file \"%s\": key values mismatch", keyPath).
			WithEvidence("certificate %s has public key %s; the key has %s", certPath,
				keyfile.PublicKeyFingerprint(chain[0].PublicKey), keyfile.PublicKeyFingerprint(key.Public())).
			WithFix("use the key the certificate was issued for, or issue a new certificate for this key"))
		return
	}
	v.ok(check+".key", "%s matches the certificate", keyPath)
}

// envValue is the value of the variable that weakened an sslmode.
func envValue(env map[string]string, u *Upstream, name string) string {
	if name == "DB_SSL_MODE" {
		return u.overrides["sslmode"]
	}
	return env[name]
}

// socketDir checks an existing Unix-socket directory as the proxy will at
// start: owned by this user, writable by no one else.
func (v *validator) socketDir(check, dir string) {
	if err := proxy.CheckSocketDir(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		v.fail(check, err)
	}
}

// writableDir checks that dir exists (or, with mayCreate, that its parent
// lets it be created) and that this process can create files in it; it
// reports whether it did.
func (v *validator) writableDir(check, dir string, mayCreate bool) bool {
	fi, err := os.Stat(dir)
	switch {
	case err == nil && !fi.IsDir():
		v.fail(check, failure.New(failure.ConfigInvalid, "%s is not a directory", dir).
			WithEvidence("%s is set to %s", check, dir).WithFix("point %s at a directory", check))
		return false
	case errors.Is(err, fs.ErrNotExist) && mayCreate:
		parent := filepath.Dir(dir)
		if accessErr := canCreateIn(parent); accessErr != nil {
			v.fail(check, failure.Wrap(failure.ConfigInvalid, accessErr, "cannot create directory %s", dir).
				WithEvidence("%s does not exist and %s is not writable by uid %d", dir, parent, os.Getuid()).
				WithFix("create it: mkdir -p %s && chmod 700 %s (owned by the proxy's user)", dir, dir))
			return false
		}
		v.ok(check, "%s will be created", dir)
		return true
	case err != nil:
		v.fail(check, failure.Wrap(failure.ConfigInvalid, err, "directory %s is not usable", dir).
			WithEvidence("%v", err).
			WithFix("create it: mkdir -p %s, owned by the proxy's user", dir))
		return false
	}
	if err := canCreateIn(dir); err != nil {
		v.fail(check, failure.Wrap(failure.ConfigInvalid, err, "directory %s is not writable", dir).
			WithEvidence("uid %d cannot create files in %s (mode %s)", os.Getuid(), dir, fi.Mode().Perm()).
			WithFix("chown the directory to the proxy's user, or choose another directory"))
		return false
	}
	v.ok(check, "%s is writable", dir)
	return true
}

// checkAddr checks a host:port listen address.
func checkAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		if _, lookupErr := net.LookupPort("tcp", port); lookupErr != nil {
			return fmt.Errorf("port %q is not a number between 0 and 65535", port)
		}
	}
	if host != "" && net.ParseIP(host) == nil && host != "localhost" {
		// A name is allowed (resolved when listening) but must look like one.
		for _, r := range host {
			if !(r == '-' || r == '.' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
				return fmt.Errorf("host %q is neither an IP address nor a host name", host)
			}
		}
	}
	return nil
}

// trustIssuedCA reports whether the upstream's renewal table makes its CA
// verify the server in place of sslrootcert.
func (u *Upstream) trustIssuedCA() bool {
	return (u.Vault != nil && u.Vault.TrustIssuedCA) || (u.Step != nil && u.Step.TrustIssuedCA)
}

// renewal checks upstream name's [vault] / [step] table.
func (v *validator) renewal(f *File, name string, u *Upstream, user string) {
	if u.Vault == nil && u.Step == nil {
		return
	}
	where := "upstreams." + name
	if u.storage {
		where = "storage.postgres." + name
	}
	v.renewalTable(f, where, u.Vault, u.Step, user, "client")
}

// renewalTable checks a [vault] or [step] table as the proxy will build
// it: the options (pki_role shape, threshold and jitter, one way to log
// in, files exist) and the issuer's own checks (the CA file parses). It
// requests no certificate: the CA is first contacted when the proxy
// starts.
func (v *validator) renewalTable(f *File, where string, vt *VaultTable, st *StepTable, defaultCN, kind string) {
	check := where + ".vault"
	if vt != nil && vt.keyName != nil {
		check = where + ".vault_pki_role"
	}
	if st != nil {
		check = where + ".step"
	}
	r, err := renewalFor(where, vt, st, defaultCN)
	if err != nil {
		v.fail(check, f.inFile(err))
		return
	}
	if vt != nil {
		// NewVaultIssuer contacts nobody; it reads and parses ca_cert.
		if _, err := r.NewIssuer(nil); err != nil {
			v.fail(check, f.inFile(err))
			return
		}
		vo, _, _ := vt.Options(check, defaultCN)
		v.ok(check, "%s certificate from Vault %s (%s/issue/%s) for CN=%q, renewed after %.0f%% of its lifetime; not requested by validate (the proxy asks Vault at start)",
			kind, vt.Addr, vo.Mount, vo.Role, vo.CommonName, r.Options.Threshold*100)
		return
	}
	so, _, _ := st.Options(check, defaultCN)
	v.ok(check, "%s certificate from step-ca %s (provisioner %q) for CN=%q, renewed after %.0f%% of its lifetime; not requested by validate (the proxy asks step-ca at start)",
		kind, st.CAURL, so.Provisioner, so.CommonName, r.Options.Threshold*100)
}
