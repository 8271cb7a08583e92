package serverpool_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/serverpool"
)

// TestFixes holds the regression tests of the review's findings; the core
// ones run on PostgreSQL 15 and 18.
func TestFixes(t *testing.T) {
	for _, v := range []int{15, 18} {
		t.Run(fmt.Sprintf("PG%d", v), func(t *testing.T) {
			w := newWorldVersion(t, v)

			t.Run("concurrent double release", func(t *testing.T) {
				// Two goroutines of one session (the client pump at EOF, the
				// server pump at ReadyForQuery) both release the handle.
				p, _ := w.pool(t, serverpool.Options{Size: 2})
				for i := range 200 {
					s := acquire(t, p, appKey)
					var wg sync.WaitGroup
					for range 2 {
						wg.Add(1)
						go func() { defer wg.Done(); s.Release(true) }()
					}
					wg.Wait()
					if st := stats(t, p, appKey); st.Active != 0 || st.Idle != 1 {
						t.Fatalf("iteration %d: active %d idle %d after one logical release", i, st.Active, st.Idle)
					}
					if s.PgConn() != nil {
						t.Fatalf("a released handle still gives out its connection")
					}
				}
			})

			t.Run("per-connection state", func(t *testing.T) {
				closed := make(chan any, 4)
				p, _ := w.pool(t, serverpool.Options{Size: 2, OnClose: func(st any) { closed <- st }})
				a := acquire(t, p, appKey)
				if a.State() != nil {
					t.Fatalf("a new connection has state %v", a.State())
				}
				pid := a.PgConn().PID()
				a.SetState("cache of " + fmt.Sprint(pid))
				a.Release(true)
				b := acquire(t, p, appKey)
				if b.PgConn().PID() != pid || b.State() != "cache of "+fmt.Sprint(pid) {
					t.Fatalf("backend %d state %v: the state did not stay with connection %d", b.PgConn().PID(), b.State(), pid)
				}
				b.Release(false)
				if got := <-closed; got != "cache of "+fmt.Sprint(pid) {
					t.Fatalf("OnClose got %v", got)
				}
				waitGone(t, w.s, pid)
				c := acquire(t, p, appKey)
				if c.PgConn().PID() == pid || c.State() != nil {
					t.Fatalf("backend %d (closed %d) has state %v", c.PgConn().PID(), pid, c.State())
				}
				c.SetState(42)
				c.Release(true)
				p.Retire() // the idle connection closes: its state is handed over
				if got := <-closed; got != 42 {
					t.Fatalf("OnClose after Retire got %v", got)
				}
			})

			t.Run("defaults of a fresh connection", func(t *testing.T) {
				other := serverpool.Key{Database: "postgres", Role: "other"}
				w.s.Exec(t, "ALTER ROLE other SET DateStyle = 'SQL, DMY'")
				p, _ := w.pool(t, serverpool.Options{Size: 2})
				if d := p.Defaults(other); d != nil {
					t.Fatalf("defaults before the first dial: %v", d)
				}
				a := acquire(t, p, other)
				query(t, a.PgConn(), "SET DateStyle = 'ISO, MDY'")
				a.SetParam("DateStyle", a.PgConn().ParameterStatus("DateStyle"))
				if a.Params()["DateStyle"] != "ISO, MDY" {
					t.Fatalf("session DateStyle %q", a.Params()["DateStyle"])
				}
				d := p.Defaults(other)
				if d["DateStyle"] != "SQL, DMY" || d["session_authorization"] != "other" || d["server_version"] == "" {
					t.Fatalf("defaults %v, want the role's DateStyle SQL, DMY", d)
				}
				d["DateStyle"] = "changed by the caller"
				// A new dial refreshes them.
				w.s.Exec(t, "ALTER ROLE other SET DateStyle = 'German'")
				b := acquire(t, p, other) // a is still held: a new connection
				if got := p.Defaults(other)["DateStyle"]; !strings.HasPrefix(got, "German") {
					t.Fatalf("defaults after a new dial: DateStyle %q", got)
				}
				a.Release(true)
				b.Release(true)
				if d := p.Defaults(appKey); d != nil {
					t.Fatalf("defaults of an unused key: %v", d)
				}
			})

			t.Run("key limit and forgotten keys", func(t *testing.T) {
				clk := newClock()
				p, _ := w.pool(t, serverpool.Options{Size: 1, MaxKeys: 2, MinIdle: 1, IdleTimeout: time.Minute,
					Lifetime: 90 * time.Second, Jitter: serverpool.NoJitter, Now: clk.Now})
				k2 := serverpool.Key{Database: "app2", Role: "app"}
				k3 := serverpool.Key{Database: "postgres", Role: "other"}
				acquire(t, p, appKey).Release(true)
				held := acquire(t, p, k2)
				_, err := p.Acquire(context.Background(), k3)
				if fe := classOf(t, err); fe.Class != failure.ConfigInvalid || !strings.Contains(fe.Evidence, "the limit is 2") {
					t.Fatalf("a third key: %v (%s)", err, fe.Evidence)
				}
				// An unused key (no connection, nobody waiting, IdleTimeout
				// without an Acquire; MinIdle lapses after Lifetime unused)
				// is forgotten; a key with a connection in use is kept.
				clk.Add(2 * time.Minute)
				p.Maintain()
				waitFor(t, "postgres/app forgotten", func() bool { return len(p.Stats()) == 1 })
				if all := p.Stats(); all[0].Key != k2 || all[0].Active != 1 {
					t.Fatalf("stats %+v", all)
				}
				if p.Defaults(appKey) != nil {
					t.Fatalf("a forgotten key kept its defaults")
				}
				s3 := acquire(t, p, k3)
				s3.Release(true)
				held.Release(true)
				clk.Add(30 * time.Second)
				p.Maintain() // used 30 s ago: kept, with their idle connections
				if n := len(p.Stats()); n != 2 {
					t.Fatalf("%d keys after 30 s, want 2", n)
				}
				// app2/app's connection closed at Release (past its lifetime):
				// the pass refills its MinIdle in the background.
				waitFor(t, "MinIdle refilled", func() bool { return stats(t, p, k2).Opening == 0 })
				clk.Add(time.Minute)
				p.Maintain()
				waitFor(t, "every key forgotten", func() bool { return len(p.Stats()) == 0 })
				acquire(t, p, appKey).Release(true)
			})

			t.Run("keys whose dials failed make room", func(t *testing.T) {
				// Clients naming databases that do not exist must not lock
				// everyone else out of the pool for the idle timeout.
				p, _ := w.pool(t, serverpool.Options{Size: 1, MaxKeys: 2})
				for _, db := range []string{"nosuchdb1", "nosuchdb2", "nosuchdb3"} {
					if _, err := p.Acquire(context.Background(), serverpool.Key{Database: db, Role: "app"}); err == nil || errors.Is(err, serverpool.ErrExhausted) {
						t.Fatalf("%s: %v, want the dial's error", db, err)
					}
				}
				acquire(t, p, appKey).Release(true)
				held := acquire(t, p, appKey)
				defer held.Release(true)
				k2 := serverpool.Key{Database: "app2", Role: "app"}
				s2 := acquire(t, p, k2)
				defer s2.Release(true)
				_, err := p.Acquire(context.Background(), serverpool.Key{Database: "postgres", Role: "other"})
				if !errors.Is(err, serverpool.ErrExhausted) {
					t.Fatalf("a third key while two hold connections: %v, want ErrExhausted", err)
				}
			})

			t.Run("a statement that swallows cancels keeps its slot until terminated", func(t *testing.T) {
				// Size 1: the side connection is dialed. Size 2 with an idle
				// connection: the idle one sends the termination.
				for i, size := range []int{1, 2} {
					p, _ := w.pool(t, serverpool.Options{Size: size})
					var idle *serverpool.Server
					if size == 2 {
						idle = acquire(t, p, appKey)
					}
					s := acquire(t, p, appKey)
					if idle != nil {
						idle.Release(true)
					}
					pid := s.PgConn().PID()
					runRaw(t, s, "DO $$ BEGIN PERFORM pg_advisory_xact_lock(4242); LOOP BEGIN PERFORM pg_sleep(600); "+
						"EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END $$")
					waitFor(t, "statement running", func() bool {
						return strings.TrimSpace(w.s.Exec(t, "SELECT count(*) FROM pg_stat_activity WHERE pid = "+strconv.Itoa(int(pid))+" AND state = 'active'")) == "1"
					})
					if err := s.PgConn().CancelRequest(context.Background()); err != nil { // swallowed
						t.Fatal(err)
					}
					s.Release(false)
					// The last slot is given out only once the backend is gone.
					var held []*serverpool.Server
					for range size {
						held = append(held, acquire(t, p, appKey))
					}
					if n := strings.TrimSpace(w.s.Exec(t, "SELECT count(*) FROM pg_stat_get_activity("+strconv.Itoa(int(pid))+")")); n != "0" {
						t.Fatalf("size %d: a slot was given out while backend %d still runs", size, pid)
					}
					if got := query(t, held[size-1].PgConn(), "SELECT pg_try_advisory_xact_lock(4242)"); got[0] != "t" {
						t.Fatalf("the lock is still held: %v", got)
					}
					for _, h := range held {
						h.Release(true)
					}
					st := stats(t, p, appKey)
					if st.Terminated != 1 || st.Terminating != 0 || st.Closed != 1 {
						t.Fatalf("case %d: stats %+v", i, st)
					}
				}
			})

			t.Run("a backend killed while idle is replaced within CheckAfter", func(t *testing.T) {
				p, _ := w.pool(t, serverpool.Options{Size: 2}) // CheckAfter 30 s: no liveness query
				a := acquire(t, p, appKey)
				b := acquire(t, p, appKey)
				killed, kept := a.PgConn().PID(), b.PgConn().PID()
				a.Release(true)
				b.Release(true) // most recently used: handed out first
				w.s.Exec(t, "SELECT pg_terminate_backend("+strconv.Itoa(int(kept))+")")
				w.s.Exec(t, "SELECT pg_terminate_backend("+strconv.Itoa(int(killed))+")")
				waitGone(t, w.s, kept)
				waitGone(t, w.s, killed)
				// Both idle connections are dead: the Acquire closes both and
				// dials a new one, and does not fail.
				s := acquire(t, p, appKey)
				if got := query(t, s.PgConn(), "SELECT 1"); got[0] != "1" || s.PgConn().PID() == kept || s.PgConn().PID() == killed {
					t.Fatalf("got %v on backend %d", got, s.PgConn().PID())
				}
				// A live idle connection passes the check and loses no byte.
				c := acquire(t, p, appKey)
				pid := c.PgConn().PID()
				c.Release(true)
				c = acquire(t, p, appKey)
				if c.PgConn().PID() != pid || query(t, c.PgConn(), "SELECT 2")[0] != "2" {
					t.Fatalf("the live connection %d was not reused intact (got %d)", pid, c.PgConn().PID())
				}
				s.Release(true)
				c.Release(true)
				if st := stats(t, p, appKey); st.Closed != 2 || st.Used != 4 {
					t.Fatalf("stats %+v", st)
				}
			})
		})
	}
}

// runRaw sends a query the way the proxy relays it: pgconn does not know
// a statement is running.
func runRaw(t *testing.T, s *serverpool.Server, sql string) {
	t.Helper()
	buf, err := (&pgproto3.Query{String: sql}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PgConn().Conn().Write(buf); err != nil {
		t.Fatal(err)
	}
}
