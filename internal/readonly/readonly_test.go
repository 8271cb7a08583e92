package readonly

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgtest"
)

var bg = context.Background()

func wantState(t *testing.T, err error, code string) {
	t.Helper()
	if got := sqlstate(err); got != code {
		t.Fatalf("SQLSTATE %q (err %v), want %s", got, err, code)
	}
}

// Every write is refused by PostgreSQL with 25006, even though agent holds
// all privileges on t, and t is unchanged afterwards.
func TestWritesRefused(t *testing.T) {
	eachVersion(t, func(t *testing.T, s *pgtest.Server) {
		c := connect(t, s, "agent")
		for _, q := range []string{
			"INSERT INTO t VALUES (2, 'two')",
			"UPDATE t SET v = 'changed'",
			"DELETE FROM t",
			"TRUNCATE t",
			"DROP TABLE t",
			"ALTER TABLE t ADD COLUMN w int",
			"CREATE TABLE t2 (a int)",
			"CREATE TEMP TABLE tt (a int)",
			"SELECT writes()",
			"SELECT nextval('s')",
			"COPY t FROM STDIN",
			"SELECT * FROM t FOR UPDATE",
			"DO $$BEGIN INSERT INTO t VALUES (7, 'd'); END$$",
			"WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
		} {
			t.Run(q, func(t *testing.T) {
				_, err := Query(bg, c, q, nil, Limits{})
				wantState(t, err, "25006")
				if got := tableState(t, s); got != "1=one" {
					t.Fatalf("t is %q after %q", got, q)
				}
				usable(t, c)
			})
		}
		if got := s.Exec(t, "SELECT count(*) FROM pg_class WHERE relname IN ('t2', 'tt')"); got != "0" {
			t.Fatalf("%s tables were created", got)
		}
	})
}

// A second statement is refused by the server at Parse; none of it runs.
func TestMultiStatementRefused(t *testing.T) {
	eachVersion(t, func(t *testing.T, s *pgtest.Server) {
		c := connect(t, s, "postgres") // even a superuser
		for _, q := range []string{
			"SELECT 1; DROP TABLE t",
			"COMMIT; DROP TABLE t",
			"ROLLBACK; INSERT INTO t VALUES (3, 'x')",
			"SELECT 1; SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE; DELETE FROM t",
		} {
			_, err := Query(bg, c, q, nil, Limits{})
			wantState(t, err, "42601")
			var pe *pgconn.PgError
			errors.As(err, &pe)
			if pe.Message != "cannot insert multiple commands into a prepared statement" {
				t.Fatalf("message %q", pe.Message)
			}
			if got := tableState(t, s); got != "1=one" {
				t.Fatalf("t is %q after %q", got, q)
			}
			usable(t, c)
		}
	})
}

// Transaction control and read-write switches as the user statement cannot
// open a window for a write: the next call's write is still refused, and
// nothing persists.
func TestTransactionControlCannotLiftGuard(t *testing.T) {
	eachVersion(t, func(t *testing.T, s *pgtest.Server) {
		for _, user := range []string{"agent", "postgres"} {
			c := connect(t, s, user)
			for _, tc := range []struct{ q, code string }{
				{"SET TRANSACTION READ WRITE", "25001"},
				{"SELECT set_config('transaction_read_only', 'off', true)", "25001"},
				{"SET transaction_read_only = off", "25001"},
				{"SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", ""},
				{"SELECT set_config('default_transaction_read_only', 'off', false)", ""},
				{"COMMIT", ""},
				{"COMMIT AND CHAIN", ""},
				{"ROLLBACK", ""},
				{"BEGIN", ""},
				{"BEGIN READ WRITE", "25001"},
				{"SAVEPOINT a", ""},
				{"PREPARE TRANSACTION 'x'", "55000"},
				{"PREPARE p AS DELETE FROM t", ""},
			} {
				_, err := Query(bg, c, tc.q, nil, Limits{})
				if got := sqlstate(err); got != tc.code {
					t.Fatalf("%s %q: SQLSTATE %q (%v), want %q", user, tc.q, got, err, tc.code)
				}
				if tc.code == "" && err != nil {
					t.Fatalf("%s %q: %v", user, tc.q, err)
				}
				_, err = Query(bg, c, "DELETE FROM t", nil, Limits{})
				wantState(t, err, "25006")
				if tc.q == "PREPARE p AS DELETE FROM t" {
					_, err = Query(bg, c, "EXECUTE p", nil, Limits{})
					wantState(t, err, "26000") // DISCARD ALL dropped it
				}
				if got := tableState(t, s); got != "1=one" {
					t.Fatalf("t is %q after %q as %s", got, tc.q, user)
				}
				usable(t, c)
			}
		}
	})
}

