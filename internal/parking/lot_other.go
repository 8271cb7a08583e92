//go:build !linux

package parking

import "syscall"

// Lot is not available on this system: New returns ErrUnsupported.
type Lot struct{}

// New returns ErrUnsupported.
func New() (*Lot, error) { return nil, ErrUnsupported }

// Park returns ErrUnsupported.
func (l *Lot) Park(c syscall.Conn, wake func()) (Ticket, error) { return 0, ErrUnsupported }

// Unpark does nothing.
func (l *Lot) Unpark(t Ticket) bool { return false }

// Len is 0.
func (l *Lot) Len() int { return 0 }

// Close does nothing.
func (l *Lot) Close() error { return nil }
