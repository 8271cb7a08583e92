// Package keyfile reads and writes certificate and private-key files with
// libpq's rules: PEM or DER, every key encoding OpenSSL accepts in practice
// (PKCS#8, PKCS#1, SEC1, encrypted PKCS#8, legacy encrypted PEM), libpq's
// private-key permission rule, and libpq's wording in every error.
//
// Errors are *failure.Error values. Passwords and key bytes never appear in
// them.
package keyfile

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/pgtrust/pgtrust/failure"
)

// LoadCertificates reads one or more certificates from path: PEM with any
// number of CERTIFICATE blocks (leaf first, as SSL_CTX_use_certificate_chain_file
// expects) or a single DER certificate. Other PEM blocks are skipped, as
// OpenSSL does.
//
// A missing file yields an error wrapping the *fs.PathError, so callers can
// apply libpq's "no client certificate is fine" rule with
// errors.Is(err, fs.ErrNotExist).
func LoadCertificates(path string) ([]*x509.Certificate, error) {
	data, err := ReadCertificateFile(path)
	if err != nil {
		return nil, err
	}
	return ParseCertificateFile(path, data)
}

// ReadCertificateFile reads path's bytes, with LoadCertificates's error
// when it cannot (wrapping the *fs.PathError).
func ReadCertificateFile(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, failure.Wrap(failure.ConfigInvalid, err,
			"could not open certificate file \"%s\": %s", path, reason(err)).
			WithEvidence("%v", err).
			WithFix("check the path %s and that it is readable by uid %d", path, os.Getuid())
	}
	return data, nil
}

// ParseCertificateFile parses data, read from path, as LoadCertificates
// does, with its error naming path.
func ParseCertificateFile(path string, data []byte) ([]*x509.Certificate, error) {
	certs, err := ParseCertificates(data)
	if err != nil {
		e := failure.Wrap(failure.ConfigInvalid, err, "could not read certificate file \"%s\": %s", path, err)
		e.Evidence = describeForCertificate(data)
		e.Fix = fmt.Sprintf("point the setting at a PEM or DER certificate file; check it with: openssl x509 -in %s -noout -subject", shellQuote(path))
		return nil, e
	}
	return certs, nil
}

// errNoCertificate is the reason when a file holds no certificate; it is
// OpenSSL's wording for a PEM file without a usable block.
var errNoCertificate = errors.New("no start line")

// IsNoCertificate reports whether ParseCertificates found no certificate at
// all (as opposed to a certificate that does not parse).
func IsNoCertificate(err error) bool { return errors.Is(err, errNoCertificate) }

// ParseCertificates decodes PEM (all CERTIFICATE blocks, in order) or a
// single DER certificate.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	sawPEM := false
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		sawPEM = true
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, &malformedCertificate{n: len(certs) + 1, cause: err}
		}
		certs = append(certs, c)
	}
	if len(certs) > 0 {
		return certs, nil
	}
	if !sawPEM && looksLikeDER(data) {
		c, err := x509.ParseCertificate(data)
		if err != nil {
			return nil, &malformedCertificate{n: 1, cause: err}
		}
		return []*x509.Certificate{c}, nil
	}
	return nil, errNoCertificate
}

// malformedCertificate says which certificate of a file did not parse, in
// pgtrust's words: crypto/x509's text ("x509: malformed …") is kept as the
// wrapped cause, not shown.
type malformedCertificate struct {
	n     int
	cause error
}

func (e *malformedCertificate) Error() string {
	return fmt.Sprintf("certificate %d is malformed (%s)", e.n, strings.TrimPrefix(e.cause.Error(), "x509: "))
}

func (e *malformedCertificate) Unwrap() error { return e.cause }

