//go:build !unix

package serverpool

import "syscall"

// peekSocket has no non-blocking peek here: the socket is taken as alive
// (the CheckAfter liveness query still runs).
func peekSocket(syscall.Conn) error { return nil }
