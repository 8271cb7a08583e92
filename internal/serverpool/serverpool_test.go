package serverpool_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/secretscan"
	"github.com/pgtrust/pgtrust/internal/serverpool"
	"github.com/pgtrust/pgtrust/pgtls"
)

// localIssuer issues the client certificates (CN app) from an in-memory CA,
// so that a RenewingSource renews on demand (Reload): a rotation.
type localIssuer struct{ ca *certs.KeyPair }

func (l localIssuer) Name() string { return "local-ca" }

func (l localIssuer) Issue(_ context.Context, _ *tls.Certificate) (*certs.Issued, error) {
	kp, err := certs.IssueClient(l.ca, certs.Options{CommonName: "app", Validity: 10 * time.Minute, NotBefore: time.Now().Truncate(time.Second)})
	if err != nil {
		return nil, err
	}
	cert := tls.Certificate{Certificate: [][]byte{kp.Cert.Raw}, PrivateKey: kp.Key, Leaf: kp.Cert}
	return &certs.Issued{Certificate: cert, CAs: []*x509.Certificate{l.ca.Cert}}, nil
}

type world struct {
	version int
	s       *pgtest.Server
	src     *certs.RenewingSource
	opts    *pgtls.Options
	dial    atomic.Int64 // dials made through dialer
}

// newWorldVersion starts PostgreSQL version (15 or 18) that admits the
// roles app and other only over TLS with a client certificate verified in
// full, mapped to the role by a map (so that one certificate serves both
// roles, as pgtrust's own upstream credential does).
func newWorldVersion(t testing.TB, version int) *world {
	t.Helper()
	ca, err := certs.NewCA(certs.Options{CommonName: "serverpool test CA"})
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
		HBA:   []string{"hostssl all app,other 127.0.0.1/32 cert clientcert=verify-full map=pool"},
		Setup: []string{"CREATE ROLE app LOGIN; CREATE ROLE other LOGIN; CREATE DATABASE app2"}})
	writeIdent(t, s)
	src, err := certs.NewRenewingSource(context.Background(), localIssuer{ca}, certs.RenewOptions{TrustIssuedCA: true, Name: "serverpool test"})
	if err != nil {
		t.Fatal(err)
	}
	return &world{version: version, s: s, src: src, opts: &pgtls.Options{GetClientCertificate: src.GetClientCertificate, RootCAs: src.Roots}}
}

