package testpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"testing"

	"github.com/youmark/pkcs8"
)

// KeyPEMPKCS8 encodes key as an unencrypted PKCS#8 "PRIVATE KEY" PEM block.
func KeyPEMPKCS8(key crypto.Signer) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: KeyDER(key)})
}

// KeyDER encodes key as unencrypted PKCS#8 DER (libpq reads DER key files too).
func KeyDER(key crypto.Signer) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		// Only unsupported key types fail, and testpki makes none.
		panic(fmt.Sprintf("testpki: marshal PKCS#8: %v", err))
	}
	return der
}

// KeyPEMLegacy encodes key in its algorithm-specific form: "RSA PRIVATE KEY"
// (PKCS#1) or "EC PRIVATE KEY" (SEC 1). Ed25519 has no such form and panics.
func KeyPEMLegacy(key crypto.Signer) []byte {
	typ, der, err := legacyDER(key)
	if err != nil {
		panic("testpki: " + err.Error())
	}
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func legacyDER(key crypto.Signer) (typ string, der []byte, err error) {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		return "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(k), nil
	case *ecdsa.PrivateKey:
		der, err := x509.MarshalECPrivateKey(k)
		return "EC PRIVATE KEY", der, err
	default:
		return "", nil, fmt.Errorf("no legacy PEM encoding for %T keys", key)
	}
}

// EncryptedPKCS8PEM encodes key as an "ENCRYPTED PRIVATE KEY" (PKCS#8, PBES2
// with PBKDF2-HMAC-SHA256 and AES-256-CBC: OpenSSL 3's own default, so psql
// reads it).
func EncryptedPKCS8PEM(t testing.TB, key crypto.Signer, password string) []byte {
	t.Helper()
	der, err := pkcs8.MarshalPrivateKey(key, []byte(password), &pkcs8.Opts{
		Cipher: pkcs8.AES256CBC,
		KDFOpts: pkcs8.PBKDF2Opts{
			SaltSize:       16,
			IterationCount: 2048,
			HMACHash:       crypto.SHA256,
		},
	})
	if err != nil {
		t.Fatalf("testpki: encrypt PKCS#8 key: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: der})
}

// EncryptedLegacyPEM encodes key as a legacy OpenSSL encrypted PEM block
// ("Proc-Type: 4,ENCRYPTED", "DEK-Info: AES-256-CBC,...") of its
// algorithm-specific form. Ed25519 has no such form and fails the test.
func EncryptedLegacyPEM(t testing.TB, key crypto.Signer, password string) []byte {
	t.Helper()
	typ, der, err := legacyDER(key)
	if err != nil {
		t.Fatalf("testpki: %v", err)
	}
	//lint:ignore SA1019 legacy PEM encryption is insecure by design; tests need it because libpq accepts it.
	block, err := x509.EncryptPEMBlock(rand.Reader, typ, der, []byte(password), x509.PEMCipherAES256) //nolint:staticcheck
	if err != nil {
		t.Fatalf("testpki: encrypt legacy PEM key: %v", err)
	}
	return pem.EncodeToMemory(block)
}
