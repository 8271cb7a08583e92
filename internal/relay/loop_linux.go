//go:build linux

package relay

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// readSize is what one read(2) asks of a socket: a socket's receive
	// queue on loopback rarely holds more, so one call drains it.
	readSize = 64 << 10
	// plainSize is the plaintext a session passes on per step. It exceeds
	// what one readSize of records can decrypt to, plus a partial record
	// kept from before, so a TLS source is drained before it fills.
	plainSize = 128 << 10
	// spareMax is the largest send buffer a loop keeps for reuse.
	spareMax = 256 << 10
	// chunksPerTurn bounds what one direction passes on before the loop
	// serves the other sessions: a stream (COPY, a large result) must not
	// starve the rest of the loop.
	chunksPerTurn = 8
)

// Loops is a set of event loops; sessions are spread over them in turn.
type Loops struct {
	loops []*loop
	next  atomic.Uint32
}

// New starts n event loops (n < 1 means one).
func New(n int) (*Loops, error) {
	if n < 1 {
		n = 1
	}
	ls := &Loops{}
	for i := 0; i < n; i++ {
		l, err := newLoop()
		if err != nil {
			ls.Close()
			return nil, err
		}
		ls.loops = append(ls.loops, l)
	}
	return ls, nil
}

// Len is the number of loops.
func (ls *Loops) Len() int { return len(ls.loops) }

