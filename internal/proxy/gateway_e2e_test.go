package proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/internal/authlimit"
	"github.com/pgtrust/pgtrust/internal/identmap"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/pgwire"
	"github.com/pgtrust/pgtrust/internal/scram"
	"github.com/pgtrust/pgtrust/internal/testpki"
	"github.com/pgtrust/pgtrust/pgtls"
)

// The gateway tests' secrets are values internal/secretscan already knows,
// so that the scan of captured logs covers them.
const (
	gwReadWriteSecret = "s3cr3t-pw" // teesql_readwrite's cluster secret
	gwReadSecret      = "hunter2"   // teesql_read's cluster secret
	gwUpReadPW        = "scram-pw"  // the gateway's password for app_read upstream
	gwUpRWPW          = "clear-pw"  // the gateway's password for app_rw upstream
	gwUpCertPW        = "md5-pw"    // the gateway's password for the cert-mode roles
	gwLocalPW         = "pw-secret" // the local proxy's UpstreamAuth password
	gwCertUserAlice   = "alice"     // CN-only certificate
	gwSPIFFE          = "spiffe://example.org/ns/prod/sa/reporter"
)

// gwEnv is a PostgreSQL 15 with the TeeSQL roles, and a gateway in front.
type gwEnv struct {
	*testEnv
	clientCA           *testpki.CA
	rwV, readV         *scram.Verifier
	gwRoot             string // CA file clients use to verify the gateway
	run                *running
	secretPort         int // cluster_secret listener
	passPort           int // passthrough listener
	certPort           int // cert listener
	localPort          int // the local listener with UpstreamAuth
	otherCA            *testpki.CA
	expired, revoked   *testpki.Leaf
	spiffe, dns, alice *testpki.Leaf
	cfg                Config
}

