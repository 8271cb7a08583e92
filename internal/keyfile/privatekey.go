package keyfile

import (
	"crypto"
	"crypto/ecdh"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"

	"github.com/youmark/pkcs8"

	"github.com/pgtrust/pgtrust/failure"
)

// LoadPrivateKey applies libpq's permission rule to path, reads it and
// decodes the key. A missing file is failure.KeyMissing wrapping the
// *fs.PathError; callers that know a certificate was loaded may reword it.
func LoadPrivateKey(path, password string) (crypto.Signer, error) {
	if err := CheckPermissions(path); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, keyMissing(path, err)
		}
		return nil, failure.Wrap(failure.ConfigInvalid, err,
			"could not load private key file \"%s\": %s", path, reason(err)).
			WithEvidence("%v", err).
			WithFix("make %s readable by uid %d", path, os.Getuid())
	}
	return ParsePrivateKey(data, password, path)
}

func keyMissing(path string, err error) *failure.Error {
	return failure.Wrap(failure.KeyMissing, err,
		"certificate present, but not private key file \"%s\"", path).
		WithEvidence("%v", err).
		WithFix("put the private key at %s, or set sslkey to the key's path", path)
}

// PEM block types that OpenSSL's PEM_read_bio_PrivateKey accepts as keys.
const (
	pemPKCS8          = "PRIVATE KEY"
	pemPKCS8Encrypted = "ENCRYPTED PRIVATE KEY"
	pemPKCS1          = "RSA PRIVATE KEY"
	pemSEC1           = "EC PRIVATE KEY"
)

// ParsePrivateKey decodes a private key from PEM or DER: PKCS#8, PKCS#1,
// SEC1, encrypted PKCS#8 (PBES2) or legacy encrypted PEM (Proc-Type and
// DEK-Info headers). RSA, ECDSA and Ed25519 keys are supported. Like OpenSSL,
// PEM blocks that are not keys (a certificate in a combined file, EC
// PARAMETERS) are skipped. path is used only in messages.
func ParsePrivateKey(data []byte, password, path string) (crypto.Signer, error) {
	rest := data
	sawPEM := false
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		sawPEM = true
		switch block.Type {
		case pemPKCS8, pemPKCS1, pemSEC1:
			der := block.Bytes
			// Legacy encrypted PEM is deprecated in Go but still what
			// `openssl rsa -aes256 -traditional` writes, and libpq reads it.
			if x509.IsEncryptedPEMBlock(block) {
				if password == "" {
					return nil, needPassphrase(path, "legacy encrypted PEM ("+block.Headers["DEK-Info"]+")")
				}
				plain, err := x509.DecryptPEMBlock(block, []byte(password))
				if err != nil {
					return nil, badDecrypt(path, "legacy encrypted PEM", err)
				}
				key, err := parsePlainDER(plain, block.Type)
				if err != nil {
					// A wrong passphrase can pass the padding check and then
					// decrypt to garbage.
					return nil, badDecrypt(path, "legacy encrypted PEM", err)
				}
				return key, nil
			}
			key, err := parsePlainDER(der, block.Type)
			if err != nil {
				return nil, unreadable(path, fmt.Sprintf("PEM block %q could not be parsed: %v", block.Type, err))
			}
			return key, nil
		case pemPKCS8Encrypted:
			return parseEncryptedPKCS8(block.Bytes, password, path)
		}
	}
	if sawPEM {
		what := describe(data)
		return nil, unreadable(path, what+" where a private key was expected")
	}
	if looksLikeDER(data) {
		if key, err := parsePlainDER(data, ""); err == nil {
			return key, nil
		} else if errors.Is(err, errUnsupportedKey) {
			return nil, unreadable(path, err.Error())
		}
		if isEncryptedPKCS8(data) {
			// libpq reads a DER key with d2i_PrivateKey, which has no
			// passphrase callback: OpenSSL answers "unsupported". Decrypting
			// it here would connect where libpq refuses.
			return nil, failure.New(failure.ConfigInvalid,
				"could not load private key file \"%s\": unsupported", path).
				WithEvidence("%s is an encrypted PKCS#8 key in DER form; libpq decrypts only PEM keys (ENCRYPTED PRIVATE KEY)", path).
				WithFix("convert it to PEM, keeping it encrypted: openssl pkey -inform DER -in %s -aes-256-cbc -out %s.pem (then chmod 0600 it and point sslkey at it)", shellQuote(path), shellQuote(path))
		}
		if _, err := x509.ParseCertificate(data); err == nil {
			return nil, unreadable(path, "a DER certificate where a private key was expected")
		}
	}
	return nil, unreadable(path, "no PEM block; "+describe(data))
}

var errUnsupportedKey = errors.New("unsupported key type")

