// Package pgterminate ends a PostgreSQL backend for sure: a CancelRequest
// and closing the socket do not stop a statement that catches
// query_canceled (PL/pgSQL EXCEPTION WHEN query_canceled), and a backend
// runs on, with its snapshot and locks, until it next reads from its
// client. pg_terminate_backend is a FATAL nothing can catch.
//
// A backend is named by its PID and its backend_start (PIDs are reused),
// both read when the connection is opened (Identify); the termination
// checks both in the same statement that sends the signal (On), from
// another connection of the same role. A failed attempt is retried after
// RetryDelay; the caller keeps the backend's pool slot until it is gone.
// Used by internal/dbpool and internal/serverpool.
package pgterminate

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/failure"
)

// Timeout is how long pg_terminate_backend waits for the backend to exit
// (its second argument, PostgreSQL 14+).
const Timeout = 5 * time.Second

// A failed termination is retried after RetryMin, doubling up to RetryMax.
const (
	RetryMin = 1 * time.Second
	RetryMax = 30 * time.Second
)

// RetryDelay is the wait after the n-th failed attempt (n >= 1): RetryMin
// doubled n-1 times, capped at RetryMax.
func RetryDelay(n int) time.Duration {
	d := RetryMin
	for i := 1; i < n && d < RetryMax; i++ {
		d *= 2
	}
	return min(d, RetryMax)
}

// ErrNotExited is wrapped by On's error when the signal was sent but the
// backend had not exited within Timeout (a loaded server may reap it
// later). A caller that retries and then finds the backend gone ended it
// all the same: Signalled tells it so.
var ErrNotExited = errors.New("the backend was signalled but had not exited")

// Signalled reports whether err, from On, means the signal was sent.
func Signalled(err error) bool { return errors.Is(err, ErrNotExited) }

// Backend names one backend: its PID and its backend_start in microseconds
// since the epoch (the PID alone may have been reused by another backend).
type Backend struct {
	PID   uint32
	Start int64
}

// startSQL is computed by the server both when the connection is opened
// and when it is terminated, so the two values compare exactly whatever
// the DateStyle, TimeZone or float precision.
const startSQL = `(extract(epoch FROM backend_start) * 1000000)::int8`

// Both statements read the function pg_stat_get_activity, not the view
// pg_stat_activity: a function takes no relation lock, so an agent that
// may LOCK the view (pg_maintain, PostgreSQL 17+) cannot block them.
const (
	ownStartSQL  = "SELECT " + startSQL + " FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid())"
	terminateSQL = "SELECT %s FROM pg_catalog.pg_stat_get_activity($1::int4) WHERE " + startSQL + " = $2::int8"
)

// Identify reads the connection's own PID and backend_start. A connection
// whose backend cannot be named should be refused by a pool: it could not
// end it later.
func Identify(ctx context.Context, pg *pgconn.PgConn) (Backend, error) {
	r := pg.ExecParams(ctx, ownStartSQL, nil, nil, nil, nil).Read()
	if r.Err != nil {
		return Backend{}, failure.Wrap(failure.ProtocolError, r.Err, "reading the new connection's backend_start failed").
			WithEvidence("SELECT backend_start FROM pg_stat_get_activity(pg_backend_pid()) for backend %d", pg.PID()).
			WithFix("check that the server is PostgreSQL (not a statement-mode pooler)")
	}
	if len(r.Rows) != 1 || r.Rows[0][0] == nil {
		return Backend{}, failure.New(failure.ProtocolError, "the server does not list the new connection's backend").
			WithEvidence("pg_stat_get_activity(pg_backend_pid()) returned %d rows for backend %d", len(r.Rows), pg.PID()).
			WithFix("check track_activities and that the server is PostgreSQL (not a pooler); the pool needs backend_start to end abandoned backends")
	}
	v, err := strconv.ParseInt(string(r.Rows[0][0]), 10, 64)
	if err != nil {
		return Backend{}, failure.Wrap(failure.ProtocolError, err, "unexpected backend_start value").
			WithEvidence("backend %d", pg.PID()).WithFix("report this as a bug")
	}
	return Backend{PID: pg.PID(), Start: v}, nil
}

// On ends backend b from the connection side if, and only if, b is still
// the backend that started at b.Start: true when a running backend was
// ended (and, on PostgreSQL 14+, has exited), false when it was already
// gone, an error when it could not be ended. side must be idle; a zero
// Backend matches nothing (a cheap way to prime a control connection).
func On(ctx context.Context, side *pgconn.PgConn, b Backend) (bool, error) {
	// With a timeout (PostgreSQL 14+) the function waits until the backend
	// has exited and returns false, with a warning, if it has not.
	fn := "pg_catalog.pg_terminate_backend(pid)"
	args := [][]byte{[]byte(strconv.FormatUint(uint64(b.PID), 10)), []byte(strconv.FormatInt(b.Start, 10))}
	if ServerMajor(side) >= 14 {
		fn = "pg_catalog.pg_terminate_backend(pid, $3::int8)"
		args = append(args, []byte(strconv.FormatInt(Timeout.Milliseconds(), 10)))
	}
	// The PID and backend_start are checked in the same statement that
	// sends the signal, so a PID reused by another backend is never hit.
	r := side.ExecParams(ctx, fmt.Sprintf(terminateSQL, fn), args, nil, nil, nil).Read()
	if r.Err != nil {
		return false, r.Err
	}
	if len(r.Rows) == 0 {
		return false, nil
	}
	if string(r.Rows[0][0]) != "t" {
		return false, failure.Wrap(failure.Timeout, ErrNotExited, "backend %d did not exit within %s", b.PID, Timeout).
			WithEvidence("pg_terminate_backend returned false").
			WithFix("check the server for a backend stuck outside interrupt checks")
	}
	return true, nil
}

// ServerMajor is the server's major version from its server_version
// parameter ("15.4", "9.6.24", "18beta1"), 0 when unknown.
func ServerMajor(pg *pgconn.PgConn) int {
	v := pg.ParameterStatus("server_version")
	end := strings.IndexFunc(v, func(r rune) bool { return r < '0' || r > '9' })
	if end >= 0 {
		v = v[:end]
	}
	n, _ := strconv.Atoi(v)
	return n
}
