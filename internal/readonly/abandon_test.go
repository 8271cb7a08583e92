package readonly

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/failure"
)

// swallowDO catches query_canceled forever, so statement_timeout and the
// CancelRequest are both swallowed (the review's statement).
const swallowDO = `DO $$ BEGIN LOOP BEGIN PERFORM pg_sleep(3600); EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END $$`

// swallowNoCheck also turns off client_connection_check_interval, which an
// agent may do: only a termination by PID ends it (dbpool's tests).
const swallowNoCheck = `DO $$ BEGIN PERFORM set_config('client_connection_check_interval', '0', true);
LOOP BEGIN PERFORM pg_sleep(3600); EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END $$`

// Every give-up path returns an error that errors.Is ErrAbandoned and
// leaves the connection closed; an ordinary timeout does neither.
func TestGiveUpIsAbandoned(t *testing.T) {
	t.Parallel() // own server; waits out StatementTimeout + Grace
	s := server(t)
	t.Cleanup(func() {
		s.Exec(t, "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity WHERE usename = 'agent'")
	})
	l := Limits{StatementTimeout: time.Second}

	c := connect(t, s, "agent")
	_, err := Query(context.Background(), c, "SELECT pg_sleep(30)", nil, Limits{StatementTimeout: 200 * time.Millisecond})
	if sqlstate(err) != "57014" || errors.Is(err, ErrAbandoned) {
		t.Fatalf("statement timeout: %v (abandoned=%v)", err, errors.Is(err, ErrAbandoned))
	}
	res, err := Query(context.Background(), c, "SHOW client_connection_check_interval", nil, Limits{})
	if err != nil || res.Rows[0][0] != "1s" {
		t.Fatalf("client_connection_check_interval inside the guard: %v %v", res, err)
	}
	usable(t, c)

	watch := connect(t, s, "agent") // idle but for waitSleeping's polls
	cases := map[string]func(c *pgconn.PgConn) error{
		"read deadline": func(c *pgconn.PgConn) error {
			_, err := Query(context.Background(), c, swallowNoCheck, nil, l)
			return err
		},
		"ctx cancel": func(c *pgconn.PgConn) error {
			// Cancelled once the statement sleeps inside its handler: a
			// fixed delay could land before it (a loaded machine), and the
			// CancelRequest would then end it with 57014, not be swallowed.
			ctx, cancel := context.WithCancel(context.Background())
			go func() {
				defer cancel()
				waitSleeping(watch, c.PID())
			}()
			_, err := Query(ctx, c, swallowNoCheck, nil, l)
			if !errors.Is(err, context.Canceled) {
				return errors.New("not context.Canceled: " + err.Error())
			}
			return err
		},
		"guard": func(c *pgconn.PgConn) error {
			return Guard(context.Background(), c, l, func(ctx context.Context, c *pgconn.PgConn) error {
				_, err := c.Exec(ctx, swallowNoCheck).ReadAll()
				return err
			})
		},
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for name, call := range cases {
		c := connect(t, s, "agent")
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := call(c)
			mu.Lock()
			defer mu.Unlock()
			var fe *failure.Error
			if !errors.Is(err, ErrAbandoned) || !c.IsClosed() || !errors.As(err, &fe) || fe.Class != failure.ProtocolError {
				t.Errorf("%s: closed=%v err=%v, want ErrAbandoned, protocol_error and a closed connection", name, c.IsClosed(), err)
			}
		}()
	}
	wg.Wait()
	// The backends are still running: ending them is the caller's job.
	if got := s.Exec(t, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'agent' AND state = 'active'"); got != "3" {
		t.Fatalf("active agent backends after the give-ups: %s, want 3", got)
	}
}

// waitSleeping polls (through watch, used by nobody else) until backend
// pid waits in pg_sleep, for at most 10 s.
func waitSleeping(watch *pgconn.PgConn, pid uint32) {
	q := "SELECT count(*) FROM pg_stat_activity WHERE pid = " + itoa(int(pid)) + " AND wait_event = 'PgSleep'"
	for range 200 {
		r, err := watch.Exec(context.Background(), q).ReadAll()
		if err == nil && len(r) == 1 && len(r[0].Rows) == 1 && string(r[0].Rows[0][0]) == "1" {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The second line: with client_connection_check_interval left as set, the
// abandoned backend notices the closed socket and ends itself (FATAL,
// which PL/pgSQL cannot catch), without any termination.
func TestCheckIntervalEndsAbandonedBackend(t *testing.T) {
	t.Parallel() // own server; waits out StatementTimeout + Grace
	s := server(t)
	t.Cleanup(func() {
		s.Exec(t, "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity WHERE usename = 'agent'")
	})
	c := connect(t, s, "agent")
	pid := c.PID()
	_, err := Query(context.Background(), c, swallowDO, nil, Limits{StatementTimeout: time.Second})
	if !errors.Is(err, ErrAbandoned) || !c.IsClosed() {
		t.Fatalf("closed=%v err=%v", c.IsClosed(), err)
	}
	for range 200 {
		if s.Exec(t, "SELECT count(*) FROM pg_stat_activity WHERE pid = "+itoa(int(pid))) == "0" {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("backend %d still running 10 s after the call gave up", pid)
}
