package paramsync

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgtest"
)

// TestWatchCodeTags: DO and CALL run code that can plant anything under a
// tag that says nothing; they arm the whole check (advisory locks aside),
// and temporary types and functions arm the temporary-object part.
func TestWatchCodeTags(t *testing.T) {
	type tc struct {
		name, sql string
		want      Kind
		wantName  string
	}
	cases := []tc{
		{"do prepare", "DO $$ BEGIN EXECUTE 'PREPARE pgtrust_x AS SELECT 1'; END $$", SQLPrepare, "pgtrust_x"},
		{"do set_config role", "DO $$ BEGIN PERFORM set_config('role', 'other', false); END $$", RoleChange, "other"},
		{"do set_config", "DO $$ BEGIN PERFORM set_config('work_mem', '8MB', false); END $$", SessionSetting, "work_mem"},
		{"do listen", "DO $$ BEGIN EXECUTE 'LISTEN planted'; END $$", Listen, "planted"},
		{"do temp table", "DO $$ BEGIN EXECUTE 'CREATE TEMP TABLE accounts AS SELECT 1 AS id'; END $$", TempObject, "pg_temp.accounts"},
		{"call", "CALL public.plant()", SessionSetting, "work_mem"},
		{"temp type", "CREATE TYPE pg_temp.mood AS ENUM ('a')", TempObject, "pg_temp.mood"},
		{"temp function", "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'", TempObject, "pg_temp.f()"},
		{"do harmless", "DO $$ BEGIN PERFORM 1; END $$", 0, ""},
		{"own operator before pg_catalog", planOperator + "; SET search_path = evil, pg_catalog; DO $$ BEGIN PERFORM set_config('role', 'other', false); END $$", RoleChange, "other"},
		// The whole check, with planted types named like the ones it casts to.
		{"do after temp types named text and int4", "CREATE DOMAIN pg_temp.text AS pg_catalog.int4 CHECK (VALUE > 0); CREATE DOMAIN pg_temp.int4 AS pg_catalog.int4 CHECK (VALUE < 0); DO $$ BEGIN PERFORM 1; END $$", TempObject, "pg_temp.text,pg_temp.int4"},
	}
	eachVersion(t, func(t *testing.T, s *pgtest.Server) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				w := dialWire(t, s, nil)
				watch := NewWatch(false)
				watch.SetAuthorization(w.params["session_authorization"])
				found, checked := run(t, w, watch, c.sql)
				if !checked {
					t.Fatal("no check")
				}
				if c.want == 0 {
					if len(found) != 0 {
						t.Fatalf("found %v", found)
					}
					return
				}
				if !only(found, c.want, c.wantName) {
					t.Fatalf("found %v", found)
				}
			})
		}
		// Before 18 the server does not report search_path, so a session
		// search_path stays behind for the next client: a hazard. From 18
		// Plan sets each client's own: not a hazard.
		t.Run("set search_path", func(t *testing.T) {
			w := dialWire(t, s, nil)
			found, _ := run(t, w, NewWatch(false), "SET search_path = \"MySchema\", public")
			reported := w.params["search_path"] != ""
			if reported && len(found) != 0 {
				t.Fatalf("reported search_path: found %v", found)
			}
			if !reported && (len(found) != 1 || found[0].Kind != SessionSetting || found[0].Name != "search_path") {
				t.Fatalf("unreported search_path: found %v", found)
			}
		})
	})
}

