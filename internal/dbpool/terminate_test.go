package dbpool_test

// The termination tests run in parallel (t.Parallel): each has its own server,
// and they mostly wait on statement timeouts.

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/internal/dbpool"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/readonly"
)

// swallow catches query_canceled forever, so neither statement_timeout nor
// a CancelRequest ends it; it first turns off client_connection_check_interval
// (readonly's second line) and reads t, so that it holds a lock on t.
const swallow = `DO $$ BEGIN PERFORM set_config('client_connection_check_interval', '0', true); PERFORM 1 FROM t LIMIT 1;
LOOP BEGIN PERFORM pg_sleep(3600); EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END $$`

// terminateWorld is the TLS world plus a table t the role app may read.
func terminateWorld(t *testing.T) *world {
	t.Helper()
	w := newWorld(t)
	w.s.Exec(t, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1); GRANT SELECT ON t TO app")
	return w
}

func listed(t *testing.T, s *pgtest.Server, pid uint32) bool {
	t.Helper()
	return s.Exec(t, "SELECT count(*) FROM pg_stat_get_activity("+strconv.Itoa(int(pid))+")") != "0"
}

// settle waits (bounded) until the pool has no termination in flight.
func settle(t *testing.T, p *dbpool.Pool) dbpool.Stats {
	t.Helper()
	for range 400 {
		if st := p.Stats(); st.Terminating == 0 {
			return st
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("terminations still in flight: %+v", p.Stats())
	return dbpool.Stats{}
}

// ended reports whether the pool ended exactly n backends and none is
// left. Failed attempts are allowed and logged: on a loaded machine a
// signalled backend may exit after pg_terminate_backend stopped waiting,
// and the retry that finds it gone counts it
// (TestTerminationTimedOutCountsOnceGone).
func ended(t *testing.T, st dbpool.Stats, n uint64) bool {
	t.Helper()
	if st.TerminateFailed != 0 {
		t.Logf("%d failed termination attempts, retried", st.TerminateFailed)
	}
	return st.Terminated == n && st.TerminatePending == 0 && st.TerminateGivenUp == 0
}

// killOnCleanup ends a backend a test leaves running on purpose.
func killOnCleanup(t *testing.T, s *pgtest.Server, pid uint32) {
	t.Cleanup(func() { s.Exec(t, "SELECT pg_terminate_backend("+strconv.Itoa(int(pid))+", 5000)") })
}

// swallowCall runs the swallowing statement through readonly on a pooled
// connection and releases it, as mcpserver does.
func swallowCall(t *testing.T, p *dbpool.Pool) uint32 {
	t.Helper()
	c := acquire(t, p)
	pid := c.PgConn.PID()
	_, err := readonly.Query(context.Background(), c.PgConn, swallow, nil, readonly.Limits{StatementTimeout: time.Second})
	if !errors.Is(err, readonly.ErrAbandoned) || !c.PgConn.IsClosed() {
		t.Fatalf("swallowing call: closed=%v err=%v, want ErrAbandoned and a closed connection", c.PgConn.IsClosed(), err)
	}
	c.Release()
	return pid
}

// The review's TestReviewCatchCancelLeaksBackend and
// TestReviewLeakedBackendHoldsLocks, through dbpool with TLS and a client
// certificate (hostssl … cert is the only way in for app, so the side
// connection used the pool's TLS settings and certificate).
func TestAbandonedBackendIsTerminated(t *testing.T) {
	t.Parallel()
	w := terminateWorld(t)
	p := w.pool(t, "verify-full", dbpool.Options{Size: 2})
	pid := swallowCall(t, p)
	waitGone(t, w.s, pid)
	if st := settle(t, p); !ended(t, st, 1) || st.InUse != 0 {
		t.Fatalf("stats %+v, want 1 terminated", st)
	}
	// The lock the statement held on t is gone with it.
	if got := w.s.Exec(t, "SET lock_timeout = '2s'; ALTER TABLE t ADD COLUMN x int; SELECT 'altered'"); got != "altered" {
		t.Fatalf("owner's ALTER TABLE: %q", got)
	}
	// Only the pool's control connection is left, idle.
	if got := w.s.Exec(t, "SELECT count(*) FILTER (WHERE state <> 'idle') || ' ' || count(*) FROM pg_stat_activity WHERE usename = 'app'"); got != "0 1" {
		t.Fatalf("app backends left (not idle, all): %s", got)
	}
}

// The control: without the termination the same call leaves the backend
// running (and the tests above would fail).
func TestAbandonedBackendSurvivesWithoutTerminate(t *testing.T) {
	t.Parallel()
	w := terminateWorld(t)
	p := w.pool(t, "verify-full", dbpool.Options{Size: 2})
	p.DisableTerminate()
	pid := swallowCall(t, p)
	killOnCleanup(t, w.s, pid)
	time.Sleep(3 * time.Second) // not a timing assertion: the backend never ends by itself
	if !listed(t, w.s, pid) {
		t.Fatalf("backend %d ended without the termination: the other tests prove nothing", pid)
	}
	if st := p.Stats(); st.Terminated != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// The review's TestReviewTimeoutSwallowedExhaustsConnections at the
// dbpool+readonly level: with the role limited to 3 connections, swallowing
// calls one after another never lock the role out.
func TestSwallowingCallsNeverExhaustConnections(t *testing.T) {
	t.Parallel()
	w := terminateWorld(t)
	w.s.Exec(t, "ALTER ROLE app CONNECTION LIMIT 3")
	// Size 2 leaves the role one connection for the side connection.
	p := w.pool(t, "verify-full", dbpool.Options{Size: 2})
	for range 3 {
		swallowCall(t, p)
	}
	c := acquire(t, p)
	if got := query(t, c.PgConn, "SELECT 'usable'"); got[0] != "usable" {
		t.Fatalf("after 3 swallowing calls: %v", got)
	}
	c.Release()
	if st := settle(t, p); !ended(t, st, 3) {
		t.Fatalf("stats %+v, want 3 terminated", st)
	}
	if got := w.s.Exec(t, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND state = 'active'"); got != "0" {
		t.Fatalf("active app backends: %s", got)
	}
}

// busyClosed leaves c's backend running pg_sleep (which does not read the
// socket) and closes the client side, as a give-up does.
func busyClosed(t *testing.T, c *dbpool.Conn) {
	t.Helper()
	fe := c.PgConn.Frontend()
	fe.SendQuery(&pgprotoQuery)
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = c.PgConn.Close(ctx)
}

// A PID whose backend_start differs from the one recorded at connect is
// another backend (PID reuse): it is not terminated. The same connection
// with its true backend_start is.
func TestTerminateGuardsPIDReuse(t *testing.T) {
	t.Parallel()
	w := terminateWorld(t)
	p := w.pool(t, "verify-full", dbpool.Options{Size: 2})

	c := acquire(t, p)
	pid := c.PgConn.PID()
	want := w.s.Exec(t, "SELECT (extract(epoch FROM backend_start) * 1000000)::int8 FROM pg_stat_activity WHERE pid = "+strconv.Itoa(int(pid)))
	if strconv.FormatInt(c.BackendStart(), 10) != want {
		t.Fatalf("recorded backend_start %d, server says %s", c.BackendStart(), want)
	}
	c.SetBackendStart(c.BackendStart() + 1) // one microsecond off: another backend
	busyClosed(t, c)
	c.Release()
	killOnCleanup(t, w.s, pid)
	if st := settle(t, p); st.Terminated != 0 || st.TerminateFailed != 0 {
		t.Fatalf("stats %+v: a backend with another backend_start was touched", st)
	}
	if !listed(t, w.s, pid) {
		t.Fatalf("backend %d was terminated although its backend_start did not match", pid)
	}

	c = acquire(t, p)
	pid = c.PgConn.PID()
	busyClosed(t, c)
	c.Release()
	waitGone(t, w.s, pid)
	if st := settle(t, p); st.Terminated != 1 {
		t.Fatalf("stats %+v, want 1 terminated", st)
	}
	if !strings.Contains(w.s.Log(), "terminating connection due to administrator command") {
		t.Fatalf("the server log does not show the termination")
	}
}

// Close waits for the terminations in flight (each bounded).
func TestCloseWaitsForTerminations(t *testing.T) {
	t.Parallel()
	w := terminateWorld(t)
	p := w.pool(t, "verify-full", dbpool.Options{Size: 1})
	c := acquire(t, p)
	pid := c.PgConn.PID()
	busyClosed(t, c)
	c.Release()
	p.Close()
	if st := p.Stats(); st.Terminating != 0 || st.Terminated != 1 {
		t.Fatalf("after Close: %+v", st)
	}
	if listed(t, w.s, pid) {
		t.Fatalf("backend %d still listed after Close", pid)
	}
}

// A backend that exits only after pg_terminate_backend stopped waiting
// (here it is stopped, as a starved process on a loaded machine would be)
// fails the attempt; the retry finds it gone and counts it as terminated,
// since the pool's signal ended it. Its slot is freed only then.
func TestTerminationTimedOutCountsOnceGone(t *testing.T) {
	t.Parallel()
	w := terminateWorld(t)
	p := w.pool(t, "verify-full", dbpool.Options{Size: 1})
	c := acquire(t, p)
	pid := c.PgConn.PID()
	if err := syscall.Kill(int(pid), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(int(pid), syscall.SIGCONT) })
	busyClosed(t, c)
	c.Release()
	st := waitStats(t, p, "the first attempt timed out", func(s dbpool.Stats) bool { return s.TerminateFailed >= 1 })
	if st.Terminated != 0 || st.InUse != 1 || !listed(t, w.s, pid) {
		t.Fatalf("stats %+v: the stopped backend's slot was freed before it was gone", st)
	}
	if err := syscall.Kill(int(pid), syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitGone(t, w.s, pid)
	if st := settle(t, p); st.Terminated != 1 || st.TerminatePending != 0 || st.InUse != 0 {
		t.Fatalf("stats %+v, want the late exit counted as terminated", st)
	}
}

var pgprotoQuery = pgproto3.Query{String: "SELECT pg_sleep(60)"}

// Without the control connection, at the role's connection limit the fresh
// side connection is refused; an idle connection of the pool sends the
// termination instead.
func TestTerminateFallsBackToIdleConnection(t *testing.T) {
	t.Parallel()
	w := terminateWorld(t)
	w.s.Exec(t, "ALTER ROLE app CONNECTION LIMIT 2")
	p := w.pool(t, "verify-full", dbpool.Options{Size: 2})
	p.DisableControl() // the control connection would take the limit's second place
	a, b := acquire(t, p), acquire(t, p)
	idlePID := a.PgConn.PID()
	a.Release()
	pid := b.PgConn.PID()
	busyClosed(t, b)
	b.Release() // app: the idle one + the running one = the limit
	waitGone(t, w.s, pid)
	if st := settle(t, p); !ended(t, st, 1) || st.Idle != 1 {
		t.Fatalf("stats %+v, want 1 terminated and the idle connection kept", st)
	}
	c := acquire(t, p)
	if c.PgConn.PID() != idlePID {
		t.Fatalf("the idle connection %d was not kept (got %d)", idlePID, c.PgConn.PID())
	}
	c.Release()
}
