package chain_test

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/chain"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

func openssl(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("openssl", args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestVersion1CRLFromOpenSSL reads the CRL that `openssl ca -gencrl` writes
// without -crlexts (version 1, which crypto/x509 refuses), verifies its
// signature with the issuer's key and finds the revoked serial.
func TestVersion1CRLFromOpenSSL(t *testing.T) {
	dir := t.TempDir()
	openssl(t, dir, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=Legacy CA", "-days", "10")
	openssl(t, dir, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=localhost")
	openssl(t, dir, "x509", "-req", "-in", "leaf.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-out", "leaf.crt", "-days", "5", "-set_serial", "4660")
	if err := os.WriteFile(filepath.Join(dir, "index.txt"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	conf := "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\ndefault_md = sha256\ndefault_crl_days = 30\n"
	if err := os.WriteFile(filepath.Join(dir, "ca.cnf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	openssl(t, dir, "ca", "-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.crt", "-revoke", "leaf.crt")
	openssl(t, dir, "ca", "-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.crt", "-gencrl", "-out", "crl.pem")
	if text := openssl(t, dir, "crl", "-in", "crl.pem", "-noout", "-text"); !strings.Contains(text, "Version 1 (0x0)") {
		t.Fatalf("openssl did not write a version 1 CRL:\n%s", text)
	}
	data, err := os.ReadFile(filepath.Join(dir, "crl.pem"))
	if err != nil {
		t.Fatal(err)
	}
	crls, err := chain.ParseCRLs(data)
	if err != nil {
		t.Fatalf("ParseCRLs(version 1): %v", err)
	}
	caCert := readCert(t, filepath.Join(dir, "ca.crt"))
	crl := crls[0]
	if err := crl.CheckSignatureFrom(caCert); err != nil {
		t.Fatalf("signature of the version 1 CRL: %v", err)
	}
	if !bytes.Equal(crl.RawIssuer, caCert.RawSubject) || crl.Issuer.CommonName != "Legacy CA" {
		t.Errorf("issuer = %v", crl.Issuer)
	}
	if len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Cmp(big.NewInt(4660)) != 0 {
		t.Errorf("revoked entries = %+v, want serial 0x1234", crl.RevokedCertificateEntries)
	}
	if crl.NextUpdate.Sub(crl.ThisUpdate) != 30*24*time.Hour {
		t.Errorf("thisUpdate %v nextUpdate %v", crl.ThisUpdate, crl.NextUpdate)
	}
	leaf := readCert(t, filepath.Join(dir, "leaf.crt"))
	err = chain.CheckRevocation([]*x509.Certificate{leaf, caCert}, crls, time.Now(), "server")
	if failure.ClassOf(err) != failure.CertRevoked {
		t.Errorf("CheckRevocation = %v, want cert_revoked", err)
	}

	// A flipped signature byte must not verify.
	block, _ := pem.Decode(data)
	bad := append([]byte(nil), block.Bytes...)
	bad[len(bad)-3] ^= 0x01
	tampered, err := chain.ParseCRL(bad)
	if err == nil && tampered.CheckSignatureFrom(caCert) == nil {
		t.Fatal("a tampered version 1 CRL verified")
	}
	// Nor may a CRL signed by another CA with the same name.
	other := testpki.NewRootCA(t, "Legacy CA")
	if crl.CheckSignatureFrom(other.Cert) == nil {
		t.Fatal("the CRL verified with a different key of the same name")
	}
}

func TestVersion1CRLFromTestPKI(t *testing.T) {
	for _, kt := range []testpki.KeyType{testpki.ECDSAP256, testpki.RSA2048, testpki.Ed25519} {
		ca := testpki.NewRootCA(t, "v1 "+string(kt), testpki.WithKeyType(kt))
		leaf := ca.Server(t)
		pemCRL := ca.CRLv1(t, leaf.Cert)
		// OpenSSL must read it as version 1 and verify its signature.
		dir := t.TempDir()
		_ = os.WriteFile(filepath.Join(dir, "crl.pem"), pemCRL, 0o644)
		_ = os.WriteFile(filepath.Join(dir, "ca.pem"), ca.CertPEM, 0o644)
		text := openssl(t, dir, "crl", "-in", "crl.pem", "-CAfile", "ca.pem", "-noout", "-text")
		if !strings.Contains(text, "Version 1 (0x0)") {
			t.Fatalf("%s: not version 1:\n%s", kt, text)
		}
		crls, err := chain.ParseCRLs(pemCRL)
		if err != nil {
			t.Fatalf("%s: %v", kt, err)
		}
		if err := crls[0].CheckSignatureFrom(ca.Cert); err != nil {
			t.Fatalf("%s: signature: %v", kt, err)
		}
		if err := chain.CheckRevocation([]*x509.Certificate{leaf.Cert, ca.Cert}, crls, time.Now(), "server"); failure.ClassOf(err) != failure.CertRevoked {
			t.Errorf("%s: CheckRevocation = %v, want cert_revoked", kt, err)
		}
		clean, _ := chain.ParseCRLs(ca.CRLv1(t))
		if err := chain.CheckRevocation([]*x509.Certificate{leaf.Cert, ca.Cert}, clean, time.Now(), "server"); err != nil {
			t.Errorf("%s: empty v1 CRL: %v", kt, err)
		}
	}
}

func TestParseCRLRefusesMalformedVersion1(t *testing.T) {
	ca := testpki.NewRootCA(t, "m")
	block, _ := pem.Decode(ca.CRLv1(t))
	for i := 1; i < len(block.Bytes); i++ {
		if _, err := chain.ParseCRL(block.Bytes[:i]); err == nil {
			t.Fatalf("truncated to %d bytes: accepted", i)
		}
	}
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestNameHashMatchesOpenSSL compares NameHash with `openssl x509
// -subject_hash` for names that exercise the canonical form: case, runs of
// white space, leading and trailing space, multi-valued RDNs, UTF-8,
// PrintableString and UTF8String values.
func TestNameHashMatchesOpenSSL(t *testing.T) {
	dir := t.TempDir()
	subjects := []string{
		"/CN=Test Root",
		"/CN=Test  Root/O=Ex Corp",
		"/CN=  UPPER lower  /OU=a b\tc",
		"/CN=a+O=b/C=DE",
		"/O=Grüße GmbH/CN=Ärger",
		"/DC=com/DC=example/CN=x",
		"/emailAddress=Admin@Example.COM/CN=mail",
	}
	for i, subj := range subjects {
		name := filepath.Join(dir, "c.pem")
		openssl(t, dir, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-utf8",
			"-keyout", "k.pem", "-out", name, "-subj", subj, "-days", "1")
		want := strings.TrimSpace(openssl(t, dir, "x509", "-in", "c.pem", "-noout", "-subject_hash"))
		got, err := chain.NameHash(readCert(t, name).RawSubject)
		if err != nil || got != want {
			t.Errorf("%d %q: NameHash = %s, %v; openssl says %s", i, subj, got, err, want)
		}
	}
	// Names written by crypto/x509 (PrintableString/UTF8String choices).
	ca := testpki.NewRootCA(t, "Go Written  Name")
	_ = os.WriteFile(filepath.Join(dir, "go.pem"), ca.CertPEM, 0o644)
	want := strings.TrimSpace(openssl(t, dir, "x509", "-in", "go.pem", "-noout", "-subject_hash"))
	if got, _ := chain.NameHash(ca.Cert.RawSubject); got != want {
		t.Errorf("Go-written name: NameHash = %s, openssl says %s", got, want)
	}
}

// TestCRLSelection: with several CRLs from one issuer, the one OpenSSL
// would use decides: the newest complete one. An older CRL that is still
// valid must not hide a later revocation, and a delta CRL or one scoped by
// an issuing distribution point is no complete CRL.
func TestCRLSelection(t *testing.T) {
	ca := testpki.NewRootCA(t, "selection CA")
	leaf := ca.Server(t)
	now := time.Now()
	mk := func(thisUpdate time.Time, revoked bool, exts ...pkix.Extension) *x509.RevocationList {
		t.Helper()
		tmpl := &x509.RevocationList{Number: big.NewInt(thisUpdate.Unix()), ThisUpdate: thisUpdate, NextUpdate: now.Add(24 * time.Hour), ExtraExtensions: exts}
		if revoked {
			tmpl.RevokedCertificateEntries = []x509.RevocationListEntry{{SerialNumber: leaf.Cert.SerialNumber, RevocationTime: thisUpdate}}
		}
		der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.Key)
		if err != nil {
			t.Fatal(err)
		}
		crl, err := chain.ParseCRL(der)
		if err != nil {
			t.Fatal(err)
		}
		return crl
	}
	older := mk(now.Add(-2*time.Hour), false)
	current := mk(now.Add(-time.Hour), true)
	deltaExt := pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 27}, Critical: true, Value: []byte{2, 1, 1}}
	delta := mk(now.Add(-30*time.Minute), false, deltaExt)
	// IssuingDistributionPoint { onlyContainsCACerts [2] TRUE }
	caOnly := mk(now.Add(-30*time.Minute), false, pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 28}, Critical: true, Value: []byte{0x30, 0x03, 0x82, 0x01, 0xff}})
	unknownCritical := mk(now.Add(-30*time.Minute), false, pkix.Extension{Id: asn1.ObjectIdentifier{1, 2, 3, 4}, Critical: true, Value: []byte{5, 0}})
	chainOf := []*x509.Certificate{leaf.Cert, ca.Cert}
	cases := []struct {
		name string
		crls []*x509.RevocationList
		want failure.Class
	}{
		{"current alone", []*x509.RevocationList{current}, failure.CertRevoked},
		{"older, still valid, listed first", []*x509.RevocationList{older, current}, failure.CertRevoked},
		{"older listed last", []*x509.RevocationList{current, older}, failure.CertRevoked},
		{"a newer delta CRL is not the complete CRL", []*x509.RevocationList{delta, current}, failure.CertRevoked},
		{"a delta CRL alone", []*x509.RevocationList{delta}, failure.UnknownCA},
		{"a CA-only CRL does not cover a leaf", []*x509.RevocationList{caOnly, current}, failure.CertRevoked},
		{"a CA-only CRL alone", []*x509.RevocationList{caOnly}, failure.UnknownCA},
		{"the newest has an unhandled critical extension", []*x509.RevocationList{older, unknownCritical}, ""},
	}
	for _, c := range cases {
		err := chain.CheckRevocation(chainOf, c.crls, now, "server")
		got := failure.ClassOf(err)
		if c.want == "" {
			// OpenSSL prefers a CRL without unhandled critical extensions
			// (CRL_SCORE_NOCRITICAL): the older one is used, and lists nothing.
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		if got != c.want {
			t.Errorf("%s: %v (class %s), want %s", c.name, err, got, c.want)
		}
	}
	err := chain.CheckRevocation(chainOf, []*x509.RevocationList{unknownCritical}, now, "server")
	if e, _ := failure.As(err); e == nil || !strings.Contains(e.Evidence, "unhandled critical CRL extension") {
		t.Errorf("only a CRL with an unhandled critical extension: %v", err)
	}
}
