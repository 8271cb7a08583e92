package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/testpki"
	"github.com/pgtrust/pgtrust/internal/vaulttest"
)

// vaultRootToken is secretscan's known Vault token, so a leak into a log fails the scan.
const vaultRootToken = "hvs.R2-vault-Token-secret-1"

// vaultEnv is the Vault double issuing client certificates for PostgreSQL
// user app, and a real PostgreSQL 15 that accepts only certificates of
// the double's CA (cert clientcert=verify-full).
type vaultEnv struct {
	vault    *vaulttest.Server
	fwd      *forwarder // Vault's address as the proxy sees it: can be stopped and restarted
	srv      *pgtest.Server
	rootFile string // the PostgreSQL server's CA (sslrootcert)
	vaultCA  string // the double's root, for clients of a Vault-issued server certificate
}

func pemOf(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func newVaultEnv(t *testing.T) *vaultEnv {
	t.Helper()
	v, err := vaulttest.New(vaulttest.Options{Roles: []vaulttest.Role{
		{Name: "epoch-client", MaxTTL: 24 * time.Hour, AllowIPSANs: true},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	v.AddToken(vaultRootToken, 0, false)
	ca := testpki.NewRootCA(t, "pgtrust renewal test server CA")
	server := ca.Server(t)
	vaultCAs := append(pemOf(v.Root), pemOf(v.Issuing)...)
	srv := pgtest.Start(t, pgtest.Options{
		SSL: true, ServerCert: server.ChainPEM, ServerKey: server.KeyPEM, CA: vaultCAs,
		HBA: []string{
			"hostssl all scram 127.0.0.1/32 scram-sha-256",
			"hostssl all all 127.0.0.1/32 cert clientcert=verify-full",
		},
		Setup: []string{"CREATE ROLE app LOGIN", "CREATE DATABASE appdb OWNER app",
			"CREATE ROLE scram LOGIN PASSWORD '" + scramPassword + "'"},
	})
	dir := t.TempDir()
	return &vaultEnv{vault: v, fwd: newForwarder(t, v.Listener.Addr().String()), srv: srv,
		rootFile: testpki.WriteFile(t, dir, "root.crt", ca.CertPEM, 0o644),
		vaultCA:  testpki.WriteFile(t, dir, "vault-root.crt", pemOf(v.Root), 0o644)}
}

// renewal is a client-certificate Renewal from the double through the forwarder.
func (e *vaultEnv) renewal(t *testing.T, key, cn string, ttl time.Duration, o certs.RenewOptions) *Renewal {
	t.Helper()
	vo := certs.VaultOptions{Address: "http://" + e.fwd.addr, Mount: "pki", Role: "epoch-client", CommonName: cn, TTL: ttl,
		Token: vaultRootToken, RequestTimeout: 2 * time.Second}
	return &Renewal{Key: key, Options: o, NewIssuer: func(_ *slog.Logger) (certs.Issuer, error) { return certs.NewVaultIssuer(vo) }}
}

func (e *vaultEnv) conn(t *testing.T) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=app dbname=appdb sslmode=verify-full sslrootcert=%s", e.srv.Port, e.rootFile)
}

// forwarder is a TCP relay in front of the Vault double: Stop makes Vault
// unreachable (connection refused, existing connections cut), Start brings
// it back on the same address.
type forwarder struct {
	target, addr string
	mu           sync.Mutex
	ln           net.Listener
	conns        map[net.Conn]bool
}

func newForwarder(t *testing.T, target string) *forwarder {
	t.Helper()
	f := &forwarder{target: target, conns: map[net.Conn]bool{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = ln.Addr().String()
	f.serve(ln)
	t.Cleanup(f.Stop)
	return f
}

func (f *forwarder) serve(ln net.Listener) {
	f.mu.Lock()
	f.ln = ln
	f.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.DialTimeout("tcp", f.target, 2*time.Second)
			if err != nil {
				c.Close()
				continue
			}
			f.mu.Lock()
			f.conns[c], f.conns[up] = true, true
			f.mu.Unlock()
			go func() { _, _ = io.Copy(up, c); up.Close() }()
			go func() { _, _ = io.Copy(c, up); c.Close() }()
		}
	}()
}

func (f *forwarder) Stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ln != nil {
		f.ln.Close()
		f.ln = nil
	}
	for c := range f.conns {
		c.Close()
	}
	f.conns = map[net.Conn]bool{}
}

func (f *forwarder) Start(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", f.addr)
	if err != nil {
		t.Fatalf("restart the Vault forwarder on %s: %v", f.addr, err)
	}
	f.serve(ln)
}

// clientSerial is pg_stat_ssl.client_serial of a new psql session
// through the proxy, as hex (certs.SerialHex's form).
func clientSerial(t *testing.T, port int) string {
	t.Helper()
	r := pgtest.PsqlQuery(t, fmt.Sprintf("host=127.0.0.1 port=%d user=app dbname=appdb sslmode=disable", port),
		"SELECT client_serial FROM pg_stat_ssl WHERE pid = pg_backend_pid()", nil)
	if !r.OK {
		t.Fatalf("psql through the proxy: exit %d\n%s%s", r.ExitCode, r.Stdout, r.Stderr)
	}
	n, ok := new(big.Int).SetString(strings.TrimSpace(r.Stdout), 10)
	if !ok {
		t.Fatalf("client_serial %q", r.Stdout)
	}
	return fmt.Sprintf("%x", n)
}

func (r *running) renewHandle(t *testing.T, name string) *renewHandle {
	t.Helper()
	r.renewMu.Lock()
	defer r.renewMu.Unlock()
	h := r.renewing[name]
	if h == nil {
		t.Fatalf("no renewing source %q (running: %v)", name, r.renewing)
	}
	return h
}

// A proxy upstream whose client certificate comes from Vault: psql gets
// through; a forced renewal changes pg_stat_ssl.client_serial for new
// sessions while an open one keeps working; a reload with the same table
// asks Vault for nothing; two upstreams on one Vault keep their own series.
func TestRenewalVaultClientCertificate(t *testing.T) {
	e := newVaultEnv(t)
	mk := func(name string) UpstreamConfig {
		return UpstreamConfig{Name: name, Listen: "127.0.0.1:0", Conn: mustParse(t, e.conn(t)),
			ClientRenewal: e.renewal(t, "k1", "app", time.Hour, certs.RenewOptions{})}
	}
	cfg := Config{Upstreams: []UpstreamConfig{mk("x"), mk("y")}}
	r := startProxy(t, cfg)
	port := r.port(t, "x")
	h := r.renewHandle(t, "upstream x client certificate")

	first := clientSerial(t, port)
	if first != h.src.Status().Serial {
		t.Fatalf("client_serial %s, the source's certificate %s", first, h.src.Status().Serial)
	}
	old, err := pgxConnect(t, port, "sslmode=disable")
	if err != nil {
		t.Fatalf("pgx through the proxy: %v", err)
	}
	defer old.Close(context.Background())

	if err := h.src.Reload(); err != nil {
		t.Fatalf("forced renewal: %v", err)
	}
	second := clientSerial(t, port)
	if second == first || second != h.src.Status().Serial {
		t.Fatalf("after renewal: client_serial %s (before %s), source %s", second, first, h.src.Status().Serial)
	}
	var one int
	if err := old.QueryRow(context.Background(), "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("the session opened before the renewal: %v", err)
	}
	if n := r.metric(t, "pgtrust_cert_renewals_total", map[string]string{"source": "upstream x client certificate"}); n != 1 {
		t.Fatalf("renewals of x: %v, want 1", n)
	}
	if n := r.metric(t, "pgtrust_cert_renewals_total", map[string]string{"source": "upstream y client certificate"}); n != 0 {
		t.Fatalf("renewals of y: %v, want 0 (series collide)", n)
	}
	hs := r.HealthStatus()
	if rs := hs.Upstreams[0].ClientCertRenewal; rs == nil || rs.Issuer != "vault" || rs.Renewals != 1 || rs.NextRenewal.IsZero() || rs.LastSuccess.IsZero() || rs.Serial != second {
		t.Fatalf("health renewal status: %+v", rs)
	}

	// Reload with the same table: the same source, no issue request.
	issues := e.vault.CountPath("pki/issue/epoch-client")
	if err := r.Reload(&cfg); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if got := e.vault.CountPath("pki/issue/epoch-client"); got != issues {
		t.Fatalf("a reload with unchanged tables made %d issue request(s)", got-issues)
	}
	if r.renewHandle(t, "upstream x client certificate") != h || clientSerial(t, port) != second {
		t.Fatal("a reload with an unchanged table replaced the source or its certificate")
	}
	// A changed table starts a new source (and stops the old one).
	cfg2 := Config{Upstreams: []UpstreamConfig{mk("x"), mk("y")}}
	cfg2.Upstreams[0].ClientRenewal = e.renewal(t, "k2", "app", 2*time.Hour, certs.RenewOptions{})
	if err := r.Reload(&cfg2); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if h2 := r.renewHandle(t, "upstream x client certificate"); h2 == h {
		t.Fatal("a changed table kept the old source")
	}
	if third := clientSerial(t, port); third == second {
		t.Fatal("a changed table kept the old certificate")
	}
}

// Vault unreachable until the certificate expires: /readyz's Ready turns
// false naming renewal_expired, a new psql session is refused with
// renewal_expired (its evidence and fix in the ErrorResponse, the class in
// the log); with Vault back the source renews and the proxy recovers.
func TestRenewalVaultExpiredThenRecovers(t *testing.T) {
	e := newVaultEnv(t)
	// Vault back-dates NotBefore by 30s: a 6s TTL is a 36s lifetime,
	// renewed after 95% of it, i.e. about 4s after the issue.
	o := certs.RenewOptions{Threshold: 0.95, Jitter: 0.01, BackoffBase: 200 * time.Millisecond, BackoffMax: time.Second}
	r := startProxy(t, Config{Upstreams: []UpstreamConfig{{Name: "x", Listen: "127.0.0.1:0", Conn: mustParse(t, e.conn(t)),
		ClientRenewal: e.renewal(t, "k", "app", 6*time.Second, o)}}})
	port := r.port(t, "x")
	if s := clientSerial(t, port); s == "" {
		t.Fatal("no serial")
	}
	e.fwd.Stop()
	h := r.renewHandle(t, "upstream x client certificate")
	waitFor(t, "the certificate to expire", 30*time.Second, func() bool { ok, _ := r.Ready(); return !ok })
	ok, reason := r.Ready()
	if ok || !strings.Contains(reason, "renewal_expired") || !strings.Contains(reason, "upstream x") {
		t.Fatalf("Ready = %v, %q", ok, reason)
	}
	t.Logf("readiness: %s", reason)
	res := pgtest.PsqlQuery(t, fmt.Sprintf("host=127.0.0.1 port=%d user=app dbname=appdb sslmode=disable", port), "SELECT 1", nil)
	if res.OK || !strings.Contains(res.Stderr, "renewal_expired") || !strings.Contains(res.Stderr, "DETAIL:") || !strings.Contains(res.Stderr, "HINT:") {
		t.Fatalf("psql with an expired certificate: exit %d\n%s%s", res.ExitCode, res.Stdout, res.Stderr)
	}
	t.Logf("psql: %s", res.Stderr)
	// The refusal reaches psql before the session's log line is written.
	waitFor(t, "the proxy log to carry class=renewal_expired", 10*time.Second, func() bool {
		return strings.Contains(r.logs.String(), "class=renewal_expired")
	})
	if st := h.src.Status(); st.Failures == 0 {
		t.Fatalf("no failed renewal recorded: %+v", st)
	}
	hs := r.HealthStatus()
	if rs := hs.Upstreams[0].ClientCertRenewal; rs == nil || rs.LastClass != certs.RenewalExpired || rs.Failures == 0 {
		t.Fatalf("health renewal status: %+v", rs)
	}

	e.fwd.Start(t)
	waitFor(t, "the proxy to recover", 30*time.Second, func() bool { ok, _ := r.Ready(); return ok })
	if s := clientSerial(t, port); s != h.src.Status().Serial {
		t.Fatalf("after recovery: client_serial %s, source %s", s, h.src.Status().Serial)
	}
}

// A gateway listener whose server certificate comes from Vault: psql with
// sslmode=verify-full gets through, a TLS client sees the Vault-issued
// serial, and a renewal changes it for new connections.
func TestRenewalVaultGatewayServerCertificate(t *testing.T) {
	e := newVaultEnv(t)
	vo := certs.VaultOptions{Address: "http://" + e.fwd.addr, Mount: "pki", Role: "epoch-client", CommonName: "localhost",
		IPSANs: []net.IP{net.ParseIP("127.0.0.1")}, Token: vaultRootToken, TTL: time.Hour}
	ren := &Renewal{Key: "gw", NewIssuer: func(_ *slog.Logger) (certs.Issuer, error) { return certs.NewVaultIssuer(vo) }}
	conn := mustParse(t, fmt.Sprintf("host=127.0.0.1 port=%d dbname=postgres sslmode=verify-full sslrootcert=%s sslcertmode=disable", e.srv.Port, e.rootFile))
	r := startProxy(t, Config{Upstreams: []UpstreamConfig{{Name: "db", Conn: conn,
		Gateways: []GatewayConfig{{Listen: "127.0.0.1:0", Auth: AuthPassthrough, Renewal: ren}}}}})
	port := r.port(t, "db")
	h := r.renewHandle(t, "upstream db gateway 127.0.0.1:0 server certificate")

	res := pgtest.PsqlQuery(t, fmt.Sprintf("host=127.0.0.1 port=%d user=scram password=%s dbname=postgres channel_binding=disable sslmode=verify-full sslrootcert=%s", port, scramPassword, e.vaultCA), "SELECT 1", nil)
	if !res.OK {
		t.Fatalf("psql verify-full to the gateway: exit %d\n%s%s", res.ExitCode, res.Stdout, res.Stderr)
	}
	first := gatewaySerial(t, port, e.vault.RootPool())
	if first != h.src.Status().Serial {
		t.Fatalf("gateway shows serial %s, the source holds %s", first, h.src.Status().Serial)
	}
	if err := h.src.Reload(); err != nil {
		t.Fatal(err)
	}
	second := gatewaySerial(t, port, e.vault.RootPool())
	if second == first || second != h.src.Status().Serial {
		t.Fatalf("after renewal the gateway shows %s (before %s, source %s)", second, first, h.src.Status().Serial)
	}
	hs := r.HealthStatus()
	if len(hs.Gateways) != 1 || hs.Gateways[0].CertificateRenewal == nil || hs.Gateways[0].CertificateRenewal.Renewals != 1 {
		t.Fatalf("gateway health: %+v", hs.Gateways)
	}
}

// gatewaySerial opens direct TLS (ALPN postgresql) to the gateway,
// verifying it as verify-full does for 127.0.0.1, and returns the serial.
func gatewaySerial(t *testing.T, port int, roots *x509.CertPool) string {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", fmt.Sprintf("127.0.0.1:%d", port), &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", NextProtos: []string{"postgresql"}})
	if err != nil {
		t.Fatalf("TLS to the gateway: %v", err)
	}
	defer c.Close()
	return certs.SerialHex(c.ConnectionState().PeerCertificates[0])
}

