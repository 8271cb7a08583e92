package certs

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/keyfile"
)

// File names inside a development PKI directory.
const (
	CACertName     = "ca.crt"
	CAKeyName      = "ca.key"
	ServerCertName = "server.crt"
	ServerKeyName  = "server.key"
	ClientCertName = "client.crt"
	ClientKeyName  = "client.key"
)

// DevPKIOptions configure a development PKI.
type DevPKIOptions struct {
	Hosts    []string      // server SANs; default localhost, 127.0.0.1, ::1
	User     string        // client certificate CN; default "postgres"
	KeyType  KeyType       // default ECDSA P-256
	Validity time.Duration // leaf validity; default 365 days (the CA gets 10 years, at least as long)
	Force    bool          // overwrite existing files
}

// DefaultHosts are the server SANs when none are given.
var DefaultHosts = []string{"localhost", "127.0.0.1", "::1"}

// DevPKI describes the files of a development PKI.
type DevPKI struct {
	Dir                   string
	CACert, CAKey         string
	ServerCert, ServerKey string
	ClientCert, ClientKey string
	Hosts                 []string
	User                  string
	Generated             bool // false when existing valid files were reused
	CA, Server, Client    *x509.Certificate
}

func layout(dir string) *DevPKI {
	return &DevPKI{
		Dir:        dir,
		CACert:     filepath.Join(dir, CACertName),
		CAKey:      filepath.Join(dir, CAKeyName),
		ServerCert: filepath.Join(dir, ServerCertName),
		ServerKey:  filepath.Join(dir, ServerKeyName),
		ClientCert: filepath.Join(dir, ClientCertName),
		ClientKey:  filepath.Join(dir, ClientKeyName),
	}
}

func (p *DevPKI) files() []string {
	return []string{p.CACert, p.CAKey, p.ServerCert, p.ServerKey, p.ClientCert, p.ClientKey}
}

func (o *DevPKIOptions) fill() {
	if len(o.Hosts) == 0 {
		o.Hosts = DefaultHosts
	}
	if o.User == "" {
		o.User = "postgres"
	}
	if o.KeyType == "" {
		o.KeyType = ECDSAP256
	}
	if o.Validity <= 0 {
		o.Validity = 365 * day
	}
}

// InitDevPKI generates a root CA, a server certificate and a client
// certificate into dir (created 0700 when missing): keys 0600, certificates
// 0644, each written atomically. It refuses to overwrite any existing file
// unless opts.Force is set.
func InitDevPKI(dir string, opts DevPKIOptions) (*DevPKI, error) {
	opts.fill()
	p := layout(dir)
	if !opts.Force {
		var existing []string
		for _, f := range p.files() {
			if _, err := os.Lstat(f); err == nil {
				existing = append(existing, f)
			}
		}
		if len(existing) > 0 {
			return nil, failure.New(failure.ConfigInvalid, "refusing to overwrite existing files in %s", dir).
				WithEvidence("already present: %s", strings.Join(existing, ", ")).
				WithFix("pass --force to replace them, or choose another --dir")
		}
	}
	if err := makeDir(dir); err != nil {
		return nil, err
	}
	caValidity := 10 * 365 * day
	if opts.Validity > caValidity {
		caValidity = opts.Validity
	}
	ca, err := NewCA(Options{CommonName: "pgtrust development CA", KeyType: opts.KeyType, Validity: caValidity + day})
	if err != nil {
		return nil, err
	}
	server, err := IssueServer(ca, Options{Hosts: opts.Hosts, KeyType: opts.KeyType, Validity: opts.Validity})
	if err != nil {
		return nil, err
	}
	client, err := IssueClient(ca, Options{CommonName: opts.User, KeyType: opts.KeyType, Validity: opts.Validity})
	if err != nil {
		return nil, err
	}
	// All six files or none (a full disk must not leave a new key beside an
	// old certificate); renamed keys first, CA certificate last, so a
	// reader that sees the new ca.crt sees a complete set.
	var files []keyfile.File
	for _, w := range []struct {
		pair      *KeyPair
		cert, key string
	}{{server, p.ServerCert, p.ServerKey}, {client, p.ClientCert, p.ClientKey}, {ca, p.CACert, p.CAKey}} {
		fs, err := w.pair.files(w.cert, w.key, "")
		if err != nil {
			return nil, err
		}
		files = append(files, fs...)
	}
	if err := keyfile.WriteFilesAtomic(files); err != nil {
		return nil, err
	}
	p.Hosts, p.User, p.Generated = opts.Hosts, opts.User, true
	p.CA, p.Server, p.Client = ca.Cert, server.Cert, client.Cert
	return p, nil
}

