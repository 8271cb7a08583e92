package pgtls

import (
	"fmt"
	"io"
	"net"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgwire"
)

// ALPNProtocol is the IANA-registered ALPN name of PostgreSQL.
const ALPNProtocol = pgwire.ALPN

// requestSSL sends an SSLRequest and reads the one-byte answer. It reads
// exactly one byte from the raw socket, never through a buffer, so bytes a
// man-in-the-middle appends after 'S' cannot be taken for server output
// (CVE-2021-23222); and it then checks that nothing else has arrived.
func requestSSL(conn net.Conn) (byte, error) {
	if _, err := conn.Write(pgwire.SSLRequest()); err != nil {
		return 0, fmt.Errorf("could not send SSL negotiation packet: %w", err)
	}
	var b [1]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		return 0, err
	}
	switch b[0] {
	case 'S':
		if n := pgwire.PendingBytes(conn); n > 0 {
			return 'S', failure.New(failure.InjectionDetected, "received unencrypted data after SSL response").
				WithEvidence("%d unexpected byte(s) arrived right after the server's 'S' and before the TLS handshake began; a legitimate server sends nothing there (CVE-2021-23222)", n).
				WithFix("treat the network path to this server as hostile: something between you and the server is injecting data; use sslmode=verify-full and investigate the path")
		}
		return 'S', nil
	case 'N':
		return 'N', nil
	case 'E':
		return 'E', failure.New(failure.ProtocolError, "server sent an error response during SSL exchange").
			WithEvidence("the server answered the SSLRequest with an ErrorResponse ('E'); its text is not shown because the server is not authenticated yet (CVE-2024-10977)").
			WithFix("check the server log; the server is probably too old, out of processes, or not PostgreSQL")
	}
	return b[0], failure.New(failure.ProtocolError, "received invalid response to SSL negotiation: %c", printable(b[0])).
		WithEvidence("the first byte answered to the SSLRequest was 0x%02x; a PostgreSQL server answers 'S' or 'N'", b[0]).
		WithFix("check that host and port point at a PostgreSQL server, not another service or a proxy that does not speak PostgreSQL's protocol")
}

func printable(b byte) rune {
	if b >= 0x20 && b < 0x7f {
		return rune(b)
	}
	return '?'
}

// firstByteConn remembers the first byte the TLS layer reads, so that a
// failed handshake whose first record was not TLS at all can be classified
// as injected plaintext rather than a generic handshake failure.
type firstByteConn struct {
	net.Conn
	first    byte
	haveByte bool
}

func (c *firstByteConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && !c.haveByte {
		c.first, c.haveByte = p[0], true
	}
	return n, err
}

// NetConn returns the connection underneath, as tls.Conn.NetConn does, so
// that a caller can find a transport it wrapped (Options.WrapTransport).
func (c *firstByteConn) NetConn() net.Conn { return c.Conn }

// looksLikeTLSRecord reports whether b is a TLS record content type.
func looksLikeTLSRecord(b byte) bool { return b >= 20 && b <= 24 }