// parsePlainDER decodes an unencrypted key. pemType narrows the encoding;
// "" tries PKCS#8, PKCS#1 and SEC1 in turn, as OpenSSL does for DER.
func parsePlainDER(der []byte, pemType string) (crypto.Signer, error) {
	var key any
	var err error
	switch pemType {
	case pemPKCS8:
		key, err = x509.ParsePKCS8PrivateKey(der)
	case pemPKCS1:
		key, err = x509.ParsePKCS1PrivateKey(der)
	case pemSEC1:
		key, err = x509.ParseECPrivateKey(der)
	default:
		if key, err = x509.ParsePKCS8PrivateKey(der); err != nil {
			if k1, err1 := x509.ParsePKCS1PrivateKey(der); err1 == nil {
				key, err = k1, nil
			} else if k2, err2 := x509.ParseECPrivateKey(der); err2 == nil {
				key, err = k2, nil
			}
		}
	}
	if err != nil {
		return nil, err
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w %s (only RSA, ECDSA and Ed25519 keys can sign)", errUnsupportedKey, keyTypeName(key))
	}
	return signer, nil
}

func keyTypeName(key any) string {
	if k, ok := key.(*ecdh.PrivateKey); ok {
		return fmt.Sprintf("ECDH %v", k.Curve())
	}
	return fmt.Sprintf("%T", key)
}

// encryptedPrivateKeyInfo is RFC 5208's EncryptedPrivateKeyInfo.
type encryptedPrivateKeyInfo struct {
	Algorithm     pkix.AlgorithmIdentifier
	EncryptedData []byte
}

var (
	oidPBES2  = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 13}
	oidPBKDF2 = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 12}
	oidScrypt = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 11591, 4, 11}
)

// Bounds on the work an encrypted key may ask for. OpenSSL refuses scrypt
// parameters needing more than 32 MiB (SCRYPT_MAX_MEM), so libpq does too;
// PBKDF2 has no bound there, but a million iterations is already about a
// second of CPU per load (OpenSSL writes 2048, pgtrust 100,000; 600,000 is
// today's strongest common advice), and a file could ask for 2^31.
const (
	maxPBKDF2Iterations = 1_000_000
	maxScryptMemory     = 32 << 20
)

// checkKDFCost reads the PBES2 key-derivation parameters and refuses a
// PBKDF2 iteration count or scrypt memory above the bounds, before any
// work is done. Parameters it cannot read are refused too: the decrypting
// library parses more leniently, and a count hidden from this check (say an
// INTEGER that swallows the bytes after it) would be honoured there.
func checkKDFCost(pbes2Params []byte) error {
	var params struct {
		KDF    pkix.AlgorithmIdentifier
		Scheme asn1.RawValue
	}
	if _, err := asn1.Unmarshal(pbes2Params, &params); err != nil {
		return fmt.Errorf("%w: PBES2 parameters: %v", errKDFUnreadable, err)
	}
	switch {
	case params.KDF.Algorithm.Equal(oidPBKDF2):
		// PBKDF2-params: SEQUENCE { salt, iterationCount INTEGER, ... }.
		var seq asn1.RawValue
		var salt asn1.RawValue
		var iter *big.Int
		if _, err := asn1.Unmarshal(params.KDF.Parameters.FullBytes, &seq); err != nil || seq.Tag != asn1.TagSequence {
			return fmt.Errorf("%w: PBKDF2 parameters are not a SEQUENCE", errKDFUnreadable)
		}
		rest, err := asn1.Unmarshal(seq.Bytes, &salt)
		if err == nil {
			_, err = asn1.Unmarshal(rest, &iter)
		}
		if err != nil || iter == nil {
			return fmt.Errorf("%w: PBKDF2 iteration count", errKDFUnreadable)
		}
		if iter.Cmp(big.NewInt(maxPBKDF2Iterations)) > 0 {
			return fmt.Errorf("PBKDF2 with %s iterations (at most %d)", iter, maxPBKDF2Iterations)
		}
	case params.KDF.Algorithm.Equal(oidScrypt):
		var p struct {
			Salt     []byte
			N, R, P  *big.Int
			Optional asn1.RawValue `asn1:"optional"`
		}
		if _, err := asn1.Unmarshal(params.KDF.Parameters.FullBytes, &p); err != nil || p.N == nil || p.R == nil || p.P == nil {
			return fmt.Errorf("%w: scrypt parameters", errKDFUnreadable)
		}
		// OpenSSL's bound: 128·r·p for B plus 128·r·(N+2) for V.
		mem := new(big.Int).Mul(big.NewInt(128), p.R)
		mem.Mul(mem, new(big.Int).Add(p.P, new(big.Int).Add(p.N, big.NewInt(2))))
		if mem.Cmp(big.NewInt(maxScryptMemory)) > 0 || p.N.Sign() <= 0 || p.R.Sign() <= 0 || p.P.Sign() <= 0 {
			return fmt.Errorf("scrypt with N=%s, r=%s, p=%s (needs more than the 32 MiB OpenSSL allows)", p.N, p.R, p.P)
		}
	}
	return nil
}

