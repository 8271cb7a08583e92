// Package dbpool is a small pool of PostgreSQL connections opened with
// pgtls.Connect (libpq-exact TLS). The client certificate comes from the
// caller's pgtls.Options (typically a certs.Source callback), so every new
// connection presents the current certificate: rotation needs no restart,
// and RetireAll or MaxLifetime move the old connections out.
//
// A connection goes back to the pool only when it is open and idle
// (TxStatus 'I'); anything else is closed and replaced on demand, so a
// caller that left a transaction open or lost the backend cannot hand that
// state to the next caller.
//
// A connection dropped while it was not idle (closed by its user, busy, or
// inside a transaction) may still have a running backend: a statement that
// catches query_canceled outlives both statement_timeout and a
// CancelRequest, and closing the socket does not stop it. Release therefore
// ends such a backend by PID from a separate, fresh connection with
// pg_terminate_backend (a FATAL nothing can catch), retrying until the
// backend is gone and keeping its slot until then (fail closed), and Close
// ends the backends of connections still in use; see terminate.go.
package dbpool

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/pgtls"
)

// Defaults for Options' zero values.
const (
	DefaultSize           = 4
	DefaultAcquireTimeout = 5 * time.Second
	DefaultMaxLifetime    = 30 * time.Minute
	DefaultConnectTimeout = 10 * time.Second
	// closeTimeout bounds the Terminate message sent when a connection is dropped.
	closeTimeout = 2 * time.Second
)

// Options configure a Pool. Zero values take the defaults.
type Options struct {
	Size           int           // connections at most; default 4
	AcquireTimeout time.Duration // longest wait for a free connection; default 5s
	MaxLifetime    time.Duration // a connection older than this is retired on release; default 30m
	ConnectTimeout time.Duration // bound on one pgtls.Connect; default 10s (connect_timeout may shorten it)
	// Source, when set, is where Health reads the client certificate's
	// subject and expiry (the one new connections will present).
	Source certs.Source
	// Warnings are added to every Health report, e.g. the start-up warning
	// for DB_SSL_REJECT_UNAUTHORIZED=false.
	Warnings []string
	// Now is the clock for lifetimes and expiry warnings (default time.Now).
	Now func() time.Time
}

// Pool hands out connections; it is safe for concurrent use.
type Pool struct {
	cfg  *connstring.Config
	opts *pgtls.Options
	o    Options

	// slots holds one token per connection that may be in use; idle
	// connections hold none, and in use + idle never exceeds Size because
	// a connection is opened only when no idle one is left.
	slots  chan struct{}
	closed chan struct{}

	mu       sync.Mutex
	idle     []*Conn // most recently released last
	gen      uint64  // RetireAll bumps it; older connections are not reused
	isClosed bool
	opened   uint64
	dropped  uint64

	// Terminations in flight and their outcome (terminate.go).
	terminating      int
	terminateDone    chan struct{} // closed when terminating drops to 0; set by Close
	terminated       uint64
	terminateFailed  uint64 // failed attempts
	terminateGivenUp uint64 // left running at Close
	pending          map[uint32]*pending
	// inUse are the handles given out: Close ends their backends.
	inUse map[*Conn]struct{}
	// ctl is the control connection (terminate.go), guarded by ctlSem.
	ctlSem          chan struct{}
	ctl             *pgconn.PgConn
	controlDisabled bool // test hook: the fallbacks without it
	// terminateDisabled is a test hook (export_test.go): the mutation that
	// proves the tests fail without the terminate.
	terminateDisabled bool
}

// Conn is a connection checked out of a Pool. Release it exactly once.
type Conn struct {
	// PgConn is the connection; do not Close it yourself (Release drops a
	// closed one), and do not use it after Release.
	PgConn *pgconn.PgConn
	// Facts describe how it was opened (TLS version, certificates, ...).
	Facts *pgtls.Facts

	pool     *Pool
	created  time.Time
	gen      uint64
	released bool
	pid      uint32 // PgConn.PID(), kept so that Close need not touch PgConn
	// backendStart identifies the backend with its PID (PIDs are reused):
	// pg_stat_activity.backend_start in microseconds since the epoch, as
	// the server computes it; 0 when the server did not list the backend.
	backendStart int64
}

