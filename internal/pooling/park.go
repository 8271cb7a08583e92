package pooling

import (
	"context"
	"errors"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pgtrust/pgtrust/internal/parking"
	"github.com/pgtrust/pgtrust/internal/relay"
)

// DefaultIdleAfter is how long a transaction-mode client waits between
// transactions before its goroutine is given back (Parker).
const DefaultIdleAfter = time.Second

// Parker gives back the goroutine of a transaction-mode client that has
// been idle between transactions for a while: the client's socket waits in
// a parking.Lot, and its next message starts a goroutine again. An idle
// pooled client then costs its socket and its session state, not a
// goroutine stack. A client busy with transactions is never parked (a
// park costs three system calls and a goroutine start); a sweep every
// IdleAfter interrupts the reads of clients idle since the previous sweep.
//
// Only plain sockets are parked (a TLS connection buffers records the Lot
// cannot see), only in transaction mode, and only between transactions.
type Parker struct {
	lot   *parking.Lot
	every time.Duration

	mu       sync.Mutex
	sessions map[*Session]struct{}
	tick     atomic.Int64
	stop     chan struct{}
	stopped  chan struct{}

	// Returning memory to the system: parks counts parks; the sweeper
	// calls debug.FreeOSMemory when releaseParks more happened since the
	// last call and the burst is over (no park since the previous sweep),
	// or after releaseEvery while parks go on.
	parks        atomic.Int64
	releasedAt   int64
	prevSweep    int64 // parks at the previous sweep
	lastRelease  time.Time
	releaseParks int64
	releaseEvery time.Duration
}

// NewParker starts a Parker sweeping every idleAfter (DefaultIdleAfter
// when ≤ 0). Where parking is not available it returns
// parking.ErrUnsupported, and sessions keep their goroutines.
func NewParker(idleAfter time.Duration) (*Parker, error) {
	if idleAfter <= 0 {
		idleAfter = DefaultIdleAfter
	}
	lot, err := parking.New()
	if err != nil {
		return nil, err
	}
	p := &Parker{lot: lot, every: idleAfter, sessions: map[*Session]struct{}{},
		stop: make(chan struct{}), stopped: make(chan struct{}), releaseParks: 256, releaseEvery: 10 * time.Second}
	p.tick.Store(1)
	go p.sweep()
	return p, nil
}

// Parked is the number of clients parked now.
func (p *Parker) Parked() int { return p.lot.Len() }

// Close stops the sweeps and wakes every parked client (whose session
// then goes on as usual).
func (p *Parker) Close() error {
	select {
	case <-p.stop:
		return nil
	default:
	}
	close(p.stop)
	<-p.stopped
	return p.lot.Close()
}

func (p *Parker) sweep() {
	defer close(p.stopped)
	t := time.NewTicker(p.every)
	defer t.Stop()
	var due []*Session
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		now := p.tick.Add(1)
		due = due[:0]
		p.mu.Lock()
		for s := range p.sessions {
			if since := s.idleTick.Load(); since != 0 && since < now-1 && !s.interrupted.Load() {
				due = append(due, s)
			}
		}
		p.mu.Unlock()
		for _, s := range due {
			s.interrupt()
		}
		clear(due)
		p.release()
	}
}

// release returns freed memory to the system after a burst of parks: the
// stacks and buffers of the goroutines that parked clients gave back are
// free in Go's heap, but the runtime hands them back to the system only
// slowly, so the process would keep the memory of clients that hold none.
// It costs a garbage collection: once per burst of parks, at most every
// releaseEvery while they go on.
func (p *Parker) release() {
	n := p.parks.Load()
	settled := n == p.prevSweep
	p.prevSweep = n
	if n-p.releasedAt < p.releaseParks || !settled && time.Since(p.lastRelease) < p.releaseEvery {
		return
	}
	p.releasedAt, p.lastRelease = n, time.Now()
	debug.FreeOSMemory()
}

func (p *Parker) add(s *Session) {
	p.mu.Lock()
	p.sessions[s] = struct{}{}
	p.mu.Unlock()
}

func (p *Parker) remove(s *Session) {
	p.mu.Lock()
	delete(p.sessions, s)
	p.mu.Unlock()
}

// errPark ends a client read that the Parker interrupted while the session
// waited, at a message boundary, for the client's next message.
var errPark = errors.New("pooling: parked")

// parkableConn is a client connection a Parker can watch and interrupt: a
// plain socket.
type parkableConn interface {
	syscall.Conn
	SetReadDeadline(time.Time) error
}

