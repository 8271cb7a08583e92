package relay

import (
	"errors"
	"io"
	"net"
	"syscall"
	"time"
)

// ErrNotDetachable is returned by Start when a side is not a socket the
// loop can own: a TLS connection not made over Wrap, or a connection
// without a file descriptor.
var ErrNotDetachable = errors.New("relay: connection cannot be handed to an event loop")

// ErrUnsupported is returned by New where there are no event loops.
var ErrUnsupported = errors.New("relay: event loops need Linux")

// errWouldBlock is what an owned Conn's Read returns when the bytes the
// loop read are used up: a temporary net.Error, which crypto/tls returns
// without marking the connection broken (a partial record stays buffered).
var errWouldBlock error = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string   { return "relay: no more bytes read yet" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

// Conn is a socket under a crypto/tls connection. Until a loop owns it,
// every call passes through to the socket. Once owned, it is touched only
// by the loop's goroutine: Read serves the bytes the loop read, Write
// collects records for the loop to send, and Close and the deadlines do
// nothing (the loop closes the socket itself).
type Conn struct {
	net.Conn
	owned bool

	// The addresses, fixed at Wrap: a kept connection's socket changes
	// hands (Framing), and a cancel request may ask for the address
	// meanwhile.
	local, remote net.Addr

	in      []byte // read from the socket, not yet taken by crypto/tls
	readErr error  // the socket's read side ended: io.EOF or the error

	out  []byte // to send: records crypto/tls wrote, or plaintext that did not fit
	sent int    // out[:sent] is already sent
}

// Wrap returns c wrapped for crypto/tls, so that a loop can take the
// socket after the handshake: pass it to tls.Client or tls.Server (or set
// it as pgtls.Options.WrapTransport).
func Wrap(c net.Conn) net.Conn {
	return &Conn{Conn: c, local: c.LocalAddr(), remote: c.RemoteAddr()}
}

// LocalAddr is the socket's local address.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr is the socket's remote address.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// SyscallConn is the socket's, as it is now (a kept connection's socket
// changes hands); it fails while a loop owns the socket.
func (c *Conn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if c.owned || !ok {
		return nil, ErrNotDetachable
	}
	return sc.SyscallConn()
}

func (c *Conn) Read(p []byte) (int, error) {
	if !c.owned {
		if len(c.in) > 0 {
			// Read by a loop that gave the socket back (Framing) and not
			// yet taken by crypto/tls: these come first.
			n := copy(p, c.in)
			if c.in = c.in[n:]; len(c.in) == 0 {
				c.in = nil
			}
			return n, nil
		}
		return c.Conn.Read(p)
	}
	if len(c.in) == 0 {
		if c.readErr != nil {
			return 0, c.readErr
		}
		return 0, errWouldBlock
	}
	n := copy(p, c.in)
	c.in = c.in[n:]
	return n, nil
}

func (c *Conn) Write(p []byte) (int, error) {
	if !c.owned {
		return c.Conn.Write(p)
	}
	c.out = append(c.out, p...)
	return len(p), nil
}

func (c *Conn) Close() error {
	if !c.owned {
		return c.Conn.Close()
	}
	return nil
}

func (c *Conn) SetDeadline(t time.Time) error {
	if !c.owned {
		return c.Conn.SetDeadline(t)
	}
	return nil
}

func (c *Conn) SetReadDeadline(t time.Time) error {
	if !c.owned {
		return c.Conn.SetReadDeadline(t)
	}
	return nil
}

func (c *Conn) SetWriteDeadline(t time.Time) error {
	if !c.owned {
		return c.Conn.SetWriteDeadline(t)
	}
	return nil
}

// pending is what is still to be sent.
func (c *Conn) pending() []byte { return c.out[c.sent:] }

// Hooks are a session's callbacks. They run on the loop's goroutine
// (Done on one of its own) and must not block.
type Hooks struct {
	// ClientBytes and UpstreamBytes count the plaintext each side sent, as
	// it is passed on.
	ClientBytes, UpstreamBytes func(n int)
	// Grace is how long the upstream may stay silent after the client's
	// clean end was passed on before the session is closed anyway (a hung
	// server whose kernel still acknowledges would pin it forever).
	Grace time.Duration
	// Framing, if set, keeps the upstream for its owner (a pooled server
	// connection); see Framing. Grace does not apply then.
	Framing *Framing
	// Done runs once, in a goroutine of its own, after both sockets are
	// closed (or the upstream kept, with Framing).
	Done func(Result)
}

// Side names the side of a session that ended it.
type Side int

const (
	// Neither: the session was closed (Session.Close, Loops.Close).
	Neither Side = iota
	// Client: the client's side ended first.
	Client
	// Upstream: the upstream's side ended first.
	Upstream
)

// Result is how a session ended.
type Result struct {
	// First is the side whose direction ended first.
	First Side
	// ClientErr is the failure of the client-to-upstream direction (a read
	// from the client or a write to the upstream); nil for a clean end.
	ClientErr error
	// UpstreamErr is the failure of the upstream-to-client direction.
	UpstreamErr error
	// Terminated: the client's last bytes were a Terminate message.
	Terminated bool
	// UpstreamSilent: closed after Grace of upstream silence following
	// the client's clean end.
	UpstreamSilent bool
	// UpstreamEnded: the upstream's reading ended or its socket failed.
	UpstreamEnded bool
	// UpstreamKept (Framing): the upstream connection was not closed. It
	// is back in Go's poller, standing between messages, with nothing of
	// the client's left unsent; its owner uses it as before the session.
	UpstreamKept bool
	// KeepErr is why a keepable upstream could not go back to Go's poller
	// (net.FileConn failed: the process is out of descriptors, say); it
	// was closed.
	KeepErr error
}

// terminateMessage is the frontend's Terminate ('X', length 4).
const terminateMessage = "X\x00\x00\x00\x04"

// EndsWithTerminate reports whether a chunk the client sent ends with a
// Terminate message (the goroutine pipe asks it too).
func EndsWithTerminate(p []byte) bool {
	return len(p) >= 5 && string(p[len(p)-5:]) == terminateMessage
}

var _ io.ReadWriter = (*Conn)(nil)
