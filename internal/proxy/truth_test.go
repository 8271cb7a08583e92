package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

// slowRelay forwards TCP connections to target after holding each one for
// delay before connecting: an upstream that is slow to dial.
func slowRelay(t *testing.T, target string, delay time.Duration) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				time.Sleep(delay)
				u, err := net.DialTimeout("tcp", target, 5*time.Second)
				if err != nil {
					return
				}
				defer u.Close()
				go func() { _, _ = io.Copy(u, c); u.Close() }()
				_, _ = io.Copy(c, u)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestSlowClientIsNotAnUpstreamFailure: the client's phase and the
// upstream dial have separate clocks and separate accounting. A client that
// uses most of startup_timeout before its startup packet still gets a full
// connect_timeout for the dial (before, the dial got what the client had
// left and a slow upstream was then declared down), and silent clients are
// counted as client refusals while the upstream stays up.
func TestSlowClientIsNotAnUpstreamFailure(t *testing.T) {
	env := newEnv(t)
	relay := slowRelay(t, env.srv.Addr(), 700*time.Millisecond)
	r := startProxy(t, Config{StartupTimeout: time.Second, ConnectTimeout: 10 * time.Second,
		Upstreams: []UpstreamConfig{{Name: "main", Listen: "127.0.0.1:0",
			Conn: mustParse(t, fmt.Sprintf("host=127.0.0.1 port=%d sslmode=verify-full sslrootcert=%s sslcert=%s sslkey=%s",
				relay, env.rootFile, env.certFile, env.keyFil))}}})
	port := r.port(t, "main")

	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(600 * time.Millisecond) // most of the client's 1 s
	if _, err := c.Write(startupPacket(t)); err != nil {
		t.Fatal(err)
	}
	for {
		m := readMessage(t, c)
		if len(m) == 0 || m[0] == 'E' {
			t.Fatalf("slow client + slow upstream dial: %q\n%s", m, r.logs.String())
		}
		if m[0] == 'Z' {
			break
		}
	}
	if got := r.metric(t, "pgtrust_upstream_up", nil); got != 1 {
		t.Fatalf("pgtrust_upstream_up = %v after a successful slow dial", got)
	}

	// Silent clients: the client's failure, reported as such.
	const silent = 5
	var wg sync.WaitGroup
	for range silent {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				t.Error(err)
				return
			}
			defer s.Close()
			_ = s.SetReadDeadline(time.Now().Add(15 * time.Second))
			_, _ = io.Copy(io.Discard, s) // until the proxy gives up on us
		}()
	}
	wg.Wait()
	if got := r.metric(t, "pgtrust_client_rejections_total", map[string]string{"reason": rejectStartupTimeout}); got != silent {
		t.Errorf("startup_timeout rejections = %v, want %d", got, silent)
	}
	if got := r.metric(t, "pgtrust_upstream_failures_total", nil); got != 0 {
		t.Errorf("upstream failures = %v, want 0\n%s", got, r.logs.String())
	}
	if got := r.metric(t, "pgtrust_upstream_up", nil); got != 1 {
		t.Errorf("pgtrust_upstream_up = %v, want 1", got)
	}
	if st := r.HealthStatus().Upstreams[0].Status; st != StatusHealthy {
		t.Errorf("health %q after silent clients, want healthy", st)
	}
}

// TestUpstreamTimeoutReachesClient: an upstream that accepts and never
// answers. The client (psql) gets an ErrorResponse with the class and fix,
// not "server closed the connection unexpectedly" (before, the dial used
// the client's deadline, which had passed when the answer was written).
func TestUpstreamTimeoutReachesClient(t *testing.T) {
	host, fport := pgtest.FakeServer(t, pgtest.FakeSilent)
	r := startProxy(t, Config{StartupTimeout: 500 * time.Millisecond, ConnectTimeout: 500 * time.Millisecond,
		Upstreams: []UpstreamConfig{{Name: "main", Listen: "127.0.0.1:0",
			Conn: mustParse(t, fmt.Sprintf("host=%s port=%d sslmode=require", host, fport))}}})
	res := pgtest.Psql(t, fmt.Sprintf("host=127.0.0.1 port=%d user=app sslmode=disable", r.port(t, "main")), nil)
	if res.OK || !strings.Contains(res.Stderr, "pgtrust: upstream main: timeout") || strings.Contains(res.Stderr, "closed the connection unexpectedly") {
		t.Fatalf("psql through a silent upstream: %s", res.Stderr)
	}
	t.Logf("psql: %s", strings.TrimSpace(res.Stderr))
	if got := r.metric(t, "pgtrust_upstream_failures_total", map[string]string{"class": "timeout"}); got < 1 {
		t.Errorf("timeout failures = %v", got)
	}
}