// TestHandover: each channel of planted state, planted the way tags miss
// where possible, is found by the one handover query; a clean session and
// the pool's own Plan queries are not.
func TestHandover(t *testing.T) {
	type tc struct {
		name     string
		user     string // login role, "" for app
		sql      string
		want     Kind
		wantName string
	}
	cases := []tc{
		{"clean", "", "SELECT 1", 0, ""},
		{"plan queries", "", "SELECT pg_catalog.set_config('DateStyle', E'German', false), pg_catalog.set_config('application_name', E'x', false)", 0, ""},
		{"prepare in do", "", "DO $$ BEGIN EXECUTE 'PREPARE pgtrust_x AS SELECT 1'; END $$", SQLPrepare, "pgtrust_x"},
		{"prepare deallocated", "", "PREPARE p AS SELECT 1; DEALLOCATE p", 0, ""},
		{"temp table as (tag SELECT 1)", "", "CREATE TEMP TABLE accounts AS SELECT 1 AS id", TempObject, "pg_temp.accounts"},
		{"temp view", "", "CREATE TEMP VIEW v AS SELECT 1", TempObject, "pg_temp.v"},
		{"temp type", "", "CREATE TYPE pg_temp.mood AS ENUM ('a')", TempObject, "pg_temp.mood"},
		{"temp function", "", "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'", TempObject, "pg_temp.f()"},
		{"set_config role", "", "SELECT set_config('role', 'other', false)", RoleChange, "other"},
		{"set_config role in do", "", "DO $$ BEGIN PERFORM set_config('role', 'other', false); END $$", RoleChange, "other"},
		{"set role then reset", "", "SET ROLE other; RESET ROLE", 0, ""},
		{"session authorization", "postgres", "SET SESSION AUTHORIZATION app", RoleChange, "SET SESSION AUTHORIZATION app"},
		{"listen", "", "LISTEN planted", Listen, "planted"},
		{"cursor with hold", "", "DECLARE c CURSOR WITH HOLD FOR SELECT 1", HoldCursor, "c"},
		{"advisory lock", "", "SELECT pg_advisory_lock(5)", AdvisoryLock, "5"},
		{"advisory xact lock", "", "SELECT pg_advisory_xact_lock(5)", 0, ""},
		// Operators follow search_path: a client's own <> on name placed
		// before pg_catalog must not hide a role change.
		{"own operator before pg_catalog", "", planOperator + "; SET search_path = evil, pg_catalog; SET ROLE other", RoleChange, "other"},
		// Types are looked up in the temporary schema first: the guard's
		// own casts must not resolve to a planted one.
		{"temp types named text and int4", "", "CREATE DOMAIN pg_temp.text AS pg_catalog.int4 CHECK (VALUE > 0); CREATE DOMAIN pg_temp.int4 AS pg_catalog.int4 CHECK (VALUE < 0)", TempObject, "pg_temp.text,pg_temp.int4"},
	}
	eachVersion(t, func(t *testing.T, s *pgtest.Server) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				user := c.user
				if user == "" {
					user = "app"
				}
				conn, g, ctx := guarded(t, s, user)
				if _, err := conn.Exec(ctx, c.sql).ReadAll(); err != nil {
					t.Fatal(err)
				}
				hs, err := g.Run(ctx, conn)
				if err != nil {
					t.Fatal(err)
				}
				if c.want == 0 {
					if len(hs) != 0 {
						t.Fatalf("found %v (%s)", hs[0], hs[0].Detail)
					}
					return
				}
				if !only(hs, c.want, c.wantName) {
					var got []string
					for _, h := range hs {
						got = append(got, h.Kind.String()+":"+h.Name)
					}
					t.Fatalf("found %v, want %s:%s", got, c.want, c.wantName)
				}
				if f := hs[0].Failure(); f.Class != failure.ConfigInvalid || !strings.Contains(f.Evidence, "handover") {
					t.Fatalf("failure %#v", f)
				}
			})
		}
		// The shadowing the guard exists for: a temporary table planted by
		// CREATE TEMP TABLE ... AS answers the next client's unqualified
		// name instead of public.accounts.
		t.Run("temp table shadows public", func(t *testing.T) {
			conn, g, ctx := guarded(t, s, "app")
			res, err := conn.Exec(ctx, "CREATE TEMP TABLE accounts AS SELECT 42 AS id; SELECT count(*) FROM accounts").ReadAll()
			if err != nil || string(res[1].Rows[0][0]) != "1" {
				t.Fatalf("not shadowed: %v %v", res, err)
			}
			if hs, err := g.Run(ctx, conn); err != nil || len(hs) != 1 || hs[0].Kind != TempObject {
				t.Fatalf("found %v %v", hs, err)
			}
		})
		// search_path by set_config: reported from 18 (Plan sets the next
		// client's own), a hazard before.
		t.Run("set_config search_path", func(t *testing.T) {
			conn, g, ctx := guarded(t, s, "app")
			if _, err := conn.Exec(ctx, "SELECT set_config('search_path', 'pg_temp, public', false)").ReadAll(); err != nil {
				t.Fatal(err)
			}
			hs, err := g.Run(ctx, conn)
			if err != nil {
				t.Fatal(err)
			}
			if conn.ParameterStatus("search_path") != "" {
				if len(hs) != 0 {
					t.Fatalf("reported search_path: found %v", hs)
				}
				return
			}
			if len(hs) != 1 || hs[0].Kind != SessionSetting || hs[0].Name != "search_path" || !strings.Contains(hs[0].Detail, "pg_temp, public") {
				t.Fatalf("found %v", hs)
			}
		})
	})
}

