package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/internal/pgwire"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

// fuzzMaxStartup is the proxy's MaxStartupPacket in FuzzSessionStartup; the
// oracle needs it to know which lengths are refused.
const fuzzMaxStartup = 10000

// fuzzHarness is one proxy with a plaintext listener and a TLS listener,
// both in front of a dial counter: an upstream that accepts, counts and
// closes. It stands where PostgreSQL would, because the fuzzer checks
// whether the proxy dials at all, not what PostgreSQL answers.
type fuzzHarness struct {
	plain, tls string
	dials      atomic.Int64
}

func newFuzzHarness(f *testing.F) *fuzzHarness {
	h := &fuzzHarness{}
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { up.Close() })
	go func() {
		for {
			c, err := up.Accept()
			if err != nil {
				return
			}
			// Counted before answering: the session ends (and the client
			// sees EOF) only after this answer, so the count is settled by
			// the time the client's read returns.
			h.dials.Add(1)
			go refuseLikePostgres(c)
		}
	}()
	conn, err := connstring.ParseWithEnv(fmt.Sprintf("host=127.0.0.1 port=%d sslmode=disable", up.Addr().(*net.TCPAddr).Port),
		map[string]string{}, f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	ca := testpki.NewRootCA(f, "pgtrust fuzz CA")
	leaf := ca.Server(f)
	dir := f.TempDir()
	certFile := testpki.WriteFile(f, dir, "server.crt", leaf.ChainPEM, 0o644)
	keyFile := testpki.WriteFile(f, dir, "server.key", leaf.KeyPEM, 0o600)
	p, err := New(Config{
		StartupTimeout:   5 * time.Second,
		MaxStartupPacket: fuzzMaxStartup,
		Upstreams: []UpstreamConfig{
			{Name: "plain", Listen: "127.0.0.1:0", Conn: conn},
			{Name: "tls", Listen: "127.0.0.1:0", Conn: conn, ClientTLS: &ClientTLS{CertFile: certFile, KeyFile: keyFile}},
		},
	})
	if err != nil {
		f.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		p.Close()
		f.Fatal(err)
	}
	f.Cleanup(func() { p.Close() })
	h.plain = p.Addrs()["plain"][0].String()
	h.tls = p.Addrs()["tls"][0].String()
	return h
}

// upstreamRefusal is what PostgreSQL sends a client that pg_hba.conf
// rejects; the dial counter answers every startup packet with it.
var upstreamRefusal, _ = (&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "28000",
	Message: "no pg_hba.conf entry for host \"127.0.0.1\", user \"app\", database \"appdb\", no encryption"}).Encode(nil)

// refuseLikePostgres reads one startup packet and answers upstreamRefusal.
func refuseLikePostgres(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	var hdr [4]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	n := int(binary.BigEndian.Uint32(hdr[:]))
	if n < 4 || n > 1<<20 {
		return
	}
	if _, err := io.CopyN(io.Discard, c, int64(n-4)); err != nil {
		return
	}
	_, _ = c.Write(upstreamRefusal)
}

// startupOutcome is what the oracle expects of a session fed data.
type startupOutcome struct {
	answers []byte // the one-byte answers ('N', 'S') the proxy must send first
	dial    bool   // a well-formed 3.x StartupMessage was reached: the proxy dials
	tls     bool   // a TLS handshake starts after answers: any bytes may follow
	sslReq  bool   // the last packet was an SSLRequest on the TLS listener: 'S' + TLS, or an ErrorResponse (injection)
}

// expectStartup walks data as PostgreSQL's ProcessStartupPacket does,
// independently of session.negotiate, and says what must happen: direct TLS
// only as the first packet, at most one SSLRequest and one GSSENCRequest
// (TLS counts as GSS done), a repeated one is an unsupported protocol, and a
// 3.x StartupMessage goes upstream only if it names a user.
func expectStartup(data []byte, tlsListener bool) startupOutcome {
	var out startupOutcome
	sslDone, gssDone := false, false
	for first := true; ; first = false {
		if len(data) < 4 {
			return out // EOF before a complete header: close, no dial
		}
		if first && data[0] == pgwire.TLSHandshakeRecord {
			// Direct TLS: refused on the plaintext listener, a handshake
			// that fixed bytes can never complete on the TLS listener.
			out.tls = tlsListener
			return out
		}
		n := int(int32(binary.BigEndian.Uint32(data)))
		if n < 8 || n > fuzzMaxStartup || len(data) < n {
			return out
		}
		body := data[4:n]
		code := binary.BigEndian.Uint32(body)
		switch {
		case code == pgwire.SSLRequestCode && !sslDone:
			if tlsListener {
				out.sslReq = true
				return out
			}
			sslDone = true
			out.answers = append(out.answers, 'N')
		case code == pgwire.GSSEncRequestCode && !gssDone:
			gssDone = true
			out.answers = append(out.answers, 'N')
		case code == pgwire.CancelRequestCode:
			return out // no session has a key: nothing is forwarded
		case code>>16 != 3:
			return out
		default:
			var msg pgproto3.StartupMessage
			out.dial = msg.Decode(body) == nil && msg.Parameters["user"] != ""
			return out
		}
		data = data[n:]
	}
}

