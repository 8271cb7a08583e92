// Package serverpool keeps server connections to PostgreSQL per (database,
// role) for the proxy's pooled sessions, with PgBouncer's pool semantics:
// a size per key plus a reserve for clients that waited too long, a wait
// timeout that fails with a classified error instead of hanging, an idle
// timeout, a lifetime spread by jitter, a liveness check of connections
// that sat idle, a per-key backoff after failed dials (and PgBouncer's fast
// fail while a key has no server at all), and generations: Retire after a
// client-certificate rotation makes every older connection close at its
// next Release (after the current transaction) and idle ones at once.
//
// The pool never opens a connection itself: the caller's Dialer does
// (pgtls.Connect with the key's database and role, so the current client
// certificate is presented). The pool does not speak the protocol beyond an
// empty query for the liveness check; whether a connection is clean
// (ReadyForQuery 'I', no protocol error) is the caller's word in Release.
package serverpool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"reflect"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgterminate"
)

// Defaults for Options' zero values (PgBouncer's, except Lifetime's jitter,
// which PgBouncer does not have).
const (
	DefaultSize         = 20               // PgBouncer default_pool_size
	DefaultReserveAfter = 5 * time.Second  // reserve_pool_timeout
	DefaultWaitTimeout  = 30 * time.Second // PgBouncer's query_wait_timeout is 120 s; a proxy client should learn sooner
	DefaultIdleTimeout  = 10 * time.Minute // server_idle_timeout
	DefaultLifetime     = time.Hour        // server_lifetime
	DefaultJitter       = 0.1
	DefaultCheckAfter   = 30 * time.Second // server_check_delay
	DefaultBackoffMin   = 100 * time.Millisecond
	DefaultBackoffMax   = 10 * time.Second
	// DefaultMaxKeys bounds the keys: database and role may come from
	// clients, so their number must not grow without limit.
	DefaultMaxKeys = 100
	// NoJitter as Options.Jitter turns the jitter off (zero means the default).
	NoJitter = -1.0

	// checkTimeout bounds the liveness check (one empty query).
	checkTimeout = 5 * time.Second
	// closeTimeout bounds the Terminate message sent when a connection closes.
	closeTimeout = 2 * time.Second
	// janitorEvery is how often idle timeouts, lifetimes and MinIdle are
	// enforced in the background (Maintain does one pass on demand).
	janitorEvery = time.Second
)

// Key names a pool: server connections are shared only between sessions of
// the same database and role.
type Key struct{ Database, Role string }

func (k Key) String() string { return fmt.Sprintf("%s/%s", k.Database, k.Role) }

// Dialer opens one server connection for key (pgtls.Connect with the key's
// database and role); its error should be classified (a *failure.Error).
// It must send no session parameters (RuntimeParams) in the startup
// packet: Pool.Defaults must be the role's and database's defaults.
type Dialer func(ctx context.Context, key Key) (*pgconn.PgConn, error)

// Options configure a Pool. Zero values take the defaults; negative
// durations or counts are refused.
type Options struct {
	Size           int              // server connections per key at most (default 20)
	MinIdle        int              // idle connections kept open per key once the key is used (default 0; never above Size)
	Reserve        int              // extra connections when a client has waited ReserveAfter (default 0)
	ReserveAfter   time.Duration    // default 5s
	WaitTimeout    time.Duration    // a client waiting longer gets a classified error (default 30s; class timeout)
	IdleTimeout    time.Duration    // idle server connection closed after (default 10m)
	Lifetime       time.Duration    // server connection retired after (default 1h) ± Jitter
	Jitter         float64          // fraction of Lifetime, default 0.1: spreads retirements; NoJitter for none
	CheckAfter     time.Duration    // idle longer than this → liveness check (empty query) before reuse (default 30s)
	ConnectBackoff [2]time.Duration // min/max backoff after failed dials per key (default 100ms..10s)
	Now            func() time.Time
	Logger         *slog.Logger
	// MaxKeys bounds the keys the pool tracks at once (default 100): an
	// Acquire for a new key beyond it fails (class config_invalid). A key
	// with no connection and no waiting client that nobody used for
	// IdleTimeout is forgotten by the janitor (a key unused for Lifetime
	// no longer keeps MinIdle, so that it can be).
	MaxKeys int
	// OnClose, if set, is called once with the state a connection carried
	// (Server.SetState) when the connection closes, for any reason, if the
	// state is not nil. It runs in the background, before the Terminate.
	OnClose func(state any)
}

// Pool hands out server connections; it is safe for concurrent use.
type Pool struct {
	dial Dialer
	o    Options

	mu     sync.Mutex
	keys   map[Key]*keyPool
	gen    uint64
	closed bool
	stop   chan struct{}
	wg     sync.WaitGroup // janitor, background dials and closes
	// ctx bounds the pool's own network steps (dials, checks); Close
	// cancels it so that Close does not wait out a hanging dial.
	ctx    context.Context
	cancel context.CancelFunc
}

// keyPool is one key's state, guarded by Pool.mu.
type keyPool struct {
	key     Key
	idle    []*conn // most recently released last
	active  int
	opening int
	waiters []*waiter // FIFO
	// changed is closed (and replaced) whenever capacity may have appeared,
	// so that the head waiter re-evaluates.
	changed  chan struct{}
	used     uint64 // connections opened since New
	retired  uint64 // closed because of Retire (older generation)
	closed   uint64 // closed for any reason
	failures int    // consecutive failed dials
	nextDial time.Time
	lastErr  error
	defaults map[string]string // ParameterStatus of the last fresh connection
	touched  time.Time         // last Acquire or Release: an unused key is forgotten
	// terminating counts connections released unclean whose backends are
	// being ended (pgterminate): their slots stay taken until the backend
	// is gone, since it may still run a statement and hold its locks.
	terminating     int
	terminated      uint64 // backends ended by pg_terminate_backend
	terminateFailed uint64 // failed attempts (each is retried)
}

