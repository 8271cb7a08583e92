package testpki

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/youmark/pkcs8"
)

var allKeyTypes = []KeyType{ECDSAP256, ECDSAP384, RSA2048, Ed25519}

func openssl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command("openssl", args...).CombinedOutput()
	return string(out), err
}

func TestChainVerifiesInGoAndOpenSSL(t *testing.T) {
	root := NewRootCA(t, "Test Root")
	inter := root.NewIntermediate(t, "Test Intermediate")
	srv := inter.Server(t)

	if got := strings.Count(string(srv.ChainPEM), "BEGIN CERTIFICATE"); got != 2 {
		t.Fatalf("server ChainPEM has %d certificates, want leaf + intermediate", got)
	}
	if !bytes.HasPrefix(srv.ChainPEM, srv.CertPEM) {
		t.Fatal("ChainPEM does not start with the leaf")
	}
	inters := x509.NewCertPool()
	inters.AddCert(inter.Cert)
	for _, name := range []string{"localhost", "127.0.0.1", "::1"} {
		_, err := srv.Cert.Verify(x509.VerifyOptions{DNSName: name, Roots: root.Pool(), Intermediates: inters})
		if err != nil {
			t.Errorf("verify server cert for %q: %v", name, err)
		}
	}
	if _, err := srv.Cert.Verify(x509.VerifyOptions{DNSName: "other.example", Roots: root.Pool(), Intermediates: inters}); err == nil {
		t.Error("server cert verified for other.example")
	}
	// Without the intermediate the chain must not verify.
	if _, err := srv.Cert.Verify(x509.VerifyOptions{Roots: root.Pool()}); err == nil {
		t.Error("server cert verified without its intermediate")
	}
	if inter.Root() != root || root.Root() != root {
		t.Error("Root() does not return the root")
	}

	dir := t.TempDir()
	rootFile := WriteFile(t, dir, "root.crt", root.CertPEM, 0o644)
	interFile := WriteFile(t, dir, "inter.crt", inter.CertPEM, 0o644)
	leafFile := WriteFile(t, dir, "leaf.crt", srv.CertPEM, 0o644)
	if out, err := openssl(t, "verify", "-CAfile", rootFile, "-untrusted", interFile, "-verify_hostname", "localhost", leafFile); err != nil {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
	// The TLS form carries the chain too.
	if tc := srv.TLSCertificate(); len(tc.Certificate) != 2 || tc.PrivateKey == nil {
		t.Errorf("TLSCertificate has %d certs", len(tc.Certificate))
	}
}

func TestServerClientDefaultsAndOptions(t *testing.T) {
	ca := NewRootCA(t, "CA")
	srv := ca.Server(t)
	if srv.Cert.Subject.CommonName != "localhost" {
		t.Errorf("server CN = %q", srv.Cert.Subject.CommonName)
	}
	if len(srv.Cert.DNSNames) != 1 || srv.Cert.DNSNames[0] != "localhost" || len(srv.Cert.IPAddresses) != 2 {
		t.Errorf("server SANs = %v %v", srv.Cert.DNSNames, srv.Cert.IPAddresses)
	}
	if srv.Cert.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || srv.Cert.IsCA {
		t.Error("server cert is not a serverAuth leaf")
	}

	cli := ca.Client(t, "alice")
	if cli.Cert.Subject.CommonName != "alice" || len(cli.Cert.DNSNames)+len(cli.Cert.IPAddresses) != 0 {
		t.Errorf("client cert: CN %q SANs %v %v", cli.Cert.Subject.CommonName, cli.Cert.DNSNames, cli.Cert.IPAddresses)
	}
	if _, err := cli.Cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client cert does not verify for clientAuth: %v", err)
	}
	if bytes.Contains(cli.ChainPEM[len(cli.CertPEM):], []byte("CERTIFICATE")) {
		t.Error("leaf of a root CA has a chain beyond itself")
	}

	custom := ca.Server(t, WithCN("db.example"), WithDNS("db.example", "*.db.example"), WithIPs(net.ParseIP("10.0.0.1")), WithSerial(big.NewInt(4242)))
	if custom.Cert.Subject.CommonName != "db.example" || len(custom.Cert.DNSNames) != 2 ||
		!custom.Cert.IPAddresses[0].Equal(net.ParseIP("10.0.0.1")) || custom.Cert.SerialNumber.Int64() != 4242 {
		t.Errorf("options not applied: %v %v %v %v", custom.Cert.Subject, custom.Cert.DNSNames, custom.Cert.IPAddresses, custom.Cert.SerialNumber)
	}
	bare := ca.Server(t, NoSANs())
	if len(bare.Cert.DNSNames)+len(bare.Cert.IPAddresses) != 0 || bare.Cert.Subject.CommonName != "localhost" {
		t.Errorf("NoSANs: %v %v CN %q", bare.Cert.DNSNames, bare.Cert.IPAddresses, bare.Cert.Subject.CommonName)
	}
	// Random serials differ.
	if ca.Server(t).Cert.SerialNumber.Cmp(srv.Cert.SerialNumber) == 0 {
		t.Error("two certificates share a serial")
	}
}

