package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/pooling"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

// The done-when tests of issue 14 beyond TPC-B: real PostgreSQL 15, real
// clients (pgx with its default statement cache, psql 15, pgbench) through
// the proxy's pools. Every failure a client meets is checked for its
// SQLSTATE and message, and for the pool going on serving the others.

// pgxPool connects pgx (default statement cache) to a pooled listener.
func pgxPool(t *testing.T, port int) *pgx.Conn {
	t.Helper()
	c, err := pgxConnect(t, port, "sslmode=disable")
	if err != nil {
		t.Fatalf("pgx connect through the pool: %v", err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// warmPool connects pgx and runs a query, retrying: with a short wait
// timeout the pool's first dial (bounded by it too) may not make it under
// load, and a failed dial backs off.
func warmPool(t *testing.T, port int) *pgx.Conn {
	t.Helper()
	var c *pgx.Conn
	waitFor(t, "a first pooled session", 20*time.Second, func() bool {
		var err error
		if c, err = pgxConnect(t, port, "sslmode=disable"); err != nil {
			return false
		}
		if _, err := str(c, "SELECT 'warm'"); err != nil {
			c.Close(context.Background())
			return false
		}
		return true
	})
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// busyPool starts a transaction pool of one server connection with a
// 1 s wait timeout, and holds that connection in a transaction: the
// proxy's port, the holding client and its transaction.
func busyPool(t *testing.T, env *testEnv) (int, *pgx.Conn, pgx.Tx) {
	t.Helper()
	p := pooledProxy(t, env, pooling.ModeTransaction, 1, func(pc *PoolConfig) { pc.WaitTimeout = time.Second })
	port := p.port(t, "pooled")
	holder := warmPool(t, port)
	ctx, cancel := qctx()
	defer cancel()
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mustStr(t, tx, "SELECT 'holding the only server connection'")
	return port, holder, tx
}

// qctx bounds one test query (a hang guard).
func qctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 20*time.Second)
}

// str runs a one-value query.
func str(c interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, sql string, args ...any) (string, error) {
	ctx, cancel := qctx()
	defer cancel()
	var s string
	err := c.QueryRow(ctx, sql, args...).Scan(&s)
	return s, err
}

func mustStr(t *testing.T, c interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, sql string, args ...any) string {
	t.Helper()
	s, err := str(c, sql, args...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

// wantPgError checks that err is the PostgreSQL error code (one of codes)
// with a message containing msg.
func wantPgError(t *testing.T, what string, err error, msg string, codes ...string) *pgconn.PgError {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		t.Fatalf("%s: want SQLSTATE %v, got %v", what, codes, err)
	}
	for _, c := range codes {
		if pe.Code == c {
			if !strings.Contains(pe.Message, msg) {
				t.Fatalf("%s: SQLSTATE %s but message %q lacks %q", what, pe.Code, pe.Message, msg)
			}
			return pe
		}
	}
	t.Fatalf("%s: want SQLSTATE %v, got %s %s: %s (hint %q)", what, codes, pe.Severity, pe.Code, pe.Message, pe.Hint)
	return nil
}

// appBackends counts the server connections of role app.
func appBackends(t *testing.T, env *testEnv) int {
	t.Helper()
	n, err := strconv.Atoi(lastLine(env.srv.Exec(t, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'")))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestPoolPgxStatementCache: 8 pgx connections with the default statement
// cache over 3 server connections in transaction mode, 200 iterations of
// four parameterized statements each, every result checked; then batches
// (pgx pipelines them), in and out of a transaction.
func TestPoolPgxStatementCache(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	p := pooledProxy(t, env, pooling.ModeTransaction, 3, nil)
	port := p.port(t, "pooled")
	const clients, iterations = 8, 200
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	var pidsMu sync.Mutex
	pids := map[uint32]bool{}
	movedClients := atomic.Int32{}
	for i := range clients {
		c := pgxPool(t, port)
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := map[uint32]bool{}
			err := func() error {
				for k := range iterations {
					ctx, cancel := qctx()
					var sum int
					if err := c.QueryRow(ctx, "SELECT $1::int + $2::int", i, k).Scan(&sum); err != nil || sum != i+k {
						cancel()
						return fmt.Errorf("client %d iteration %d sum: %d, %v", i, k, sum, err)
					}
					var s string
					if err := c.QueryRow(ctx, "SELECT $1::text || '-' || $2::text", fmt.Sprint(i), fmt.Sprint(k)).Scan(&s); err != nil || s != fmt.Sprintf("%d-%d", i, k) {
						cancel()
						return fmt.Errorf("client %d iteration %d concat: %q, %v", i, k, s, err)
					}
					var n int64
					if err := c.QueryRow(ctx, "SELECT count(*) FROM generate_series(1, $1::int)", k%50+1).Scan(&n); err != nil || n != int64(k%50+1) {
						cancel()
						return fmt.Errorf("client %d iteration %d count: %d, %v", i, k, n, err)
					}
					var pid uint32
					var echo string
					if err := c.QueryRow(ctx, "SELECT pg_backend_pid()::int8, $1::text", "x"+fmt.Sprint(k)).Scan(&pid, &echo); err != nil || echo != "x"+fmt.Sprint(k) {
						cancel()
						return fmt.Errorf("client %d iteration %d pid: %q, %v", i, k, echo, err)
					}
					cancel()
					mine[pid] = true
				}
				return nil
			}()
			if err != nil {
				errs <- err
			}
			if len(mine) > 1 {
				movedClients.Add(1)
			}
			pidsMu.Lock()
			for pid := range mine {
				pids[pid] = true
			}
			pidsMu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	if len(pids) < 2 || len(pids) > 3 {
		t.Fatalf("the clients ran on %d server backends, want 2..3 (pool size 3)", len(pids))
	}
	if movedClients.Load() == 0 {
		t.Fatal("no client's statements ran on more than one server connection: the test proves nothing")
	}

	// Batches: pgx sends them as one pipeline of Parse/Describe/Bind/Execute.
	c := pgxPool(t, port)
	hold := pgxPool(t, port) // keeps one server connection busy in between
	for round := range 3 {
		b := &pgx.Batch{}
		for k := range 20 {
			b.Queue("SELECT $1::int * 3, $2::text", k, fmt.Sprint(round))
		}
		b.Queue("SELECT count(*) FROM generate_series(1, $1::int)", 7)
		ctx, cancel := qctx()
		br := c.SendBatch(ctx, b)
		for k := range 20 {
			var v int
			var s string
			if err := br.QueryRow().Scan(&v, &s); err != nil || v != 3*k || s != fmt.Sprint(round) {
				t.Fatalf("batch %d item %d: %d %q %v", round, k, v, s, err)
			}
		}
		var n int
		if err := br.QueryRow().Scan(&n); err != nil || n != 7 {
			t.Fatalf("batch %d count: %d %v", round, n, err)
		}
		if err := br.Close(); err != nil {
			t.Fatalf("batch %d close: %v", round, err)
		}
		// The same batch inside a transaction.
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		tb := &pgx.Batch{}
		tb.Queue("SELECT pg_backend_pid()::int8")
		tb.Queue("SELECT $1::int + 1", round)
		tb.Queue("SELECT pg_backend_pid()::int8")
		r := tx.SendBatch(ctx, tb)
		var p1, p2 int64
		var v int
		if err := r.QueryRow().Scan(&p1); err != nil {
			t.Fatal(err)
		}
		if err := r.QueryRow().Scan(&v); err != nil || v != round+1 {
			t.Fatalf("tx batch: %d %v", v, err)
		}
		if err := r.QueryRow().Scan(&p2); err != nil || p1 != p2 {
			t.Fatalf("tx batch ran on two backends %d, %d: %v", p1, p2, err)
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		cancel()
		mustStr(t, hold, "SELECT 'hold'")
	}
	// COPY FROM STDIN and messages larger than the relay's buffers.
	ctx, cancel := qctx()
	defer cancel()
	if _, err := c.Exec(ctx, "CREATE TABLE copied (id int, payload text)"); err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("0123456789abcdef", 16<<10) // 256 KiB
	rows := make([][]any, 2000)
	for i := range rows {
		rows[i] = []any{i, fmt.Sprint(i)}
	}
	rows[7][1] = big
	n, err := c.CopyFrom(ctx, pgx.Identifier{"copied"}, []string{"id", "payload"}, pgx.CopyFromRows(rows))
	if err != nil || n != 2000 {
		t.Fatalf("CopyFrom through the pool: %d %v", n, err)
	}
	var sum, total int64
	if err := c.QueryRow(ctx, "SELECT sum(id), sum(length(payload)) FROM copied").Scan(&sum, &total); err != nil || sum != 1999*2000/2 || total < int64(len(big)) {
		t.Fatalf("copied rows: %d %d %v", sum, total, err)
	}
	var echo string
	if err := c.QueryRow(ctx, "SELECT $1::text || (SELECT payload FROM copied WHERE id = 7)", big).Scan(&echo); err != nil || echo != big+big {
		t.Fatalf("512 KiB round trip: %d bytes, %v", len(echo), err)
	}
	if n := appBackends(t, env); n > 3 {
		t.Fatalf("%d server backends for app, pool size 3", n)
	}
	t.Logf("pgx: %d clients x %d iterations x 4 statements over %d server backends; %d of the clients ran on more than one", clients, iterations, len(pids), movedClients.Load())
}

// pipelineResults reads every pending result of a pgconn pipeline: the
// first column of each row, and "sync" at each sync point.
func pipelineResults(t *testing.T, pl *pgconn.Pipeline) []string {
	t.Helper()
	var out []string
	for {
		r, err := pl.GetResults()
		if err != nil {
			t.Fatalf("pipeline result %d: %v", len(out), err)
		}
		switch r := r.(type) {
		case nil:
			return out
		case *pgconn.StatementDescription:
			out = append(out, fmt.Sprintf("prepared %d params", len(r.ParamOIDs)))
		case *pgconn.ResultReader:
			res := r.Read()
			if res.Err != nil {
				t.Fatalf("pipeline result %d: %v", len(out), res.Err)
			}
			for _, row := range res.Rows {
				out = append(out, string(row[0]))
			}
		case *pgconn.PipelineSync:
			out = append(out, "sync")
		}
	}
}

// TestPoolPgconnPipeline: a pgconn pipeline of a named prepare and
// executions across two sync points, then the named statement executed on
// each of the two server connections in turn (re-prepared on the one that
// lacks it).
func TestPoolPgconnPipeline(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	p := pooledProxy(t, env, pooling.ModeTransaction, 2, nil)
	port := p.port(t, "pooled")
	ctx, cancel := qctx()
	defer cancel()
	pc, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=app dbname=appdb sslmode=disable", port))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(context.Background())
	pl := pc.StartPipeline(ctx)
	pl.SendPrepare("ps1", "SELECT ($1::int + 100)::text", nil)
	pl.SendQueryPrepared("ps1", [][]byte{[]byte("1")}, nil, nil)
	pl.SendPipelineSync()
	pl.SendQueryPrepared("ps1", [][]byte{[]byte("2")}, nil, nil)
	pl.SendQueryParams("SELECT $1::text || '!'", [][]byte{[]byte("hi")}, nil, nil, nil)
	pl.SendPipelineSync()
	if err := pl.Flush(); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(pipelineResults(t, pl), ",")
	if err := pl.Close(); err != nil {
		t.Fatal(err)
	}
	if want := "prepared 1 params,101,sync,102,hi!,sync"; got != want {
		t.Fatalf("pipeline results %q, want %q", got, want)
	}
	holders := []*pgx.Conn{pgxPool(t, port), pgxPool(t, port)}
	txs := make([]pgx.Tx, 2)
	hpid := make([]string, 2)
	for i, h := range holders {
		if txs[i], err = h.Begin(ctx); err != nil {
			t.Fatal(err)
		}
		hpid[i] = mustStr(t, txs[i], "SELECT pg_backend_pid()::text")
	}
	for round := range 4 {
		i := round % 2
		if err := txs[i].Commit(ctx); err != nil {
			t.Fatal(err)
		}
		res := pc.ExecPrepared(ctx, "ps1", [][]byte{[]byte(strconv.Itoa(round))}, nil, nil).Read()
		if err := res.Err; err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != strconv.Itoa(100+round) {
			t.Fatalf("round %d: ps1 on server connection %s: %v %v", round, hpid[i], res.Rows, res.Err)
		}
		r, err := pc.Exec(ctx, "SELECT pg_backend_pid()::text").ReadAll()
		if err != nil || string(r[0].Rows[0][0]) != hpid[i] {
			t.Fatalf("round %d: ran on %v, the only free server connection is %s: %v", round, r, hpid[i], err)
		}
		if txs[i], err = holders[i].Begin(ctx); err != nil {
			t.Fatal(err)
		}
		hpid[i] = mustStr(t, txs[i], "SELECT pg_backend_pid()::text")
	}
}

// TestPoolSessionModePsql: psql sessions in session mode keep SET, a
// temporary table and LISTEN/NOTIFY; the next client on the same backend
// (pool size 1, same pg_backend_pid) finds them gone (DISCARD ALL ran).
func TestPoolSessionModePsql(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	p := pooledProxy(t, env, pooling.ModeSession, 1, nil)
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=app dbname=appdb sslmode=disable", p.port(t, "pooled"))
	r := pgtest.PsqlQuery(t, dsn, `SET work_mem = '7MB'; SHOW work_mem;
CREATE TEMP TABLE tt (x int); INSERT INTO tt VALUES (41), (1); SELECT sum(x) FROM tt;
LISTEN ch; NOTIFY ch, 'hello';
SELECT 'pid=' || pg_backend_pid()`, nil)
	if !r.OK {
		t.Fatalf("psql in session mode: %d %s %s", r.ExitCode, r.Stdout, r.Stderr)
	}
	out := r.Stdout
	pid := ""
	for _, l := range lines(out) {
		if v, ok := strings.CutPrefix(l, "pid="); ok {
			pid = v
		}
	}
	if !strings.Contains(out, "7MB\n") || !strings.Contains(out, "42\n") ||
		!strings.Contains(out, `Asynchronous notification "ch" with payload "hello" received from server process with PID `+pid) || pid == "" {
		t.Fatalf("session state within a session-mode session:\n%s\n%s", out, r.Stderr)
	}
	r = pgtest.PsqlQuery(t, dsn, `SELECT pg_backend_pid() || ' ' || current_setting('work_mem') || ' ' ||
       (to_regclass('pg_temp.tt') IS NULL) || ' ' || (SELECT count(*) FROM pg_listening_channels())`, nil)
	if !r.OK {
		t.Fatalf("second psql: %s %s", r.Stdout, r.Stderr)
	}
	want := pid + " 4MB true 0"
	if got := strings.TrimSpace(r.Stdout); got != want {
		t.Fatalf("next client on the same server connection sees %q, want %q (same backend, defaults)", got, want)
	}
	if n := appBackends(t, env); n != 1 {
		t.Fatalf("%d app backends, pool size 1", n)
	}
	// Sequential sessions reuse the one server connection: every reset
	// succeeds and nothing is closed or reopened.
	for k := range 60 {
		c, err := pgxConnect(t, p.port(t, "pooled"), "sslmode=disable")
		if err != nil {
			t.Fatalf("session %d: %v", k, err)
		}
		got, err := str(c, "SELECT pg_backend_pid()::text")
		c.Close(context.Background())
		if err != nil || got != pid {
			t.Fatalf("session %d ran on %q, want the pool's one backend %s: %v", k, got, pid, err)
		}
	}
	labels := map[string]string{"pool": "local", "database": "appdb", "role": "app"}
	waitFor(t, "the last reset", 10*time.Second, func() bool {
		return p.metric(t, "pgtrust_pool_servers", map[string]string{"pool": "local", "state": "idle"}) == 1
	})
	if o, c := p.metric(t, "pgtrust_pool_servers_opened_total", labels), p.metric(t, "pgtrust_pool_servers_closed_total", labels); o != 1 || c != 0 {
		t.Fatalf("62 sequential session-mode sessions opened %v and closed %v server connections, want 1 and 0", o, c)
	}

	// The backend of a session-mode session terminated: that client gets
	// FATAL 57P01 (or 08006), the next session gets a new backend.
	c := pgxPool(t, p.port(t, "pooled"))
	victim := mustStr(t, c, "SELECT pg_backend_pid()::text")
	env.srv.Exec(t, "SELECT pg_terminate_backend("+victim+")")
	_, err := str(c, "SELECT 1::text")
	wantPgError(t, "session-mode query after its backend was terminated", err, "", "57P01", "08006")
	r = pgtest.PsqlQuery(t, dsn, "SELECT pg_backend_pid()", nil)
	if !r.OK || strings.TrimSpace(r.Stdout) == victim {
		t.Fatalf("session after the terminated one: %s %s", r.Stdout, r.Stderr)
	}
}

// TestPoolTransactionParamsAndHazards: a SET DateStyle follows its client
// across server connections and does not leak to another client; LISTEN
// ends the session after its transaction with FATAL 0A000; a startup
// parameter the pool cannot carry is refused at login with a hint. The
// pool serves the others throughout.
func TestPoolTransactionParamsAndHazards(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	p := pooledProxy(t, env, pooling.ModeTransaction, 2, nil)
	port := p.port(t, "pooled")
	a, b := pgxPool(t, port), pgxPool(t, port)
	holders := []*pgx.Conn{pgxPool(t, port), pgxPool(t, port)}
	ctx, cancel := qctx()
	defer cancel()
	if _, err := a.Exec(ctx, "SET DateStyle = German"); err != nil {
		t.Fatal(err)
	}
	// Both server connections held in transactions; each round frees one,
	// so a and b run on it: a alternately on each server connection.
	txs := make([]pgx.Tx, 2)
	hpid := make([]string, 2)
	for i, h := range holders {
		tx, err := h.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		txs[i], hpid[i] = tx, mustStr(t, tx, "SELECT pg_backend_pid()::text")
	}
	if hpid[0] == hpid[1] {
		t.Fatalf("two transactions on one backend %s", hpid[0])
	}
	aPids := map[string]bool{}
	for round := range 4 {
		i := round % 2
		if err := txs[i].Commit(ctx); err != nil {
			t.Fatal(err)
		}
		got := mustStr(t, a, "SELECT pg_backend_pid() || ' ' || current_setting('DateStyle') || ' ' || '2024-01-31'::date::text")
		f := strings.Fields(got)
		if len(f) != 4 || f[1]+" "+f[2] != "German, DMY" || f[3] != "31.01.2024" {
			t.Fatalf("round %d: client A sees %q, want German", round, got)
		}
		if f[0] != hpid[i] {
			t.Fatalf("round %d: client A ran on %s, the only free server connection is %s", round, f[0], hpid[i])
		}
		aPids[f[0]] = true
		gotB := mustStr(t, b, "SELECT pg_backend_pid() || ' ' || current_setting('DateStyle') || ' ' || '2024-01-31'::date::text")
		if fb := strings.Fields(gotB); len(fb) != 4 || fb[0] != f[0] || fb[1]+" "+fb[2] != "ISO, MDY" || fb[3] != "2024-01-31" {
			t.Fatalf("round %d: client B on A's server connection %s sees %q, want ISO", round, f[0], gotB)
		}
		tx, err := holders[i].Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		txs[i], hpid[i] = tx, mustStr(t, tx, "SELECT pg_backend_pid()::text")
	}
	for _, tx := range txs {
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if len(aPids) != 2 {
		t.Fatalf("client A ran on %v: its SET was not replayed on both server connections", aPids)
	}
	if ds := a.PgConn().ParameterStatus("DateStyle"); ds != "German, DMY" {
		t.Fatalf("client A's DateStyle ParameterStatus %q", ds)
	}
	if ds := b.PgConn().ParameterStatus("DateStyle"); ds != "ISO, MDY" {
		t.Fatalf("client B's DateStyle ParameterStatus %q", ds)
	}

	// LISTEN: the transaction's ReadyForQuery, then FATAL 0A000.
	l, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=app dbname=appdb sslmode=disable", port))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close(context.Background())
	if _, err := l.Exec(ctx, "LISTEN ch").ReadAll(); err != nil {
		t.Fatalf("LISTEN itself: the transaction should complete first: %v", err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	err = l.WaitForNotification(wctx)
	wcancel()
	pe := wantPgError(t, "after LISTEN in transaction mode", err, "LISTEN is not supported in transaction pooling mode", "0A000")
	if pe.Severity != "FATAL" || !strings.Contains(pe.Hint, "session") {
		t.Fatalf("LISTEN refusal: severity %s hint %q", pe.Severity, pe.Hint)
	}
	if !l.IsClosed() {
		t.Fatal("the session that ran LISTEN is still open")
	}
	if got := mustStr(t, b, "SELECT current_setting('DateStyle')"); got != "ISO, MDY" {
		t.Fatalf("after the LISTEN session ended, B sees %q", got)
	}
	// The server connection that ran LISTEN is closed, not reused.
	waitFor(t, "no backend listening", 10*time.Second, func() bool {
		return lastLine(env.srv.Exec(t, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND query = 'LISTEN ch'")) == "0"
	})

	// The other state transaction mode cannot carry: the same answer. A
	// SET LOCAL inside a transaction is fine.
	for _, sql := range []string{
		"SET work_mem = '8MB'",
		"BEGIN; DECLARE cur CURSOR WITH HOLD FOR SELECT 1; COMMIT",
		"PREPARE sqlprep AS SELECT 1",
		"CREATE TEMP TABLE tmp1 (x int)",
		"BEGIN; SET LOCAL work_mem = '8MB'; COMMIT",
	} {
		h, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=app dbname=appdb sslmode=disable", port))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.Exec(ctx, sql).ReadAll(); err != nil {
			t.Fatalf("%s: the statement itself should complete: %v", sql, err)
		}
		wctx, wcancel := context.WithTimeout(ctx, 3*time.Second)
		err = h.WaitForNotification(wctx)
		wcancel()
		if strings.Contains(sql, "SET LOCAL") {
			if _, err2 := h.Exec(ctx, "SELECT 1").ReadAll(); err2 != nil {
				t.Fatalf("after %s: %v / %v", sql, err, err2)
			}
		} else if pe := wantPgError(t, "after "+sql, err, "not supported in transaction pooling mode", "0A000"); pe.Severity != "FATAL" || pe.Hint == "" {
			t.Fatalf("%s: severity %s hint %q", sql, pe.Severity, pe.Hint)
		}
		h.Close(ctx)
	}
	if got := mustStr(t, b, "SELECT current_setting('work_mem')"); got != "4MB" {
		t.Fatalf("B after the hazards sees work_mem %q", got)
	}

	// A startup parameter the pool cannot carry: FATAL at login, with the hint.
	_, err = pgxConnect(t, port, "sslmode=disable options='-c statement_timeout=5s'")
	pe = wantPgError(t, "options=-c statement_timeout=5s", err, "statement_timeout", "0A000")
	if pe.Severity != "FATAL" || pe.Hint == "" {
		t.Fatalf("startup refusal: severity %s hint %q", pe.Severity, pe.Hint)
	}
	r := pgtest.PsqlQuery(t, fmt.Sprintf("host=127.0.0.1 port=%d user=app dbname=appdb sslmode=disable options='-c statement_timeout=5s'", port), "SELECT 1", nil)
	if r.OK || !strings.Contains(r.Stderr, "FATAL") || !strings.Contains(r.Stderr, "HINT") {
		t.Fatalf("psql with an uncarriable startup parameter: ok=%v\n%s", r.OK, r.Stderr)
	}
	t.Logf("psql sees: %s", strings.TrimSpace(r.Stderr))
	if got := mustStr(t, a, "SELECT current_setting('DateStyle')"); got != "German, DMY" {
		t.Fatalf("A after the refusals: %q", got)
	}
}

// TestPoolWaitTimeoutAndMaxClients: with the only server connection held
// in a transaction, a second client gets 53300 after the wait timeout and
// the holder carries on; above max_connections a client gets "too many
// clients" and the admitted ones carry on.
func TestPoolWaitTimeoutAndMaxClients(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	port, holder, tx := busyPool(t, env)
	waiter := pgxPool(t, port)
	ctx, cancel := qctx()
	defer cancel()
	t0 := time.Now()
	_, err := str(waiter, "SELECT 'waiter'")
	waited := time.Since(t0)
	wantPgError(t, "client waiting for the pool's only server connection", err, "pgtrust", "53300")
	var pe *pgconn.PgError
	errors.As(err, &pe)
	if waited > 10*time.Second {
		t.Fatalf("the wait timeout error took %v (hang guard)", waited)
	}
	t.Logf("wait timeout 1s: the waiter got %s %q after %v", pe.Code, pe.Message, waited.Round(time.Millisecond))
	if got := mustStr(t, tx, "SELECT 'still in'"); got != "still in" {
		t.Fatal(got)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("holder commit: %v", err)
	}
	if got := mustStr(t, pgxPool(t, port), "SELECT 'new'"); got != "new" {
		t.Fatal(got)
	}
	if got := mustStr(t, holder, "SELECT 'after'"); got != "after" {
		t.Fatal(got)
	}

	// max_connections: 2 sessions admitted, the third refused.
	up := env.upstream(t)
	up.User, up.Database = "app", "appdb"
	q := startProxy(t, Config{Upstreams: []UpstreamConfig{{
		Name: "small", Listen: "127.0.0.1:0", Conn: up, Auth: &UpstreamAuth{Role: "app"}, MaxConnections: 2,
		// Two may authenticate at once: the limit under test is max_connections.
		MaxAuthenticating: 2,
		Pool:              &PoolConfig{Mode: pooling.ModeTransaction, Size: 2},
	}}})
	qport := q.port(t, "small")
	s1, s2 := pgxPool(t, qport), pgxPool(t, qport)
	_, err = pgxConnect(t, qport, "sslmode=disable")
	if pe := wantPgError(t, "third client over max_connections 2", err, "too many clients", "53300"); !strings.Contains(pe.Detail, "max_connections=2") {
		t.Fatalf("refused for another reason: %q", pe.Detail)
	}
	for i, s := range []*pgx.Conn{s1, s2} {
		if got := mustStr(t, s, "SELECT 'ok'"); got != "ok" {
			t.Fatalf("admitted session %d: %q", i, got)
		}
	}
	s1.Close(ctx)
	waitFor(t, "a slot to free up", 10*time.Second, func() bool {
		c, err := pgxConnect(t, qport, "sslmode=disable")
		if err != nil {
			return false
		}
		defer c.Close(context.Background())
		_, err = str(c, "SELECT 'x'")
		return err == nil
	})
}

// TestPoolServerLoss: a backend terminated in the middle of a client's
// transaction gives that client FATAL 57P01 while others keep working; an
// upstream restart leaves the sessions that were idle between
// transactions working on their next transaction, and new ones too.
func TestPoolServerLoss(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	p := pooledProxy(t, env, pooling.ModeTransaction, 2, nil)
	port := p.port(t, "pooled")
	victim, other := pgxPool(t, port), pgxPool(t, port)
	ctx, cancel := qctx()
	defer cancel()
	tx, err := victim.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pid := mustStr(t, tx, "SELECT pg_backend_pid()::text")
	if got := mustStr(t, other, "SELECT 'other'"); got != "other" {
		t.Fatal(got)
	}
	env.srv.Exec(t, "SELECT pg_terminate_backend("+pid+")")
	_, err = str(tx, "SELECT 'victim'")
	wantPgError(t, "query after its backend was terminated", err, "terminat", "57P01", "08006")
	if got := mustStr(t, other, "SELECT 'other again'"); got != "other again" {
		t.Fatal(got)
	}
	if got := mustStr(t, pgxPool(t, port), "SELECT 'fresh'"); got != "fresh" {
		t.Fatal(got)
	}

	// A client that vanishes in the middle of a transaction: its server
	// connection is not handed to anyone with the transaction open.
	gone, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=app dbname=appdb sslmode=disable", port))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gone.Exec(ctx, "BEGIN; CREATE TABLE uncommitted (x int); SELECT 1").ReadAll(); err != nil {
		t.Fatal(err)
	}
	gone.Conn().Close() // no Terminate, no ROLLBACK
	for k := range 6 {
		// Both server connections, whichever the pool hands out.
		got := mustStr(t, other, "SELECT coalesce(to_regclass('uncommitted')::text, 'none')")
		if got != "none" {
			t.Fatalf("transaction %d after a client vanished mid-transaction: %q (its transaction leaked)", k, got)
		}
	}
	waitFor(t, "the vanished client's transaction to end", 15*time.Second, func() bool {
		return lastLine(env.srv.Exec(t, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND state LIKE 'idle in transaction%'")) == "0"
	})

	// Restart: every server connection dies while a and b sit idle
	// between transactions.
	a, b := pgxPool(t, port), pgxPool(t, port)
	pa, pb := mustStr(t, a, "SELECT pg_backend_pid()::text"), mustStr(t, b, "SELECT pg_backend_pid()::text")
	// ... while another session is in the middle of a transaction.
	inTx := pgxPool(t, port)
	tx2, err := inTx.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mustStr(t, tx2, "SELECT 'begun'")
	env.srv.Restart(t)
	_, err = str(tx2, "SELECT 'across the restart'")
	wantPgError(t, "transaction across the restart", err, "", "57P01", "08006")
	for i, c := range []*pgx.Conn{a, b, other} {
		for k := range 3 {
			got, err := str(c, "SELECT pg_backend_pid()::text")
			if err != nil {
				t.Fatalf("session %d, transaction %d after the restart: %v", i, k, err)
			}
			if got == pa || got == pb {
				t.Fatalf("session %d ran on backend %s from before the restart", i, got)
			}
		}
	}
	if got := mustStr(t, pgxPool(t, port), "SELECT 'after restart'"); got != "after restart" {
		t.Fatal(got)
	}
}

// TestPoolCancel: a cancel through the pool stops the query of the client
// that sent it and no other; a cancel from a client holding no server
// connection does nothing.
func TestPoolCancel(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	p := pooledProxy(t, env, pooling.ModeTransaction, 3, nil)
	port := p.port(t, "pooled")
	a, b := pgxPool(t, port), pgxPool(t, port)
	type res struct {
		v   string
		err error
		d   time.Duration
	}
	run := func(c *pgx.Conn, sql string) chan res {
		ch := make(chan res, 1)
		go func() {
			t0 := time.Now()
			v, err := str(c, sql)
			ch <- res{v, err, time.Since(t0)}
		}()
		return ch
	}
	sleeping := func(n int) func() bool {
		return func() bool {
			s := env.srv.Exec(t, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND query LIKE 'SELECT pg_sleep%' AND state = 'active'")
			return lastLine(s) == strconv.Itoa(n)
		}
	}
	ra := run(a, "SELECT pg_sleep(30)::text || 'A'")
	rb := run(b, "SELECT pg_sleep(4)::text || 'B'")
	waitFor(t, "both queries to run", 10*time.Second, sleeping(2))
	ctx, cancel := qctx()
	defer cancel()
	if err := a.PgConn().CancelRequest(ctx); err != nil {
		t.Fatalf("cancel request: %v", err)
	}
	ga := <-ra
	wantPgError(t, "A after its cancel", ga.err, "canceling statement due to user request", "57014")
	if ga.d > 20*time.Second {
		t.Fatalf("A ran %v: the cancel did not stop it", ga.d)
	}
	gb := <-rb
	if gb.err != nil || gb.v != "B" {
		t.Fatalf("B was hit by A's cancel: %q %v", gb.v, gb.err)
	}
	aPid := mustStr(t, a, "SELECT pg_backend_pid()::text")
	// A is idle and holds no server connection: its cancel must not reach
	// B's query, which runs on the server connection A used last (the pool
	// hands out the most recently released one).
	rb = run(b, "SELECT pg_sleep(4)::text || pg_backend_pid()")
	waitFor(t, "B's query to run", 10*time.Second, sleeping(1))
	if err := a.PgConn().CancelRequest(ctx); err != nil {
		t.Fatalf("idle cancel request: %v", err)
	}
	if gb := <-rb; gb.err != nil || gb.v != aPid {
		t.Fatalf("B, on A's last server connection %s, after idle A's cancel: %q %v", aPid, gb.v, gb.err)
	}
	waitFor(t, "the idle cancel counted", 10*time.Second, func() bool {
		return p.metric(t, "pgtrust_cancel_requests_total", map[string]string{"result": "idle"}) == 1
	})
	if got := mustStr(t, a, "SELECT 'A fine'"); got != "A fine" {
		t.Fatal(got)
	}
	t.Logf("cancel: A stopped after %v; B finished in %v", ga.d.Round(time.Millisecond), gb.d.Round(time.Millisecond))
}

// TestPoolRotationUnderLoad: the upstream client certificate is replaced
// while 8 clients run transactions through a transaction-mode pool of 4;
// within a bound every server connection presents the new certificate
// (pg_stat_ssl.client_serial) and no query failed.
func TestPoolRotationUnderLoad(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	p := pooledProxy(t, env, pooling.ModeTransaction, 4, nil)
	port := p.port(t, "pooled")
	serials := func() (string, int) {
		out := env.srv.Exec(t, `SELECT coalesce(string_agg(DISTINCT s.client_serial::text, ','), '') || ' ' || count(*)
FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.usename = 'app'`)
		f := strings.Fields(lastLine(out))
		if len(f) == 1 {
			return "", 0
		}
		n, _ := strconv.Atoi(f[1])
		return f[0], n
	}
	stop := make(chan struct{})
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for i := range 8 {
		c := pgxPool(t, port)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				err := func() error {
					ctx, cancel := qctx()
					defer cancel()
					tx, err := c.Begin(ctx)
					if err != nil {
						return err
					}
					var v int
					if err := tx.QueryRow(ctx, "SELECT $1::int * 2", k).Scan(&v); err != nil || v != 2*k {
						_ = tx.Rollback(ctx)
						return fmt.Errorf("client %d: %d %v", i, v, err)
					}
					return tx.Commit(ctx)
				}()
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					time.Sleep(10 * time.Millisecond)
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()
	waitFor(t, "load on the pool", 10*time.Second, func() bool { return ok.Load() > 100 })
	old := env.client.Cert.SerialNumber.String()
	if s, n := serials(); s != old || n < 1 || n > 4 {
		t.Fatalf("before rotation: serials %q on %d backends", s, n)
	}
	leaf := env.ca.Client(t, "app")
	want := leaf.Cert.SerialNumber.String()
	t0 := time.Now()
	writeAtomic(t, env.keyFil, leaf.KeyPEM, 0o600)
	writeAtomic(t, env.certFile, leaf.ChainPEM, 0o644)
	before := ok.Load()
	waitFor(t, "every server connection to carry the new certificate", 20*time.Second, func() bool {
		s, n := serials()
		return s == want && n >= 1 && ok.Load() > before+50
	})
	took := time.Since(t0)
	close(stop)
	wg.Wait()
	if f := failed.Load(); f != 0 {
		t.Fatalf("%d failed transactions during the rotation, first: %v", f, firstErr.Load())
	}
	retired := p.metric(t, "pgtrust_pool_servers_retired_total", map[string]string{"pool": "local"})
	if retired < 1 {
		t.Fatalf("no server connection was retired (metric %v)", retired)
	}
	s, n := serials()
	t.Logf("rotation under load: every one of %d server connections on serial %s %v after the files were replaced; %d transactions, 0 failed; %v connections retired",
		n, s, took.Round(time.Millisecond), ok.Load(), retired)
}

// TestPoolGateway: a cluster_secret gateway listener pooled in transaction
// mode (SCRAM-SHA-256 and -PLUS with channel_binding=require through
// psql) and a cert gateway listener pooled, each under pgbench -S.
func TestPoolGateway(t *testing.T) {
	t.Parallel()
	e := newGatewayEnv(t)
	e.srv.Exec(t, `CREATE TABLE pgbench_branches (bid int PRIMARY KEY, bbalance int, filler char(88));
CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84));
INSERT INTO pgbench_branches VALUES (1, 0, '');
INSERT INTO pgbench_accounts SELECT g, 1, 0, '' FROM generate_series(1, 100000) g;
GRANT SELECT ON pgbench_branches, pgbench_accounts TO app_rw, alice;`)
	cfg := e.cfg
	cfg.Upstreams = append([]UpstreamConfig(nil), e.cfg.Upstreams...)
	cfg.Upstreams[0].Gateways = append([]GatewayConfig(nil), e.cfg.Upstreams[0].Gateways...)
	cfg.Upstreams[0].Pool = &PoolConfig{Mode: pooling.ModeTransaction, Size: 3}
	cfg.Upstreams[0].Gateways[2].PoolMode = string(pooling.ModeSession)
	ge := *e
	ge.run = startProxy(t, cfg)
	secretPort, certPort := ge.gwPort(t, 0), ge.gwPort(t, 2)

	for _, cb := range []string{"disable", "require"} {
		r := ge.psql(t, secretPort, "teesql_readwrite", gwReadWriteSecret,
			"SELECT current_user || ' ' || (SELECT count(*) FROM pgbench_branches)", "channel_binding="+cb)
		if !r.OK || strings.TrimSpace(r.Stdout) != "app_rw 1" {
			t.Fatalf("psql channel_binding=%s through the pooled cluster_secret gateway: %s %s", cb, r.Stdout, r.Stderr)
		}
	}
	base := map[string]string{"PGHOST": "127.0.0.1", "PGDATABASE": "postgres", "PGSSLMODE": "verify-full", "PGSSLROOTCERT": ge.gwRoot}
	secretEnv := map[string]string{"PGPORT": strconv.Itoa(secretPort), "PGUSER": "teesql_readwrite", "PGPASSWORD": gwReadWriteSecret, "PGCHANNELBINDING": "require"}
	d := t.TempDir()
	certEnv := map[string]string{"PGPORT": strconv.Itoa(certPort), "PGUSER": gwCertUserAlice,
		"PGSSLCERT": testpki.WriteFile(t, d, "c.crt", e.alice.ChainPEM, 0o644), "PGSSLKEY": testpki.WriteFile(t, d, "c.key", e.alice.KeyPEM, 0o600)}
	// Transaction mode: 6 clients share 3 server connections. Session mode
	// takes a server connection at login, so its pgbench runs as many
	// clients as the pool has connections (pgbench opens every client
	// before it starts, and a fourth would wait at login for one of the
	// first three to disconnect).
	for _, run := range []struct {
		name    string
		env     map[string]string
		clients int
	}{{"cluster_secret", secretEnv, 6}, {"cert", certEnv, 3}} {
		for k, v := range base {
			run.env[k] = v
		}
		n := strconv.Itoa(run.clients)
		out, err := pgbench(t, run.env, "-S", "-n", "-c", n, "-j", n, "-t", "50", "-M", "extended")
		if err != nil || !strings.Contains(out, "number of failed transactions: 0") || !strings.Contains(out, fmt.Sprintf("actually processed: %d/%d", 50*run.clients, 50*run.clients)) {
			t.Fatalf("pgbench -S through the pooled %s gateway: %v\n%s", run.name, err, out)
		}
	}
	for _, pool := range []string{"gateway1", "gateway3"} {
		opened := ge.run.metric(t, "pgtrust_pool_servers_opened_total", map[string]string{"pool": pool})
		if opened < 1 || opened > 3 {
			t.Fatalf("pool %s opened %v server connections, want 1..3 (size 3)", pool, opened)
		}
	}
}

// TestPoolStatusUnderLoad: /health/pools and the pgtrust_pool_* metrics
// while 8 clients saturate a pool of 2: clients wait, both servers are
// active; afterwards the servers are idle and nobody waits.
func TestPoolStatusUnderLoad(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	p := pooledProxy(t, env, pooling.ModeTransaction, 2, nil)
	port := p.port(t, "pooled")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var fails atomic.Int64
	for range 8 {
		c := pgxPool(t, port)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := str(c, "SELECT pg_sleep(0.05)::text"); err != nil {
					fails.Add(1)
				}
			}
		}()
	}
	labels := map[string]string{"upstream": "pooled", "pool": "local", "database": "appdb", "role": "app"}
	var sample []byte
	var waitingMetric, activeMetric float64
	waitFor(t, "a saturated sample", 15*time.Second, func() bool {
		hs := p.HealthStatus()
		if len(hs.Pools) != 1 || len(hs.Pools[0].Keys) != 1 {
			return false
		}
		k := hs.Pools[0].Keys[0]
		if k.Waiting == 0 || k.Active != 2 || k.Status != "waiting" {
			return false
		}
		waitingMetric = p.metric(t, "pgtrust_pool_clients_waiting", labels)
		activeMetric = p.metric(t, "pgtrust_pool_servers", map[string]string{"pool": "local", "state": "active"})
		if waitingMetric == 0 || activeMetric == 0 {
			return false
		}
		// The document internal/health serves at /health/pools.
		sample, _ = json.MarshalIndent(struct {
			Status string       `json:"status"`
			Pools  []PoolStatus `json:"pools"`
		}{"waiting", hs.Pools}, "", "  ")
		return true
	})
	close(stop)
	wg.Wait()
	if fails.Load() != 0 {
		t.Fatalf("%d queries failed under load", fails.Load())
	}
	t.Logf("/health/pools while saturated:\n%s", sample)
	t.Logf("metrics then: pgtrust_pool_clients_waiting=%v pgtrust_pool_servers{state=active}=%v", waitingMetric, activeMetric)
	waitFor(t, "the pool to settle", 10*time.Second, func() bool {
		return p.metric(t, "pgtrust_pool_clients_waiting", labels) == 0 &&
			p.metric(t, "pgtrust_pool_servers", map[string]string{"pool": "local", "state": "active"}) == 0 &&
			p.metric(t, "pgtrust_pool_servers", map[string]string{"pool": "local", "state": "idle"}) == 2 &&
			p.metric(t, "pgtrust_pool_clients_active", labels) == 8
	})
	if opened := p.metric(t, "pgtrust_pool_servers_opened_total", labels); opened != 2 {
		t.Fatalf("opened %v server connections, want 2", opened)
	}
	if os.Getenv("POOL_SAMPLE_OUT") != "" {
		_ = os.WriteFile(os.Getenv("POOL_SAMPLE_OUT"), sample, 0o644)
	}
}

// TestPoolLoginWaitTimeout: session mode takes a server connection at
// login; with the only one held, the next client's login fails after the
// wait timeout with 53300, as a wait inside a session does, and the holder
// carries on. (Fails on main: the proxy's login path, gateway_session.go
// after poolLogin, sends every pool error other than a PgError or a
// Hazard through upstreamFailed, which answers 08006 "upstream ...",
// counts an upstream failure and kicks the health probe.)
func TestPoolLoginWaitTimeout(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	p := pooledProxy(t, env, pooling.ModeSession, 1, func(pc *PoolConfig) { pc.WaitTimeout = time.Second })
	port := p.port(t, "pooled")
	holder := warmPool(t, port)
	_, err := pgxConnect(t, port, "sslmode=disable")
	wantPgError(t, "session-mode login with the only server connection taken", err, "no server connection", "53300")
	if got := mustStr(t, holder, "SELECT 'session holder'"); got != "session holder" {
		t.Fatal(got)
	}
	if f := p.metric(t, "pgtrust_upstream_failures_total", nil); f != 0 {
		t.Fatalf("a pool wait timeout counted as %v upstream failures", f)
	}
}

// TestPoolLoginApplicationName: in transaction mode a client whose only
// startup difference from the defaults is a printable-ASCII application_name
// logs in without a server connection (the only one is held in a
// transaction, and the wait timeout is 1 s) and is greeted with its value,
// which its first transaction then has; a value PostgreSQL would change
// (non-ASCII) still takes a server connection at login, so the greeting
// says what PostgreSQL made of it.
func TestPoolLoginApplicationName(t *testing.T) {
	t.Parallel()
	port, holder, tx := busyPool(t, newEnv(t))
	ctx, cancel := qctx()
	defer cancel()
	c, err := pgxConnect(t, port, "sslmode=disable application_name=bench")
	if err != nil {
		t.Fatalf("login with application_name=bench while the pool is busy: %v", err)
	}
	defer c.Close(context.Background())
	if got := c.PgConn().ParameterStatus("application_name"); got != "bench" {
		t.Fatalf("greeting application_name %q, want bench", got)
	}
	_, err = pgxConnect(t, port, "sslmode=disable application_name=b\u00e9")
	wantPgError(t, "login with a non-ASCII application_name while the pool is busy", err, "no server connection", "53300")
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got := mustStr(t, c, "SELECT current_setting('application_name')"); got != "bench" {
		t.Fatalf("first transaction: application_name %q, want bench", got)
	}
	if got := mustStr(t, holder, "SELECT current_setting('application_name')"); got != "" {
		t.Fatalf("the other client sees application_name %q, want its own (empty)", got)
	}
	u, err := pgxConnect(t, port, "sslmode=disable application_name=b\u00e9")
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close(context.Background())
	greeted := u.PgConn().ParameterStatus("application_name")
	if greeted == "b\u00e9" || !strings.HasPrefix(greeted, "b") {
		t.Fatalf("non-ASCII application_name greeted as %q: not the server's verdict", greeted)
	}
	if got := mustStr(t, u, "SELECT current_setting('application_name')"); got != greeted {
		t.Fatalf("application_name %q in the session, %q in the greeting", got, greeted)
	}
}

// TestPoolClientsPark: idle transaction-mode clients on plain sockets are
// parked (no goroutine) after client_park_after, and each one's next
// query, prepared statements included, runs as before; a client idle
// inside a transaction is not parked and keeps its transaction; a parked
// client that hangs up ends its session; the proxy closes with clients
// parked.
func TestPoolClientsPark(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	p := pooledProxy(t, env, pooling.ModeTransaction, 2, func(pc *PoolConfig) { pc.ClientParkAfter = 50 * time.Millisecond })
	port := p.port(t, "pooled")
	warmPool(t, port)
	const n = 12
	clients := make([]*pgx.Conn, n)
	for i := range clients {
		clients[i] = pgxPool(t, port)
		if got := mustStr(t, clients[i], "SELECT $1::text", fmt.Sprint(i)); got != fmt.Sprint(i) {
			t.Fatalf("client %d: %q", i, got)
		}
	}
	ctx, cancel := qctx()
	defer cancel()
	inTx, err := clients[0].Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mustStr(t, inTx, "SELECT 'in a transaction'")
	parked := func() float64 { return p.metric(t, "pgtrust_pool_clients_parked", nil) }
	// Every client but the one in a transaction (and warmPool's, also idle).
	waitFor(t, "idle clients parked", 20*time.Second, func() bool { return parked() == n })
	for round := range 3 {
		for i, c := range clients[1:] {
			want := fmt.Sprintf("%d/%d", round, i)
			// pgx prepares and caches the statement: the parked client's
			// statements must survive parking.
			if got := mustStr(t, c, "SELECT $1::text || '/' || $2::text", fmt.Sprint(round), fmt.Sprint(i)); got != want {
				t.Fatalf("round %d, client %d after parking: %q", round, i, got)
			}
		}
		waitFor(t, "clients parked again", 20*time.Second, func() bool { return parked() == n })
	}
	if got := mustStr(t, inTx, "SELECT 'still in it'"); got != "still in it" {
		t.Fatal(got)
	}
	if err := inTx.Commit(ctx); err != nil {
		t.Fatalf("the transaction left idle across sweeps: %v", err)
	}
	waitFor(t, "the committed client parked too", 20*time.Second, func() bool { return parked() == n+1 })
	before := p.metric(t, "pgtrust_pool_clients_active", nil)
	clients[1].Close(context.Background())
	waitFor(t, "the hung-up parked client's session to end", 20*time.Second, func() bool {
		return parked() == n && p.metric(t, "pgtrust_pool_clients_active", nil) == before-1
	})
}

// TestPoolIdleTransactionTimeout: a client that leaves a transaction open
// and silent past idle_transaction_timeout gets FATAL 25P03 (PostgreSQL's
// message) at its next query, its transaction is rolled back and the
// server connection's slot freed; a transaction whose statements come
// more often than the timeout is untouched, in both modes (session mode on
// the event loops).
func TestPoolIdleTransactionTimeout(t *testing.T) {
	t.Parallel()
	for _, mode := range []pooling.Mode{pooling.ModeTransaction, pooling.ModeSession} {
		t.Run(string(mode), func(t *testing.T) {
			p, port, c := idleTxPool(t, mode, 400*time.Millisecond, 0)
			// Session mode runs on the event loops, timer and all.
			if want := map[bool]int{true: 1}[mode == pooling.ModeSession]; p.pooledOnLoops() != want {
				t.Fatalf("%d sessions on an event loop, want %d", p.pooledOnLoops(), want)
			}
			ctx, cancel := qctx()
			defer cancel()
			mustExec := func(c *pgx.Conn, q string) {
				t.Helper()
				if _, err := c.Exec(ctx, q); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			mustExec(c, "CREATE TABLE IF NOT EXISTS idle_tx (v int)")
			// Busy: 8 statements 100 ms apart, 800 ms in all.
			mustExec(c, "BEGIN")
			for range 8 {
				mustExec(c, "INSERT INTO idle_tx VALUES (1)")
				time.Sleep(100 * time.Millisecond)
			}
			mustExec(c, "COMMIT")
			// Idle: the transaction is ended under the client.
			mustExec(c, "BEGIN")
			mustExec(c, "INSERT INTO idle_tx VALUES (2)")
			time.Sleep(1500 * time.Millisecond)
			_, err := c.Exec(ctx, "INSERT INTO idle_tx VALUES (3)")
			pe := wantPgError(t, "a statement after the idle-in-transaction timeout", err, "idle-in-transaction timeout", "25P03")
			if pe.Severity != "FATAL" || !strings.Contains(pe.Detail, "idle_transaction_timeout") {
				t.Fatalf("idle timeout error: %s %q", pe.Severity, pe.Detail)
			}
			// The pool's only server connection serves the next client, and
			// only the committed rows exist.
			d := pgxPool(t, port)
			if got := mustStr(t, d, "SELECT count(*) FILTER (WHERE v = 1)::text || ' ' || count(*) FILTER (WHERE v <> 1)::text FROM idle_tx"); got != "8 0" {
				t.Fatalf("rows after the timeout: %q, want 8 committed and none of the idle transaction", got)
			}
		})
	}
}

// idleTxPool starts a pool of one server connection in mode with
// idle_transaction_timeout (and client_park_after, when not 0) and returns
// its port and a first client.
func idleTxPool(t *testing.T, mode pooling.Mode, timeout, parkAfter time.Duration) (*running, int, *pgx.Conn) {
	t.Helper()
	p := pooledProxy(t, newEnv(t), mode, 1, func(pc *PoolConfig) {
		pc.IdleTransactionTimeout = timeout
		pc.ClientParkAfter = parkAfter
		pc.WaitTimeout = 10 * time.Second
	})
	port := p.port(t, "pooled")
	return p, port, warmPool(t, port)
}

// pipeline3 sends BEGIN, q and COMMIT as three pipelined segments (a Sync
// each, as pgconn's and libpq's pipeline modes do) and reads every result.
func pipeline3(c *pgx.Conn, q string) error {
	ctx, cancel := qctx()
	defer cancel()
	pl := c.PgConn().StartPipeline(ctx)
	for _, s := range []string{"BEGIN", q, "COMMIT"} {
		pl.SendQueryParams(s, nil, nil, nil, nil)
		pl.SendPipelineSync()
	}
	if err := pl.Flush(); err != nil {
		return err
	}
	for {
		r, err := pl.GetResults()
		if err != nil {
			pl.Close()
			return err
		}
		if r == nil {
			return pl.Close()
		}
		if rr, ok := r.(*pgconn.ResultReader); ok {
			if _, err := rr.Close(); err != nil {
				pl.Close()
				return err
			}
		}
	}
}

// TestPoolIdleTransactionClock: the idle-in-transaction clock runs only
// while the server waits for the client inside a transaction, as
// PostgreSQL's does: a pipelined statement still running behind BEGIN's
// ReadyForQuery is not idle, a pipelined COMMIT stops the clock, and
// parking (which interrupts an idle client's read) does not stop it.
func TestPoolIdleTransactionClock(t *testing.T) {
	t.Parallel()
	for _, mode := range []pooling.Mode{pooling.ModeTransaction, pooling.ModeSession} {
		t.Run(string(mode), func(t *testing.T) {
			_, _, c := idleTxPool(t, mode, 500*time.Millisecond, 50*time.Millisecond)
			if err := pipeline3(c, "SELECT pg_sleep(1.5)"); err != nil {
				t.Fatalf("pipelined BEGIN; SELECT pg_sleep(1.5); COMMIT (never idle): %v", err)
			}
			if err := pipeline3(c, "SELECT 1"); err != nil {
				t.Fatal(err)
			}
			time.Sleep(1200 * time.Millisecond)
			if got, err := str(c, "SELECT 'ok'"); err != nil || got != "ok" {
				t.Fatalf("outside any transaction after a pipelined BEGIN/COMMIT: %q %v", got, err)
			}
			ctx, cancel := qctx()
			defer cancel()
			if _, err := c.Exec(ctx, "BEGIN"); err != nil {
				t.Fatal(err)
			}
			// Several parking sweeps (50 ms) pass while the transaction idles.
			time.Sleep(2500 * time.Millisecond)
			_, err := c.Exec(ctx, "SELECT 1")
			wantPgError(t, "a statement after the idle-in-transaction timeout, with parking sweeps", err, "idle-in-transaction timeout", "25P03")
		})
	}
}
