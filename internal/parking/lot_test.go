//go:build linux

package parking

import (
	"errors"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pair returns both ends of a loopback TCP connection.
func pair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return s.(*net.TCPConn), c.(*net.TCPConn)
}

func newLot(t *testing.T) *Lot {
	t.Helper()
	l, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// woken returns a wake func and a channel it sends on, once per call.
func woken() (func(), chan struct{}) {
	ch := make(chan struct{}, 8)
	return func() { ch <- struct{}{} }, ch
}

func expect(t *testing.T, ch chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second): // a hang guard, not a timing assertion
		t.Fatalf("%s: not woken", what)
	}
}

func quiet(t *testing.T, ch chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
		t.Fatalf("%s: woken", what)
	case <-time.After(50 * time.Millisecond):
	}
}

// A parked connection wakes once when its peer writes, and the data is
// then read through Go's poller as usual; it can be parked again.
func TestWakeOnData(t *testing.T) {
	l := newLot(t)
	a, b := pair(t)
	wake, ch := woken()
	for round := range 3 {
		if _, err := l.Park(a, wake); err != nil {
			t.Fatal(err)
		}
		quiet(t, ch, "idle connection")
		if l.Len() != 1 {
			t.Fatalf("round %d: Len %d", round, l.Len())
		}
		if _, err := b.Write([]byte("Q")); err != nil {
			t.Fatal(err)
		}
		expect(t, ch, "after the peer wrote")
		buf := make([]byte, 1)
		if _, err := a.Read(buf); err != nil || buf[0] != 'Q' {
			t.Fatalf("read after wake: %q %v", buf, err)
		}
		quiet(t, ch, "a second wake for one park")
		if l.Len() != 0 {
			t.Fatalf("round %d: Len %d after the wake", round, l.Len())
		}
	}
}

// Data that arrived before Park wakes at once (level-triggered), and so
// does a hang-up.
func TestWakeOnPendingDataAndHangup(t *testing.T) {
	l := newLot(t)
	a, b := pair(t)
	if _, err := b.Write([]byte("early")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // let it arrive; the test holds either way
	wake, ch := woken()
	if _, err := l.Park(a, wake); err != nil {
		t.Fatal(err)
	}
	expect(t, ch, "data already there")
	buf := make([]byte, 5)
	if _, err := a.Read(buf); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Park(a, wake); err != nil {
		t.Fatal(err)
	}
	b.Close()
	expect(t, ch, "peer closed")
	if n, err := a.Read(buf); n != 0 || err == nil {
		t.Fatalf("read after hang-up: %d %v", n, err)
	}
}

// Unpark wakes a parked connection once; a ticket already woken does
// nothing; Close wakes what is parked and refuses new parks.
func TestUnparkAndClose(t *testing.T) {
	l := newLot(t)
	a, _ := pair(t)
	c, _ := pair(t)
	wake, ch := woken()
	ta, err := l.Park(a, wake)
	if err != nil {
		t.Fatal(err)
	}
	if !l.Unpark(ta) {
		t.Fatal("Unpark of a parked connection said no")
	}
	expect(t, ch, "Unpark")
	if l.Unpark(ta) {
		t.Fatal("Unpark twice said yes")
	}
	quiet(t, ch, "second Unpark")
	if _, err := l.Park(a, wake); err != nil {
		t.Fatalf("park again after Unpark: %v", err)
	}
	if _, err := l.Park(c, wake); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	expect(t, ch, "Close, first")
	expect(t, ch, "Close, second")
	if _, err := l.Park(a, wake); !errors.Is(err, ErrClosed) {
		t.Fatalf("Park after Close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// An Unpark racing the data's arrival wakes exactly once.
func TestWakeExactlyOnce(t *testing.T) {
	l := newLot(t)
	a, b := pair(t)
	buf := make([]byte, 1)
	for i := range 200 {
		var n atomic.Int32
		done := make(chan struct{}, 2)
		tk, err := l.Park(a, func() { n.Add(1); done <- struct{}{} })
		if err != nil {
			t.Fatal(err)
		}
		go b.Write([]byte("x"))
		l.Unpark(tk)
		<-done
		if _, err := a.Read(buf); err != nil {
			t.Fatal(err)
		}
		select {
		case <-done:
			t.Fatalf("iteration %d: woken twice", i)
		case <-time.After(time.Millisecond):
		}
		if n.Load() != 1 {
			t.Fatalf("iteration %d: %d wakes", i, n.Load())
		}
	}
}

// A regular file cannot be watched by epoll: Park refuses it, and the
// caller keeps its goroutine.
func TestParkRefusesWhatItCannotWatch(t *testing.T) {
	l := newLot(t)
	f, err := os.CreateTemp(t.TempDir(), "regular")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := l.Park(f, func() {}); err == nil {
		t.Fatal("parked a regular file")
	}
}

// If the wait loop fails (here its epoll descriptor is closed under it),
// everything parked is woken and nothing more is parked: no connection
// is left without a goroutine that could ever wake it.
func TestLoopFailureWakesAndRefuses(t *testing.T) {
	l, err := New()
	if err != nil {
		t.Fatal(err)
	}
	a, _ := pair(t)
	c, _ := pair(t)
	wake, ch := woken()
	if _, err := l.Park(a, wake); err != nil {
		t.Fatal(err)
	}
	// A blocked epoll_wait does not see its descriptor close: the
	// eventfd wakes it, and its next wait fails.
	if err := unix.Close(l.epfd); err != nil {
		t.Fatal(err)
	}
	_, _ = unix.Write(l.evfd, []byte{0, 0, 0, 0, 0, 0, 0, 1})
	expect(t, ch, "parked before the loop failed")
	if _, err := l.Park(c, wake); err == nil {
		t.Fatal("parked after the loop failed")
	}
	_ = l.Close() // its epoll descriptor is gone already
}
