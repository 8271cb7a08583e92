//go:build darwin || freebsd

package pgtls

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// peerUID reads the user ID of the process at the other end of a Unix
// socket (LOCAL_PEERCRED, what getpeereid does on macOS and FreeBSD).
func peerUID(conn net.Conn) (uint32, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return 0, errPeerUnsupported
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Xucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptXucred(int(fd), unix.SOL_LOCAL, unix.LOCAL_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, cerr
	}
	return cred.Uid, nil
}
