package pgtls_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

// opensslCRLHash is the name `openssl rehash` gives a CRL in a hashed
// directory (HASH.r0), asked of OpenSSL itself so the test does not trust
// pgtrust's own hash.
func opensslCRLHash(t *testing.T, crlPEM []byte) string {
	t.Helper()
	cmd := exec.Command("openssl", "crl", "-noout", "-hash")
	cmd.Stdin = strings.NewReader(string(crlPEM))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("openssl crl -hash: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// TestLibpqParityCRL covers revocation lists as OpenSSL reads them:
// version 1 CRLs (what `openssl ca -gencrl` writes without -crlexts, which
// crypto/x509 refuses) and version 2, as an sslcrl file and in an sslcrldir
// hashed directory, for revoked and unrevoked servers; an unparseable file
// under a hash name; a directory with no CRL for the issuer; and a revoked
// client certificate refused by a server reading a version 1 CRL.
func TestLibpqParityCRL(t *testing.T) {
	p := newPKI(t)
	v1 := p.ca.CRLv1(t, p.revoked.Cert)
	v2 := p.crl
	hash := opensslCRLHash(t, v1)
	sameNameCA := testpki.NewRootCA(t, p.ca.Cert.Subject.CommonName)
	root := map[string]file{"root.crt": {p.ca.CertPEM, 0o644}}
	with := func(extra map[string]file) map[string]file {
		m := map[string]file{"root.crt": {p.ca.CertPEM, 0o644}}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	const opts = "sslrootcert={dir}/root.crt host=localhost hostaddr=127.0.0.1 "
	revokedFails := per(ok, ok, ok, failure.CertRevoked, failure.CertRevoked, failure.CertRevoked)
	allOK := per(ok, ok, ok, ok, ok, ok)
	good := sslServer(p, p.server.ChainPEM, p.server.KeyPEM, nil)
	revoked := sslServer(p, p.revoked.ChainPEM, p.revoked.KeyPEM, nil)
	// Made here, not in certHBA: the scenarios run in parallel, after this
	// function has returned, and must not report through its t.
	bobRevoked := p.ca.CRLv1(t, p.bobClient.Cert)
	certHBA := func(o *pgtest.Options) {
		o.HBA = []string{"local all all trust", "hostssl all all 127.0.0.1/32 cert"}
		o.CA = p.ca.CertPEM
		o.CRL = bobRevoked
	}
	runParity(t, []scenario{
		{name: "v1 CRL file, server not revoked", start: good, client: opts + "sslcrl={dir}/v1.crl",
			files: with(map[string]file{"v1.crl": {v1, 0o644}}), want: allOK},
		{name: "v1 CRL file, server revoked", start: revoked, client: opts + "sslcrl={dir}/v1.crl",
			files: with(map[string]file{"v1.crl": {v1, 0o644}}), want: revokedFails},
		{name: "sslcrl: an older CRL, still valid, before the current one", start: revoked, client: opts + "sslcrl={dir}/both.crl",
			files: with(map[string]file{"both.crl": {append(p.ca.CRLAt(t, time.Now().Add(-3*time.Hour), time.Now().Add(24*time.Hour)), v2...), 0o644}}), want: revokedFails},
		{name: "v1 CRL in sslcrldir, server not revoked", start: good, client: opts + "sslcrldir={dir}/crls",
			files: with(map[string]file{"crls/" + hash + ".r0": {v1, 0o644}}), want: allOK},
		{name: "v1 CRL in sslcrldir, server revoked", start: revoked, client: opts + "sslcrldir={dir}/crls",
			files: with(map[string]file{"crls/" + hash + ".r0": {v1, 0o644}}), want: revokedFails},
		{name: "v2 CRL in sslcrldir, server not revoked", start: good, client: opts + "sslcrldir={dir}/crls",
			files: with(map[string]file{"crls/" + hash + ".r0": {v2, 0o644}}), want: allOK},
		{name: "v2 CRL in sslcrldir, server revoked", start: revoked, client: opts + "sslcrldir={dir}/crls",
			files: with(map[string]file{"crls/" + hash + ".r0": {v2, 0o644}}), want: revokedFails},
		{name: "sslcrldir: CRL in the second hashed file", start: revoked, client: opts + "sslcrldir={dir}/crls",
			files: with(map[string]file{"crls/" + hash + ".r0": {sameNameCA.CRL(t), 0o644}, "crls/" + hash + ".r1": {v1, 0o644}}), want: revokedFails},
		{name: "sslcrldir: unparseable file under the issuer's hash name", start: revoked, client: opts + "sslcrldir={dir}/crls",
			files: with(map[string]file{"crls/" + hash + ".r0": {[]byte("-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n"), 0o644}}),
			want:  per(ok, ok, ok, failure.ConfigInvalid, failure.ConfigInvalid, failure.ConfigInvalid)},
		{name: "sslcrldir: the CRL under a name that is not its hash", start: revoked, client: opts + "sslcrldir={dir}/crls",
			files: with(map[string]file{"crls/ca.crl": {v1, 0o644}}), want: per(ok, ok, ok, failure.UnknownCA, failure.UnknownCA, failure.UnknownCA)},
		{name: "sslcrldir that does not exist still turns checking on", start: good, client: opts + "sslcrldir={dir}/none",
			files: root, want: per(ok, ok, ok, failure.UnknownCA, failure.UnknownCA, failure.UnknownCA)},
		{name: "sslcrldir: CRL from a CA regenerated under the same name", start: good, client: opts + "sslcrldir={dir}/crls",
			files: with(map[string]file{"crls/" + hash + ".r0": {sameNameCA.CRLv1(t), 0o644}}), want: per(ok, ok, ok, failure.UnknownCA, failure.UnknownCA, failure.UnknownCA)},
		{name: "server's v1 ssl_crl_file revokes the client certificate", start: sslServer(p, p.server.ChainPEM, p.server.KeyPEM, certHBA),
			client: opts + "sslcert={dir}/client.crt sslkey={dir}/client.key user=bob",
			files:  with(map[string]file{"client.crt": {p.bobClient.ChainPEM, 0o644}, "client.key": {p.bobClient.KeyPEM, 0o600}}),
			want:   per(failure.PgHbaReject, failure.ClientCertRejected, failure.ClientCertRejected, failure.ClientCertRejected, failure.ClientCertRejected, failure.ClientCertRejected)},
		{name: "server's v1 ssl_crl_file, client certificate not revoked", start: sslServer(p, p.server.ChainPEM, p.server.KeyPEM, certHBA),
			client: opts + "sslcert={dir}/client.crt sslkey={dir}/client.key user=alice",
			files:  with(map[string]file{"client.crt": {p.client.ChainPEM, 0o644}, "client.key": {p.client.KeyPEM, 0o600}}),
			want:   per(failure.PgHbaReject, ok, ok, ok, ok, ok)},
	})
}

// TestStricterThanLibpqOnRevocation pins the cases where libpq silently
// checks no CRL and pgtrust refuses instead (docs/tls-semantics.md): the
// server's certificate is revoked, psql connects, pgtrust does not.
func TestStricterThanLibpqOnRevocation(t *testing.T) {
	p := newPKI(t)
	v1 := p.ca.CRLv1(t, p.revoked.Cert)
	hash := opensslCRLHash(t, v1)
	tgt := sslServer(p, p.revoked.ChainPEM, p.revoked.KeyPEM, nil)(t)
	dir := t.TempDir()
	for name, data := range map[string][]byte{"root.crt": p.ca.CertPEM, "crls/" + hash + ".r0": v1, "bad.crl": []byte("not a CRL")} {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	home := pgtest.EmptyHome(t)
	for extra, want := range map[string]failure.Class{
		"sslcrl={dir}/none.crl sslcrldir={dir}/crls": failure.CertRevoked,
		"sslcrl={dir}/bad.crl":                       failure.ConfigInvalid,
	} {
		dsn := fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres sslmode=verify-ca sslrootcert=%s/root.crt %s",
			tgt.host, tgt.port, dir, strings.ReplaceAll(extra, "{dir}", dir))
		if lib := pgtest.Psql(t, dsn, map[string]string{"HOME": home}); !lib.OK {
			t.Errorf("%s: libpq refused (%s); docs/tls-semantics.md says it connects", extra, strings.TrimSpace(lib.Stderr))
		}
		if got := connectPgtrust(t, dsn, home); failure.ClassOf(got.err) != want {
			t.Errorf("%s: pgtrust: %v, want class %s", extra, got.err, want)
		}
	}
}