// TestEvidenceHiddenOnPublicListener: on a listener reachable from other
// machines an unauthenticated client gets the class, a generic message and
// a correlation id; the evidence is in the log line with the same id. (The
// listener is loopback in the test; the flag is what a non-loopback address
// sets at Start.)
func TestEvidenceHiddenOnPublicListener(t *testing.T) {
	host, fport := pgtest.FakeServer(t, pgtest.FakeSilent)
	r := startProxy(t, Config{ConnectTimeout: 300 * time.Millisecond,
		Upstreams: []UpstreamConfig{{Name: "main", Listen: "127.0.0.1:0",
			Conn: mustParse(t, fmt.Sprintf("host=%s port=%d sslmode=require", host, fport))}}})
	r.mu.Lock()
	if r.listeners[0].public {
		t.Fatal("a loopback listener counts as public")
	}
	r.listeners[0].public = true
	r.mu.Unlock()
	res := pgtest.Psql(t, fmt.Sprintf("host=127.0.0.1 port=%d user=app sslmode=disable", r.port(t, "main")), nil)
	evidence := fmt.Sprintf("%s:%d", host, fport)
	if res.OK || !strings.Contains(res.Stderr, "timeout") || strings.Contains(res.Stderr, evidence) || !strings.Contains(res.Stderr, "(ref ") {
		t.Fatalf("client saw: %s", res.Stderr)
	}
	ref := res.Stderr[strings.Index(res.Stderr, "(ref ")+5:]
	ref = ref[:strings.IndexByte(ref, ')')]
	var line string
	for _, l := range lines(r.logs.String()) {
		if strings.Contains(l, "ref="+ref) {
			line = l
		}
	}
	if line == "" || !strings.Contains(line, "class=timeout") {
		t.Fatalf("no log line with ref=%s and the class:\n%s", ref, r.logs.String())
	}
	t.Logf("client: %s\nlog: %s", strings.TrimSpace(res.Stderr), line)
}

// TestOutageShowsAtOnce: PostgreSQL stops under an open session. With no
// periodic probe and no new client, health turns unhealthy because the
// dropped upstream triggers an immediate probe (before, it stayed healthy
// until a client happened to fail).
func TestOutageShowsAtOnce(t *testing.T) {
	env := newEnv(t)
	r := startProxy(t, Config{Upstreams: []UpstreamConfig{{Name: "main", Listen: "127.0.0.1:0", Conn: env.upstream(t)}}})
	c, err := pgxConnect(t, r.port(t, "main"), "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	if st := r.HealthStatus().Upstreams[0].Status; st != StatusHealthy {
		t.Fatalf("health %q with a session open", st)
	}
	env.srv.Stop(t)
	waitFor(t, "health to report the outage", 20*time.Second, func() bool {
		return r.HealthStatus().Upstreams[0].Status == StatusUnhealthy
	})
	if got := r.metric(t, "pgtrust_upstream_up", nil); got != 0 {
		t.Errorf("pgtrust_upstream_up = %v after the outage", got)
	}
	if ok, why := r.Ready(); !ok {
		t.Errorf("Ready = false (%s) with the upstream down; the proxy still answers clients", why)
	}
	t.Logf("after the stop: %+v", r.HealthStatus().Upstreams[0].LastError)
}

// TestPlaintextUpstreamIsInsecure: a reachable upstream without TLS is
// "insecure" in health, unless plaintext is declared intended.
func TestPlaintextUpstreamIsInsecure(t *testing.T) {
	host, fport := pgtest.FakeServer(t, pgtest.FakeRefuseSSL)
	for _, intended := range []bool{false, true} {
		r := startProxy(t, Config{Upstreams: []UpstreamConfig{{Name: "main", Listen: "127.0.0.1:0", PlaintextIntended: intended,
			Conn: mustParse(t, fmt.Sprintf("host=%s port=%d sslmode=prefer", host, fport))}}})
		r.probe(context.Background(), r.upstreams[0])
		st := r.HealthStatus().Upstreams[0]
		want := StatusInsecure
		if intended {
			want = StatusHealthy
		}
		if st.Status != want || st.SSLEnabled {
			t.Errorf("plaintext_intended=%v: status %q ssl_enabled %v, want %q", intended, st.Status, st.SSLEnabled, want)
		}
	}
}

