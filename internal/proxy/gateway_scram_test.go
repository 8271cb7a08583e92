package proxy

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/pooling"
	"github.com/pgtrust/pgtrust/internal/scram"
	"github.com/pgtrust/pgtrust/internal/testpki"
	"github.com/pgtrust/pgtrust/internal/userlist"
)

// The scram mode tests' secrets are values internal/secretscan knows.
const (
	scAliceSecret  = "g1-Scram-Secret-1" // alice's password (pg_authid and the userlist)
	scBobSecret    = "g1-Scram-Secret-2" // bob's
	scWrongSecret  = "g1-Wrong-Secret-3" // nobody's
	scLookupSecret = "pw-very-secret-42" // the lookup role's password
	scLookupRole   = "pgtrust_lookup"
)

// scramEnv is a PostgreSQL 15 with application roles and a NOSUPERUSER
// lookup role, and a gateway with three scram listeners: 0 userlist file
// (unpooled), 1 auth_query (pooled, transaction mode), 2 both (unpooled,
// channel binding required). The gateway opens the upstream over the Unix
// socket, where pg_hba trusts it (its own credentials); the lookup role must
// give its password even there.
type scramEnv struct {
	srv                         *pgtest.Server
	root, listFile              string
	aliceV, bobV                *scram.Verifier
	run                         *running
	cfg                         Config
	filePort, queryPort, both   int
	fileGW, queryGW, bothGW     int
	aliceLine, bobLine, md5Line string
}

