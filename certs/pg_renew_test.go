package certs_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/pgtls"
)

// TestRenewingSourceWithPgtls plugs a RenewingSource into pgtls.Options and
// talks to a real PostgreSQL that requires a verified client certificate:
// after a renewal, new connections present the new certificate (the server's
// pg_stat_ssl.client_serial says so) while a connection opened before keeps
// working, and with TrustIssuedCA the server is verified against the CA the
// issuer named rather than a root file.
func TestRenewingSourceWithPgtls(t *testing.T) {
	ca, err := certs.NewCA(certs.Options{CommonName: "renewal CA"})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := certs.IssueServer(ca, certs.Options{CommonName: "localhost", Hosts: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	s := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: srv.CertPEM(), ServerKey: keyPEM(t, srv), CA: ca.CertPEM(),
		HBA:   []string{"hostssl all app 127.0.0.1/32 cert clientcert=verify-full"},
		Setup: []string{"CREATE ROLE app LOGIN"}})

	src, err := certs.NewRenewingSource(context.Background(), localIssuer{ca}, certs.RenewOptions{TrustIssuedCA: true, Name: "library test"})
	if err != nil {
		t.Fatal(err)
	}
	// No sslcert/sslkey/sslrootcert: the source provides both sides' material.
	cfg, err := connstring.Parse(s.DSN("host=localhost user=app dbname=postgres sslmode=verify-full"))
	if err != nil {
		t.Fatal(err)
	}
	opts := &pgtls.Options{GetClientCertificate: src.GetClientCertificate, RootCAs: src.Roots}
	connect := func() *pgconn.PgConn {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		pg, _, err := pgtls.Connect(ctx, cfg, opts)
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		t.Cleanup(func() { pg.Close(context.Background()) })
		return pg
	}
	serial := func(pg *pgconn.PgConn) string {
		t.Helper()
		res := pg.Exec(context.Background(), "SELECT client_serial FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
		rs, err := res.ReadAll()
		if err != nil || len(rs) != 1 || len(rs[0].Rows) != 1 {
			t.Fatalf("pg_stat_ssl: %v %v", rs, err)
		}
		return string(rs[0].Rows[0][0])
	}
	decimal := func() string {
		c, err := src.GetClientCertificate(nil)
		if err != nil {
			t.Fatal(err)
		}
		return c.Leaf.SerialNumber.String()
	}

	old := connect()
	first := decimal()
	if got := serial(old); got != first {
		t.Fatalf("server saw client serial %s, source holds %s", got, first)
	}
	if err := src.Reload(); err != nil {
		t.Fatal(err)
	}
	second := decimal()
	if second == first {
		t.Fatal("Reload did not renew")
	}
	if got := serial(connect()); got != second {
		t.Fatalf("after renewal a new connection presented serial %s, want %s", got, second)
	}
	if got := serial(old); got != first {
		t.Fatalf("the connection opened before the renewal now reports %s", got)
	}
	if st := src.Status(); st.Reloads != 1 || st.Serial != strings.ToUpper(st.Serial) {
		t.Fatalf("status %+v", st)
	}
}

func keyPEM(t *testing.T, kp *certs.KeyPair) []byte {
	t.Helper()
	b, err := kp.KeyPEM("")
	if err != nil {
		t.Fatal(err)
	}
	return b
}