// TestStartupAnsweredAsPostgreSQL: a second SSLRequest after 'N' and a
// StartupMessage without a user get PostgreSQL's own answers (compared with
// the real server over its Unix socket, where it also answers 'N'), and the
// empty startup costs no upstream dial.
func TestStartupAnsweredAsPostgreSQL(t *testing.T) {
	env := newEnv(t)
	r := startProxy(t, Config{Upstreams: []UpstreamConfig{{Name: "main", Listen: "127.0.0.1:0", Conn: env.upstream(t)}}})
	proxyAddr := fmt.Sprintf("127.0.0.1:%d", r.port(t, "main"))
	pgSock := fmt.Sprintf("%s/.s.PGSQL.%d", env.srv.SocketDir, env.srv.Port)
	ssl, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	noUser, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"database": "appdb"}}).Encode(nil)

	ask := func(network, addr string, packets ...[]byte) (string, string) {
		t.Helper()
		c, err := net.DialTimeout(network, addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(15 * time.Second))
		for i, p := range packets {
			if _, err := c.Write(p); err != nil {
				t.Fatal(err)
			}
			if i < len(packets)-1 {
				var b [1]byte
				if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'N' {
					t.Fatalf("%s: answer to SSLRequest %q %v", addr, b, err)
				}
			}
		}
		code, msg := errorCode(t, readAll(t, c))
		return code, msg
	}
	dialsBefore := r.metric(t, "pgtrust_upstream_dial_seconds", nil)
	for _, tc := range []struct {
		name    string
		packets [][]byte
	}{
		{"second SSLRequest", [][]byte{ssl, ssl}},
		{"no user", [][]byte{noUser}},
		{"no user after SSLRequest", [][]byte{ssl, noUser}},
	} {
		pgCode, pgMsg := ask("unix", pgSock, tc.packets...)
		code, msg := ask("tcp", proxyAddr, tc.packets...)
		// PostgreSQL 15 supports protocol 3.0 to 3.0, the proxy passes 3.0 to
		// 3.2 through: compare the text up to the version range.
		cut := func(s string) string {
			if i := strings.Index(s, " to 3."); i > 0 {
				return s[:i]
			}
			return s
		}
		if code != pgCode || cut(msg) != cut(pgMsg) {
			t.Errorf("%s: proxy %s %q, PostgreSQL %s %q", tc.name, code, msg, pgCode, pgMsg)
		}
		t.Logf("%s: %s %s", tc.name, code, msg)
	}
	if got := r.metric(t, "pgtrust_upstream_dial_seconds", nil); got != dialsBefore {
		t.Errorf("refused startups cost %v upstream dials", got-dialsBefore)
	}
}

