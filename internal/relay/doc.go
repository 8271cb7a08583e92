// Package relay moves the bytes of established proxy sessions on event
// loops, one per P, instead of two goroutines per session.
//
// A session is handed over once its startup and authentication are done.
// Its two sockets leave Go's poller (each is duplicated and the Go
// connection closed) and join one loop's epoll set, level-triggered. The
// loop's epoll descriptor is itself in Go's poller, so a loop with nothing
// to do is an ordinary parked goroutine; when it runs, it reads everything
// a socket has in one read(2), decrypts and encrypts with crypto/tls over
// in-memory buffers, and writes all the records a chunk made in one
// write(2). The reads, writes and epoll calls are raw system calls: they
// never block, and a raw call does not wake the runtime's monitor thread,
// which costs a futex and a context switch per round trip when every
// system call announces itself to the scheduler.
//
// crypto/tls runs over a Conn (Wrap) that passes everything through to its
// socket until the loop takes the socket; from then on Read returns the
// bytes the loop read and a temporary "would block" error when they are
// used up, which crypto/tls does not treat as fatal, and Write appends the
// records to a buffer the loop sends.
//
// A pooled server connection outlives its client's session: with
// Hooks.Framing the loop follows the protocol's message boundaries, keeps
// the client's Terminate from the server, and at the end gives the
// upstream socket back to Go's poller, under the same net.Conn, when it
// stands between messages (Result.UpstreamKept).
//
// Only Linux has the loops; elsewhere New fails with ErrUnsupported and the
// proxy keeps its goroutine pipes, as it does for a session whose sockets
// cannot be taken (ErrNotDetachable: a connection that is not a socket).
package relay