type waiter struct {
	ch      chan *conn // a connection handed over by Release
	since   time.Time
	reserve bool // waited ReserveAfter: may use the reserve
}

// conn is one server connection; Server is a handle to it for one Acquire.
type conn struct {
	pg       *pgconn.PgConn
	backend  pgterminate.Backend // PID and backend_start, to end it for sure
	sock     syscall.Conn        // the socket below TLS for socketCheck; nil: none found
	key      Key
	gen      uint64
	created  time.Time
	expires  time.Time
	lastUsed time.Time
	mu       sync.Mutex // guards params and state
	params   map[string]string
	state    any
}

// Server is a server connection checked out of a Pool. Release it once; a
// second Release, even concurrent (a session's two pumps may both end it),
// is a no-op, and after Release PgConn returns nil.
type Server struct {
	c        *conn
	p        *Pool
	released atomic.Bool
}

// New returns a pool; no connection is opened until a key is used.
func New(dial Dialer, o Options) (*Pool, error) {
	if dial == nil {
		return nil, failure.New(failure.ConfigInvalid, "server pool: no dialer").
			WithEvidence("serverpool.New was called with a nil Dialer").
			WithFix("pass a Dialer that opens a connection with pgtls.Connect for the key's database and role")
	}
	if o.Size < 0 || o.MaxKeys < 0 || o.MinIdle < 0 || o.Reserve < 0 || o.ReserveAfter < 0 || o.WaitTimeout < 0 || o.IdleTimeout < 0 ||
		o.Lifetime < 0 || o.CheckAfter < 0 || o.ConnectBackoff[0] < 0 || o.ConnectBackoff[1] < 0 ||
		(o.Jitter < 0 && o.Jitter != NoJitter) || o.Jitter >= 1 {
		return nil, failure.New(failure.ConfigInvalid, "server pool: invalid setting").
			WithEvidence("size=%d max_keys=%d min_idle=%d reserve=%d reserve_after=%s wait_timeout=%s idle_timeout=%s lifetime=%s jitter=%g check_after=%s connect_backoff=%s..%s",
				o.Size, o.MaxKeys, o.MinIdle, o.Reserve, o.ReserveAfter, o.WaitTimeout, o.IdleTimeout, o.Lifetime, o.Jitter, o.CheckAfter, o.ConnectBackoff[0], o.ConnectBackoff[1]).
			WithFix("use zero for the defaults, positive values otherwise, and a jitter below 1 (or -1 for none)")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if o.Size == 0 {
		o.Size = DefaultSize
	}
	if o.MaxKeys == 0 {
		o.MaxKeys = DefaultMaxKeys
	}
	def(&o.ReserveAfter, DefaultReserveAfter)
	def(&o.WaitTimeout, DefaultWaitTimeout)
	def(&o.IdleTimeout, DefaultIdleTimeout)
	def(&o.Lifetime, DefaultLifetime)
	def(&o.CheckAfter, DefaultCheckAfter)
	def(&o.ConnectBackoff[0], DefaultBackoffMin)
	def(&o.ConnectBackoff[1], DefaultBackoffMax)
	if o.ConnectBackoff[1] < o.ConnectBackoff[0] {
		return nil, failure.New(failure.ConfigInvalid, "server pool: connect backoff maximum below its minimum").
			WithEvidence("connect_backoff=%s..%s", o.ConnectBackoff[0], o.ConnectBackoff[1]).
			WithFix("give the minimum first and a maximum at least as large")
	}
	if o.Jitter == 0 {
		o.Jitter = DefaultJitter
	}
	if o.Jitter == NoJitter {
		o.Jitter = 0
	}
	o.MinIdle = min(o.MinIdle, o.Size)
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	p := &Pool{dial: dial, o: o, keys: map[Key]*keyPool{}, stop: make(chan struct{})}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.wg.Add(1)
	go p.janitor()
	return p, nil
}

// Settings are the options in effect, defaults filled in.
func (p *Pool) Settings() Options { return p.o }

// BackoffDelay is the wait before the next dial after n consecutive failed
// dials: min doubled n-1 times, capped at max (0 for n ≤ 0). No jitter:
// the failures of one key are already spread by their clients' arrivals.
func BackoffDelay(b [2]time.Duration, n int) time.Duration {
	if n <= 0 {
		return 0
	}
	d := b[0]
	for i := 1; i < n && d < b[1]; i++ {
		d *= 2
	}
	return min(d, b[1])
}

// keyLocked is the state of a key that has a connection (the key cannot
// have been forgotten); it is recreated defensively.
func (p *Pool) keyLocked(k Key) *keyPool {
	kp := p.keys[k]
	if kp == nil {
		kp = &keyPool{key: k, changed: make(chan struct{}), touched: p.o.Now()}
		p.keys[k] = kp
	}
	return kp
}

// ErrExhausted is in the chain of the errors that say the pool has no
// room for a client now (its wait timeout passed, or MaxKeys keys are in
// use): the client gets "too many connections" (53300), and nothing is
// wrong with the server.
var ErrExhausted = errors.New("server pool exhausted")

// acquireKeyLocked is the key's state for an Acquire: a new key is refused
// beyond MaxKeys.
func (p *Pool) acquireKeyLocked(k Key) (*keyPool, error) {
	kp := p.keys[k]
	if kp == nil {
		if len(p.keys) >= p.o.MaxKeys {
			// Keys holding nothing (no connection of any state, no waiter:
			// say a database that does not exist, whose dial failed) make
			// room first, so that clients naming databases at random
			// cannot lock everyone else out for the idle timeout.
			for ok, other := range p.keys {
				if other.total() == 0 && len(other.waiters) == 0 {
					delete(p.keys, ok)
				}
			}
		}
		if len(p.keys) >= p.o.MaxKeys {
			return nil, failure.Wrap(failure.ConfigInvalid, ErrExhausted, "server pool: too many database/role pairs in use; %s refused", k).CauseInMessage().
				WithEvidence("%d keys (database, role) have connections or were used within the idle timeout %s; the limit is %d", len(p.keys), p.o.IdleTimeout, p.o.MaxKeys).
				WithFix("raise the pool's key limit (MaxKeys), or restrict the databases and roles clients may use")
		}
		kp = p.keyLocked(k)
	}
	kp.touched = p.o.Now()
	return kp, nil
}

func (kp *keyPool) broadcast() {
	close(kp.changed)
	kp.changed = make(chan struct{})
}

func (kp *keyPool) total() int { return len(kp.idle) + kp.active + kp.opening + kp.terminating }

func (kp *keyPool) removeWaiter(w *waiter) {
	for i, x := range kp.waiters {
		if x == w {
			kp.waiters = append(kp.waiters[:i], kp.waiters[i+1:]...)
			if i == 0 {
				kp.broadcast() // a new head must look
			}
			return
		}
	}
}

// Acquire returns a server connection for key: an idle one (checked with
// an empty query when it sat idle longer than CheckAfter), or a new one
// from the Dialer while the key has fewer than Size connections (Size +
// Reserve once this client has waited ReserveAfter). Clients are served in
// arrival order. It fails with class timeout after WaitTimeout or when ctx
// ends, with the dial's error when its own dial fails, and at once with the
// last dial's error while the key is backing off and has no connection.
func (p *Pool) Acquire(ctx context.Context, key Key) (*Server, error) {
	if err := ctx.Err(); err != nil {
		return nil, p.waitEnded(key, err, 0)
	}
	// The wait's timer starts only when the Acquire has to wait or dial:
	// most take an idle connection at once.
	began := time.Now()
	var timeout *time.Timer
	deadline := func() <-chan time.Time {
		if timeout == nil {
			timeout = time.NewTimer(p.o.WaitTimeout - time.Since(began))
		}
		return timeout.C
	}
	defer func() {
		if timeout != nil {
			timeout.Stop()
		}
	}()
	start := p.o.Now()
	var w *waiter
	var reserveC, backoffC <-chan time.Time
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, errClosed()
		}
		kp, err := p.acquireKeyLocked(key)
		if err != nil {
			p.mu.Unlock()
			return nil, err
		}
		if w != nil {
			select {
			case c := <-w.ch: // handed over while we looked elsewhere
				p.mu.Unlock()
				return &Server{c: c, p: p}, nil
			default:
			}
		}
		head := (w == nil && len(kp.waiters) == 0) || (w != nil && kp.waiters[0] == w)
		if head {
			if c := p.popIdleLocked(kp); c != nil {
				// w stays at the head during the check, so that a failed
				// check does not cost the client its place.
				kp.active++
				p.mu.Unlock()
				s := p.ready(c)
				if s == nil {
					continue
				}
				if w != nil {
					p.mu.Lock()
					kp.removeWaiter(w)
					select {
					case extra := <-w.ch: // a Release handed one over meanwhile: pass it on
						kp.active--
						p.putLocked(kp, extra)
					default:
					}
					p.mu.Unlock()
				}
				return s, nil
			}
			limit := p.o.Size
			if w != nil && w.reserve {
				limit += p.o.Reserve
			}
			now := p.o.Now()
			backingOff := kp.failures > 0 && now.Before(kp.nextDial)
			if kp.total() < limit && !backingOff {
				if w != nil {
					kp.removeWaiter(w)
				}
				kp.opening++
				gen := p.gen
				p.wg.Add(1) // the dial goroutine; not closed, so Close has not begun waiting
				p.mu.Unlock()
				return p.open(ctx, kp, gen, deadline(), start)
			}
			if backingOff && kp.total() == 0 {
				// PgBouncer's fast fail: no connection will come back to
				// wait for, so the client learns the cause now.
				if w != nil {
					kp.removeWaiter(w)
				}
				err := p.backoffError(kp, now)
				p.mu.Unlock()
				return nil, err
			}
			if backingOff && backoffC == nil {
				backoffC = time.After(kp.nextDial.Sub(now))
			}
		}
		if w == nil {
			w = &waiter{ch: make(chan *conn, 1), since: p.o.Now()}
			kp.waiters = append(kp.waiters, w)
			if p.o.Reserve > 0 {
				reserveC = time.After(p.o.ReserveAfter)
			}
		}
		changed := kp.changed
		p.mu.Unlock()

		select {
		case c := <-w.ch:
			return &Server{c: c, p: p}, nil
		case <-changed:
		case <-backoffC:
			backoffC = nil
		case <-reserveC:
			reserveC = nil
			p.mu.Lock()
			w.reserve = true
			p.mu.Unlock()
		case <-deadline():
			if s := p.giveUp(kp, w); s != nil {
				return s, nil
			}
			return nil, p.waitTimeout(kp, p.o.Now().Sub(start))
		case <-ctx.Done():
			if s := p.giveUp(kp, w); s != nil {
				return s, nil
			}
			return nil, p.waitEnded(key, ctx.Err(), p.o.Now().Sub(start))
		}
	}
}