// writeIdent maps the certificate's CN app to the roles app and other.
func writeIdent(t testing.TB, s *pgtest.Server) {
	t.Helper()
	s.Exec(t, "COPY (SELECT 'pool app app' UNION ALL SELECT 'pool app other') TO '"+s.DataDir+"/pg_ident.conf'")
	s.Exec(t, "SELECT pg_reload_conf()")
	// The reload is asynchronous: wait until the map is in effect.
	for range 100 {
		if strings.TrimSpace(s.Exec(t, "SELECT count(*) FROM pg_ident_file_mappings WHERE map_name = 'pool'")) == "2" {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("pg_ident.conf not loaded")
}

func (w *world) dialer(testing.TB) serverpool.Dialer {
	return func(ctx context.Context, k serverpool.Key) (*pgconn.PgConn, error) {
		w.dial.Add(1)
		cfg, err := connstring.Parse(w.s.DSN("host=localhost sslmode=verify-full connect_timeout=10 user=" + k.Role + " dbname=" + k.Database))
		if err != nil {
			return nil, err
		}
		pg, _, err := pgtls.Connect(ctx, cfg, w.opts)
		return pg, err
	}
}

// clock is a fake clock for lifetimes, idle times and backoff.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2026, 12, 2, 6, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

func (w *world) pool(t *testing.T, o serverpool.Options) (*serverpool.Pool, *bytes.Buffer) {
	t.Helper()
	var logs syncBuffer
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	p, err := serverpool.New(w.dialer(t), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Close()
		secretscan.Record(t, "serverpool log", logs.String())
	})
	return p, &logs.b
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

var appKey = serverpool.Key{Database: "postgres", Role: "app"}

func acquire(t *testing.T, p *serverpool.Pool, k serverpool.Key) *serverpool.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := p.Acquire(ctx, k)
	if err != nil {
		t.Fatalf("acquire %v: %v", k, err)
	}
	return s
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

func clientSerial(t *testing.T, s *serverpool.Server) string {
	t.Helper()
	return query(t, s.PgConn(), "SELECT client_serial FROM pg_stat_ssl WHERE pid = pg_backend_pid()")[0]
}

func sourceSerial(t *testing.T, src certs.Source) string {
	t.Helper()
	c, err := src.GetClientCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	return c.Leaf.SerialNumber.String()
}

func waitGone(t *testing.T, s *pgtest.Server, pid uint32) {
	t.Helper()
	for range 200 {
		if strings.TrimSpace(s.Exec(t, "SELECT count(*) FROM pg_stat_get_activity("+strconv.Itoa(int(pid))+")")) == "0" {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("backend %d still listed", pid)
}

func stats(t *testing.T, p *serverpool.Pool, k serverpool.Key) serverpool.KeyStats {
	t.Helper()
	for _, st := range p.Stats() {
		if st.Key == k {
			return st
		}
	}
	return serverpool.KeyStats{} // not used yet
}

// waitFor polls cond (a state, not a duration) for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 400 {
		if cond() {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("never: %s", what)
}

func classOf(t *testing.T, err error) *failure.Error {
	t.Helper()
	fe, ok := failure.As(err)
	if !ok || fe.Evidence == "" || fe.Fix == "" {
		t.Fatalf("not a classified error with evidence and fix: %#v", err)
	}
	secretscan.Record(t, "serverpool error", fe.Error()+"\n"+fe.Detail())
	return fe
}

// TestPool runs the pool's tests on PostgreSQL 15 and 18.
func TestPool(t *testing.T) {
	for _, v := range []int{15, 18} {
		t.Run(fmt.Sprintf("PG%d", v), func(t *testing.T) { testPool(t, newWorldVersion(t, v)) })
	}
}

func testPool(t *testing.T, w *world) {

	t.Run("reuse, keys, params, unclean release", func(t *testing.T) {
		p, _ := w.pool(t, serverpool.Options{})
		s := acquire(t, p, appKey)
		pid := s.PgConn().PID()
		if got := query(t, s.PgConn(), "SELECT current_user || '@' || current_database()"); got[0] != "app@postgres" {
			t.Fatalf("connected as %v", got)
		}
		params := s.Params()
		if !strings.HasPrefix(params["server_version"], strconv.Itoa(w.version)+".") {
			t.Fatalf("server_version %q, want PostgreSQL %d", params["server_version"], w.version)
		}
		if params["server_version"] == "" || params["is_superuser"] != "off" || params["client_encoding"] != "UTF8" || params["session_authorization"] != "app" {
			t.Fatalf("params %v", params)
		}
		s.SetParam("application_name", "psql")
		s.Release(true)
		stale := s
		s = acquire(t, p, appKey)
		if s.PgConn().PID() != pid || s.Params()["application_name"] != "psql" {
			t.Fatalf("backend %d params %v, want the reused %d with the recorded application_name", s.PgConn().PID(), s.Params(), pid)
		}
		stale.Release(true) // a stale handle's second Release is a no-op
		if st := stats(t, p, appKey); st.Active != 1 || st.Idle != 0 {
			t.Fatalf("a stale Release gave back the holder's connection: %+v", st)
		}
		// Another key gets its own connection.
		for _, k := range []serverpool.Key{{Database: "postgres", Role: "other"}, {Database: "app2", Role: "app"}} {
			o := acquire(t, p, k)
			if got := query(t, o.PgConn(), "SELECT current_user || '@' || current_database()"); got[0] != k.Role+"@"+k.Database {
				t.Fatalf("key %v connected as %v", k, got)
			}
			o.Release(true)
		}
		// clean=false closes the backend; so does a clean release in a transaction.
		s.Release(false)
		waitGone(t, w.s, pid)
		s = acquire(t, p, appKey)
		pid2 := s.PgConn().PID()
		query(t, s.PgConn(), "BEGIN")
		s.Release(true)
		waitGone(t, w.s, pid2)
		s = acquire(t, p, appKey)
		if s.PgConn().PID() == pid2 || s.PgConn().PID() == pid || s.PgConn().TxStatus() != 'I' {
			t.Fatalf("a dropped backend came back: %d", s.PgConn().PID())
		}
		s.Release(true)
		st := stats(t, p, appKey)
		if st.Used != 3 || st.Closed != 2 || st.Idle != 1 || st.Active != 0 {
			t.Fatalf("stats %+v", st)
		}
		all := p.Stats()
		if len(all) != 3 || all[0].Key != (serverpool.Key{Database: "app2", Role: "app"}) || all[2].Key.Role != "other" {
			t.Fatalf("stats not one per key in order: %+v", all)
		}
	})

	t.Run("size limit under concurrency", func(t *testing.T) {
		const size, workers, rounds = 3, 12, 15
		p, _ := w.pool(t, serverpool.Options{Size: size})
		var inUse, maxInUse atomic.Int64
		var wg sync.WaitGroup
		pids := sync.Map{}
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range rounds {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					s, err := p.Acquire(ctx, appKey)
					if err != nil {
						cancel()
						t.Error(err)
						return
					}
					n := inUse.Add(1)
					for {
						m := maxInUse.Load()
						if n <= m || maxInUse.CompareAndSwap(m, n) {
							break
						}
					}
					pids.Store(s.PgConn().PID(), true)
					_, err = s.PgConn().Exec(ctx, "SELECT pg_sleep(0.002)").ReadAll()
					inUse.Add(-1)
					s.Release(err == nil)
					cancel()
					if err != nil {
						t.Error(err)
					}
				}
			}()
		}
		wg.Wait()
		st := stats(t, p, appKey)
		npids := 0
		pids.Range(func(any, any) bool { npids++; return true })
		t.Logf("%d acquires by %d workers on size %d: %d backends used, at most %d in use, stats %+v", workers*rounds, workers, size, npids, maxInUse.Load(), st)
		if maxInUse.Load() > size || st.Used > size || npids > size || st.Idle != int(st.Used) || st.Active != 0 || st.Waiting != 0 {
			t.Fatalf("limit broken: max in use %d, %d backends, stats %+v", maxInUse.Load(), npids, st)
		}
	})

	t.Run("wait timeout, cancelled wait, FIFO, reserve", func(t *testing.T) {
		p, _ := w.pool(t, serverpool.Options{Size: 1, WaitTimeout: 300 * time.Millisecond})
		a := acquire(t, p, appKey)
		_, err := p.Acquire(context.Background(), appKey)
		fe := classOf(t, err)
		if fe.Class != failure.Timeout || !strings.Contains(fe.Message, "no server connection for postgres/app became free within 300ms") ||
			!strings.Contains(fe.Evidence, "1 active") {
			t.Fatalf("wait timeout: %s | %s | %s", fe.Message, fe.Evidence, fe.Fix)
		}
		t.Logf("wait timeout error: %s; evidence: %s; fix: %s", fe.Message, fe.Evidence, fe.Fix)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err = p.Acquire(ctx, appKey)
		if fe := classOf(t, err); fe.Class != failure.Timeout || !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled: %#v", err)
		}
		// Waiters are served in arrival order.
		p2, _ := w.pool(t, serverpool.Options{Size: 1, WaitTimeout: time.Minute})
		b := acquire(t, p2, appKey)
		order := make(chan int, 3)
		var wg sync.WaitGroup
		for i := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s, err := p2.Acquire(context.Background(), appKey)
				if err != nil {
					t.Error(err)
					return
				}
				order <- i
				s.Release(true)
			}()
			waitFor(t, "waiter queued", func() bool { return stats(t, p2, appKey).Waiting == i+1 })
		}
		b.Release(true)
		wg.Wait()
		close(order)
		var got []int
		for i := range order {
			got = append(got, i)
		}
		if len(got) != 3 || got[0] != 0 || got[1] != 1 || got[2] != 2 {
			t.Fatalf("served in order %v, want [0 1 2]", got)
		}
		if st := stats(t, p2, appKey); st.Used != 1 {
			t.Fatalf("waiters got new connections instead of the released one: %+v", st)
		}
		a.Release(true)

		// Reserve: a client that waited ReserveAfter gets one extra
		// connection; released with nobody waiting, it closes.
		p3, _ := w.pool(t, serverpool.Options{Size: 1, Reserve: 1, ReserveAfter: 50 * time.Millisecond, WaitTimeout: time.Minute})
		h := acquire(t, p3, appKey)
		r := acquire(t, p3, appKey) // waits ReserveAfter, then dials
		if r.PgConn().PID() == h.PgConn().PID() {
			t.Fatal("reserve connection is the held one")
		}
		if st := stats(t, p3, appKey); st.Active != 2 || st.Used != 2 {
			t.Fatalf("reserve: %+v", st)
		}
		rpid := r.PgConn().PID()
		r.Release(true)
		waitGone(t, w.s, rpid)
		h.Release(true)
		if st := stats(t, p3, appKey); st.Idle != 1 || st.Closed != 1 {
			t.Fatalf("after the reserve: %+v", st)
		}
	})

	t.Run("retire after rotation", func(t *testing.T) {
		p, _ := w.pool(t, serverpool.Options{Size: 3})
		first := sourceSerial(t, w.src)
		var held []*serverpool.Server
		for range 3 {
			held = append(held, acquire(t, p, appKey))
		}
		for _, s := range held {
			if got := clientSerial(t, s); got != first {
				t.Fatalf("client_serial %s, source %s", got, first)
			}
		}
		// One idle, two in transactions across the rotation.
		idlePID := held[0].PgConn().PID()
		held[0].Release(true)
		held = held[1:]
		for _, s := range held {
			query(t, s.PgConn(), "BEGIN; CREATE TEMP TABLE t(x int)")
		}
		if err := w.src.Reload(); err != nil {
			t.Fatal(err)
		}
		second := sourceSerial(t, w.src)
		if second == first {
			t.Fatal("Reload did not renew")
		}
		gen := p.Generation()
		p.Retire()
		waitGone(t, w.s, idlePID) // the idle one at once
		for _, s := range held {
			// The transaction in flight finishes on its old connection.
			if s.Generation() != gen || clientSerial(t, s) != first {
				t.Fatal("the connection in use changed under its transaction")
			}
			query(t, s.PgConn(), "INSERT INTO t VALUES (1); COMMIT")
			pid := s.PgConn().PID()
			s.Release(true)
			waitGone(t, w.s, pid)
		}
		var now []*serverpool.Server
		for range 3 {
			now = append(now, acquire(t, p, appKey))
		}
		for _, s := range now {
			if s.Generation() != gen+1 || clientSerial(t, s) != second {
				t.Fatalf("after Retire: generation %d, serial %s, want %d and %s", s.Generation(), clientSerial(t, s), gen+1, second)
			}
		}
		serials := strings.Fields(w.s.Exec(t, "SELECT client_serial FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE usename = 'app' AND datname = 'postgres'"))
		for _, s := range now {
			s.Release(true)
		}
		if len(serials) != 3 || serials[0] != second || serials[1] != second || serials[2] != second {
			t.Fatalf("pg_stat_ssl.client_serial of the app backends: %v, want 3 × %s", serials, second)
		}
		st := stats(t, p, appKey)
		t.Logf("rotation: serial %s → %s, stats %+v", first, second, st)
		if st.Retired != 3 || st.Used != 6 || st.Generation != gen+1 {
			t.Fatalf("stats %+v", st)
		}
	})

	t.Run("rotation under load", func(t *testing.T) {
		// 8 clients running transactions on 4 server connections while the
		// certificate is renewed and the pool retired 3 times: no query
		// fails, and once every connection has been released after the
		// last Retire, all backends present the last certificate.
		const size = 4
		p, _ := w.pool(t, serverpool.Options{Size: size, WaitTimeout: 30 * time.Second})
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var calls, failed atomic.Int64
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
					s, err := p.Acquire(ctx, appKey)
					if err == nil {
						_, err = s.PgConn().Exec(ctx, "BEGIN; SELECT client_serial FROM pg_stat_ssl WHERE pid = pg_backend_pid(); SELECT pg_sleep(0.005); COMMIT").ReadAll()
						s.Release(err == nil)
					}
					cancel()
					calls.Add(1)
					if err != nil {
						failed.Add(1)
						t.Errorf("call failed: %v", err)
					}
				}
			}()
		}
		for range 3 {
			waitFor(t, "calls", func() bool { return calls.Load() > 20 })
			if err := w.src.Reload(); err != nil {
				t.Error(err)
			}
			p.Retire()
			calls.Store(0)
		}
		last := sourceSerial(t, w.src)
		gen := p.Generation()
		// Bound: every connection of an older generation is gone after its
		// next Release, i.e. after one transaction of each.
		waitFor(t, "every server connection on the last certificate", func() bool {
			out := strings.Fields(w.s.Exec(t, "SELECT client_serial FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE usename = 'app' AND datname = 'postgres'"))
			if len(out) == 0 {
				return false
			}
			for _, v := range out {
				if v != last {
					return false
				}
			}
			return true
		})
		close(stop)
		wg.Wait()
		st := stats(t, p, appKey)
		t.Logf("rotation under load: %d failed, stats %+v", failed.Load(), st)
		if failed.Load() != 0 || st.Generation != gen || st.Retired < size || st.Active != 0 || int(st.Used-st.Closed) > size {
			t.Fatalf("%d failed, stats %+v", failed.Load(), st)
		}
	})

	t.Run("unclean release cancels the running statement", func(t *testing.T) {
		p, _ := w.pool(t, serverpool.Options{})
		s := acquire(t, p, appKey)
		pid := s.PgConn().PID()
		// The proxy relays raw messages: a statement is running that pgconn
		// does not know about, and the client went away.
		q := (&pgproto3.Query{String: "SELECT pg_sleep(600)"})
		buf, err := q.Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.PgConn().Conn().Write(buf); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "statement running", func() bool {
			return strings.TrimSpace(w.s.Exec(t, "SELECT count(*) FROM pg_stat_activity WHERE pid = "+strconv.Itoa(int(pid))+" AND state = 'active'")) == "1"
		})
		s.Release(false)
		// Closing the socket alone would leave pg_sleep running for 10 minutes.
		waitGone(t, w.s, pid)
	})

	t.Run("liveness check replaces a backend killed while idle", func(t *testing.T) {
		clk := newClock()
		p, logs := w.pool(t, serverpool.Options{Now: clk.Now, CheckAfter: 30 * time.Second})
		s := acquire(t, p, appKey)
		pid := s.PgConn().PID()
		s.Release(true)
		w.s.Exec(t, "SELECT pg_terminate_backend("+strconv.Itoa(int(pid))+")")
		waitGone(t, w.s, pid)
		// Within CheckAfter the socket check (no query) finds it dead.
		s = acquire(t, p, appKey)
		if s.PgConn().PID() == pid {
			t.Fatalf("the terminated backend %d was handed out", pid)
		}
		if got := query(t, s.PgConn(), "SELECT 1"); got[0] != "1" {
			t.Fatalf("SELECT 1 = %v", got)
		}
		s.Release(true)
		// Past CheckAfter too (the socket check runs before the query).
		s = acquire(t, p, appKey)
		pid = s.PgConn().PID()
		s.Release(true)
		w.s.Exec(t, "SELECT pg_terminate_backend("+strconv.Itoa(int(pid))+")")
		waitGone(t, w.s, pid)
		clk.Add(31 * time.Second)
		s = acquire(t, p, appKey)
		if s.PgConn().PID() == pid {
			t.Fatal("the terminated backend was handed out after its check")
		}
		if got := query(t, s.PgConn(), "SELECT 1"); got[0] != "1" {
			t.Fatalf("SELECT 1 = %v", got)
		}
		s.Release(true)
		if st := stats(t, p, appKey); st.Closed != 2 || st.Used != 3 {
			t.Fatalf("stats %+v", st)
		}
		if !strings.Contains(logs.String(), "socket check; replaced") {
			t.Fatalf("the replacement was not logged: %s", logs.String())
		}
	})

	t.Run("lifetime with jitter", func(t *testing.T) {
		clk := newClock()
		start := clk.Now()
		p, _ := w.pool(t, serverpool.Options{Size: 6, Now: clk.Now, Lifetime: time.Hour, IdleTimeout: 24 * time.Hour, CheckAfter: 24 * time.Hour})
		var held []*serverpool.Server
		exp := map[time.Time]bool{}
		for range 6 {
			s := acquire(t, p, appKey)
			held = append(held, s)
			e := s.Expires().Sub(start)
			if e < 54*time.Minute || e > 66*time.Minute {
				t.Fatalf("lifetime %s outside 1h ± 10%%", e)
			}
			exp[s.Expires()] = true
		}
		if len(exp) < 2 {
			t.Fatal("jitter did not spread the lifetimes")
		}
		sort.Slice(held, func(i, j int) bool { return held[i].Expires().Before(held[j].Expires()) })
		firstExp := held[0].Expires()
		// Just before the first expiry all go back to idle.
		clk.Add(firstExp.Sub(start) - time.Second)
		for _, s := range held {
			s.Release(true)
		}
		if st := stats(t, p, appKey); st.Idle != 6 {
			t.Fatalf("before expiry: %+v", st)
		}
		// Past it, exactly the expired ones close (janitor pass).
		clk.Add(time.Second)
		want := 0
		for _, s := range held {
			if !clk.Now().Before(s.Expires()) {
				want++
			}
		}
		p.Maintain()
		if st := stats(t, p, appKey); st.Idle != 6-want || int(st.Closed) != want {
			t.Fatalf("at %s: %d expired, stats %+v", clk.Now().Sub(start), want, st)
		}
		// A held connection past its lifetime closes at Release.
		s := acquire(t, p, appKey)
		clk.Add(67 * time.Minute)
		pid := s.PgConn().PID()
		s.Release(true)
		waitGone(t, w.s, pid)
		p.Maintain()
		if st := stats(t, p, appKey); st.Idle != 0 || st.Closed != 6 {
			t.Fatalf("after all lifetimes: %+v", st)
		}
		// NoJitter: exactly Lifetime.
		p2, _ := w.pool(t, serverpool.Options{Now: clk.Now, Lifetime: time.Hour, Jitter: serverpool.NoJitter})
		s = acquire(t, p2, appKey)
		if got := s.Expires().Sub(clk.Now()); got != time.Hour {
			t.Fatalf("NoJitter lifetime %s", got)
		}
		s.Release(true)
	})

	t.Run("idle timeout keeps MinIdle and refills", func(t *testing.T) {
		clk := newClock()
		p, _ := w.pool(t, serverpool.Options{Size: 4, MinIdle: 2, Now: clk.Now, IdleTimeout: 10 * time.Minute, CheckAfter: time.Hour})
		var held []*serverpool.Server
		for range 4 {
			held = append(held, acquire(t, p, appKey))
		}
		for _, s := range held {
			s.Release(true)
		}
		clk.Add(10*time.Minute - time.Second)
		p.Maintain()
		if st := stats(t, p, appKey); st.Idle != 4 {
			t.Fatalf("before the idle timeout: %+v", st)
		}
		clk.Add(time.Second)
		p.Maintain()
		if st := stats(t, p, appKey); st.Idle != 2 || st.Closed != 2 {
			t.Fatalf("after the idle timeout: %+v, want MinIdle 2 kept", st)
		}
		// Retire closes the idle ones; the janitor pass reopens MinIdle with
		// the current generation.
		p.Retire()
		p.Maintain()
		waitFor(t, "MinIdle refilled", func() bool { st := stats(t, p, appKey); return st.Idle == 2 && st.Opening == 0 })
		s := acquire(t, p, appKey)
		if s.Generation() != p.Generation() {
			t.Fatalf("refilled connection of generation %d", s.Generation())
		}
		s.Release(true)
		if st := stats(t, p, appKey); st.Used != 6 || st.Retired != 2 {
			t.Fatalf("stats %+v", st)
		}
	})

	t.Run("backoff and fast fail", func(t *testing.T) {
		clk := newClock()
		p, _ := w.pool(t, serverpool.Options{Now: clk.Now, ConnectBackoff: [2]time.Duration{100 * time.Millisecond, time.Second}})
		bad := serverpool.Key{Database: "nosuchdb", Role: "app"}
		before := w.dial.Load()
		var delays []time.Duration
		var class failure.Class
		for i := range 6 {
			_, err := p.Acquire(context.Background(), bad)
			fe := classOf(t, err)
			if i == 0 {
				class = fe.Class
				t.Logf("dial error: %s: %s", fe.Class, fe.Message)
			} else if fe.Class != class {
				t.Fatalf("dial %d: class %s, first %s", i, fe.Class, class)
			}
			st := stats(t, p, bad)
			if st.ConsecutiveFailures != i+1 || !strings.Contains(st.LastError, "nosuchdb") {
				t.Fatalf("dial %d: stats %+v", i, st)
			}
			d := st.NextDial.Sub(clk.Now())
			delays = append(delays, d)
			// Within the backoff: fails at once with the same class, no dial.
			n := w.dial.Load()
			_, err = p.Acquire(context.Background(), bad)
			if fe := classOf(t, err); fe.Class != class || !strings.Contains(fe.Message, "are failing; the next attempt is in") {
				t.Fatalf("fast fail: %s %s", fe.Class, fe.Message)
			}
			if w.dial.Load() != n {
				t.Fatal("dialed during the backoff")
			}
			clk.Add(d)
		}
		want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, time.Second, time.Second}
		for i := range want {
			if delays[i] != want[i] {
				t.Fatalf("backoff sequence %v, want %v", delays, want)
			}
		}
		if got := w.dial.Load() - before; got != 6 {
			t.Fatalf("%d dials, want 6", got)
		}
		// Other keys are unaffected; a success resets the key's count.
		acquire(t, p, appKey).Release(true)
		if got := serverpool.BackoffDelay([2]time.Duration{100 * time.Millisecond, 10 * time.Second}, 20); got != 10*time.Second {
			t.Fatalf("default cap: %s", got)
		}
		if got := serverpool.BackoffDelay([2]time.Duration{100 * time.Millisecond, 10 * time.Second}, 0); got != 0 {
			t.Fatalf("no failures: %s", got)
		}
		t.Logf("backoff sequence: %v", delays)
	})

	t.Run("a dial the client gave up on still serves", func(t *testing.T) {
		gate := make(chan struct{})
		real := w.dialer(t)
		p, err := serverpool.New(func(ctx context.Context, k serverpool.Key) (*pgconn.PgConn, error) {
			<-gate // a slow server
			return real(ctx, k)
		}, serverpool.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		var once sync.Once
		open := func() { once.Do(func() { close(gate) }) }
		t.Cleanup(open) // runs first: a failed test must not leave Close waiting for the dial
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { _, err := p.Acquire(ctx, appKey); done <- err }()
		waitFor(t, "dialing", func() bool { return stats(t, p, appKey).Opening == 1 })
		cancel()
		if err := <-done; classOf(t, err).Class != failure.Timeout || !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled during the dial: %v", err)
		}
		open()
		waitFor(t, "the connection idle", func() bool { st := stats(t, p, appKey); return st.Idle == 1 && st.Opening == 0 })
		s := acquire(t, p, appKey)
		s.Release(true)
		if st := stats(t, p, appKey); st.Used != 1 || st.ConsecutiveFailures != 0 {
			t.Fatalf("stats %+v", st)
		}
	})

	t.Run("close ends a hanging dial", func(t *testing.T) {
		p, err := serverpool.New(func(ctx context.Context, k serverpool.Key) (*pgconn.PgConn, error) {
			<-ctx.Done() // a server that never answers
			return nil, ctx.Err()
		}, serverpool.Options{})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error)
		go func() { _, err := p.Acquire(context.Background(), appKey); done <- err }()
		waitFor(t, "dialing", func() bool { return stats(t, p, appKey).Opening == 1 })
		p.Close() // returns although WaitTimeout (30 s) bounds the dial
		if fe := classOf(t, <-done); fe.Class != failure.ConfigInvalid || fe.Message != "the server pool is closed" {
			t.Fatalf("acquire during Close: %s %s", fe.Class, fe.Message)
		}
		if st := stats(t, p, appKey); st.ConsecutiveFailures != 0 || st.Opening != 0 {
			t.Fatalf("stats %+v", st)
		}
	})

	t.Run("waiters fail fast when the only dial fails", func(t *testing.T) {
		clk := newClock()
		gate := make(chan struct{})
		var dials atomic.Int64
		p, err := serverpool.New(func(ctx context.Context, k serverpool.Key) (*pgconn.PgConn, error) {
			dials.Add(1)
			<-gate
			return w.dialer(t)(ctx, serverpool.Key{Database: "nosuchdb", Role: k.Role})
		}, serverpool.Options{Size: 1, Now: clk.Now, WaitTimeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		var once sync.Once
		open := func() { once.Do(func() { close(gate) }) }
		t.Cleanup(open)
		errs := make(chan error, 3)
		for i := range 3 {
			go func() { _, err := p.Acquire(context.Background(), appKey); errs <- err }()
			if i == 0 {
				waitFor(t, "dialing", func() bool { return stats(t, p, appKey).Opening == 1 })
			} else {
				waitFor(t, "queued", func() bool { return stats(t, p, appKey).Waiting == i })
			}
		}
		open()
		var msgs []string
		for range 3 {
			fe := classOf(t, <-errs)
			if fe.Class != failure.ConfigInvalid {
				t.Fatalf("class %s: %s", fe.Class, fe.Message)
			}
			msgs = append(msgs, fe.Message)
		}
		if dials.Load() != 1 {
			t.Fatalf("%d dials, want 1 (the waiters must not dial during the backoff)", dials.Load())
		}
		fast := 0
		for _, m := range msgs {
			if strings.Contains(m, "are failing; the next attempt is in 100ms") {
				fast++
			}
		}
		if fast != 2 {
			t.Fatalf("want the 2 waiters to fail fast: %q", msgs)
		}
	})

	t.Run("stats longest wait and JSON", func(t *testing.T) {
		clk := newClock()
		p, _ := w.pool(t, serverpool.Options{Size: 1, Now: clk.Now, WaitTimeout: time.Minute})
		h := acquire(t, p, appKey)
		got := make(chan *serverpool.Server)
		go func() {
			s, err := p.Acquire(context.Background(), appKey)
			if err != nil {
				t.Error(err)
			}
			got <- s
		}()
		waitFor(t, "a client waiting", func() bool { return stats(t, p, appKey).Waiting == 1 })
		clk.Add(7 * time.Second)
		st := stats(t, p, appKey)
		if st.LongestWait != 7*time.Second || st.Active != 1 || st.Opening != 0 {
			t.Fatalf("stats %+v", st)
		}
		raw, err := json.Marshal(p.Stats())
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"clients_waiting", "servers_active", "servers_idle", "servers_used", "servers_retired", "longest_wait_seconds\":7", "database\":\"postgres", "role\":\"app"} {
			if !strings.Contains(string(raw), `"`+k) {
				t.Fatalf("JSON %s lacks %s", raw, k)
			}
		}
		t.Logf("stats JSON: %s", raw)
		h.Release(true)
		s := <-got
		if s == nil {
			t.FailNow()
		}
		s.Release(true)
		if st := stats(t, p, appKey); st.Waiting != 0 || st.LongestWait != 0 || st.Used != 1 {
			t.Fatalf("after: %+v", st)
		}
	})

	t.Run("upstream restart: idle connections replaced after CheckAfter", func(t *testing.T) {
		clk := newClock()
		p, _ := w.pool(t, serverpool.Options{Size: 3, Now: clk.Now})
		var held []*serverpool.Server
		for range 3 {
			held = append(held, acquire(t, p, appKey))
		}
		for _, s := range held {
			s.Release(true)
		}
		w.s.Restart(t)
		clk.Add(31 * time.Second)
		held = held[:0]
		for range 3 {
			s := acquire(t, p, appKey) // never fails: each dead one is found by its check
			query(t, s.PgConn(), "SELECT 1")
			held = append(held, s)
		}
		for _, s := range held {
			s.Release(true)
		}
		if st := stats(t, p, appKey); st.Closed != 3 || st.Used != 6 || st.Idle != 3 {
			t.Fatalf("stats %+v", st)
		}
	})

	t.Run("close", func(t *testing.T) {
		before := runtime.NumGoroutine()
		p, err := serverpool.New(w.dialer(t), serverpool.Options{Size: 1, WaitTimeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		a := acquire(t, p, appKey)
		b := acquire(t, p, serverpool.Key{Database: "postgres", Role: "other"})
		bpid := b.PgConn().PID()
		b.Release(true)
		waiter := make(chan error)
		go func() { _, err := p.Acquire(context.Background(), appKey); waiter <- err }()
		waitFor(t, "a client waiting", func() bool { return stats(t, p, appKey).Waiting == 1 })
		p.Close()
		if fe := classOf(t, <-waiter); fe.Class != failure.ConfigInvalid {
			t.Fatalf("waiter after Close: %s", fe.Class)
		}
		waitGone(t, w.s, bpid) // idle: closed by Close
		apid := a.PgConn().PID()
		a.Release(true) // in use at Close: closed at Release
		waitGone(t, w.s, apid)
		if _, err := p.Acquire(context.Background(), appKey); classOf(t, err).Class != failure.ConfigInvalid {
			t.Fatalf("acquire after Close: %v", err)
		}
		p.Close()
		waitFor(t, "goroutines gone", func() bool { return runtime.NumGoroutine() <= before })
	})
}

func TestNewRefusesBadSettings(t *testing.T) {
	dial := func(context.Context, serverpool.Key) (*pgconn.PgConn, error) { return nil, errors.New("unused") }
	if _, err := serverpool.New(nil, serverpool.Options{}); classOf(t, err).Class != failure.ConfigInvalid {
		t.Fatal(err)
	}
	for _, o := range []serverpool.Options{{Size: -1}, {WaitTimeout: -1}, {Jitter: 1}, {Jitter: -0.5},
		{ConnectBackoff: [2]time.Duration{time.Second, time.Millisecond}}} {
		if _, err := serverpool.New(dial, o); classOf(t, err).Class != failure.ConfigInvalid {
			t.Fatalf("%+v: %v", o, err)
		}
	}
	p, err := serverpool.New(dial, serverpool.Options{MinIdle: 50})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	o := p.Settings()
	if o.Size != 20 || o.MinIdle != 20 || o.ReserveAfter != 5*time.Second || o.WaitTimeout != 30*time.Second || o.IdleTimeout != 10*time.Minute ||
		o.Lifetime != time.Hour || o.Jitter != 0.1 || o.CheckAfter != 30*time.Second || o.ConnectBackoff != [2]time.Duration{100 * time.Millisecond, 10 * time.Second} {
		t.Fatalf("defaults %+v", o)
	}
	// A Dialer error without a class is classified.
	_, err = p.Acquire(context.Background(), appKey)
	if fe := classOf(t, err); fe.Class != failure.ConnectionRefused || !strings.Contains(fe.Error(), "unused") {
		t.Fatalf("unclassified dial error: %#v", err)
	}
}

// BenchmarkAcquire measures what pooling saves: a reused connection (the
// idle path, within CheckAfter) against a new one each time (TLS handshake
// with a client certificate, startup, backend fork). Figures for
// docs/pooling.md, not a test.
func BenchmarkAcquire(b *testing.B) {
	w := newWorldVersion(b, 15)
	for _, c := range []struct {
		name   string
		retire bool
	}{{"reused", false}, {"new connection", true}} {
		b.Run(c.name, func(b *testing.B) {
			p, err := serverpool.New(w.dialer(nil), serverpool.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			ctx := context.Background()
			for b.Loop() {
				s, err := p.Acquire(ctx, appKey)
				if err != nil {
					b.Fatal(err)
				}
				s.Release(true)
				if c.retire {
					p.Retire() // closes it: the next Acquire dials
				}
			}
		})
	}
}
