package certs

import (
	"os"
	"path/filepath"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/keyfile"
)

// WriteFiles writes the pair to certPath and keyPath, all or nothing
// (keyfile.WriteFilesAtomic): the key 0600, as PKCS#8 PEM encrypted with
// password when it is not empty, and the certificate (and Chain) 0644. A
// full disk or read-only directory leaves both old files as they were.
func (p *KeyPair) WriteFiles(certPath, keyPath, password string) error {
	files, err := p.files(certPath, keyPath, password)
	if err != nil {
		return err
	}
	return keyfile.WriteFilesAtomic(files)
}

// files is the pair as files to write, key first, so that a reader that
// finds the new certificate finds its key too.
func (p *KeyPair) files(certPath, keyPath, password string) ([]keyfile.File, error) {
	keyPEM, err := p.KeyPEM(password)
	if err != nil {
		return nil, err
	}
	return []keyfile.File{{Path: keyPath, Data: keyPEM, Mode: 0o600}, {Path: certPath, Data: p.CertPEM(), Mode: 0o644}}, nil
}

// IssueFilesOptions describe a certificate written to DIR/NAME.crt and
// DIR/NAME.key by IssueFiles.
type IssueFilesOptions struct {
	// Role is "server" or "client". A server certificate takes its SANs
	// from Options.Hosts (its CN is the first host); a client certificate
	// its CN, the PostgreSQL user name, from Options.CommonName. The other
	// field is ignored, so that one set of flags serves both.
	Role        string
	Dir         string // output directory
	Name        string // file name without extension; default: Role
	KeyPassword string // encrypt the new key (PKCS#8) with it, when set
	Force       bool   // replace existing files
	Options     Options
}

// IssuedFiles names what IssueFiles wrote.
type IssuedFiles struct {
	CertPath, KeyPath string
	Pair              *KeyPair
}

// IssueFiles issues a server or client certificate from ca and writes it
// with WriteFiles. Existing files are never replaced without Force, and
// that is checked before anything is generated.
func IssueFiles(ca *KeyPair, o IssueFilesOptions) (*IssuedFiles, error) {
	if err := o.Check(); err != nil {
		return nil, err
	}
	name := o.Name
	if name == "" {
		name = o.Role
	}
	f := &IssuedFiles{CertPath: filepath.Join(o.Dir, name+".crt"), KeyPath: filepath.Join(o.Dir, name+".key")}
	if !o.Force {
		for _, p := range []string{f.CertPath, f.KeyPath} {
			if _, err := os.Lstat(p); err == nil {
				return nil, failure.New(failure.ConfigInvalid, "refusing to overwrite %s", p).
					WithFix("pass --force to replace it, or choose another --name or --dir")
			}
		}
	}
	var err error
	opts := o.Options
	if o.Role == "server" {
		opts.CommonName = ""
		f.Pair, err = IssueServer(ca, opts)
	} else {
		opts.Hosts = nil
		f.Pair, err = IssueClient(ca, opts)
	}
	if err != nil {
		return nil, err
	}
	if err := f.Pair.WriteFiles(f.CertPath, f.KeyPath, o.KeyPassword); err != nil {
		return nil, err
	}
	return f, nil
}

// Check reports an unknown Role, before anything is read or generated.
func (o IssueFilesOptions) Check() error {
	if o.Role != "server" && o.Role != "client" {
		return failure.New(failure.ConfigInvalid, "unknown certificate kind %q", o.Role).
			WithFix("use: pgtrust certs issue server ... or pgtrust certs issue client ...")
	}
	return nil
}