func newGatewayEnv(t *testing.T) *gwEnv {
	t.Helper()
	ca := testpki.NewRootCA(t, "pgtrust gateway test CA")
	server := ca.Server(t)
	srv := pgtest.Start(t, pgtest.Options{
		SSL: true, ServerCert: server.ChainPEM, ServerKey: server.KeyPEM, CA: ca.CertPEM,
		HBA: []string{
			"local all app_read,app_rw trust",
			"hostssl all app_certup 127.0.0.1/32 cert",
			"hostssl all app_read,app_rw,reporter,web,alice,scram 127.0.0.1/32 scram-sha-256",
			"host all all 127.0.0.1/32 reject",
		},
		Setup: []string{
			"CREATE ROLE app_read LOGIN PASSWORD '" + gwUpReadPW + "'",
			"ALTER ROLE app_read SET default_transaction_read_only = on",
			"CREATE ROLE app_rw LOGIN PASSWORD '" + gwUpRWPW + "'",
			"CREATE ROLE reporter LOGIN PASSWORD '" + gwUpCertPW + "'",
			"CREATE ROLE web LOGIN PASSWORD '" + gwUpCertPW + "'",
			"CREATE ROLE alice LOGIN PASSWORD '" + gwUpCertPW + "'",
			"CREATE ROLE scram LOGIN PASSWORD '" + gwLocalPW + "'",
			"CREATE ROLE app_certup LOGIN",
			"CREATE TABLE t (x int)",
			"GRANT SELECT ON t TO app_read",
			"GRANT SELECT, INSERT ON t TO app_rw",
		},
	})
	dir := t.TempDir()
	e := &gwEnv{testEnv: &testEnv{ca: ca, srv: srv, dir: dir,
		rootFile: testpki.WriteFile(t, dir, "root.crt", ca.CertPEM, 0o644)}}
	var err error
	if e.rwV, err = scram.NewVerifier([]byte(gwReadWriteSecret), 4096, nil); err != nil {
		t.Fatal(err)
	}
	if e.readV, err = scram.NewVerifier([]byte(gwReadSecret), 4096, e.rwV.Salt); err != nil {
		t.Fatal(err)
	}

	gwLeaf := ca.Server(t)
	gwCert := testpki.WriteFile(t, dir, "gw.crt", gwLeaf.ChainPEM, 0o644)
	gwKey := testpki.WriteFile(t, dir, "gw.key", gwLeaf.KeyPEM, 0o600)
	e.gwRoot = e.rootFile

	e.clientCA = testpki.NewRootCA(t, "gateway clients CA")
	e.otherCA = testpki.NewRootCA(t, "some other CA")
	e.spiffe = uriLeaf(t, e.clientCA, "workload", gwSPIFFE)
	e.dns = e.clientCA.Client(t, "web client", testpki.WithDNS("web.clients.example"))
	e.alice = e.clientCA.Client(t, gwCertUserAlice)
	e.expired = e.clientCA.Client(t, gwCertUserAlice, testpki.Expired())
	e.revoked = e.clientCA.Client(t, gwCertUserAlice)
	clientCAFile := testpki.WriteFile(t, dir, "clients-ca.crt", e.clientCA.CertPEM, 0o644)
	crlFile := testpki.WriteFile(t, dir, "clients.crl", e.clientCA.CRL(t, e.revoked.Cert), 0o644)
	rules, err := identmap.ParseMapFile(gwSPIFFE + " reporter\n/^(.*)\\.clients\\.example$ \\1\nalice alice\n")
	if err != nil {
		t.Fatal(err)
	}
	idm, err := identmap.NewMap(rules)
	if err != nil {
		t.Fatal(err)
	}

	up := mustParse(t, fmt.Sprintf("host=127.0.0.1 port=%d sslmode=verify-full sslrootcert=%s dbname=postgres", srv.Port, e.rootFile))
	localUp := up.Clone()
	e.cfg = Config{Upstreams: []UpstreamConfig{
		{Name: "db", Conn: up, Gateways: []GatewayConfig{
			{Listen: "127.0.0.1:0", Auth: AuthClusterSecret, CertFile: gwCert, KeyFile: gwKey,
				Roles: []GatewayRole{
					{User: "teesql_read", Role: "app_read", Verifier: e.readV, Password: gwUpReadPW, DowngradeFrom: []string{"teesql_readwrite"}},
					{User: "teesql_readwrite", Role: "app_rw", Verifier: e.rwV, Password: gwUpRWPW},
				},
				// Tiny delays: the test asserts the limiter's computed delay, not time.
				Backoff: backoffForTests()},
			{Listen: "127.0.0.1:0", Auth: AuthPassthrough, CertFile: gwCert, KeyFile: gwKey},
			{Listen: "127.0.0.1:0", Auth: AuthCert, CertFile: gwCert, KeyFile: gwKey,
				ClientCAFile: clientCAFile, ClientCRLFile: crlFile, IdentityMap: idm, UpstreamPassword: gwUpCertPW},
		}},
		{Name: "local", Listen: "127.0.0.1:0", Conn: localUp, Auth: &UpstreamAuth{Role: "scram", Password: gwLocalPW}},
	}}
	e.run = startProxy(t, e.cfg)
	e.secretPort, e.passPort, e.certPort = e.gwPort(t, 0), e.gwPort(t, 1), e.gwPort(t, 2)
	e.localPort = e.run.port(t, "local")
	return e
}

func (e *gwEnv) gwPort(t *testing.T, i int) int {
	t.Helper()
	e.run.mu.Lock()
	defer e.run.mu.Unlock()
	for _, l := range e.run.listeners {
		if l.gw == i {
			return l.ln.Addr().(*net.TCPAddr).Port
		}
	}
	t.Fatalf("no gateway listener %d", i)
	return 0
}

// uriLeaf is a client certificate whose identity is a SAN URI (SPIFFE).
func uriLeaf(t *testing.T, ca *testpki.CA, cn, uri string) *testpki.Leaf {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), URIs: []*url.URL{u},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	pemCert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return &testpki.Leaf{Cert: c, Key: key, CertPEM: pemCert, KeyPEM: testpki.KeyPEMPKCS8(key), ChainPEM: pemCert, Issuer: ca}
}

func (e *gwEnv) dsn(port int, user string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=verify-full sslrootcert=%s", port, user, e.gwRoot)
}

func (e *gwEnv) psql(t *testing.T, port int, user, secret, query, extra string) pgtest.PsqlResult {
	t.Helper()
	env := map[string]string{}
	if secret != "" {
		env["PGPASSWORD"] = secret
	}
	r := pgtest.PsqlQuery(t, e.dsn(port, user)+" "+extra, query, env)
	return r
}

// certFiles writes a client certificate and key for psql.
func (e *gwEnv) certFiles(t *testing.T, l *testpki.Leaf) string {
	t.Helper()
	d := t.TempDir()
	return fmt.Sprintf("sslcert=%s sslkey=%s", testpki.WriteFile(t, d, "c.crt", l.ChainPEM, 0o644), testpki.WriteFile(t, d, "c.key", l.KeyPEM, 0o600))
}

