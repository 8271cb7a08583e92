package readonly

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/failure"
)

func show(ctx context.Context, t *testing.T, c *pgconn.PgConn, sql string) string {
	t.Helper()
	rs, err := c.Exec(ctx, sql).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return string(rs[0].Rows[0][0])
}

func TestGuard(t *testing.T) {
	s := server(t)
	c := connect(t, s, "agent")
	ctx := context.Background()

	var mode, iso, st, idle, snap1, snap2 string
	err := Guard(ctx, c, Limits{StatementTimeout: 3 * time.Second, IdleInTransactionTimeout: 4 * time.Second}, func(ctx context.Context, c *pgconn.PgConn) error {
		mode = show(ctx, t, c, "SHOW transaction_read_only")
		iso = show(ctx, t, c, "SHOW transaction_isolation")
		st = show(ctx, t, c, "SHOW statement_timeout")
		idle = show(ctx, t, c, "SHOW idle_in_transaction_session_timeout")
		snap1 = show(ctx, t, c, "SELECT count(*) FROM t")
		s.Exec(t, "INSERT INTO t VALUES (7, 'seven')") // another session commits
		snap2 = show(ctx, t, c, "SELECT count(*) FROM t")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if mode != "on" || iso != "repeatable read" || st != "3s" || idle != "4s" {
		t.Fatalf("inside the guard: read_only=%s isolation=%s statement_timeout=%s idle=%s", mode, iso, st, idle)
	}
	if snap1 != "1" || snap2 != "1" {
		t.Fatalf("one snapshot expected: counts %s then %s", snap1, snap2)
	}
	s.Exec(t, "DELETE FROM t WHERE id = 7")

	// A write inside fn is refused by the server and the error comes back.
	err = Guard(ctx, c, Limits{}, func(ctx context.Context, c *pgconn.PgConn) error {
		_, err := c.Exec(ctx, "INSERT INTO t VALUES (8, 'x')").ReadAll()
		return err
	})
	if sqlstate(err) != "25006" {
		t.Fatalf("write inside Guard: %v, want 25006", err)
	}
	if got := tableState(t, s); got != "1=one" {
		t.Fatalf("t changed: %s", got)
	}
	// SET LOCAL is gone afterwards, the connection is idle and usable.
	if got := show(ctx, t, c, "SHOW statement_timeout"); got != "0" {
		t.Fatalf("statement_timeout after Guard = %s", got)
	}
	usable(t, c)

	// fn's own error is returned unchanged.
	mine := errors.New("mine")
	if err := Guard(ctx, c, Limits{}, func(context.Context, *pgconn.PgConn) error { return mine }); !errors.Is(err, mine) {
		t.Fatalf("fn error: %v", err)
	}
	usable(t, c)

	// A connection inside a transaction is refused before anything is sent.
	if _, err := c.Exec(ctx, "BEGIN").ReadAll(); err != nil {
		t.Fatal(err)
	}
	called := false
	err = Guard(ctx, c, Limits{}, func(context.Context, *pgconn.PgConn) error { called = true; return nil })
	if e, ok := failure.As(err); !ok || e.Class != failure.ProtocolError || called {
		t.Fatalf("non-idle connection: %v (fn called %v)", err, called)
	}
	if _, err := c.Exec(ctx, "ROLLBACK").ReadAll(); err != nil {
		t.Fatal(err)
	}

	// A statement past the timeout: 57014, connection still usable.
	err = Guard(ctx, c, Limits{StatementTimeout: 200 * time.Millisecond}, func(ctx context.Context, c *pgconn.PgConn) error {
		_, err := c.Exec(ctx, "SELECT pg_sleep(5)").ReadAll()
		return err
	})
	if sqlstate(err) != "57014" {
		t.Fatalf("timeout: %v", err)
	}
	usable(t, c)
}
