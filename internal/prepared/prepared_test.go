package prepared

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/internal/pgtest"
)

func connectRelay(t *testing.T, r *relay, label string) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	host, port, _ := net.SplitHostPort(r.addr())
	c, err := pgconn.Connect(ctx, fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres sslmode=disable application_name=%s", host, port, label))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// execText runs sql with the simple protocol and returns the first column of
// every row of the last result.
func execText(t *testing.T, c *pgconn.PgConn, sql string) []string {
	t.Helper()
	res, err := c.Exec(ctx(t), sql).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	var out []string
	for _, row := range res[len(res)-1].Rows {
		out = append(out, string(row[0]))
	}
	return out
}

func prepared1(t *testing.T, c *pgconn.PgConn, name string, args ...string) (string, error) {
	t.Helper()
	params := make([][]byte, len(args))
	for i, a := range args {
		params[i] = []byte(a)
	}
	res := c.ExecPrepared(ctx(t), name, params, nil, nil).Read()
	if res.Err != nil {
		return "", res.Err
	}
	if len(res.Rows) != 1 {
		return "", fmt.Errorf("%d rows", len(res.Rows))
	}
	return string(res.Rows[0][0]), nil
}

func TestTwoClientsSameNameInterleaved(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	r := startRelay(t, pg, 2, 0)
	a := connectRelay(t, r, "A")
	b := connectRelay(t, r, "B")

	// Same client name, different queries and parameter types.
	if _, err := a.Prepare(ctx(t), "s1", "SELECT 'A:' || $1::text || ':' || pg_backend_pid()", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Prepare(ctx(t), "s1", "SELECT ($1::int * 2)::text || ':' || pg_backend_pid()", nil); err != nil {
		t.Fatal(err)
	}
	pids := map[string]map[string]bool{"A": {}, "B": {}}
	check := func(label, got, want string) {
		t.Helper()
		val, pid, ok := strings.Cut(strings.TrimPrefix(got, "A:"), ":")
		if !ok || val != want {
			t.Fatalf("%s: got %q, want value %q", label, got, want)
		}
		pids[label][pid] = true
	}
	for i := range 12 {
		// Interleaved transactions: both clients hold a server at once.
		execText(t, a, "BEGIN")
		execText(t, b, "BEGIN")
		got, err := prepared1(t, a, "s1", fmt.Sprint("x", i))
		if err != nil {
			t.Fatal(err)
		}
		check("A", got, fmt.Sprint("x", i))
		got, err = prepared1(t, b, "s1", fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		check("B", got, fmt.Sprint(2*i))
		execText(t, b, "COMMIT")
		execText(t, a, "COMMIT")
		// And outside transactions, in an order that moves each client to
		// the other server now and then.
		if i%3 == 0 {
			got, err = prepared1(t, a, "s1", "solo")
			if err != nil {
				t.Fatal(err)
			}
			check("A", got, "solo")
		}
	}
	for label, set := range pids {
		if len(set) != 2 {
			t.Errorf("client %s ran on backends %v, want both server connections", label, set)
		}
	}
	// Each server holds both statements under distinct content names, and
	// no client name reached the server.
	for _, s := range r.servers {
		names := s.cache.Names()
		if len(names) != 2 || names[0] == names[1] {
			t.Errorf("server %d cache %v, want 2 distinct statements", s.id, names)
		}
		for _, n := range names {
			if !strings.HasPrefix(n, Prefix) {
				t.Errorf("server name %q", n)
			}
		}
	}
	a.Close(ctx(t))
	// A closing its s1 does not disturb B's.
	c := connectRelay(t, r, "C")
	if _, err := c.Prepare(ctx(t), "s1", "SELECT 'A:' || $1::text || ':' || pg_backend_pid()", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Deallocate(ctx(t), "s1"); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		got, err := prepared1(t, b, "s1", fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		check("B", got, fmt.Sprint(2*i))
	}
	// C's s1 is gone for C, as on PostgreSQL.
	if _, err := prepared1(t, c, "s1", "x"); !isCode(err, "26000") {
		t.Fatalf("after Close, s1: %v, want 26000", err)
	}
}

func isCode(err error, code string) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == code
}

func TestPgxStatementCacheAcrossServers(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{Setup: []string{"CREATE TABLE acct(id int PRIMARY KEY, bal int NOT NULL); INSERT INTO acct SELECT g, 100 FROM generate_series(1,50) g;"}})
	r := startRelay(t, pg, 3, 0)
	host, port, _ := net.SplitHostPort(r.addr())
	// Client 4 has a tiny pgx statement cache, so pgx itself closes and
	// re-prepares its statements all the time.
	const clients, rounds = 5, 60
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	backends := make([]map[uint32]bool, clients)
	for ci := range clients {
		backends[ci] = map[uint32]bool{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres sslmode=disable application_name=pgx%d", host, port, ci))
			if err != nil {
				errs <- err
				return
			}
			if cfg.DefaultQueryExecMode != pgx.QueryExecModeCacheStatement {
				errs <- fmt.Errorf("default mode %v", cfg.DefaultQueryExecMode)
				return
			}
			if ci == 4 {
				cfg.StatementCacheCapacity = 4
			}
			conn, err := pgx.ConnectConfig(cx, cfg)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(cx)
			for i := range rounds {
				var pid uint32
				if err := conn.QueryRow(cx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
					errs <- fmt.Errorf("client %d round %d pid: %w", ci, i, err)
					return
				}
				backends[ci][pid] = true
				from, to := 1+(ci*7+i)%50, 1+(ci*11+i*3)%50
				if from == to {
					to = 1 + to%50
				}
				// A transfer in a transaction keeps the sum invariant. Rows
				// are updated in id order, so concurrent transfers cannot
				// deadlock in PostgreSQL (40P01).
				err := pgx.BeginFunc(cx, conn, func(tx pgx.Tx) error {
					debit := func() error {
						_, err := tx.Exec(cx, "UPDATE acct SET bal = bal - $1 WHERE id = $2", 1, from)
						return err
					}
					credit := func() error {
						_, err := tx.Exec(cx, "UPDATE acct SET bal = bal + $1 WHERE id = $2", 1, to)
						return err
					}
					first, second := debit, credit
					if to < from {
						first, second = credit, debit
					}
					if err := first(); err != nil {
						return err
					}
					if err := second(); err != nil {
						return err
					}
					var bal int
					return tx.QueryRow(cx, "SELECT bal FROM acct WHERE id = $1", to).Scan(&bal)
				})
				if err != nil {
					errs <- fmt.Errorf("client %d round %d tx: %w", ci, i, err)
					return
				}
				// Many distinct statements: each round adds one to pgx's cache.
				var n, echo int
				if err := conn.QueryRow(cx, fmt.Sprintf("SELECT count(*)::int, $1::int /* r%d */ FROM acct WHERE bal >= $2", i%20), i, 0).Scan(&n, &echo); err != nil || n != 50 || echo != i {
					errs <- fmt.Errorf("client %d round %d count: %d %d %v", ci, i, n, echo, err)
					return
				}
				// A pipelined batch.
				b := &pgx.Batch{}
				b.Queue("SELECT $1::int + 1", i)
				b.Queue("SELECT $1::text || 'x'", "a")
				b.Queue("SELECT count(*) FROM acct")
				br := conn.SendBatch(cx, b)
				var p1 int
				var p2 string
				var p3 int64
				e1 := br.QueryRow().Scan(&p1)
				e2 := br.QueryRow().Scan(&p2)
				e3 := br.QueryRow().Scan(&p3)
				if err := errors.Join(e1, e2, e3, br.Close()); err != nil || p1 != i+1 || p2 != "ax" || p3 != 50 {
					errs <- fmt.Errorf("client %d round %d batch: %d %q %d %v", ci, i, p1, p2, p3, err)
					return
				}
				// A batch failing in the middle: the error reaches the
				// query that caused it, and the connection goes on.
				if i%10 == 5 {
					b := &pgx.Batch{}
					b.Queue("SELECT $1::int", 1)
					b.Queue("SELECT 1 / $1::int", 0)
					b.Queue("SELECT $1::int + 2", 1)
					br := conn.SendBatch(cx, b)
					var v int
					e1 := br.QueryRow().Scan(&v)
					e2 := br.QueryRow().Scan(&v)
					br.Close()
					if e1 != nil || !isCode(e2, "22012") {
						errs <- fmt.Errorf("client %d round %d failing batch: %v / %v", ci, i, e1, e2)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var sum int
	out := pg.Exec(t, "SELECT sum(bal) FROM acct")
	if _, err := fmt.Sscan(strings.TrimSpace(out), &sum); err != nil || sum != 5000 {
		t.Errorf("sum of balances %q, want 5000", out)
	}
	for ci, set := range backends {
		if len(set) < 3 {
			t.Errorf("pgx client %d ran on %d backends, want all 3", ci, len(set))
		}
	}
	var parses uint64
	for _, s := range r.servers {
		p, _ := s.cache.Counters()
		parses += p
		if s.cache.Outstanding() != 0 {
			t.Errorf("server %d: %d outstanding", s.id, s.cache.Outstanding())
		}
	}
	// pgx names its statements by content, so all clients share 30 distinct
	// statements; each is Parsed once per server connection (90), plus a
	// Parse injected into a failing batch behind the error, which PostgreSQL
	// skipped and which is injected again later (at most one per failing
	// batch, 30). Client 4's pgx closing and re-Parsing costs no server Parse.
	t.Logf("Parses sent to servers: %d", parses)
	if parses == 0 || parses > 3*40 {
		t.Errorf("parses = %d", parses)
	}
}

func TestEvictionSmallCache(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	const capacity = 2
	r := startRelay(t, pg, 2, capacity)
	c := connectRelay(t, r, "E")
	for i := range 5 {
		if _, err := c.Prepare(ctx(t), fmt.Sprint("s", i), fmt.Sprintf("SELECT %d + $1::int", i*100), nil); err != nil {
			t.Fatal(err)
		}
	}
	for round := range 6 {
		for i := range 5 {
			got, err := prepared1(t, c, fmt.Sprint("s", i), fmt.Sprint(round))
			if err != nil {
				t.Fatalf("round %d s%d: %v", round, i, err)
			}
			if got != fmt.Sprint(i*100+round) {
				t.Fatalf("round %d s%d = %s", round, i, got)
			}
		}
	}
	// What the engine believes is exactly what each server holds. The query
	// runs after the deferred evictions its own Translate sends.
	for range 2 {
		execText(t, c, "BEGIN")
		onServer := execText(t, c, "SELECT name FROM pg_prepared_statements ORDER BY name")
		pid := execText(t, c, "SELECT pg_backend_pid()")[0]
		execText(t, c, "COMMIT")
		var s *server
		for _, x := range r.servers {
			if fmt.Sprint(x.pid) == pid {
				s = x
			}
		}
		want := s.cache.Names()
		sort.Strings(want)
		if !slices.Equal(onServer, want) || len(onServer) > capacity {
			t.Errorf("server %d: pg_prepared_statements %v, engine %v (capacity %d)", s.id, onServer, want, capacity)
		}
	}
	var ev uint64
	for _, s := range r.servers {
		_, e := s.cache.Counters()
		ev += e
	}
	if ev < 10 {
		t.Errorf("evictions = %d, want many", ev)
	}
	t.Logf("evictions: %d", ev)
}

func TestInjectedParseErrorReachesItsRequest(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{Setup: []string{"CREATE TABLE gone(v int); INSERT INTO gone VALUES (7);"}})
	r := startRelay(t, pg, 2, 0)
	c := connectRelay(t, r, "I")
	if _, err := c.Prepare(ctx(t), "q", "SELECT v FROM gone", nil); err != nil {
		t.Fatal(err)
	}
	got, err := prepared1(t, c, "q") // on the other server: injected Parse
	if err != nil || got != "7" {
		t.Fatalf("q = %q %v", got, err)
	}
	// q2 is prepared on one server only; then what it reads is dropped.
	pg.Exec(t, "CREATE TABLE gone2(v int); INSERT INTO gone2 VALUES (8);")
	if _, err := c.Prepare(ctx(t), "q2", "SELECT v FROM gone2", nil); err != nil {
		t.Fatal(err)
	}
	used := r.usesOf("I")
	prepOn := used[len(used)-1]
	pg.Exec(t, "DROP TABLE gone2")
	// The next transaction runs on the other server, which lacks q2: the
	// injected Parse fails, and the client gets 42P01 for its own Bind.
	_, err = prepared1(t, c, "q2")
	used = r.usesOf("I")
	if used[len(used)-1] == prepOn {
		t.Fatalf("test setup: both transactions on server %d", prepOn)
	}
	if !isCode(err, "42P01") {
		t.Fatalf("Bind of q2 on a server lacking it: %v, want 42P01", err)
	}
	other := r.servers[used[len(used)-1]]
	for _, n := range other.cache.Names() {
		if n == newStatement(parseOf("SELECT v FROM gone2"), "").serverName {
			t.Errorf("failed injected Parse left %s in the cache", n)
		}
	}
	// The session goes on: a plain query, then q2 again once the table is back.
	if got := execText(t, c, "SELECT 41 + 1"); got[0] != "42" {
		t.Fatalf("after error: %v", got)
	}
	pg.Exec(t, "CREATE TABLE gone2(v int); INSERT INTO gone2 VALUES (9);")
	for range 3 {
		got, err := prepared1(t, c, "q2")
		if err != nil || got != "9" {
			t.Fatalf("q2 after recreate = %q %v", got, err)
		}
	}
	// A client Parse that fails leaves no name behind, as on PostgreSQL:
	// the same name can be prepared again.
	if _, err := c.Prepare(ctx(t), "bad", "SELECT nope FROM nowhere", nil); !isCode(err, "42P01") {
		t.Fatalf("bad Parse: %v", err)
	}
	if _, err := c.Prepare(ctx(t), "bad", "SELECT 1", nil); err != nil {
		t.Fatalf("reuse of a failed name: %v", err)
	}
}

func parseOf(q string) *pgproto3.Parse { return &pgproto3.Parse{Query: q} }

// PostgreSQL re-analyses a prepared statement when the search_path differs
// from the one it was Parsed under, and refuses it (0A000 "cached plan must
// not change result type") when that changes its result columns. A client
// with its own connection never sees this; pooled clients with different
// search_paths would, if they shared the statement. So the scope separates
// them, even with the same query text on the same server connection.
func TestScopeSeparatesSearchPaths(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{Setup: []string{
		"CREATE SCHEMA a; CREATE SCHEMA b; CREATE TABLE a.t(v text); CREATE TABLE b.t(v int); INSERT INTO a.t VALUES ('a'); INSERT INTO b.t VALUES (2);",
	}})
	r := startRelay(t, pg, 1, 0)
	host, port, _ := net.SplitHostPort(r.addr())
	run := func(label, path string) string {
		t.Helper()
		c, err := pgconn.Connect(ctx(t), fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres sslmode=disable application_name=%s search_path=%s", host, port, label, path))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(context.Background())
		execText(t, c, "BEGIN; SET LOCAL search_path = "+path)
		if _, err := c.Prepare(ctx(t), "s", "SELECT v FROM t", nil); err != nil {
			t.Fatal(err)
		}
		got, err := prepared1(t, c, "s")
		if err != nil {
			t.Fatal(err)
		}
		execText(t, c, "COMMIT")
		return got
	}
	for _, tc := range []struct{ label, path, want string }{{"A", "a", "a"}, {"B", "b", "2"}, {"A2", "a", "a"}} {
		if got := run(tc.label, tc.path); got != tc.want {
			t.Errorf("client %s with search_path %s read %q, want %q", tc.label, tc.path, got, tc.want)
		}
	}
	// A and A2 share one statement; B has its own.
	if p, _ := r.servers[0].cache.Counters(); p != 2 || r.servers[0].cache.Len() != 2 {
		t.Errorf("Parses sent %d, cached %d; want 2 and 2", p, r.servers[0].cache.Len())
	}
}

// pgx in a failed transaction, preparing a statement the server already has:
// the query fails with 25P02 and works after ROLLBACK. (pgx itself closes a
// statement whose Describe failed before preparing it again, so this holds
// even with a synthesized ParseComplete; the exact answer, 25P02 to the
// Parse itself, is pinned by the oracle in TestPipelinedBatchesWithSync.)
func TestPgxPrepareInFailedTransaction(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	r := startRelay(t, pg, 1, 0)
	host, port, _ := net.SplitHostPort(r.addr())
	cx := ctx(t)
	dsn := fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres sslmode=disable", host, port)
	warm, err := pgx.Connect(cx, dsn+" application_name=warm")
	if err != nil {
		t.Fatal(err)
	}
	defer warm.Close(cx)
	const q = "SELECT $1::int + 7"
	var n int
	if err := warm.QueryRow(cx, q, 1).Scan(&n); err != nil || n != 8 {
		t.Fatalf("warm: %d %v", n, err)
	}
	conn, err := pgx.Connect(cx, dsn+" application_name=tx")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(cx)
	tx, err := conn.Begin(cx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(cx, "SELECT 1/0"); !isCode(err, "22012") {
		t.Fatalf("1/0: %v", err)
	}
	if err := tx.QueryRow(cx, q, 1).Scan(&n); !isCode(err, "25P02") {
		t.Fatalf("in the failed transaction: %v, want 25P02", err)
	}
	if err := tx.Rollback(cx); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := conn.QueryRow(cx, q, i).Scan(&n); err != nil || n != i+7 {
			t.Fatalf("after rollback: %d %v", n, err)
		}
	}
}
