package paramsync

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgtest"
)

// run sends each statement on w, feeds every server message to the watch as
// a pooler would, and runs the check whenever the watch asks; it returns the
// hazards found and whether a check ran.
func run(t *testing.T, w *wire, watch *Watch, stmts ...string) (found []*Hazard, checked bool) {
	t.Helper()
	for _, q := range stmts {
		for _, m := range w.mustQuery(q) {
			check, h := watch.Server(m)
			if h != nil {
				found = append(found, h)
			}
			if check {
				checked = true
				var row [][]byte
				for _, r := range w.mustQuery(watch.Query()) {
					if d, ok := r.(*pgproto3.DataRow); ok {
						row = d.Values
					}
				}
				hs, err := Inspect(row)
				if err != nil {
					t.Fatal(err)
				}
				watch.Checked()
				found = append(found, hs...)
			}
		}
	}
	return found, checked
}

func TestHazards(t *testing.T) {
	type tc struct {
		name     string
		every    bool // everyTransaction and the advisory column
		stmts    []string
		want     Kind // 0: none
		wantName string
		checked  bool
	}
	cases := []tc{
		{"listen", false, []string{"LISTEN chan"}, Listen, "chan", true},
		{"listen rolled back", false, []string{"BEGIN", "LISTEN chan", "ROLLBACK"}, 0, "", true},
		{"listen then unlisten", false, []string{"BEGIN", "LISTEN chan", "UNLISTEN chan", "COMMIT"}, 0, "", true},
		{"cursor with hold", false, []string{"BEGIN", "DECLARE \"Cur\" CURSOR WITH HOLD FOR SELECT 1", "COMMIT"}, HoldCursor, "Cur", true},
		{"cursor with hold outside a block", false, []string{"DECLARE c CURSOR WITH HOLD FOR SELECT 1"}, HoldCursor, "c", true},
		{"cursor with hold closed", false, []string{"BEGIN", "DECLARE c CURSOR WITH HOLD FOR SELECT 1", "CLOSE c", "COMMIT"}, 0, "", true},
		{"cursor without hold", false, []string{"BEGIN", "DECLARE c CURSOR FOR SELECT 1", "COMMIT"}, 0, "", true},
		{"sql prepare", false, []string{"PREPARE p AS SELECT 1"}, SQLPrepare, "p", true},
		{"sql prepare deallocated", false, []string{"BEGIN", "PREPARE p AS SELECT 1", "DEALLOCATE p", "COMMIT"}, 0, "", true},
		{"session set", false, []string{"SET work_mem = '8MB'"}, SessionSetting, "work_mem", true},
		{"session set in a block", false, []string{"BEGIN", "SET statement_timeout = 1000", "COMMIT"}, SessionSetting, "statement_timeout", true},
		{"set local", false, []string{"BEGIN", "SET LOCAL work_mem = '8MB'", "COMMIT"}, 0, "", true},
		{"set then reset", false, []string{"BEGIN", "SET work_mem = '8MB'", "RESET work_mem", "COMMIT"}, 0, "", true},
		{"set replayed", false, []string{"SET DateStyle = German", "SET application_name = 'x'"}, 0, "", true},
		{"set hidden behind set local's revert", false, []string{"BEGIN", "SET LOCAL DateStyle = German", "SET work_mem = '8MB'", "COMMIT"}, SessionSetting, "work_mem", true},
		{"set hidden behind reset all", false, []string{"SET DateStyle = German", "RESET ALL; SET work_mem = '8MB'"}, SessionSetting, "work_mem", true},
		{"set hidden behind set_config", false, []string{"SELECT set_config('DateStyle', 'German', false); SET work_mem = '8MB'"}, SessionSetting, "work_mem", true},
		{"set transaction", false, []string{"BEGIN", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "SET TRANSACTION READ ONLY", "SET CONSTRAINTS ALL DEFERRED", "COMMIT"}, 0, "", true},
		{"set session characteristics", false, []string{"SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ"}, SessionSetting, "default_transaction_isolation", true},
		{"set role", false, []string{"SET ROLE other"}, RoleChange, "other", true},
		{"set local role", false, []string{"BEGIN", "SET LOCAL ROLE other", "COMMIT"}, 0, "", true},
		{"temp table", false, []string{"CREATE TEMP TABLE tt (x int)"}, TempObject, "pg_temp.tt", true},
		{"temp table on commit drop", false, []string{"BEGIN", "CREATE TEMP TABLE tt (x int) ON COMMIT DROP", "COMMIT"}, 0, "", true},
		{"plain select not checked", false, []string{"SELECT 1", "BEGIN", "SELECT 2", "COMMIT"}, 0, "", false},
		{"set_config unseen by tags", false, []string{"SELECT set_config('work_mem', '8MB', false)"}, 0, "", false},
		{"set_config every transaction", true, []string{"SELECT set_config('work_mem', '8MB', false)"}, SessionSetting, "work_mem", true},
		{"advisory lock", true, []string{"SELECT pg_advisory_lock(42)"}, AdvisoryLock, "42", true},
		{"advisory xact lock", true, []string{"BEGIN", "SELECT pg_advisory_xact_lock(42)", "COMMIT"}, 0, "", true},
		{"advisory lock unlocked", true, []string{"SELECT pg_advisory_lock(42)", "SELECT pg_advisory_unlock(42)"}, AdvisoryLock, "42", true},
	}
	eachVersion(t, func(t *testing.T, s *pgtest.Server) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				w := dialWire(t, s, nil)
				watch := NewWatch(c.every)
				watch.SetAuthorization(w.params["session_authorization"])
				found, checked := run(t, w, watch, c.stmts...)
				if checked != c.checked {
					t.Errorf("check ran: %v, want %v", checked, c.checked)
				}
				if c.name == "advisory lock unlocked" {
					// The check after the lock (before the unlock) found
					// it: per transaction, as the pool would have acted.
					if len(found) != 1 || found[0].Kind != AdvisoryLock {
						t.Fatalf("found %v", found)
					}
					return
				}
				if c.want == 0 {
					if len(found) != 0 {
						t.Fatalf("found %v (%s)", found[0], found[0].Detail)
					}
					return
				}
				if len(found) != 1 || found[0].Kind != c.want || found[0].Name != c.wantName {
					var got []string
					for _, h := range found {
						got = append(got, h.Kind.String()+":"+h.Name)
					}
					t.Fatalf("found %v, want %s:%s", got, c.want, c.wantName)
				}
				e := found[0].ErrorResponse()
				if e.Code != "0A000" || e.Severity != "FATAL" || found[0].Delivery() != AfterReadyForQuery || !strings.Contains(e.Message, "transaction pooling mode") || e.Hint == "" || !strings.Contains(e.Detail, c.wantName) {
					t.Fatalf("error response %+v", e)
				}
				if f := found[0].Failure(); f.Class != failure.ConfigInvalid || f.Fix == "" || f.Evidence == "" {
					t.Fatalf("failure %#v", f)
				}
			})
		}
		t.Run("session authorization", func(t *testing.T) {
			// Only a superuser can; the change is reported, so no check is needed.
			w := dialWire(t, s, map[string]string{"user": "postgres"})
			watch := NewWatch(false)
			watch.SetAuthorization(w.params["session_authorization"])
			found, _ := run(t, w, watch, "SET SESSION AUTHORIZATION app")
			if len(found) < 1 || found[0].Kind != RoleChange || !strings.Contains(found[0].Detail, "from postgres to app") {
				t.Fatalf("found %v", found)
			}
		})
		t.Run("only the parts due", func(t *testing.T) {
			w := dialWire(t, s, nil)
			watch := NewWatch(false)
			checked := false
			for _, m := range append(w.mustQuery("LISTEN a"), w.mustQuery("UNLISTEN a")...) {
				c, _ := watch.Server(m)
				checked = checked || c
			}
			if !checked {
				t.Fatal("no check after LISTEN")
			}
			q := watch.Query()
			if !strings.Contains(q, "pg_listening_channels") || strings.Contains(q, "pg_settings") || strings.Contains(q, "pg_locks") || strings.Count(q, "NULL::pg_catalog.text") != 6 {
				t.Fatalf("query after UNLISTEN: %s", q)
			}
			if q := CheckQuery(false); strings.Contains(q, "pg_locks") || !strings.Contains(q, "pg_settings") {
				t.Fatalf("CheckQuery(false): %s", q)
			}
		})
		t.Run("load", func(t *testing.T) {
			w := dialWire(t, s, map[string]string{"user": "postgres"})
			found, checked := run(t, w, NewWatch(false), "LOAD 'auto_explain'")
			if checked || len(found) != 1 || found[0].Kind != LoadLibrary || found[0].ErrorResponse().Code != "0A000" {
				t.Fatalf("found %v, checked %v", found, checked)
			}
		})
		t.Run("discard all is not a hazard", func(t *testing.T) {
			// The client resets its own session; internal/prepared sees
			// the same tags and empties its cache itself.
			w := dialWire(t, s, nil)
			for _, q := range []string{"DEALLOCATE ALL", "DISCARD ALL"} {
				if found, _ := run(t, w, NewWatch(false), q); len(found) != 0 {
					t.Fatalf("%s: found %v", q, found)
				}
			}
		})
		t.Run("several at once", func(t *testing.T) {
			w := dialWire(t, s, nil)
			found, _ := run(t, w, NewWatch(false), "BEGIN", "LISTEN a", "LISTEN b", "PREPARE p AS SELECT 1", "SET work_mem = '8MB'", "COMMIT")
			var kinds []string
			for _, h := range found {
				kinds = append(kinds, h.Kind.String()+":"+h.Name)
			}
			if strings.Join(kinds, " ") != "listen:a,b sql_prepare:p session_setting:work_mem" {
				t.Fatalf("found %v", kinds)
			}
		})
		t.Run("pool's own replay is not a hazard", func(t *testing.T) {
			w := dialWire(t, s, nil)
			c, err := NewClient(map[string]string{"DateStyle": "German", "application_name": "x", "TimeZone": "Asia/Tokyo"}, w.params)
			if err != nil {
				t.Fatal(err)
			}
			qs, err := c.Plan(w.params)
			if err != nil {
				t.Fatal(err)
			}
			found, _ := run(t, w, NewWatch(true), qs...)
			if len(found) != 0 {
				t.Fatalf("found %v", found[0])
			}
		})
	})
}

// TestErrorResponseReachesClient: the hazard's ErrorResponse, relayed to a
// real client, is read as a PgError with the code, message and hint.
func TestErrorResponseWire(t *testing.T) {
	h := &Hazard{Kind: Listen, Name: "chan", Detail: "The session was listening on channel(s) chan."}
	buf, err := h.ErrorResponse().Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	var got pgproto3.ErrorResponse
	if err := got.Decode(buf[5:]); err != nil {
		t.Fatal(err)
	}
	if got.Code != "0A000" || got.Severity != "FATAL" || got.Message != "LISTEN is not supported in transaction pooling mode" ||
		!strings.Contains(got.Hint, "session") || !strings.Contains(got.Detail, "undid") {
		t.Fatalf("%+v", got)
	}
	if _, err := Inspect(make([][]byte, 3)); failure.ClassOf(err) != failure.ProtocolError {
		t.Fatalf("short row: %v", err)
	}
}
