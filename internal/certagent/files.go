package certagent

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/keyfile"
)

// file is one file of a set written together.
type file struct {
	path string
	data []byte
	mode os.FileMode
}

// encode renders issued material as the files of c, in the order they are
// renamed into place: CA file, key, certificate.
//
// Why this order: the certificate and the key are two files and no rename
// replaces both at once, so a reader between the two renames sees a pair
// that does not match. All temp files are complete and synced before the
// first rename, so that window is only the time between two rename calls
// (microseconds). The key goes before the certificate because watchers
// react to the certificate changing (pgtrust's FileSource, most reload
// hooks); when they see the new certificate its key is already there. The
// CA file goes first so that a new chain's CA is present before the leaf
// that needs it. The reload command runs only after all renames, so the
// server it reloads never sees the window.
func (c *Config) encode(iss *certs.Issued) ([]file, error) {
	signer, ok := iss.Certificate.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, failure.New(certs.RenewalInvalid, "the issued private key cannot sign (%T)", iss.Certificate.PrivateKey)
	}
	keyPEM, err := keyfile.EncodePrivateKeyPEM(signer)
	if err != nil {
		return nil, failure.Wrap(certs.RenewalInvalid, err, "could not encode the issued private key as PKCS#8")
	}
	var certPEM []byte
	for _, der := range iss.Certificate.Certificate {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	var out []file
	if c.Agent.CAFile != "" && len(iss.CAs) > 0 {
		var caPEM []byte
		for _, ca := range iss.CAs {
			caPEM = append(caPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw})...)
		}
		out = append(out, file{c.Agent.CAFile, caPEM, 0o644})
	}
	out = append(out, file{c.Agent.KeyFile, keyPEM, c.KeyMode()}, file{c.Agent.CertFile, certPEM, 0o644})
	return out, nil
}

// writeFiles writes the set with keyfile.WriteFilesAtomic: each to a temp
// file in the target's directory (created 0600, so a key is never
// exposed), synced, given its mode and, when an owner is set, its owner;
// once every temp file is complete they are renamed into place in order and
// the directories synced. A failure before the renames changes no file.
func (c *Config) writeFiles(files []file) error {
	var owner *keyfile.Owner
	if uid, gid, chown := c.Owner(); chown {
		owner = &keyfile.Owner{UID: uid, GID: gid}
	}
	set := make([]keyfile.File, len(files))
	for i, f := range files {
		set[i] = keyfile.File{Path: f.path, Data: f.data, Mode: f.mode, Owner: owner}
	}
	return keyfile.WriteFilesAtomic(set)
}

// writeError is config_invalid like keyfile's writes: the operator fixes
// the path, the permissions or the disk.
func writeError(path string, err error) *failure.Error {
	dir := filepath.Dir(path)
	e := failure.Wrap(failure.ConfigInvalid, err, "could not write \"%s\"", path).WithEvidence("%v", err)
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		e.Fix = fmt.Sprintf("free space on the file system that holds %s (the old files are intact)", dir)
	case errors.Is(err, syscall.EROFS):
		e.Fix = fmt.Sprintf("%s is on a read-only file system; choose a writable directory", dir)
	case errors.Is(err, os.ErrPermission):
		e.Fix = fmt.Sprintf("make %s writable by uid %d, or run the agent as a user that may write there", dir, os.Getuid())
	case errors.Is(err, os.ErrNotExist):
		e.Fix = fmt.Sprintf("create the directory first: mkdir -p %s", keyfile.ShellQuote(dir))
	default:
		e.Fix = fmt.Sprintf("check %s", dir)
	}
	return e
}

// errText is an error's message without its evidence (enough for a log
// line's reason; keyfile's messages name files, never key material).
func errText(err error) string {
	if fe, ok := failure.As(err); ok {
		return fe.Message
	}
	return err.Error()
}

// leafOf returns the leaf of a tls.Certificate.
func leafOf(c *tls.Certificate) *x509.Certificate {
	if c.Leaf != nil {
		return c.Leaf
	}
	if len(c.Certificate) == 0 {
		return nil
	}
	l, _ := x509.ParseCertificate(c.Certificate[0])
	return l
}
