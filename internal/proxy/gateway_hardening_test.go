package proxy

// Regression tests of the issue 11 security review: configurations that
// would lend the gateway's credentials to remote clients, the defaults
// that bound one source, the role table's one iteration count, stable fake
// salts, and the configuration types' printing.

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/authlimit"
	"github.com/pgtrust/pgtrust/internal/pgwire"
	"github.com/pgtrust/pgtrust/internal/scram"
	"github.com/pgtrust/pgtrust/internal/secretscan"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

// wantConfigRefusal checks err is a config_invalid failure with evidence
// and a fix, mentioning want.
func wantConfigRefusal(t *testing.T, name string, err error, want string) {
	t.Helper()
	fe, ok := failure.As(err)
	if !ok || fe.Class != failure.ConfigInvalid || fe.Evidence == "" || fe.Fix == "" {
		t.Errorf("%s: want config_invalid with evidence and fix, got %#v", name, err)
		return
	}
	if all := fe.Message + " " + fe.Evidence + " " + fe.Fix; !strings.Contains(all, want) {
		t.Errorf("%s: refusal %q does not mention %q", name, all, want)
	}
}

// TestGatewayPassthroughRefusesLentCredentials: a passthrough gateway
// listener relays the client's login over the gateway's own transport, so
// an upstream reached through a Unix socket (peer/trust) or with a client
// certificate libpq would send (the cert method) would let remote clients
// in as the gateway. Such configurations are refused; a TCP upstream
// without a client certificate is accepted.
func TestGatewayPassthroughRefusesLentCredentials(t *testing.T) {
	dir := t.TempDir()
	leaf := testpki.NewRootCA(t, "lent credentials CA").Client(t, "app")
	crt := testpki.WriteFile(t, dir, "c.crt", leaf.ChainPEM, 0o644)
	key := testpki.WriteFile(t, dir, "c.key", leaf.KeyPEM, 0o600)
	gw := func() []GatewayConfig {
		return []GatewayConfig{{Listen: "127.0.0.1:0", Auth: AuthPassthrough, CertFile: "gw.crt", KeyFile: "gw.key"}}
	}
	defaultCert := mustParse(t, "host=db.example sslmode=verify-full")
	defaultCert.SSLCert, defaultCert.SSLKey, defaultCert.SSLCertDefault = crt, key, true // ~/.postgresql/postgresql.crt exists
	for name, c := range map[string]struct {
		conn string
		want string
	}{
		"unix socket":           {"host=/var/run/postgresql sslmode=disable", "Unix socket"},
		"unix socket, 2nd host": {"host=db.example,/var/run/postgresql sslmode=disable", "Unix socket"},
		"dsn sslcert":           {fmt.Sprintf("host=db.example sslmode=verify-full sslcert=%s sslkey=%s", crt, key), "sslcert=" + crt},
		"dsn sslcert, missing":  {"host=db.example sslmode=verify-full sslcert=/nonexistent/c.crt sslkey=/nonexistent/c.key", "sslcert=/nonexistent"},
	} {
		_, err := Config{Upstreams: []UpstreamConfig{{Name: "db", Conn: mustParse(t, c.conn), Gateways: gw()}}}.withDefaults()
		wantConfigRefusal(t, name, err, c.want)
	}
	err := ValidateUpstream(UpstreamConfig{Name: "db", Conn: defaultCert, Gateways: gw()})
	wantConfigRefusal(t, "default client certificate exists", err, "default client certificate")

	noDefault := mustParse(t, "host=db.example sslmode=verify-full")
	noDefault.SSLCert, noDefault.SSLCertDefault = filepath.Join(dir, "absent.crt"), true
	for name, conn := range map[string]*connstring.Config{
		"tcp, no client certificate": mustParse(t, "host=db.example sslmode=verify-full sslcertmode=disable"),
		"sslcertmode=disable":        mustParse(t, fmt.Sprintf("host=db.example sslmode=verify-full sslcert=%s sslkey=%s sslcertmode=disable", crt, key)),
		"default certificate absent": noDefault,
	} {
		if _, err := (Config{Upstreams: []UpstreamConfig{{Name: "db", Conn: conn, Gateways: gw()}}}).withDefaults(); err != nil {
			t.Errorf("%s: refused: %v", name, err)
		}
	}
	// The same Unix-socket upstream stays fine behind cluster_secret.
	v, err := scram.NewVerifier([]byte(gwReadWriteSecret), 4096, nil)
	if err != nil {
		t.Fatal(err)
	}
	sec := gw()
	sec[0].Auth, sec[0].Roles = AuthClusterSecret, []GatewayRole{{User: "u", Role: "r", Verifier: v}}
	if _, err := (Config{Upstreams: []UpstreamConfig{{Name: "db", Conn: mustParse(t, "host=/var/run/postgresql sslmode=disable"), Gateways: sec}}}).withDefaults(); err != nil {
		t.Errorf("cluster_secret over a Unix socket refused: %v", err)
	}
}

