//go:build linux

package proxy

import (
	"bytes"
	"context"
	"fmt"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/pooling"
)

// poolGoroutines counts the goroutines running a pooled session's relay
// (its client goroutine or its server pump), from the goroutine profile:
// exact whatever else the test process runs.
func poolGoroutines(t *testing.T) int {
	t.Helper()
	var b bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&b, 2); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range strings.Split(b.String(), "\n\n") {
		if strings.Contains(g, "pooling.(*Session).pump(") || strings.Contains(g, "pooling.(*Session).run(") {
			n++
		}
	}
	return n
}

// pooledOnLoops counts the proxy's pooled sessions that run on an event
// loop.
func (r *running) pooledOnLoops() int {
	r.mu.Lock()
	var all []*session
	for s := range r.sessions {
		all = append(all, s)
	}
	r.mu.Unlock()
	n := 0
	for _, s := range all {
		s.mu.Lock()
		pl := s.pooled
		s.mu.Unlock()
		if pl != nil && pl.OnLoop() {
			n++
		}
	}
	return n
}

// TestPoolSessionModeOnEventLoops: session-mode sessions run on the event
// loops (issue 15: the data path covers pooled sessions): with the loops,
// sixteen open sessions have no goroutine of their own; with
// event_loops = -1 each has two. On the loops, each session's state still
// reaches its server connection, every server connection is reset and
// reused by the next client, and a terminated backend's FATAL reaches its
// client alone (no 08006 after it).
//
// Not parallel: the goroutine count is the process's, so no other test's
// pooled sessions may run meanwhile (parallel tests wait for this one).
func TestPoolSessionModeOnEventLoops(t *testing.T) {
	env := newEnv(t)
	const sessions = 16
	for _, c := range []struct {
		name  string
		loops int
	}{{"loops", 0}, {"goroutines", -1}} {
		t.Run(c.name, func(t *testing.T) {
			up := env.upstream(t)
			up.User, up.Database = "app", "appdb"
			p := startProxy(t, Config{EventLoops: c.loops, Upstreams: []UpstreamConfig{{
				Name: "pooled", Listen: "127.0.0.1:0", Conn: up, Auth: &UpstreamAuth{Role: "app"},
				Pool: &PoolConfig{Mode: pooling.ModeSession, Size: sessions},
			}}})
			port := p.port(t, "pooled")
			before := poolGoroutines(t)
			var conns []*pgx.Conn
			pids := map[string]bool{}
			for i := range sessions {
				conn, err := pgxConnect(t, port, "sslmode=disable")
				if err != nil {
					t.Fatalf("session %d: %v", i, err)
				}
				conns = append(conns, conn)
				mustStr(t, conn, fmt.Sprintf("SELECT set_config('work_mem', '%dMB', false)", 8+i))
				pids[mustStr(t, conn, "SELECT pg_backend_pid()::text")] = true
			}
			// A message goes both ways on each session first, so that a
			// session still being handed over is not counted.
			for i, conn := range conns {
				if got := mustStr(t, conn, "SHOW work_mem"); got != fmt.Sprintf("%dMB", 8+i) {
					t.Fatalf("session %d: work_mem %s", i, got)
				}
			}
			per := float64(poolGoroutines(t)-before) / sessions
			onLoop := p.pooledOnLoops()
			t.Logf("%s: %.2f relay goroutines per open session-mode session; %d of %d sessions on a loop", c.name, per, onLoop, sessions)
			if want := map[bool]int{true: sessions, false: 0}[c.loops >= 0]; onLoop != want {
				t.Errorf("%d pooled sessions on an event loop, want %d", onLoop, want)
			}
			switch {
			case c.loops >= 0 && per != 0:
				t.Errorf("%.2f goroutines per session on the event loops, want 0", per)
			case c.loops < 0 && per < 2:
				t.Errorf("%.2f goroutines per session with event_loops = -1, want 2 (a client goroutine and a pump)", per)
			}
			if len(pids) != sessions {
				t.Fatalf("%d backends for %d sessions", len(pids), sessions)
			}
			for _, conn := range conns {
				conn.Close(context.Background())
			}
			// Every server connection was kept, reset and is reused: the
			// next sessions find the same backends, with the defaults.
			labels := map[string]string{"pool": "local", "state": "idle"}
			waitFor(t, "the resets", 10*time.Second, func() bool { return p.metric(t, "pgtrust_pool_servers", labels) == sessions })
			for i := range sessions {
				conn, err := pgxConnect(t, port, "sslmode=disable")
				if err != nil {
					t.Fatalf("second round, session %d: %v", i, err)
				}
				pid := mustStr(t, conn, "SELECT pg_backend_pid()::text")
				wm := mustStr(t, conn, "SHOW work_mem")
				conn.Close(context.Background())
				if !pids[pid] || wm != "4MB" {
					t.Fatalf("second round, session %d: backend %s work_mem %s, want one of the first backends, reset to 4MB", i, pid, wm)
				}
			}
			closed := p.metric(t, "pgtrust_pool_servers_closed_total", map[string]string{"pool": "local", "database": "appdb", "role": "app"})
			if closed != 0 {
				t.Fatalf("%v server connections closed, want none (each was kept and reset)", closed)
			}

			conn, err := pgxConnect(t, port, "sslmode=disable")
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			// An error longer than anything the loop assembles (2 MB of
			// message) reaches the client whole, and the session goes on.
			_, err = str(conn, "DO $$ BEGIN RAISE EXCEPTION '%', repeat('x', 2000000); END $$")
			if pe := wantPgError(t, "a 2 MB error", err, "xxxx", "P0001"); len(pe.Message) != 2000000 {
				t.Fatalf("the error's message has %d bytes, want 2000000", len(pe.Message))
			}
			// A cancel reaches the session's server connection.
			go func() {
				time.Sleep(300 * time.Millisecond)
				_ = conn.PgConn().CancelRequest(context.Background())
			}()
			_, err = str(conn, "SELECT pg_sleep(20)::text")
			wantPgError(t, "a cancelled query", err, "cancel", "57014")

			// A terminated backend: its FATAL, alone.
			victim := mustStr(t, conn, "SELECT pg_backend_pid()::text") // and the session goes on
			env.srv.Exec(t, "SELECT pg_terminate_backend("+victim+")")
			_, err = str(conn, "SELECT 1::text")
			wantPgError(t, "query after the backend was terminated", err, "terminat", "57P01")
			// The session ends: attributed to the server, or, when the
			// client's close after the FATAL is seen first (the goroutine
			// path reads both sides at once), to the client. Only this
			// session sent a 2 MB error.
			waitFor(t, "the session's end", 10*time.Second, func() bool {
				logs := p.logs.String()
				if strings.Contains(logs, "server ended the connection: 57P01") {
					return true
				}
				for _, line := range strings.Split(logs, "\n") {
					if strings.Contains(line, `reason="client closed"`) && strings.Contains(line, "bytes_upstream_to_client=20005") {
						return true
					}
				}
				return false
			})
		})
	}
}

