package proxy

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/identmap"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/pooling"
)

// pooledProxy starts a proxy whose local listener opens the upstream as
// app (client certificate) through a pool of mode and size.
func pooledProxy(t *testing.T, env *testEnv, mode pooling.Mode, size int, tune func(*PoolConfig)) *running {
	t.Helper()
	pc := &PoolConfig{Mode: mode, Size: size}
	if tune != nil {
		tune(pc)
	}
	up := env.upstream(t)
	up.User, up.Database = "app", "appdb"
	return startProxy(t, Config{Upstreams: []UpstreamConfig{{
		Name: "pooled", Listen: "127.0.0.1:0", Conn: up, Auth: &UpstreamAuth{Role: "app"}, Pool: pc,
	}}})
}

// balances returns the four sums of pgbench's TPC-B invariant: every
// transaction adds the same delta to an account, a teller, a branch and
// the history.
func balances(t *testing.T, env *testEnv) []string {
	t.Helper()
	out := env.srv.Exec(t, `\c appdb
SELECT (SELECT sum(abalance) FROM pgbench_accounts)::text || ' ' || (SELECT sum(tbalance) FROM pgbench_tellers)::text || ' ' ||
       (SELECT sum(bbalance) FROM pgbench_branches)::text || ' ' || (SELECT coalesce(sum(delta),0) FROM pgbench_history)::text`)
	f := strings.Fields(strings.TrimSpace(out))
	if len(f) < 4 {
		t.Fatalf("balances: %q", out)
	}
	return f[len(f)-4:]
}

