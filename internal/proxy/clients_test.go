package proxy

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

// TestRealClients drives psql, pgbench and pgx through the proxy over TCP
// and the Unix socket, plaintext and TLS (SSLRequest and direct) on the
// client side, to a verify-full upstream with certificate and SCRAM auth.
func TestRealClients(t *testing.T) {
	e := newEnv(t)
	sockDir := filepath.Join(t.TempDir(), "sock")
	autoDir := filepath.Join(t.TempDir(), "pki")

	otherCA := testpki.NewRootCA(t, "not the server's CA")
	wrongRoot := testpki.WriteFile(t, t.TempDir(), "root.crt", otherCA.CertPEM, 0o644)
	wrongCA := e.upstream(t).Clone()
	wrongCA.SSLRootCert = wrongRoot

	p := startProxy(t, Config{Upstreams: []UpstreamConfig{
		{Name: "main", Listen: "127.0.0.1:0", UnixSocketDir: sockDir, UnixSocketPort: 7432, Conn: e.upstream(t),
			ClientTLS: &ClientTLS{AutoCertDir: autoDir}},
		{Name: "wrongca", Listen: "127.0.0.1:0", Conn: wrongCA},
	}})
	port := p.port(t, "main")
	tcp := fmt.Sprintf("host=127.0.0.1 port=%d user=app dbname=appdb", port)
	unix := fmt.Sprintf("host=%s port=7432 user=app dbname=appdb", sockDir)
	const sslQuery = "SELECT ssl, client_serial FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
	wantSSL := "t|" + e.client.Cert.SerialNumber.String()

	t.Run("psql plaintext TCP, cert auth upstream", func(t *testing.T) {
		r := pgtest.PsqlQuery(t, tcp+" sslmode=disable", sslQuery, nil)
		if !r.OK || strings.TrimSpace(r.Stdout) != wantSSL {
			t.Fatalf("psql: ok=%v stdout=%q stderr=%q, want %q", r.OK, r.Stdout, r.Stderr, wantSSL)
		}
	})
	t.Run("psql Unix socket", func(t *testing.T) {
		r := pgtest.PsqlQuery(t, unix, sslQuery, nil)
		if !r.OK || strings.TrimSpace(r.Stdout) != wantSSL {
			t.Fatalf("psql: ok=%v stdout=%q stderr=%q", r.OK, r.Stdout, r.Stderr)
		}
	})
	t.Run("psql TLS to the proxy via SSLRequest, verify-full", func(t *testing.T) {
		r := pgtest.PsqlQuery(t, tcp+" sslmode=verify-full sslrootcert="+filepath.Join(autoDir, certs.CACertName), `\conninfo`, nil)
		if !r.OK || !strings.Contains(r.Stdout, "SSL connection (protocol: TLSv1.3") {
			t.Fatalf("psql: ok=%v stdout=%q stderr=%q", r.OK, r.Stdout, r.Stderr)
		}
	})
	t.Run("pgx direct TLS with ALPN", func(t *testing.T) {
		c, err := pgxConnect(t, port, "sslmode=require sslnegotiation=direct")
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		defer c.Close(context.Background())
		tc, ok := c.PgConn().Conn().(*tls.Conn)
		if !ok {
			t.Fatalf("pgx connection is %T, not TLS", c.PgConn().Conn())
		}
		if alpn := tc.ConnectionState().NegotiatedProtocol; alpn != "postgresql" {
			t.Fatalf("ALPN %q", alpn)
		}
		var ssl bool
		var serial string
		if err := c.QueryRow(context.Background(), sslQuery).Scan(&ssl, &serial); err != nil || !ssl || serial != e.client.Cert.SerialNumber.String() {
			t.Fatalf("query: %v ssl=%v serial=%s", err, ssl, serial)
		}
	})
	t.Run("pgx plaintext and TLS via SSLRequest", func(t *testing.T) {
		for _, mode := range []string{"sslmode=disable", "sslmode=require"} {
			c, err := pgxConnect(t, port, mode)
			if err != nil {
				t.Fatalf("%s: connect: %v", mode, err)
			}
			var n int
			err = c.QueryRow(context.Background(), "SELECT count(*) FROM generate_series(1, 100000)").Scan(&n)
			c.Close(context.Background())
			if err != nil || n != 100000 {
				t.Fatalf("%s: query: %v n=%d", mode, err, n)
			}
		}
	})
	t.Run("SCRAM pass-through strips -PLUS for psql", func(t *testing.T) {
		dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=scram dbname=postgres sslmode=disable", port)
		r := pgtest.PsqlQuery(t, dsn, "SELECT current_user", map[string]string{"PGPASSWORD": scramPassword})
		if !r.OK || strings.TrimSpace(r.Stdout) != "scram" {
			t.Fatalf("psql: ok=%v stdout=%q stderr=%q", r.OK, r.Stdout, r.Stderr)
		}
		r = pgtest.PsqlQuery(t, unix+" user=scram dbname=postgres", "SELECT current_user", map[string]string{"PGPASSWORD": scramPassword})
		if !r.OK {
			t.Fatalf("psql over the socket: stderr=%q", r.Stderr)
		}
		// A wrong password is the upstream's own answer.
		r = pgtest.Psql(t, dsn, map[string]string{"PGPASSWORD": "wrong"})
		if r.OK || !strings.Contains(r.Stderr, `password authentication failed for user "scram"`) {
			t.Fatalf("wrong password: ok=%v stderr=%q", r.OK, r.Stderr)
		}
	})
	t.Run("SCRAM over client TLS: channel binding explained, disable works", func(t *testing.T) {
		dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=scram dbname=postgres sslmode=require", port)
		r := pgtest.Psql(t, dsn, map[string]string{"PGPASSWORD": scramPassword})
		if r.OK || !strings.Contains(r.Stderr, "channel binding cannot cross the proxy") || !strings.Contains(r.Stderr, "channel_binding=disable") {
			t.Fatalf("want the channel-binding explanation: ok=%v stderr=%q", r.OK, r.Stderr)
		}
		r = pgtest.Psql(t, dsn+" channel_binding=disable", map[string]string{"PGPASSWORD": scramPassword})
		if !r.OK {
			t.Fatalf("channel_binding=disable: stderr=%q", r.Stderr)
		}
	})
	t.Run("pgbench over TCP and the Unix socket", func(t *testing.T) {
		env := map[string]string{"PGHOST": "127.0.0.1", "PGPORT": strconv.Itoa(port), "PGUSER": "app", "PGDATABASE": "appdb", "PGSSLMODE": "disable"}
		if out, err := pgbench(t, env, "-i", "-s", "1", "-q"); err != nil {
			t.Fatalf("pgbench -i: %v\n%s", err, out)
		}
		for _, host := range []string{"127.0.0.1", sockDir} {
			env["PGHOST"] = host
			if host == sockDir {
				env["PGPORT"] = "7432"
			}
			out, err := pgbench(t, env, "-S", "-c", "8", "-j", "2", "-t", "50", "-n")
			if err != nil || !strings.Contains(out, "number of failed transactions: 0") || !strings.Contains(out, "number of transactions actually processed: 400/400") {
				t.Fatalf("pgbench via %s: %v\n%s", host, err, out)
			}
		}
	})
	t.Run("upstream failure is an ErrorResponse with class and fix", func(t *testing.T) {
		r := pgtest.Psql(t, fmt.Sprintf("host=127.0.0.1 port=%d user=app dbname=appdb sslmode=disable", p.port(t, "wrongca")), nil)
		if r.OK || !strings.Contains(r.Stderr, "pgtrust: upstream wrongca: unknown_ca:") || !strings.Contains(r.Stderr, "HINT:") {
			t.Fatalf("want a classified upstream error: ok=%v stderr=%q", r.OK, r.Stderr)
		}
		// The session's failed dial counts once; the health probe that a
		// failed dial triggers may have counted its own by now (the metric
		// covers sessions and probes), so 2 is right too.
		if got := p.metric(t, "pgtrust_upstream_failures_total", map[string]string{"upstream": "wrongca", "class": "unknown_ca"}); got != 1 && got != 2 {
			t.Fatalf("failures metric = %v, want 1 (the session) or 2 (and the probe it triggered)", got)
		}
	})
	t.Run("health status and metrics", func(t *testing.T) {
		hs := p.HealthStatus()
		if hs.Draining || len(hs.Upstreams) != 2 {
			t.Fatalf("health: %+v", hs)
		}
		m := hs.Upstreams[0]
		if m.Name != "main" || m.Status != "healthy" || !m.SSLEnabled || m.SSLMode != "verify-full" || m.SSLVersion != "TLSv1.3" ||
			m.SSLCipher == "" || m.CertificateValidation != "enabled" || m.ClientCertNotAfter == nil || len(m.Listen) != 2 {
			t.Fatalf("main status: %+v", m)
		}
		w := hs.Upstreams[1]
		if w.Status != "unhealthy" || w.LastError == nil || w.LastError.Class != "unknown_ca" {
			t.Fatalf("wrongca status: %+v", w)
		}
		js, _ := json.Marshal(m)
		for _, k := range []string{`"ssl_enabled":true`, `"ssl_version":"TLSv1.3"`, `"certificate_validation":"enabled"`, `"status":"healthy"`} {
			if !strings.Contains(string(js), k) {
				t.Fatalf("JSON %s lacks %s", js, k)
			}
		}
		if ok, why := p.Ready(); !ok {
			t.Fatalf("not ready: %s", why)
		}
		if p.metric(t, "pgtrust_bytes_upstream_to_client_total", map[string]string{"upstream": "main"}) == 0 ||
			p.metric(t, "pgtrust_bytes_client_to_upstream_total", map[string]string{"upstream": "main"}) == 0 ||
			p.metric(t, "pgtrust_upstream_dial_seconds", map[string]string{"upstream": "main"}) == 0 ||
			p.metric(t, "pgtrust_connections_total", map[string]string{"upstream": "main"}) < 10 {
			t.Fatalf("data-path metrics not counted")
		}
		if p.metric(t, "pgtrust_certificate_expiry_timestamp_seconds", map[string]string{"upstream": "main", "certificate": "upstream_client"}) != float64(e.client.Cert.NotAfter.Unix()) {
			t.Fatalf("expiry gauge does not show the client certificate")
		}
		if p.metric(t, "pgtrust_certificate_expiry_timestamp_seconds", map[string]string{"upstream": "main", "certificate": "client_tls_server"}) == 0 {
			t.Fatalf("expiry gauge lacks the client TLS certificate")
		}
	})
	t.Run("one log line per open and close, no secrets", func(t *testing.T) {
		logs := p.logs.String()
		var closed string
		for _, l := range lines(logs) {
			if strings.Contains(l, `msg="session closed"`) && strings.Contains(l, "reason=\"client closed\"") {
				closed = l
				break
			}
		}
		for _, k := range []string{"id=", "client=", "upstream=main", "upstream_tls=TLSv1.3", "upstream_cipher=", "bytes_client_to_upstream=", "bytes_upstream_to_client=", "duration="} {
			if !strings.Contains(closed, k) {
				t.Fatalf("close line %q lacks %s", closed, k)
			}
		}
		if !strings.Contains(logs, `msg="session opened"`) {
			t.Fatal("no open line")
		}
		if strings.Contains(logs, scramPassword) {
			t.Fatal("the log contains a password")
		}
	})
}