// Close ends every session still relayed (their Done runs, with First
// Neither) and stops the loops.
func (ls *Loops) Close() error {
	var first error
	for _, l := range ls.loops {
		if err := l.stop(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Start takes client and upstream over and relays between them until one
// side ends, then closes both and runs h.Done. Each side is a plain socket
// or a *tls.Conn made over Wrap; bytes crypto/tls has already buffered
// are relayed first. On ErrNotDetachable nothing was taken: the caller
// still owns both connections; otherwise Done runs once, whatever
// happens (a stopped loop ends the session at once). Start must not race with the connections'
// other users; once it returns, the loop owns them (Session.Close ends
// the session from any goroutine).
func (ls *Loops) Start(client, upstream net.Conn, h Hooks) (*Session, error) {
	cs, cdup, err := sideOf(client)
	if err != nil {
		return nil, err
	}
	us, udup, err := sideOf(upstream)
	if err != nil {
		return nil, err
	}
	if h.Framing != nil && !us.callers {
		// A kept upstream goes back under the caller's Conn; a plaintext
		// socket not made over Wrap has none, so it could not be kept.
		return nil, ErrNotDetachable
	}
	cfd, err := cdup()
	if err != nil {
		return nil, err
	}
	ufd, err := udup()
	if err != nil {
		syscall.Close(cfd)
		return nil, err
	}
	// The Go connections close now, which takes their descriptors out of
	// Go's poller; the duplicates keep the sockets open.
	cs.fd, us.fd = cfd, ufd
	cs.c.closeGo()
	us.c.closeGo()
	l := ls.loops[ls.next.Add(1)%uint32(len(ls.loops))]
	s := &Session{l: l, h: h, client: *cs, up: *us}
	if err := l.submit(command{start: s}); err != nil {
		// The sockets are taken: the session ends here, as if closed.
		syscall.Close(cfd)
		syscall.Close(ufd)
		s.over = true
		if h.Done != nil {
			go h.Done(Result{UpstreamErr: err})
		}
	}
	return s, nil
}

// sideOf finds the socket under c and returns the side to relay and a
// function that duplicates its descriptor; nothing is changed yet.
func sideOf(c net.Conn) (*side, func() (int, error), error) {
	d := &side{}
	sock := c
	if tc, ok := c.(*tls.Conn); ok {
		rc := findConn(tc.NetConn())
		if rc == nil {
			return nil, nil, ErrNotDetachable
		}
		d.tls, d.c, sock, d.callers = tc, rc, rc.Conn, true
	} else if rc, ok := c.(*Conn); ok {
		d.c, sock, d.callers = rc, rc.Conn, true // plaintext over Wrap
	} else {
		d.c = &Conn{Conn: c}
	}
	sc, ok := sock.(syscall.Conn)
	if !ok {
		return nil, nil, ErrNotDetachable
	}
	if a := sock.LocalAddr(); a != nil {
		d.network = a.Network()
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, nil, ErrNotDetachable
	}
	dup := func() (int, error) {
		fd := -1
		var derr error
		if err := raw.Control(func(s uintptr) {
			fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
		}); err != nil {
			return -1, fmt.Errorf("relay: %w", err)
		}
		if derr != nil {
			return -1, fmt.Errorf("relay: dup: %w", derr)
		}
		if err := unix.SetNonblock(fd, true); err != nil {
			syscall.Close(fd)
			return -1, fmt.Errorf("relay: %w", err)
		}
		return fd, nil
	}
	return d, dup, nil
}

// findConn follows NetConn links down to a Conn from Wrap.
func findConn(c net.Conn) *Conn {
	for i := 0; c != nil && i < 8; i++ {
		if rc, ok := c.(*Conn); ok {
			return rc
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return nil
		}
		c = u.NetConn()
	}
	return nil
}

// closeGo closes the Go connection under an owned Conn and starts owning.
func (c *Conn) closeGo() {
	if c.Conn != nil {
		_ = c.Conn.Close()
	}
	c.owned = true
}

type command struct {
	start, close *Session
	goodbye      []byte      // with close: sent to the client first
	still        func() bool // with goodbye: asked on the loop first; false cancels the close
}

// loop is one event loop: an epoll set whose descriptor Go's poller
// watches, and the goroutine that serves it.
type loop struct {
	epfd, evfd int
	file       *os.File // epfd, as Go's poller sees it
	raw        syscall.RawConn

	mu      sync.Mutex
	cmds    []command
	stopped bool
	done    chan struct{}

	// Owned by the loop's goroutine.
	sessions map[uint64]*Session
	nextID   uint64
	grace    []*Session // waiting for the upstream's end after the client's
	again    []*Session // used up their turn with more to pass on
	turn     []*Session // the again list being served
	deadline time.Time  // of the read deadline set on file, zero if none
	events   []unix.EpollEvent
	rbuf     []byte // socket bytes for crypto/tls
	pbuf     []byte // plaintext passed on
	spare    []byte // a send buffer kept for the next session that needs one
	err      error  // the loop failed: every session ends
	cmdBuf   []command
}

func newLoop() (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("relay: epoll_create1: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("relay: eventfd: %w", err)
	}
	// Token 0 is the eventfd: commands are waiting.
	if e := epollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, unix.EPOLLIN, 0); e != 0 {
		unix.Close(evfd)
		unix.Close(epfd)
		return nil, fmt.Errorf("relay: epoll_ctl: %w", e)
	}
	// Non-blocking, so that os.NewFile puts it in Go's poller.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(evfd)
		unix.Close(epfd)
		return nil, fmt.Errorf("relay: %w", err)
	}
	f := os.NewFile(uintptr(epfd), "relay-epoll")
	raw, err := f.SyscallConn()
	if err != nil {
		f.Close()
		unix.Close(evfd)
		return nil, fmt.Errorf("relay: %w", err)
	}
	l := &loop{
		epfd: epfd, evfd: evfd, file: f, raw: raw,
		done:     make(chan struct{}),
		sessions: map[uint64]*Session{},
		events:   make([]unix.EpollEvent, 128),
		rbuf:     make([]byte, readSize),
		pbuf:     make([]byte, plainSize),
	}
	// A deadline proves the descriptor is in Go's poller; without it the
	// loop could never wait.
	if err := f.SetReadDeadline(time.Time{}); err != nil {
		f.Close()
		unix.Close(evfd)
		return nil, fmt.Errorf("relay: the epoll descriptor is not pollable: %w", err)
	}
	go l.run()
	return l, nil
}

// submit queues a command and wakes the loop.
func (l *loop) submit(c command) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return errStopped
	}
	if len(l.cmds) == 0 {
		l.wake()
	}
	l.cmds = append(l.cmds, c)
	return nil
}

