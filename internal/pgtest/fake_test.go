package pgtest

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgtrust/pgtrust/internal/pgwire"
)

// sslRequest is the 8-byte SSLRequest packet.
var sslRequest = func() []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint32(b[0:4], 8)
	binary.BigEndian.PutUint32(b[4:8], pgwire.SSLRequestCode)
	return b
}()

func dialFake(t *testing.T, host string, port int) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// Bounds every read so a broken fake fails the test instead of hanging it.
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	return c
}

func readN(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

func write(t *testing.T, c net.Conn, b []byte) {
	t.Helper()
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
}

func fakeDSN(host string, port int, extra string) string {
	return "host=" + host + " port=" + strconv.Itoa(port) + " user=postgres dbname=postgres " + extra
}

func TestFakeRefuseSSL(t *testing.T) {
	host, port := FakeServer(t, FakeRefuseSSL)
	c := dialFake(t, host, port)
	write(t, c, sslRequest)
	if b := readN(t, c, 1); b[0] != 'N' {
		t.Fatalf("answer to SSLRequest = %q, want N", b)
	}
	fe := pgproto3.NewFrontend(c, c)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "postgres", "database": "postgres"}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var sawAuthOK, sawKey bool
	var version string
	for done := false; !done; {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		switch m := msg.(type) {
		case *pgproto3.AuthenticationOk:
			sawAuthOK = true
		case *pgproto3.ParameterStatus:
			if m.Name == "server_version" {
				version = m.Value
			}
		case *pgproto3.BackendKeyData:
			sawKey = true
		case *pgproto3.ReadyForQuery:
			done = true
		default:
			t.Fatalf("unexpected %T", msg)
		}
	}
	if !sawAuthOK || !sawKey || version != FakeServerVersion {
		t.Fatalf("startup: authOK %v key %v version %q", sawAuthOK, sawKey, version)
	}
	fe.Send(&pgproto3.Query{String: "SELECT 1"})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	if rows := expectUntilReady(t, fe); len(rows) != 1 || rows[0] != "1" {
		t.Fatalf("SELECT 1 rows = %v", rows)
	}

	// libpq agrees: a plaintext-only server.
	r := Psql(t, fakeDSN(host, port, "sslmode=prefer"), nil)
	if !r.OK || strings.TrimSpace(r.Stdout) != "1" {
		t.Fatalf("psql sslmode=prefer: %+v", r)
	}
	wantOK(t, Psql(t, fakeDSN(host, port, "sslmode=disable"), nil))
	wantFail(t, Psql(t, fakeDSN(host, port, "sslmode=require"), nil), "server does not support SSL, but SSL was required")
}

func TestFakeErrorOnSSL(t *testing.T) {
	host, port := FakeServer(t, FakeErrorOnSSL)
	c := dialFake(t, host, port)
	write(t, c, sslRequest)
	fe := pgproto3.NewFrontend(c, c)
	msg, err := fe.Receive()
	if err != nil {
		t.Fatal(err)
	}
	e, ok := msg.(*pgproto3.ErrorResponse)
	if !ok || e.Message != FakeSSLErrorMessage || e.Severity != "FATAL" {
		t.Fatalf("got %T %+v, want ErrorResponse %q", msg, msg, FakeSSLErrorMessage)
	}
	// libpq 15 reports its own words, not the server's message.
	wantFail(t, Psql(t, fakeDSN(host, port, "sslmode=require"), nil), "server sent an error response during SSL exchange")
}

func TestFakeInjectAfterS(t *testing.T) {
	host, port := FakeServer(t, FakeInjectAfterS)
	c := dialFake(t, host, port)
	write(t, c, sslRequest)
	got := readN(t, c, 1+len(InjectedBytes))
	if got[0] != 'S' || !bytes.Equal(got[1:], InjectedBytes) {
		t.Fatalf("got %q, want 'S' + %q", got, InjectedBytes)
	}
	// Having consumed the injected bytes, a TLS handshake with the fake works.
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake after injection: %v", err)
	}
	if len(tc.ConnectionState().PeerCertificates) != 1 {
		t.Error("fake did not present its self-signed certificate")
	}
	fe := pgproto3.NewFrontend(tc, tc)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "postgres"}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	expectUntilReady(t, fe)

	// libpq (>= 14) detects the injection.
	wantFail(t, Psql(t, fakeDSN(host, port, "sslmode=require"), nil), "received unencrypted data after SSL response")
}

func TestFakeGarbage(t *testing.T) {
	host, port := FakeServer(t, FakeGarbage)
	c := dialFake(t, host, port)
	write(t, c, sslRequest)
	if b := readN(t, c, 1); b[0] != 'X' {
		t.Fatalf("answer = %q, want X", b)
	}
	wantFail(t, Psql(t, fakeDSN(host, port, "sslmode=require"), nil), "received invalid response to SSL negotiation: X")
}

func TestFakeSilent(t *testing.T) {
	host, port := FakeServer(t, FakeSilent)
	c := dialFake(t, host, port)
	write(t, c, sslRequest)
	// Nothing ever comes back: the read ends by our deadline, not by data or EOF.
	if err := c.SetReadDeadline(time.Now().Add(300 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	n, err := c.Read(make([]byte, 1))
	var ne net.Error
	if n != 0 || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read from silent fake: n=%d err=%v, want a timeout", n, err)
	}
}

func TestFakeCloseImmediately(t *testing.T) {
	host, port := FakeServer(t, FakeCloseImmediately)
	c := dialFake(t, host, port)
	if n, err := c.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("read: n=%d err=%v, want EOF", n, err)
	}
	wantFail(t, Psql(t, fakeDSN(host, port, "sslmode=require"), nil), "server closed the connection unexpectedly")
}

func TestFakeHTTP(t *testing.T) {
	host, port := FakeServer(t, FakeHTTP)
	c := dialFake(t, host, port)
	write(t, c, sslRequest)
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != FakeHTTPResponse || !strings.HasPrefix(string(b), "HTTP/1.1 400 ") {
		t.Fatalf("got %q", b)
	}
	// libpq sees 'H' as the answer to its SSLRequest.
	wantFail(t, Psql(t, fakeDSN(host, port, "sslmode=require"), nil), "received invalid response to SSL negotiation: H")
}

func TestFakeCleanupClosesEverything(t *testing.T) {
	var host string
	var port int
	var held net.Conn
	t.Run("fake", func(t *testing.T) {
		host, port = FakeServer(t, FakeSilent)
		var err error
		held, err = net.Dial("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			t.Fatal(err)
		}
		// Make sure the fake has accepted it before the cleanup runs.
		write(t, held, sslRequest)
	})
	defer held.Close()
	if err := held.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	// EOF or a reset: the server side is gone. A deadline: it was left open.
	_, err := held.Read(make([]byte, 1))
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		t.Error("held connection still open after cleanup")
	case errors.Is(err, io.EOF), err != nil && strings.Contains(err.Error(), "reset"):
	default:
		t.Errorf("held connection after cleanup: %v", err)
	}
	if c, err := net.Dial("tcp", net.JoinHostPort(host, strconv.Itoa(port))); err == nil {
		c.Close()
		t.Error("fake still accepting after cleanup")
	}
}

func TestFakeBehaviourString(t *testing.T) {
	if FakeInjectAfterS.String() != "FakeInjectAfterS" || FakeBehaviour(99).String() != "FakeBehaviour(99)" {
		t.Error("String()")
	}
}