func (e *gwEnv) connect(t *testing.T, port int, user, secret, extra string) (*pgconn.PgConn, error) {
	t.Helper()
	cfg := mustParse(t, e.dsn(port, user)+" connect_timeout=10 "+extra)
	cfg.Password = secret
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	pg, _, err := pgtls.Connect(ctx, cfg, nil)
	return pg, err
}

func exec1(t *testing.T, pg *pgconn.PgConn, sql string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	res, err := pg.Exec(ctx, sql).ReadAll()
	if err != nil {
		return "", err
	}
	if len(res) == 0 || len(res[len(res)-1].Rows) == 0 {
		return "", nil
	}
	return string(res[len(res)-1].Rows[0][0]), nil
}

func sqlstate(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// TestGatewayClusterSecret: psql 15 and pgtls.Connect through the gateway
// with verify-full to a real PostgreSQL, in cluster_secret mode.
func TestGatewayClusterSecret(t *testing.T) {
	e := newGatewayEnv(t)
	const who = "SELECT current_user"

	t.Run("readwrite secret as teesql_readwrite: a write succeeds (psql)", func(t *testing.T) {
		r := e.psql(t, e.secretPort, "teesql_readwrite", gwReadWriteSecret, "INSERT INTO t VALUES (1) RETURNING current_user", "")
		if !r.OK || !strings.HasPrefix(r.Stdout, "app_rw\n") {
			t.Fatalf("psql: ok=%v stdout=%q stderr=%q", r.OK, r.Stdout, r.Stderr)
		}
	})
	t.Run("read secret as teesql_read: a write is refused with 25006 (pgtls.Connect)", func(t *testing.T) {
		pg, err := e.connect(t, e.secretPort, "teesql_read", gwReadSecret, "")
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		defer pg.Close(context.Background())
		if u, err := exec1(t, pg, who); err != nil || u != "app_read" {
			t.Fatalf("current_user %q, %v", u, err)
		}
		_, err = exec1(t, pg, "INSERT INTO t VALUES (2)")
		if sqlstate(err) != "25006" {
			t.Fatalf("write as read: %v, want SQLSTATE 25006", err)
		}
		r := e.psql(t, e.secretPort, "teesql_read", gwReadSecret, "INSERT INTO t VALUES (2)", "")
		if r.OK || !strings.Contains(r.Stderr, "read-only transaction") {
			t.Fatalf("psql write as read: ok=%v stderr=%q", r.OK, r.Stderr)
		}
	})
	t.Run("readwrite secret as teesql_read (downgrade): connects, write refused", func(t *testing.T) {
		before := e.run.metric(t, "pgtrust_gateway_downgrades_total", map[string]string{"user": "teesql_read"})
		pg, err := e.connect(t, e.secretPort, "teesql_read", gwReadWriteSecret, "")
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		defer pg.Close(context.Background())
		if u, err := exec1(t, pg, who); err != nil || u != "app_read" {
			t.Fatalf("current_user %q, %v", u, err)
		}
		if _, err = exec1(t, pg, "INSERT INTO t VALUES (3)"); sqlstate(err) != "25006" {
			t.Fatalf("write after downgrade: %v, want 25006", err)
		}
		if got := e.run.metric(t, "pgtrust_gateway_downgrades_total", map[string]string{"user": "teesql_read"}); got != before+1 {
			t.Fatalf("downgrades %v, want %v", got, before+1)
		}
	})
	t.Run("read secret as teesql_readwrite: 28P01", func(t *testing.T) {
		_, err := e.connect(t, e.secretPort, "teesql_readwrite", gwReadSecret, "")
		if sqlstate(err) != "28P01" || !strings.Contains(err.Error(), `password authentication failed for user "teesql_readwrite"`) {
			t.Fatalf("got %v, want 28P01", err)
		}
		r := e.psql(t, e.secretPort, "teesql_readwrite", gwReadSecret, "SELECT 1", "")
		if r.OK || !strings.Contains(r.Stderr, `password authentication failed for user "teesql_readwrite"`) {
			t.Fatalf("psql: ok=%v stderr=%q", r.OK, r.Stderr)
		}
	})
	t.Run("wrong secret and unknown user: byte-identical answers", func(t *testing.T) {
		known := rawSCRAMFailure(t, e.secretPort, "teesql_read")
		unknown := rawSCRAMFailure(t, e.secretPort, "teesql_nobody")
		if known.errMsg == nil || string(known.errMsg) != string(authFailedResponse("teesql_read")) {
			t.Fatalf("wrong secret answer %q", known.errMsg)
		}
		if string(unknown.errMsg) != string(authFailedResponse("teesql_nobody")) {
			t.Fatalf("unknown user answer %q", unknown.errMsg)
		}
		// A known user with a wrong secret and an unknown user of the same
		// name length: byte for byte the same answer but for the name.
		other := rawSCRAMFailure(t, e.secretPort, "teesql_reaX")
		if len(other.errMsg) != len(known.errMsg) || strings.Replace(string(other.errMsg), "teesql_reaX", "teesql_read", 1) != string(known.errMsg) {
			t.Fatalf("answers differ: %q vs %q", other.errMsg, known.errMsg)
		}
		if known.mechs != unknown.mechs || known.iterations != unknown.iterations || known.saltLen != unknown.saltLen {
			t.Fatalf("exchanges differ: known %+v unknown %+v", known, unknown)
		}
	})
	t.Run("channel_binding=require works (psql and pgtls/pgx)", func(t *testing.T) {
		r := e.psql(t, e.secretPort, "teesql_readwrite", gwReadWriteSecret, who, "channel_binding=require")
		if !r.OK || strings.TrimSpace(r.Stdout) != "app_rw" {
			t.Fatalf("psql: ok=%v stdout=%q stderr=%q", r.OK, r.Stdout, r.Stderr)
		}
		pg, err := e.connect(t, e.secretPort, "teesql_readwrite", gwReadWriteSecret, "channel_binding=require")
		if err != nil {
			t.Fatalf("pgtls channel_binding=require: %v", err)
		}
		pg.Close(context.Background())
		// pgx's own connection path (pgconn.ParseConfig), not only pgtls's.
		pcfg, err := pgconn.ParseConfig(e.dsn(e.secretPort, "teesql_readwrite") + " channel_binding=require connect_timeout=10")
		if err != nil {
			t.Fatal(err)
		}
		pcfg.Password = gwReadWriteSecret
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		pg, err = pgconn.ConnectConfig(ctx, pcfg)
		if err != nil {
			t.Fatalf("pgx channel_binding=require: %v", err)
		}
		pg.Close(context.Background())
		if n := e.run.metric(t, "pgtrust_gateway_auth_total", map[string]string{"mode": "cluster_secret", "result": "success"}); n < 3 {
			t.Fatalf("auth successes %v", n)
		}
		if !strings.Contains(e.run.logs.String(), "SCRAM-SHA-256-PLUS") {
			t.Fatalf("no session logged with SCRAM-SHA-256-PLUS")
		}
	})
	t.Run("direct TLS with ALPN postgresql (pgtls, sslnegotiation=direct)", func(t *testing.T) {
		pg, err := e.connect(t, e.secretPort, "teesql_readwrite", gwReadWriteSecret, "sslnegotiation=direct channel_binding=require")
		if err != nil {
			t.Fatalf("direct TLS: %v", err)
		}
		defer pg.Close(context.Background())
		if u, err := exec1(t, pg, who); err != nil || u != "app_rw" {
			t.Fatalf("current_user %q, %v", u, err)
		}
	})
	t.Run("TLS 1.1 refused", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", e.secretPort), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		ssl, _ := (&pgproto3.SSLRequest{}).Encode(nil)
		if _, err := c.Write(ssl); err != nil {
			t.Fatal(err)
		}
		var b [1]byte
		if _, err := c.Read(b[:]); err != nil || b[0] != 'S' {
			t.Fatalf("SSLRequest answer %q, %v", b[0], err)
		}
		tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}) // only the version is under test
		if err := tc.Handshake(); err == nil {
			t.Fatal("a TLS 1.1 handshake succeeded")
		}
	})
	t.Run("channel_binding=require fails in passthrough, with the reason", func(t *testing.T) {
		r := e.psql(t, e.passPort, "app_rw", gwUpRWPW, who, "channel_binding=require")
		if r.OK || !strings.Contains(r.Stderr, "channel binding is required, but server did not offer") {
			t.Fatalf("psql: ok=%v stdout=%q stderr=%q", r.OK, r.Stdout, r.Stderr)
		}
		waitFor(t, "the reason in the log", 10*time.Second, func() bool {
			return strings.Contains(e.run.logs.String(), "channel binding cannot cross passthrough")
		})
		// Without binding, passthrough is today's proxy behaviour.
		r = e.psql(t, e.passPort, "app_rw", gwUpRWPW, who, "channel_binding=disable")
		if !r.OK || strings.TrimSpace(r.Stdout) != "app_rw" {
			t.Fatalf("passthrough psql: ok=%v stdout=%q stderr=%q", r.OK, r.Stdout, r.Stderr)
		}
	})
	t.Run("plaintext startup refused with sslmode advice", func(t *testing.T) {
		r := pgtest.PsqlQuery(t, fmt.Sprintf("host=127.0.0.1 port=%d user=teesql_read dbname=postgres sslmode=disable", e.secretPort), "SELECT 1",
			map[string]string{"PGPASSWORD": gwReadSecret})
		if r.OK || !strings.Contains(r.Stderr, "sslmode=require") {
			t.Fatalf("psql: ok=%v stderr=%q", r.OK, r.Stderr)
		}
	})
	t.Run("bytes injected after SSLRequest refused", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", e.secretPort), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		ssl, _ := (&pgproto3.SSLRequest{}).Encode(nil)
		startup, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "teesql_read"}}).Encode(nil)
		if _, err := c.Write(append(ssl, startup...)); err != nil {
			t.Fatal(err)
		}
		msg, err := pgwire.ReadMessage(c, nil, 1<<16)
		if err != nil || msg[0] != 'E' || !strings.Contains(string(msg), "unencrypted data after SSL request") {
			t.Fatalf("got %q, %v", msg, err)
		}
	})
	t.Run("cancel goes upstream with the real key", func(t *testing.T) {
		pg, err := e.connect(t, e.secretPort, "teesql_readwrite", gwReadWriteSecret, "")
		if err != nil {
			t.Fatal(err)
		}
		defer pg.Close(context.Background())
		gwPID := pg.PID()
		backend, err := exec1(t, pg, "SELECT pg_backend_pid()")
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(gwPID) == backend {
			t.Fatalf("the client sees the upstream's pid %s: the key must be the gateway's", backend)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			_, err := pg.Exec(ctx, "SELECT pg_sleep(60)").ReadAll()
			done <- err
		}()
		waitFor(t, "the query to run", 10*time.Second, func() bool {
			out := e.srv.Exec(t, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'")
			return strings.TrimSpace(out) == "1"
		})
		cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer ccancel()
		if err := pg.CancelRequest(cctx); err != nil {
			t.Fatalf("cancel: %v", err)
		}
		select {
		case err := <-done:
			if sqlstate(err) != "57014" {
				t.Fatalf("query ended with %v, want 57014", err)
			}
		case <-time.After(30 * time.Second):
			cancel()
			t.Fatal("the cancel did not reach the upstream")
		}
		cancel()
		if n := e.run.metric(t, "pgtrust_cancel_requests_total", map[string]string{"result": "forwarded"}); n < 1 {
			t.Fatalf("forwarded cancels %v", n)
		}
	})
	t.Run("200 wrong secrets from one source back off; another source connects", func(t *testing.T) {
		lim := e.run.upstreams[0].limiters[0]
		other := limiterKey("127.0.0.2", "teesql_read")
		if d := lim.Delay(other); d != 0 {
			t.Fatalf("fresh source delayed %v", d)
		}
		for i := 0; i < 200; i++ {
			rawSCRAMFailure(t, e.secretPort, "teesql_read")
		}
		// teesql_read tests its own secret and teesql_readwrite's (downgrade).
		for _, u := range []string{"teesql_read", "teesql_readwrite"} {
			if d := lim.Delay(limiterKey("127.0.0.1", u)); d <= 0 {
				t.Fatalf("after 200 failures the source's delay for %s is %v", u, d)
			}
		}
		if d := lim.Delay(other); d != 0 {
			t.Fatalf("another source delayed %v", d)
		}
		if n := e.run.metric(t, "pgtrust_gateway_auth_delayed_total", nil); n < 150 {
			t.Fatalf("delayed attempts %v, want most of 200", n)
		}
		// Another source address: not delayed, connects.
		cfg, err := pgconn.ParseConfig(e.dsn(e.secretPort, "teesql_readwrite") + " connect_timeout=10")
		if err != nil {
			t.Fatal(err)
		}
		cfg.Password = gwReadWriteSecret
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 5 * time.Second}
		cfg.DialFunc = d.DialContext
		delayedBefore := e.run.metric(t, "pgtrust_gateway_auth_delayed_total", nil)
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		pg, err := pgconn.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatalf("other source: %v", err)
		}
		pg.Close(context.Background())
		if got := e.run.metric(t, "pgtrust_gateway_auth_delayed_total", nil); got != delayedBefore {
			t.Fatalf("the other source was delayed")
		}
	})
	t.Run("logs: one line per session with the identity, no secret or verifier", func(t *testing.T) {
		logs := e.run.logs.String()
		if !strings.Contains(logs, "client_identity=\"teesql_read (downgrade from teesql_readwrite) SCRAM-SHA-256") {
			t.Fatalf("no downgrade identity in the log:\n%s", logs)
		}
		for _, v := range []*scram.Verifier{e.rwV, e.readV} {
			for _, s := range []string{v.String(), base64.StdEncoding.EncodeToString(v.StoredKey[:]), base64.StdEncoding.EncodeToString(v.ServerKey[:])} {
				if strings.Contains(logs, s) {
					t.Fatalf("a verifier reached the log")
				}
			}
		}
		for _, s := range []string{gwReadSecret, gwReadWriteSecret, gwUpReadPW, gwUpRWPW} {
			if strings.Contains(logs, s) {
				t.Fatalf("a secret reached the log")
			}
		}
	})
}