var errStopped = errors.New("relay: the event loop is stopped")

// wake writes the eventfd; l.mu is held, so that the loop cannot have
// closed it (run marks the loop stopped under mu before it does).
func (l *loop) wake() {
	one := [8]byte{0: 1}
	_, _ = unix.Write(l.evfd, one[:])
}

func (l *loop) stop() error {
	l.mu.Lock()
	if !l.stopped {
		l.stopped = true
		l.wake()
	}
	l.mu.Unlock()
	<-l.done
	return nil
}

func (l *loop) run() {
	defer close(l.done)
	defer func() {
		// Stopped first: nothing can queue a command or write the eventfd
		// once it is closed.
		l.mu.Lock()
		l.stopped = true
		l.mu.Unlock()
		l.file.Close()
		unix.Close(l.evfd)
	}()
	for {
		err := l.raw.Read(l.serve)
		if l.isStopped() || l.err != nil {
			break
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			l.checkGrace(time.Now())
			l.armDeadline(true)
			continue
		}
		if err != nil {
			l.err = fmt.Errorf("relay: waiting for events: %w", err)
			break
		}
	}
	l.mu.Lock()
	l.stopped = true // a failed loop takes no more sessions either
	l.mu.Unlock()
	l.drainCommands()
	for _, s := range l.sessions {
		if l.err != nil && s.res.First == Neither {
			s.res.UpstreamErr = l.err
		}
		s.end()
	}
}

func (l *loop) isStopped() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stopped
}

// serve handles what is ready until a poll finds nothing, then returns
// false to wait for Go's poller (true only to stop).
func (l *loop) serve(uintptr) bool {
	for {
		n, e := pollNow(l.epfd, l.events)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			l.err = fmt.Errorf("relay: epoll_pwait: %w", e)
			return true
		}
		if n == 0 && len(l.again) == 0 {
			return false // nothing ready and no stream owed a turn: wait
		}
		for i := range l.events[:n] {
			ev := &l.events[i]
			tok := tokenOf(ev)
			if tok == 0 {
				if l.drainCommands() {
					return true
				}
				continue
			}
			s := l.sessions[tok>>1]
			if s == nil {
				continue // ended earlier in this batch
			}
			d := &s.client
			if tok&1 == 1 {
				d = &s.up
			}
			if ev.Events&(unix.EPOLLHUP|unix.EPOLLERR) != 0 && d.ended {
				// epoll reports these whatever was asked; on a side whose
				// reading is over they would repeat forever.
				s.hungUp(d)
				continue
			}
			if ev.Events&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR|unix.EPOLLRDHUP) != 0 {
				d.readable = true
			}
			s.step()
		}
		if len(l.again) > 0 {
			// Streams that used up their turn go on after the events of
			// this round.
			l.turn, l.again = l.again, l.turn[:0]
			for _, s := range l.turn {
				s.queued = false
				s.step()
			}
			clear(l.turn)
			// A stream can keep the loop from waiting at all: the grace
			// deadlines are checked here too.
			if !l.deadline.IsZero() && !time.Now().Before(l.deadline) {
				l.checkGrace(time.Now())
				l.armDeadline(true)
			}
		}
		// Poll again before waiting, always: the Go poller sees the epoll
		// set's descriptor edge-triggered, and an entry that is still ready
		// (a short read that left an end of stream behind it, or interest
		// added to an entry the last poll returned) signals no new edge.
	}
}

