//go:build linux

// Package faultnet holds the fault-injection tools of pgtrust's fault
// campaigns (tests only): a TCP relay that can be switched to swallow every
// byte in both directions without closing (an upstream that stops
// answering), and resource counters (goroutines, open file descriptors)
// that settle before they compare, so a campaign can prove it leaked
// nothing.
package faultnet

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Relay forwards loopback TCP connections to a target address. Switched
// to blackhole mode it keeps every connection open but discards what it
// reads from either side: the peers' kernels still acknowledge the bytes,
// so neither TCP keepalives nor TCP_USER_TIMEOUT can notice, as with a
// hung server or a stuck middlebox.
type Relay struct {
	ln        net.Listener
	target    atomic.Pointer[string]
	blackhole atomic.Bool
	swallowed atomic.Int64
	accepted  atomic.Int64

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	links  []*Link
	closed bool
	wg     sync.WaitGroup
}

// Link is one relayed connection.
type Link struct {
	blackhole atomic.Bool
}

// SetBlackhole switches this connection alone between forwarding and
// swallowing.
func (l *Link) SetBlackhole(on bool) { l.blackhole.Store(on) }

// Links returns the relayed connections in the order they were accepted.
func (r *Relay) Links() []*Link {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*Link(nil), r.links...)
}

// NewRelay listens on 127.0.0.1:0 and forwards to target. It is closed at
// the end of the test.
func NewRelay(t testing.TB, target string) *Relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("faultnet: relay listen: %v", err)
	}
	r := &Relay{ln: ln, conns: map[net.Conn]struct{}{}}
	r.target.Store(&target)
	r.wg.Add(1)
	go r.accept()
	t.Cleanup(r.Close)
	return r
}

// Addr is the relay's listening address.
func (r *Relay) Addr() *net.TCPAddr { return r.ln.Addr().(*net.TCPAddr) }

// Port is the relay's listening port.
func (r *Relay) Port() int { return r.Addr().Port }

// SetTarget changes where new connections go.
func (r *Relay) SetTarget(addr string) { r.target.Store(&addr) }

// SetBlackhole switches every connection, open and future, between
// forwarding and swallowing.
func (r *Relay) SetBlackhole(on bool) { r.blackhole.Store(on) }

// Swallowed is the number of bytes discarded in blackhole mode.
func (r *Relay) Swallowed() int64 { return r.swallowed.Load() }

// Accepted is the number of connections the relay accepted.
func (r *Relay) Accepted() int64 { return r.accepted.Load() }

// Open is the number of sockets (both sides) the relay holds open.
func (r *Relay) Open() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.conns)
}

// Close closes the listener and every connection, and waits for the
// relay's goroutines.
func (r *Relay) Close() {
	r.mu.Lock()
	r.closed = true
	r.ln.Close()
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

func (r *Relay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		c.Close()
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *Relay) untrack(c net.Conn) {
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
	c.Close()
}

func (r *Relay) accept() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.accepted.Add(1)
		if !r.track(c) {
			return
		}
		r.wg.Add(1)
		go r.serve(c)
	}
}

func (r *Relay) serve(c net.Conn) {
	defer r.wg.Done()
	defer r.untrack(c)
	up, err := net.DialTimeout("tcp", *r.target.Load(), 5*time.Second)
	if err != nil {
		return
	}
	if !r.track(up) {
		return
	}
	defer r.untrack(up)
	link := &Link{}
	r.mu.Lock()
	r.links = append(r.links, link)
	r.mu.Unlock()
	swallow := func() bool { return r.blackhole.Load() || link.blackhole.Load() }
	done := make(chan struct{}, 2)
	pump := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if swallow() {
					r.swallowed.Add(int64(n))
				} else if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		// An EOF is forwarded only while the relay forwards: a blackholed
		// peer never closes.
		for swallow() {
			r.mu.Lock()
			closed := r.closed
			r.mu.Unlock()
			if closed {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pump(up, c)
	pump(c, up)
	<-done
}

// Resources is a count of the process's goroutines and open file
// descriptors.
type Resources struct {
	Goroutines int
	FDs        int
	fdTargets  map[string]string
}

func (r Resources) String() string {
	return fmt.Sprintf("%d goroutines, %d fds", r.Goroutines, r.FDs)
}

// Count reads the current goroutine count and /proc/self/fd.
func Count(t testing.TB) Resources {
	t.Helper()
	fds, err := FDs(os.Getpid())
	if err != nil {
		t.Fatalf("faultnet: %v", err)
	}
	return Resources{Goroutines: runtime.NumGoroutine(), FDs: len(fds), fdTargets: fds}
}

// FDs returns the open descriptors of process pid and what each points
// to (Linux /proc).
func FDs(pid int) (map[string]string, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("count open file descriptors: %w", err)
	}
	out := make(map[string]string, len(entries))
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed while listing (ReadDir's own descriptor)
		}
		out[e.Name()] = target
	}
	return out, nil
}