// TestGatewayCertMode: certificate identities (SPIFFE URI, DNS SAN, CN)
// map to roles; other CA, expired and revoked certificates are refused in
// the handshake.
func TestGatewayCertMode(t *testing.T) {
	e := newGatewayEnv(t)
	const who = "SELECT current_user"
	for _, c := range []struct {
		name string
		leaf *testpki.Leaf
		user string
	}{{"SPIFFE URI", e.spiffe, "reporter"}, {"DNS SAN with \\1", e.dns, "web"}, {"CN only", e.alice, "alice"}} {
		t.Run(c.name, func(t *testing.T) {
			r := e.psql(t, e.certPort, c.user, "", who, e.certFiles(t, c.leaf))
			if !r.OK || strings.TrimSpace(r.Stdout) != c.user {
				t.Fatalf("psql: ok=%v stdout=%q stderr=%q", r.OK, r.Stdout, r.Stderr)
			}
		})
	}
	t.Run("identity not mapped to the requested role: 28000", func(t *testing.T) {
		r := e.psql(t, e.certPort, "alice", "", who, e.certFiles(t, e.spiffe))
		if r.OK || !strings.Contains(r.Stderr, `certificate authentication failed for user "alice"`) {
			t.Fatalf("psql: ok=%v stderr=%q", r.OK, r.Stderr)
		}
	})
	for _, c := range []struct {
		name string
		leaf *testpki.Leaf
	}{{"other CA", e.otherCA.Client(t, gwCertUserAlice)}, {"expired", e.expired}, {"revoked", e.revoked}} {
		t.Run(c.name+" refused in the handshake", func(t *testing.T) {
			before := e.run.metric(t, "pgtrust_gateway_auth_total", map[string]string{"mode": "cert", "reason": "client_certificate"})
			r := e.psql(t, e.certPort, "alice", "", who, e.certFiles(t, c.leaf))
			if r.OK || !strings.Contains(r.Stderr, "SSL") {
				t.Fatalf("psql: ok=%v stderr=%q", r.OK, r.Stderr)
			}
			if got := e.run.metric(t, "pgtrust_gateway_auth_total", map[string]string{"mode": "cert", "reason": "client_certificate"}); got != before+1 {
				t.Fatalf("client_certificate refusals %v, want %v", got, before+1)
			}
		})
	}
	t.Run("no certificate refused", func(t *testing.T) {
		r := e.psql(t, e.certPort, "alice", "", who, "")
		if r.OK {
			t.Fatalf("psql without a certificate connected: %q", r.Stdout)
		}
	})
}