// drainCommands runs the queued commands and reports whether the loop is
// stopping.
func (l *loop) drainCommands() bool {
	var buf [8]byte
	_, _ = unix.Read(l.evfd, buf[:])
	l.mu.Lock()
	cmds := append(l.cmdBuf[:0], l.cmds...)
	l.cmds = l.cmds[:0]
	stopped := l.stopped
	l.mu.Unlock()
	for _, c := range cmds {
		switch {
		case c.start != nil:
			l.add(c.start)
		case c.close != nil:
			if c.close.id != 0 && !c.close.over {
				c.close.closeWith(c.goodbye, c.still)
			}
		}
	}
	clear(cmds)
	l.cmdBuf = cmds[:0]
	return stopped
}

// add registers a new session and relays what crypto/tls already holds.
func (l *loop) add(s *Session) {
	l.nextID++
	s.id = l.nextID
	l.sessions[s.id] = s
	s.client.token, s.up.token = s.id<<1, s.id<<1|1
	for _, d := range []*side{&s.client, &s.up} {
		d.interest = unix.EPOLLIN
		if e := epollCtl(l.epfd, unix.EPOLL_CTL_ADD, d.fd, d.interest, d.token); e != 0 {
			s.fail(d, fmt.Errorf("relay: epoll_ctl add: %w", e))
			s.end()
			return
		}
	}
	// Bytes may wait in the sockets or in crypto/tls since the handshake.
	s.client.readable, s.up.readable = true, true
	s.step()
}

// armDeadline sets the read deadline on the epoll descriptor to the
// earliest grace deadline, so that the wait ends in time; force after
// the deadline passed (an expired deadline would end every wait at once).
func (l *loop) armDeadline(force bool) {
	var next time.Time
	for _, s := range l.grace {
		if next.IsZero() || s.graceAt.Before(next) {
			next = s.graceAt
		}
	}
	if !force && next.Equal(l.deadline) {
		return
	}
	l.deadline = next
	_ = l.file.SetReadDeadline(next)
}

// checkGrace closes the sessions whose upstream stayed silent for Grace
// after the client's end; one that is still sending gets another Grace.
func (l *loop) checkGrace(now time.Time) {
	kept := l.grace[:0]
	for _, s := range l.grace {
		switch {
		case s.over:
			continue
		case now.Before(s.graceAt):
		case s.upBytes != s.graceBytes:
			s.graceBytes, s.graceAt = s.upBytes, now.Add(s.h.Grace)
		default:
			s.res.UpstreamSilent = !s.saidGoodbye
			s.end()
			continue
		}
		kept = append(kept, s)
	}
	clear(l.grace[len(kept):])
	l.grace = kept
}

// takeSpare lends the loop's send buffer (or a new one).
func (l *loop) takeSpare() []byte {
	if b := l.spare; b != nil {
		l.spare = nil
		return b
	}
	return make([]byte, 0, readSize)
}

// returnOut gives d's send buffer back to the loop, which keeps one.
func (l *loop) returnOut(d *side) {
	if d.c.out == nil {
		return
	}
	if l.spare == nil && cap(d.c.out) <= spareMax {
		l.spare = d.c.out[:0]
	}
	d.c.out, d.c.sent = nil, 0
}

// side is one socket of a session.
type side struct {
	fd      int
	network string    // "tcp" or "unix", for errors
	tls     *tls.Conn // nil for plaintext
	c       *Conn     // the transport: crypto/tls's buffers, and what waits to be sent
	token   uint64

	interest   uint32 // the epoll events asked for
	readable   bool   // the socket may have bytes to read
	ended      bool   // its reading direction is over
	writeShut  bool   // its writing direction was closed (close_notify, shutdown)
	shutWanted bool   // close its writing direction once out is sent
	unwatched  bool   // out of the epoll set: its peer hung up after its end
	dry        bool   // crypto/tls said it needs more bytes than it was given
	broken     bool   // a read or write on it failed
	callers    bool   // c is the caller's Conn (Wrap), under which a kept socket goes back
	closed     bool   // its socket is closed already (dropUpstream)
}