// giveUp removes w from the queue; a connection handed over meanwhile is
// returned (the client takes it rather than lose it).
func (p *Pool) giveUp(kp *keyPool, w *waiter) *Server {
	p.mu.Lock()
	defer p.mu.Unlock()
	kp.removeWaiter(w)
	select {
	case c := <-w.ch:
		return &Server{c: c, p: p}
	default:
		return nil
	}
}

func (p *Pool) popIdleLocked(kp *keyPool) *conn {
	n := len(kp.idle)
	if n == 0 {
		return nil
	}
	c := kp.idle[n-1]
	kp.idle = kp.idle[:n-1]
	return c
}

// ready checks a connection taken from idle and returns its handle, or
// closes it (freeing its slot) and returns nil. The Acquire goes on with
// another connection: a backend that died while idle never fails a client.
// The check runs under the pool's context, not the client's: a client
// giving up mid-check must not make a good connection look dead.
func (p *Pool) ready(c *conn) *Server {
	now := p.o.Now()
	p.mu.Lock()
	gen := p.gen
	p.mu.Unlock()
	switch {
	case c.gen != gen:
		p.drop(c, "retired", true)
		return nil
	case !now.Before(c.expires):
		p.drop(c, "lifetime", true)
		return nil
	case now.Sub(c.lastUsed) >= p.o.IdleTimeout:
		p.drop(c, "idle timeout", true)
		return nil
	case c.pg.IsClosed():
		p.drop(c, "closed", true)
		return nil
	}
	// A backend that died while idle (pg_terminate_backend, a restart)
	// has sent a FATAL and closed the socket: a peek sees it at no cost,
	// also within CheckAfter, where no query checks the connection.
	if err := socketCheck(c.pg, c.sock); err != nil {
		p.o.Logger.Info("server connection failed its socket check; replaced", "key", c.key.String(), "pid", c.pg.PID(), "error", err)
		p.drop(c, "socket check failed", true)
		return nil
	}
	if now.Sub(c.lastUsed) >= p.o.CheckAfter {
		cctx, cancel := context.WithTimeout(p.ctx, checkTimeout)
		err := c.pg.Ping(cctx)
		cancel()
		if err != nil || c.pg.TxStatus() != 'I' {
			p.o.Logger.Info("server connection failed its liveness check; replaced", "key", c.key.String(), "pid", c.pg.PID(), "error", err)
			p.drop(c, "liveness check failed", true)
			return nil
		}
	}
	return &Server{c: c, p: p}
}