// KeyMatches reports whether key is the private key for cert's public key.
func KeyMatches(cert *x509.Certificate, key crypto.Signer) bool {
	if cert == nil || key == nil {
		return false
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(cert.PublicKey)
}

// LoadKeyPair loads a certificate chain and its private key the libpq way
// and returns them as a tls.Certificate with Leaf set.
func LoadKeyPair(certPath, keyPath, password string) (tls.Certificate, error) {
	chain, err := LoadCertificates(certPath)
	if err != nil {
		return tls.Certificate{}, err
	}
	key, err := LoadPrivateKey(keyPath, password)
	if err != nil {
		return tls.Certificate{}, err
	}
	leaf := chain[0]
	if !KeyMatches(leaf, key) {
		return tls.Certificate{}, failure.New(failure.KeyMismatch,
			"certificate does not match private key file \"%s\": key values mismatch", keyPath).
			WithEvidence("certificate %s (subject %q) has public key %s; the key in %s has public key %s",
				certPath, leaf.Subject.String(), PublicKeyFingerprint(leaf.PublicKey), keyPath, PublicKeyFingerprint(key.Public())).
			WithFix("use the key the certificate was issued for (compare: openssl x509 -in %s -noout -pubkey | openssl sha256  and  openssl pkey -in %s -pubout | openssl sha256), or issue a new certificate for this key",
				shellQuote(certPath), shellQuote(keyPath))
	}
	out := tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, c := range chain {
		out.Certificate = append(out.Certificate, c.Raw)
	}
	return out, nil
}

// PublicKeyFingerprint returns "sha256:HEX" of the public key's DER
// SubjectPublicKeyInfo, the value `openssl pkey -pubout -outform DER | openssl sha256` prints.
func PublicKeyFingerprint(pub any) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return fmt.Sprintf("(unsupported public key %T)", pub)
	}
	sum := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// reason renders an OS error the way libpq's %m does: just the errno text.
// Reason is the operating system's reason in err without the path (an
// *fs.PathError's own error), for messages that name the path themselves.
func Reason(err error) string { return reason(err) }

func reason(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// looksLikeDER reports whether data starts like a DER SEQUENCE.
func looksLikeDER(data []byte) bool {
	return len(data) > 1 && data[0] == 0x30
}

// describe says what a file holds without quoting any of its bytes: key
// material must never reach an error message.
func describe(data []byte) string {
	trimmed := bytes.TrimSpace(data)
	switch {
	case len(data) == 0:
		return "the file is empty"
	case len(trimmed) == 0:
		return "the file holds only white space"
	case bytes.Contains(data, []byte("-----BEGIN")):
		var types []string
		rest := data
		for {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			types = append(types, fmt.Sprintf("%q", b.Type))
		}
		if len(types) == 0 {
			return "a -----BEGIN line, but no PEM block could be decoded (truncated or corrupted base64?)"
		}
		return "PEM block types " + strings.Join(types, ", ")
	case looksLikeDER(data):
		if _, err := x509.ParseCertificate(data); err == nil {
			return "a DER certificate"
		}
		return fmt.Sprintf("binary data starting like DER (ASN.1 SEQUENCE, %d bytes) that is neither a certificate nor a known private-key encoding", len(data))
	case isText(trimmed):
		return fmt.Sprintf("%d bytes of text without a -----BEGIN line (not PEM)", len(data))
	default:
		return fmt.Sprintf("%d bytes of binary data that is not DER (first byte 0x%02x, DER starts with 0x30)", len(data), data[0])
	}
}

func describeForCertificate(data []byte) string {
	d := describe(data)
	if bytes.Contains(data, []byte("PRIVATE KEY-----")) && !bytes.Contains(data, []byte("CERTIFICATE-----")) {
		return d + " where a certificate was expected (is this the key file?)"
	}
	return d
}

func isText(b []byte) bool {
	for _, c := range b {
		if c < 0x20 && c != '\n' && c != '\r' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// shellQuote quotes s for a POSIX shell when it needs it, so that fix
// commands can be pasted as they are.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./,:=+@%", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// ShellQuote is shellQuote for other packages that print fix commands.
func ShellQuote(s string) string { return shellQuote(s) }
