package dbpool_test

import (
	"context"
	"encoding/json"
	"errors"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/certtest"
	"github.com/pgtrust/pgtrust/internal/dbpool"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/pgtls"
)

type world struct {
	s      *pgtest.Server
	src    *certs.RenewingSource
	server *certs.KeyPair
	opts   *pgtls.Options
}

// newWorld starts PostgreSQL 15 that accepts the role app only over TLS
// with a client certificate verified in full (hostssl … cert clientcert=verify-full).
func newWorld(t *testing.T) *world {
	t.Helper()
	return newWorldOn(t, 15)
}

// newWorldOn is newWorld on PostgreSQL version, with extra setup statements.
func newWorldOn(t *testing.T, version int, setup ...string) *world {
	t.Helper()
	ca, err := certs.NewCA(certs.Options{CommonName: "dbpool test CA"})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := certs.IssueServer(ca, certs.Options{CommonName: "localhost", Hosts: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	key, err := srv.KeyPEM("")
	if err != nil {
		t.Fatal(err)
	}
	s := pgtest.Start(t, pgtest.Options{Version: version, SSL: true, ServerCert: srv.CertPEM(), ServerKey: key, CA: ca.CertPEM(),
		HBA:   []string{"hostssl all app 127.0.0.1/32 cert clientcert=verify-full"},
		Setup: append([]string{"CREATE ROLE app LOGIN"}, setup...)})
	src, err := certs.NewRenewingSource(context.Background(), certtest.Issuer{CA: ca, CommonName: "app", Validity: 10 * time.Minute}, certs.RenewOptions{TrustIssuedCA: true, Name: "dbpool test"})
	if err != nil {
		t.Fatal(err)
	}
	return &world{s: s, src: src, server: srv, opts: &pgtls.Options{GetClientCertificate: src.GetClientCertificate, RootCAs: src.Roots}}
}

func (w *world) pool(t *testing.T, sslmode string, o dbpool.Options) *dbpool.Pool {
	t.Helper()
	return w.poolWith(t, sslmode, w.opts, o)
}

func (w *world) poolWith(t *testing.T, sslmode string, opts *pgtls.Options, o dbpool.Options) *dbpool.Pool {
	t.Helper()
	cfg, err := connstring.Parse(w.s.DSN("host=localhost user=app dbname=postgres sslmode=" + sslmode))
	if err != nil {
		t.Fatal(err)
	}
	if o.Source == nil {
		o.Source = w.src
	}
	p, err := dbpool.New(cfg, opts, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func acquire(t *testing.T, p *dbpool.Pool) *dbpool.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := p.Acquire(ctx)
	if err != nil {
		t.Fatalf("acquire: %v", err)
	}
	return c
}

func query(t *testing.T, pg *pgconn.PgConn, sql string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rs, err := pg.Exec(ctx, sql).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	var out []string
	for _, row := range rs[len(rs)-1].Rows {
		for _, v := range row {
			out = append(out, string(v))
		}
	}
	return out
}

func clientSerial(t *testing.T, c *dbpool.Conn) string {
	t.Helper()
	return query(t, c.PgConn, "SELECT client_serial FROM pg_stat_ssl WHERE pid = pg_backend_pid()")[0]
}

func sourceSerial(t *testing.T, src certs.Source) string {
	t.Helper()
	c, err := src.GetClientCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	return c.Leaf.SerialNumber.String()
}

// waitGone waits until the server no longer lists pid.
func waitGone(t *testing.T, s *pgtest.Server, pid uint32) {
	t.Helper()
	for range 100 {
		if strings.TrimSpace(s.Exec(t, "SELECT count(*) FROM pg_stat_get_activity("+strconv.Itoa(int(pid))+")")) == "0" {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("backend %d still listed", pid)
}

func TestPool(t *testing.T) {
	w := newWorld(t)

	t.Run("reuse", func(t *testing.T) {
		p := w.pool(t, "verify-full", dbpool.Options{})
		c := acquire(t, p)
		pid := c.PgConn.PID()
		c.Release()
		stale := c
		for i := range 3 {
			c = acquire(t, p)
			if c.PgConn.PID() != pid {
				t.Fatalf("acquire %d: backend %d, want the reused %d", i, c.PgConn.PID(), pid)
			}
			stale.Release() // a second release of an old handle is a no-op
			if st := p.Stats(); st.InUse != 1 || st.Idle != 0 {
				t.Fatalf("a stale Release gave back the current holder's connection: %+v", st)
			}
			c.Release()
		}
		if st := p.Stats(); st.Opened != 1 || st.Idle != 1 || st.InUse != 0 || st.Size != dbpool.DefaultSize {
			t.Fatalf("stats %+v", st)
		}
	})

	t.Run("terminated backend is replaced", func(t *testing.T) {
		p := w.pool(t, "verify-full", dbpool.Options{})
		c := acquire(t, p)
		pid := c.PgConn.PID()
		c.Release()
		w.s.Exec(t, "SELECT pg_terminate_backend("+strconv.Itoa(int(pid))+")")
		waitGone(t, w.s, pid)
		c = acquire(t, p)
		if c.PgConn.PID() == pid {
			t.Fatalf("the terminated backend %d was handed out again", pid)
		}
		if got := query(t, c.PgConn, "SELECT 1"); got[0] != "1" {
			t.Fatalf("SELECT 1 = %v", got)
		}
		pid2 := c.PgConn.PID()
		// A connection the caller closed is dropped on release too.
		_ = c.PgConn.Close(context.Background())
		c.Release()
		c = acquire(t, p)
		if c.PgConn.PID() == pid2 || c.PgConn.IsClosed() {
			t.Fatalf("the closed connection (backend %d) came back", pid2)
		}
		c.Release()
		if st := p.Stats(); st.Opened != 3 || st.Dropped != 2 {
			t.Fatalf("stats %+v, want 3 opened and 2 dropped", st)
		}
	})

	t.Run("connection in a transaction is dropped", func(t *testing.T) {
		p := w.pool(t, "verify-full", dbpool.Options{Size: 1})
		for _, sql := range []string{"BEGIN", "BEGIN; SELECT 1/0"} {
			c := acquire(t, p)
			pid := c.PgConn.PID()
			_, _ = c.PgConn.Exec(context.Background(), sql).ReadAll() // the second fails: status 'E'
			if c.PgConn.TxStatus() == 'I' {
				t.Fatalf("%s: status %c", sql, c.PgConn.TxStatus())
			}
			c.Release()
			waitGone(t, w.s, pid)
			c = acquire(t, p)
			if c.PgConn.PID() == pid || c.PgConn.TxStatus() != 'I' {
				t.Fatalf("%s: got backend %d status %c back", sql, pid, c.PgConn.TxStatus())
			}
			c.Release()
		}
	})

	t.Run("acquire times out when all are busy", func(t *testing.T) {
		p := w.pool(t, "verify-full", dbpool.Options{Size: 2, AcquireTimeout: 300 * time.Millisecond})
		a, b := acquire(t, p), acquire(t, p)
		_, err := p.Acquire(context.Background())
		var fe *failure.Error
		if !errors.As(err, &fe) || fe.Class != failure.Timeout || fe.Evidence == "" || fe.Fix == "" {
			t.Fatalf("acquire with all busy: %#v", err)
		}
		// The caller's context ending first gives the same class.
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := p.Acquire(ctx); !errors.As(err, &fe) || fe.Class != failure.Timeout || !errors.Is(err, context.Canceled) {
			t.Fatalf("acquire with a cancelled context: %#v", err)
		}
		// A waiter is served as soon as a connection comes back.
		done := make(chan *dbpool.Conn)
		go func() {
			c, err := p.Acquire(context.Background())
			if err != nil {
				t.Error(err)
			}
			done <- c
		}()
		pid := a.PgConn.PID()
		a.Release()
		c := <-done
		if c == nil || c.PgConn.PID() != pid {
			t.Fatalf("the waiter did not get the released connection")
		}
		c.Release()
		b.Release()
		if st := p.Stats(); st.Opened != 2 || st.InUse != 0 || st.Idle != 2 {
			t.Fatalf("stats %+v", st)
		}
	})

	t.Run("rotation", func(t *testing.T) {
		var mu sync.Mutex
		now := time.Now()
		clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
		p := w.pool(t, "verify-full", dbpool.Options{MaxLifetime: time.Hour, Now: clock})

		c := acquire(t, p)
		first := sourceSerial(t, w.src)
		if got := clientSerial(t, c); got != first {
			t.Fatalf("client_serial %s, source %s", got, first)
		}
		c.Release()
		if err := w.src.Reload(); err != nil {
			t.Fatal(err)
		}
		second := sourceSerial(t, w.src)
		if second == first {
			t.Fatal("Reload did not renew")
		}
		// The pooled connection keeps its certificate until retired.
		c = acquire(t, p)
		if got := clientSerial(t, c); got != first {
			t.Fatalf("pooled connection reports %s, want %s", got, first)
		}
		held := c // in use across RetireAll: closed on release
		p.RetireAll()
		c = acquire(t, p)
		if got := clientSerial(t, c); got != second {
			t.Fatalf("after RetireAll a new connection presented %s, want %s", got, second)
		}
		c.Release()
		heldPID := held.PgConn.PID()
		held.Release()
		waitGone(t, w.s, heldPID)

		// Max lifetime: past it, the connection is retired on release.
		if err := w.src.Reload(); err != nil {
			t.Fatal(err)
		}
		third := sourceSerial(t, w.src)
		c = acquire(t, p)
		if got := clientSerial(t, c); got != second {
			t.Fatalf("reused connection reports %s, want %s", got, second)
		}
		mu.Lock()
		now = now.Add(time.Hour + time.Second)
		mu.Unlock()
		c.Release()
		c = acquire(t, p)
		if got := clientSerial(t, c); got != third {
			t.Fatalf("after max lifetime a new connection presented %s, want %s", got, third)
		}
		c.Release()
	})

	t.Run("health", func(t *testing.T) {
		p := w.pool(t, "verify-full", dbpool.Options{})
		h, err := p.Health(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		c := acquire(t, p)
		if c.PgConn.PID() != h.BackendPID {
			t.Fatalf("health used backend %d, pool now hands out %d", h.BackendPID, c.PgConn.PID())
		}
		row := query(t, c.PgConn, "SELECT ssl::text, version, cipher, client_dn, client_serial::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
		c.Release()
		leaf, err := w.src.GetClientCertificate(nil)
		if err != nil {
			t.Fatal(err)
		}
		if !h.SSL || row[0] != "true" || h.Version != row[1] || h.Cipher != row[2] || h.SSLMode != "verify-full" {
			t.Fatalf("health %+v, pg_stat_ssl %v", h, row)
		}
		if h.ServerCertSubject != w.server.Cert.Subject.String() || !h.ServerCertNotAfter.Equal(w.server.Cert.NotAfter) ||
			!h.ServerCertVerified || !h.HostnameVerified {
			t.Fatalf("server certificate: %+v, want %s until %s", h, w.server.Cert.Subject, w.server.Cert.NotAfter)
		}
		// pg_stat_ssl.client_dn is "/CN=app"; the source's current leaf is the reference.
		if h.ClientCertSubject != leaf.Leaf.Subject.String() || !h.ClientCertNotAfter.Equal(leaf.Leaf.NotAfter) ||
			!h.ClientCertSent || row[3] != "/CN=app" || row[4] != leaf.Leaf.SerialNumber.String() {
			t.Fatalf("client certificate: %+v, pg_stat_ssl %v", h, row)
		}
		if h.LatencyMS <= 0 {
			t.Fatalf("latency %v", h.LatencyMS)
		}
		// The 10-minute client certificate is within the expiry warning.
		if len(h.Warnings) != 1 || !strings.Contains(h.Warnings[0], "client certificate expires in") {
			t.Fatalf("warnings %q", h.Warnings)
		}
		raw, err := json.Marshal(h)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"ssl", "version", "cipher", "sslmode", "server_cert_subject", "server_cert_not_after",
			"client_cert_subject", "client_cert_not_after", "latency_ms", "warnings"} {
			if _, ok := m[k]; !ok {
				t.Fatalf("JSON %s lacks %q", raw, k)
			}
		}
		t.Logf("health: %s", raw)

		// require without root certificates: encrypted, not verified, and
		// said so; plus the caller's warning. (With roots, libpq's require
		// verifies the chain, and the warning is about the host name.)
		p = w.poolWith(t, "require", &pgtls.Options{GetClientCertificate: w.src.GetClientCertificate}, dbpool.Options{Warnings: []string{"DB_SSL_REJECT_UNAUTHORIZED=false: the server is not verified"}})
		h, err = p.Health(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if !h.SSL || h.SSLMode != "require" || h.ServerCertVerified || h.HostnameVerified ||
			len(h.Warnings) < 2 || h.Warnings[0] != "DB_SSL_REJECT_UNAUTHORIZED=false: the server is not verified" ||
			!strings.Contains(strings.Join(h.Warnings, "\n"), "the server certificate is not verified (sslmode=require)") {
			t.Fatalf("require: %+v", h)
		}
	})

	t.Run("concurrent calls through rotations", func(t *testing.T) {
		// 8 workers on 4 connections while the certificate is renewed and the
		// pool retired 3 times: no call fails, never more than 4 backends.
		p := w.pool(t, "verify-full", dbpool.Options{AcquireTimeout: 30 * time.Second})
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var mu sync.Mutex
		var calls, failed int
		serials := map[string]bool{}
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					c, err := p.Acquire(ctx)
					var serial string
					if err == nil {
						var rs []*pgconn.Result
						rs, err = c.PgConn.Exec(ctx, "SELECT client_serial FROM pg_stat_ssl WHERE pid = pg_backend_pid()").ReadAll()
						if err == nil {
							serial = string(rs[0].Rows[0][0])
						}
						c.Release()
					}
					cancel()
					mu.Lock()
					calls++
					if err != nil {
						failed++
						t.Errorf("call failed: %v", err)
					} else {
						serials[serial] = true
					}
					mu.Unlock()
				}
			}()
		}
		maxBackends := 0
		for range 3 {
			for range 5 {
				n, _ := strconv.Atoi(strings.TrimSpace(w.s.Exec(t, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'")))
				maxBackends = max(maxBackends, n)
				time.Sleep(10 * time.Millisecond)
			}
			if err := w.src.Reload(); err != nil {
				t.Error(err)
			}
			p.RetireAll()
		}
		time.Sleep(100 * time.Millisecond)
		close(stop)
		wg.Wait()
		st := p.Stats()
		t.Logf("%d calls, %d failed, %d client serials seen, at most %d backends of role app, stats %+v", calls, failed, len(serials), maxBackends, st)
		// Other subtests' pools are closed, so every app backend is this
		// pool's: its connections and its control connection.
		if failed != 0 || maxBackends > dbpool.DefaultSize+1 || len(serials) < 2 || st.InUse != 0 {
			t.Fatalf("%d failed, %d backends, %d serials, stats %+v", failed, maxBackends, len(serials), st)
		}
		if !serials[sourceSerial(t, w.src)] {
			t.Fatalf("the last certificate was never presented")
		}
	})

	t.Run("health without a source", func(t *testing.T) {
		// The client certificate comes from what the connection sent.
		p := w.pool(t, "verify-full", dbpool.Options{Source: noSource{}})
		h, err := p.Health(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		leaf, _ := w.src.GetClientCertificate(nil)
		if h.ClientCertSubject != "CN=app" || !h.ClientCertNotAfter.Equal(leaf.Leaf.NotAfter) {
			t.Fatalf("client certificate from facts: %q %s", h.ClientCertSubject, h.ClientCertNotAfter)
		}
	})

	t.Run("close", func(t *testing.T) {
		before := runtime.NumGoroutine()
		p := w.pool(t, "verify-full", dbpool.Options{Size: 2, AcquireTimeout: time.Minute})
		a, b := acquire(t, p), acquire(t, p)
		pa, pb := a.PgConn.PID(), b.PgConn.PID()
		waiter := make(chan error)
		go func() {
			_, err := p.Acquire(context.Background()) // both in use: waits until Close
			waiter <- err
		}()
		time.Sleep(100 * time.Millisecond) // not a timing assertion: either order gives the same error
		p.Close()
		var fe *failure.Error
		if err := <-waiter; !errors.As(err, &fe) || fe.Class != failure.ConfigInvalid {
			t.Fatalf("waiter after Close: %#v", err)
		}
		a.Release() // in use at Close: closed now
		b.Release()
		waitGone(t, w.s, pa)
		waitGone(t, w.s, pb)
		// An idle connection is closed by Close itself.
		p2 := w.pool(t, "verify-full", dbpool.Options{})
		c := acquire(t, p2)
		pc := c.PgConn.PID()
		c.Release()
		p2.Close()
		waitGone(t, w.s, pc)
		if _, err := p.Acquire(context.Background()); !errors.As(err, &fe) || fe.Class != failure.ConfigInvalid {
			t.Fatalf("acquire after Close: %#v", err)
		}
		p.Close()
		for range 100 {
			if runtime.NumGoroutine() <= before {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("goroutines: %d before, %d after Close", before, runtime.NumGoroutine())
	})
}

// noSource is a Source with no certificate status (e.g. CA file only).
type noSource struct{ certs.Source }

func (noSource) Status() certs.Status { return certs.Status{} }

func TestNewRefusesBadSettings(t *testing.T) {
	var fe *failure.Error
	if _, err := dbpool.New(nil, nil, dbpool.Options{}); !errors.As(err, &fe) || fe.Class != failure.ConfigInvalid {
		t.Fatalf("nil config: %#v", err)
	}
	cfg, err := connstring.Parse("host=localhost")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dbpool.New(cfg, nil, dbpool.Options{Size: -1}); !errors.As(err, &fe) || fe.Class != failure.ConfigInvalid {
		t.Fatalf("negative size: %#v", err)
	}
}