var errUnexpectedData = errors.New("the server sent data while the connection was idle")

// doneContext is a context that is already cancelled.
var doneContext = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// socketCheck tells whether an idle connection is dead or out of sync
// without a round trip and without consuming a byte: pgconn must hold no
// buffered input (in sync), and the socket below TLS must have nothing
// pending.
func socketCheck(pg *pgconn.PgConn, sock syscall.Conn) error {
	// SyncConn costs nothing when pgconn buffers no input (it pings
	// otherwise, and a ping's failure means the connection is unusable).
	// Asked first with a context already done, it answers at once either
	// way (pgconn sends nothing under a done context): the timer of a
	// real deadline is paid only when a ping is needed.
	if pg.SyncConn(doneContext) != nil {
		ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
		defer cancel()
		if err := pg.SyncConn(ctx); err != nil {
			return err
		}
	}
	if sock != nil {
		return peekSocket(sock)
	}
	return readCheck(pg.Conn())
}

// socketOf finds the socket below TLS and wrappers: NetConn() (tls.Conn),
// or an embedded exported net.Conn field (pgtls's first-byte recorder);
// nil when there is none.
func socketOf(nc net.Conn) syscall.Conn {
	for range 8 {
		if sc, ok := nc.(syscall.Conn); ok {
			return sc
		}
		if u, ok := nc.(interface{ NetConn() net.Conn }); ok {
			nc = u.NetConn()
			continue
		}
		v := reflect.ValueOf(nc)
		if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
			return nil
		}
		f := v.Elem().FieldByName("Conn")
		if !f.IsValid() || !f.CanInterface() {
			return nil
		}
		inner, ok := f.Interface().(net.Conn)
		if !ok || inner == nil {
			return nil
		}
		nc = inner
	}
	return nil
}

// readCheck is the fallback without a socket to peek at: a 1-byte read
// with a 1 ms deadline (a deadline already past would not read at all).
// A timeout means alive; a byte or EOF means dead or out of sync, and the
// connection is closed, so the byte is not needed. The deadline is reset.
func readCheck(nc net.Conn) error {
	if err := nc.SetReadDeadline(time.Now().Add(time.Millisecond)); err != nil {
		return err
	}
	var b [1]byte
	n, err := nc.Read(b[:])
	if rerr := nc.SetReadDeadline(time.Time{}); rerr != nil {
		return rerr
	}
	var ne net.Error
	switch {
	case n > 0:
		return errUnexpectedData
	case errors.As(err, &ne) && ne.Timeout():
		return nil
	case err == nil:
		return io.ErrNoProgress
	default:
		return err
	}
}

