package readonly

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/internal/pgtest"
)

// setupSQL gives the agent role full privileges on t, so that only the
// read-only transaction stands between a statement and a write.
const setupSQL = `
CREATE ROLE agent LOGIN;
CREATE TABLE t (id int PRIMARY KEY, v text);
INSERT INTO t VALUES (1, 'one');
GRANT ALL ON t TO agent;
GRANT CREATE ON SCHEMA public TO agent;
CREATE SEQUENCE s;
GRANT ALL ON SEQUENCE s TO agent;
CREATE FUNCTION writes() RETURNS int LANGUAGE sql VOLATILE AS 'INSERT INTO t VALUES (99, ''w'') RETURNING 1';
CREATE FUNCTION blob(n int) RETURNS text LANGUAGE sql AS 'SELECT repeat(''x'', n)';
`

func server(t *testing.T) *pgtest.Server {
	t.Helper()
	return pgtest.Start(t, pgtest.Options{Setup: []string{setupSQL}})
}

// eachVersion runs f against PostgreSQL 15 and 18: the guard's refusals are
// the server's, so they are checked on both majors the project supports.
func eachVersion(t *testing.T, f func(t *testing.T, s *pgtest.Server)) {
	for _, v := range []int{15, 18} {
		t.Run("PostgreSQL "+strconv.Itoa(v), func(t *testing.T) {
			f(t, pgtest.Start(t, pgtest.Options{Version: v, Setup: []string{setupSQL}}))
		})
	}
}

func connect(t *testing.T, s *pgtest.Server, user string) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, "host=127.0.0.1 port="+itoa(s.Port)+" user="+user+" dbname=postgres sslmode=disable connect_timeout=10")
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

func itoa(n int) string { return strconv.Itoa(n) }

// tableState is t's content, read by psql as superuser outside any guard.
func tableState(t *testing.T, s *pgtest.Server) string {
	t.Helper()
	return s.Exec(t, "SELECT coalesce(string_agg(id || '=' || v, ',' ORDER BY id), '') FROM t")
}

func sqlstate(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// usable checks the connection is idle and answers a query through the guard.
func usable(t *testing.T, c *pgconn.PgConn) {
	t.Helper()
	if c.IsClosed() {
		t.Fatal("connection closed")
	}
	if st := c.TxStatus(); st != 'I' {
		t.Fatalf("transaction status %q, want 'I'", st)
	}
	res, err := Query(context.Background(), c, "SELECT 41 + 1", nil, Limits{})
	if err != nil {
		t.Fatalf("follow-up query: %v", err)
	}
	if len(res.Rows) != 1 || res.Rows[0][0] != int64(42) {
		t.Fatalf("follow-up query: %#v", res.Rows)
	}
}
