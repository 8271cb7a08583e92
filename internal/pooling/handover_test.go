package pooling

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/serverpool"
)

// TestHandoverResetsEverything: what a client can leave in a server
// session, however it planted it (set_config, SET, DO blocks, LISTEN, WITH
// HOLD cursors, SQL PREPARE, temporary tables, advisory locks, SET ROLE,
// the unnamed statement), is gone when the connection passes to another
// identity; between sessions of one identity nothing runs. PostgreSQL 15
// and 18.
func TestHandoverResetsEverything(t *testing.T) {
	for _, v := range []int{15, 18} {
		t.Run(map[int]string{15: "PostgreSQL 15", 18: "PostgreSQL 18"}[v], func(t *testing.T) {
			t.Parallel()
			pg := pgtest.Start(t, pgtest.Options{Version: v, Setup: []string{
				"CREATE ROLE app LOGIN; CREATE ROLE other; GRANT other TO app; GRANT CREATE ON SCHEMA public TO app",
			}})
			ctx := context.Background()
			dial := func(ctx context.Context, k serverpool.Key) (*pgconn.PgConn, error) {
				return pgconn.Connect(ctx, strings.Replace(pg.DSN(""), "user=postgres dbname=postgres", "user="+k.Role+" dbname="+k.Database, 1))
			}
			pool, err := serverpool.New(dial, serverpool.Options{Size: 1})
			if err != nil {
				t.Fatal(err)
			}
			defer pool.Close()
			key := serverpool.Key{Database: "postgres", Role: "app"}
			session := func(identity string) *Session {
				return &Session{o: Options{Key: key, Identity: identity, QueryTimeout: 5 * time.Second}}
			}
			srv, err := pool.Acquire(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			a := session("cert:alice")
			if err := a.handover(ctx, srv, a.state(srv)); err != nil {
				t.Fatalf("first use: %v", err)
			}
			plant := []string{
				"SELECT pg_catalog.set_config('app.tenant_id', '42', false)",
				"SET statement_timeout = '7s'",
				"DO $$ BEGIN EXECUTE 'PREPARE pgtrust_x AS SELECT 1'; END $$",
				"LISTEN jobs",
				"BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT 1; COMMIT",
				"CREATE TEMP TABLE accounts AS SELECT 1 AS planted",
				"SELECT pg_advisory_lock(4242)",
				"SELECT pg_catalog.set_config('role', 'other', false)",
			}
			for _, q := range plant {
				if _, err := exec(ctx, srv, q, 5*time.Second); err != nil {
					t.Fatalf("plant %q: %v", q, err)
				}
			}
			if _, err := execBatch(ctx, srv, []pgproto3.FrontendMessage{&pgproto3.Parse{Query: "SELECT 'a-private'"}, &pgproto3.Sync{}}, 1, 5*time.Second); err != nil {
				t.Fatalf("plant the unnamed statement: %v", err)
			}
			// The same identity again: nothing runs, the state is there.
			if err := a.handover(ctx, srv, a.state(srv)); err != nil {
				t.Fatal(err)
			}
			if got := one(t, srv, "SELECT current_setting('statement_timeout')"); got != "7s" {
				t.Fatalf("between sessions of one identity the pool reset the session (statement_timeout %q)", got)
			}

			b := session("cert:bob")
			if err := b.handover(ctx, srv, b.state(srv)); err != nil {
				t.Fatalf("handover to another identity: %v", err)
			}
			checks := map[string]string{
				"SELECT coalesce(current_setting('app.tenant_id', true), '')":                          "",
				"SELECT current_setting('statement_timeout')":                                          "0",
				"SELECT count(*) FROM pg_prepared_statements":                                          "0",
				"SELECT count(*) FROM pg_listening_channels()":                                         "0",
				"SELECT count(*) FROM pg_cursors WHERE is_holdable":                                    "0",
				"SELECT coalesce(to_regclass('pg_temp.accounts')::text, 'none')":                       "none",
				"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()": "0",
				"SELECT current_user::text || ' ' || session_user::text":                               "app app",
			}
			for q, want := range checks {
				if got := one(t, srv, q); got != want {
					t.Errorf("after the handover %q = %q, want %q", q, got, want)
				}
			}
			_, err = execBatch(ctx, srv, []pgproto3.FrontendMessage{&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}}, 1, 5*time.Second)
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "26000" {
				t.Errorf("the previous identity's unnamed statement is still there: %v", err)
			}
			srv.Release(true)
		})
	}
}

// one returns the single value of q's single row.
func one(t *testing.T, srv *serverpool.Server, q string) string {
	t.Helper()
	rows, err := exec(context.Background(), srv, q, 5*time.Second)
	if err != nil || len(rows) != 1 || len(rows[0]) != 1 {
		t.Fatalf("%q: %v %v", q, rows, err)
	}
	return strings.TrimSpace(string(rows[0][0]))
}