// open runs the Dialer for a slot already counted in kp.opening (and in
// p.wg). The dial does not belong to the client: it is bounded by
// WaitTimeout alone, and when the client stops waiting (its ctx, its
// WaitTimeout) the connection still opens and goes to the next waiter or
// to idle; a failure counts for the key's backoff either way, since no
// client's deadline cut it short.
func (p *Pool) open(ctx context.Context, kp *keyPool, gen uint64, timeout <-chan time.Time, start time.Time) (*Server, error) {
	type result struct {
		c   *conn
		err error
	}
	res := make(chan result, 1)
	// hand settles who takes the result: once delivering is set the client
	// will receive it; once abandoned is set, opened gives it to the pool.
	var hand sync.Mutex
	abandoned, delivering := false, false
	go func() {
		defer p.wg.Done()
		dctx, cancel := context.WithTimeout(p.ctx, p.o.WaitTimeout)
		defer cancel()
		pg, b, err := p.dialIdentify(dctx, kp.key)
		hand.Lock()
		wanted := !abandoned
		delivering = wanted
		hand.Unlock()
		c, err := p.opened(kp, gen, pg, b, err, wanted)
		if wanted {
			res <- result{c, err}
		}
	}()
	var ended error
	select {
	case r := <-res:
		if r.err != nil {
			return nil, r.err
		}
		return &Server{c: r.c, p: p}, nil
	case <-timeout:
	case <-ctx.Done():
		ended = ctx.Err()
	}
	hand.Lock()
	if delivering { // finished just now: the client takes it
		hand.Unlock()
		r := <-res
		if r.err != nil {
			return nil, r.err
		}
		return &Server{c: r.c, p: p}, nil
	}
	abandoned = true
	hand.Unlock()
	if ended != nil {
		return nil, p.waitEnded(kp.key, ended, p.o.Now().Sub(start))
	}
	return nil, p.waitTimeout(kp, p.o.Now().Sub(start))
}

// dialIdentify runs the Dialer and reads the new backend's PID and
// backend_start: a connection the pool could not end for sure (Release
// with clean=false) is refused like a failed dial.
func (p *Pool) dialIdentify(ctx context.Context, key Key) (*pgconn.PgConn, pgterminate.Backend, error) {
	pg, err := p.dial(ctx, key)
	if err != nil || pg == nil {
		return pg, pgterminate.Backend{}, err
	}
	b, err := pgterminate.Identify(ctx, pg)
	if err != nil {
		cctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		_ = pg.Close(cctx)
		cancel()
		return nil, b, err
	}
	return pg, b, nil
}

// opened accounts for a finished dial. active says whether the caller
// takes the connection (Acquire) or it goes to idle (background dial).
func (p *Pool) opened(kp *keyPool, gen uint64, pg *pgconn.PgConn, b pgterminate.Backend, err error, active bool) (*conn, error) {
	if err == nil && pg == nil {
		err = failure.New(failure.ProtocolError, "server pool: the dialer returned no connection").
			WithEvidence("Dialer for %s returned nil and no error", kp.key).
			WithFix("return a connection or an error from the Dialer")
	}
	now := p.o.Now()
	p.mu.Lock()
	kp.opening--
	if err != nil && p.closed {
		// Close cancelled the dial: not the server's failure.
		kp.broadcast()
		p.mu.Unlock()
		return nil, errClosed()
	}
	if err != nil {
		kp.failures++
		kp.nextDial = now.Add(BackoffDelay(p.o.ConnectBackoff, kp.failures))
		kp.lastErr = err
		kp.broadcast()
		n, next := kp.failures, kp.nextDial.Sub(now)
		p.mu.Unlock()
		p.o.Logger.Warn("server connection failed", "key", kp.key.String(), "consecutive_failures", n, "next_attempt_in", next, "error", err)
		if _, ok := failure.As(err); !ok {
			err = failure.Wrap(failure.ConnectionRefused, err, "could not open a server connection for %s", kp.key).
				WithEvidence("the pool's Dialer failed").WithFix("check that the server is up and accepts the pool's role")
		}
		return nil, err
	}
	kp.failures = 0
	kp.lastErr = nil
	kp.used++
	c := &conn{pg: pg, backend: b, sock: socketOf(pg.Conn()), key: kp.key, gen: gen, created: now, lastUsed: now, expires: now.Add(p.lifetime()), params: reportedParams(pg)}
	kp.defaults = reportedParams(pg)
	if p.closed {
		kp.closed++
		p.mu.Unlock()
		p.closeAsync(c)
		return nil, errClosed()
	}
	if active {
		kp.active++
		p.mu.Unlock()
		return c, nil
	}
	p.putLocked(kp, c)
	p.mu.Unlock()
	return c, nil
}

// lifetime is Lifetime spread uniformly over ±Jitter, so that connections
// opened together (a burst, a Retire) do not all retire together.
func (p *Pool) lifetime() time.Duration {
	if p.o.Jitter == 0 {
		return p.o.Lifetime
	}
	f := 1 + p.o.Jitter*(2*rand.Float64()-1)
	return time.Duration(float64(p.o.Lifetime) * f)
}

// putLocked gives an idle connection to the head waiter or keeps it idle.
func (p *Pool) putLocked(kp *keyPool, c *conn) {
	if len(kp.waiters) > 0 {
		w := kp.waiters[0]
		kp.waiters = kp.waiters[1:]
		kp.active++
		w.ch <- c
		kp.broadcast()
		return
	}
	kp.idle = append(kp.idle, c)
}

// Release gives the connection back. clean=false (broken, mid-transaction,
// protocol error) closes it; so does a clean one that pgconn sees closed,
// busy or in a transaction, one of an older generation (Retire), past its
// lifetime, above Size (a reserve connection nobody waits for), or
// released after Close. A reusable one goes to the longest waiter first.
func (s *Server) Release(clean bool) {
	// CAS: of two concurrent Releases exactly one gives the connection back.
	if s == nil || !s.released.CompareAndSwap(false, true) {
		return
	}
	p, c := s.p, s.c
	now := p.o.Now()
	pg := c.pg
	ok := clean && !pg.IsClosed() && !pg.IsBusy() && pg.TxStatus() == 'I'
	p.mu.Lock()
	kp := p.keyLocked(c.key)
	kp.active--
	kp.touched = now
	reason := ""
	switch {
	case !ok:
		reason = "not clean"
	case p.closed:
		reason = "pool closed"
	case c.gen != p.gen:
		reason = "retired"
	case !now.Before(c.expires):
		reason = "lifetime"
	case kp.total() >= p.o.Size && len(kp.waiters) == 0:
		reason = "above pool size"
	}
	if reason == "" {
		c.lastUsed = now
		p.putLocked(kp, c)
		p.mu.Unlock()
		return
	}
	if !ok {
		// The backend may still run a statement (one that catches
		// query_canceled outlives a CancelRequest and the closed socket),
		// holding its locks: its slot stays taken until it is gone.
		kp.terminating++
		kp.closed++
		track := !p.closed
		if track {
			p.wg.Add(1)
		}
		p.mu.Unlock()
		p.o.Logger.Debug("server connection closed", "key", c.key.String(), "pid", c.pg.PID(), "reason", reason)
		go p.terminate(kp, c, track)
		return
	}
	p.mu.Unlock()
	p.drop(c, reason, false)
}