// New returns a pool for cfg; no connection is opened until Acquire. cfg
// and opts are used as given for every connection and must not change.
func New(cfg *connstring.Config, opts *pgtls.Options, o Options) (*Pool, error) {
	if cfg == nil {
		return nil, failure.New(failure.ConfigInvalid, "database pool: no connection settings").
			WithEvidence("dbpool.New was called with a nil *connstring.Config").
			WithFix("parse the connection string with connstring.Parse and pass the result")
	}
	if o.Size < 0 || o.AcquireTimeout < 0 || o.MaxLifetime < 0 || o.ConnectTimeout < 0 {
		return nil, failure.New(failure.ConfigInvalid, "database pool: negative setting").
			WithEvidence("size=%d acquire_timeout=%s max_lifetime=%s connect_timeout=%s", o.Size, o.AcquireTimeout, o.MaxLifetime, o.ConnectTimeout).
			WithFix("use zero for the defaults or a positive value")
	}
	if o.Size == 0 {
		o.Size = DefaultSize
	}
	if o.AcquireTimeout == 0 {
		o.AcquireTimeout = DefaultAcquireTimeout
	}
	if o.MaxLifetime == 0 {
		o.MaxLifetime = DefaultMaxLifetime
	}
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if opts == nil {
		opts = &pgtls.Options{}
	}
	p := &Pool{cfg: cfg, opts: opts, o: o, slots: make(chan struct{}, o.Size), closed: make(chan struct{}),
		pending: map[uint32]*pending{}, inUse: map[*Conn]struct{}{}, ctlSem: make(chan struct{}, 1)}
	for range o.Size {
		p.slots <- struct{}{}
	}
	return p, nil
}

// Size is the pool's capacity.
func (p *Pool) Size() int { return p.o.Size }

// Acquire returns an idle connection (checked with an empty query first)
// or opens one. It waits at most
// AcquireTimeout (or until ctx ends) for a free slot and then fails with
// class timeout instead of hanging. Connection failures are pgtls's
// classified errors.
func (p *Pool) Acquire(ctx context.Context) (*Conn, error) {
	// An ended context must not win a free slot and then fail the ping,
	// which would throw away a good idle connection.
	if err := ctx.Err(); err != nil {
		return nil, p.waitEnded(err)
	}
	timer := time.NewTimer(p.o.AcquireTimeout)
	defer timer.Stop()
	select {
	case <-p.slots:
	case <-p.closed:
		return nil, errClosed()
	case <-timer.C:
		if e := p.stuckError(fmt.Sprintf("no database connection became free within %s", p.o.AcquireTimeout), nil); e != nil {
			return nil, e
		}
		return nil, failure.New(failure.Timeout, "no database connection became free within %s", p.o.AcquireTimeout).
			WithEvidence("all %d connections of the pool were in use for %s", p.o.Size, p.o.AcquireTimeout).
			WithFix("retry later, shorten the calls that hold connections, or raise the pool size")
	case <-ctx.Done():
		return nil, p.waitEnded(ctx.Err())
	}
	// Closed while we waited: the slot is ours, but no connection is.
	if p.isClosedNow() {
		p.slots <- struct{}{}
		return nil, errClosed()
	}
	for {
		c := p.popIdle()
		if c == nil {
			break
		}
		if p.reusable(c) && p.ping(ctx, c) {
			// A fresh handle: a stale one released twice stays a no-op
			// instead of releasing the next caller's connection.
			return p.handOut(&Conn{PgConn: c.PgConn, Facts: c.Facts, pool: p, created: c.created, gen: c.gen, backendStart: c.backendStart})
		}
		p.closeConn(c) // idle connections hold no slot; ours stays taken
	}
	cctx, cancel := context.WithTimeout(ctx, p.o.ConnectTimeout)
	defer cancel()
	pg, facts, err := pgtls.Connect(cctx, p.cfg, p.opts)
	if err != nil {
		p.slots <- struct{}{}
		return nil, err
	}
	start, err := backendStart(cctx, pg)
	if err != nil {
		_ = pg.Close(cctx)
		p.slots <- struct{}{}
		return nil, err
	}
	p.mu.Lock()
	p.opened++
	gen := p.gen
	p.mu.Unlock()
	p.ensureControl()
	return p.handOut(&Conn{PgConn: pg, Facts: facts, pool: p, created: p.o.Now(), gen: gen, backendStart: start})
}