// TestRefusalLogFlood: 5,000 bogus CancelRequests and 300 idle connections
// (the adversarial run logged one WARN line each) now give one line per
// kind and one summary line with the count; the metrics keep exact totals.
func TestRefusalLogFlood(t *testing.T) {
	env := newEnv(t)
	r := startProxy(t, Config{StartupTimeout: 2 * time.Second, RefusalLogInterval: time.Hour,
		Upstreams: []UpstreamConfig{{Name: "main", Listen: "127.0.0.1:0", Conn: env.upstream(t)}}})
	addr := fmt.Sprintf("127.0.0.1:%d", r.port(t, "main"))
	cancel, _ := (&pgproto3.CancelRequest{ProcessID: 4242, SecretKey: []byte{1, 2, 3, 4}}).Encode(nil)
	const cancels, idle = 5000, 300
	run := func(n, workers int, f func()) {
		var wg sync.WaitGroup
		work := make(chan struct{})
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range work {
					f()
				}
			}()
		}
		for range n {
			work <- struct{}{}
		}
		close(work)
		wg.Wait()
	}
	run(cancels, 16, func() {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(15 * time.Second))
		_, _ = c.Write(cancel)
		_, _ = io.Copy(io.Discard, c) // the proxy closes once it has handled it
	})
	run(idle, idle/2, func() {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(15 * time.Second))
		_, _ = io.Copy(io.Discard, c) // until the startup timeout
	})
	waitFor(t, "the cancel metric", 10*time.Second, func() bool {
		return r.metric(t, "pgtrust_cancel_requests_total", map[string]string{"result": "unknown"}) == cancels
	})
	if got := r.metric(t, "pgtrust_client_rejections_total", map[string]string{"reason": rejectStartupTimeout}); got != idle {
		t.Errorf("startup_timeout rejections = %v, want %d", got, idle)
	}
	r.Close() // flushes the summaries
	var cancelLines, idleLines []string
	for _, l := range lines(r.logs.String()) {
		switch {
		case strings.Contains(l, "cancel request for an unknown session"):
			cancelLines = append(cancelLines, l)
		case strings.Contains(l, "reason="+rejectStartupTimeout):
			idleLines = append(idleLines, l)
		}
	}
	if len(cancelLines) != 2 || !strings.Contains(cancelLines[1], fmt.Sprintf("repeated=%d", cancels-1)) {
		t.Errorf("%d cancel lines, want the first and one summary with repeated=%d:\n%s", len(cancelLines), cancels-1, strings.Join(cancelLines, "\n"))
	}
	if len(idleLines) != 2 || !strings.Contains(idleLines[1], fmt.Sprintf("repeated=%d", idle-1)) {
		t.Errorf("%d idle lines, want the first and one summary with repeated=%d:\n%s", len(idleLines), idle-1, strings.Join(idleLines, "\n"))
	}
	t.Logf("%d cancels + %d idle connections: %d log lines in all\n%s\n%s", cancels, idle, len(lines(r.logs.String())),
		strings.Join(cancelLines, "\n"), strings.Join(idleLines, "\n"))
}

// TestDrainDelay: during drain_delay Ready is false but the listener still
// accepts and serves new clients (load balancers are still catching up);
// after it the listener closes.
func TestDrainDelay(t *testing.T) {
	env := newEnv(t)
	r := startProxy(t, Config{DrainDelay: time.Hour, Upstreams: []UpstreamConfig{{Name: "main", Listen: "127.0.0.1:0", Conn: env.upstream(t)}}})
	port := r.port(t, "main")
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Shutdown(ctx) }()
	waitFor(t, "not ready", 5*time.Second, func() bool { ok, _ := r.Ready(); return !ok })
	c, err := pgxConnect(t, port, "sslmode=disable")
	if err != nil {
		t.Fatalf("a client during the drain delay: %v", err)
	}
	c.Close(context.Background())
	stop() // the delay ends (here by ctx; normally by its own timer)
	waitFor(t, "listener closed", 10*time.Second, func() bool {
		nc, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			nc.Close()
		}
		return err != nil
	})
	<-done
}

