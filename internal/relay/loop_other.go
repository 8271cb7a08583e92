//go:build !linux

package relay

import (
	"net"
)

// Loops has no event loops outside Linux: New fails with ErrUnsupported.
type Loops struct{}

// New fails with ErrUnsupported.
func New(int) (*Loops, error) { return nil, ErrUnsupported }

// Len is zero.
func (*Loops) Len() int { return 0 }

// Close does nothing.
func (*Loops) Close() error { return nil }

// Start fails with ErrUnsupported.
func (*Loops) Start(net.Conn, net.Conn, Hooks) (*Session, error) { return nil, ErrUnsupported }

// Session is not used outside Linux.
type Session struct{}

// Close does nothing.
func (*Session) Close() {}

// CloseWith does nothing.
func (*Session) CloseWith([]byte, func() bool) {}
