//go:build unix

package serverpool

import (
	"errors"
	"io"
	"syscall"
)

// peekSocket looks at the connection's socket without blocking and without
// consuming a byte (recv with MSG_PEEK|MSG_DONTWAIT, PgBouncer's check of
// an idle server socket): nil when nothing is pending (alive and in sync),
// io.EOF when the server closed it, errUnexpectedData when bytes wait
// (a FATAL before the close, or a message nobody asked for), or the
// socket's error.
func peekSocket(sc syscall.Conn) error {
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var n int
	var rerr error
	var b [1]byte
	if err := raw.Read(func(fd uintptr) bool {
		n, _, rerr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true // never wait for readiness
	}); err != nil {
		return err
	}
	switch {
	case errors.Is(rerr, syscall.EAGAIN) || errors.Is(rerr, syscall.EWOULDBLOCK) || errors.Is(rerr, syscall.EINTR):
		return nil
	case rerr != nil:
		return rerr
	case n == 0:
		return io.EOF
	default:
		return errUnexpectedData
	}
}
