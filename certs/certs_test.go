package certs

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/keyfile"
)

func mustCA(t *testing.T) *KeyPair {
	t.Helper()
	// Back-dated, so that back-dated leaves fall inside its validity.
	ca, err := NewCA(Options{CommonName: "test CA", NotBefore: time.Now().Add(-30 * day)})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func write(t *testing.T, path string, data []byte, mode os.FileMode) string {
	t.Helper()
	if err := keyfile.WriteFileAtomic(path, data, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

// writePair writes a pair as NAME.crt / NAME.key in dir.
func writePair(t *testing.T, dir, name string, p *KeyPair) (string, string) {
	t.Helper()
	k, err := p.KeyPEM("")
	if err != nil {
		t.Fatal(err)
	}
	return write(t, filepath.Join(dir, name+".crt"), p.CertPEM(), 0o644), write(t, filepath.Join(dir, name+".key"), k, 0o600)
}

func TestKeyTypes(t *testing.T) {
	ca := mustCA(t)
	for _, kt := range KeyTypes {
		t.Run(string(kt), func(t *testing.T) {
			if got, err := ParseKeyType(strings.ToUpper(string(kt))); err != nil || got != kt {
				t.Fatalf("ParseKeyType: %v %v", got, err)
			}
			srv, err := IssueServer(ca, Options{Hosts: []string{"db.example.com", "10.0.0.5"}, KeyType: kt})
			if err != nil {
				t.Fatal(err)
			}
			info := Describe(srv.Cert, time.Now())
			want := map[KeyType]string{RSA2048: "RSA 2048", RSA4096: "RSA 4096", ECDSAP256: "ECDSA P-256", ECDSAP384: "ECDSA P-384", Ed25519: "Ed25519"}[kt]
			if info.KeyDetail != want {
				t.Errorf("key %q, want %q", info.KeyDetail, want)
			}
			if info.Subject != "CN=db.example.com" || len(info.DNSNames) != 1 || info.IPAddresses[0] != "10.0.0.5" {
				t.Errorf("names: %+v", info)
			}
			if _, err := srv.Cert.Verify(x509.VerifyOptions{Roots: pool(ca.Cert), DNSName: "db.example.com"}); err != nil {
				t.Errorf("does not verify: %v", err)
			}
		})
	}
	_, err := ParseKeyType("dsa")
	if failure.ClassOf(err) != failure.ConfigInvalid {
		t.Errorf("ParseKeyType(dsa) = %v", err)
	}
}

func pool(cs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range cs {
		p.AddCert(c)
	}
	return p
}

func TestIssueRefusesBadInput(t *testing.T) {
	ca := mustCA(t)
	leaf, _ := IssueClient(ca, Options{CommonName: "app"})
	if _, err := IssueClient(leaf, Options{CommonName: "x"}); failure.ClassOf(err) != failure.ConfigInvalid {
		t.Errorf("issuing from a non-CA: %v", err)
	}
	other := mustCA(t)
	if _, err := IssueClient(&KeyPair{Cert: ca.Cert, Key: other.Key}, Options{CommonName: "x"}); failure.ClassOf(err) != failure.KeyMismatch {
		t.Errorf("CA key mismatch: %v", err)
	}
	if _, err := IssueServer(ca, Options{}); failure.ClassOf(err) != failure.ConfigInvalid {
		t.Errorf("server without hosts: %v", err)
	}
	if _, err := IssueClient(ca, Options{}); failure.ClassOf(err) != failure.ConfigInvalid {
		t.Errorf("client without user: %v", err)
	}
	// A leaf never outlives its CA.
	long, _ := IssueClient(ca, Options{CommonName: "x", Validity: 100 * 365 * day})
	if long.Cert.NotAfter.After(ca.Cert.NotAfter) {
		t.Error("leaf outlives CA")
	}
}

func TestInitDevPKI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	p, err := InitDevPKI(dir, DevPKIOptions{User: "app", KeyType: Ed25519})
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v", fi.Mode())
	}
	for f, mode := range map[string]os.FileMode{p.CACert: 0o644, p.CAKey: 0o600, p.ServerCert: 0o644, p.ServerKey: 0o600, p.ClientCert: 0o644, p.ClientKey: 0o600} {
		fi, err := os.Stat(f)
		if err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v %v", f, fi.Mode(), err)
		}
	}
	if p.Client.Subject.CommonName != "app" || len(p.Server.DNSNames) != 1 || len(p.Server.IPAddresses) != 2 {
		t.Errorf("certs: client %v server %v %v", p.Client.Subject, p.Server.DNSNames, p.Server.IPAddresses)
	}
	r := Verify(VerifyOptions{CAFile: p.CACert, CertFile: p.ServerCert, KeyFile: p.ServerKey, Host: "localhost"})
	if !r.OK() {
		t.Errorf("server material does not verify: %+v", r.Findings)
	}
	r = Verify(VerifyOptions{CAFile: p.CACert, CertFile: p.ClientCert, KeyFile: p.ClientKey})
	if !r.OK() {
		t.Errorf("client material does not verify: %+v", r.Findings)
	}
	for _, want := range []string{"ssl = on", "ssl_cert_file = '" + p.ServerCert + "'", "ssl_key_file", "ssl_ca_file"} {
		if !strings.Contains(p.PostgresConf(), want) {
			t.Errorf("postgresql.conf lines lack %q:\n%s", want, p.PostgresConf())
		}
	}
	if p.HBALine() != "hostssl all app all cert clientcert=verify-full" {
		t.Errorf("hba %q", p.HBALine())
	}
	if !strings.Contains(p.ConnString(), "sslmode=verify-full") || !strings.Contains(p.ConnString(), "sslkey="+p.ClientKey) {
		t.Errorf("conn string %q", p.ConnString())
	}

	before, _ := os.ReadFile(p.CACert)
	_, err = InitDevPKI(dir, DevPKIOptions{})
	fe, _ := failure.As(err)
	if fe == nil || fe.Class != failure.ConfigInvalid || !strings.Contains(fe.Fix, "--force") {
		t.Fatalf("second init without force: %v", err)
	}
	if after, _ := os.ReadFile(p.CACert); string(after) != string(before) {
		t.Fatal("existing CA overwritten without --force")
	}
	if _, err := InitDevPKI(dir, DevPKIOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(p.CACert); string(after) == string(before) {
		t.Fatal("--force did not replace the CA")
	}
}

func TestEnsureDevPKI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "auto")
	first, err := EnsureDevPKI(dir, DevPKIOptions{})
	if err != nil || !first.Generated {
		t.Fatalf("generate: %v", err)
	}
	second, err := EnsureDevPKI(dir, DevPKIOptions{})
	if err != nil || second.Generated || !second.Server.Equal(first.Server) {
		t.Fatalf("reuse: %v generated=%v", err, second != nil && second.Generated)
	}

	// Invalid material: a server key that does not match.
	other, _ := GenerateKey(ECDSAP256)
	pemKey, _ := keyfile.EncodePrivateKeyPEM(other)
	write(t, first.ServerKey, pemKey, 0o600)
	_, err = EnsureDevPKI(dir, DevPKIOptions{})
	if failure.ClassOf(err) != failure.KeyMismatch {
		t.Fatalf("invalid set: %v", err)
	}
	if p, err := EnsureDevPKI(dir, DevPKIOptions{Force: true}); err != nil || !p.Generated {
		t.Fatalf("force regenerate: %v", err)
	}

	// Partial set.
	os.Remove(filepath.Join(dir, ClientKeyName))
	_, err = EnsureDevPKI(dir, DevPKIOptions{})
	if fe, ok := failure.As(err); !ok || !strings.Contains(fe.Message, "incomplete") {
		t.Fatalf("partial: %v", err)
	}

	// Not creatable: the parent is a file.
	parent := write(t, filepath.Join(t.TempDir(), "file"), []byte("x"), 0o644)
	_, err = EnsureDevPKI(filepath.Join(parent, "certs"), DevPKIOptions{})
	fe, ok := failure.As(err)
	if !ok || fe.Class != failure.ConfigInvalid || !strings.Contains(fe.Message, "could not generate certificates") || fe.Fix == "" {
		t.Fatalf("unwritable: %v", err)
	}
}