// EnsureDevPKI is the auto-generation behaviour for a certificate
// directory: generate when no file is there, reuse the files when all are
// present and valid (each pair matches, chains to the CA, is not expired),
// and fail clearly otherwise (a partial or invalid set is never silently
// replaced, unless opts.Force). A directory that cannot be created or
// written gives a failure.ConfigInvalid with the fix.
func EnsureDevPKI(dir string, opts DevPKIOptions) (*DevPKI, error) {
	opts.fill()
	p := layout(dir)
	var present, missing []string
	for _, f := range p.files() {
		if _, err := os.Stat(f); err == nil {
			present = append(present, f)
		} else if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			missing = append(missing, f)
		} else {
			return nil, failure.Wrap(failure.ConfigInvalid, err, "cannot use certificate directory %s", dir).
				WithEvidence("%v", err).
				WithFix("make %s readable and searchable by uid %d (chmod 0700 %s)", dir, os.Getuid(), keyfile.ShellQuote(dir))
		}
	}
	if len(present) == 0 {
		return wrapGenerate(InitDevPKI(dir, opts))
	}
	if len(missing) > 0 {
		if opts.Force {
			return wrapGenerate(InitDevPKI(dir, opts))
		}
		return nil, failure.New(failure.ConfigInvalid, "certificate directory %s is incomplete", dir).
			WithEvidence("present: %s; missing: %s", strings.Join(present, ", "), strings.Join(missing, ", ")).
			WithFix("restore the missing files, or remove the directory's certificate files so that a new set is generated")
	}
	if err := p.validate(time.Now()); err != nil {
		if opts.Force {
			return wrapGenerate(InitDevPKI(dir, opts))
		}
		return nil, err
	}
	p.Hosts, p.User = opts.Hosts, opts.User
	return p, nil
}

func wrapGenerate(p *DevPKI, err error) (*DevPKI, error) {
	if err != nil {
		if fe, ok := failure.As(err); ok && fe.Class == failure.ConfigInvalid && !strings.HasPrefix(fe.Message, "could not generate") {
			fe.Message = "could not generate certificates: " + fe.Message
		}
		return nil, err
	}
	return p, nil
}

// validate checks an existing set: pairs match, chain to ca.crt, in date.
func (p *DevPKI) validate(now time.Time) error {
	cas, err := keyfile.LoadCertificates(p.CACert)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	for _, c := range cas {
		roots.AddCert(c)
	}
	p.CA = cas[0]
	for _, f := range []struct {
		cert, key string
		dst       **x509.Certificate
		usage     x509.ExtKeyUsage
	}{{p.ServerCert, p.ServerKey, &p.Server, x509.ExtKeyUsageServerAuth}, {p.ClientCert, p.ClientKey, &p.Client, x509.ExtKeyUsageClientAuth}} {
		pair, err := keyfile.LoadKeyPair(f.cert, f.key, "")
		if err != nil {
			return err
		}
		*f.dst = pair.Leaf
		if err := validateLeaf(pair.Leaf, pair.Certificate[1:], roots, now, f.cert, p.CACert); err != nil {
			return err
		}
	}
	return nil
}

// makeDir creates dir 0700 (and parents) and checks it is writable, with
// the fix for the usual failures.
func makeDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return failure.Wrap(failure.ConfigInvalid, err, "could not create certificate directory %s", dir).
			WithEvidence("%v", err).
			WithFix("create it as a user that may: mkdir -p -m 0700 %s && chown %d %s", keyfile.ShellQuote(dir), os.Getuid(), keyfile.ShellQuote(dir))
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return failure.Wrap(failure.ConfigInvalid, err, "could not use certificate directory %s", dir)
	}
	if !fi.IsDir() {
		return failure.New(failure.ConfigInvalid, "%s is not a directory", dir).
			WithFix("choose a directory for the certificates")
	}
	return nil
}

// PostgresConf returns the postgresql.conf lines for the server files.
func (p *DevPKI) PostgresConf() string {
	return fmt.Sprintf("ssl = on\nssl_cert_file = '%s'\nssl_key_file = '%s'\nssl_ca_file = '%s'\n",
		confQuote(abs(p.ServerCert)), confQuote(abs(p.ServerKey)), confQuote(abs(p.CACert)))
}

// HBALine returns a pg_hba.conf line for certificate authentication of the
// client certificate's user.
func (p *DevPKI) HBALine() string {
	return fmt.Sprintf("hostssl all %s all cert clientcert=verify-full", hbaQuote(p.User))
}

// ConnString returns a libpq connection string that uses the client
// certificate with verify-full.
func (p *DevPKI) ConnString() string {
	host := "localhost"
	if len(p.Hosts) > 0 {
		host = p.Hosts[0]
	}
	return fmt.Sprintf("host=%s user=%s sslmode=verify-full sslrootcert=%s sslcert=%s sslkey=%s",
		connQuote(host), connQuote(p.User), connQuote(abs(p.CACert)), connQuote(abs(p.ClientCert)), connQuote(abs(p.ClientKey)))
}

func abs(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

func confQuote(s string) string { return strings.ReplaceAll(s, "'", "''") }

func hbaQuote(s string) string {
	if strings.ContainsAny(s, " \t,\"#") {
		return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
	}
	return s
}

// connQuote quotes a libpq key/value value when needed.
func connQuote(s string) string {
	if s != "" && !strings.ContainsAny(s, " '\\\t") {
		return s
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}
