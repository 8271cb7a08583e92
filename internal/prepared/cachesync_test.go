package prepared

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/internal/pgtest"
)

// DEALLOCATE ALL and DISCARD ALL empty the server; statements Parsed behind
// them in the same pipeline exist afterwards, for this client (oracle) and
// for the cache other clients share; statements of other clients are
// prepared again on their next use.
func TestDropAllKeepsStatementsQueuedBehind(t *testing.T) {
	for _, cmd := range []string{"DEALLOCATE ALL", "DISCARD ALL"} {
		t.Run(cmd, func(t *testing.T) {
			pg := pgtest.Start(t, pgtest.Options{Setup: oracleSetup("")})
			r := startRelay(t, pg, 1, 0)
			host, port, _ := net.SplitHostPort(r.addr())
			other := dialRaw(t, fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres sslmode=disable application_name=O", host, port))
			if got := other.batch(t, parse("o", "SELECT 'o' AS o"), syncMsg()); !slicesEq(got, "ParseComplete", "Z I") {
				t.Fatalf("other: %q", got)
			}
			compare(t, pg, r, "P", [][]pgproto3.FrontendMessage{
				{parse("k", "SELECT 7 AS k"), syncMsg()},
				{query(cmd), parse("a", "SELECT 1 AS a"), parse("k", "SELECT 7 AS k"), syncMsg()},
				{bind("", "a"), exec(""), bind("", "k"), exec(""), syncMsg()},
			})
			// The statements Parsed behind the command are on the server
			// and in the cache: another client's identical Parse is
			// swallowed, not sent again (which would fail with 42P05).
			p0, _ := r.servers[0].cache.Counters()
			got := other.batch(t, parse("b", "SELECT 1 AS a"), bind("", "b"), exec(""), bind("", "o"), exec(""), syncMsg())
			if !slicesEq(got, "ParseComplete", "BindComplete", "D 1", "C SELECT 1", "BindComplete", "D o", "C SELECT 1", "Z I") {
				t.Fatalf("other client after %s: %q", cmd, got)
			}
			// "o" was dropped by the command: prepared again, once.
			if p1, _ := r.servers[0].cache.Counters(); p1 != p0+1 {
				t.Errorf("Parses sent for the other client: %d, want 1 (o again)", p1-p0)
			}
			if r.servers[0].cache.Broken() {
				t.Errorf("%s marked the cache broken", cmd)
			}
		})
	}
}

func slicesEq(got []string, want ...string) bool {
	return strings.Join(got, "|") == strings.Join(want, "|")
}

// SQL-level PREPARE and DEALLOCATE name change the server's statements in a
// way the engine cannot follow (it does not see the name): the cache is
// marked broken, so the session closes that server connection at release.
// DEALLOCATE ALL is followed exactly and does not break it.
func TestSQLPrepareDeallocateBreakCache(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	for _, tc := range []struct {
		sql    string
		broken bool
	}{
		{"PREPARE p AS SELECT 1", true},
		{"PREPARE p AS SELECT 1; DEALLOCATE p", true},
		{"DEALLOCATE ALL", false},
		{"SELECT 1", false},
	} {
		r := startRelay(t, pg, 1, 0)
		c := connectRelay(t, r, "S")
		if _, err := c.Prepare(ctx(t), "s", "SELECT 5", nil); err != nil {
			t.Fatal(err)
		}
		execText(t, c, tc.sql)
		if got := r.servers[0].cache.Broken(); got != tc.broken {
			t.Errorf("%s: Broken() = %v, want %v", tc.sql, got, tc.broken)
		}
	}
}

// A DEALLOCATE or PREPARE of a pgtrust_ name inside DO is invisible to the
// engine. The Bind that finds its statement gone, or the Parse that finds a
// name taken, marks the cache broken and tells the client so, in band,
// without naming the server statement.
func TestHiddenDeallocateOrPrepareDetected(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	const q = "SELECT 5"
	hidden := newStatement(parseOf(q), "search_path=").serverName
	check := func(t *testing.T, r *relay, err error, code string) {
		t.Helper()
		var pe *pgconn.PgError
		if !isCode(err, code) || !errors.As(err, &pe) || !strings.Contains(pe.Message, `prepared statement "s" is out of step`) ||
			strings.Contains(pe.Message+pe.Detail+pe.Hint, hidden) || pe.Hint == "" {
			t.Fatalf("got %v, want %s saying the cache is out of step", err, code)
		}
		if !r.servers[0].cache.Broken() {
			t.Fatal("cache not marked broken")
		}
	}
	t.Run("DEALLOCATE in DO", func(t *testing.T) {
		r := startRelay(t, pg, 1, 0)
		c := connectRelay(t, r, "D")
		if _, err := c.Prepare(ctx(t), "s", q, nil); err != nil {
			t.Fatal(err)
		}
		execText(t, c, fmt.Sprintf(`DO $$BEGIN EXECUTE 'DEALLOCATE %s'; END$$`, hidden))
		if r.servers[0].cache.Broken() {
			t.Fatal("test setup: the DO was seen")
		}
		_, err := prepared1(t, c, "s")
		check(t, r, err, "26000")
		// Asked again, the statement is prepared again and runs.
		if got, err := prepared1(t, c, "s"); err != nil || got != "5" {
			t.Fatalf("retry: %q %v", got, err)
		}
	})
	t.Run("PREPARE in DO", func(t *testing.T) {
		r := startRelay(t, pg, 1, 0)
		c := connectRelay(t, r, "P")
		execText(t, c, fmt.Sprintf(`DO $$BEGIN EXECUTE 'PREPARE %s AS SELECT 666'; END$$`, hidden))
		_, err := c.Prepare(ctx(t), "s", q, nil)
		check(t, r, err, "42P05")
	})
}

// The pool's own DISCARD ALL between sessions, followed by Reset, leaves a
// cache that matches the server: statements are prepared again on next use.
// Without Reset, the cache still lists them and the next Bind fails.
func TestResetAfterPoolDiscard(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	for _, reset := range []bool{true, false} {
		r := startRelay(t, pg, 1, 0)
		c := connectRelay(t, r, "R")
		if _, err := c.Prepare(ctx(t), "s", "SELECT 3", nil); err != nil {
			t.Fatal(err)
		}
		// The pool takes the idle server connection and discards.
		s := <-r.idle
		s.fe.Send(&pgproto3.Query{String: "DISCARD ALL"})
		if err := s.fe.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := s.conn.SetReadDeadline(time.Now().Add(20 * time.Second)); err != nil {
			t.Fatal(err)
		}
		for {
			m, err := s.fe.Receive()
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := m.(*pgproto3.ReadyForQuery); ok {
				break
			}
		}
		if err := s.conn.SetReadDeadline(time.Time{}); err != nil {
			t.Fatal(err)
		}
		if reset {
			s.cache.Reset()
			if s.cache.Len() != 0 || s.cache.Broken() {
				t.Fatalf("after Reset: %d cached, broken %v", s.cache.Len(), s.cache.Broken())
			}
		}
		r.idle <- s
		got, err := prepared1(t, c, "s")
		if reset && (err != nil || got != "3") {
			t.Errorf("with Reset: %q %v", got, err)
		}
		if !reset && !isCode(err, "26000") {
			t.Errorf("without Reset: %q %v, want 26000", got, err)
		}
	}
}
