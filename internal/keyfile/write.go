package keyfile

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/youmark/pkcs8"

	"github.com/pgtrust/pgtrust/failure"
)

// EncodePrivateKeyPEM encodes key as an unencrypted PKCS#8 "PRIVATE KEY" PEM block.
func EncodePrivateKeyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPKCS8, Bytes: der}), nil
}

// pbes2Opts is what `openssl pkcs8 -topk8 -v2 aes-256-cbc -v2prf hmacWithSHA256`
// writes, with a longer salt and more iterations than OpenSSL's 2048: the
// key is decrypted once per load, so the cost is paid rarely.
var pbes2Opts = &pkcs8.Opts{
	Cipher: pkcs8.AES256CBC,
	KDFOpts: pkcs8.PBKDF2Opts{
		SaltSize:       16,
		IterationCount: 100_000,
		HMACHash:       crypto.SHA256,
	},
}

// EncryptPrivateKeyPEM encodes key as an "ENCRYPTED PRIVATE KEY" PEM block:
// PKCS#8 with PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC), readable by OpenSSL 3
// and therefore by libpq with sslpassword.
func EncryptPrivateKeyPEM(key crypto.Signer, password string) ([]byte, error) {
	if password == "" {
		return nil, errors.New("encrypt private key: empty password")
	}
	der, err := pkcs8.MarshalPrivateKey(key, []byte(password), pbes2Opts)
	if err != nil {
		return nil, fmt.Errorf("encrypt private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPKCS8Encrypted, Bytes: der}), nil
}

// WriteFileAtomic writes data to path so that readers see either the old
// file or the complete new one, never a partial write, even if the process
// is killed: temp file in the same directory (created 0600 so secrets are
// never exposed), write, fsync, chmod mode, rename, fsync the directory.
// Errors are failure.ConfigInvalid with a fix for the usual causes
// (permission, full disk, read-only file system).
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	return WriteFilesAtomic([]File{{Path: path, Data: data, Mode: mode}})
}

// File is one file for WriteFilesAtomic.
type File struct {
	Path string
	Data []byte
	Mode os.FileMode
	// Owner, when set, is given the file before it is renamed into place
	// (a key PostgreSQL must own); giving files away needs root or CAP_CHOWN.
	Owner *Owner
}

// Owner is a numeric owner and group for File.
type Owner struct{ UID, GID int }

// WriteFilesAtomic writes a set of files that belong together (a
// certificate and its key, a whole development PKI) all or nothing: every
// temp file is written and fsynced first, and only when all are complete
// are they renamed into place, in the order given. A full disk or a
// read-only directory therefore changes none of the files, so a key can
// never end up beside a certificate it does not match. (A rename cannot
// run out of space; should one fail anyway, the error names the files
// already replaced.)
func WriteFilesAtomic(files []File) (err error) {
	temps := make([]string, 0, len(files))
	defer func() {
		if err != nil {
			for _, t := range temps {
				os.Remove(t)
			}
		}
	}()
	for _, f := range files {
		tmp, err := writeTemp(f)
		if err != nil {
			return err
		}
		temps = append(temps, tmp)
	}
	dirs := map[string]bool{}
	for i, f := range files {
		if err := os.Rename(temps[i], f.Path); err != nil {
			e := writeError(f.Path, filepath.Dir(f.Path), err).(*failure.Error)
			if i > 0 {
				done := make([]string, i)
				for j := range done {
					done[j] = files[j].Path
				}
				e.Evidence += fmt.Sprintf("; already replaced: %v", done)
			}
			temps = temps[i:]
			return e
		}
		dirs[filepath.Dir(f.Path)] = true
	}
	temps = nil
	// Make the renames durable. Some file systems cannot fsync a directory;
	// the data is already safe then, so that is not an error.
	for dir := range dirs {
		if d, derr := os.Open(dir); derr == nil {
			_ = d.Sync()
			d.Close()
		}
	}
	return nil
}

// writeTemp writes f's data to a synced temp file beside f.Path, with
// f.Mode, and returns its name; on error nothing is left behind.
func writeTemp(f File) (name string, err error) {
	dir := filepath.Dir(f.Path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(f.Path)+".tmp-*")
	if err != nil {
		return "", writeError(f.Path, dir, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(f.Data); err != nil {
		return "", writeError(f.Path, dir, err)
	}
	if err = tmp.Sync(); err != nil {
		return "", writeError(f.Path, dir, err)
	}
	if err = tmp.Chmod(f.Mode); err != nil {
		return "", writeError(f.Path, dir, err)
	}
	if f.Owner != nil {
		if err = tmp.Chown(f.Owner.UID, f.Owner.GID); err != nil {
			e := writeError(f.Path, dir, err).(*failure.Error)
			if errors.Is(err, os.ErrPermission) {
				e.Fix = fmt.Sprintf("giving files to uid %d needs root (or CAP_CHOWN): run as root, or as that user without an owner setting", f.Owner.UID)
			}
			return "", e
		}
	}
	if err = tmp.Close(); err != nil {
		return "", writeError(f.Path, dir, err)
	}
	return tmp.Name(), nil
}

func writeError(path, dir string, err error) error {
	e := failure.Wrap(failure.ConfigInvalid, err, "could not write file \"%s\"", path).
		WithEvidence("%v", err)
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		e.Fix = fmt.Sprintf("free space on the file system that holds %s (nothing was changed: the old file, if any, is intact)", dir)
	case errors.Is(err, syscall.EROFS):
		e.Fix = fmt.Sprintf("%s is on a read-only file system; choose a writable directory", dir)
	case errors.Is(err, os.ErrPermission):
		e.Fix = fmt.Sprintf("make %s writable by uid %d (e.g. chown %d %s), or choose another directory", dir, os.Getuid(), os.Getuid(), shellQuote(dir))
	case errors.Is(err, os.ErrNotExist):
		e.Fix = fmt.Sprintf("create the directory first: mkdir -p -m 0700 %s", shellQuote(dir))
	}
	return e
}
