//go:build !unix

package proxy

import "net"

// pendingInput cannot peek on this platform; injected bytes then reach the
// TLS record layer and break the handshake instead.
func pendingInput(net.Conn) bool { return false }