// handOut records c as in use (Close ends the backends of those), unless
// the pool was closed meanwhile: then Close did not see c, and c is not
// handed out.
func (p *Pool) handOut(c *Conn) (*Conn, error) {
	c.pid = c.PgConn.PID()
	p.mu.Lock()
	closed := p.isClosed
	if !closed {
		p.inUse[c] = struct{}{}
	}
	p.mu.Unlock()
	if closed {
		p.closeConn(c)
		p.slots <- struct{}{}
		return nil, errClosed()
	}
	return c, nil
}

// ping checks an idle connection with an empty query before it is handed
// out: one round trip buys a caller that never gets a backend that was
// terminated or a server that restarted while the connection sat idle.
func (p *Pool) ping(ctx context.Context, c *Conn) bool {
	pctx, cancel := context.WithTimeout(ctx, p.o.ConnectTimeout)
	defer cancel()
	return c.PgConn.Ping(pctx) == nil && !c.PgConn.IsClosed() && c.PgConn.TxStatus() == 'I'
}

func (p *Pool) waitEnded(err error) *failure.Error {
	if e := p.stuckError("gave up waiting for a database connection", err); e != nil {
		return e
	}
	return failure.Wrap(failure.Timeout, err, "gave up waiting for a database connection").
		WithEvidence("the caller's context ended before one of the pool's %d connections was free", p.o.Size).
		WithFix("retry with a longer deadline, or raise the pool size")
}

// stuckError is the Acquire timeout when backends of abandoned calls could
// not be ended: their slots stay taken (fail closed), so the operator must
// learn which backends shrink the pool. nil when none is stuck.
func (p *Pool) stuckError(msg string, cause error) *failure.Error {
	p.mu.Lock()
	stuck := p.stuckLocked()
	n := len(p.pending)
	p.mu.Unlock()
	if stuck == "" {
		return nil
	}
	msg = fmt.Sprintf("%s: %d of the pool's %d connections are held by backends that could not be ended", msg, n, p.o.Size)
	var e *failure.Error
	if cause != nil {
		e = failure.Wrap(failure.Timeout, cause, "%s", msg)
	} else {
		e = failure.New(failure.Timeout, "%s", msg)
	}
	return e.WithEvidence("%s", stuck).WithFix("%s", stuckFix)
}

func errClosed() *failure.Error {
	return failure.New(failure.ConfigInvalid, "the database pool is closed").
		WithEvidence("Acquire was called after Close").
		WithFix("do not use a pool after closing it")
}

func (p *Pool) isClosedNow() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.isClosed
}

func (p *Pool) popIdle() *Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.idle)
	if n == 0 {
		return nil
	}
	c := p.idle[n-1]
	p.idle = p.idle[:n-1]
	return c
}

// reusable says whether c may serve another caller: open, not mid-query,
// idle (no transaction), of the current generation and within its lifetime.
func (p *Pool) reusable(c *Conn) bool {
	p.mu.Lock()
	gen, closed := p.gen, p.isClosed
	p.mu.Unlock()
	return !closed && c.gen == gen && !c.PgConn.IsClosed() && !c.PgConn.IsBusy() && c.PgConn.TxStatus() == 'I' &&
		p.o.Now().Sub(c.created) < p.o.MaxLifetime
}

func (p *Pool) closeConn(c *Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	_ = c.PgConn.Close(ctx) // the connection is gone either way
	p.mu.Lock()
	p.dropped++
	p.mu.Unlock()
}