// TestUpstreamAuthRefusedOnPublicListener: [upstreams.X.auth] asks clients
// for nothing, so it is refused on a TCP listener others can reach.
func TestUpstreamAuthRefusedOnPublicListener(t *testing.T) {
	conn := mustParse(t, "host=db.example sslmode=verify-full")
	auth := &UpstreamAuth{Role: "app", Password: gwLocalPW}
	for _, l := range []string{"0.0.0.0:6432", ":6432", "[::]:6432", "192.0.2.10:6432", "db.example:6432"} {
		_, err := Config{Upstreams: []UpstreamConfig{{Name: "db", Conn: conn, Listen: l, Auth: auth}}}.withDefaults()
		wantConfigRefusal(t, l, err, "non-loopback")
		if err != nil && strings.Contains(err.Error(), gwLocalPW) {
			t.Errorf("%s: the password is in the error", l)
		}
	}
	for _, u := range []UpstreamConfig{
		{Listen: "127.0.0.1:6432"}, {Listen: "[::1]:6432"}, {Listen: "localhost:6432"},
		{UnixSocketDir: "/tmp/pgtrust-sock"}, {}, // the default listen is loopback
	} {
		u.Name, u.Conn, u.Auth = "db", conn, auth
		if _, err := (Config{Upstreams: []UpstreamConfig{u}}).withDefaults(); err != nil {
			t.Errorf("listen %q socket %q: refused: %v", u.Listen, u.UnixSocketDir, err)
		}
	}
}

// TestGatewayPerSourceAuthenticatingDefault: with gateway listeners one
// source may hold only a quarter of the authenticating slots by default
// (its backoff wait holds one); an explicit setting is kept; a local-only
// upstream keeps the global cap (on loopback every client shares one
// address).
func TestGatewayPerSourceAuthenticatingDefault(t *testing.T) {
	conn := mustParse(t, "host=db.example sslmode=verify-full")
	gws := []GatewayConfig{{Listen: "127.0.0.1:0", Auth: AuthPassthrough, CertFile: "a", KeyFile: "b"}}
	for _, c := range []struct {
		name                 string
		u                    UpstreamConfig
		wantAuth, wantPerSrc int
	}{
		{"gateway, 8 connections", UpstreamConfig{MaxConnections: 8, Gateways: gws}, 2, 1},
		{"gateway, defaults", UpstreamConfig{Gateways: gws}, 25, 6},
		{"gateway, explicit", UpstreamConfig{Gateways: gws, MaxAuthenticatingPerSource: 20}, 25, 20},
		{"gateway, explicit above the cap", UpstreamConfig{Gateways: gws, MaxAuthenticatingPerSource: 90}, 25, 25},
		{"local only", UpstreamConfig{}, 25, 25},
	} {
		c.u.Name, c.u.Conn = "db", conn
		cfg, err := Config{Upstreams: []UpstreamConfig{c.u}}.withDefaults()
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if u := cfg.Upstreams[0]; u.MaxAuthenticating != c.wantAuth || u.MaxAuthenticatingPerSource != c.wantPerSrc {
			t.Errorf("%s: max_authenticating %d per source %d, want %d and %d", c.name, u.MaxAuthenticating, u.MaxAuthenticatingPerSource, c.wantAuth, c.wantPerSrc)
		}
	}
}