// Session is one relayed session.
type Session struct {
	l          *loop
	h          Hooks
	id         uint64
	client, up side
	res        Result
	over       bool
	queued     bool // in the loop's again list

	upBytes, graceBytes int64
	graceAt             time.Time
	drainThenEnd        bool // the upstream ended: end once the client has its last bytes
	saidGoodbye         bool // closed with a goodbye: graceAt bounds the client's drain

	// With Hooks.Framing: the message boundaries of each direction.
	fromClient, fromUp framer
}

// Close ends the session from any goroutine; Done runs when it is over.
func (s *Session) Close() {
	_ = s.l.submit(command{close: s})
}

// CloseWith ends the session from any goroutine, telling the client why
// (goodbye, a FATAL the owner has to tell). On the loop, still is asked
// first (the owner's condition, checked again where the session's
// messages are seen): false, or a session already ending, cancels it.
// Otherwise the upstream is closed at once (what the close is for may be
// to free the server), nothing more is read from the client, and the
// client gets what was on its way, then goodbye (unless the upstream
// stood mid-message), within goodbyeGrace. The upstream is not kept. Done
// runs when it is over.
func (s *Session) CloseWith(goodbye []byte, still func() bool) {
	_ = s.l.submit(command{close: s, goodbye: bytes.Clone(goodbye), still: still})
}

// goodbyeGrace bounds how long a client that does not read keeps a
// session closed with a goodbye.
const goodbyeGrace = 10 * time.Second

// closeWith ends the session, after goodbye if there is one.
func (s *Session) closeWith(goodbye []byte, still func() bool) {
	if len(goodbye) == 0 {
		s.end()
		return
	}
	if s.drainThenEnd || s.up.ended || still != nil && !still() {
		return
	}
	s.dropUpstream()
	s.client.ended = true
	if s.h.Framing == nil || s.fromUp.between() {
		if !s.pass(goodbye, &s.client, Upstream) {
			return
		}
	}
	s.drainThenEnd, s.saidGoodbye = true, true
	s.graceAt, s.graceBytes = time.Now().Add(goodbyeGrace), s.upBytes
	s.l.grace = append(s.l.grace, s)
	s.l.armDeadline(false)
	s.step()
}

// dropUpstream closes the upstream now; the session goes on for the
// client's last bytes.
func (s *Session) dropUpstream() {
	d := &s.up
	if !d.unwatched {
		_ = epollCtl(s.l.epfd, unix.EPOLL_CTL_DEL, d.fd, 0, 0)
	}
	s.closeSide(d)
	d.ended, d.unwatched = true, true
}

// closeSide closes d's socket, once, after its close_notify if it is TLS
// (when the socket takes it now).
func (s *Session) closeSide(d *side) {
	if d.closed {
		return
	}
	if d.tls != nil {
		s.shutWrite(d)
	}
	s.l.returnOut(d)
	d.c.in = nil
	syscall.Close(d.fd)
	d.closed = true
}

// step moves what can move in both directions, then updates what the
// session waits for.
func (s *Session) step() {
	if s.over {
		return
	}
	s.pump(&s.client, &s.up, Client)
	if !s.over {
		s.pump(&s.up, &s.client, Upstream)
	}
	if s.over {
		return
	}
	if s.drainThenEnd && len(s.client.c.pending()) == 0 {
		s.end()
		return
	}
	s.want(&s.client, &s.up)
	s.want(&s.up, &s.client)
}

// hungUp handles a reset or closed peer on a side whose reading already
// ended: a client that can no longer receive ends the session; an upstream
// is only dropped from the epoll set, so that its last bytes still reach
// the client.
func (s *Session) hungUp(d *side) {
	if d == &s.client {
		s.end()
		return
	}
	if !d.unwatched {
		d.unwatched = true
		_ = epollCtl(s.l.epfd, unix.EPOLL_CTL_DEL, d.fd, 0, 0)
	}
	s.step()
}

