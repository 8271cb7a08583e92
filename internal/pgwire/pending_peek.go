//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package pgwire

import (
	"net"
	"syscall"
)

// PeekSupported reports whether PendingBytes can see unread bytes on this
// platform: recv(2) with MSG_PEEK|MSG_DONTWAIT is available on Linux, macOS
// and the BSDs.
const PeekSupported = true

// PendingBytes returns how many bytes (up to 64) are already waiting on the
// socket, without consuming them or blocking. It returns 0 when the
// connection is not a plain socket (net.Pipe in tests, wrapped dialers).
// Bytes waiting right after an SSLRequest or its 'S' answer can only have
// been injected by the network path.
func PendingBytes(conn net.Conn) int {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return 0
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0
	}
	n := 0
	var buf [64]byte
	_ = raw.Read(func(fd uintptr) bool {
		m, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		if err == nil && m > 0 {
			n = m
		}
		return true // never wait: this is a peek of what has already arrived
	})
	return n
}
