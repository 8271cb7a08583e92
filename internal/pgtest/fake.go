package pgtest

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/internal/pgwire"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

// FakeBehaviour selects what a fake server does with each connection. Fakes
// exist only for what no real server does.
type FakeBehaviour int

const (
	// FakeRefuseSSL answers SSLRequest (and GSSENCRequest) with 'N', then
	// serves a plaintext session: AuthenticationOk, ParameterStatus,
	// BackendKeyData, ReadyForQuery, and a one-row answer to "SELECT 1".
	FakeRefuseSSL FakeBehaviour = iota
	// FakeErrorOnSSL answers SSLRequest with an ErrorResponse ('E'), as a
	// server that cannot fork a backend does.
	FakeErrorOnSSL
	// FakeInjectAfterS answers 'S' followed in the same write by
	// InjectedBytes (CVE-2021-23222), then does a TLS handshake with a
	// self-signed certificate and serves a session like FakeRefuseSSL's.
	FakeInjectAfterS
	// FakeGarbage answers SSLRequest with 'X'.
	FakeGarbage
	// FakeSilent accepts and never answers.
	FakeSilent
	// FakeCloseImmediately accepts and closes.
	FakeCloseImmediately
	// FakeHTTP answers anything with an HTTP/1.1 400 response.
	FakeHTTP
)

var fakeNames = map[FakeBehaviour]string{
	FakeRefuseSSL: "FakeRefuseSSL", FakeErrorOnSSL: "FakeErrorOnSSL", FakeInjectAfterS: "FakeInjectAfterS",
	FakeGarbage: "FakeGarbage", FakeSilent: "FakeSilent", FakeCloseImmediately: "FakeCloseImmediately", FakeHTTP: "FakeHTTP",
}

func (b FakeBehaviour) String() string {
	if n, ok := fakeNames[b]; ok {
		return n
	}
	return fmt.Sprintf("FakeBehaviour(%d)", int(b))
}

// Wire constants of the fakes, exported so tests can assert on them.
var (
	// InjectedBytes is what FakeInjectAfterS sends right after 'S': a
	// complete ErrorResponse a vulnerable client would take as the server's.
	InjectedBytes = encodeBackend(&pgproto3.ErrorResponse{
		Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "28000", Message: "injected by a man in the middle",
	})
	// FakeSSLErrorMessage is the message of FakeErrorOnSSL's ErrorResponse.
	FakeSSLErrorMessage = "sorry, too many clients already"
	// FakeServerVersion is the server_version a fake session reports.
	FakeServerVersion = "15.0 (pgtest fake)"
	// FakeHTTPResponse is FakeHTTP's answer.
	FakeHTTPResponse = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 11\r\nConnection: close\r\n\r\nBad Request"
)

// fakeIOTimeout bounds every read and write of a fake (FakeSilent excepted:
// it waits for the client or the cleanup), so handlers always end.
const fakeIOTimeout = 30 * time.Second

// FakeServer listens on 127.0.0.1:0 and handles each connection with
// behaviour. The listener and all connections are closed, and the handlers
// waited for, in t.Cleanup.
func FakeServer(t testing.TB, behaviour FakeBehaviour) (host string, port int) {
	t.Helper()
	if _, ok := fakeNames[behaviour]; !ok {
		t.Fatalf("pgtest: unknown fake behaviour %d", int(behaviour))
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("pgtest: fake server listen: %v", err)
	}
	f := &fake{behaviour: behaviour, conns: map[net.Conn]struct{}{}}
	if behaviour == FakeInjectAfterS {
		f.tlsConfig = &tls.Config{Certificates: []tls.Certificate{testpki.SelfSigned(t).TLSCertificate()}}
	}
	f.wg.Add(1)
	go f.serve(l)
	t.Cleanup(func() {
		l.Close()
		f.mu.Lock()
		f.closed = true
		for c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	a := l.Addr().(*net.TCPAddr)
	return a.IP.String(), a.Port
}

type fake struct {
	behaviour FakeBehaviour
	tlsConfig *tls.Config
	wg        sync.WaitGroup
	mu        sync.Mutex
	closed    bool
	conns     map[net.Conn]struct{}
}

func (f *fake) serve(l net.Listener) {
	defer f.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			return // listener closed at cleanup
		}
		f.mu.Lock()
		if f.closed {
			f.mu.Unlock()
			c.Close()
			return
		}
		f.conns[c] = struct{}{}
		f.wg.Add(1)
		f.mu.Unlock()
		go func() {
			defer f.wg.Done()
			defer func() {
				f.mu.Lock()
				delete(f.conns, c)
				f.mu.Unlock()
				c.Close()
			}()
			f.handle(c)
		}()
	}
}

