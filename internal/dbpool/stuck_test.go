package dbpool_test

// The termination tests run in parallel (t.Parallel): each has its own server,
// and they mostly wait on statement timeouts.

import (
	"context"
	"crypto/tls"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/dbpool"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/readonly"
	"github.com/pgtrust/pgtrust/pgtls"
)

// The backoff the pool computes: 1 s doubling, capped at 30 s.
func TestRetryDelayBackoff(t *testing.T) {
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}
	for i, w := range want {
		if got := dbpool.RetryDelay(i + 1); got != w {
			t.Fatalf("RetryDelay(%d) = %s, want %s", i+1, got, w)
		}
	}
	if got := dbpool.RetryDelay(1000); got != dbpool.RetryMax {
		t.Fatalf("RetryDelay(1000) = %s", got)
	}
}

// swallowConcurrently runs n swallowing calls at once on p.
func swallowConcurrently(t *testing.T, w *world, p *dbpool.Pool, n int) []uint32 {
	t.Helper()
	var wg sync.WaitGroup
	pids := make([]uint32, n)
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); pids[i] = swallowCall(t, p) }()
	}
	wg.Wait()
	for _, pid := range pids {
		killOnCleanup(t, w.s, pid)
	}
	return pids
}

// waitStats polls (bounded) until ok holds for the pool's Stats.
func waitStats(t *testing.T, p *dbpool.Pool, what string, ok func(dbpool.Stats) bool) dbpool.Stats {
	t.Helper()
	for range 600 {
		if st := p.Stats(); ok(st) {
			return st
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: never reached; stats %+v", what, p.Stats())
	return dbpool.Stats{}
}

// connectApp opens a connection of role app outside the pool.
func connectApp(t *testing.T, w *world) *pgconn.PgConn {
	t.Helper()
	cfg, err := connstring.Parse(w.s.DSN("host=localhost user=app dbname=postgres sslmode=verify-full"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	pg, _, err := pgtls.Connect(ctx, cfg, w.opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pg.Close(context.Background()) })
	return pg
}

// stuckAcquireError checks that Acquire fails closed, naming the backends.
func stuckAcquireError(t *testing.T, p *dbpool.Pool, pids []uint32) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := p.Acquire(ctx)
	if err == nil {
		c.Release()
		t.Fatalf("Acquire succeeded while every slot was held by a running abandoned backend")
	}
	var fe *failure.Error
	if !errors.As(err, &fe) || fe.Class != failure.Timeout || !strings.Contains(fe.Fix, "pg_terminate_backend") {
		t.Fatalf("Acquire: %#v", err)
	}
	for _, pid := range pids {
		if !strings.Contains(fe.Evidence, strconv.Itoa(int(pid))) {
			t.Fatalf("evidence %q does not name backend %d", fe.Evidence, pid)
		}
	}
	t.Logf("Acquire while stuck: %v", err)
}

// The review's concurrent test at the documented setting (pool size 2, role
// CONNECTION LIMIT 3): two abandoned backends plus two side connections
// exceed the limit, and an attempt that is refused is retried, so both
// backends end and both slots come back.
func TestConcurrentSwallowAtDocumentedLimit(t *testing.T) {
	t.Parallel()
	w := terminateWorld(t)
	w.s.Exec(t, "ALTER ROLE app CONNECTION LIMIT 3")
	p := w.pool(t, "verify-full", dbpool.Options{Size: 2})
	pids := swallowConcurrently(t, w, p, 2)
	st := settle(t, p)
	for _, pid := range pids {
		if listed(t, w.s, pid) {
			t.Fatalf("stats %+v: abandoned backend %d still running", st, pid)
		}
	}
	if st.Terminated != 2 || st.TerminatePending != 0 || st.InUse != 0 {
		t.Fatalf("stats %+v, want 2 terminated, none pending, no slot taken", st)
	}
	t.Logf("stats %+v", st)
}

// The same setting without the control connection (it could not be opened
// or broke) and with the role's spare connection taken by someone else:
// every attempt is refused, so the pool fails closed (both slots stay taken,
// no connection is opened, Acquire names the backends) and retries; once
// the spare is free again both backends are ended.
func TestStuckTerminationFailsClosedAndRetries(t *testing.T) {
	t.Parallel()
	w := terminateWorld(t)
	w.s.Exec(t, "ALTER ROLE app CONNECTION LIMIT 3")
	p := w.pool(t, "verify-full", dbpool.Options{Size: 2, AcquireTimeout: time.Second})
	p.DisableControl()
	holder := connectApp(t, w)
	pids := swallowConcurrently(t, w, p, 2)
	st := waitStats(t, p, "both terminations failed", func(s dbpool.Stats) bool { return s.TerminatePending == 2 })
	if st.InUse != 2 || st.Opened != 2 || st.Terminated != 0 {
		t.Fatalf("stats %+v: slots freed or connections opened while the backends run", st)
	}
	for _, pid := range pids {
		if !listed(t, w.s, pid) {
			t.Fatalf("backend %d gone: the test proves nothing", pid)
		}
	}
	stuckAcquireError(t, p, pids)
	if st := p.Stats(); st.Opened != 2 {
		t.Fatalf("stats %+v: Acquire opened a connection beyond the stuck ones", st)
	}
	_ = holder.Close(context.Background()) // the spare is free: the retries succeed
	st = settle(t, p)
	for _, pid := range pids {
		if listed(t, w.s, pid) {
			t.Fatalf("stats %+v: backend %d still running after the spare came back", st, pid)
		}
	}
	if st.Terminated != 2 || st.TerminatePending != 0 || st.InUse != 0 || st.TerminateFailed < 2 {
		t.Fatalf("stats %+v", st)
	}
	c := acquire(t, p)
	if got := query(t, c.PgConn, "SELECT 'usable'"); got[0] != "usable" {
		t.Fatalf("after the retries: %v", got)
	}
	c.Release()
	t.Logf("stats %+v", st)
}

// The review's concurrent test at limit == size (2), without the control
// connection: no connection of the role is left to end the two abandoned
// backends. The pool fails closed and says which backends; when an operator
// ends one, the retry ends the other.
func TestConcurrentSwallowAtLimitEqualsSize(t *testing.T) {
	t.Parallel()
	w := terminateWorld(t)
	w.s.Exec(t, "ALTER ROLE app CONNECTION LIMIT 2")
	p := w.pool(t, "verify-full", dbpool.Options{Size: 2, AcquireTimeout: time.Second})
	p.DisableControl()
	pids := swallowConcurrently(t, w, p, 2)
	st := waitStats(t, p, "both terminations failed", func(s dbpool.Stats) bool { return s.TerminatePending == 2 })
	if st.InUse != 2 || st.Opened != 2 {
		t.Fatalf("stats %+v: slots freed or connections opened while the backends run", st)
	}
	stuckAcquireError(t, p, pids)
	_, herr := p.Health(context.Background())
	if herr == nil || !strings.Contains(herr.Error(), "could not be ended") {
		t.Fatalf("Health while stuck: %v", herr)
	}
	w.s.Exec(t, "SELECT pg_terminate_backend("+strconv.Itoa(int(pids[0]))+", 5000)")
	st = settle(t, p)
	for _, pid := range pids {
		if listed(t, w.s, pid) {
			t.Fatalf("stats %+v: backend %d still running", st, pid)
		}
	}
	if st.Terminated != 1 || st.TerminatePending != 0 || st.InUse != 0 {
		t.Fatalf("stats %+v, want the second backend terminated by a retry", st)
	}
	t.Logf("stats %+v", st)
}

// gatedOpts fails the TLS handshake of new connections while fail is set,
// except for the tokens in allow: the side connection is refused on demand.
func gatedOpts(w *world, fail *atomic.Bool, allow chan struct{}) *pgtls.Options {
	o := *w.opts
	o.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		if fail.Load() {
			select {
			case <-allow:
			default:
				return nil, errors.New("test: connection refused on purpose")
			}
		}
		return w.opts.GetClientCertificate(cri)
	}
	return &o
}

// While a termination keeps failing, Health warns with the backend's PID.
func TestHealthWarnsOfPendingTermination(t *testing.T) {
	t.Parallel()
	w := terminateWorld(t)
	var fail atomic.Bool
	allow := make(chan struct{}, 1)
	p := w.poolWith(t, "verify-full", gatedOpts(w, &fail, allow), dbpool.Options{Size: 2})
	p.DisableControl()
	c := acquire(t, p)
	pid := c.PgConn.PID()
	killOnCleanup(t, w.s, pid)
	fail.Store(true)
	busyClosed(t, c)
	c.Release()
	// Three failed attempts: the next retry is 4 s away, Health's window.
	waitStats(t, p, "three failed attempts", func(s dbpool.Stats) bool { return s.TerminateFailed >= 3 })
	allow <- struct{}{}
	h, err := p.Health(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, warn := range h.Warnings {
		if strings.Contains(warn, "could not be ended yet (pids "+strconv.Itoa(int(pid))) && strings.Contains(warn, "CONNECTION LIMIT") {
			found = true
		}
	}
	if !found || h.Pool.TerminatePending != 1 {
		t.Fatalf("Health warnings %q, pool %+v", h.Warnings, h.Pool)
	}
	fail.Store(false)
	waitGone(t, w.s, pid)
	if st := settle(t, p); st.Terminated != 1 || st.TerminatePending != 0 {
		t.Fatalf("stats %+v", st)
	}
	h, err = p.Health(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, warn := range h.Warnings {
		if strings.Contains(warn, "could not be ended") {
			t.Fatalf("warning after the backend was ended: %q", warn)
		}
	}
}

// Close ends the backend of a connection still in use: a swallowing call
// running at shutdown, with client_connection_check_interval off, would
// outlive the process. When Close returns the backend is gone.
func TestCloseEndsBackendsInUse(t *testing.T) {
	t.Parallel()
	w := terminateWorld(t)
	for _, control := range []bool{true, false} {
		t.Run("control="+strconv.FormatBool(control), func(t *testing.T) { closeEndsBackendInUse(t, w, control) })
	}
}

func closeEndsBackendInUse(t *testing.T, w *world, control bool) {
	p := w.pool(t, "verify-full", dbpool.Options{Size: 2})
	if !control {
		p.DisableControl()
	}
	c := acquire(t, p)
	pid := c.PgConn.PID()
	killOnCleanup(t, w.s, pid)
	done := make(chan error, 1)
	go func() {
		_, qerr := readonly.Query(context.Background(), c.PgConn, swallow, nil, readonly.Limits{StatementTimeout: time.Hour})
		done <- qerr
	}()
	waitActive(t, w.s, pid)
	p.Close()
	if listed(t, w.s, pid) {
		t.Fatalf("backend %d still running after Close returned; stats %+v", pid, p.Stats())
	}
	if st := p.Stats(); st.Terminated != 1 || st.Terminating != 0 {
		t.Fatalf("stats %+v", st)
	}
	t.Logf("the call ended with: %v", <-done)
	c.Release() // after Close: just closes
	if st := p.Stats(); st.InUse != 0 || st.Terminated != 1 {
		t.Fatalf("after Release: %+v", st)
	}
}

// waitActive waits until pid is running the swallowing loop.
func waitActive(t *testing.T, s *pgtest.Server, pid uint32) {
	t.Helper()
	for range 200 {
		if s.Exec(t, "SELECT count(*) FROM pg_stat_get_activity("+strconv.Itoa(int(pid))+") WHERE state = 'active' AND query LIKE 'DO%'") == "1" {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("backend %d never ran the statement", pid)
}

// The termination reads the function pg_stat_get_activity, not the view:
// on PostgreSQL 15 and 18 the backend_start recorded at connect equals the
// view's, and while a superuser session holds pg_stat_activity in ACCESS
// EXCLUSIVE mode an abandoned backend is still terminated.
func TestTerminateIgnoresLockedStatActivity(t *testing.T) {
	t.Parallel()
	for _, v := range []int{15, 18} {
		t.Run("pg"+strconv.Itoa(v), func(t *testing.T) {
			w := newWorldOn(t, v)
			w.s.Exec(t, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1); GRANT SELECT ON t TO app")
			p := w.pool(t, "verify-full", dbpool.Options{Size: 2})
			c := acquire(t, p)
			pid := c.PgConn.PID()
			killOnCleanup(t, w.s, pid)
			want := w.s.Exec(t, "SELECT (extract(epoch FROM backend_start) * 1000000)::int8 FROM pg_stat_activity WHERE pid = "+strconv.Itoa(int(pid)))
			if strconv.FormatInt(c.BackendStart(), 10) != want {
				t.Fatalf("recorded backend_start %d, the view says %s", c.BackendStart(), want)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			locker, err := pgconn.Connect(ctx, "host="+w.s.SocketDir+" port="+strconv.Itoa(w.s.Port)+" user=postgres dbname=postgres")
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = locker.Close(context.Background()) }()
			if _, err := locker.Exec(ctx, "BEGIN; LOCK TABLE pg_catalog.pg_stat_activity IN ACCESS EXCLUSIVE MODE").ReadAll(); err != nil {
				t.Fatal(err)
			}
			_, err = readonly.Query(context.Background(), c.PgConn, swallow, nil, readonly.Limits{StatementTimeout: time.Second})
			if !errors.Is(err, readonly.ErrAbandoned) {
				t.Fatalf("swallowing call: %v", err)
			}
			c.Release()
			// No new login while the view is locked (LOCK on a view locks
			// pg_authid and pg_database, which logins read): the control
			// connection ends the backend.
			st := settle(t, p)
			if !ended(t, st, 1) {
				t.Fatalf("stats %+v, want 1 terminated with the view locked", st)
			}
			rs, err := locker.Exec(ctx, "SELECT count(*) FROM pg_stat_get_activity("+strconv.Itoa(int(pid))+"); COMMIT").ReadAll()
			if err != nil || string(rs[0].Rows[0][0]) != "0" {
				t.Fatalf("backend %d after the termination: %v %v", pid, err, rs)
			}
		})
	}
}

// The review's pg_maintain case (PostgreSQL 18): the agent's own statement
// locks pg_stat_activity and then swallows cancellation; its backend is
// still terminated and the next Acquire works.
func TestPgMaintainLockDoesNotBlockTermination(t *testing.T) {
	t.Parallel()
	w := newWorldOn(t, 18, "GRANT pg_maintain TO app", "ALTER ROLE app SET lock_timeout = '2s'")
	p := w.pool(t, "verify-full", dbpool.Options{Size: 2})
	c := acquire(t, p)
	pid := c.PgConn.PID()
	killOnCleanup(t, w.s, pid)
	const lockAndSwallow = `DO $$ BEGIN PERFORM set_config('client_connection_check_interval', '0', true);
LOCK TABLE pg_catalog.pg_stat_activity IN ACCESS EXCLUSIVE MODE;
LOOP BEGIN PERFORM pg_sleep(3600); EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END $$`
	_, err := readonly.Query(context.Background(), c.PgConn, lockAndSwallow, nil, readonly.Limits{StatementTimeout: time.Second})
	if !errors.Is(err, readonly.ErrAbandoned) {
		t.Fatalf("err %v", err)
	}
	c.Release()
	waitGone(t, w.s, pid)
	st := settle(t, p)
	if !ended(t, st, 1) {
		t.Fatalf("stats %+v", st)
	}
	c = acquire(t, p)
	if got := query(t, c.PgConn, "SELECT count(*) FROM pg_stat_activity"); got[0] == "" {
		t.Fatalf("view unreadable after the termination")
	}
	c.Release()
}

// At CONNECTION LIMIT == Size the control connection takes one place: the
// pool serves Size-1 calls at once, and an abandoned backend is still ended.
func TestControlConnectionAtLimitEqualsSize(t *testing.T) {
	t.Parallel()
	w := terminateWorld(t)
	w.s.Exec(t, "ALTER ROLE app CONNECTION LIMIT 2")
	p := w.pool(t, "verify-full", dbpool.Options{Size: 2})
	a := acquire(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if b, err := p.Acquire(ctx); err == nil {
		b.Release()
		t.Fatalf("a second connection opened at the limit: the control connection is missing")
	} else {
		t.Logf("second Acquire at the limit: %v", err)
	}
	a.Release()
	for range 3 {
		pid := swallowCall(t, p)
		waitGone(t, w.s, pid)
	}
	if st := settle(t, p); !ended(t, st, 3) || st.InUse != 0 {
		t.Fatalf("stats %+v", st)
	}
}
