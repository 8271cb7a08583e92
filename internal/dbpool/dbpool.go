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
// pg_terminate_backend (a FATAL nothing can catch); see terminate.go.
package dbpool

import (
	"context"
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
	terminating     int
	terminateDone   chan struct{} // closed when terminating drops to 0; set by Close
	terminated      uint64
	terminateFailed uint64
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
	p := &Pool{cfg: cfg, opts: opts, o: o, slots: make(chan struct{}, o.Size), closed: make(chan struct{})}
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
		return nil, waitEnded(err, p.o.Size)
	}
	timer := time.NewTimer(p.o.AcquireTimeout)
	defer timer.Stop()
	select {
	case <-p.slots:
	case <-p.closed:
		return nil, errClosed()
	case <-timer.C:
		return nil, failure.New(failure.Timeout, "no database connection became free within %s", p.o.AcquireTimeout).
			WithEvidence("all %d connections of the pool were in use for %s", p.o.Size, p.o.AcquireTimeout).
			WithFix("retry later, shorten the calls that hold connections, or raise the pool size")
	case <-ctx.Done():
		return nil, waitEnded(ctx.Err(), p.o.Size)
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
			return &Conn{PgConn: c.PgConn, Facts: c.Facts, pool: p, created: c.created, gen: c.gen, backendStart: c.backendStart}, nil
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
	return &Conn{PgConn: pg, Facts: facts, pool: p, created: p.o.Now(), gen: gen, backendStart: start}, nil
}

// ping checks an idle connection with an empty query before it is handed
// out: one round trip buys a caller that never gets a backend that was
// terminated or a server that restarted while the connection sat idle.
func (p *Pool) ping(ctx context.Context, c *Conn) bool {
	pctx, cancel := context.WithTimeout(ctx, p.o.ConnectTimeout)
	defer cancel()
	return c.PgConn.Ping(pctx) == nil && !c.PgConn.IsClosed() && c.PgConn.TxStatus() == 'I'
}

func waitEnded(err error, size int) *failure.Error {
	return failure.Wrap(failure.Timeout, err, "gave up waiting for a database connection").
		WithEvidence("the caller's context ended before one of the pool's %d connections was free", size).
		WithFix("retry with a longer deadline, or raise the pool size")
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

// drop closes c, which is in use (holds a slot), and frees the slot. A
// connection that was not idle may have a backend still running: it is
// terminated in the background, and the slot stays taken until that is
// done, so that the pool never counts a live backend as free.
func (p *Pool) drop(c *Conn) {
	mayRun := c.PgConn.IsClosed() || c.PgConn.IsBusy() || c.PgConn.TxStatus() != 'I'
	p.closeConn(c)
	if mayRun && p.startTerminate(c) {
		return
	}
	p.slots <- struct{}{}
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
// connection closed or dropped while not idle gets its backend terminated
// in the background (Stats.Terminated), holding its slot until then.
func (c *Conn) Release() {
	if c == nil || c.released {
		return
	}
	c.released = true
	p := c.pool
	if !p.reusable(c) {
		p.drop(c)
		return
	}
	p.mu.Lock()
	if p.isClosed {
		p.mu.Unlock()
		p.drop(c)
		return
	}
	p.idle = append(p.idle, c)
	p.mu.Unlock()
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

// Close closes the idle connections and refuses further Acquires; a
// connection in use is closed when it is released (pgconn is not safe to
// close under its user). Waiting Acquires fail at once. Close then waits
// for the backend terminations in flight, at most TerminateTimeout +
// ConnectTimeout (each is bounded by that itself). Close is idempotent.
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
	p.mu.Unlock()
	for _, c := range idle {
		p.closeConn(c)
	}
	p.waitTerminations()
}

// Stats are counters for metrics and tests.
type Stats struct {
	Size    int    `json:"size"`
	Idle    int    `json:"idle"`
	InUse   int    `json:"in_use"`
	Opened  uint64 `json:"opened"`  // connections opened since New
	Dropped uint64 `json:"dropped"` // connections closed instead of reused
	// Terminated counts backends of dropped connections that were still
	// running and were ended with pg_terminate_backend; TerminateFailed
	// those that could not be (side connection refused, timeout, no
	// backend_start recorded). A backend already gone counts in neither.
	Terminated      uint64 `json:"terminated"`
	TerminateFailed uint64 `json:"terminate_failed"`
	Terminating     int    `json:"terminating"` // terminations in flight
}

// Stats returns the current counters.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	free := len(p.slots)
	return Stats{Size: p.o.Size, Idle: len(p.idle), InUse: p.o.Size - free, Opened: p.opened, Dropped: p.dropped,
		Terminated: p.terminated, TerminateFailed: p.terminateFailed, Terminating: p.terminating}
}