// terminate closes a connection released unclean and ends its backend with
// pg_terminate_backend (matched by PID and backend_start) from an idle
// connection of the same key, or else from a side connection of the
// Dialer (the same role may end its own backends), retrying after
// pgterminate.RetryDelay until the backend is gone; then its slot is
// freed. Once the pool is closed the next attempt is the last.
func (p *Pool) terminate(kp *keyPool, c *conn, tracked bool) {
	if tracked {
		defer p.wg.Done()
	}
	p.onClose(c)
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	_ = c.pg.Close(ctx) // the socket goes; a busy backend does not notice
	cancel()
	signalled := false // an earlier attempt sent the signal: gone later is ended by us
	for attempt := 1; ; attempt++ {
		ended, err := p.terminateOnce(kp, c.backend)
		signalled = signalled || pgterminate.Signalled(err)
		p.mu.Lock()
		if err == nil {
			if ended || signalled {
				kp.terminated++
			}
			kp.terminating--
			kp.broadcast()
			p.mu.Unlock()
			p.o.Logger.Debug("server backend gone", "key", c.key.String(), "pid", c.backend.PID, "terminated", ended || signalled)
			return
		}
		kp.terminateFailed++
		last := p.closed
		if last {
			kp.terminating-- // the pool is closed: nobody needs the slot
			kp.broadcast()
		}
		p.mu.Unlock()
		p.o.Logger.Warn("could not end the backend of a server connection released unclean; retrying", "key", c.key.String(),
			"pid", c.backend.PID, "attempt", attempt, "last", last, "error", err)
		if last {
			return
		}
		t := time.NewTimer(pgterminate.RetryDelay(attempt))
		select {
		case <-t.C:
		case <-p.stop:
			t.Stop()
		}
	}
}

// terminateOnce makes one attempt, from an idle connection of the key if
// there is one (no login needed: the role may be at its connection limit),
// else from a new side connection of the Dialer.
func (p *Pool) terminateOnce(kp *keyPool, b pgterminate.Backend) (bool, error) {
	// Not the pool's context: Close cancels that, and the attempt after
	// Close is the last chance to end the backend.
	ctx, cancel := context.WithTimeout(context.Background(), min(p.o.WaitTimeout, 10*time.Second)+pgterminate.Timeout)
	defer cancel()
	p.mu.Lock()
	side := p.popIdleLocked(kp)
	if side != nil {
		kp.active++
	}
	p.mu.Unlock()
	if side != nil {
		ended, err := pgterminate.On(ctx, side.pg, b)
		// Back to idle or to a waiter if pgconn sees it intact: a failed
		// termination (the backend did not exit in time) is not its fault.
		(&Server{c: side, p: p}).Release(true)
		return ended, err
	}
	pg, err := p.dial(ctx, kp.key)
	if err != nil {
		return false, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		_ = pg.Close(cctx)
		cancel()
	}()
	return pgterminate.On(ctx, pg, b)
}

// drop closes a connection that holds no idle place and counts it; its slot
// is free for a waiter. fromIdle: it was counted active by the Acquire that
// took it from idle.
func (p *Pool) drop(c *conn, reason string, fromIdle bool) {
	p.mu.Lock()
	kp := p.keyLocked(c.key)
	if fromIdle {
		kp.active--
	}
	kp.closed++
	if reason == "retired" {
		kp.retired++
	}
	kp.broadcast()
	p.mu.Unlock()
	p.o.Logger.Debug("server connection closed", "key", c.key.String(), "pid", c.pg.PID(), "reason", reason)
	p.closeAsync(c)
}

// closeAsync sends Terminate without holding up the caller (Release is
// called on the proxy's session path). Connections released unclean go
// through terminate instead. Closes started before Close are waited for by it; later ones (a Release
// after Close) run on their own, since a WaitGroup may not grow from zero
// while Close waits.
func (p *Pool) closeAsync(c *conn) {
	p.mu.Lock()
	track := !p.closed
	if track {
		p.wg.Add(1)
	}
	p.mu.Unlock()
	go func() {
		if track {
			defer p.wg.Done()
		}
		p.onClose(c)
		ctx, stop := context.WithTimeout(context.Background(), closeTimeout)
		defer stop()
		_ = c.pg.Close(ctx) // gone either way
	}()
}

// PgConn is the server connection; nil after Release (the connection may
// already serve another client). Do not close it (Release(false) does).
func (s *Server) PgConn() *pgconn.PgConn {
	if s.released.Load() {
		return nil
	}
	return s.c.pg
}

// Key is the pool the connection belongs to.
func (s *Server) Key() Key { return s.c.key }

// Generation is the pool generation the connection was opened in.
func (s *Server) Generation() uint64 { return s.c.gen }

// Expires is when the connection retires (its lifetime with jitter).
func (s *Server) Expires() time.Time { return s.c.expires }

// Params are the ParameterStatus values the server last reported: those of
// the startup (the parameters PostgreSQL 15–18 report), then what the
// caller recorded with SetParam. A copy.
func (s *Server) Params() map[string]string {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	m := make(map[string]string, len(s.c.params))
	for k, v := range s.c.params {
		m[k] = v
	}
	return m
}