// TestPoolTransactionModeTPCB: 32 pgbench clients over 8 server
// connections in transaction mode, with each query mode, then the
// balances agree.
func TestPoolTransactionModeTPCB(t *testing.T) {
	env := newEnv(t)
	p := pooledProxy(t, env, pooling.ModeTransaction, 8, nil)
	port := p.port(t, "pooled")
	pgEnv := map[string]string{"PGHOST": "127.0.0.1", "PGPORT": strconv.Itoa(port), "PGUSER": "app", "PGDATABASE": "appdb", "PGSSLMODE": "disable"}
	if out, err := pgbench(t, pgEnv, "-i", "-s", "1", "-q"); err != nil {
		t.Fatalf("pgbench -i through the pool: %v\n%s", err, out)
	}
	for _, mode := range []string{"simple", "extended", "prepared"} {
		t.Run(mode, func(t *testing.T) {
			// One thread per client: pgbench 15 prepares synchronously
			// (PQprepare), which blocks every other client of its thread, and
			// those may hold the server connections the prepare waits for
			// (docs/pooling.md, Known limits).
			out, err := pgbench(t, pgEnv, "-M", mode, "-c", "32", "-j", "32", "-t", "40", "-n")
			if err != nil || !strings.Contains(out, "number of failed transactions: 0") || !strings.Contains(out, "actually processed: 1280/1280") {
				t.Fatalf("pgbench -M %s: %v\n%s", mode, err, out)
			}
			b := balances(t, env)
			if b[0] != b[1] || b[1] != b[2] || b[2] != b[3] {
				t.Fatalf("balances disagree after -M %s: accounts %s tellers %s branches %s history %s", mode, b[0], b[1], b[2], b[3])
			}
			n := env.srv.Exec(t, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'")
			if c, _ := strconv.Atoi(strings.TrimSpace(lastLine(n))); c > 8 || c < 1 {
				t.Fatalf("app has %d server connections, want 1..8 (pool size 8)", c)
			}
		})
	}
}

func lastLine(s string) string {
	l := lines(s)
	return l[len(l)-1]
}

// TestPoolConfigRefusals: a pool nobody can use, pooling a passthrough
// front, unknown modes and bad values are refused at load with the fix.
func TestPoolConfigRefusals(t *testing.T) {
	conn := mustParse(t, "host=127.0.0.1 user=app sslmode=verify-full sslrootcert=system")
	rules, err := identmap.ParseMapFile("app app\n")
	if err != nil {
		t.Fatal(err)
	}
	idm, err := identmap.NewMap(rules)
	if err != nil {
		t.Fatal(err)
	}
	gw := GatewayConfig{Listen: "127.0.0.1:0", Auth: AuthCert, CertFile: "/nonexistent.crt", KeyFile: "/nonexistent.key", ClientCAFile: "/ca.crt", IdentityMap: idm}
	cases := []struct {
		name string
		up   UpstreamConfig
		want string
	}{
		{"no front can pool", UpstreamConfig{Name: "u", Conn: conn, Pool: &PoolConfig{Mode: pooling.ModeTransaction}}, "no listener can use it"},
		{"unknown mode", UpstreamConfig{Name: "u", Conn: conn, Auth: &UpstreamAuth{Role: "app"}, Pool: &PoolConfig{Mode: "statement"}}, "unknown pool mode"},
		{"negative size", UpstreamConfig{Name: "u", Conn: conn, Auth: &UpstreamAuth{Role: "app"}, Pool: &PoolConfig{Mode: pooling.ModeSession, Size: -1}}, "invalid setting"},
		{"jitter of 1", UpstreamConfig{Name: "u", Conn: conn, Auth: &UpstreamAuth{Role: "app"}, Pool: &PoolConfig{Mode: pooling.ModeSession, Jitter: 1}}, "invalid setting"},
		{"gateway pool_mode without a pool", UpstreamConfig{Name: "u", Conn: conn, Gateways: []GatewayConfig{withPoolMode(gw, "transaction")}}, "needs the upstream's pool settings"},
		{"gateway pool_mode unknown", UpstreamConfig{Name: "u", Conn: conn, Gateways: []GatewayConfig{withPoolMode(gw, "always")}}, "unknown pool_mode"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Config{Upstreams: []UpstreamConfig{c.up}}.withDefaults()
			if failure.ClassOf(err) != failure.ConfigInvalid || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("want config_invalid %q, got %v", c.want, err)
			}
			if fe, _ := failure.As(err); fe == nil || fe.Fix == "" {
				t.Fatalf("no fix: %v", err)
			}
		})
	}
	pass := GatewayConfig{Listen: "127.0.0.1:0", Auth: AuthPassthrough, CertFile: "/x.crt", KeyFile: "/x.key", PoolMode: "transaction"}
	plain := mustParse(t, "host=127.0.0.1 user=app sslmode=require sslcertmode=disable")
	_, err = Config{Upstreams: []UpstreamConfig{{Name: "u", Conn: plain, Pool: &PoolConfig{Mode: pooling.ModeSession}, Gateways: []GatewayConfig{pass}}}}.withDefaults()
	if failure.ClassOf(err) != failure.ConfigInvalid || !strings.Contains(err.Error(), "auth = passthrough") {
		t.Fatalf("pooled passthrough gateway: %v", err)
	}
}

func withPoolMode(g GatewayConfig, m string) GatewayConfig {
	g.PoolMode = m
	return g
}

