package dbpool

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/pgtls"
)

// TerminateTimeout is how long pg_terminate_backend waits for the backend
// to exit (its second argument, PostgreSQL 14+). One termination is bounded
// by ConnectTimeout + TerminateTimeout in all.
const TerminateTimeout = 5 * time.Second

// backendStartSQL is computed by the server both when the connection is
// opened and when it is terminated, so the two values compare exactly
// whatever the DateStyle, TimeZone or float precision.
const backendStartSQL = `(extract(epoch FROM backend_start) * 1000000)::int8`

// backendStart reads the connection's own backend_start, which together
// with the PID names this backend and no later one (PIDs are reused).
func backendStart(ctx context.Context, pg *pgconn.PgConn) (int64, error) {
	r := pg.ExecParams(ctx, "SELECT "+backendStartSQL+" FROM pg_stat_activity WHERE pid = pg_backend_pid()", nil, nil, nil, nil).Read()
	if r.Err != nil {
		return 0, failure.Wrap(failure.ProtocolError, r.Err, "database pool: reading the new connection's backend_start failed").
			WithEvidence("SELECT backend_start FROM pg_stat_activity for backend %d", pg.PID()).
			WithFix("check that the server is PostgreSQL (not a statement-mode pooler) and that pg_stat_activity is readable")
	}
	if len(r.Rows) != 1 || r.Rows[0][0] == nil {
		return 0, nil // not listed: Release cannot terminate it safely and says so in TerminateFailed
	}
	v, err := strconv.ParseInt(string(r.Rows[0][0]), 10, 64)
	if err != nil {
		return 0, failure.Wrap(failure.ProtocolError, err, "database pool: unexpected backend_start value").
			WithEvidence("backend %d", pg.PID()).WithFix("report this as a bug")
	}
	return v, nil
}

// startTerminate ends c's backend in the background; c is already closed
// and holds a slot, which the termination frees when it is done. It
// returns false (and the caller frees the slot) when nothing is started.
func (p *Pool) startTerminate(c *Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.terminateDisabled {
		return false
	}
	if c.backendStart == 0 {
		p.terminateFailed++
		return false
	}
	p.terminating++
	pid, start := c.PgConn.PID(), c.backendStart
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), p.o.ConnectTimeout+TerminateTimeout)
		ended, err := p.terminate(ctx, pid, start)
		cancel()
		p.mu.Lock()
		switch {
		case err != nil:
			p.terminateFailed++
		case ended:
			p.terminated++
		}
		p.terminating--
		if p.terminating == 0 && p.terminateDone != nil {
			close(p.terminateDone)
			p.terminateDone = nil
		}
		p.mu.Unlock()
		p.slots <- struct{}{}
	}()
	return true
}

// terminate ends backend pid if, and only if, it is still the backend that
// started at start: it reports true when a running backend was ended, false
// when it was already gone, and an error when it could not be ended. The
// side connection is opened exactly as the pool's own: same settings, same
// TLS and client certificate, so the same role ends its own backend.
func (p *Pool) terminate(ctx context.Context, pid uint32, start int64) (bool, error) {
	cctx, cancel := context.WithTimeout(ctx, p.o.ConnectTimeout)
	side, _, err := pgtls.Connect(cctx, p.cfg, p.opts)
	cancel()
	if err != nil {
		// The role may be at its connection limit (the abandoned backend
		// still counts): an idle connection of the pool, which holds no
		// agent state and no slot, can send the same statement.
		c := p.popIdle()
		if c == nil {
			return false, err
		}
		ended, terr := terminateOn(ctx, c.PgConn, pid, start)
		back := false
		if terr == nil && p.reusable(c) {
			p.mu.Lock()
			if back = !p.isClosed; back {
				p.idle = append(p.idle, c)
			}
			p.mu.Unlock()
		}
		if !back {
			p.closeConn(c)
		}
		return ended, terr
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		_ = side.Close(cctx)
		cancel()
	}()
	return terminateOn(ctx, side, pid, start)
}

// terminateOn sends the guarded pg_terminate_backend on side.
func terminateOn(ctx context.Context, side *pgconn.PgConn, pid uint32, start int64) (bool, error) {
	// With a timeout (PostgreSQL 14+) the function waits until the backend
	// has exited and returns false, with a warning, if it has not.
	fn := "pg_terminate_backend(pid)"
	args := [][]byte{[]byte(strconv.FormatUint(uint64(pid), 10)), []byte(strconv.FormatInt(start, 10))}
	if serverMajor(side) >= 14 {
		fn = "pg_terminate_backend(pid, $3::int8)"
		args = append(args, []byte(strconv.FormatInt(TerminateTimeout.Milliseconds(), 10)))
	}
	// The PID and backend_start are checked in the same statement that
	// sends the signal, so a PID reused by another backend is never hit.
	r := side.ExecParams(ctx, "SELECT "+fn+" FROM pg_stat_activity WHERE pid = $1::int4 AND "+backendStartSQL+" = $2::int8",
		args, nil, nil, nil).Read()
	if r.Err != nil {
		return false, r.Err
	}
	if len(r.Rows) == 0 {
		return false, nil
	}
	if string(r.Rows[0][0]) != "t" {
		return false, failure.New(failure.Timeout, "database pool: backend %d did not exit within %s", pid, TerminateTimeout).
			WithEvidence("pg_terminate_backend returned false").
			WithFix("check the server for a backend stuck outside interrupt checks")
	}
	return true, nil
}

// serverMajor is the server's major version from its server_version
// parameter ("15.4", "9.6.24", "18beta1"), 0 when unknown.
func serverMajor(pg *pgconn.PgConn) int {
	v := pg.ParameterStatus("server_version")
	end := strings.IndexFunc(v, func(r rune) bool { return r < '0' || r > '9' })
	if end >= 0 {
		v = v[:end]
	}
	n, _ := strconv.Atoi(v)
	return n
}

// waitTerminations waits for the terminations in flight, each bounded by
// its own timeout, so Close returns within that bound too.
func (p *Pool) waitTerminations() {
	p.mu.Lock()
	if p.terminating == 0 {
		p.mu.Unlock()
		return
	}
	done := make(chan struct{})
	p.terminateDone = done
	p.mu.Unlock()
	timer := time.NewTimer(p.o.ConnectTimeout + TerminateTimeout + closeTimeout)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
	}
}
