package dbpool

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgterminate"
	"github.com/pgtrust/pgtrust/pgtls"
)

// TerminateTimeout is how long pg_terminate_backend waits for the backend
// to exit (its second argument, PostgreSQL 14+). One attempt is bounded by
// ConnectTimeout + TerminateTimeout (+ 2 s to close the side connection).
const TerminateTimeout = pgterminate.Timeout

// A failed termination is retried after RetryMin, doubling up to RetryMax,
// until the backend is gone or the pool is closed: the slot stays taken
// meanwhile, because the backend may still hold its snapshot and locks and
// count against the role's connection limit.
const (
	RetryMin = pgterminate.RetryMin
	RetryMax = pgterminate.RetryMax
)

// retryDelay is the wait after the n-th failed attempt (n >= 1).
func retryDelay(n int) time.Duration { return pgterminate.RetryDelay(n) }

// backendStart reads the connection's own backend_start, which together
// with the PID names this backend and no later one (PIDs are reused). A
// connection whose backend cannot be named is refused: the pool could not
// end it later.
func backendStart(ctx context.Context, pg *pgconn.PgConn) (int64, error) {
	b, err := pgterminate.Identify(ctx, pg)
	if fe, ok := failure.As(err); ok {
		fe.Message = "database pool: " + fe.Message
	}
	return b.Start, err
}

// pending is a termination that failed at least once and is retried.
type pending struct {
	attempts int
	err      string
}

// runTerminate ends backend pid (started at start) in the background,
// retrying with a capped backoff until it is gone or the pool is closed.
// The caller counted it in p.terminating. freeSlot: the backend's slot is
// freed when it is known gone, never before.
func (p *Pool) runTerminate(pid uint32, start int64, freeSlot bool) {
	signalled := false // an earlier attempt sent the signal: gone later is ended by us
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), p.o.ConnectTimeout+TerminateTimeout)
		ended, err := p.terminate(ctx, pid, start)
		cancel()
		signalled = signalled || pgterminate.Signalled(err)
		p.mu.Lock()
		if err == nil {
			if ended || signalled {
				p.terminated++
			}
			delete(p.pending, pid)
			p.finishTerminateLocked()
			p.mu.Unlock()
			if freeSlot {
				p.slots <- struct{}{}
			}
			return
		}
		p.terminateFailed++
		p.pending[pid] = &pending{attempts: attempt, err: err.Error()}
		if p.isClosed {
			// The attempt after Close was the last: Close's bound wins.
			// The backend stays listed in pending (Stats, Health).
			p.terminateGivenUp++
			p.finishTerminateLocked()
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
		timer := time.NewTimer(retryDelay(attempt))
		select {
		case <-timer.C:
		case <-p.closed: // one last attempt, within Close's bound
			timer.Stop()
		}
	}
}

func (p *Pool) finishTerminateLocked() {
	p.terminating--
	if p.terminating == 0 && p.terminateDone != nil {
		close(p.terminateDone)
		p.terminateDone = nil
	}
}

