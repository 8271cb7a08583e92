//go:build !linux && !darwin && !freebsd

package pgtls

import "net"

// peerUID has no implementation here: requirepeer is refused with libpq's
// "requirepeer parameter is not supported on this platform".
func peerUID(conn net.Conn) (uint32, error) { return 0, errPeerUnsupported }
