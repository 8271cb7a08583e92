package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/internal/pgtest"
)

// halfAuth opens a TCP connection from local (nil: any) to the proxy and
// sends a StartupMessage for the SCRAM role, then never answers. It
// returns the connection and the first message the proxy sent: 'R' (the
// SASL request: the session holds a slot and a backend) or 'E'.
func halfAuth(t *testing.T, port int, local net.Addr) (net.Conn, []byte) {
	t.Helper()
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: local}
	c, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Errorf("dial: %v", err)
		return nil, nil
	}
	pkt, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "scram", "database": "postgres"}}).Encode(nil)
	if _, err := c.Write(pkt); err != nil {
		t.Errorf("write: %v", err)
		return c, nil
	}
	return c, readMessage(t, c)
}

// readMessage reads one backend message (hang guard 30 s).
func readMessage(t *testing.T, c net.Conn) []byte {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	var hdr [5]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		t.Errorf("read message header: %v", err)
		return nil
	}
	body := make([]byte, binary.BigEndian.Uint32(hdr[1:])-4)
	if _, err := io.ReadFull(c, body); err != nil {
		t.Errorf("read message body: %v", err)
		return nil
	}
	return append(hdr[:], body...)
}

func errorCode(t *testing.T, msg []byte) (string, string) {
	t.Helper()
	if len(msg) == 0 || msg[0] != 'E' {
		t.Fatalf("want an ErrorResponse, got %q", msg)
	}
	e := decodeError(t, msg)
	return e.Code, e.Message
}

// TestHalfAuthenticatedFlood reproduces the adversarial run: 100 clients
// send a StartupMessage for a password role and never answer. Before, each
// held a slot and an upstream backend for PostgreSQL's 60 s; now at most
// max_authenticating (default max_connections/4 = 25) are admitted, the
// rest are refused at once without an upstream dial, an established session
// keeps working, the operator gets in over the Unix socket, and
// auth_timeout frees the 25 slots and backends.
func TestHalfAuthenticatedFlood(t *testing.T) {
	env := newEnv(t)
	sockDir := t.TempDir()
	r := startProxy(t, Config{
		AuthTimeout: 3 * time.Second,
		Upstreams: []UpstreamConfig{{Name: "main", Listen: "127.0.0.1:0", UnixSocketDir: sockDir, UnixSocketPort: 6432,
			Conn: env.upstream(t)}},
	})
	port := r.port(t, "main")

	established, err := pgxConnect(t, port, "")
	if err != nil {
		t.Fatalf("established session: %v", err)
	}
	defer established.Close(context.Background())
	backendsBefore := len(pgtest.ProcessesIn(env.srv.DataDir))

	const flood = 100
	conns := make([]net.Conn, flood)
	first := make([][]byte, flood)
	var wg sync.WaitGroup
	for i := range flood {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conns[i], first[i] = halfAuth(t, port, nil)
		}()
	}
	wg.Wait()
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	var held []net.Conn
	refused := map[string]int{}
	for i, m := range first {
		switch {
		case len(m) > 0 && m[0] == 'R':
			held = append(held, conns[i])
		case len(m) > 0 && m[0] == 'E':
			code, _ := errorCode(t, m)
			refused[code]++
		default:
			t.Fatalf("client %d: unexpected first message %q", i, m)
		}
	}
	wantHeld := DefaultMaxConnections / 4
	if len(held) != wantHeld || refused["53300"] != flood-wantHeld {
		t.Fatalf("held %d (want %d), refused %v (want %d x 53300)", len(held), wantHeld, refused, flood-wantHeld)
	}
	t.Logf("flood of %d: %d admitted (holding a backend each), %d refused with 53300", flood, len(held), refused["53300"])
	if got := r.metric(t, "pgtrust_client_rejections_total", map[string]string{"reason": rejectTooManyAuth}); got != float64(flood-wantHeld) {
		t.Errorf("too_many_authenticating rejections = %v, want %d", got, flood-wantHeld)
	}
	backendsDuring := len(pgtest.ProcessesIn(env.srv.DataDir))
	if extra := backendsDuring - backendsBefore; extra > wantHeld+1 {
		t.Errorf("the flood holds %d PostgreSQL processes, want at most %d", extra, wantHeld)
	}
	t.Logf("PostgreSQL processes: %d before, %d during the flood", backendsBefore, backendsDuring)

	// Established traffic keeps flowing.
	var one int
	if err := established.QueryRow(context.Background(), "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("established session during the flood: %v", err)
	}
	// The operator gets in over the Unix socket, past the authentication cap.
	res := pgtest.PsqlQuery(t, fmt.Sprintf("host=%s port=6432 user=app dbname=appdb", sockDir), "SELECT count(*) FROM pg_stat_activity", nil)
	if !res.OK {
		t.Fatalf("operator over the Unix socket during the flood: %s", res.Stderr)
	}
	// A new TCP client is refused at once while the cap is full.
	if c, err := pgxConnect(t, port, ""); err == nil {
		c.Close(context.Background())
		t.Fatal("a TCP client got in while max_authenticating sessions were held")
	} else if pe, ok := asPgError(err); !ok || pe.Code != "53300" {
		t.Fatalf("TCP client during the flood: %v, want 53300", err)
	}

	// auth_timeout ends every half-authenticated session with PostgreSQL's
	// own message, and frees the slots and backends.
	for _, c := range held {
		code, msg := errorCode(t, readMessage(t, c))
		if code != sqlstateQueryCanceled || msg != "canceling authentication due to timeout" {
			t.Fatalf("held client ended with %s %q", code, msg)
		}
	}
	waitFor(t, "authenticating slots to be released", 15*time.Second, func() bool {
		c, err := pgxConnect(t, port, "")
		if err != nil {
			return false
		}
		c.Close(context.Background())
		return true
	})
	if got := r.metric(t, "pgtrust_client_rejections_total", map[string]string{"reason": rejectAuthTimeout}); got != float64(wantHeld) {
		t.Errorf("auth_timeout rejections = %v, want %d", got, wantHeld)
	}
	// A silent client is the client's failure, not the upstream's.
	if got := r.metric(t, "pgtrust_upstream_failures_total", nil); got != 0 {
		t.Errorf("upstream failures = %v, want 0 (the clients were slow, not the server)\n%s", got, r.logs.String())
	}
	if got := r.metric(t, "pgtrust_upstream_up", nil); got != 1 {
		t.Errorf("pgtrust_upstream_up = %v, want 1", got)
	}
}

