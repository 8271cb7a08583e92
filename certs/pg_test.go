package certs

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/keyfile"
	"github.com/pgtrust/pgtrust/internal/pgtest"
)

// TestDevPKIWithPostgreSQL configures a real server with InitDevPKI's
// output and checks that psql (libpq) connects with verify-full mutual TLS
// using the printed connection string, and that Verify and CheckExpiry agree
// with libpq and the server on broken material.
func TestDevPKIWithPostgreSQL(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	p, err := InitDevPKI(dir, DevPKIOptions{User: "app"})
	if err != nil {
		t.Fatal(err)
	}
	read := func(f string) []byte {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	s := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: read(p.ServerCert), ServerKey: read(p.ServerKey), CA: read(p.CACert),
		HBA:   []string{p.HBALine()},
		Setup: []string{"CREATE ROLE app LOGIN"}})
	port := " port=" + strconv.Itoa(s.Port) + " dbname=postgres"

	r := pgtest.PsqlQuery(t, p.ConnString()+port, "SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()", nil)
	if !r.OK || strings.TrimSpace(r.Stdout) != "t|/CN=app" {
		t.Fatalf("verify-full mTLS with the printed connection string failed: %+v", r)
	}
	if rep := Verify(VerifyOptions{CAFile: p.CACert, CertFile: p.ServerCert, Host: "localhost"}); !rep.OK() {
		t.Errorf("Verify disagrees with libpq on good material: %+v", rep.Findings)
	}

	t.Run("wrong-host", func(t *testing.T) {
		r := pgtest.Psql(t, "host=db.example.com hostaddr=127.0.0.1 user=app sslmode=verify-full sslrootcert="+p.CACert+" sslcert="+p.ClientCert+" sslkey="+p.ClientKey+port, nil)
		rep := Verify(VerifyOptions{CAFile: p.CACert, CertFile: p.ServerCert, Host: "db.example.com"})
		if r.OK || rep.OK() || !strings.Contains(r.Stderr, "does not match host name") {
			t.Errorf("psql %+v / verify ok=%v", r, rep.OK())
		}
	})
	t.Run("wrong-ca", func(t *testing.T) {
		other, _ := NewCA(Options{CommonName: "other CA"})
		otherFile := write(t, filepath.Join(t.TempDir(), "other.crt"), other.CertPEM(), 0o644)
		r := pgtest.Psql(t, strings.Replace(p.ConnString(), "sslrootcert="+p.CACert, "sslrootcert="+otherFile, 1)+port, nil)
		rep := Verify(VerifyOptions{CAFile: otherFile, CertFile: p.ServerCert, Host: "localhost"})
		if r.OK || rep.OK() || findingFor(t, rep, "chain").Class != failure.UnknownCA {
			t.Errorf("psql %+v / verify %+v", r, rep.Findings)
		}
	})
	ca, err := LoadKeyPair(p.CACert, p.CAKey, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Run("expired-client", func(t *testing.T) {
		old, _ := IssueClient(ca, Options{CommonName: "app", NotBefore: time.Now().Add(-72 * time.Hour), Validity: 24 * time.Hour})
		crt, key := writePair(t, t.TempDir(), "old", old)
		r := pgtest.Psql(t, strings.NewReplacer("sslcert="+p.ClientCert, "sslcert="+crt, "sslkey="+p.ClientKey, "sslkey="+key).Replace(p.ConnString())+port, nil)
		rep := Verify(VerifyOptions{CAFile: p.CACert, CertFile: crt, KeyFile: key})
		chk := CheckExpiry([]string{crt}, 30*day, time.Now())
		if r.OK || rep.OK() || findingFor(t, rep, "validity").Class != failure.CertExpired || ExpiryExitCode(chk) != 2 {
			t.Errorf("psql %+v / verify %+v / check %+v", r, rep.Findings, chk)
		}
	})
	t.Run("mismatched-key", func(t *testing.T) {
		other, _ := GenerateKey(ECDSAP256)
		pemKey, _ := keyfile.EncodePrivateKeyPEM(other)
		key := write(t, filepath.Join(t.TempDir(), "other.key"), pemKey, 0o600)
		r := pgtest.Psql(t, strings.Replace(p.ConnString(), "sslkey="+p.ClientKey, "sslkey="+key, 1)+port, nil)
		rep := Verify(VerifyOptions{CAFile: p.CACert, CertFile: p.ClientCert, KeyFile: key})
		if r.OK || !strings.Contains(r.Stderr, "key values mismatch") || findingFor(t, rep, "key-match").Class != failure.KeyMismatch {
			t.Errorf("psql %+v / verify %+v", r, rep.Findings)
		}
	})
}
