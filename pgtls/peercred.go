//go:build linux || darwin || freebsd

package pgtls

import (
	"net"
	"syscall"
)

// peerUID reads the user ID of the process at the other end of a Unix
// socket, for requirepeer (peerUIDOf is the platform's call).
func peerUID(conn net.Conn) (uint32, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return 0, errPeerUnsupported
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var uid uint32
	var uerr error
	if err := raw.Control(func(fd uintptr) { uid, uerr = peerUIDOf(int(fd)) }); err != nil {
		return 0, err
	}
	return uid, uerr
}