func TestValidityOptions(t *testing.T) {
	ca := NewRootCA(t, "CA")
	now := time.Now()
	var invalid x509.CertificateInvalidError

	_, err := ca.Server(t, Expired()).Cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: "localhost"})
	if !errors.As(err, &invalid) || invalid.Reason != x509.Expired {
		t.Errorf("Expired(): verify error = %v", err)
	}
	nyv := ca.Server(t, NotYetValid())
	if !nyv.Cert.NotBefore.After(now) {
		t.Errorf("NotYetValid(): NotBefore %v is not in the future", nyv.Cert.NotBefore)
	}
	if _, err := nyv.Cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: "localhost"}); err == nil {
		t.Error("NotYetValid() certificate verified")
	}
	nb, na := now.Add(-2*time.Hour).Truncate(time.Second), now.Add(2*time.Hour).Truncate(time.Second)
	w := ca.Client(t, "bob", WithValidity(nb, na))
	if !w.Cert.NotBefore.Equal(nb) || !w.Cert.NotAfter.Equal(na) {
		t.Errorf("WithValidity: got %v..%v want %v..%v", w.Cert.NotBefore, w.Cert.NotAfter, nb, na)
	}
}

func TestKeyTypes(t *testing.T) {
	for _, kt := range allKeyTypes {
		t.Run(string(kt), func(t *testing.T) {
			ca := NewRootCA(t, "CA", WithKeyType(kt))
			srv := ca.Server(t, WithKeyType(kt))
			if _, err := srv.Cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: "localhost"}); err != nil {
				t.Fatalf("verify: %v", err)
			}
			want := map[KeyType]x509.PublicKeyAlgorithm{ECDSAP256: x509.ECDSA, ECDSAP384: x509.ECDSA, RSA2048: x509.RSA, Ed25519: x509.Ed25519}[kt]
			if srv.Cert.PublicKeyAlgorithm != want {
				t.Errorf("public key algorithm %v, want %v", srv.Cert.PublicKeyAlgorithm, want)
			}
		})
	}
}

func TestSelfSignedIsItsOwnRoot(t *testing.T) {
	ss := SelfSigned(t)
	pool := x509.NewCertPool()
	pool.AddCert(ss.Cert)
	if _, err := ss.Cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: "127.0.0.1"}); err != nil {
		t.Fatalf("Go verify: %v", err)
	}
	if ss.Issuer != nil || !bytes.Equal(ss.ChainPEM, ss.CertPEM) {
		t.Error("self-signed leaf has an issuer or a chain")
	}
	f := WriteFile(t, t.TempDir(), "ss.crt", ss.CertPEM, 0o644)
	if out, err := openssl(t, "verify", "-CAfile", f, "-verify_hostname", "localhost", f); err != nil {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
	other := SelfSigned(t)
	if _, err := other.Cert.Verify(x509.VerifyOptions{Roots: pool}); err == nil {
		t.Error("a different self-signed cert verified against the first")
	}
}

func TestCRL(t *testing.T) {
	ca := NewRootCA(t, "CA")
	good, bad := ca.Client(t, "good"), ca.Client(t, "bad")
	crlPEM := ca.CRL(t, bad.Cert)
	block, _ := pem.Decode(crlPEM)
	if block == nil || block.Type != "X509 CRL" {
		t.Fatalf("CRL is not a PEM X509 CRL: %q", crlPEM)
	}
	crl, err := x509.ParseRevocationList(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(ca.Cert); err != nil {
		t.Errorf("CRL signature: %v", err)
	}
	if len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Cmp(bad.Cert.SerialNumber) != 0 {
		t.Errorf("revoked entries: %+v", crl.RevokedCertificateEntries)
	}
	if empty := ca.CRL(t); !bytes.Contains(empty, []byte("X509 CRL")) {
		t.Error("empty CRL not produced")
	} else if b, _ := pem.Decode(empty); b != nil {
		if c, err := x509.ParseRevocationList(b.Bytes); err != nil || len(c.RevokedCertificateEntries) != 0 || c.Number.Cmp(crl.Number) <= 0 {
			t.Errorf("empty CRL: err %v, number %v (first %v)", err, c.Number, crl.Number)
		}
	}

	dir := t.TempDir()
	caFile := WriteFile(t, dir, "ca.crt", ca.CertPEM, 0o644)
	crlFile := WriteFile(t, dir, "ca.crl", crlPEM, 0o644)
	goodFile := WriteFile(t, dir, "good.crt", good.CertPEM, 0o644)
	badFile := WriteFile(t, dir, "bad.crt", bad.CertPEM, 0o644)
	if out, err := openssl(t, "verify", "-crl_check", "-CAfile", caFile, "-CRLfile", crlFile, goodFile); err != nil {
		t.Errorf("openssl: good cert rejected with CRL: %v\n%s", err, out)
	}
	out, err := openssl(t, "verify", "-crl_check", "-CAfile", caFile, "-CRLfile", crlFile, badFile)
	if err == nil || !strings.Contains(out, "revoked") {
		t.Errorf("openssl: revoked cert not reported revoked: %v\n%s", err, out)
	}

	stale := ca.CRLAt(t, time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour))
	staleFile := WriteFile(t, dir, "stale.crl", stale, 0o644)
	out, err = openssl(t, "verify", "-crl_check", "-CAfile", caFile, "-CRLfile", staleFile, goodFile)
	if err == nil || !strings.Contains(out, "CRL has expired") {
		t.Errorf("openssl: stale CRL accepted: %v\n%s", err, out)
	}
}