// TestGatewayRoleTableOneIterationCount: unknown users are answered with
// the table's iteration count, so a table of mixed counts would tell them
// apart; it is refused with the hash-secret --like fix.
func TestGatewayRoleTableOneIterationCount(t *testing.T) {
	rw, err := scram.NewVerifier([]byte(gwReadWriteSecret), 4096, nil)
	if err != nil {
		t.Fatal(err)
	}
	read, err := scram.NewVerifier([]byte(gwReadSecret), 8192, nil)
	if err != nil {
		t.Fatal(err)
	}
	g := GatewayConfig{Listen: "127.0.0.1:0", Auth: AuthClusterSecret, CertFile: "a", KeyFile: "b", Roles: []GatewayRole{
		{User: "teesql_readwrite", Role: "app_rw", Verifier: rw},
		{User: "teesql_read", Role: "app_read", Verifier: read},
	}}
	err = g.Validate("db", 0)
	wantConfigRefusal(t, "mixed iterations", err, "one iteration count")
	if fe, _ := failure.As(err); fe == nil || !strings.Contains(fe.Fix, "hash-secret --like") {
		t.Errorf("fix does not name hash-secret --like: %v", err)
	}
	same, err := scram.NewVerifier([]byte(gwReadSecret), 4096, nil)
	if err != nil {
		t.Fatal(err)
	}
	g.Roles[1].Verifier = same
	if err := g.Validate("db", 0); err != nil {
		t.Fatalf("one iteration count refused: %v", err)
	}
}

// TestGatewayFakeSaltKeyFromRoleTable: the key of unknown users' salts is
// derived from the role table, so restarts and replicas with the same
// table agree (a per-process key made unknown names the only ones whose
// salt changed); another table gives another key.
func TestGatewayFakeSaltKeyFromRoleTable(t *testing.T) {
	rw, _ := scram.NewVerifier([]byte(gwReadWriteSecret), 4096, nil)
	read, _ := scram.NewVerifier([]byte(gwReadSecret), 4096, rw.Salt)
	a := []GatewayRole{{User: "teesql_readwrite", Verifier: rw}, {User: "teesql_read", Verifier: read}}
	b := []GatewayRole{a[1], a[0]}
	ka, kb := fakeSaltKey(a), fakeSaltKey(b)
	if !bytes.Equal(ka, kb) || len(ka) < scram.MinFakeSaltKeyLen {
		t.Fatalf("keys of one table differ (or are short): %x %x", ka, kb)
	}
	other, _ := scram.NewVerifier([]byte("another secret"), 4096, nil)
	if bytes.Equal(ka, fakeSaltKey([]GatewayRole{{User: "teesql_readwrite", Verifier: other}, a[1]})) {
		t.Fatal("another table gives the same key")
	}
	for _, r := range a {
		if bytes.Contains(ka, r.Verifier.ServerKey[:8]) {
			t.Fatal("the key shows a ServerKey")
		}
	}
}