// FuzzSessionStartup feeds arbitrary bytes to the proxy's listeners as a
// client's first packets (SSLRequest, GSSENCRequest, CancelRequest,
// StartupMessage, direct TLS) over real loopback sockets, then half-closes.
// Invariants: the proxy never panics, closes within the hang guard, dials the
// upstream if and only if the bytes hold a well-formed 3.x StartupMessage
// after zero or more negotiation requests, and sends the client only
// one-byte negotiation answers, then a TLS handshake, the upstream's own
// answer, or at most one well-formed ErrorResponse of its own.
func FuzzSessionStartup(f *testing.F) {
	h := newFuzzHarness(f)
	startup, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "app", "database": "appdb", "application_name": "fuzz"}}).Encode(nil)
	ssl, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	gss, _ := (&pgproto3.GSSEncRequest{}).Encode(nil)
	cancel, _ := (&pgproto3.CancelRequest{ProcessID: 42, SecretKey: []byte{1, 2, 3, 4}}).Encode(nil)
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	for _, tlsL := range []bool{false, true} {
		f.Add(tlsL, startup)
		f.Add(tlsL, cat(ssl, startup))
		f.Add(tlsL, cat(gss, startup))
		f.Add(tlsL, cat(gss, ssl, startup))
		f.Add(tlsL, cancel)
		f.Add(tlsL, []byte{0x16, 3, 1, 0, 5, 1, 0, 0, 1, 0})
		f.Add(tlsL, []byte{0, 0, 0x27, 0x11, 0, 3, 0, 0}) // 10001 bytes announced
		f.Add(tlsL, []byte{0xff, 0xff, 0xff, 0xff, 0, 3, 0, 0})
		f.Add(tlsL, []byte{0, 0, 0, 8, 0, 2, 0, 0}) // protocol 2.0
		f.Add(tlsL, startup[:len(startup)-3])
	}
	f.Fuzz(func(t *testing.T, tlsListener bool, data []byte) {
		addr := h.plain
		if tlsListener {
			addr = h.tls
		}
		want := expectStartup(data, tlsListener)
		before := h.dials.Load()
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		wrote := make(chan error, 1)
		go func() {
			_, err := c.Write(data)
			if err == nil {
				err = c.(*net.TCPConn).CloseWrite()
			}
			wrote <- err
		}()
		// Hang guard, well above the proxy's 5 s startup timeout.
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
		got, readErr := io.ReadAll(c)
		<-wrote
		if isTimeout(readErr) {
			t.Fatalf("the proxy neither answered nor closed within 20 s (got %q)", got)
		}
		// A reset (the proxy closed with input unread) may cut the answer.
		cut := readErr != nil

		dials := h.dials.Load() - before
		if want.dial && dials == 0 {
			t.Fatalf("a well-formed StartupMessage led to no upstream dial (got %q)", got)
		}
		if !want.dial && dials != 0 {
			t.Fatalf("malformed or incomplete startup input led to %d upstream dials (got %q)", dials, got)
		}

		if !bytes.HasPrefix(got, want.answers) {
			if cut && bytes.HasPrefix(want.answers, got) {
				return
			}
			t.Fatalf("answers %q, want prefix %q", got, want.answers)
		}
		rest := got[len(want.answers):]
		switch {
		case want.tls:
			return // a TLS alert or nothing
		case want.sslReq && len(rest) > 0 && rest[0] == 'S':
			return // TLS follows
		case want.dial:
			// The upstream's refusal, relayed unchanged.
			if !bytes.Equal(rest, upstreamRefusal) && !(cut && bytes.HasPrefix(upstreamRefusal, rest)) {
				t.Fatalf("after dialing, the client got %q, want the upstream's refusal relayed", rest)
			}
			return
		}
		if len(rest) == 0 {
			if want.sslReq && !cut {
				t.Fatalf("SSLRequest on the TLS listener got neither 'S' nor an ErrorResponse")
			}
			return
		}
		checkErrorResponse(t, rest, cut)
	})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// checkErrorResponse asserts b is exactly one well-formed FATAL
// ErrorResponse (or, when cut, a prefix of one).
func checkErrorResponse(t *testing.T, b []byte, cut bool) {
	t.Helper()
	if b[0] != 'E' {
		t.Fatalf("want an ErrorResponse, got %q", b)
	}
	if len(b) < 5 {
		if cut {
			return
		}
		t.Fatalf("truncated ErrorResponse %q", b)
	}
	n := int(binary.BigEndian.Uint32(b[1:5]))
	if n < 4 || 1+n < len(b) {
		t.Fatalf("ErrorResponse length %d does not match the %d bytes sent: %q", n, len(b), b)
	}
	if 1+n > len(b) {
		if cut {
			return
		}
		t.Fatalf("truncated ErrorResponse %q", b)
	}
	var e pgproto3.ErrorResponse
	if err := e.Decode(b[5:]); err != nil {
		t.Fatalf("malformed ErrorResponse %q: %v", b, err)
	}
	if e.Severity != "FATAL" || len(e.Code) != 5 || e.Message == "" {
		t.Fatalf("ErrorResponse without FATAL severity, SQLSTATE or message: %+v", e)
	}
}
