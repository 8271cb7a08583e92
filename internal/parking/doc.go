// Package parking waits for many idle connections to become readable with
// no goroutine for each: a parked connection costs its socket and a map
// entry, not a goroutine stack. A pooled client between transactions is
// parked; when it sends its next query (or hangs up), the Lot starts a
// goroutine to serve it.
//
// Go's own network poller needs a goroutine blocked in Read to watch a
// socket. A Lot adds the socket to an epoll instance of its own (level
// triggered, one shot) alongside Go's, and one goroutine waits on that
// instance for all of them. Reading stays with Go's poller: the Lot only
// says when to start reading.
//
// Rules for callers: park only a connection whose buffered input has all
// been consumed (the Lot watches the socket, not a reader's buffer; a TLS
// connection's records are such a buffer, so only plain sockets are
// parked), and never close a parked connection without unparking it first
// (closing the socket drops it from the epoll set, so its wake would never
// run). Close wakes every connection still parked.
//
// On systems without epoll, New returns ErrUnsupported and callers keep a
// goroutine per connection.
package parking

import "errors"

// ErrUnsupported is returned by New where parking is not available.
var ErrUnsupported = errors.New("parking: not supported on this system")

// ErrClosed is returned by Park after Close.
var ErrClosed = errors.New("parking: the lot is closed")

// Ticket names one parked connection, for Unpark. The zero Ticket names
// none.
type Ticket uint64