// TestPoolSessionModePlaintextUpstream: a session-mode pool over a
// plaintext Unix-socket upstream stays on goroutines (pgtls wraps only TLS
// connections for the loops, and a loop could not give back a socket it
// has no Conn of the caller's for), and its server connections are still
// reset and reused.
func TestPoolSessionModePlaintextUpstream(t *testing.T) {
	t.Parallel()
	srv := pgtest.Start(t, pgtest.Options{Setup: []string{"CREATE ROLE app LOGIN", "CREATE DATABASE appdb OWNER app"}})
	up := mustParse(t, fmt.Sprintf("host=%s port=%d sslmode=disable", srv.SocketDir, srv.Port))
	up.User, up.Database = "app", "appdb"
	p := startProxy(t, Config{Upstreams: []UpstreamConfig{{
		Name: "pooled", Listen: "127.0.0.1:0", Conn: up, PlaintextIntended: true, Auth: &UpstreamAuth{Role: "app"},
		Pool: &PoolConfig{Mode: pooling.ModeSession, Size: 2},
	}}})
	port := p.port(t, "pooled")
	idle := map[string]string{"pool": "local", "state": "idle"}
	var pids []string
	for i := range 3 {
		conn, err := pgxConnect(t, port, "sslmode=disable")
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		pids = append(pids, mustStr(t, conn, "SELECT pg_backend_pid()::text"))
		if n := p.pooledOnLoops(); n != 0 {
			t.Errorf("%d sessions over a plaintext upstream on an event loop, want 0", n)
		}
		conn.Close(context.Background())
		waitFor(t, "the reset", 10*time.Second, func() bool { return p.metric(t, "pgtrust_pool_servers", idle) == 1 })
	}
	closed := p.metric(t, "pgtrust_pool_servers_closed_total", map[string]string{"pool": "local", "database": "appdb", "role": "app"})
	if closed != 0 || pids[0] != pids[1] || pids[1] != pids[2] {
		t.Fatalf("backends %v and %v closed, want one backend reused", pids, closed)
	}
}
