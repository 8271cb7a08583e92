package keyfile

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/failure"
)

// The seed corpora (testdata/fuzz/FuzzParsePrivateKey, FuzzLoadCertificates)
// hold real keys and certificates in every encoding the package reads:
// PKCS#8, PKCS#1, SEC1, DER, encrypted PKCS#8 (PBKDF2 and scrypt, low cost
// so that an execution stays fast), legacy encrypted PEM, certificate
// chains, combined files, and damaged variants of each.

// FuzzParsePrivateKey: no panic; an error is a classified failure.Error
// with a fix that never shows the password; a returned key signs what its
// public key verifies and survives EncodePrivateKeyPEM and a second parse
// unchanged.
func FuzzParsePrivateKey(f *testing.F) {
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), "")
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00}, "pw")
	const path = "/fuzz/client.key"
	f.Fuzz(func(t *testing.T, data []byte, password string) {
		key, err := ParsePrivateKey(data, password, path)
		if err != nil {
			if key != nil {
				t.Fatalf("a key and an error: %v", err)
			}
			fe, ok := failure.As(err)
			if !ok || fe.Class == "" || fe.Class == failure.OK || fe.Fix == "" {
				t.Fatalf("unclassified error: %#v", err)
			}
			// The password may appear only if the file itself shows it, or
			// if it is part of pgtrust's fixed wording (a password "ssword"
			// is in "incorrect password"): the same file with another
			// password of the same length then shows it too.
			if len(password) >= 4 && !bytes.Contains(data, []byte(password)) && !strings.Contains(path, password) {
				var fixed string
				if _, rerr := ParsePrivateKey(data, strings.Repeat("\x01", len(password)), path); rerr != nil {
					if rf, ok := failure.As(rerr); ok {
						fixed = rf.Error() + rf.Evidence + rf.Fix + rf.Detail()
					}
				}
				for _, s := range []string{fe.Error(), fe.Evidence, fe.Fix, fe.Detail()} {
					if strings.Contains(s, password) && !strings.Contains(fixed, password) {
						t.Fatalf("error shows the password %q: %q", password, s)
					}
				}
			}
			return
		}
		if key == nil {
			t.Fatal("no key and no error")
		}
		checkSigns(t, key)
		enc, err := EncodePrivateKeyPEM(key)
		if err != nil {
			t.Fatalf("a parsed %T does not encode: %v", key, err)
		}
		back, err := ParsePrivateKey(enc, "", path)
		if err != nil {
			t.Fatalf("re-encoded %T does not parse: %v", key, err)
		}
		eq, ok := key.(interface{ Equal(crypto.PrivateKey) bool })
		if !ok || !eq.Equal(back) {
			t.Fatalf("round trip changed the %T key", key)
		}
	})
}

// checkSigns signs a digest with key and verifies it with key.Public().
func checkSigns(t *testing.T, key crypto.Signer) {
	t.Helper()
	digest := sha256.Sum256([]byte("pgtrust fuzz"))
	switch k := key.(type) {
	case *rsa.PrivateKey:
		sig, err := rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, digest[:])
		if err != nil {
			// Keys too small for a SHA-256 PKCS#1 v1.5 signature are valid
			// keys; they fail here and in TLS alike.
			if k.Size() < 62 {
				return
			}
			t.Fatalf("RSA sign: %v", err)
		}
		if err := rsa.VerifyPKCS1v15(&k.PublicKey, crypto.SHA256, digest[:], sig); err != nil {
			t.Fatalf("RSA key signs what its public key does not verify: %v", err)
		}
	case *ecdsa.PrivateKey:
		sig, err := ecdsa.SignASN1(rand.Reader, k, digest[:])
		if err != nil {
			t.Fatalf("ECDSA sign: %v", err)
		}
		if !ecdsa.VerifyASN1(&k.PublicKey, digest[:], sig) {
			t.Fatal("ECDSA key signs what its public key does not verify")
		}
	case ed25519.PrivateKey:
		sig := ed25519.Sign(k, digest[:])
		if !ed25519.Verify(k.Public().(ed25519.PublicKey), digest[:], sig) {
			t.Fatal("Ed25519 key signs what its public key does not verify")
		}
	default:
		t.Fatalf("unexpected key type %T", key)
	}
}

// FuzzLoadCertificates: no panic; an error is a classified failure.Error
// with a fix; every certificate returned re-parses from its DER to an equal
// certificate, and the PEM re-encoding of the chain loads to the same chain.
func FuzzLoadCertificates(f *testing.F) {
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Add([]byte{0x30, 0x82, 0x01, 0x00})
	path := filepath.Join(f.TempDir(), "cert.pem")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		chain, err := LoadCertificates(path)
		if err != nil {
			if chain != nil {
				t.Fatalf("certificates and an error: %v", err)
			}
			fe, ok := failure.As(err)
			if !ok || fe.Class == "" || fe.Class == failure.OK || fe.Fix == "" {
				t.Fatalf("unclassified error: %#v", err)
			}
			return
		}
		if len(chain) == 0 {
			t.Fatal("no certificate and no error")
		}
		var pemChain []byte
		for i, c := range chain {
			again, err := x509.ParseCertificate(c.Raw)
			if err != nil || !again.Equal(c) {
				t.Fatalf("certificate %d does not re-parse from its DER: %v", i+1, err)
			}
			pemChain = append(pemChain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
		back, err := ParseCertificates(pemChain)
		if err != nil || len(back) != len(chain) {
			t.Fatalf("PEM re-encoding loads to %d certificates (%v), want %d", len(back), err, len(chain))
		}
		for i := range back {
			if !back[i].Equal(chain[i]) {
				t.Fatalf("certificate %d changed in the PEM round trip", i+1)
			}
		}
	})
}