// TestGatewayConfigPrintsNoSecret: every fmt verb and slog handler shows
// GatewayConfig and GatewayRole without passwords or verifiers, alone and
// nested in the proxy's configuration.
func TestGatewayConfigPrintsNoSecret(t *testing.T) {
	v, err := scram.NewVerifier([]byte(gwReadWriteSecret), 4096, nil)
	if err != nil {
		t.Fatal(err)
	}
	role := GatewayRole{User: "teesql_readwrite", Role: "app_rw", Verifier: v, Password: gwUpRWPW}
	g := GatewayConfig{Listen: ":5433", Auth: AuthClusterSecret, UpstreamPassword: gwUpCertPW, Roles: []GatewayRole{role}}
	cfg := Config{Upstreams: []UpstreamConfig{{Name: "db", Gateways: []GatewayConfig{g}}}}
	forbidden := []string{gwUpRWPW, gwUpCertPW, gwReadWriteSecret,
		base64.StdEncoding.EncodeToString(v.StoredKey[:]), base64.StdEncoding.EncodeToString(v.ServerKey[:]), base64.StdEncoding.EncodeToString(v.Salt),
		fmt.Sprint(v.StoredKey[:4]), fmt.Sprintf("%x", v.ServerKey[:4]), "StoredKey", "ServerKey"}
	var out []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
		for _, x := range []any{g, &g, role, &role, g.Roles, cfg, cfg.Upstreams[0]} {
			out = append(out, verb+" "+fmt.Sprintf(verb, x))
		}
	}
	for _, h := range []func(*bytes.Buffer) slog.Handler{
		func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) },
		func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) },
	} {
		var b bytes.Buffer
		slog.New(h(&b)).Info("configuration", "gateway", g, "role", role, "pointer", &g)
		out = append(out, b.String())
	}
	all := strings.Join(out, "\n")
	secretscan.Record(t, "printed gateway configuration", all)
	for _, s := range forbidden {
		if strings.Contains(all, s) {
			t.Errorf("printed configuration holds %q:\n%s", s, all)
		}
	}
	if !strings.Contains(all, "teesql_readwrite") || !strings.Contains(all, ":5433") {
		t.Errorf("printed configuration lost its non-secret fields:\n%s", all)
	}
}

// TestGatewayBackoffPerUser: the backoff is keyed by (source, user whose
// secret was tested): a successful login with the read secret clears its
// own entry only, so the read secret's holder cannot reset the backoff of
// guesses at the readwrite secret; and guesses at the readwrite secret
// through teesql_read (which accepts it by downgrade) land on
// teesql_readwrite's entry too.
func TestGatewayBackoffPerUser(t *testing.T) {
	e := newGatewayEnv(t)
	lim := e.run.upstreams[0].limiters[0]
	rwKey, readKey := limiterKey("127.0.0.1", "teesql_readwrite"), limiterKey("127.0.0.1", "teesql_read")
	for i := range 3 {
		if _, err := e.connect(t, e.secretPort, "teesql_readwrite", fmt.Sprintf("guess-%d", i), ""); sqlstate(err) != "28P01" {
			t.Fatalf("guess %d: %v, want 28P01", i, err)
		}
	}
	afterGuesses := lim.Delay(rwKey)
	if afterGuesses == 0 || lim.Delay(readKey) != 0 {
		t.Fatalf("after 3 readwrite guesses: readwrite delay %v, read delay %v", afterGuesses, lim.Delay(readKey))
	}
	pg, err := e.connect(t, e.secretPort, "teesql_read", gwReadSecret, "")
	if err != nil {
		t.Fatalf("read login: %v", err)
	}
	pg.Close(context.Background())
	if d := lim.Delay(rwKey); d != afterGuesses {
		t.Fatalf("a read login changed the readwrite backoff: %v, was %v", d, afterGuesses)
	}
	// A guess through the downgrade path charges teesql_readwrite's entry.
	if _, err := e.connect(t, e.secretPort, "teesql_read", "guess-downgrade", ""); sqlstate(err) != "28P01" {
		t.Fatalf("downgrade guess: %v", err)
	}
	if d := lim.Delay(rwKey); d <= afterGuesses {
		t.Fatalf("a guess through teesql_read did not raise the readwrite backoff: %v, was %v", d, afterGuesses)
	}
	// The readwrite secret clears its own entry.
	pg, err = e.connect(t, e.secretPort, "teesql_readwrite", gwReadWriteSecret, "")
	if err != nil {
		t.Fatalf("readwrite login: %v", err)
	}
	pg.Close(context.Background())
	if d := lim.Delay(rwKey); d != 0 {
		t.Fatalf("readwrite login left a delay of %v", d)
	}
}