// TestPoolReload: a reload may not change pool settings; any other reload
// retires the pooled server connections, so the next transaction runs on a
// new backend.
func TestPoolReload(t *testing.T) {
	env := newEnv(t)
	p := pooledProxy(t, env, pooling.ModeTransaction, 2, nil)
	port := p.port(t, "pooled")
	conn, err := pgxConnect(t, port, "sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	pid := func() int32 {
		var n int32
		if err := conn.QueryRow(context.Background(), "SELECT pg_backend_pid()").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := pid()
	if again := pid(); again != before {
		t.Fatalf("an idle pool of one client changed backends without a reason: %d then %d", before, again)
	}
	up := env.upstream(t)
	up.User, up.Database = "app", "appdb"
	changed := Config{Upstreams: []UpstreamConfig{{Name: "pooled", Listen: "127.0.0.1:0", Conn: up, Auth: &UpstreamAuth{Role: "app"},
		Pool: &PoolConfig{Mode: pooling.ModeTransaction, Size: 3}}}}
	if err := p.Reload(&changed); failure.ClassOf(err) != failure.ConfigInvalid || !strings.Contains(err.Error(), "pool settings") {
		t.Fatalf("a reload changing the pool size: %v", err)
	}
	same := changed
	same.Upstreams = []UpstreamConfig{changed.Upstreams[0]}
	same.Upstreams[0].Pool = &PoolConfig{Mode: pooling.ModeTransaction, Size: 2}
	if err := p.Reload(&same); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if after := pid(); after == before {
		t.Fatalf("the reload did not retire the pooled server connection (backend %d still in use)", after)
	}
	if n := p.metric(t, "pgtrust_pool_servers_retired_total", map[string]string{"upstream": "pooled"}); n < 1 {
		t.Fatalf("pgtrust_pool_servers_retired_total = %v after a reload", n)
	}
}

// TestPoolSessionStartupSettings: in session mode, settings the server does
// not report, given in the startup packet, are set on the server connection
// at login (as a direct connection would) and reset before the next
// client; a setting the server refuses fails the login with its own error.
// Transaction mode refuses them (they could not follow the client).
func TestPoolSessionStartupSettings(t *testing.T) {
	env := newEnv(t)
	p := pooledProxy(t, env, pooling.ModeSession, 1, nil)
	dsn := func(extra string) string {
		return "host=127.0.0.1 port=" + strconv.Itoa(p.port(t, "pooled")) + " user=app dbname=appdb sslmode=disable " + extra
	}
	r := pgtest.PsqlQuery(t, dsn("options='-c statement_timeout=1234 -c work_mem=5MB'"), "SELECT current_setting('statement_timeout') || ' ' || current_setting('work_mem') || ' ' || pg_backend_pid()", nil)
	if !r.OK || !strings.HasPrefix(strings.TrimSpace(r.Stdout), "1234ms 5MB ") {
		t.Fatalf("session startup settings: ok=%v out=%q err=%q", r.OK, r.Stdout, r.Stderr)
	}
	pid := strings.Fields(r.Stdout)[2]
	r = pgtest.PsqlQuery(t, dsn(""), "SELECT current_setting('statement_timeout') || ' ' || current_setting('work_mem') || ' ' || pg_backend_pid()", nil)
	if !r.OK || strings.TrimSpace(r.Stdout) != "0 4MB "+pid {
		t.Fatalf("the next client on backend %s should see the defaults: ok=%v out=%q err=%q", pid, r.OK, r.Stdout, r.Stderr)
	}
	r = pgtest.PsqlQuery(t, dsn("options='-c no_such_setting=1'"), "SELECT 1", nil)
	if r.OK || !strings.Contains(r.Stderr, `unrecognized configuration parameter "no_such_setting"`) {
		t.Fatalf("a setting the server refuses: ok=%v err=%q", r.OK, r.Stderr)
	}
	if r = pgtest.PsqlQuery(t, dsn(""), "SELECT 1", nil); !r.OK {
		t.Fatalf("the pool after a refused login: %q", r.Stderr)
	}

	tx := pooledProxy(t, env, pooling.ModeTransaction, 1, nil)
	r = pgtest.PsqlQuery(t, "host=127.0.0.1 port="+strconv.Itoa(tx.port(t, "pooled"))+" user=app dbname=appdb sslmode=disable options='-c statement_timeout=1234'", "SELECT 1", nil)
	if r.OK || !strings.Contains(r.Stderr, "statement_timeout cannot be kept in transaction pooling mode") {
		t.Fatalf("transaction mode with an unreported startup setting: ok=%v err=%q", r.OK, r.Stderr)
	}
}
