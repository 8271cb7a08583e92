package relay

import (
	"encoding/binary"

	"github.com/pgtrust/pgtrust/failure"
)

// Framing makes a session follow PostgreSQL's message boundaries in both
// directions and keep its upstream: a pooled server connection outlives
// the client's session. The bytes still pass through unchanged, except
// the client's Terminate, which ends the session instead of reaching the
// server.
//
// When the session ends without the upstream failing, and both directions
// stand between messages with nothing left to send upstream, the upstream
// connection is not closed: it is given back to Go's poller, the same
// net.Conn again (Result.UpstreamKept), for its owner to reset and reuse.
// Otherwise it is closed, as after any session.
//
// What the upstream sent after its last message the loop passed on stays
// unread: in the kernel, or in crypto/tls and the Conn, where the owner's
// next read finds it (a socket check that looks only at the kernel's queue
// does not).
type Framing struct {
	// Client is told the type of each message the client sends, before it
	// is passed on ('X', Terminate, is never passed on).
	Client func(typ byte)
	// Server is given each whole ParameterStatus ('S') and ReadyForQuery
	// ('Z') from the upstream, type and length included, and the first
	// errorPrefix bytes of each ErrorResponse ('E'; its severity, code and
	// message come first, and an error may be as long as the server likes),
	// before it is passed on; msg is valid during the call.
	Server func(msg []byte)
	// Lost, if set, returns what the client is sent when the upstream ends
	// first, while the upstream stands between messages (a server gone
	// mid-session: the client learns why before its connection closes).
	// err is io.EOF for a clean end.
	Lost func(err error) []byte
}

// maxWatched bounds a parameter report the framer assembles for Server:
// PostgreSQL's are far smaller, and a peer that announces more is not
// PostgreSQL.
const maxWatched = 1 << 20

// errorPrefix is how much of an ErrorResponse Server is given.
const errorPrefix = 4 << 10

// framer follows message boundaries in one direction.
type framer struct {
	hdr   [5]byte
	nhdr  int    // header bytes seen of the current message
	left  int    // body bytes still to come
	watch bool   // the current message is assembled for Server
	msg   []byte // the assembled message

	terminateHere int // scanClient: bytes of the Terminate in the chunk that ended with it
}

// between reports whether the bytes seen end at a message boundary.
func (f *framer) between() bool { return f.nhdr == 0 && f.left == 0 }

// watched is the set of upstream message types Server is given.
func watched(typ byte) bool { return typ == 'S' || typ == 'Z' || typ == 'E' }

// header takes up to the rest of a message header from p and returns how
// many bytes it took and whether the header is now whole.
func (f *framer) header(p []byte) (int, bool) {
	n := copy(f.hdr[f.nhdr:], p)
	f.nhdr += n
	return n, f.nhdr == len(f.hdr)
}

// length validates the whole header's length word and returns the body's.
func (f *framer) length(who string) (int, error) {
	n := int(int32(binary.BigEndian.Uint32(f.hdr[1:])))
	if n < 4 {
		return 0, framingError(who, f.hdr, "relay: %s message %q announces length %d (at least 4)", who, f.hdr[0], n)
	}
	return n - 4, nil
}

// framingError is a protocol_error about the stream from who ("server" or
// "client"), with the message header as evidence (a type and a length:
// nothing of the message's content).
func framingError(who string, hdr [5]byte, format string, args ...any) error {
	fix := "check that the upstream address is a PostgreSQL server, not another service or a proxy that rewrites the stream"
	if who == "client" {
		fix = "the client does not speak PostgreSQL's protocol: check its driver, and what connects to this listener"
	}
	return failure.New(failure.ProtocolError, format, args...).
		WithEvidence("the %s's message header: % x", who, hdr[:]).WithFix("%s", fix)
}

// scanServer follows p, bytes from the upstream, and gives each whole
// watched message to fn.
func (f *framer) scanServer(p []byte, fn func([]byte)) error {
	for len(p) > 0 {
		if f.left == 0 && f.nhdr < len(f.hdr) {
			k, whole := f.header(p)
			p = p[k:]
			if !whole {
				return nil
			}
			body, err := f.length("server")
			if err != nil {
				return err
			}
			if f.watch = watched(f.hdr[0]); f.watch {
				if body > maxWatched && f.hdr[0] != 'E' {
					return framingError("server", f.hdr, "relay: server message %q announces %d bytes (limit %d)", f.hdr[0], body, maxWatched)
				}
				f.msg = append(f.msg[:0], f.hdr[:]...)
			}
			f.left = body
		}
		k := min(f.left, len(p))
		if f.watch {
			take := k
			if f.hdr[0] == 'E' {
				take = min(k, max(0, errorPrefix-len(f.msg)))
			}
			f.msg = append(f.msg, p[:take]...)
		}
		f.left -= k
		p = p[k:]
		if f.left == 0 {
			f.nhdr = 0
			if f.watch {
				f.watch = false
				fn(f.msg)
				if cap(f.msg) > 2*errorPrefix {
					f.msg = nil // a rare large one is not kept
				}
			}
		}
	}
	return nil
}

// scanClient follows p, bytes from the client, telling fn each message's
// type. At a Terminate it stops: pass is how much of p comes before it,
// and terminated is true.
func (f *framer) scanClient(p []byte, fn func(byte)) (pass int, terminated bool, err error) {
	off := 0
	for off < len(p) {
		if f.left == 0 && f.nhdr < len(f.hdr) {
			start := off - f.nhdr // where the message began, if in p
			k, whole := f.header(p[off:])
			off += k
			if !whole {
				return off, false, nil
			}
			body, err := f.length("client")
			if err != nil {
				return off, false, err
			}
			if f.hdr[0] == 'X' {
				f.terminateHere = len(f.hdr) + min(start, 0)
				if start >= 0 {
					// Wholly in p: nothing of it went on, a clean boundary.
					// (Begun in an earlier chunk, its first bytes reached
					// the upstream: the framer stays mid-message, and the
					// upstream is not kept.)
					f.nhdr = 0
				}
				return max(start, 0), true, nil
			}
			fn(f.hdr[0])
			f.left = body
		}
		k := min(f.left, len(p)-off)
		f.left -= k
		off += k
		if f.left == 0 {
			f.nhdr = 0
		}
	}
	return off, false, nil
}