func newScramEnv(t *testing.T) *scramEnv {
	t.Helper()
	srv := pgtest.Start(t, pgtest.Options{
		HBA: []string{
			"local all " + scLookupRole + " scram-sha-256",
			"local all all trust",
			"host all all 127.0.0.1/32 reject",
		},
		Conf: map[string]string{"track_functions": "all"},
		Setup: []string{
			"CREATE ROLE alice LOGIN PASSWORD '" + scAliceSecret + "'",
			"CREATE ROLE bob LOGIN PASSWORD '" + scBobSecret + "'",
			"CREATE ROLE boss LOGIN SUPERUSER PASSWORD '" + scAliceSecret + "'",
			"CREATE ROLE " + scLookupRole + " LOGIN NOSUPERUSER PASSWORD '" + scLookupSecret + "'",
			userlist.FunctionSQL(scLookupRole),
		},
	})
	dir := t.TempDir()
	ca := testpki.NewRootCA(t, "pgtrust scram gateway test CA")
	gw := ca.Server(t)
	e := &scramEnv{srv: srv, root: testpki.WriteFile(t, dir, "root.crt", ca.CertPEM, 0o644)}
	var err error
	if e.aliceV, err = scram.NewVerifier([]byte(scAliceSecret), 4096, nil); err != nil {
		t.Fatal(err)
	}
	if e.bobV, err = scram.NewVerifier([]byte(scBobSecret), 4096, nil); err != nil {
		t.Fatal(err)
	}
	e.aliceLine = `"alice" "` + e.aliceV.String() + `"` + "\n"
	e.bobLine = `"bob" "` + e.bobV.String() + `"` + "\n"
	e.md5Line = `"carol" "md5` + strings.Repeat("0", 32) + `"` + "\n"
	e.listFile = filepath.Join(t.TempDir(), "userlist.txt")
	writeAtomic(t, e.listFile, []byte("; users of the gateway\n"+e.aliceLine), 0o600)

	certFile := testpki.WriteFile(t, dir, "gw.crt", gw.ChainPEM, 0o644)
	keyFile := testpki.WriteFile(t, dir, "gw.key", gw.KeyPEM, 0o600)
	up := mustParse(t, fmt.Sprintf("host=%s port=%d dbname=postgres sslmode=disable", srv.SocketDir, srv.Port))
	aq := &AuthQueryConfig{User: scLookupRole, Password: scLookupSecret, DBName: "postgres"}
	key := []byte("a fake-salt key of the test, 32b")
	e.cfg = Config{Upstreams: []UpstreamConfig{{
		Name: "db", Conn: up, PlaintextIntended: true,
		Pool: &PoolConfig{Mode: pooling.ModeTransaction, Size: 3},
		Gateways: []GatewayConfig{
			{Listen: "127.0.0.1:0", Auth: AuthScram, CertFile: certFile, KeyFile: keyFile, PoolMode: PoolNone,
				AuthFile: e.listFile, FakeSaltKey: key, Backoff: backoffForTests()},
			{Listen: "127.0.0.1:0", Auth: AuthScram, CertFile: certFile, KeyFile: keyFile,
				AuthQuery: aq, FakeSaltKey: key, Backoff: backoffForTests()},
			{Listen: "127.0.0.1:0", Auth: AuthScram, CertFile: certFile, KeyFile: keyFile, PoolMode: PoolNone,
				AuthFile: e.listFile, AuthQuery: aq, FakeSaltKey: key, RequireChannelBinding: true, Backoff: backoffForTests()},
		},
	}}}
	e.run = startProxy(t, e.cfg)
	ge := &gwEnv{run: e.run}
	e.fileGW, e.queryGW, e.bothGW = 0, 1, 2
	e.filePort, e.queryPort, e.both = ge.gwPort(t, 0), ge.gwPort(t, 1), ge.gwPort(t, 2)
	t.Cleanup(func() {
		// Besides secretscan's Record (startProxy): no password and no
		// verifier of this test in the proxy's log.
		log := e.run.logs.String()
		for _, s := range []string{scAliceSecret, scBobSecret, scWrongSecret, scLookupSecret, e.aliceV.String(), e.bobV.String(),
			b64(e.aliceV.StoredKey[:]), b64(e.aliceV.ServerKey[:]), b64(e.bobV.StoredKey[:]), b64(e.bobV.ServerKey[:])} {
			if strings.Contains(log, s) {
				t.Errorf("the proxy log holds a secret or verifier (%d bytes)", len(s))
			}
		}
	})
	return e
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func (e *scramEnv) dsn(port int, user string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=verify-full sslrootcert=%s", port, user, e.root)
}

func (e *scramEnv) psql(t *testing.T, port int, user, secret, query, extra string) pgtest.PsqlResult {
	t.Helper()
	return pgtest.PsqlQuery(t, e.dsn(port, user)+" "+extra, query, map[string]string{"PGPASSWORD": secret})
}

// sameFailure checks that a wrong secret of a known user and an unknown
// user of the same name length get the same exchange and byte-identical
// 28P01 answers but for the name.
func sameFailure(t *testing.T, port int, known, unknown string) {
	t.Helper()
	k := rawSCRAMFailure(t, port, known)
	u := rawSCRAMFailure(t, port, unknown)
	if string(k.errMsg) != string(authFailedResponse(known)) {
		t.Fatalf("wrong secret for %s: answer %q", known, k.errMsg)
	}
	if string(u.errMsg) != string(authFailedResponse(unknown)) {
		t.Fatalf("unknown user %s: answer %q", unknown, u.errMsg)
	}
	if len(known) == len(unknown) && strings.Replace(string(u.errMsg), unknown, known, 1) != string(k.errMsg) {
		t.Fatalf("answers differ: %q vs %q", u.errMsg, k.errMsg)
	}
	if k.mechs != u.mechs || k.iterations != u.iterations || k.saltLen != u.saltLen {
		t.Fatalf("exchanges differ: known %+v, unknown %+v", k, u)
	}
	if k.mechs != "SCRAM-SHA-256-PLUS,SCRAM-SHA-256" && k.mechs != "SCRAM-SHA-256-PLUS" {
		t.Fatalf("mechanisms offered over TLS: %q", k.mechs)
	}
}

// TestGatewayScramFile: the userlist file's verifiers with psql 15 and
// pgx, SCRAM and -PLUS; one 28P01 for wrong secrets and unknown users; the
// file's reload (watch) and a refused bad file; the SIGHUP path.
func TestGatewayScramFile(t *testing.T) {
	e := newScramEnv(t)
	const who = "SELECT current_user || ' ' || coalesce(inet_client_addr()::text, 'unix')"
	t.Run("psql SCRAM-SHA-256 and -PLUS (channel_binding=require)", func(t *testing.T) {
		for _, extra := range []string{"channel_binding=disable", "channel_binding=require"} {
			r := e.psql(t, e.filePort, "alice", scAliceSecret, who, extra)
			if !r.OK || strings.TrimSpace(r.Stdout) != "alice unix" {
				t.Fatalf("%s: ok=%v stdout=%q stderr=%q", extra, r.OK, r.Stdout, r.Stderr)
			}
		}
		if !strings.Contains(e.run.logs.String(), "alice SCRAM-SHA-256-PLUS") {
			t.Fatalf("no -PLUS login in the log")
		}
	})
	t.Run("pgx", func(t *testing.T) {
		ge := &gwEnv{testEnv: &testEnv{}, gwRoot: e.root}
		pg, err := ge.connect(t, e.filePort, "alice", scAliceSecret, "")
		if err != nil {
			t.Fatalf("pgx: %v", err)
		}
		defer pg.Close(context.Background())
		if u, err := exec1(t, pg, "SELECT current_user"); err != nil || u != "alice" {
			t.Fatalf("got %q, %v", u, err)
		}
	})
	t.Run("wrong secret and unknown user: one 28P01", func(t *testing.T) {
		r := e.psql(t, e.filePort, "alice", scWrongSecret, who, "")
		if r.OK || !strings.Contains(r.Stderr, `password authentication failed for user "alice"`) {
			t.Fatalf("wrong secret: ok=%v stderr=%q", r.OK, r.Stderr)
		}
		// bob is a role upstream, but not in the file: unknown here.
		r2 := e.psql(t, e.filePort, "bob", scBobSecret, who, "")
		if r2.OK || strings.Replace(r2.Stderr, `"bob"`, `"alice"`, 1) != r.Stderr {
			t.Fatalf("unknown user: ok=%v stderr=%q, wrong secret's %q", r2.OK, r2.Stderr, r.Stderr)
		}
		sameFailure(t, e.filePort, "alice", "zelda")
	})
	t.Run("file changed: new user works, removed user refused", func(t *testing.T) {
		writeAtomic(t, e.listFile, []byte(e.bobLine), 0o600)
		waitFor(t, "bob in the reloaded userlist", 10*time.Second, func() bool {
			return e.psql(t, e.filePort, "bob", scBobSecret, "SELECT 1", "").OK
		})
		if r := e.psql(t, e.filePort, "alice", scAliceSecret, "SELECT 1", ""); r.OK || !strings.Contains(r.Stderr, `password authentication failed for user "alice"`) {
			t.Fatalf("removed alice: ok=%v stderr=%q", r.OK, r.Stderr)
		}
		sameFailure(t, e.filePort, "bob", "alice")
	})
	t.Run("a bad file keeps the previous users", func(t *testing.T) {
		before := e.run.metric(t, "pgtrust_reloads_total", map[string]string{"kind": "auth_file", "result": "failure"})
		writeAtomic(t, e.listFile, []byte(e.aliceLine+e.md5Line), 0o600)
		waitFor(t, "the rejected auth_file reload", 10*time.Second, func() bool {
			return e.run.metric(t, "pgtrust_reloads_total", map[string]string{"kind": "auth_file", "result": "failure"}) > before
		})
		if !e.psql(t, e.filePort, "bob", scBobSecret, "SELECT 1", "").OK {
			t.Fatal("bob refused after a rejected reload")
		}
		if e.psql(t, e.filePort, "alice", scAliceSecret, "SELECT 1", "").OK {
			t.Fatal("alice of the rejected file logged in")
		}
		// The SIGHUP path (a configuration reload) refuses the bad file too,
		// and keeps the running settings.
		cfg := e.cfg
		cfg.Logger, cfg.Registerer = nil, nil
		if err := e.run.Reload(&cfg); err == nil || !strings.Contains(err.Error(), "auth_file") {
			t.Fatalf("reload with an md5 line in auth_file: %v", err)
		}
		if !e.psql(t, e.filePort, "bob", scBobSecret, "SELECT 1", "").OK {
			t.Fatal("bob refused after a rejected SIGHUP reload")
		}
	})
	t.Run("SIGHUP reload reads the file", func(t *testing.T) {
		// Written in place, then reloaded at once: whichever of the watch and
		// the reload reads it, alice works and bob is gone.
		if err := os.WriteFile(e.listFile, []byte(e.aliceLine), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := e.cfg
		cfg.Logger, cfg.Registerer = nil, nil
		if err := e.run.Reload(&cfg); err != nil {
			t.Fatalf("reload: %v", err)
		}
		if r := e.psql(t, e.filePort, "alice", scAliceSecret, "SELECT current_user", ""); !r.OK {
			t.Fatalf("alice after SIGHUP: %q", r.Stderr)
		}
		if e.psql(t, e.filePort, "bob", scBobSecret, "SELECT 1", "").OK {
			t.Fatal("bob still logs in after the reload")
		}
	})
	t.Run("a certificate reload (SIGHUP without a configuration) reads the file", func(t *testing.T) {
		// Reload(nil) reports a bad file itself: the watch cannot make it fail.
		if err := os.WriteFile(e.listFile, []byte(e.aliceLine+e.md5Line), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := e.run.Reload(nil); err == nil || !strings.Contains(err.Error(), "auth_file") {
			t.Fatalf("Reload(nil) with an md5 line in auth_file: %v", err)
		}
		if err := os.WriteFile(e.listFile, []byte(e.aliceLine), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := e.run.Reload(nil); err != nil {
			t.Fatalf("Reload(nil) with a good auth_file: %v", err)
		}
		if r := e.psql(t, e.filePort, "alice", scAliceSecret, "SELECT 1", ""); !r.OK {
			t.Fatalf("alice after Reload(nil): %q", r.Stderr)
		}
	})
	t.Run("channel binding required: SCRAM-SHA-256 refused, -PLUS accepted", func(t *testing.T) {
		if r := e.psql(t, e.both, "alice", scAliceSecret, "SELECT 1", "channel_binding=disable"); r.OK {
			t.Fatal("SCRAM-SHA-256 without binding accepted where binding is required")
		}
		if r := e.psql(t, e.both, "alice", scAliceSecret, "SELECT 1", "channel_binding=require"); !r.OK {
			t.Fatalf("-PLUS refused: %q", r.Stderr)
		}
	})
}

// TestGatewayScramAuthQuery: verifiers from pg_authid through the SECURITY
// DEFINER function and a NOSUPERUSER role; hidden roles answered like wrong
// secrets; pooled transaction mode for two users (two pool keys, pgbench
// -S); a flood of random names from one source is backed off before it
// reaches the lookup.
func TestGatewayScramAuthQuery(t *testing.T) {
	e := newScramEnv(t)
	if out := e.srv.Exec(t, "SELECT rolsuper FROM pg_roles WHERE rolname = '"+scLookupRole+"'"); !strings.Contains(out, "f") {
		t.Fatalf("the lookup role is a superuser: %q", out)
	}
	t.Run("psql and -PLUS, pooled", func(t *testing.T) {
		for _, c := range []struct{ user, secret, extra string }{
			{"alice", scAliceSecret, "channel_binding=require"}, {"bob", scBobSecret, "channel_binding=disable"}, {"bob", scBobSecret, "channel_binding=require"},
		} {
			r := e.psql(t, e.queryPort, c.user, c.secret, "SELECT current_user", c.extra)
			if !r.OK || strings.TrimSpace(r.Stdout) != c.user {
				t.Fatalf("%s %s: ok=%v stdout=%q stderr=%q", c.user, c.extra, r.OK, r.Stdout, r.Stderr)
			}
		}
	})
	t.Run("file first, then the query", func(t *testing.T) {
		// bob is not in the file: the query answers for him.
		if r := e.psql(t, e.both, "bob", scBobSecret, "SELECT current_user", "channel_binding=require"); !r.OK {
			t.Fatalf("bob through file+query: %q", r.Stderr)
		}
	})
	t.Run("wrong secret, unknown role, superuser: one 28P01", func(t *testing.T) {
		sameFailure(t, e.queryPort, "alice", "zelda")
		sameFailure(t, e.queryPort, "bob", "bos")
		r := e.psql(t, e.queryPort, "boss", scAliceSecret, "SELECT 1", "")
		if r.OK || !strings.Contains(r.Stderr, `password authentication failed for user "boss"`) {
			t.Fatalf("superuser through auth_query: ok=%v stderr=%q", r.OK, r.Stderr)
		}
	})
	t.Run("pgbench -S as two users: two pool keys", func(t *testing.T) {
		if out, err := pgbench(t, map[string]string{"PGHOST": e.srv.SocketDir, "PGPORT": strconv.Itoa(e.srv.Port), "PGUSER": "postgres", "PGDATABASE": "postgres"},
			"-i", "-s", "1", "-q"); err != nil {
			t.Fatalf("pgbench -i: %v\n%s", err, out)
		}
		e.srv.Exec(t, "GRANT SELECT ON pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history TO alice, bob")
		for _, u := range []struct{ user, secret string }{{"alice", scAliceSecret}, {"bob", scBobSecret}} {
			env := map[string]string{"PGHOST": "127.0.0.1", "PGPORT": strconv.Itoa(e.queryPort), "PGUSER": u.user, "PGDATABASE": "postgres",
				"PGSSLMODE": "verify-full", "PGSSLROOTCERT": e.root, "PGPASSWORD": u.secret, "PGCHANNELBINDING": "require"}
			out, err := pgbench(t, env, "-S", "-n", "-c", "6", "-j", "2", "-t", "50")
			if err != nil || !strings.Contains(out, "actually processed: 300/300") || !strings.Contains(out, "number of failed transactions: 0") {
				t.Fatalf("pgbench -S as %s: %v\n%s", u.user, err, out)
			}
		}
		roles := map[string]bool{}
		for _, ps := range e.run.HealthStatus().Pools {
			if ps.Pool != frontName(e.queryGW) {
				continue
			}
			if ps.Mode != "transaction" {
				t.Fatalf("%s pool mode %q", ps.Pool, ps.Mode)
			}
			for _, k := range ps.Keys {
				if k.Database != "postgres" {
					t.Fatalf("pool key %+v", k.Key)
				}
				roles[k.Role] = true
				if k.Active+k.Idle > 3 {
					t.Fatalf("%s holds %d server connections, pool size 3", k.Role, k.Active+k.Idle)
				}
			}
		}
		if len(roles) != 2 || !roles["alice"] || !roles["bob"] {
			t.Fatalf("pool keys of the auth_query front: %v, want alice and bob", roles)
		}
		out := e.srv.Exec(t, "SELECT count(*) FROM pg_stat_activity WHERE usename IN ('alice', 'bob')")
		if c, _ := strconv.Atoi(strings.TrimSpace(lastLine(out))); c < 2 || c > 6 {
			t.Fatalf("alice and bob have %d server connections, want 2..6 (two keys of size 3)", c)
		}
	})
	t.Run("random names from one source: backed off before the lookup, one query per name", func(t *testing.T) {
		lim := e.run.upstreams[0].limiters[e.queryGW]
		key := lookupKey("127.0.0.1")
		// A backend reports its function statistics when it exits: end the
		// lookup role's connections (the AuthQuery redials) before counting.
		calls := func() int {
			e.srv.Exec(t, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '"+scLookupRole+"'")
			waitFor(t, "the lookup connections gone", 10*time.Second, func() bool {
				return strings.TrimSpace(lastLine(e.srv.Exec(t, "SELECT count(*) FROM pg_stat_activity WHERE usename = '"+scLookupRole+"'"))) == "0"
			})
			out := e.srv.Exec(t, "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions WHERE schemaname = '"+userlist.FunctionSchema+"'")
			c, _ := strconv.Atoi(strings.TrimSpace(lastLine(out)))
			return c
		}
		lim.Succeeded(key)
		c0 := calls()
		var delays []time.Duration
		for i := 0; i < 6; i++ {
			rawSCRAMFailure(t, e.queryPort, fmt.Sprintf("rnd%08d", i))
			delays = append(delays, lim.Delay(key))
		}
		for i := 1; i < len(delays); i++ {
			if delays[0] <= 0 || delays[i] <= delays[i-1] && delays[i] < e.cfg.Upstreams[0].Gateways[e.queryGW].Backoff.Max {
				t.Fatalf("the source's lookup delay does not grow: %v", delays)
			}
		}
		if got := calls(); got != c0+6 {
			t.Fatalf("6 unknown names: %d queries, want 6", got-c0)
		}
		// The same names again within the TTL: unknown names are cached like
		// known ones, no query.
		for i := 0; i < 6; i++ {
			rawSCRAMFailure(t, e.queryPort, fmt.Sprintf("rnd%08d", i))
		}
		if got := calls(); got != c0+6 {
			t.Fatalf("6 unknown names asked twice: %d queries, want 6", got-c0)
		}
		// A wrong secret of a known user charges the same entry the same way
		// (unknown names are not told apart by the backoff).
		lim.Succeeded(key)
		rawSCRAMFailure(t, e.queryPort, "alice")
		dKnown := lim.Delay(key)
		lim.Succeeded(key)
		rawSCRAMFailure(t, e.queryPort, "rnd00000000")
		if dUnknown := lim.Delay(key); dUnknown != dKnown {
			t.Fatalf("backoff after a wrong secret %v, after an unknown name %v", dKnown, dUnknown)
		}
		// A success clears it.
		if r := e.psql(t, e.queryPort, "alice", scAliceSecret, "SELECT 1", ""); !r.OK {
			t.Fatalf("alice: %q", r.Stderr)
		}
		if d := lim.Delay(key); d != 0 {
			t.Fatalf("delay after a success %v", d)
		}
	})
	t.Run("the lookup role refused: 57P03 for every uncached name, before any exchange", func(t *testing.T) {
		e.srv.Exec(t, "ALTER ROLE "+scLookupRole+" PASSWORD '"+scWrongSecret+"'")
		e.srv.Exec(t, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '"+scLookupRole+"'")
		var answers []string
		for _, u := range []string{"nobody1", "nobody2"} {
			r := e.psql(t, e.queryPort, u, scAliceSecret, "SELECT 1", "")
			if r.OK || !strings.Contains(r.Stderr, "the gateway cannot check passwords right now") {
				t.Fatalf("%s with the lookup role refused: ok=%v stderr=%q", u, r.OK, r.Stderr)
			}
			answers = append(answers, strings.Replace(r.Stderr, u, "U", -1))
		}
		if answers[0] != answers[1] {
			t.Fatalf("answers differ: %q", answers)
		}
		if !strings.Contains(e.run.logs.String(), "reason=auth_query_failed") {
			t.Fatal("no auth_query_failed in the log")
		}
	})
}

// TestGatewayScramUpstreamPassword: the gateway opens the client's role
// over verify-full TLS with its own password (upstream_password), pooled
// and unpooled; the client's secret is the userlist's, not the role's.
func TestGatewayScramUpstreamPassword(t *testing.T) {
	const upPW = "clear-pw" // the gateway's password for every role upstream
	ca := testpki.NewRootCA(t, "pgtrust scram upstream CA")
	server := ca.Server(t)
	srv := pgtest.Start(t, pgtest.Options{
		SSL: true, ServerCert: server.ChainPEM, ServerKey: server.KeyPEM, CA: ca.CertPEM,
		HBA: []string{"hostssl all alice,bob 127.0.0.1/32 scram-sha-256", "host all all 127.0.0.1/32 reject"},
		Setup: []string{
			"CREATE ROLE alice LOGIN PASSWORD '" + upPW + "'",
			"CREATE ROLE bob LOGIN PASSWORD '" + upPW + "'",
		},
	})
	dir := t.TempDir()
	root := testpki.WriteFile(t, dir, "root.crt", ca.CertPEM, 0o644)
	gw := ca.Server(t)
	certFile := testpki.WriteFile(t, dir, "gw.crt", gw.ChainPEM, 0o644)
	keyFile := testpki.WriteFile(t, dir, "gw.key", gw.KeyPEM, 0o600)
	aliceV, err := scram.NewVerifier([]byte(scAliceSecret), 4096, nil)
	if err != nil {
		t.Fatal(err)
	}
	bobV, err := scram.NewVerifier([]byte(scBobSecret), 4096, nil)
	if err != nil {
		t.Fatal(err)
	}
	list := filepath.Join(t.TempDir(), "userlist.txt")
	writeAtomic(t, list, []byte(`"alice" "`+aliceV.String()+`"`+"\n"+`"bob" "`+bobV.String()+`"`+"\n"), 0o600)
	up := mustParse(t, fmt.Sprintf("host=127.0.0.1 port=%d sslmode=verify-full sslrootcert=%s dbname=postgres", srv.Port, root))
	run := startProxy(t, Config{Upstreams: []UpstreamConfig{{
		Name: "db", Conn: up, Pool: &PoolConfig{Mode: pooling.ModeSession, Size: 2},
		Gateways: []GatewayConfig{
			{Listen: "127.0.0.1:0", Auth: AuthScram, CertFile: certFile, KeyFile: keyFile, AuthFile: list, UpstreamPassword: upPW, Backoff: backoffForTests()},
			{Listen: "127.0.0.1:0", Auth: AuthScram, CertFile: certFile, KeyFile: keyFile, AuthFile: list, UpstreamPassword: upPW, PoolMode: PoolNone, Backoff: backoffForTests()},
		},
	}}})
	ge := &gwEnv{run: run}
	e := &scramEnv{root: root}
	for i, name := range []string{"pooled (session)", "unpooled"} {
		port := ge.gwPort(t, i)
		t.Run(name, func(t *testing.T) {
			for _, u := range []struct{ user, secret string }{{"alice", scAliceSecret}, {"bob", scBobSecret}} {
				r := e.psql(t, port, u.user, u.secret, "SELECT current_user || ' ' || (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())", "channel_binding=require")
				if !r.OK || strings.TrimSpace(r.Stdout) != u.user+" true" {
					t.Fatalf("%s: ok=%v stdout=%q stderr=%q", u.user, r.OK, r.Stdout, r.Stderr)
				}
			}
			// The role's own password is not the client's secret here.
			if r := e.psql(t, port, "alice", upPW, "SELECT 1", ""); r.OK || !strings.Contains(r.Stderr, `password authentication failed for user "alice"`) {
				t.Fatalf("the upstream password logged a client in: ok=%v stderr=%q", r.OK, r.Stderr)
			}
		})
	}
	if strings.Contains(run.logs.String(), upPW) {
		t.Fatal("the upstream password is in the proxy log")
	}
}