// material builds a CA and leaves in a temp dir.
type fixture struct {
	dir                  string
	ca                   *KeyPair
	caFile               string
	serverCrt, serverKey string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir(), ca: mustCA(t)}
	f.caFile = write(t, filepath.Join(f.dir, "ca.crt"), f.ca.CertPEM(), 0o644)
	srv, err := IssueServer(f.ca, Options{Hosts: []string{"db.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	f.serverCrt, f.serverKey = writePair(t, f.dir, "server", srv)
	return f
}

func findingFor(t *testing.T, r *Report, check string) Finding {
	t.Helper()
	for _, f := range r.Findings {
		if f.Check == check {
			return f
		}
	}
	t.Fatalf("no %q finding in %+v", check, r.Findings)
	return Finding{}
}

func TestVerify(t *testing.T) {
	f := newFixture(t)
	good := Verify(VerifyOptions{CAFile: f.caFile, CertFile: f.serverCrt, KeyFile: f.serverKey, Host: "DB.example.com"})
	if !good.OK() {
		t.Fatalf("good material fails: %+v", good.Findings)
	}

	t.Run("wrong-host", func(t *testing.T) {
		r := Verify(VerifyOptions{CAFile: f.caFile, CertFile: f.serverCrt, Host: "other.example.com"})
		h := findingFor(t, r, "host")
		if r.OK() || h.Class != failure.HostnameMismatch || !strings.Contains(h.Message, `does not match host name "other.example.com"`) || !strings.Contains(h.Fix, "other.example.com") {
			t.Errorf("%+v", h)
		}
	})
	t.Run("wrong-ca", func(t *testing.T) {
		other := mustCA(t)
		caFile := write(t, filepath.Join(f.dir, "other-ca.crt"), other.CertPEM(), 0o644)
		r := Verify(VerifyOptions{CAFile: caFile, CertFile: f.serverCrt})
		c := findingFor(t, r, "chain")
		if r.OK() || c.Class != failure.UnknownCA || c.Message != "SSL error: certificate verify failed" || !strings.Contains(c.Fix, "test CA") {
			t.Errorf("%+v", c)
		}
	})
	t.Run("expired", func(t *testing.T) {
		old, _ := IssueServer(f.ca, Options{Hosts: []string{"db.example.com"}, NotBefore: time.Now().Add(-48 * time.Hour), Validity: 24 * time.Hour})
		crt, _ := writePair(t, f.dir, "old", old)
		r := Verify(VerifyOptions{CAFile: f.caFile, CertFile: crt})
		v := findingFor(t, r, "validity")
		if r.OK() || v.Class != failure.CertExpired || !strings.Contains(v.Evidence, "expired 1 days ago") {
			t.Errorf("%+v", v)
		}
		// The chain itself is fine; only the date is wrong.
		if c := findingFor(t, r, "chain"); c.Status != "ok" {
			t.Errorf("chain: %+v", c)
		}
	})
	t.Run("mismatched-key-and-permissions", func(t *testing.T) {
		other, _ := GenerateKey(ECDSAP256)
		k, _ := keyfile.EncodePrivateKeyPEM(other)
		keyPath := write(t, filepath.Join(f.dir, "wrong.key"), k, 0o644)
		r := Verify(VerifyOptions{CAFile: f.caFile, CertFile: f.serverCrt, KeyFile: keyPath})
		if p := findingFor(t, r, "key-permissions"); p.Class != failure.KeyPermissions || !strings.Contains(p.Fix, "chmod 0600") {
			t.Errorf("%+v", p)
		}
		if m := findingFor(t, r, "key-match"); m.Class != failure.KeyMismatch {
			t.Errorf("%+v", m)
		}
	})
	t.Run("encrypted-key", func(t *testing.T) {
		pair, _ := IssueClient(f.ca, Options{CommonName: "app"})
		k, _ := pair.KeyPEM("pw")
		crt := write(t, filepath.Join(f.dir, "enc.crt"), pair.CertPEM(), 0o644)
		key := write(t, filepath.Join(f.dir, "enc.key"), k, 0o600)
		if r := Verify(VerifyOptions{CAFile: f.caFile, CertFile: crt, KeyFile: key, KeyPassword: "pw"}); !r.OK() {
			t.Errorf("%+v", r.Findings)
		}
		r := Verify(VerifyOptions{CAFile: f.caFile, CertFile: crt, KeyFile: key})
		if k := findingFor(t, r, "key"); k.Class != failure.KeyDecryptFailed {
			t.Errorf("%+v", k)
		}
	})
	t.Run("intermediate", func(t *testing.T) {
		inter, err := NewIntermediate(f.ca, Options{})
		if err != nil {
			t.Fatal(err)
		}
		leaf, _ := IssueServer(inter, Options{Hosts: []string{"db.example.com"}})
		if len(leaf.Chain) != 1 {
			t.Fatalf("chain %d", len(leaf.Chain))
		}
		crt, _ := writePair(t, f.dir, "viaint", leaf) // leaf + intermediate
		if r := Verify(VerifyOptions{CAFile: f.caFile, CertFile: crt}); !r.OK() {
			t.Errorf("bundle: %+v", r.Findings)
		}
		leafOnly := write(t, filepath.Join(f.dir, "leafonly.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Cert.Raw}), 0o644)
		if r := Verify(VerifyOptions{CAFile: f.caFile, CertFile: leafOnly}); r.OK() {
			t.Error("leaf without intermediate verified")
		}
		interFile := write(t, filepath.Join(f.dir, "inter.crt"), inter.CertPEM(), 0o644)
		if r := Verify(VerifyOptions{CAFile: f.caFile, CertFile: leafOnly, UntrustedFile: interFile}); !r.OK() {
			t.Errorf("--untrusted: %+v", r.Findings)
		}
		// An intermediate alone is never a trust anchor for libpq.
		r := Verify(VerifyOptions{CAFile: interFile, CertFile: crt})
		if c := findingFor(t, r, "ca"); c.Class != failure.UnknownCA {
			t.Errorf("intermediate as CA: %+v", c)
		}
	})
	t.Run("missing-ca", func(t *testing.T) {
		r := Verify(VerifyOptions{CAFile: filepath.Join(f.dir, "nope.crt"), CertFile: f.serverCrt})
		if c := findingFor(t, r, "ca"); c.Class != failure.RootCertMissing {
			t.Errorf("%+v", c)
		}
	})
}

func TestVerifyCRL(t *testing.T) {
	f := newFixture(t)
	srv, _ := keyfile.LoadCertificates(f.serverCrt)
	makeCRL := func(revoked ...*x509.Certificate) string {
		tmpl := &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: time.Now().Add(-time.Hour), NextUpdate: time.Now().Add(24 * time.Hour)}
		for _, c := range revoked {
			tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: c.SerialNumber, RevocationTime: time.Now().Add(-time.Minute)})
		}
		der, err := x509.CreateRevocationList(rand.Reader, tmpl, f.ca.Cert, f.ca.Key)
		if err != nil {
			t.Fatal(err)
		}
		return write(t, filepath.Join(f.dir, "crl"+big.NewInt(int64(len(revoked))).String()+".pem"), pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644)
	}
	if r := Verify(VerifyOptions{CAFile: f.caFile, CertFile: f.serverCrt, CRLFile: makeCRL()}); !r.OK() {
		t.Errorf("empty CRL: %+v", r.Findings)
	}
	r := Verify(VerifyOptions{CAFile: f.caFile, CertFile: f.serverCrt, CRLFile: makeCRL(srv[0])})
	if c := findingFor(t, r, "revocation"); c.Class != failure.CertRevoked || !strings.Contains(c.Evidence, SerialHex(srv[0])) {
		t.Errorf("%+v", c)
	}
	// A CRL from another CA with the same name does not cover the chain,
	// and the evidence says why (OpenSSL: CRL signature failure).
	other := mustCA(t)
	der, _ := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: time.Now(), NextUpdate: time.Now().Add(time.Hour)}, other.Cert, other.Key)
	foreign := write(t, filepath.Join(f.dir, "foreign.crl"), der, 0o644)
	r = Verify(VerifyOptions{CAFile: f.caFile, CertFile: f.serverCrt, CRLFile: foreign})
	if c := findingFor(t, r, "revocation"); c.Status != "fail" || !strings.Contains(c.Message+c.Evidence, "CRL signature failure") || !strings.Contains(c.Evidence, "regenerated") {
		t.Errorf("%+v", c)
	}
}