// TestProxyUpstreamAuth: a local application without database credentials
// connects as the configured role.
func TestProxyUpstreamAuth(t *testing.T) {
	e := newGatewayEnv(t)
	r := pgtest.PsqlQuery(t, fmt.Sprintf("host=127.0.0.1 port=%d user=whoever dbname=postgres sslmode=disable", e.localPort), "SELECT current_user", nil)
	if !r.OK || strings.TrimSpace(r.Stdout) != "scram" {
		t.Fatalf("psql: ok=%v stdout=%q stderr=%q", r.OK, r.Stdout, r.Stderr)
	}
}

// scramTrace is what a raw client saw of a failed SCRAM exchange.
type scramTrace struct {
	mechs      string
	iterations string
	saltLen    int
	errMsg     []byte
}

// rawSCRAMFailure runs a SCRAM exchange with a well-formed but wrong proof
// over TLS and returns the gateway's messages (the ErrorResponse raw).
func rawSCRAMFailure(t *testing.T, port int, user string) scramTrace {
	t.Helper()
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	ssl, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	if _, err := c.Write(ssl); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := c.Read(b[:]); err != nil || b[0] != 'S' {
		t.Fatalf("SSLRequest answer %q, %v", b[0], err)
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true}) // the test checks the answers, not the server
	startup, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": user, "database": "postgres"}}).Encode(nil)
	if _, err := tc.Write(startup); err != nil {
		t.Fatal(err)
	}
	var tr scramTrace
	msg, err := pgwire.ReadMessage(tc, nil, 1<<16)
	if err != nil || msg[0] != 'R' {
		t.Fatalf("want AuthenticationSASL, got %q %v", msg, err)
	}
	var sasl pgproto3.AuthenticationSASL
	if err := sasl.Decode(msg[5:]); err != nil {
		t.Fatal(err)
	}
	tr.mechs = strings.Join(sasl.AuthMechanisms, ",")
	nonce := "rOprNGfwEbeRWgbNEkqO"
	ir, _ := (&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=" + nonce)}).Encode(nil)
	if _, err := tc.Write(ir); err != nil {
		t.Fatal(err)
	}
	msg, err = pgwire.ReadMessage(tc, nil, 1<<16)
	if err != nil || msg[0] != 'R' {
		t.Fatalf("want SASLContinue, got %q %v", msg, err)
	}
	var cont pgproto3.AuthenticationSASLContinue
	if err := cont.Decode(msg[5:]); err != nil {
		t.Fatal(err)
	}
	var serverNonce string
	for _, kv := range strings.Split(string(cont.Data), ",") {
		switch {
		case strings.HasPrefix(kv, "r="):
			serverNonce = kv[2:]
		case strings.HasPrefix(kv, "s="):
			s, _ := base64.StdEncoding.DecodeString(kv[2:])
			tr.saltLen = len(s)
		case strings.HasPrefix(kv, "i="):
			tr.iterations = kv[2:]
		}
	}
	proof := make([]byte, 32)
	_, _ = rand.Read(proof)
	final, _ := (&pgproto3.SASLResponse{Data: []byte("c=biws,r=" + serverNonce + ",p=" + base64.StdEncoding.EncodeToString(proof))}).Encode(nil)
	if _, err := tc.Write(final); err != nil {
		t.Fatal(err)
	}
	msg, err = pgwire.ReadMessage(tc, nil, 1<<16)
	if err != nil {
		t.Fatalf("want ErrorResponse: %v", err)
	}
	tr.errMsg = msg
	return tr
}