// terminate ends backend pid if, and only if, it is still the backend that
// started at start: it reports true when a running backend was ended, false
// when it was already gone, and an error when it could not be ended. The
// side connection is opened exactly as the pool's own: same settings, same
// TLS and client certificate, so the same role ends its own backend.
func (p *Pool) terminate(ctx context.Context, pid uint32, start int64) (bool, error) {
	if ended, err, ok := p.terminateOnControl(ctx, pid, start); ok {
		return ended, err
	}
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

// The control connection is opened next to the pool's first connection and
// kept: the pool's one way to end a backend when no new login is possible.
// LOCK on the view pg_stat_activity also locks pg_authid and pg_database,
// which every login reads, so an agent allowed to LOCK it (pg_maintain,
// PostgreSQL 17+) blocks fresh side connections; and at the role's
// CONNECTION LIMIT they are refused. Its statement ran once when it was
// opened, so the catalog entries it needs are cached and it takes no lock.
func (p *Pool) ensureControl() {
	select {
	case p.ctlSem <- struct{}{}:
	default:
		return // in use: it exists
	}
	defer func() { <-p.ctlSem }()
	if p.ctl != nil && !p.ctl.IsClosed() {
		return
	}
	p.mu.Lock()
	skip := p.isClosed || p.controlDisabled
	p.mu.Unlock()
	if skip {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.o.ConnectTimeout)
	defer cancel()
	pg, _, err := pgtls.Connect(ctx, p.cfg, p.opts)
	if err != nil {
		return // best effort: fresh side connections and idle ones remain
	}
	if _, err := terminateOn(ctx, pg, 0, 0); err != nil { // PID 0 matches nothing
		_ = pg.Close(ctx)
		return
	}
	p.ctl = pg
}

// terminateOnControl sends the termination on the control connection; ok
// is false when there is none (or it broke), and the caller goes on.
func (p *Pool) terminateOnControl(ctx context.Context, pid uint32, start int64) (ended bool, err error, ok bool) {
	select {
	case p.ctlSem <- struct{}{}:
	case <-ctx.Done():
		return false, nil, false
	}
	defer func() { <-p.ctlSem }()
	if p.ctl == nil {
		return false, nil, false
	}
	ended, err = terminateOn(ctx, p.ctl, pid, start)
	if err != nil && (p.ctl.IsClosed() || p.ctl.IsBusy() || p.ctl.TxStatus() != 'I') {
		cctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		_ = p.ctl.Close(cctx)
		cancel()
		p.ctl = nil
		return false, nil, false
	}
	return ended, err, true
}

// closeControl closes the control connection (at most 2 s). If Close's
// bound ran out while an attempt still uses it, that attempt (bounded by
// its own timeout) is waited for in the background.
func (p *Pool) closeControl() {
	closeIt := func() {
		defer func() { <-p.ctlSem }()
		if p.ctl != nil {
			ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
			_ = p.ctl.Close(ctx)
			cancel()
			p.ctl = nil
		}
	}
	select {
	case p.ctlSem <- struct{}{}:
		closeIt()
	default:
		go func() { p.ctlSem <- struct{}{}; closeIt() }()
	}
}

// terminateOn sends the guarded pg_terminate_backend on side.
func terminateOn(ctx context.Context, side *pgconn.PgConn, pid uint32, start int64) (bool, error) {
	ended, err := pgterminate.On(ctx, side, pgterminate.Backend{PID: pid, Start: start})
	if fe, ok := failure.As(err); ok && fe.Class == failure.Timeout {
		fe.Message = "database pool: " + fe.Message
	}
	return ended, err
}

// waitTerminations waits for the terminations in flight; each has at most
// one attempt left once the pool is closed, so this is bounded by one
// attempt: ConnectTimeout + TerminateTimeout + closeTimeout.
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

// stuckLocked describes the terminations that failed and are retried:
// "" when there are none.
func (p *Pool) stuckLocked() string {
	if len(p.pending) == 0 {
		return ""
	}
	pids := make([]uint32, 0, len(p.pending))
	for pid := range p.pending {
		pids = append(pids, pid)
	}
	slices.Sort(pids)
	s := make([]string, len(pids))
	for i, pid := range pids {
		s[i] = strconv.FormatUint(uint64(pid), 10)
	}
	last := p.pending[pids[len(pids)-1]]
	return fmt.Sprintf("%d backends of abandoned calls could not be ended yet (pids %s; last error after %d attempts: %s)",
		len(pids), strings.Join(s, ", "), last.attempts, last.err)
}

// stuckFix is the operator's way out when terminations keep failing.
const stuckFix = "end those backends as a superuser or a member of the role (SELECT pg_terminate_backend(pid)); " +
	"keep the pool size below the role's CONNECTION LIMIT so the pool can open its side connection; " +
	"the pool retries at least every 30s and keeps their connections out of use until they are gone"

// terminationWarning is Health's warning about stuck terminations.
func (p *Pool) terminationWarning() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := p.stuckLocked(); s != "" {
		return s + ": " + stuckFix
	}
	return ""
}