// TestUnixSocketDirRefused: an existing socket directory writable by others
// stops Start with config_invalid and a fix.
func TestUnixSocketDirRefused(t *testing.T) {
	env := newEnv(t)
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	p, err := New(Config{Upstreams: []UpstreamConfig{{Name: "main", UnixSocketDir: dir, Conn: env.upstream(t)}}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	err = p.Start(context.Background())
	fe, ok := failure.As(err)
	if !ok || fe.Class != failure.ConfigInvalid || !strings.Contains(fe.Fix, "chmod 0700") {
		t.Fatalf("Start with a 0777 socket directory: %v", err)
	}
	t.Logf("%s\n  fix: %s", fe.Error(), fe.Fix)
}

// mutedAfterStartup is an upstream that negotiates TLS and reads the
// startup packet, then never answers: a server hung in authentication
// (an LDAP or RADIUS backend that does not reply). No real server can be
// made to do this on demand.
func mutedAfterStartup(t *testing.T) int {
	t.Helper()
	ca := testpki.NewRootCA(t, "muted upstream CA")
	leaf := ca.Server(t)
	cert, err := tls.X509KeyPair(leaf.ChainPEM, leaf.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				var req [8]byte
				if _, err := io.ReadFull(c, req[:]); err != nil {
					return
				}
				if _, err := c.Write([]byte{'S'}); err != nil {
					return
				}
				tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
				if err := tc.Handshake(); err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, tc) // the startup packet, then silence
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestUpstreamSilentDuringAuthentication: the upstream reads the startup
// packet and never answers. The client gets an ErrorResponse with class
// timeout and the fix (before: a bare close), and it counts as the
// upstream's failure, not as the client's auth_timeout.
func TestUpstreamSilentDuringAuthentication(t *testing.T) {
	port := mutedAfterStartup(t)
	r := startProxy(t, Config{AuthTimeout: 300 * time.Millisecond, ConnectTimeout: 300 * time.Millisecond,
		Upstreams: []UpstreamConfig{{Name: "main", Listen: "127.0.0.1:0",
			Conn: mustParse(t, fmt.Sprintf("host=127.0.0.1 port=%d sslmode=require", port))}}})
	res := pgtest.Psql(t, fmt.Sprintf("host=127.0.0.1 port=%d user=app sslmode=disable", r.port(t, "main")), nil)
	if res.OK || !strings.Contains(res.Stderr, "pgtrust: upstream main: timeout") || !strings.Contains(res.Stderr, "HINT:") ||
		strings.Contains(res.Stderr, "closed the connection unexpectedly") {
		t.Fatalf("psql: %s\n%s", res.Stderr, r.logs.String())
	}
	t.Logf("psql: %s", strings.TrimSpace(res.Stderr))
	if got := r.metric(t, "pgtrust_upstream_failures_total", map[string]string{"class": "timeout"}); got != 1 {
		t.Errorf("upstream timeout failures = %v, want 1", got)
	}
	if got := r.metric(t, "pgtrust_client_rejections_total", map[string]string{"reason": rejectAuthTimeout}); got != 0 {
		t.Errorf("the upstream's silence was counted as the client's auth_timeout (%v)", got)
	}
}

// TestSlotRefusalOnPublicListener: a client refused for lack of a slot on a
// public listener learns that the proxy is full, not its limits; on a
// loopback listener the detail names them.
func TestSlotRefusalOnPublicListener(t *testing.T) {
	env := newEnv(t)
	r := startProxy(t, Config{Upstreams: []UpstreamConfig{{Name: "main", Listen: "127.0.0.1:0", Conn: env.upstream(t), MaxConnections: 1}}})
	held, err := pgxConnect(t, r.port(t, "main"), "sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close(context.Background())
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=app sslmode=disable", r.port(t, "main"))
	loopback := pgtest.Psql(t, dsn, nil)
	if loopback.OK || !strings.Contains(loopback.Stderr, "max_connections=1") {
		t.Fatalf("loopback client saw: %s", loopback.Stderr)
	}
	r.mu.Lock()
	r.listeners[0].public = true
	r.mu.Unlock()
	public := pgtest.Psql(t, dsn, nil)
	if public.OK || !strings.Contains(public.Stderr, "too many clients") || strings.Contains(public.Stderr, "max_connections") || strings.Contains(public.Stderr, "main") {
		t.Fatalf("public client saw: %s", public.Stderr)
	}
}

// TestPendingCap: TCP connections that have not sent a startup packet are
// capped at max_pending; the next one is refused at once with 53300, and a
// slot frees when a pending connection goes.
func TestPendingCap(t *testing.T) {
	env := newEnv(t)
	r := startProxy(t, Config{StartupTimeout: 30 * time.Second, Upstreams: []UpstreamConfig{{Name: "main", Listen: "127.0.0.1:0", Conn: env.upstream(t), MaxPending: 3}}})
	addr := fmt.Sprintf("127.0.0.1:%d", r.port(t, "main"))
	var silent []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		silent = append(silent, c)
	}
	waitFor(t, "3 pending connections", 5*time.Second, func() bool { return r.upstreams[0].pending.Load() == 3 })
	over, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer over.Close()
	_ = over.SetReadDeadline(time.Now().Add(5 * time.Second))
	msg, err := io.ReadAll(over)
	if err != nil || len(msg) == 0 || msg[0] != 'E' || !strings.Contains(string(msg), "53300") {
		t.Fatalf("over the cap: %q, %v", msg, err)
	}
	if got := r.metric(t, "pgtrust_client_rejections_total", map[string]string{"reason": rejectTooManyPending}); got != 1 {
		t.Errorf("too_many_pending rejections = %v", got)
	}
	silent[0].Close()
	waitFor(t, "a pending slot to free", 5*time.Second, func() bool { return r.upstreams[0].pending.Load() == 2 })
	if _, err := pgxConnect(t, r.port(t, "main"), "sslmode=disable"); err != nil {
		t.Fatalf("a real client after a slot freed: %v", err)
	}
}