// guarded connects as user and primes a guard on the fresh connection, as
// the pool does right after dialling; the clean connection has no hazard.
func guarded(t *testing.T, s *pgtest.Server, user string) (*pgconn.PgConn, *Guard, context.Context) {
	t.Helper()
	conn := connectPg(t, s, user)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	g, err := NewGuard(user)
	if err != nil {
		t.Fatal(err)
	}
	if hs, err := g.Run(ctx, conn); err != nil || len(hs) != 0 {
		t.Fatalf("fresh connection: %v %v", hs, err)
	}
	return conn, g, ctx
}

func TestGuardRefusals(t *testing.T) {
	if _, err := NewGuard(""); failure.ClassOf(err) != failure.ConfigInvalid {
		t.Fatalf("empty role: %v", err)
	}
	g, err := NewGuard("app")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Inspect(make([][]byte, 7)); failure.ClassOf(err) != failure.ProtocolError {
		t.Fatalf("short row: %v", err)
	}
	row := make([][]byte, 8)
	row[5] = []byte("App") // role names are case-sensitive
	hs, err := g.Inspect(row)
	if err != nil || len(hs) != 1 || hs[0].Kind != RoleChange {
		t.Fatalf("%v %v", hs, err)
	}
	// The first run recorded search_path NULL (reported server): a value
	// now is a change.
	row[5], row[3] = []byte("app"), []byte("evil, public")
	if hs, err := g.Inspect(row); err != nil || len(hs) != 1 || hs[0].Kind != SessionSetting {
		t.Fatalf("%v %v", hs, err)
	}
}

// tempName writes a function's temporary schema pg_temp_N as pg_temp (its
// identity names the backend's schema; relations and types say pg_temp).
func tempName(s string) string { return tempSchema.ReplaceAllString(s, "pg_temp.") }

var tempSchema = regexp.MustCompile(`pg_temp_[0-9]+\.`)

// planOperator creates, in a schema the role owns, operators that say two
// names, texts, oids and int4s are never unequal, always equal and
// never less: what a client could plant to blind the checks.
const planOperator = `CREATE FUNCTION evil.never(name, name) RETURNS bool LANGUAGE sql AS 'SELECT false';
CREATE OPERATOR evil.<> (LEFTARG = name, RIGHTARG = name, FUNCTION = evil.never);
CREATE FUNCTION evil.tnever(text, text) RETURNS bool LANGUAGE sql AS 'SELECT false';
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.tnever);
CREATE OPERATOR evil.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.tnever);
CREATE FUNCTION evil.onever(oid, oid) RETURNS bool LANGUAGE sql AS 'SELECT false';
CREATE OPERATOR evil.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = evil.onever);
CREATE FUNCTION evil.inever(int4, int4) RETURNS bool LANGUAGE sql AS 'SELECT false';
CREATE OPERATOR evil.< (LEFTARG = int4, RIGHTARG = int4, FUNCTION = evil.inever);
CREATE OPERATOR evil.>= (LEFTARG = int4, RIGHTARG = int4, FUNCTION = evil.inever);
GRANT USAGE ON SCHEMA evil TO other`

// only reports whether hs is the hazard wanted, alone or with the
// search_path hazard a server that does not report search_path adds when
// the case set it.
func only(hs []*Hazard, k Kind, name string) bool {
	n := 0
	for _, h := range hs {
		switch {
		case h.Kind == k && tempName(h.Name) == name:
			n++
		case h.Kind == SessionSetting && h.Name == "search_path":
		default:
			return false
		}
	}
	return n == 1
}