// Settle waits (up to limit) until the goroutines and descriptors are
// back to at most before plus tolerance, and returns the last count. It
// fails the test, naming the new descriptors and dumping the goroutines,
// if they never get there.
func Settle(t testing.TB, what string, before Resources, tolerance int, limit time.Duration) Resources {
	t.Helper()
	end := time.Now().Add(limit)
	for {
		runtime.GC() // finalizers close descriptors of dropped *os.File
		after := Count(t)
		if after.Goroutines <= before.Goroutines+tolerance && after.FDs <= before.FDs+tolerance {
			t.Logf("%s: before %v, after %v", what, before, after)
			return after
		}
		if time.Now().After(end) {
			t.Errorf("%s leaked: before %v, after %v (tolerance %d)\nnew descriptors: %v\n%s",
				what, before, after, tolerance, newFDs(before, after), goroutineDump())
			return after
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func newFDs(before, after Resources) []string {
	var out []string
	for fd, target := range after.fdTargets {
		if before.fdTargets[fd] != target {
			out = append(out, fd+" -> "+target)
		}
	}
	sort.Strings(out)
	return out
}

func goroutineDump() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

// RaiseNoFile raises the soft RLIMIT_NOFILE to at least need (up to the
// hard limit) and fails the test if the hard limit is lower.
func RaiseNoFile(t testing.TB, need uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("faultnet: getrlimit: %v", err)
	}
	if lim.Cur >= need {
		return
	}
	if lim.Max < need {
		t.Fatalf("faultnet: this campaign needs %d open files; the hard RLIMIT_NOFILE is %d (raise it: ulimit -Hn %d)", need, lim.Max, need)
	}
	old := lim
	lim.Cur = need
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("faultnet: setrlimit: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
}

// ReadClosed reads from c until the peer closes it or limit passes, and
// says how: "eof", "reset", or an error when the peer kept it open.
func ReadClosed(c net.Conn, limit time.Duration) (string, error) {
	_ = c.SetReadDeadline(time.Now().Add(limit))
	buf := make([]byte, 512)
	for {
		_, err := c.Read(buf)
		switch {
		case err == nil:
			continue
		case errors.Is(err, io.EOF):
			return "eof", nil
		case errors.Is(err, syscall.ECONNRESET):
			return "reset", nil
		}
		return "", err
	}
}

// MakeReadOnly makes dir refuse writes until the end of the test. As root
// (which chmod does not stop) it bind-mounts dir read-only onto itself, so
// writes fail with EROFS; otherwise it chmods dir 0500 (EACCES). It
// returns the errno writes will get.
func MakeReadOnly(t testing.TB, dir string) syscall.Errno {
	t.Helper()
	if os.Geteuid() != 0 {
		if err := os.Chmod(dir, 0o500); err != nil {
			t.Fatalf("faultnet: chmod %s: %v", dir, err)
		}
		t.Cleanup(func() { _ = os.Chmod(dir, 0o700) })
		return syscall.EACCES
	}
	if err := syscall.Mount(dir, dir, "", syscall.MS_BIND, ""); err != nil {
		t.Fatalf("faultnet: bind mount %s (root without CAP_SYS_ADMIN cannot make a read-only directory): %v", dir, err)
	}
	t.Cleanup(func() { unmount(t, dir) })
	if err := syscall.Mount("", dir, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		t.Fatalf("faultnet: remount %s read-only: %v", dir, err)
	}
	return syscall.EROFS
}

// MountTmpfs mounts a tmpfs of size bytes on dir (root only) for the rest
// of the test: a small file system that a test can fill to get ENOSPC.
func MountTmpfs(t testing.TB, dir string, size int) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("faultnet: mounting a tmpfs needs root (a full disk cannot be made otherwise)")
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		t.Fatalf("faultnet: mount tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() { unmount(t, dir) })
}

func unmount(t testing.TB, dir string) {
	if err := syscall.Unmount(dir, 0); err != nil {
		// Busy (a watcher still open): detach; the kernel finishes later.
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("faultnet: unmount %s: %v", dir, err)
		}
	}
}

// Fill writes a filler file in dir until the file system is full, then
// gives back free pages (0 for a full disk). It returns the filler's
// path.
func Fill(t testing.TB, dir string, free int) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatalf("faultnet: %v", err)
	}
	page := make([]byte, os.Getpagesize())
	size := 0
	for {
		n, err := f.Write(page)
		size += n
		if err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("faultnet: fill %s: %v", dir, err)
			}
			break
		}
	}
	f.Close()
	// Whole pages only: a partly used page counts as used.
	size -= size % len(page)
	if err := os.Truncate(path, int64(size-free*len(page))); err != nil {
		t.Fatalf("faultnet: %v", err)
	}
	return path
}