func TestDescribeChainOrder(t *testing.T) {
	ca := mustCA(t)
	inter, _ := NewIntermediate(ca, Options{})
	leaf, _ := IssueClient(inter, Options{CommonName: "app"})
	now := time.Now()
	good := DescribeChain([]*x509.Certificate{leaf.Cert, inter.Cert, ca.Cert}, "b.pem", now)
	if !*good[0].ChainOK || !*good[1].ChainOK || good[2].ChainOK != nil || !good[2].SelfSigned || good[0].Index != 0 || good[2].Index != 2 {
		t.Errorf("good order: %+v", good)
	}
	bad := DescribeChain([]*x509.Certificate{leaf.Cert, ca.Cert, inter.Cert}, "b.pem", now)
	if *bad[0].ChainOK || !strings.Contains(bad[0].ChainNote, "out of order") {
		t.Errorf("bad order: %+v", bad[0])
	}
	if !strings.HasPrefix(good[0].Expiry, "expires in 36") || good[0].DaysLeft < 364 || len(good[0].FingerprintSHA256) != 95 {
		t.Errorf("info: %+v", good[0])
	}
	expired, _ := IssueClient(ca, Options{CommonName: "x", NotBefore: now.Add(-10 * day), Validity: 5 * day})
	if e := Describe(expired.Cert, now).Expiry; e != "expired 5 days ago" {
		t.Errorf("expiry text %q", e)
	}
}

