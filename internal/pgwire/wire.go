// Package pgwire holds the pre-startup protocol pieces that both sides of
// pgtrust share: the request codes, the SSLRequest packet, exact (unbuffered)
// reads, the non-consuming peek that detects injected bytes, and small
// connection wrappers. Message encoding proper is pgproto3's job; this
// package only covers what happens before a StartupMessage, where buffering
// is a security bug (CVE-2021-23214, CVE-2021-23222).
package pgwire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
)

// Request codes of the pre-startup packets (protocol §55.7).
const (
	CancelRequestCode = 80877102
	SSLRequestCode    = 80877103
	GSSEncRequestCode = 80877104

	// ALPN is the IANA-registered ALPN protocol name of PostgreSQL.
	ALPN = "postgresql"

	// TLSHandshakeRecord is the first byte of a TLS ClientHello: a client
	// that starts with it is doing direct TLS (PostgreSQL 17+).
	TLSHandshakeRecord = 0x16
)

// SSLRequest returns the 8-byte packet asking the server to start TLS.
func SSLRequest() []byte {
	var b [8]byte
	binary.BigEndian.PutUint32(b[0:4], 8)
	binary.BigEndian.PutUint32(b[4:8], SSLRequestCode)
	return b[:]
}

// ErrProtocol marks a peer that does not speak the protocol.
var ErrProtocol = errors.New("protocol violation")

// ReadExact reads exactly len(buf) bytes, never more: before TLS nothing may
// be read ahead, so injected bytes cannot hide in a buffer.
func ReadExact(r io.Reader, buf []byte) error {
	_, err := io.ReadFull(r, buf)
	return err
}

// ReadMessage reads one typed message (type byte, length, body) exactly,
// appending it to buf[:0]; the result holds the whole message. A length
// below 4 or a body above max is ErrProtocol.
func ReadMessage(r io.Reader, buf []byte, max int) ([]byte, error) {
	buf = append(buf[:0], 0, 0, 0, 0, 0)
	if err := ReadExact(r, buf); err != nil {
		return buf, err
	}
	n := int(int32(binary.BigEndian.Uint32(buf[1:5])))
	if n < 4 || n-4 > max {
		return buf, fmt.Errorf("%w: message %q of invalid length %d", ErrProtocol, buf[0], n)
	}
	if cap(buf) < 1+n {
		nb := make([]byte, 5, 1+n)
		copy(nb, buf)
		buf = nb
	}
	buf = buf[:1+n]
	err := ReadExact(r, buf[5:])
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return buf, err
}

// PrefixConn replays bytes already read (the start of a direct-TLS
// ClientHello) before reading from the connection.
type PrefixConn struct {
	net.Conn
	Prefix []byte
}

func (c *PrefixConn) Read(p []byte) (int, error) {
	if len(c.Prefix) > 0 {
		n := copy(p, c.Prefix)
		c.Prefix = c.Prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// SyscallConn exposes the socket once the prefix has been read, so that
// the proxy's event loop can take it after the TLS handshake; taking it
// earlier would lose the prefix.
func (c *PrefixConn) SyscallConn() (syscall.RawConn, error) {
	if len(c.Prefix) > 0 {
		return nil, errors.New("pgwire: the replayed prefix is not read yet")
	}
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.New("pgwire: the connection has no descriptor")
	}
	return sc.SyscallConn()
}

// CloseWrite half-closes c when it supports it (TCP, Unix, TLS), so the peer
// sees the end of the stream while data still flows the other way; other
// connections are closed.
func CloseWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}