// want sets d's epoll interest: readable while its direction runs and the
// other side can take more, writable while it has bytes waiting.
func (s *Session) want(d, other *side) {
	if d.unwatched {
		return
	}
	var ev uint32
	if !d.ended && len(other.c.pending()) == 0 {
		ev |= unix.EPOLLIN
	}
	if len(d.c.pending()) > 0 {
		ev |= unix.EPOLLOUT
	}
	if ev == d.interest {
		return
	}
	d.interest = ev
	if e := epollCtl(s.l.epfd, unix.EPOLL_CTL_MOD, d.fd, ev, d.token); e != 0 {
		s.fail(d, fmt.Errorf("relay: epoll_ctl: %w", e))
		s.end()
	}
}

// pump passes what src has on to dst until src has nothing more for now,
// dst cannot take more, or the direction ends.
func (s *Session) pump(src, dst *side, from Side) {
	for i := 0; !s.over; i++ {
		if i == chunksPerTurn {
			if !s.queued {
				s.queued = true
				s.l.again = append(s.l.again, s)
			}
			return
		}
		if !s.flush(dst, from) {
			return
		}
		if len(dst.c.pending()) > 0 || src.ended {
			return
		}
		p, err := s.fill(src)
		if len(p) > 0 && !s.deliver(p, dst, from) {
			return
		}
		if err != nil {
			s.finish(src, dst, from, err)
			return
		}
		if len(p) == 0 {
			return
		}
	}
}

// fill returns the next plaintext src has (empty when nothing is there
// yet), and io.EOF or the failure once its reading direction ended. The
// slice is the loop's and valid until the next fill.
func (s *Session) fill(src *side) ([]byte, error) {
	l := s.l
	if src.tls == nil {
		if !src.readable {
			return nil, nil
		}
		n, err := readSocket(src, l.pbuf)
		return l.pbuf[:n], err
	}
	off := 0
	var ferr error
	for off < len(l.pbuf) {
		if src.dry && len(src.c.in) == 0 {
			// crypto/tls has used up what it was given and needs more:
			// read the socket once.
			if !src.readable || src.c.readErr != nil {
				break
			}
			n, rerr := readSocket(src, l.rbuf)
			if n == 0 && rerr == nil {
				break
			}
			src.c.in, src.c.readErr, src.dry = l.rbuf[:n], rerr, false
		}
		n, err := src.tls.Read(l.pbuf[off:])
		off += n
		if err == nil {
			continue
		}
		if err != errWouldBlock {
			ferr = err
			break
		}
		src.dry = true
	}
	if len(src.c.in) > 0 {
		// Left over when the plaintext buffer filled: keep a copy, the
		// read buffer is the loop's.
		src.c.in = append([]byte(nil), src.c.in...)
	}
	return l.pbuf[:off], ferr
}

// readSocket reads once: n > 0 bytes, or n == 0 with nothing there yet
// (err nil), at the end (io.EOF) or on a failure. A short read means the
// socket is drained; level-triggered epoll says when there is more.
func readSocket(d *side, p []byte) (int, error) {
	for {
		n, e := rawRead(d.fd, p)
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN:
			d.readable = false
			return 0, nil
		case e != 0:
			d.broken = true
			return 0, &net.OpError{Op: "read", Net: d.network, Err: os.NewSyscallError("read", e)}
		case n == 0:
			d.readable = false
			return 0, io.EOF
		}
		if n < len(p) {
			d.readable = false
		}
		return n, nil
	}
}

// deliver counts p and sends it to dst: encrypted into records, or as is
// (what the socket does not take now waits in dst's buffer). It reports
// false when the session ended on a failure.
func (s *Session) deliver(p []byte, dst *side, from Side) bool {
	if f := s.h.Framing; f != nil {
		return s.deliverFramed(f, p, dst, from)
	}
	return s.pass(p, dst, from)
}

