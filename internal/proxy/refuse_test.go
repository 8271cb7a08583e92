package proxy

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/internal/pgtest"
)

// readAll reads what the proxy sends until it closes (hang guard 15 s).
func readAll(t *testing.T, c net.Conn) []byte {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("read: %v (got %q)", err, b)
	}
	return b
}

// decodeError decodes an ErrorResponse message at the start of b.
func decodeError(t *testing.T, b []byte) *pgproto3.ErrorResponse {
	t.Helper()
	if len(b) < 5 || b[0] != 'E' {
		t.Fatalf("want an ErrorResponse, got %q", b)
	}
	n := int(binary.BigEndian.Uint32(b[1:5]))
	var e pgproto3.ErrorResponse
	if err := e.Decode(b[5 : 1+n]); err != nil {
		t.Fatalf("decode: %v", err)
	}
	return &e
}

func startupPacket(t *testing.T) []byte {
	b, err := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "app", "database": "appdb"}}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRefusals: injected bytes after SSLRequest, an oversized startup
// packet, a silent client, a plaintext client on a TLS-only listener,
// direct TLS without ALPN and connections above the limit are each refused
// as described while a concurrent normal session keeps working.
func TestRefusals(t *testing.T) {
	e := newEnv(t)
	autoDir := filepath.Join(t.TempDir(), "pki")
	p := startProxy(t, Config{StartupTimeout: 500 * time.Millisecond, Upstreams: []UpstreamConfig{
		{Name: "main", Listen: "127.0.0.1:0", Conn: e.upstream(t), ClientTLS: &ClientTLS{AutoCertDir: autoDir}},
		{Name: "small", Listen: "127.0.0.1:0", Conn: e.upstream(t), MaxConnections: 2},
		{Name: "tlsonly", Listen: "127.0.0.1:0", Conn: e.upstream(t), ClientTLS: &ClientTLS{AutoCertDir: autoDir, Require: true}},
	}})
	port := p.port(t, "main")
	addr := fmt.Sprintf("127.0.0.1:%d", port)

	normal, err := pgxConnect(t, port, "sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	defer normal.Close(context.Background())
	stillServing := func(t *testing.T) {
		t.Helper()
		var n int
		if err := normal.QueryRow(context.Background(), "SELECT 41 + 1").Scan(&n); err != nil || n != 42 {
			t.Fatalf("the concurrent session broke: %v", err)
		}
	}
	dial := func(t *testing.T, a string) net.Conn {
		c, err := net.Dial("tcp", a)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	rejections := func(reason string) float64 {
		return p.metric(t, "pgtrust_client_rejections_total", map[string]string{"reason": reason})
	}

	t.Run("bytes injected after SSLRequest", func(t *testing.T) {
		c := dial(t, addr)
		ssl, _ := (&pgproto3.SSLRequest{}).Encode(nil)
		q, _ := (&pgproto3.Query{String: "DROP DATABASE appdb"}).Encode(nil)
		if _, err := c.Write(append(ssl, q...)); err != nil { // one write, as a man in the middle would
			t.Fatal(err)
		}
		er := decodeError(t, readAll(t, c))
		if er.Code != "08P01" || er.Message != "received unencrypted data after SSL request" || er.Severity != "FATAL" {
			t.Fatalf("error: %+v", er)
		}
		if rejections("injection") != 1 {
			t.Fatal("injection not counted")
		}
		stillServing(t)
	})
	t.Run("oversized startup packet", func(t *testing.T) {
		c := dial(t, addr)
		var hdr [8]byte
		binary.BigEndian.PutUint32(hdr[:], 10001)
		binary.BigEndian.PutUint32(hdr[4:], pgproto3.ProtocolVersion30)
		if _, err := c.Write(hdr[:]); err != nil {
			t.Fatal(err)
		}
		er := decodeError(t, readAll(t, c))
		if er.Code != "08P01" || er.Message != "invalid length of startup packet" {
			t.Fatalf("error: %+v", er)
		}
		if rejections("startup_too_large") != 1 {
			t.Fatal("not counted")
		}
		stillServing(t)
	})
	t.Run("silent client dropped at the startup deadline", func(t *testing.T) {
		c := dial(t, addr)
		if b := readAll(t, c); len(b) != 0 {
			t.Fatalf("silent client got %q", b)
		}
		// A client that stalls after the SSLRequest exchange too.
		c2 := dial(t, addr)
		ssl, _ := (&pgproto3.SSLRequest{}).Encode(nil)
		c2.Write(ssl)
		if b := readAll(t, c2); string(b) != "S" {
			t.Fatalf("stalled TLS client got %q", b)
		}
		waitFor(t, "timeout rejections", 5*time.Second, func() bool { return rejections("startup_timeout") == 2 })
		stillServing(t)
	})
	t.Run("GSSENCRequest answered N", func(t *testing.T) {
		c := dial(t, addr)
		g, _ := (&pgproto3.GSSEncRequest{}).Encode(nil)
		c.Write(g)
		var b [1]byte
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'N' {
			t.Fatalf("answer %q %v", b, err)
		}
	})
	t.Run("direct TLS without ALPN", func(t *testing.T) {
		c := dial(t, addr)
		tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		err := tc.Handshake()
		if err == nil {
			_, err = tc.Write(startupPacket(t))
			if err == nil {
				var b [1]byte
				_, err = tc.Read(b[:])
			}
		}
		if err == nil {
			t.Fatal("a direct TLS client without ALPN was served")
		}
		waitFor(t, "protocol rejection", 5*time.Second, func() bool { return rejections("protocol") >= 1 })
	})
	t.Run("plaintext client on a TLS-only listener", func(t *testing.T) {
		r := pgtest.Psql(t, fmt.Sprintf("host=127.0.0.1 port=%d user=app dbname=appdb sslmode=disable", p.port(t, "tlsonly")), nil)
		if r.OK || !strings.Contains(r.Stderr, "TLS is required on this listener") {
			t.Fatalf("ok=%v stderr=%q", r.OK, r.Stderr)
		}
		r = pgtest.Psql(t, fmt.Sprintf("host=127.0.0.1 port=%d user=app dbname=appdb sslmode=require", p.port(t, "tlsonly")), nil)
		if !r.OK {
			t.Fatalf("TLS client refused: %q", r.Stderr)
		}
		if rejections("tls_required") != 1 {
			t.Fatal("not counted")
		}
	})
	t.Run("above the connection limit", func(t *testing.T) {
		sp := p.port(t, "small")
		var held []*pgx.Conn
		for range 2 {
			c, err := pgxConnect(t, sp, "sslmode=disable")
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, c)
		}
		r := pgtest.Psql(t, fmt.Sprintf("host=127.0.0.1 port=%d user=app dbname=appdb sslmode=disable", sp), nil)
		if r.OK || !strings.Contains(r.Stderr, "sorry, too many clients already") {
			t.Fatalf("ok=%v stderr=%q", r.OK, r.Stderr)
		}
		_, err := pgxConnect(t, sp, "sslmode=disable")
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "53300" {
			t.Fatalf("pgx: %v", err)
		}
		if got := p.metric(t, "pgtrust_connections_active", map[string]string{"upstream": "small"}); got != 2 {
			t.Fatalf("active = %v", got)
		}
		stillServing(t)
		held[0].Close(context.Background())
		waitFor(t, "a free slot", 5*time.Second, func() bool {
			return p.metric(t, "pgtrust_connections_active", map[string]string{"upstream": "small"}) == 1
		})
		c, err := pgxConnect(t, sp, "sslmode=disable")
		if err != nil {
			t.Fatalf("after a slot freed: %v", err)
		}
		c.Close(context.Background())
		held[1].Close(context.Background())
		if rejections("too_many_connections") != 2 {
			t.Fatal("not counted")
		}
	})
}

// TestCancel: pg_sleep(30) cancelled through the proxy, from a plaintext
// and from a TLS client, returns long before 30 s.
func TestCancel(t *testing.T) {
	e := newEnv(t)
	p := startProxy(t, Config{Upstreams: []UpstreamConfig{
		{Name: "main", Listen: "127.0.0.1:0", Conn: e.upstream(t), ClientTLS: &ClientTLS{AutoCertDir: filepath.Join(t.TempDir(), "pki")}},
	}})
	for _, mode := range []string{"sslmode=disable", "sslmode=require"} {
		t.Run(mode, func(t *testing.T) {
			c, err := pgxConnect(t, p.port(t, "main"), mode)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(context.Background())
			done := make(chan error, 1)
			start := time.Now()
			go func() {
				_, err := c.Exec(context.Background(), "SELECT pg_sleep(30)")
				done <- err
			}()
			waitFor(t, "the query to run", 10*time.Second, func() bool {
				return e.srv.Exec(t, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'") == "1"
			})
			if err := c.PgConn().CancelRequest(context.Background()); err != nil {
				t.Fatalf("cancel: %v", err)
			}
			select {
			case err := <-done:
				var pe *pgconn.PgError
				if !errors.As(err, &pe) || pe.Code != "57014" {
					t.Fatalf("want query_canceled, got %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("the cancel did not reach the server")
			}
			// Generous bound: it must not be the 30 s of the sleep.
			if d := time.Since(start); d > 15*time.Second {
				t.Fatalf("cancel took %v", d)
			}
		})
	}
	if got := p.metric(t, "pgtrust_cancel_requests_total", map[string]string{"result": "forwarded"}); got != 2 {
		t.Fatalf("forwarded cancels = %v", got)
	}
	// A request with a wrong key cancels nothing.
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p.port(t, "main")))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := (&pgproto3.CancelRequest{ProcessID: 1, SecretKey: []byte{1, 2, 3, 4}}).Encode(nil)
	c.Write(req)
	readAll(t, c)
	c.Close()
	waitFor(t, "unknown cancel counted", 5*time.Second, func() bool {
		return p.metric(t, "pgtrust_cancel_requests_total", map[string]string{"result": "unknown"}) == 1
	})
}

// TestShutdownDrains: Ready turns false first, established sessions may
// finish, new connections are refused, and the rest is closed at the drain
// timeout.
func TestShutdownDrains(t *testing.T) {
	e := newEnv(t)
	t.Run("sessions finish within the drain timeout", func(t *testing.T) {
		p := startProxy(t, Config{DrainTimeout: 30 * time.Second, Upstreams: []UpstreamConfig{{Name: "main", Listen: "127.0.0.1:0", Conn: e.upstream(t)}}})
		port := p.port(t, "main")
		c, err := pgxConnect(t, port, "sslmode=disable")
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- p.Shutdown(context.Background()) }()
		waitFor(t, "not ready", 5*time.Second, func() bool { ok, why := p.Ready(); return !ok && why == "draining" })
		if !p.HealthStatus().Draining {
			t.Fatal("HealthStatus not draining")
		}
		// The established session still works while draining.
		var n int
		if err := c.QueryRow(context.Background(), "SELECT 7").Scan(&n); err != nil || n != 7 {
			t.Fatalf("session during drain: %v", err)
		}
		waitFor(t, "listener closed", 5*time.Second, func() bool {
			nc, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err == nil {
				nc.Close()
			}
			return err != nil
		})
		select {
		case err := <-done:
			t.Fatalf("Shutdown returned with a session open: %v", err)
		default:
		}
		c.Close(context.Background())
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("Shutdown did not return after the last session ended")
		}
	})
	t.Run("the rest is closed at the drain timeout", func(t *testing.T) {
		p := startProxy(t, Config{DrainTimeout: 300 * time.Millisecond, Upstreams: []UpstreamConfig{{Name: "main", Listen: "127.0.0.1:0", Conn: e.upstream(t)}}})
		c, err := pgxConnect(t, p.port(t, "main"), "sslmode=disable")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(context.Background())
		if err := p.Shutdown(context.Background()); err == nil || !strings.Contains(err.Error(), "still open") {
			t.Fatalf("Shutdown: %v", err)
		}
		if err := c.Ping(context.Background()); err == nil {
			t.Fatal("the session survived the drain timeout")
		}
		if !strings.Contains(p.logs.String(), `reason="proxy shutdown"`) {
			t.Fatal("close reason not logged")
		}
	})
}
