package dbenv

import (
	"fmt"
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

// TestResolvedSettingsMeanWhatLibpqDoes runs psql 15 (libpq, the oracle)
// with the settings Resolve produced, against a real TLS server whose
// certificate names only db.example.invalid and is signed by a CA the
// client does not know unless DB_SSL_CA gives it.
func TestResolvedSettingsMeanWhatLibpqDoes(t *testing.T) {
	ca := testpki.NewRootCA(t, "dbenv server CA")
	other := testpki.NewRootCA(t, "dbenv unrelated CA")
	leaf := ca.Server(t, testpki.WithCN("db.example.invalid"), testpki.WithDNS("db.example.invalid"), testpki.WithIPs())
	srv := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: leaf.ChainPEM, ServerKey: leaf.KeyPEM})
	dir := t.TempDir()
	caFile := testpki.WriteFile(t, dir, "ca.crt", ca.CertPEM, 0o644)
	otherFile := testpki.WriteFile(t, dir, "other.crt", other.CertPEM, 0o644)

	// host names the certificate (or not); hostaddr keeps it on loopback.
	dsn := func(host string) string {
		return fmt.Sprintf("host=%s hostaddr=127.0.0.1 port=%d user=postgres dbname=postgres", host, srv.Port)
	}
	good, wrongName := dsn("db.example.invalid"), dsn("localhost")

	cases := []struct {
		name     string
		env      map[string]string
		wantMode connstring.SSLMode
		wantSSL  string // "t", "f", or "" when libpq must refuse
		wantErr  string // psql's stderr when refused
	}{
		{"REJECT_UNAUTHORIZED=false: require connects to a server whose CA is unknown",
			map[string]string{"DATABASE_URL": good, "DB_SSL_REJECT_UNAUTHORIZED": "false"}, "require", "t", ""},
		{"default verify-full refuses it without a root certificate",
			map[string]string{"DATABASE_URL": good}, "verify-full", "", "root certificate file"},
		{"verify-full with another CA refuses it",
			map[string]string{"DATABASE_URL": good, "DB_SSL_CA": otherFile}, "verify-full", "", "certificate verify failed"},
		{"verify-full with the right CA connects",
			map[string]string{"DATABASE_URL": good, "DB_SSL_CA": caFile}, "verify-full", "t", ""},
		{"verify-full with the right CA refuses a wrong host name",
			map[string]string{"DATABASE_URL": wrongName, "DB_SSL_CA": caFile}, "verify-full", "", "does not match host name"},
		{"require with DB_SSL_CA checks the chain (libpq): another CA is refused",
			map[string]string{"DATABASE_URL": good, "DB_SSL_REJECT_UNAUTHORIZED": "false", "DB_SSL_CA": otherFile}, "require", "", "certificate verify failed"},
		{"require with DB_SSL_CA does not check the host name",
			map[string]string{"DATABASE_URL": wrongName, "DB_SSL_REJECT_UNAUTHORIZED": "false", "DB_SSL_CA": caFile}, "require", "t", ""},
		{"PGSSLMODE=verify-ca does not check the host name",
			map[string]string{"DATABASE_URL": wrongName, "PGSSLMODE": "verify-ca", "PGSSLROOTCERT": caFile}, "verify-ca", "t", ""},
		{"DB_SSL_ENABLED=false connects without TLS",
			map[string]string{"DATABASE_URL": good, "DB_SSL_ENABLED": "false"}, "disable", "f", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			home := pgtest.EmptyHome(t)
			s, err := Resolve("", c.env, home)
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			if s.Config.SSLMode != c.wantMode {
				t.Fatalf("sslmode = %s; want %s", s.Config.SSLMode, c.wantMode)
			}
			// The resolved settings, complete (DSN, PG*, DB_SSL_*, the
			// default), handed to libpq with nothing else in its environment.
			conninfo := connstring.KeyValueString(s.Config.Settings)
			res := pgtest.PsqlQuery(t, conninfo, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", map[string]string{"HOME": home})
			if c.wantSSL == "" {
				if res.OK || !strings.Contains(res.Stderr, c.wantErr) {
					t.Fatalf("psql with %s: ok=%v stderr %q; want a refusal containing %q", conninfo, res.OK, res.Stderr, c.wantErr)
				}
				return
			}
			if !res.OK || strings.TrimSpace(res.Stdout) != c.wantSSL {
				t.Fatalf("psql with %s: ok=%v ssl=%q stderr %q; want ssl=%s", conninfo, res.OK, res.Stdout, res.Stderr, c.wantSSL)
			}
		})
	}
}