func TestCheckExpiry(t *testing.T) {
	ca := mustCA(t)
	dir := t.TempDir()
	now := time.Now()
	fresh, _ := IssueClient(ca, Options{CommonName: "fresh", Validity: 200 * day})
	soon, _ := IssueClient(ca, Options{CommonName: "soon", Validity: 10 * day})
	gone, _ := IssueClient(ca, Options{CommonName: "gone", NotBefore: now.Add(-3 * day), Validity: day})
	freshCrt, _ := writePair(t, dir, "fresh", fresh) // the .key next to it is skipped
	soonCrt, _ := writePair(t, dir, "soon", soon)
	goneCrt, _ := writePair(t, dir, "gone", gone)
	write(t, filepath.Join(dir, "README"), []byte("not a certificate"), 0o644)
	warn := 30 * day

	if r := CheckExpiry([]string{freshCrt}, warn, now); ExpiryExitCode(r) != 0 || len(r) != 1 || r[0].Status != ExpiryOK {
		t.Errorf("fresh: %+v", r)
	}
	if r := CheckExpiry([]string{freshCrt, soonCrt}, warn, now); ExpiryExitCode(r) != 1 {
		t.Errorf("soon: %+v", r)
	}
	r := CheckExpiry([]string{dir}, warn, now)
	if len(r) != 3 || ExpiryExitCode(r) != 2 {
		t.Fatalf("dir: %+v", r)
	}
	for _, x := range r {
		if x.Path == goneCrt && (x.Status != ExpiryExpired || x.Class != failure.CertExpired) {
			t.Errorf("gone: %+v", x)
		}
	}
	bad := write(t, filepath.Join(dir, "bad.crt"), []byte("garbage"), 0o644)
	r = CheckExpiry([]string{bad, filepath.Join(dir, "missing.crt")}, warn, now)
	if len(r) != 2 || r[0].Status != ExpiryUnreadable || r[1].Status != ExpiryUnreadable || ExpiryExitCode(r) != 2 {
		t.Errorf("unreadable: %+v", r)
	}

	text := string(PrometheusText(CheckExpiry([]string{soonCrt, bad}, warn, now), now))
	for _, want := range []string{
		"# TYPE pgtrust_cert_expiry_timestamp_seconds gauge",
		`pgtrust_cert_expiry_timestamp_seconds{path="` + soonCrt + `",index="0",subject="CN=soon",serial="` + SerialHex(soon.Cert) + `"} ` + big.NewInt(soon.Cert.NotAfter.Unix()).String(),
		`pgtrust_cert_read_error{path="` + bad + `"} 1`,
		`pgtrust_cert_read_error{path="` + soonCrt + `"} 0`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("textfile lacks %q:\n%s", want, text)
		}
	}
	if got := labelEscape("a\"b\\c\nd"); got != `a\"b\\c\nd` {
		t.Errorf("escape %q", got)
	}
	out := filepath.Join(dir, "m.prom")
	if err := WritePrometheusTextfile(out, r, now); err != nil {
		t.Fatal(err)
	}
}
