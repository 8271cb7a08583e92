package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/failure"
)

// Request codes of the pre-startup packets (protocol §55.7).
const (
	cancelRequestCode = 80877102
	sslRequestCode    = 80877103
	gssEncRequestCode = 80877104

	tlsHandshakeRecord = 0x16 // first byte of a TLS ClientHello (direct TLS)

	// maxAuthMessage caps a client message during authentication; PostgreSQL
	// allows at most PG_MAX_AUTH_TOKEN_LENGTH (65535) bytes of token.
	maxAuthMessage = 65535 + 1024
	// maxBackendMessage caps an upstream message during authentication
	// (ParameterStatus, NoticeResponse, ErrorResponse are small).
	maxBackendMessage = 1 << 20
)

// SQLSTATEs the proxy sends itself.
const (
	sqlstateConnectionFailure = "08006"
	sqlstateProtocolViolation = "08P01"
	sqlstateTooManyClients    = "53300"
	sqlstateCannotConnectNow  = "57P03"
	sqlstateInvalidAuthSpec   = "28000"
)

// errProtocol marks a client that does not speak the protocol.
var errProtocol = errors.New("protocol violation")

// readExact reads exactly len(buf) bytes: the proxy never reads ahead on the
// client socket before TLS, so injected bytes cannot hide in a buffer.
func readExact(r io.Reader, buf []byte) error {
	_, err := io.ReadFull(r, buf)
	return err
}

// readMessage reads one typed message (type byte, length, body) exactly,
// appending it to buf[:0]; the result holds the whole message.
func readMessage(r io.Reader, buf []byte, max int) ([]byte, error) {
	buf = append(buf[:0], 0, 0, 0, 0, 0)
	if err := readExact(r, buf); err != nil {
		return buf, err
	}
	n := int(int32(binary.BigEndian.Uint32(buf[1:5])))
	if n < 4 || n-4 > max {
		return buf, fmt.Errorf("%w: message %q of invalid length %d", errProtocol, buf[0], n)
	}
	if cap(buf) < 1+n {
		nb := make([]byte, 5, 1+n)
		copy(nb, buf)
		buf = nb
	}
	buf = buf[:1+n]
	err := readExact(r, buf[5:])
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return buf, err
}

// errorResponse encodes a FATAL ErrorResponse.
func errorResponse(code, message, detail, hint string) []byte {
	b, _ := (&pgproto3.ErrorResponse{
		Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code,
		Message: message, Detail: detail, Hint: hint,
	}).Encode(nil)
	return b
}

// upstreamErrorResponse renders an upstream failure for the client:
// "pgtrust: upstream NAME: <class>: <message>", the evidence as Detail and
// the fix as Hint.
func upstreamErrorResponse(name string, err error) []byte {
	r := failure.ReportOf(err)
	return errorResponse(sqlstateFor(r.Class), fmt.Sprintf("pgtrust: upstream %s: %s: %s", name, r.Class, r.Message), r.Evidence, r.Fix)
}

// sqlstateFor maps a failure class to the SQLSTATE the client sees.
func sqlstateFor(c failure.Class) string {
	switch c {
	case failure.PgHbaReject, failure.AuthFailed, failure.ClientCertRejected, failure.ClientCertRequired:
		return sqlstateInvalidAuthSpec
	case failure.ProtocolError, failure.InjectionDetected:
		return sqlstateProtocolViolation
	}
	return sqlstateConnectionFailure
}

// prefixConn replays bytes already read (the start of a direct-TLS
// ClientHello) before reading from the connection.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// closeWrite half-closes c when it supports it (TCP, Unix, TLS), so the peer
// sees the end of the stream while data still flows the other way.
func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}