// parkState is a session's part in parking.
type parkState struct {
	conn        parkableConn
	idleTick    atomic.Int64 // the Parker's tick when the session began waiting at a boundary; 0 when not
	interrupted atomic.Bool  // the Parker set a past read deadline to stop the wait
	closing     atomic.Bool  // the session is being closed from outside: never park again

	mu      sync.Mutex // orders Park's ticket (and a loop's hand-over) with the wake that clears it
	ticket  parking.Ticket
	relayed *relay.Session // the event loop's session (serveOnLoop); nil on goroutines

	ctx  context.Context
	done func(reason string)
}

// interrupt stops the session's wait for its client; the read returns
// errPark (or, if a message arrived meanwhile, goes on).
func (s *Session) interrupt() {
	s.interrupted.Store(true)
	_ = s.conn.SetReadDeadline(time.Unix(1, 0))
}

// clientReader is the session's reader of a parkable client socket: it
// turns the Parker's interruption into errPark at a message boundary, and
// into nothing anywhere else.
type clientReader struct {
	s *Session
}

func (r clientReader) Read(p []byte) (int, error) {
	for {
		n, err := r.s.client.Read(p)
		if err == nil || !r.s.interrupted.Load() || !errors.Is(err, os.ErrDeadlineExceeded) {
			return n, err
		}
		// Deadline first: the Parker interrupts again only once
		// interrupted is false, so its next deadline cannot be undone here.
		if err := r.s.conn.SetReadDeadline(time.Time{}); err != nil {
			return n, err
		}
		r.s.interrupted.Store(false)
		if n > 0 {
			return n, nil
		}
		if r.s.rd.atBoundary() {
			return 0, errPark
		}
	}
}

// Serve relays the session until the client or the session ends, then
// calls done with the reason. While the client is parked (Options.Parker)
// the session has no goroutine: Serve returns before the session ends,
// and done runs on whichever goroutine ends it. Without a Parker, or for a
// client that cannot be parked, Serve returns after done.
func (s *Session) Serve(ctx context.Context, done func(reason string)) {
	s.ctx, s.done = ctx, done
	if s.serveOnLoop() {
		return
	}
	s.startPump()
	if p := s.o.Parker; p != nil && s.o.Mode == ModeTransaction {
		if c, ok := s.client.(parkableConn); ok {
			s.conn = c
			s.rd.src = clientReader{s}
			p.add(s)
		}
	}
	s.serve()
}

// serve runs the session until it ends or parks.
func (s *Session) serve() {
	reason, parked := s.run(s.ctx, s.conn != nil)
	if parked {
		return
	}
	if s.conn != nil {
		s.o.Parker.remove(s)
	}
	s.done(reason)
}

// park hands the client's socket to the Parker, if the session is between
// transactions with nothing of its own in flight; false means go on
// reading.
func (s *Session) park() bool {
	s.mu.Lock()
	busy := s.srv != nil || s.ending || s.endErr != ""
	pumpDone := s.pumpDone
	s.mu.Unlock()
	if busy {
		return false
	}
	if pumpDone != nil {
		<-pumpDone // the pump has given the server back and writes its last bytes
	}
	s.rd.release()
	s.parkState.mu.Lock()
	defer s.parkState.mu.Unlock()
	if s.closing.Load() {
		return false
	}
	t, err := s.o.Parker.lot.Park(s.conn, s.resume)
	if err != nil {
		s.o.Log().Debug("client not parked", "error", err.Error())
		return false
	}
	s.ticket = t
	s.o.Parker.parks.Add(1)
	return true
}

// resume runs when the parked client has something to read (or the
// session is being closed).
func (s *Session) resume() {
	s.parkState.mu.Lock()
	s.ticket = 0
	s.parkState.mu.Unlock()
	s.serve()
}

// OnLoop reports whether the session runs on an event loop (serveOnLoop).
func (s *Session) OnLoop() bool { return s.loopSession() != nil }

// Wake ends parking for good and resumes a parked session, which then reads
// its client as usual. Call it before closing the client from outside:
// a closed socket leaves the Parker's watch without waking the session.
// It reports true for a session on an event loop, which it closes: the
// loop owns the client's socket and closes it, and the caller must not.
func (s *Session) Wake() bool {
	s.closing.Store(true)
	s.parkState.mu.Lock()
	t, rs := s.ticket, s.relayed
	s.parkState.mu.Unlock()
	if t != 0 {
		s.o.Parker.lot.Unpark(t)
	}
	if rs != nil {
		rs.Close() // the loop ends it; Serve's done runs then
		return true
	}
	return false
}
