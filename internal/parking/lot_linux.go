//go:build linux

package parking

import (
	"fmt"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Lot is a set of parked connections and the goroutine that waits on them.
type Lot struct {
	epfd, evfd int

	mu     sync.Mutex
	slots  map[Ticket]slot
	next   Ticket
	closed bool
	failed error // the wait loop stopped on this error: nothing can be parked
	done   chan struct{}
}

type slot struct {
	rc   syscall.RawConn
	wake func()
}

// New starts a Lot.
func New() (*Lot, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("parking: epoll_create1: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("parking: eventfd: %w", err)
	}
	// Data 0 is the eventfd: Close writes it to end the wait loop.
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &unix.EpollEvent{Events: unix.EPOLLIN}); err != nil {
		unix.Close(evfd)
		unix.Close(epfd)
		return nil, fmt.Errorf("parking: epoll_ctl: %w", err)
	}
	l := &Lot{epfd: epfd, evfd: evfd, slots: map[Ticket]slot{}, done: make(chan struct{})}
	go l.loop()
	return l, nil
}

// Park watches c until it is readable (data, end of stream or an error),
// then runs wake in a goroutine of its own, once. It returns the Ticket
// for Unpark. wake may run before Park returns.
func (l *Lot) Park(c syscall.Conn, wake func()) (Ticket, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("parking: %w", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return 0, ErrClosed
	}
	if l.failed != nil {
		return 0, l.failed
	}
	l.next++
	t := l.next
	var addErr error
	// Inside Control the descriptor cannot be closed or reused.
	if err := rc.Control(func(fd uintptr) {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT}
		ev.Fd, ev.Pad = int32(uint32(t)), int32(uint32(t>>32))
		addErr = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
	}); err != nil {
		return 0, fmt.Errorf("parking: %w", err)
	}
	if addErr != nil {
		return 0, fmt.Errorf("parking: epoll_ctl add: %w", addErr)
	}
	l.slots[t] = slot{rc: rc, wake: wake}
	return t, nil
}

// Unpark stops watching t's connection and runs its wake in a goroutine of
// its own, unless the connection was already woken. It reports whether it
// did.
func (l *Lot) Unpark(t Ticket) bool {
	l.mu.Lock()
	s, ok := l.take(t)
	l.mu.Unlock()
	if ok {
		go s.wake()
	}
	return ok
}

// Len is the number of parked connections.
func (l *Lot) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.slots)
}

// take removes t's slot and its epoll entry; l.mu is held.
func (l *Lot) take(t Ticket) (slot, bool) {
	s, ok := l.slots[t]
	if !ok {
		return slot{}, false
	}
	delete(l.slots, t)
	// The entry goes now, so that the descriptor can be parked again; a
	// connection closed meanwhile has left the set already (Control fails).
	_ = s.rc.Control(func(fd uintptr) {
		_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
	})
	return s, true
}

// takeAll removes every slot and appends its wake to wakes; l.mu is held.
func (l *Lot) takeAll(wakes []func()) []func() {
	for t := range l.slots {
		s, _ := l.take(t)
		wakes = append(wakes, s.wake)
	}
	return wakes
}

// wake runs each function in a goroutine of its own.
func wake(wakes []func()) {
	for _, w := range wakes {
		go w()
	}
}

// Close wakes every parked connection and stops the Lot.
func (l *Lot) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	wakes := l.takeAll(nil)
	l.mu.Unlock()
	wake(wakes)
	var one = [8]byte{7: 1}
	if _, err := unix.Write(l.evfd, one[:]); err != nil {
		return fmt.Errorf("parking: eventfd write: %w", err)
	}
	<-l.done
	unix.Close(l.evfd)
	return unix.Close(l.epfd)
}

func (l *Lot) loop() {
	defer close(l.done)
	events := make([]unix.EpollEvent, 128)
	var wakes []func()
	for {
		n, err := unix.EpollWait(l.epfd, events, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			// Not expected for a valid epoll descriptor. Nothing parked
			// could wake any more: wake it all now, and park nothing
			// again (callers keep their goroutines).
			l.mu.Lock()
			l.failed = fmt.Errorf("parking: epoll_wait: %w", err)
			wakes = l.takeAll(wakes[:0])
			l.mu.Unlock()
			wake(wakes)
			return
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return
		}
		wakes = wakes[:0]
		for _, ev := range events[:n] {
			t := Ticket(uint32(ev.Fd)) | Ticket(uint32(ev.Pad))<<32
			if t == 0 {
				continue
			}
			if s, ok := l.take(t); ok {
				wakes = append(wakes, s.wake)
			}
		}
		l.mu.Unlock()
		wake(wakes)
	}
}
