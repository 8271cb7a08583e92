//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package pgwire

import "net"

// PeekSupported is false here (Windows, Solaris, AIX, Plan 9, wasm): there is
// no portable non-consuming, non-blocking peek through syscall. Injected
// bytes then reach the TLS record layer and break the handshake instead of
// being named.
const PeekSupported = false

// PendingBytes cannot peek on this platform and reports 0.
func PendingBytes(net.Conn) int { return 0 }