// handle runs one connection. Errors just end it: a fake has nobody to
// report to, and the client under test sees the closed connection.
func (f *fake) handle(c net.Conn) {
	switch f.behaviour {
	case FakeCloseImmediately:
		return
	case FakeSilent:
		_, _ = io.Copy(io.Discard, c) // until the client or the cleanup closes it
		return
	case FakeHTTP:
		_ = c.SetDeadline(time.Now().Add(fakeIOTimeout))
		if _, err := c.Read(make([]byte, 4096)); err != nil {
			return
		}
		if _, err := c.Write([]byte(FakeHTTPResponse)); err != nil {
			return
		}
		// Half-close and drain: closing with unread input would send a RST
		// that can destroy the response before the client reads it.
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		_, _ = io.Copy(io.Discard, c)
		return
	}

	_ = c.SetDeadline(time.Now().Add(fakeIOTimeout))
	for {
		code, err := readStartupCode(c)
		if err != nil {
			return
		}
		if code != pgwire.SSLRequestCode && code != pgwire.GSSEncRequestCode {
			// A StartupMessage straight away (sslmode=disable) or anything else.
			if f.behaviour == FakeRefuseSSL && isProtocolVersion(code) {
				serveSession(c, true)
			}
			return
		}
		switch f.behaviour {
		case FakeRefuseSSL:
			if _, err := c.Write([]byte{'N'}); err != nil {
				return
			}
			continue // the client may now send GSSENCRequest or its StartupMessage
		case FakeErrorOnSSL:
			_, _ = c.Write(encodeBackend(&pgproto3.ErrorResponse{
				Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "53300", Message: FakeSSLErrorMessage,
			}))
			return
		case FakeGarbage:
			if _, err := c.Write([]byte{'X'}); err == nil {
				_, _ = io.Copy(io.Discard, c)
			}
			return
		case FakeInjectAfterS:
			if code == pgwire.GSSEncRequestCode {
				if _, err := c.Write([]byte{'N'}); err != nil {
					return
				}
				continue
			}
			if _, err := c.Write(append([]byte{'S'}, InjectedBytes...)); err != nil {
				return
			}
			tc := tls.Server(c, f.tlsConfig)
			if err := tc.Handshake(); err != nil {
				return
			}
			serveSession(tc, false)
			_ = tc.Close()
			return
		}
		return
	}
}

// readStartupCode reads one length-prefixed startup packet and returns its
// code (the protocol version for a StartupMessage), leaving nothing buffered
// so a TLS handshake can follow on the raw connection.
func readStartupCode(c net.Conn) (uint32, error) {
	var hdr [8]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return 0, err
	}
	n := int(binary.BigEndian.Uint32(hdr[:4]))
	if n < 8 || n > 10000 {
		return 0, fmt.Errorf("bad startup packet length %d", n)
	}
	if _, err := io.CopyN(io.Discard, c, int64(n-8)); err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint32(hdr[4:8]), nil
}

func isProtocolVersion(code uint32) bool { return code>>16 == 3 }

// serveSession serves a minimal trusting backend. If startupRead, the
// StartupMessage has already been consumed.
func serveSession(c net.Conn, startupRead bool) {
	be := pgproto3.NewBackend(c, c)
	if !startupRead {
		msg, err := be.ReceiveStartupMessage()
		if err != nil {
			return
		}
		if _, ok := msg.(*pgproto3.StartupMessage); !ok {
			return
		}
	}
	be.Send(&pgproto3.AuthenticationOk{})
	for _, p := range [][2]string{
		{"server_version", FakeServerVersion},
		{"server_encoding", "UTF8"},
		{"client_encoding", "UTF8"},
		{"standard_conforming_strings", "on"},
		{"integer_datetimes", "on"},
		{"DateStyle", "ISO, MDY"},
	} {
		be.Send(&pgproto3.ParameterStatus{Name: p[0], Value: p[1]})
	}
	be.Send(&pgproto3.BackendKeyData{ProcessID: 4242, SecretKey: []byte{0, 0, 0x10, 0x92}})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if err := be.Flush(); err != nil {
		return
	}
	for {
		msg, err := be.Receive()
		if err != nil {
			return
		}
		switch m := msg.(type) {
		case *pgproto3.Query:
			q := strings.TrimRight(strings.TrimSpace(m.String), "; \t\n")
			if strings.EqualFold(q, "SELECT 1") {
				be.Send(&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{
					Name: []byte("?column?"), DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1,
				}}})
				be.Send(&pgproto3.DataRow{Values: [][]byte{[]byte("1")}})
				be.Send(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")})
			} else {
				be.Send(&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "0A000",
					Message: "pgtest fake server only answers SELECT 1"})
			}
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
			if err := be.Flush(); err != nil {
				return
			}
		case *pgproto3.Terminate:
			return
		default:
			return
		}
	}
}

// encodeBackend returns the wire bytes of a backend message.
func encodeBackend(msg pgproto3.BackendMessage) []byte {
	b, err := msg.Encode(nil)
	if err != nil {
		panic(errors.New("pgtest: encode " + fmt.Sprintf("%T", msg) + ": " + err.Error()))
	}
	return b
}