func backoffForTests() (o authlimit.Options) {
	o.Base, o.Max = time.Microsecond, time.Millisecond
	return o
}

// TestGatewayReloadVerifiers: a reload swaps the role table for new
// sessions; the limiters and listeners stay.
func TestGatewayReloadVerifiers(t *testing.T) {
	e := newGatewayEnv(t)
	if _, err := e.connect(t, e.secretPort, "teesql_readwrite", gwReadWriteSecret, ""); err != nil {
		t.Fatalf("before reload: %v", err)
	}
	// teesql_readwrite now opens with the (former read) secret "hunter2".
	nv, err := scram.NewVerifier([]byte(gwReadSecret), 4096, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := e.cfg
	ups := append([]UpstreamConfig(nil), cfg.Upstreams...)
	gws := append([]GatewayConfig(nil), ups[0].Gateways...)
	gws[0].Roles = []GatewayRole{{User: "teesql_readwrite", Role: "app_rw", Verifier: nv, Password: gwUpRWPW}}
	ups[0].Gateways = gws
	cfg.Upstreams = ups
	cfg.Logger, cfg.Registerer = nil, nil
	if err := e.run.Reload(&cfg); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if _, err := e.connect(t, e.secretPort, "teesql_readwrite", gwReadWriteSecret, ""); sqlstate(err) != "28P01" {
		t.Fatalf("old secret after reload: %v", err)
	}
	pg, err := e.connect(t, e.secretPort, "teesql_readwrite", gwReadSecret, "")
	if err != nil {
		t.Fatalf("new secret after reload: %v", err)
	}
	pg.Close(context.Background())
	// A reload may not move a gateway listener.
	gws2 := append([]GatewayConfig(nil), gws...)
	gws2[0].Listen = "127.0.0.1:1"
	ups[0].Gateways = gws2
	if err := e.run.Reload(&cfg); err == nil {
		t.Fatal("a reload moved a gateway listener")
	}
}

// TestGatewayUnixSocketTrust: the gateway opens the upstream over a local
// Unix socket with trust, no password of its own.
func TestGatewayUnixSocketTrust(t *testing.T) {
	e := newGatewayEnv(t)
	dir := t.TempDir()
	gw := e.ca.Server(t)
	up := mustParse(t, fmt.Sprintf("host=%s port=%d dbname=postgres sslmode=disable", e.srv.SocketDir, e.srv.Port))
	r := startProxy(t, Config{Upstreams: []UpstreamConfig{{Name: "sock", Conn: up, PlaintextIntended: true, Gateways: []GatewayConfig{{
		Listen: "127.0.0.1:0", Auth: AuthClusterSecret,
		CertFile: testpki.WriteFile(t, dir, "gw.crt", gw.ChainPEM, 0o644), KeyFile: testpki.WriteFile(t, dir, "gw.key", gw.KeyPEM, 0o600),
		Roles: []GatewayRole{{User: "teesql_readwrite", Role: "app_rw", Verifier: e.rwV}},
	}}}}})
	port := r.Addrs()["sock"][0].(*net.TCPAddr).Port
	pg, err := e.connect(t, port, "teesql_readwrite", gwReadWriteSecret, "")
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer pg.Close(context.Background())
	if u, err := exec1(t, pg, "SELECT current_user || ' ' || coalesce(inet_client_addr()::text, 'unix')"); err != nil || u != "app_rw unix" {
		t.Fatalf("got %q, %v", u, err)
	}
}

// TestGatewayUpstreamClientCert: the gateway logs in upstream with the
// client certificate of its dsn (sslcert/sslkey), PostgreSQL's cert method.
func TestGatewayUpstreamClientCert(t *testing.T) {
	e := newGatewayEnv(t)
	dir := t.TempDir()
	gw := e.ca.Server(t)
	cl := e.ca.Client(t, "app_certup")
	up := mustParse(t, fmt.Sprintf("host=127.0.0.1 port=%d dbname=postgres sslmode=verify-full sslrootcert=%s sslcert=%s sslkey=%s",
		e.srv.Port, e.rootFile, testpki.WriteFile(t, dir, "up.crt", cl.ChainPEM, 0o644), testpki.WriteFile(t, dir, "up.key", cl.KeyPEM, 0o600)))
	r := startProxy(t, Config{Upstreams: []UpstreamConfig{{Name: "c", Conn: up, Gateways: []GatewayConfig{{
		Listen: "127.0.0.1:0", Auth: AuthClusterSecret,
		CertFile: testpki.WriteFile(t, dir, "gw.crt", gw.ChainPEM, 0o644), KeyFile: testpki.WriteFile(t, dir, "gw.key", gw.KeyPEM, 0o600),
		Roles: []GatewayRole{{User: "teesql_readwrite", Role: "app_certup", Verifier: e.rwV}},
	}}}}})
	port := r.Addrs()["c"][0].(*net.TCPAddr).Port
	pg, err := e.connect(t, port, "teesql_readwrite", gwReadWriteSecret, "")
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer pg.Close(context.Background())
	q := "SELECT current_user || ' ' || (SELECT client_serial::text FROM pg_stat_ssl WHERE pid = pg_backend_pid())"
	if u, err := exec1(t, pg, q); err != nil || u != "app_certup "+cl.Cert.SerialNumber.String() {
		t.Fatalf("got %q, %v", u, err)
	}
}