// errKDFUnreadable marks key-derivation parameters checkKDFCost cannot read.
var errKDFUnreadable = errors.New("unreadable key-derivation parameters")

func isEncryptedPKCS8(der []byte) bool {
	var info encryptedPrivateKeyInfo
	rest, err := asn1.Unmarshal(der, &info)
	return err == nil && len(rest) == 0 && len(info.EncryptedData) > 0
}

func parseEncryptedPKCS8(der []byte, password, path string) (crypto.Signer, error) {
	var info encryptedPrivateKeyInfo
	if _, err := asn1.Unmarshal(der, &info); err != nil {
		return nil, unreadable(path, "an ENCRYPTED PRIVATE KEY whose structure could not be parsed: "+err.Error())
	}
	if !info.Algorithm.Algorithm.Equal(oidPBES2) {
		return nil, failure.New(failure.KeyDecryptFailed,
			"could not load private key file \"%s\": unsupported encryption algorithm", path).
			WithEvidence("encrypted PKCS#8 with algorithm %v; only PBES2 (PKCS#5 v2.0) is supported", info.Algorithm.Algorithm).
			WithFix("re-encrypt the key with PBES2: openssl pkcs8 -topk8 -v2 aes-256-cbc -in %s -out %s.new", shellQuote(path), shellQuote(path))
	}
	if password == "" {
		return nil, needPassphrase(path, "encrypted PKCS#8 (ENCRYPTED PRIVATE KEY)")
	}
	if err := checkKDFCost(info.Algorithm.Parameters.FullBytes); errors.Is(err, errKDFUnreadable) {
		return nil, unreadable(path, "an ENCRYPTED PRIVATE KEY whose "+err.Error())
	} else if err != nil {
		return nil, failure.Wrap(failure.KeyDecryptFailed, err,
			"could not load private key file \"%s\": key derivation too expensive", path).
			WithEvidence("%s is encrypted with %v; pgtrust refuses to spend that much to open a key (a hostile or corrupted file could stall every reload)", path, err).
			WithFix("re-encrypt the key with ordinary settings: openssl pkcs8 -topk8 -v2 aes-256-cbc -in %s -out %s.new (then chmod 0600 it)", shellQuote(path), shellQuote(path))
	}
	key, err := decryptPKCS8(der, password)
	if err != nil {
		return nil, badDecrypt(path, "encrypted PKCS#8", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, unreadable(path, fmt.Sprintf("unsupported key type %s (only RSA, ECDSA and Ed25519 keys can sign)", keyTypeName(key)))
	}
	return signer, nil
}

// decryptPKCS8 runs the PBES2 decryption. The library hands malformed
// ciphertext (wrong IV length, not whole blocks) straight to crypto/cipher,
// which panics; a corrupted file must be an error, not a crash.
func decryptPKCS8(der []byte, password string) (key any, err error) {
	defer func() {
		if r := recover(); r != nil {
			key, err = nil, errors.New("malformed encrypted key")
		}
	}()
	return pkcs8.ParsePKCS8PrivateKey(der, []byte(password))
}

func needPassphrase(path, format string) *failure.Error {
	return failure.New(failure.KeyDecryptFailed,
		"could not load private key file \"%s\": the key is encrypted and no passphrase was given", path).
		WithEvidence("%s is %s", path, format).
		WithFix("set sslpassword to the key's passphrase, or decrypt the key: openssl pkey -in %s -out %s.plain (then chmod 0600 it)",
			shellQuote(path), shellQuote(path))
}

// badDecrypt reports a wrong passphrase in OpenSSL's words. cause is kept
// out of Err's text on purpose: only the class and a generic reason matter,
// and decryption errors can say nothing useful about the password anyway.
func badDecrypt(path, format string, cause error) *failure.Error {
	return failure.New(failure.KeyDecryptFailed,
		"could not load private key file \"%s\": bad decrypt", path).
		WithEvidence("%s is %s; decryption with the given passphrase failed (%v)", path, format, cause).
		WithFix("check sslpassword; test the passphrase with: openssl pkey -in %s -noout", shellQuote(path))
}

func unreadable(path, evidence string) *failure.Error {
	return failure.New(failure.ConfigInvalid,
		"could not load private key file \"%s\": no private key found", path).
		WithEvidence("%s", evidence).
		WithFix("point sslkey at the PEM or DER private key that belongs to the certificate; check it with: openssl pkey -in %s -noout", shellQuote(path))
}