// Release gives the connection back. One that is closed, inside a
// transaction (or failed one), past MaxLifetime or older than the last
// RetireAll is closed instead, and a new one is opened on demand.
// Releasing twice is a no-op. Release does not wait for the network: a
// connection closed or dropped while not idle may still have a running
// backend, which is terminated in the background (Stats.Terminated) and
// keeps its slot until it is known gone, retried until then.
func (c *Conn) Release() {
	if c == nil || c.released {
		return
	}
	c.released = true
	p := c.pool
	pg := c.PgConn
	mayRun := pg.IsClosed() || pg.IsBusy() || pg.TxStatus() != 'I'
	p.mu.Lock()
	_, tracked := p.inUse[c]
	delete(p.inUse, c)
	if tracked && !mayRun && !p.isClosed && c.gen == p.gen && p.o.Now().Sub(c.created) < p.o.MaxLifetime {
		p.idle = append(p.idle, c)
		p.mu.Unlock()
		p.slots <- struct{}{}
		return
	}
	// Not tracked: Close took it and ended its backend itself.
	terminate := tracked && mayRun && !p.terminateDisabled
	if terminate {
		p.terminating++
	}
	p.mu.Unlock()
	p.closeConn(c)
	if terminate {
		go p.runTerminate(c.pid, c.backendStart, true)
		return
	}
	p.slots <- struct{}{}
}

// RetireAll closes the idle connections and marks those in use to be closed
// on release, so that every later Acquire opens a connection with the
// current client certificate (call it after the certificate source renews).
func (p *Pool) RetireAll() {
	p.mu.Lock()
	p.gen++
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, c := range idle {
		p.closeConn(c) // idle connections hold no slot
	}
}

// Close refuses further Acquires (waiting ones fail at once), closes the
// idle connections and ends the backends of the connections still in use
// with pg_terminate_backend from side connections, in parallel (pgconn is
// not safe to close under its user, and a backend busy in a loop that
// swallows cancellation would outlive the process). It waits for those and
// for the terminations in flight, each of which makes at most one more
// attempt: Close returns within ConnectTimeout + TerminateTimeout + 4 s
// (19 s by default: the last attempt, then closing the control connection). A later Release of a connection that was in use just
// closes it. Close is idempotent.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.isClosed {
		p.mu.Unlock()
		return
	}
	p.isClosed = true
	close(p.closed)
	idle := p.idle
	p.idle = nil
	inUse := p.inUse
	p.inUse = map[*Conn]struct{}{}
	if p.terminateDisabled {
		inUse = nil
	}
	p.terminating += len(inUse)
	p.mu.Unlock()
	for c := range inUse {
		// The slot stays with the handle; its Release frees it.
		go p.runTerminate(c.pid, c.backendStart, false)
	}
	var wg sync.WaitGroup
	for _, c := range idle {
		wg.Add(1)
		go func() { defer wg.Done(); p.closeConn(c) }()
	}
	p.waitTerminations()
	wg.Wait() // each close is bounded by 2 s, started before the wait
	p.closeControl()
}

// Stats are counters for metrics and tests.
type Stats struct {
	Size    int    `json:"size"`
	Idle    int    `json:"idle"`
	InUse   int    `json:"in_use"`
	Opened  uint64 `json:"opened"`  // connections opened since New
	Dropped uint64 `json:"dropped"` // connections closed instead of reused
	// Terminated counts backends (of dropped connections, or in use at
	// Close) that were still running and were ended with
	// pg_terminate_backend, also those signalled by an attempt that timed
	// out and found gone by a retry; TerminateFailed the attempts that
	// failed (side connection refused, timeout), each retried. A backend
	// that ended by itself counts in neither.
	Terminated      uint64 `json:"terminated"`
	TerminateFailed uint64 `json:"terminate_failed"` // failed attempts; each is retried
	Terminating     int    `json:"terminating"`      // terminations in flight, retries included
	// TerminatePending counts backends whose termination failed and is
	// being retried (their slots stay taken); TerminateGivenUp those
	// still failing when Close's bound ran out.
	TerminatePending int    `json:"terminate_pending"`
	TerminateGivenUp uint64 `json:"terminate_given_up"`
}

// Stats returns the current counters.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	free := len(p.slots)
	return Stats{Size: p.o.Size, Idle: len(p.idle), InUse: p.o.Size - free, Opened: p.opened, Dropped: p.dropped,
		Terminated: p.terminated, TerminateFailed: p.terminateFailed, Terminating: p.terminating,
		TerminatePending: len(p.pending), TerminateGivenUp: p.terminateGivenUp}
}