// TestGatewayAuthMetricHidesUnknownUsers: /metrics counts a wrong secret
// and an unknown user under one reason (the server log keeps the
// difference), and unknown users get the same iteration count as known
// ones.
func TestGatewayAuthMetricHidesUnknownUsers(t *testing.T) {
	e := newGatewayEnv(t)
	known := rawSCRAMFailure(t, e.secretPort, "teesql_readwrite")
	unknown := rawSCRAMFailure(t, e.secretPort, "no_such_user")
	if known.iterations != unknown.iterations || known.saltLen != unknown.saltLen {
		t.Fatalf("known user i=%s salt %d bytes, unknown i=%s salt %d bytes", known.iterations, known.saltLen, unknown.iterations, unknown.saltLen)
	}
	mfs, err := e.run.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "pgtrust_gateway_auth_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" {
					reasons[l.GetValue()] += m.GetCounter().GetValue()
				}
			}
		}
	}
	if len(reasons) != 1 || reasons[authReasonBadSecret] != 2 {
		t.Fatalf("auth failures by reason %v, want only %s=2", reasons, authReasonBadSecret)
	}
	// The session logs its refusal as it ends, which may be just after the
	// client read the error: wait for the line (bounded), do not time it.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(e.run.logs.String(), "no such user in the role table") {
		if time.Now().After(deadline) {
			t.Fatalf("the server log does not tell the unknown user apart:\n%s", e.run.logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// scramSalt runs a SCRAM exchange's first half for user and returns the
// salt and iterations the gateway advertised.
func scramSalt(t *testing.T, port int, user string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	ssl, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	var b [1]byte
	if _, err := c.Write(ssl); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(b[:]); err != nil || b[0] != 'S' {
		t.Fatalf("SSLRequest answer %q, %v", b[0], err)
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true}) // the test reads the salt, not the server
	startup, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": user, "database": "postgres"}}).Encode(nil)
	ir, _ := (&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=fyko+d2lbbFgONRv9qkxdawL")}).Encode(nil)
	if _, err := tc.Write(startup); err != nil {
		t.Fatal(err)
	}
	if msg, err := pgwire.ReadMessage(tc, nil, 1<<16); err != nil || msg[0] != 'R' {
		t.Fatalf("want AuthenticationSASL: %q %v", msg, err)
	}
	if _, err := tc.Write(ir); err != nil {
		t.Fatal(err)
	}
	msg, err := pgwire.ReadMessage(tc, nil, 1<<16)
	if err != nil || msg[0] != 'R' {
		t.Fatalf("want SASLContinue: %q %v", msg, err)
	}
	var cont pgproto3.AuthenticationSASLContinue
	if err := cont.Decode(msg[5:]); err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(string(cont.Data), ",")
	if len(parts) != 3 {
		t.Fatalf("server-first-message %q", cont.Data)
	}
	return parts[1] + "," + parts[2]
}

// TestGatewayFakeSaltStableAcrossInstances: two gateways with one role
// table (a restart, a replica) advertise the same salt for an unknown
// user, as they do for known users: comparing them tells nothing.
func TestGatewayFakeSaltStableAcrossInstances(t *testing.T) {
	e := newGatewayEnv(t)
	other := &gwEnv{testEnv: e.testEnv, run: startProxy(t, e.cfg)}
	port2 := other.gwPort(t, 0)
	for _, u := range []string{"teesql_readwrite", "no_such_user"} {
		if a, b := scramSalt(t, e.secretPort, u), scramSalt(t, port2, u); a != b {
			t.Errorf("user %s: instance 1 advertises %s, instance 2 %s", u, a, b)
		}
	}
	if scramSalt(t, e.secretPort, "no_such_user") == scramSalt(t, e.secretPort, "another_unknown") {
		t.Error("two unknown users share a salt")
	}
}

// TestGatewayClientErrorsKeepHealth: errors the authenticated client
// causes during the gateway's upstream login (a bad setting, a missing
// database, a role it may not take) are answered but do not mark the
// upstream unhealthy; the gateway's own login failing upstream does. The
// client's startup options cannot lift the read role's privileges either.
func TestGatewayClientErrorsKeepHealth(t *testing.T) {
	e := newGatewayEnv(t)
	pg, err := e.connect(t, e.secretPort, "teesql_read", gwReadSecret, "")
	if err != nil {
		t.Fatal(err)
	}
	pg.Close(context.Background())
	for _, c := range []struct{ extra, code string }{
		{"options='-c work_mem=bogus'", "22023"},
		{"dbname=no_such_database", "3D000"},
		{"options='-c role=app_rw'", "42501"},
		{"options='-c session_authorization=app_rw'", "42501"},
	} {
		_, err := e.connect(t, e.secretPort, "teesql_read", gwReadSecret, c.extra)
		if sqlstate(err) != c.code {
			t.Fatalf("%s: %v, want the upstream's SQLSTATE %s", c.extra, err, c.code)
		}
		if st := e.run.HealthStatus().Upstreams[0]; st.Status != StatusHealthy || st.LastError != nil {
			t.Fatalf("after %s: status %s, last error %+v", c.extra, st.Status, st.LastError)
		}
	}
	// Turning the read-only default off does not grant writes.
	pg, err = e.connect(t, e.secretPort, "teesql_read", gwReadSecret, "options='-c default_transaction_read_only=off'")
	if err != nil {
		t.Fatal(err)
	}
	_, err = exec1(t, pg, "INSERT INTO t VALUES (42)")
	pg.Close(context.Background())
	if sqlstate(err) != "42501" {
		t.Fatalf("write as app_read with read-only off: %v, want 42501", err)
	}

	// The gateway's own password refused upstream is the upstream's problem.
	cfg := e.cfg
	ups := append([]UpstreamConfig(nil), cfg.Upstreams[:1]...)
	gws := append([]GatewayConfig(nil), ups[0].Gateways[:1]...)
	roles := append([]GatewayRole(nil), gws[0].Roles...)
	roles[0].Password = "not-the-password"
	gws[0].Roles = roles
	ups[0].Gateways, cfg.Upstreams = gws, ups
	bad := &gwEnv{testEnv: e.testEnv, run: startProxy(t, cfg), gwRoot: e.gwRoot}
	if _, err := bad.connect(t, bad.gwPort(t, 0), "teesql_read", gwReadSecret, ""); err == nil {
		t.Fatal("connected with a wrong upstream password")
	}
	if st := bad.run.HealthStatus().Upstreams[0]; st.Status != StatusUnhealthy || st.LastError == nil {
		t.Fatalf("after the gateway's own login failed: status %s, last error %+v", st.Status, st.LastError)
	}
}

// dialFrom opens TCP to the gateway from a given loopback address.
func dialFrom(t *testing.T, from net.IP, port int) net.Conn {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: from}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// startTLS negotiates TLS on c and sends a StartupMessage for user.
func startTLS(t *testing.T, c net.Conn, user string) net.Conn {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	ssl, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	var b [1]byte
	if _, err := c.Write(ssl); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(b[:]); err != nil || b[0] != 'S' {
		t.Fatalf("SSLRequest answer %q, %v", b[0], err)
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true}) // the test reads the gateway's answers
	startup, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": user, "database": "postgres"}}).Encode(nil)
	if _, err := tc.Write(startup); err != nil {
		t.Fatal(err)
	}
	return tc
}

// TestGatewayOneSourceCannotHoldAllAuthSlots: with 2 authenticating slots
// (max_connections 8) a source that failed once and then opens sessions
// that wait in its backoff holds one slot, not both: its second session is
// refused with 53300 at once and a client from another address still logs
// in.
func TestGatewayOneSourceCannotHoldAllAuthSlots(t *testing.T) {
	e := newGatewayEnv(t)
	up := e.cfg.Upstreams[0]
	up.MaxConnections = 8 // max_authenticating 2; per source now 1
	g := up.Gateways[0]
	g.Backoff = authlimitOptions(10*time.Second, 10*time.Second) // the attacker's sessions wait, the test does not
	up.Gateways = []GatewayConfig{g}
	r := startProxy(t, Config{Upstreams: []UpstreamConfig{up}})
	gw := &gwEnv{testEnv: e.testEnv, run: r, gwRoot: e.gwRoot}
	port := gw.gwPort(t, 0)
	attacker := net.IPv4(127, 0, 0, 2)

	// One failure from the attacker's address.
	tc := startTLS(t, dialFrom(t, attacker, port), "teesql_readwrite")
	if msg, err := pgwire.ReadMessage(tc, nil, 1<<16); err != nil || msg[0] != 'R' {
		t.Fatalf("want AuthenticationSASL: %q %v", msg, err)
	}
	ir, _ := (&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=abc")}).Encode(nil)
	_, _ = tc.Write(ir)
	msg, err := pgwire.ReadMessage(tc, nil, 1<<16)
	if err != nil || msg[0] != 'R' {
		t.Fatalf("want SASLContinue: %q %v", msg, err)
	}
	var cont pgproto3.AuthenticationSASLContinue
	_ = cont.Decode(msg[5:])
	nonce := strings.TrimPrefix(strings.Split(string(cont.Data), ",")[0], "r=")
	fin, _ := (&pgproto3.SASLResponse{Data: []byte("c=biws,r=" + nonce + ",p=" + base64.StdEncoding.EncodeToString(make([]byte, 32)))}).Encode(nil)
	_, _ = tc.Write(fin)
	if msg, err := pgwire.ReadMessage(tc, nil, 1<<16); err != nil || msg[0] != 'E' {
		t.Fatalf("want the 28P01 ErrorResponse: %q %v", msg, err)
	}

	// The failed session gives its slot back once closed.
	waitFor(t, "the failed session to release its slot", 10*time.Second, func() bool {
		u := r.upstreams[0]
		u.slotMu.Lock()
		defer u.slotMu.Unlock()
		return u.authenticating == 0
	})
	// The first waiting session holds the source's one slot.
	startTLS(t, dialFrom(t, attacker, port), "teesql_readwrite")
	waitFor(t, "the attacker's session to wait in its backoff", 10*time.Second, func() bool {
		return r.metric(t, "pgtrust_gateway_auth_delayed_total", nil) == 1
	})
	// The second is refused at once instead of taking the last slot.
	second := startTLS(t, dialFrom(t, attacker, port), "teesql_readwrite")
	_ = second.SetReadDeadline(time.Now().Add(5 * time.Second))
	msg, err = pgwire.ReadMessage(second, nil, 1<<16)
	if err != nil || msg[0] != 'E' || !strings.Contains(string(msg), "53300") || !strings.Contains(string(msg), "max_authenticating_per_source=1") {
		t.Fatalf("second waiting session from one source: %q %v, want 53300 (per source)", msg, err)
	}
	// Another address still logs in.
	pg, err := gw.connect(t, port, "teesql_read", gwReadSecret, "")
	if err != nil {
		t.Fatalf("a client from another address: %v", err)
	}
	pg.Close(context.Background())
}

func authlimitOptions(base, maxDelay time.Duration) authlimit.Options {
	return authlimit.Options{Base: base, Max: maxDelay}
}