// TestKeyEncodingsReadableByOpenSSL checks every encoding psql (OpenSSL 3) must
// read, and that encrypted ones need the right password.
func TestKeyEncodingsReadableByOpenSSL(t *testing.T) {
	const password = "s3cret pass"
	for _, kt := range allKeyTypes {
		t.Run(string(kt), func(t *testing.T) {
			leaf := NewRootCA(t, "CA").Client(t, "alice", WithKeyType(kt))
			dir := t.TempDir()
			wantPub := pubDER(t, leaf.Key.Public())

			files := map[string][]byte{
				"pkcs8.pem": KeyPEMPKCS8(leaf.Key),
				"key.der":   KeyDER(leaf.Key),
				"enc8.pem":  EncryptedPKCS8PEM(t, leaf.Key, password),
			}
			if kt != Ed25519 {
				files["legacy.pem"] = KeyPEMLegacy(leaf.Key)
				files["enclegacy.pem"] = EncryptedLegacyPEM(t, leaf.Key, password)
			}
			if !bytes.Equal(files["pkcs8.pem"], leaf.KeyPEM) {
				t.Error("Leaf.KeyPEM is not the PKCS#8 PEM of its key")
			}
			for name, data := range files {
				path := WriteFile(t, dir, name, data, 0o600)
				args := []string{"pkey", "-in", path, "-passin", "pass:" + password, "-pubout", "-outform", "DER"}
				if strings.HasSuffix(name, ".der") {
					args = append(args, "-inform", "DER")
				}
				cmd := exec.Command("openssl", args...)
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				out, err := cmd.Output()
				if err != nil {
					t.Errorf("%s: openssl pkey: %v\n%s", name, err, stderr.String())
					continue
				}
				if !bytes.Equal(out, wantPub) {
					t.Errorf("%s: openssl read a different key", name)
				}
				if strings.HasPrefix(name, "enc") {
					if out, err := openssl(t, "pkey", "-in", path, "-passin", "pass:wrong", "-noout"); err == nil {
						t.Errorf("%s: openssl read it with the wrong password:\n%s", name, out)
					}
				}
			}

			block, _ := pem.Decode(files["enc8.pem"])
			if block.Type != "ENCRYPTED PRIVATE KEY" {
				t.Errorf("encrypted PKCS#8 PEM type %q", block.Type)
			}
			if _, err := pkcs8.ParsePKCS8PrivateKey(block.Bytes, []byte(password)); err != nil {
				t.Errorf("pkcs8 cannot decrypt its own output: %v", err)
			}
			if kt != Ed25519 {
				lb, _ := pem.Decode(files["enclegacy.pem"])
				if lb.Headers["Proc-Type"] != "4,ENCRYPTED" || !strings.HasPrefix(lb.Headers["DEK-Info"], "AES-256-CBC,") {
					t.Errorf("legacy encrypted headers: %v", lb.Headers)
				}
				wantType := map[KeyType]string{ECDSAP256: "EC PRIVATE KEY", ECDSAP384: "EC PRIVATE KEY", RSA2048: "RSA PRIVATE KEY"}[kt]
				if lb.Type != wantType {
					t.Errorf("legacy type %q, want %q", lb.Type, wantType)
				}
			}
		})
	}
}

func TestKeyPEMLegacyEd25519Panics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("KeyPEMLegacy(ed25519) did not panic")
		}
	}()
	KeyPEMLegacy(SelfSigned(t, WithKeyType(Ed25519)).Key)
}

func TestWriteFileMode(t *testing.T) {
	dir := t.TempDir()
	for _, mode := range []os.FileMode{0o600, 0o640, 0o644, 0o666} {
		p := WriteFile(t, dir, mode.String(), []byte("x"), mode)
		if p != filepath.Join(dir, mode.String()) {
			t.Errorf("path %q", p)
		}
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("mode %v, want %v", fi.Mode().Perm(), mode)
		}
	}
}

func pubDER(t *testing.T, pub any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return der
}