// TestAuthenticatingPerSource: max_authenticating_per_source limits one
// client address without affecting another (127.0.0.2 is loopback too).
func TestAuthenticatingPerSource(t *testing.T) {
	env := newEnv(t)
	r := startProxy(t, Config{Upstreams: []UpstreamConfig{{Name: "main", Listen: "127.0.0.1:0",
		Conn: env.upstream(t), MaxAuthenticatingPerSource: 2}}})
	port := r.port(t, "main")
	var open []net.Conn
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	for i := range 2 {
		c, m := halfAuth(t, port, nil)
		open = append(open, c)
		if len(m) == 0 || m[0] != 'R' {
			t.Fatalf("client %d from 127.0.0.1: %q, want the SASL request", i, m)
		}
	}
	c, m := halfAuth(t, port, nil)
	open = append(open, c)
	if code, msg := errorCode(t, m); code != "53300" {
		t.Fatalf("third client from 127.0.0.1: %s %s", code, msg)
	}
	if got := r.metric(t, "pgtrust_client_rejections_total", map[string]string{"reason": rejectTooManyAuthSource}); got != 1 {
		t.Errorf("per-source rejections = %v, want 1", got)
	}
	c, m = halfAuth(t, port, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)})
	open = append(open, c)
	if len(m) == 0 || m[0] != 'R' {
		t.Fatalf("client from 127.0.0.2: %q, want the SASL request", m)
	}
}

// TestSaturationReservedSlots: when max_connections minus the reserved
// slots are in use, /readyz (Ready) says so and TCP clients get 53300, yet
// the operator's Unix socket still gets one of the reserved slots.
func TestSaturationReservedSlots(t *testing.T) {
	env := newEnv(t)
	sockDir := t.TempDir()
	r := startProxy(t, Config{Upstreams: []UpstreamConfig{{Name: "main", Listen: "127.0.0.1:0",
		UnixSocketDir: sockDir, UnixSocketPort: 6433, Conn: env.upstream(t), MaxConnections: 4, ReservedConnections: 1}}})
	port := r.port(t, "main")
	if ok, why := r.Ready(); !ok {
		t.Fatalf("not ready before any session: %s", why)
	}
	for i := range 3 {
		c, err := pgxConnect(t, port, "")
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		defer c.Close(context.Background())
	}
	ok, why := r.Ready()
	if ok || !strings.Contains(why, "saturated") {
		t.Fatalf("Ready = %v %q with every TCP slot in use, want false and saturated", ok, why)
	}
	if c, err := pgxConnect(t, port, ""); err == nil {
		c.Close(context.Background())
		t.Fatal("a fourth TCP client got a reserved slot")
	} else if pe, ok := asPgError(err); !ok || pe.Code != "53300" {
		t.Fatalf("fourth TCP client: %v, want 53300", err)
	}
	res := pgtest.PsqlQuery(t, fmt.Sprintf("host=%s port=6433 user=app dbname=appdb", sockDir), "SELECT 1", nil)
	if !res.OK {
		t.Fatalf("operator over the Unix socket at saturation: %s", res.Stderr)
	}
}

func asPgError(err error) (*pgconn.PgError, bool) {
	var pe *pgconn.PgError
	ok := errors.As(err, &pe)
	return pe, ok
}

// TestConnectBurstWithinAuthCap: the authentication cap does not hurt
// legitimate traffic. pgbench reconnecting for every transaction (-C) with
// 20 clients (near the default cap of 25) gets no refusal.
func TestConnectBurstWithinAuthCap(t *testing.T) {
	env := newEnv(t)
	r := startProxy(t, Config{Upstreams: []UpstreamConfig{{Name: "main", Listen: "127.0.0.1:0", Conn: env.upstream(t)}}})
	vars := map[string]string{"PGHOST": "127.0.0.1", "PGPORT": fmt.Sprint(r.port(t, "main")), "PGUSER": "app", "PGDATABASE": "appdb", "PGSSLMODE": "disable"}
	if out, err := pgbench(t, vars, "-i", "-s", "1", "-q"); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	out, err := pgbench(t, vars, "-S", "-C", "-c", "20", "-j", "2", "-t", "5", "-n")
	if err != nil || !strings.Contains(out, "number of transactions actually processed: 100/100") {
		t.Fatalf("pgbench -C: %v\n%s", err, out)
	}
	if got := r.metric(t, "pgtrust_client_rejections_total", nil); got != 0 {
		t.Errorf("%v refusals during a legitimate connect burst", got)
	}
	for _, l := range lines(out) {
		if strings.HasPrefix(l, "tps") || strings.Contains(l, "average connection time") {
			t.Log(l)
		}
	}
}