// Parameters are values: SQL in them is never parsed.
func TestParameters(t *testing.T) {
	s := server(t)
	c := connect(t, s, "agent")
	smuggled := "BEGIN; DROP TABLE t; COMMIT"
	res, err := Query(bg, c, "SELECT $1::text AS a, $2::int + 1 AS b, $3::bool AS c, $4::text IS NULL AS d, $5::jsonb->>'k' AS e",
		[]any{smuggled, 41, true, nil, map[string]any{"k": "v"}}, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(res.Rows)
	if want := `[["BEGIN; DROP TABLE t; COMMIT",42,true,true,"v"]]`; string(got) != want {
		t.Fatalf("rows %s, want %s", got, want)
	}
	_, err = Query(bg, c, "INSERT INTO t VALUES ($1, $2)", []any{json.Number("5"), smuggled}, Limits{})
	wantState(t, err, "25006")
	if got := tableState(t, s); got != "1=one" {
		t.Fatalf("t is %q", got)
	}
	_, err = Query(bg, c, "SELECT $1", []any{struct{}{}}, Limits{})
	var fe *failure.Error
	if !errors.As(err, &fe) || fe.Class != failure.ConfigInvalid {
		t.Fatalf("unsupported parameter: %v", err)
	}
	usable(t, c)
}

func TestStatementTimeout(t *testing.T) {
	s := server(t)
	c := connect(t, s, "agent")
	_, err := Query(bg, c, "SELECT pg_sleep(30)", nil, Limits{StatementTimeout: 200 * time.Millisecond})
	wantState(t, err, "57014")
	if !strings.Contains(err.Error(), "statement timeout") {
		t.Fatalf("error %q does not say statement timeout", err)
	}
	usable(t, c)
	// The timeout was SET LOCAL: the next call has the default again.
	res, err := Query(bg, c, "SELECT current_setting('statement_timeout'), current_setting('idle_in_transaction_session_timeout')", nil, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := json.Marshal(res.Rows); string(got) != `[["10s","15s"]]` {
		t.Fatalf("settings inside the guard: %s", got)
	}
	if got := s.Exec(t, "SELECT setting FROM pg_settings WHERE name = 'statement_timeout'"); got != "0" {
		t.Fatalf("server statement_timeout %q", got)
	}
}

func TestRowLimit(t *testing.T) {
	s := server(t)
	c := connect(t, s, "agent")
	res, err := Query(bg, c, "SELECT g FROM generate_series(1, 10) g", nil, Limits{MaxRows: 5})
	if err != nil {
		t.Fatal(err)
	}
	if res.RowCount != 5 || len(res.Rows) != 5 || !res.Truncated || res.TruncatedBy != TruncatedByRows || res.Rows[4][0] != int64(5) {
		t.Fatalf("result %+v", res)
	}
	// Exactly the limit is not a truncation.
	res, err = Query(bg, c, "SELECT g FROM generate_series(1, 10) g", nil, Limits{MaxRows: 10})
	if err != nil {
		t.Fatal(err)
	}
	if res.RowCount != 10 || res.Truncated || res.CommandTag != "SELECT 10" {
		t.Fatalf("result %+v", res)
	}
	usable(t, c)
}

func TestByteLimit(t *testing.T) {
	s := server(t)
	c := connect(t, s, "agent")
	res, err := Query(bg, c, "SELECT repeat('x', 100) FROM generate_series(1, 100)", nil, Limits{MaxBytes: 1050})
	if err != nil {
		t.Fatal(err)
	}
	if res.RowCount != 10 || !res.Truncated || res.TruncatedBy != TruncatedByBytes {
		t.Fatalf("rows %d truncated %v by %q", res.RowCount, res.Truncated, res.TruncatedBy)
	}
	usable(t, c)
}

// Ten million rows: the limit comes back flagged, and the server never
// produces row 5000 (it would fail with division by zero), which proves
// Execute's row limit stops the portal instead of the client draining it.
func TestTenMillionRowsBounded(t *testing.T) {
	s := server(t)
	c := connect(t, s, "agent")
	const q = "SELECT g, 1 / (g - 5000) AS boom FROM (SELECT generate_series(1, 10000000) AS g) s"
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	res, err := Query(bg, c, q, nil, Limits{})
	elapsed := time.Since(start)
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if res.RowCount != DefaultMaxRows || !res.Truncated || res.TruncatedBy != TruncatedByRows {
		t.Fatalf("rows %d truncated %v by %q", res.RowCount, res.Truncated, res.TruncatedBy)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("10M-row query: %d rows returned, truncated by %s, %v elapsed, %d KiB allocated in total, heap in use %d KiB",
		res.RowCount, res.TruncatedBy, elapsed.Round(time.Millisecond), alloc/1024, after.HeapInuse/1024)
	// Bounded by the limits, not by the table: 10M rows would be hundreds of MiB.
	if alloc > 16<<20 {
		t.Fatalf("%d bytes allocated for a 1000-row result", alloc)
	}
	// Byte limit alone, rows large: also cut early.
	res, err = Query(bg, c, "SELECT repeat('y', 1000), 1 / (g - 5000) FROM (SELECT generate_series(1, 10000000) AS g) s", nil, Limits{MaxRows: 2000})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Truncated || res.TruncatedBy != TruncatedByBytes || res.RowCount != 1047 {
		t.Fatalf("rows %d truncated %v by %q", res.RowCount, res.Truncated, res.TruncatedBy)
	}
	// Without the row limit the same query reaches row 5000 and fails: the
	// division really would have run.
	_, err = Query(bg, c, q, nil, Limits{MaxRows: 6000})
	wantState(t, err, "22012")
	usable(t, c)
}

func TestPgErrorKeepsFields(t *testing.T) {
	s := server(t)
	c := connect(t, s, "agent")
	_, err := Query(bg, c, "DO $$BEGIN RAISE EXCEPTION 'boom %', 1 USING DETAIL = 'the detail', HINT = 'the hint', ERRCODE = 'P0001'; END$$", nil, Limits{})
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		t.Fatalf("%T %v", err, err)
	}
	if pe.Code != "P0001" || pe.Message != "boom 1" || pe.Detail != "the detail" || pe.Hint != "the hint" || pe.Severity != "ERROR" {
		t.Fatalf("%+v", pe)
	}
	_, err = Query(bg, c, "SELEC 1", nil, Limits{})
	if !errors.As(err, &pe) || pe.Code != "42601" || pe.Position != 1 {
		t.Fatalf("syntax error: %v", err)
	}
	usable(t, c)
}

func TestContextCancel(t *testing.T) {
	s := server(t)
	c := connect(t, s, "agent")
	for _, q := range []string{
		"SELECT pg_sleep(30)",
		// rows are streaming when the cancel comes
		"SELECT g, pg_sleep(0.05) FROM generate_series(1, 600) g",
	} {
		ctx, cancel := context.WithCancel(bg)
		time.AfterFunc(300*time.Millisecond, cancel)
		_, err := Query(ctx, c, q, nil, Limits{StatementTimeout: time.Minute})
		cancel()
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("%q: %v", q, err)
		}
		// The server ended the statement because of the CancelRequest.
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "57014" || pe.Message != "canceling statement due to user request" {
			t.Fatalf("%q: %v", q, err)
		}
		// The CancelRequest ended the statement; the connection stays.
		usable(t, c)
		// No statement of this session is still running.
		pid := itoa(int(c.PID()))
		if got := s.Exec(t, "SELECT state FROM pg_stat_activity WHERE pid = "+pid); got != "idle" {
			t.Fatalf("backend state %q", got)
		}
	}
	// Already cancelled: nothing is sent.
	ctx, cancel := context.WithCancel(bg)
	cancel()
	if _, err := Query(ctx, c, "SELECT 1", nil, Limits{}); !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	usable(t, c)
}

func TestDecodeTypes(t *testing.T) {
	s := server(t)
	c := connect(t, s, "agent")
	res, err := Query(bg, c, `SELECT 1::int2 AS a, 2::int4, 3::int8, 9007199254740993::int8, -9007199254740992::int8,
		1.5::float8, 'NaN'::float8, 'Infinity'::float4, 1.10::numeric, true, false,
		'{"a": 1}'::json, '{"b": 2}'::jsonb, '\xdeadbeef'::bytea, 'hi'::text, NULL::int,
		'2024-01-02'::date, 42::oid, '2024-01-02 03:04:05+00'::timestamptz, ARRAY[1,2], 'x'::varchar(5)`, nil, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(res.Rows[0])
	want := `[1,2,3,"9007199254740993",-9007199254740992,1.5,"NaN","Infinity","1.10",true,false,{"a":1},{"b":2},"\\xdeadbeef","hi",null,"2024-01-02","42","2024-01-02 03:04:05+00","{1,2}","x"]`
	if string(got) != want {
		t.Fatalf("row\n got %s\nwant %s", got, want)
	}
	var types []string
	for _, col := range res.Columns {
		types = append(types, col.Type)
	}
	wantTypes := "smallint,integer,bigint,bigint,bigint,double precision,double precision,real,numeric,boolean,boolean,json,jsonb,bytea,text,integer,date,oid,timestamp with time zone,integer[],character varying"
	if strings.Join(types, ",") != wantTypes {
		t.Fatalf("types %s", strings.Join(types, ","))
	}
	if res.Columns[0].Name != "a" || res.Columns[0].TypeOID != 21 {
		t.Fatalf("column 0 %+v", res.Columns[0])
	}
}

func TestExplain(t *testing.T) {
	s := server(t)
	c := connect(t, s, "agent")
	plan, err := Explain(bg, c, "SELECT * FROM t WHERE id = $1", []any{1}, false, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	var p []map[string]any
	if err := json.Unmarshal(plan, &p); err != nil || len(p) != 1 || p[0]["Plan"] == nil {
		t.Fatalf("plan %s: %v", plan, err)
	}
	if strings.Contains(string(plan), "Actual Rows") {
		t.Fatal("ANALYZE ran without being asked")
	}
	plan, err = Explain(bg, c, "SELECT * FROM t", nil, true, Limits{})
	if err != nil || !strings.Contains(string(plan), `"Actual Rows": 1`) {
		t.Fatalf("analyze plan %s: %v", plan, err)
	}
	// ANALYZE executes the statement: the read-only guard refuses the write.
	_, err = Explain(bg, c, "DELETE FROM t", nil, true, Limits{})
	wantState(t, err, "25006")
	// Plain EXPLAIN of a write plans it without running it.
	if _, err = Explain(bg, c, "DELETE FROM t", nil, false, Limits{}); err != nil {
		t.Fatal(err)
	}
	_, err = Explain(bg, c, "SELECT 1; DROP TABLE t", nil, true, Limits{})
	wantState(t, err, "42601")
	if got := tableState(t, s); got != "1=one" {
		t.Fatalf("t is %q", got)
	}
	usable(t, c)
}

// Session state that ROLLBACK keeps does not reach the next call.
func TestSessionStateDoesNotLeak(t *testing.T) {
	eachVersion(t, func(t *testing.T, s *pgtest.Server) {
		a, b := connect(t, s, "agent"), connect(t, s, "agent")
		if _, err := Query(bg, a, "SELECT pg_advisory_lock(1)", nil, Limits{}); err != nil {
			t.Fatal(err)
		}
		res, err := Query(bg, b, "SELECT pg_try_advisory_lock(1)", nil, Limits{})
		if err != nil || res.Rows[0][0] != true {
			t.Fatalf("lock still held by the other session: %v %v", res, err)
		}
	})
}

func TestRefusals(t *testing.T) {
	s := server(t)
	c := connect(t, s, "agent")
	var fe *failure.Error
	// COPY TO STDOUT has no row limit in the protocol: refused, cancelled.
	_, err := Query(bg, c, "COPY (SELECT generate_series(1, 10000000)) TO STDOUT", nil, Limits{})
	if !errors.As(err, &fe) || fe.Class != failure.ConfigInvalid {
		t.Fatalf("COPY TO STDOUT: %v", err)
	}
	usable(t, c)
	// COPY TO PROGRAM needs a privilege the agent role lacks.
	_, err = Query(bg, c, "COPY (SELECT 1) TO PROGRAM 'true'", nil, Limits{})
	wantState(t, err, "42501")
	usable(t, c)
	// A connection inside a transaction would make BEGIN READ ONLY a no-op.
	if _, err := c.Exec(bg, "BEGIN").ReadAll(); err != nil {
		t.Fatal(err)
	}
	_, err = Query(bg, c, "SELECT 1", nil, Limits{})
	if !errors.As(err, &fe) || fe.Class != failure.ProtocolError || fe.Fix == "" || fe.Evidence == "" {
		t.Fatalf("busy connection: %v", err)
	}
	if _, err := c.Exec(bg, "ROLLBACK").ReadAll(); err != nil {
		t.Fatal(err)
	}
	// A closed connection.
	_ = c.Close(bg)
	if _, err := Query(bg, c, "SELECT 1", nil, Limits{}); !errors.As(err, &fe) || fe.Class != failure.ProtocolError {
		t.Fatalf("closed connection: %v", err)
	}
}

// A backend that dies mid-call leaves a closed connection and says so.
func TestBrokenConnectionIsClosed(t *testing.T) {
	s := server(t)
	c := connect(t, s, "agent")
	admin := connect(t, s, "postgres")
	pid := itoa(int(c.PID()))
	// The terminate waits until the backend runs the sleep. Inside one
	// transaction pg_stat_activity is a snapshot taken at its first read:
	// the loop clears it, or a sleep that started after that read would
	// never be seen. Bounded: about 20 s.
	done := make(chan string, 1)
	go func() {
		ctx, cancel := context.WithTimeout(bg, 30*time.Second)
		defer cancel()
		_, err := admin.Exec(ctx, `DO $$BEGIN
			FOR i IN 1..2000 LOOP
				PERFORM pg_stat_clear_snapshot();
				EXIT WHEN EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = `+pid+` AND query = 'SELECT pg_sleep(30)' AND state = 'active');
				PERFORM pg_sleep(0.01); END LOOP;
			PERFORM pg_terminate_backend(`+pid+`); END$$`).ReadAll()
		done <- fmt.Sprint(err)
	}()
	_, err := Query(bg, c, "SELECT pg_sleep(30)", nil, Limits{})
	t.Logf("terminator: %s", <-done)
	if err == nil {
		t.Fatal("no error")
	}
	if !c.IsClosed() {
		t.Fatalf("connection not closed after %v", err)
	}
	if !strings.Contains(err.Error(), "closed") {
		t.Fatalf("error does not say the connection was closed: %v", err)
	}
}

// A single value larger than the byte limit is never read into memory: the
// rows before it come back truncated by max_bytes, and the connection,
// whose stream stopped mid-message, is closed.
func TestHugeValueNotRead(t *testing.T) {
	s := server(t)
	c := connect(t, s, "agent")
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	res, err := Query(bg, c, "SELECT CASE WHEN g < 3 THEN 'a' ELSE repeat('z', 50000000) END FROM generate_series(1, 5) g", nil, Limits{})
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("50 MB value: %d rows returned, truncated by %s, %d KiB allocated", res.RowCount, res.TruncatedBy, alloc/1024)
	if res.RowCount != 2 || !res.Truncated || res.TruncatedBy != TruncatedByBytes {
		t.Fatalf("result %+v", res)
	}
	if alloc > 8<<20 {
		t.Fatalf("%d bytes allocated: the 50 MB value was read", alloc)
	}
	if !c.IsClosed() {
		t.Fatal("connection left open mid-message")
	}
	// The message limit is put back after each call: outside readonly the
	// connection reads a 3 MB value again.
	c2 := connect(t, s, "agent")
	if _, err := Query(bg, c2, "SELECT 1", nil, Limits{MaxBytes: 1000}); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Exec(bg, "SELECT repeat('z', 3000000)").ReadAll(); err != nil {
		t.Fatalf("message limit not restored: %v", err)
	}
	usable(t, c2)
}
