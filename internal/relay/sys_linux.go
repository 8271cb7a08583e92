//go:build linux

package relay

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The loop's per-message system calls are raw: none of them can block
// (every descriptor is non-blocking and epoll_pwait is called with a zero
// timeout), and unlike syscall.Syscall a raw call does not tell the
// scheduler it is entering the kernel, which would wake the runtime's
// monitor thread (a futex wake and a context switch) whenever it sleeps.

func rawRead(fd int, p []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), 0
}

func rawWrite(fd int, p []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), 0
}

// pollNow returns the ready events without waiting.
func pollNow(epfd int, events []unix.EpollEvent) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), 0
}

func epollCtl(epfd, op, fd int, events uint32, token uint64) syscall.Errno {
	ev := unix.EpollEvent{Events: events}
	ev.Fd, ev.Pad = int32(uint32(token)), int32(uint32(token>>32))
	_, _, e := syscall.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(epfd), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(&ev)), 0, 0)
	return e
}

func tokenOf(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}
