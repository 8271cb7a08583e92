//go:build unix

package proxy

import (
	"net"
	"syscall"
)

// pendingInput reports whether the client has already sent bytes that the
// proxy has not read, without consuming or waiting for them (MSG_PEEK |
// MSG_DONTWAIT). Bytes that arrive with an SSLRequest, before the 'S' was
// even sent, can only be injected (CVE-2021-23214).
func pendingInput(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var n int
	var buf [1]byte
	_ = rc.Read(func(fd uintptr) bool {
		n, _, _ = syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true // never wait: only what is already there counts
	})
	return n > 0
}