// Under 8-client pgbench load with a new connection per transaction, the
// source renews at least 3 times (short Vault TTL) with zero failed
// transactions; new sessions show each new serial and the metrics count
// each renewal.
func TestRenewalVaultUnderPgbench(t *testing.T) {
	e := newVaultEnv(t)
	// A 6s TTL is a 36s lifetime (NotBefore back-dated 30s): renewal about
	// every 4s at threshold 0.95.
	o := certs.RenewOptions{Threshold: 0.95, Jitter: 0.01, BackoffBase: 200 * time.Millisecond, BackoffMax: time.Second}
	r := startProxy(t, Config{Upstreams: []UpstreamConfig{{Name: "x", Listen: "127.0.0.1:0", Conn: mustParse(t, e.conn(t)),
		ClientRenewal: e.renewal(t, "k", "app", 6*time.Second, o)}}})
	port := r.port(t, "x")
	script := filepath.Join(t.TempDir(), "serial.sql")
	if err := os.WriteFile(script, []byte("SELECT client_serial FROM pg_stat_ssl WHERE pid = pg_backend_pid();\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"PGHOST": "127.0.0.1", "PGPORT": fmt.Sprint(port), "PGUSER": "app", "PGDATABASE": "appdb", "PGSSLMODE": "disable"}
	serials := map[string]bool{}
	renewals := func() float64 {
		return r.metric(t, "pgtrust_cert_renewals_total", map[string]string{"source": "upstream x client certificate"})
	}
	deadline := time.Now().Add(90 * time.Second)
	runs, txns := 0, 0
	for renewals() < 3 || len(serials) < 4 {
		if time.Now().After(deadline) {
			t.Fatalf("after %d pgbench runs: %v renewals, serials seen %v", runs, renewals(), serials)
		}
		out, err := pgbench(t, env, "-n", "-C", "-c", "8", "-j", "2", "-t", "10", "-f", script)
		if err != nil || !strings.Contains(out, "number of failed transactions: 0") || !strings.Contains(out, "actually processed: 80/80") {
			t.Fatalf("pgbench run %d: %v\n%s", runs+1, err, out)
		}
		runs++
		txns += 80
		serials[clientSerial(t, port)] = true
	}
	if got := r.metric(t, "pgtrust_cert_renewal_failures_total", map[string]string{"source": "upstream x client certificate"}); got != 0 {
		t.Fatalf("%v failed renewals", got)
	}
	t.Logf("%d transactions (new connection each) in %d pgbench runs, 0 failed; %v renewals; %d distinct client_serial values", txns, runs, renewals(), len(serials))
}