// deliverFramed follows the message boundaries of p before passing it on;
// the client's Terminate ends the session there.
func (s *Session) deliverFramed(f *Framing, p []byte, dst *side, from Side) bool {
	if from == Upstream {
		if err := s.fromUp.scanServer(p, f.Server); err != nil {
			s.up.broken = true
			s.directionFailed(Upstream, err)
			return false
		}
		return s.pass(p, dst, from)
	}
	n, terminated, err := s.fromClient.scanClient(p, f.Client)
	if err != nil {
		s.directionFailed(Client, err)
		return false
	}
	if n > 0 && !s.pass(p[:n], dst, from) {
		return false
	}
	if terminated {
		if s.h.ClientBytes != nil {
			// Counted as the goroutine paths count it; a part that went on
			// with an earlier chunk was counted then.
			s.h.ClientBytes(s.fromClient.terminateHere)
		}
		s.res.Terminated = true
		if s.res.First == Neither {
			s.res.First = Client
		}
		s.client.ended = true
		s.end()
		return false
	}
	return true
}

// pass counts p and sends it to dst.
func (s *Session) pass(p []byte, dst *side, from Side) bool {
	if from == Client {
		if s.h.Framing == nil {
			s.res.Terminated = EndsWithTerminate(p)
		}
		if s.h.ClientBytes != nil {
			s.h.ClientBytes(len(p))
		}
	} else {
		s.upBytes += int64(len(p))
		if s.h.UpstreamBytes != nil {
			s.h.UpstreamBytes(len(p))
		}
	}
	if dst.tls != nil {
		if dst.c.out == nil {
			dst.c.out = s.l.takeSpare()
		}
		if _, err := dst.tls.Write(p); err != nil {
			dst.broken = true
			s.directionFailed(from, err)
			return false
		}
		return s.flush(dst, from)
	}
	if len(dst.c.pending()) == 0 {
		n, err := writeSocket(dst, p)
		if err != nil {
			s.directionFailed(from, err)
			return false
		}
		p = p[n:]
		if len(p) == 0 {
			return true
		}
	}
	if dst.c.out == nil {
		dst.c.out = s.l.takeSpare()
	}
	dst.c.out = append(dst.c.out, p...)
	return true
}

// flush sends what waits in d's buffer, as much as the socket takes. It
// reports false when the session ended on a failure.
func (s *Session) flush(d *side, from Side) bool {
	if d.c.out == nil {
		return true
	}
	if p := d.c.pending(); len(p) > 0 {
		n, err := writeSocket(d, p)
		if err != nil {
			s.directionFailed(from, err)
			return false
		}
		d.c.sent += n
	}
	if len(d.c.pending()) > 0 {
		return true
	}
	s.l.returnOut(d)
	if d.shutWanted {
		d.shutWanted = false
		s.shutWrite(d)
	}
	return true
}

func writeSocket(d *side, p []byte) (int, error) {
	for {
		n, e := rawWrite(d.fd, p)
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN:
			return 0, nil
		case e != 0:
			d.broken = true
			return 0, &net.OpError{Op: "write", Net: d.network, Err: os.NewSyscallError("write", e)}
		}
		return n, nil
	}
}

// directionFailed ends the session on a failure of the direction that
// started at from.
func (s *Session) directionFailed(from Side, err error) {
	if from == Client {
		s.fail(&s.client, err)
	} else {
		s.fail(&s.up, err)
	}
	s.end()
}

// fail records err against the direction starting at d, if nothing ended
// before.
func (s *Session) fail(d *side, err error) {
	if s.res.First != Neither {
		return
	}
	if d == &s.client {
		s.res.First, s.res.ClientErr = Client, err
	} else {
		s.res.First, s.res.UpstreamErr = Upstream, err
	}
}