// SetParam records a ParameterStatus the server sent (the caller relays
// the protocol, the pool does not see it).
func (s *Server) SetParam(name, value string) {
	s.c.mu.Lock()
	s.c.params[name] = value
	s.c.mu.Unlock()
}

// WithParams calls f with the connection's reported parameters, which f
// must neither change nor keep: Params without the copy.
func (s *Server) WithParams(f func(map[string]string)) {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	f(s.c.params)
}

// State is what the caller stored on the server connection with SetState
// (a prepared-statement cache, a hazard watch): it stays with the
// connection across Release and Acquire and is dropped when the connection
// closes (Options.OnClose sees it then). Nil until set.
func (s *Server) State() any {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.c.state
}

// SetState stores v on the server connection (see State).
func (s *Server) SetState(v any) {
	s.c.mu.Lock()
	s.c.state = v
	s.c.mu.Unlock()
}

// onClose hands a closing connection's state to Options.OnClose, once.
func (p *Pool) onClose(c *conn) {
	c.mu.Lock()
	st := c.state
	c.state = nil
	c.mu.Unlock()
	if st != nil && p.o.OnClose != nil {
		p.o.OnClose(st)
	}
}

// reported are the parameters PostgreSQL 15–18 send as ParameterStatus
// (GUC_REPORT); pgconn exposes them one by one only.
var reported = []string{"application_name", "client_encoding", "DateStyle", "default_transaction_read_only",
	"in_hot_standby", "integer_datetimes", "IntervalStyle", "is_superuser", "scram_iterations", "search_path",
	"server_encoding", "server_version", "session_authorization", "standard_conforming_strings", "TimeZone"}

func reportedParams(pg *pgconn.PgConn) map[string]string {
	m := map[string]string{}
	for _, k := range reported {
		if v := pg.ParameterStatus(k); v != "" || k == "application_name" { // reported even when empty
			m[k] = v
		}
	}
	return m
}

// Defaults are the ParameterStatus values a fresh server connection of key
// reported at startup (refreshed by every new connection; nil before the
// first, and again once an unused key is forgotten): the role's and
// database's defaults, which a session's parameter replay starts from.
// They are the defaults only if the Dialer sends no session parameters
// (RuntimeParams such as DateStyle or application_name) in its startup
// packet. A copy.
func (p *Pool) Defaults(key Key) map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	kp := p.keys[key]
	if kp == nil || kp.defaults == nil {
		return nil
	}
	m := make(map[string]string, len(kp.defaults))
	for k, v := range kp.defaults {
		m[k] = v
	}
	return m
}

// Retire starts a new generation (after a client-certificate rotation):
// idle connections close at once, those in use at their next Release (after
// the current transaction), and connections being dialed now are of the
// old generation too. New connections present the Dialer's current
// certificate.
func (p *Pool) Retire() {
	p.mu.Lock()
	p.gen++
	var idle []*conn
	for _, kp := range p.keys {
		for _, c := range kp.idle {
			kp.closed++
			kp.retired++
			idle = append(idle, c)
		}
		kp.idle = nil
		kp.broadcast()
	}
	gen := p.gen
	p.mu.Unlock()
	p.o.Logger.Info("server connections retired", "generation", gen, "idle_closed", len(idle))
	for _, c := range idle {
		p.closeAsync(c)
	}
}

// Generation is the current generation (Retire bumps it).
func (p *Pool) Generation() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.gen
}

// Maintain runs one pass of what the background janitor does every second:
// idle connections past IdleTimeout (above MinIdle), past their lifetime
// or of an older generation are closed, and keys that were used are
// refilled to MinIdle idle connections (dialed in the background, within
// Size, not while backing off).
func (p *Pool) Maintain() {
	now := p.o.Now()
	var closing []*conn
	type fill struct {
		kp  *keyPool
		gen uint64
	}
	var fills []fill
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	for k, kp := range p.keys {
		// A key nobody used for Lifetime keeps no MinIdle (by then each of
		// those connections was replaced with no client using any; cf.
		// PgBouncer's autodb_idle_timeout, 1 h): its idle connections age
		// out, and a key unused for IdleTimeout with no connection and no
		// waiting client is forgotten, so MaxKeys is not used up for good.
		minIdle := p.o.MinIdle
		if now.Sub(kp.touched) >= p.o.Lifetime {
			minIdle = 0
		}
		unused := now.Sub(kp.touched) >= p.o.IdleTimeout
		keep := kp.idle[:0]
		for i, c := range kp.idle {
			// Oldest first: those are the ones past IdleTimeout.
			left := len(kp.idle) - i // this and the ones after it
			switch {
			case c.gen != p.gen:
				kp.retired++
			case !now.Before(c.expires):
			case now.Sub(c.lastUsed) >= p.o.IdleTimeout && len(keep)+left > minIdle:
			default:
				keep = append(keep, c)
				continue
			}
			kp.closed++
			closing = append(closing, c)
		}
		kp.idle = keep
		if len(closing) > 0 {
			kp.broadcast()
		}
		backingOff := kp.failures > 0 && now.Before(kp.nextDial)
		for !backingOff && len(kp.idle)+kp.opening < minIdle && kp.total() < p.o.Size && kp.used > 0 {
			kp.opening++
			fills = append(fills, fill{kp, p.gen})
		}
		if unused && kp.total() == 0 && len(kp.waiters) == 0 {
			delete(p.keys, k)
		}
	}
	for _, f := range fills {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			ctx, cancel := context.WithTimeout(p.ctx, p.o.WaitTimeout)
			defer cancel()
			pg, b, err := p.dialIdentify(ctx, f.kp.key)
			_, _ = p.opened(f.kp, f.gen, pg, b, err, false)
		}()
	}
	p.mu.Unlock()
	for _, c := range closing {
		p.closeAsync(c)
	}
}