// finish handles the end of src's reading direction: the client's clean
// end is passed on and the upstream gets Grace to finish; anything else
// ends the session once the client has the upstream's last bytes.
func (s *Session) finish(src, dst *side, from Side, err error) {
	src.ended = true
	clean := errors.Is(err, io.EOF)
	if s.res.First == Neither {
		s.res.First = from
		if !clean {
			if from == Client {
				s.res.ClientErr = err
			} else {
				s.res.UpstreamErr = err
			}
		}
	}
	if f := s.h.Framing; f != nil {
		// A kept upstream sees no end: the session ends now (and keeps it,
		// if it stands between messages). An upstream that ended first
		// tells the client why, after its last bytes.
		if from == Client {
			s.end()
			return
		}
		if f.Lost != nil && s.fromUp.between() {
			if b := f.Lost(err); len(b) > 0 && !s.pass(b, dst, from) {
				return
			}
		}
		s.drainThenEnd = true
		return
	}
	if from == Client && clean {
		// Let the upstream see the end and finish its backend, while its
		// last bytes still flow back.
		if len(dst.c.pending()) > 0 {
			dst.shutWanted = true
		} else {
			s.shutWrite(dst)
		}
		s.graceAt, s.graceBytes = time.Now().Add(s.h.Grace), s.upBytes
		s.l.grace = append(s.l.grace, s)
		s.l.armDeadline(false)
		return
	}
	if from == Client {
		s.end()
		return
	}
	// Nothing more can flow once the upstream is gone.
	s.drainThenEnd = true
}

// shutWrite closes d's writing direction: a TLS close_notify, or a TCP
// shutdown for plaintext.
func (s *Session) shutWrite(d *side) {
	if d.writeShut {
		return
	}
	d.writeShut = true
	if d.tls != nil {
		if d.c.out == nil {
			d.c.out = s.l.takeSpare()
		}
		_ = d.tls.CloseWrite()
		if p := d.c.pending(); len(p) > 0 {
			n, _ := writeSocket(d, p)
			d.c.sent += n
		}
		return
	}
	_ = unix.Shutdown(d.fd, unix.SHUT_WR)
}

// end closes both sockets (a TLS side gets its close_notify first, if the
// socket takes it now) and runs Done.
func (s *Session) end() {
	if s.over {
		return
	}
	s.over = true
	l := s.l
	s.res.UpstreamEnded = s.up.ended || s.up.broken
	keep := s.keepable()
	for _, d := range []*side{&s.client, &s.up} {
		if d == &s.up && keep {
			// Out of the epoll set, open, and with what crypto/tls has
			// not read yet left in its Conn (a copy, not the loop's).
			_ = epollCtl(l.epfd, unix.EPOLL_CTL_DEL, d.fd, 0, 0)
			l.returnOut(d)
			continue
		}
		s.closeSide(d)
	}
	delete(l.sessions, s.id)
	done := s.h.Done
	if done == nil && !keep {
		return
	}
	res, up, fd := s.res, s.up.c, s.up.fd
	go func() {
		if keep {
			res.KeepErr = up.reclaim(fd)
			res.UpstreamKept = res.KeepErr == nil
		}
		if done != nil {
			done(res)
		}
	}()
}

// keepable reports whether a Framing session's upstream can be given
// back: nothing failed or ended on it, both directions stand between
// messages, and nothing waits to be sent to it.
func (s *Session) keepable() bool {
	return s.h.Framing != nil && !s.up.ended && !s.up.broken && !s.up.writeShut &&
		s.fromClient.between() && s.fromUp.between() && len(s.up.c.pending()) == 0
}

// reclaim gives the socket fd, taken by a loop, back to Go's poller under
// c, which passes everything through again. On failure fd is closed and c
// passes through to the Go connection Start closed, so that every use of
// it fails.
func (c *Conn) reclaim(fd int) error {
	f := os.NewFile(uintptr(fd), "relay-kept")
	nc, err := net.FileConn(f) // a duplicate of fd, in Go's poller
	f.Close()
	c.owned, c.readErr = false, nil
	if err != nil {
		c.in = nil
		return fmt.Errorf("relay: giving the upstream socket back: %w", err)
	}
	c.Conn = nc
	return nil
}