func (p *Pool) janitor() {
	defer p.wg.Done()
	t := time.NewTicker(janitorEvery)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.Maintain()
		}
	}
}

// Close refuses further Acquires (waiting ones fail), closes the idle
// connections and waits for background dials and closes. Connections in
// use are closed at their Release. Close is idempotent.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	close(p.stop)
	p.cancel() // dials in flight end now
	var idle []*conn
	for _, kp := range p.keys {
		for _, c := range kp.idle {
			kp.closed++
			idle = append(idle, c)
		}
		kp.idle = nil
		kp.broadcast()
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range idle {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.onClose(c)
			ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
			defer cancel()
			_ = c.pg.Close(ctx)
		}()
	}
	wg.Wait()
	p.wg.Wait()
}

// KeyStats describe one key's pool, like a row of PgBouncer's SHOW POOLS.
type KeyStats struct {
	Key      Key    `json:"-"`
	Database string `json:"database"`
	Role     string `json:"role"`
	Waiting  int    `json:"clients_waiting"`
	Active   int    `json:"servers_active"`
	Idle     int    `json:"servers_idle"`
	Opening  int    `json:"servers_opening"`
	// Terminating counts connections released unclean whose backends are
	// being ended: they still take a slot. Terminated counts backends
	// ended by pg_terminate_backend (also those that exited only after an
	// attempt timed out); TerminateFailed failed attempts.
	Terminating     int           `json:"servers_terminating"`
	Terminated      uint64        `json:"servers_terminated"`
	TerminateFailed uint64        `json:"terminate_failed"`
	Used            uint64        `json:"servers_used"`   // opened since New
	Closed          uint64        `json:"servers_closed"` // closed since New, for any reason
	Retired         uint64        `json:"servers_retired"`
	LongestWait     time.Duration `json:"-"` // of the clients waiting now
	// LongestWaitSeconds is LongestWait for JSON (PgBouncer's maxwait).
	LongestWaitSeconds float64 `json:"longest_wait_seconds"`
	Generation         uint64  `json:"generation"`
	// ConsecutiveFailures counts failed dials since the last success;
	// NextDial is when dialing resumes; LastError is the last failure's
	// class and message.
	ConsecutiveFailures int       `json:"consecutive_failures"`
	NextDial            time.Time `json:"next_dial,omitzero"`
	LastError           string    `json:"last_error,omitempty"`
}

// Stats returns one entry per key, sorted by database then role.
func (p *Pool) Stats() []KeyStats {
	now := p.o.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]KeyStats, 0, len(p.keys))
	for _, kp := range p.keys {
		st := KeyStats{Key: kp.key, Database: kp.key.Database, Role: kp.key.Role, Waiting: len(kp.waiters), Active: kp.active, Idle: len(kp.idle), Opening: kp.opening,
			Terminating: kp.terminating, Terminated: kp.terminated, TerminateFailed: kp.terminateFailed,
			Used: kp.used, Closed: kp.closed, Retired: kp.retired, Generation: p.gen, ConsecutiveFailures: kp.failures}
		if len(kp.waiters) > 0 {
			st.LongestWait = now.Sub(kp.waiters[0].since)
			st.LongestWaitSeconds = st.LongestWait.Seconds()
		}
		if kp.failures > 0 {
			st.NextDial = kp.nextDial
			if fe, ok := failure.As(kp.lastErr); ok {
				st.LastError = string(fe.Class) + ": " + fe.Message
			} else if kp.lastErr != nil {
				st.LastError = kp.lastErr.Error()
			}
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Key.Database != out[j].Key.Database {
			return out[i].Key.Database < out[j].Key.Database
		}
		return out[i].Key.Role < out[j].Key.Role
	})
	return out
}

func errClosed() *failure.Error {
	return failure.New(failure.ConfigInvalid, "the server pool is closed").
		WithEvidence("Acquire was called after Close").
		WithFix("do not use a pool after closing it")
}

func (p *Pool) waitTimeout(kp *keyPool, waited time.Duration) *failure.Error {
	p.mu.Lock()
	active, idle, opening, waiting := kp.active, len(kp.idle), kp.opening, len(kp.waiters)
	p.mu.Unlock()
	return failure.Wrap(failure.Timeout, ErrExhausted, "no server connection for %s became free within %s", kp.key, p.o.WaitTimeout).CauseInMessage().
		WithEvidence("pool size %d (+%d reserve): %d active, %d idle, %d opening, %d other clients waiting; this client waited %s",
			p.o.Size, p.o.Reserve, active, idle, opening, waiting, waited).
		WithFix("retry later, shorten the transactions that hold server connections, or raise the pool size or reserve")
}

func (p *Pool) waitEnded(key Key, err error, waited time.Duration) *failure.Error {
	return failure.Wrap(failure.Timeout, err, "gave up waiting for a server connection for %s", key).
		WithEvidence("the client's context ended after %s of waiting", waited).
		WithFix("retry with a longer deadline, or raise the pool size")
}

func (p *Pool) backoffError(kp *keyPool, now time.Time) *failure.Error {
	class := failure.ClassOf(kp.lastErr)
	if class == "" {
		class = failure.ConnectionRefused
	}
	return failure.Wrap(class, kp.lastErr, "server connections for %s are failing; the next attempt is in %s", kp.key, kp.nextDial.Sub(now).Round(time.Millisecond)).
		WithEvidence("%d consecutive dials failed and the key has no open connection", kp.failures).
		WithFix("see the last error: fix the server or the pool's credentials; the pool retries by itself")
}
