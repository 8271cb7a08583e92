package userlist

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/scram"
	"github.com/pgtrust/pgtrust/internal/secretscan"
)

var fakeKey = []byte("userlist-test-fake-salt-key-0123")

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// syncBuf is a log sink the lookup goroutines write to.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// startPG starts PostgreSQL with a NOSUPERUSER lookup role, the lookup
// function, and roles of every kind the function must hide.
func startPG(t *testing.T, version int) *pgtest.Server {
	t.Helper()
	return pgtest.Start(t, pgtest.Options{
		Version: version,
		HBA:     []string{"local all all trust", "host all all 127.0.0.1/32 scram-sha-256"},
		Setup: []string{
			"SET password_encryption = 'scram-sha-256';" +
				"CREATE ROLE u_lookup LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB PASSWORD '" + lookupSecret + "';" +
				"CREATE ROLE u_app LOGIN PASSWORD '" + appSecret + "';" +
				"CREATE ROLE u_nologin NOLOGIN PASSWORD '" + appSecret + "';" +
				"CREATE ROLE u_expired LOGIN PASSWORD '" + appSecret + "' VALID UNTIL '2000-01-01';" +
				"CREATE ROLE u_super LOGIN SUPERUSER PASSWORD '" + appSecret + "';" +
				"CREATE ROLE u_nopw LOGIN;" +
				"SET password_encryption = 'md5'; CREATE ROLE u_md5 LOGIN PASSWORD '" + appSecret + "';",
			FunctionSQL("u_lookup"),
		},
	})
}

func dialer(srv *pgtest.Server, user, password string) func(ctx context.Context) (*pgconn.PgConn, error) {
	return func(ctx context.Context) (*pgconn.PgConn, error) {
		cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=disable connect_timeout=10", srv.Port, user))
		if err != nil {
			return nil, err
		}
		cfg.Password = password
		return pgconn.ConnectConfig(ctx, cfg)
	}
}

func lookup(t *testing.T, a *AuthQuery, user string) *scram.Verifier {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	v, err := a.Lookup(ctx, user)
	if err != nil {
		t.Fatalf("Lookup(%q): %v", user, err)
	}
	return v
}

func dropIdle(a *AuthQuery) {
	for len(a.idle) > 0 {
		closeConn(<-a.idle)
	}
}

func TestAuthQueryPostgreSQL(t *testing.T) {
	for _, version := range []int{15, 18} {
		t.Run(fmt.Sprintf("PG%d", version), func(t *testing.T) {
			t.Parallel()
			srv := startPG(t, version)
			dial := dialer(srv, "u_lookup", lookupSecret)
			logs := &syncBuf{}
			clk := &clock{t: time.Unix(1_800_000_000, 0)}
			a := NewAuthQuery(dial, AuthQueryOptions{FakeSaltKey: fakeKey, Logger: slog.New(slog.NewTextHandler(logs, nil)), Now: clk.now})
			defer a.Close()
			defer func() { secretscan.Record(t, "auth_query log", logs.String()) }()

			t.Run("lookup role is not superuser and cannot read pg_authid", func(t *testing.T) {
				if got := srv.Exec(t, "SELECT rolsuper FROM pg_roles WHERE rolname = 'u_lookup'"); got != "f" {
					t.Fatalf("rolsuper = %q", got)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				c, err := dial(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close(ctx)
				_, err = c.Exec(ctx, "SELECT rolpassword FROM pg_catalog.pg_authid").ReadAll()
				var pgErr *pgconn.PgError
				if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
					t.Fatalf("reading pg_authid as the lookup role: %v", err)
				}
				// The contract's query run directly is refused with the fix.
				direct := NewAuthQuery(dial, AuthQueryOptions{FakeSaltKey: fakeKey,
					Query: "SELECT rolname, rolpassword FROM pg_catalog.pg_authid WHERE rolname = $1 AND rolcanlogin"})
				defer direct.Close()
				_, err = direct.Lookup(ctx, "u_app")
				fe, ok := failure.As(err)
				if !ok || fe.Class != failure.ConfigInvalid || !strings.Contains(fe.Message, "42501") || !strings.Contains(fe.Fix, "FunctionSQL") {
					t.Fatalf("direct pg_authid query: %v", err)
				}
			})

			t.Run("known user gets PostgreSQL's verifier", func(t *testing.T) {
				v := lookup(t, a, "u_app")
				if v.String() != srv.Exec(t, "SELECT rolpassword FROM pg_authid WHERE rolname = 'u_app'") {
					t.Fatal("the verifier differs from pg_authid.rolpassword")
				}
				if a.IsDecoy(v) {
					t.Fatal("a real verifier is reported as a decoy")
				}
			})

			t.Run("hidden roles get decoys shaped like real verifiers", func(t *testing.T) {
				for _, user := range []string{"u_nologin", "u_expired", "u_super", "u_nopw", "u_md5", "no_such_user", "u_lookup\x00", strings.Repeat("u", 64), "bad\xffutf8"} {
					v := lookup(t, a, user)
					if !a.IsDecoy(v) {
						t.Fatalf("%q: not a decoy", user)
					}
					if v.Iterations != scram.DefaultIterations || !bytes.Equal(v.Salt, scram.FakeSalt(fakeKey, user)) {
						t.Fatalf("%q: decoy salt or iterations differ from scram's unknown-user path", user)
					}
					if w := lookup(t, a, user); !bytes.Equal(w.Salt, v.Salt) {
						t.Fatalf("%q: decoy salt not stable", user)
					}
				}
			})

			t.Run("one TTL for known and unknown users", func(t *testing.T) {
				before := lookup(t, a, "u_app")
				if !a.IsDecoy(lookup(t, a, "u_late")) {
					t.Fatal("u_late exists already")
				}
				srv.Exec(t, "SET password_encryption = 'scram-sha-256'; ALTER ROLE u_app PASSWORD '"+wrongSecret+"'; CREATE ROLE u_late LOGIN PASSWORD '"+appSecret+"'")
				t.Cleanup(func() {
					// Later subtests log in with u_app's first password.
					srv.Exec(t, "ALTER ROLE u_app PASSWORD '"+appSecret+"'")
					a.Forget("u_app")
				})
				n := a.fetches.Load()
				clk.add(a.o.TTL - time.Second)
				if lookup(t, a, "u_app").String() != before.String() || !a.IsDecoy(lookup(t, a, "u_late")) || a.fetches.Load() != n {
					t.Fatal("an answer younger than the TTL was fetched again")
				}
				clk.add(time.Second)
				if lookup(t, a, "u_app").String() == before.String() {
					t.Fatal("the changed password was not fetched after the TTL")
				}
				if a.IsDecoy(lookup(t, a, "u_late")) {
					t.Fatal("the new role was not fetched after the TTL")
				}
				if a.fetches.Load() != n+2 {
					t.Fatalf("%d fetches after the TTL, want 2", a.fetches.Load()-n)
				}
			})

			t.Run("singleflight per user", func(t *testing.T) {
				gate := make(chan struct{})
				gated := func(ctx context.Context) (*pgconn.PgConn, error) {
					<-gate
					return dial(ctx)
				}
				b := NewAuthQuery(gated, AuthQueryOptions{FakeSaltKey: fakeKey, Timeout: 30 * time.Second})
				defer b.Close()
				const n = 8
				results := make(chan *scram.Verifier, 2*n)
				for _, user := range []string{"u_app", "no_such_user"} {
					for range n {
						go func() {
							v, err := b.Lookup(context.Background(), user)
							if err != nil {
								t.Error(err)
							}
							results <- v
						}()
					}
				}
				for deadline := time.Now().Add(20 * time.Second); ; {
					b.mu.Lock()
					w := 0
					for _, f := range b.flights {
						w += f.waiters
					}
					flights := len(b.flights)
					b.mu.Unlock()
					if w == 2*n {
						if flights != 2 {
							t.Fatalf("%d flights for 2 users", flights)
						}
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("only %d waiters joined", w)
					}
					time.Sleep(5 * time.Millisecond)
				}
				close(gate)
				decoys := 0
				for range 2 * n {
					if v := <-results; b.IsDecoy(v) {
						decoys++
					}
				}
				if decoys != n || b.fetches.Load() != 2 {
					t.Fatalf("%d decoys, %d fetches; want %d and 2", decoys, b.fetches.Load(), n)
				}
			})

			t.Run("timeouts", func(t *testing.T) {
				slow := NewAuthQuery(dial, AuthQueryOptions{FakeSaltKey: fakeKey, Timeout: 300 * time.Millisecond,
					// The argument waits for the sleep, so known and unknown users both wait.
					Query: "SELECT rolname, rolpassword FROM " + FunctionSchema + "." + FunctionName + "((SELECT $1::name FROM pg_catalog.pg_sleep(30)))"})
				defer slow.Close()
				for _, user := range []string{"u_app", "no_such_user"} {
					_, err := slow.Lookup(context.Background(), user)
					if failure.ClassOf(err) != failure.Timeout {
						t.Fatalf("%s: slow query: %v", user, err)
					}
				}
				hang := NewAuthQuery(func(ctx context.Context) (*pgconn.PgConn, error) { <-ctx.Done(); return nil, ctx.Err() },
					AuthQueryOptions{FakeSaltKey: fakeKey, Timeout: 100 * time.Millisecond})
				if _, err := hang.Lookup(context.Background(), "u_app"); failure.ClassOf(err) != failure.Timeout {
					t.Fatalf("hanging dial: %v", err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				if _, err := hang.Lookup(ctx, "u_app"); failure.ClassOf(err) != failure.Timeout {
					t.Fatalf("canceled caller: %v", err)
				}
			})

			t.Run("database unreachable: same result for known and unknown users", func(t *testing.T) {
				var down sync.Map
				flaky := func(ctx context.Context) (*pgconn.PgConn, error) {
					if _, ok := down.Load("down"); ok {
						return nil, errors.New("dial tcp 127.0.0.1: connection refused")
					}
					return dial(ctx)
				}
				for _, maxStale := range []time.Duration{0, time.Minute} {
					c := NewAuthQuery(flaky, AuthQueryOptions{FakeSaltKey: fakeKey, Now: clk.now, MaxStale: maxStale})
					known, unknown := lookup(t, c, "u_app"), lookup(t, c, "no_such_user")
					down.Store("down", true)
					dropIdle(c)
					clk.add(c.o.TTL)
					k, errK := c.Lookup(context.Background(), "u_app")
					u, errU := c.Lookup(context.Background(), "no_such_user")
					down.Delete("down")
					c.Close()
					if maxStale == 0 {
						if failure.ClassOf(errK) != failure.ConnectionRefused || failure.ClassOf(errU) != failure.ConnectionRefused || errK.Error() != errU.Error() {
							t.Fatalf("no MaxStale: %v / %v", errK, errU)
						}
						noSecret(t, errK, lookupSecret, known.String())
						continue
					}
					if errK != nil || errU != nil || k.String() != known.String() || !c.IsDecoy(u) || !bytes.Equal(u.Salt, unknown.Salt) {
						t.Fatalf("MaxStale: %v / %v", errK, errU)
					}
				}
			})

			t.Run("bad options", func(t *testing.T) {
				for _, o := range []AuthQueryOptions{{}, {FakeSaltKey: fakeKey, Query: "SELECT 1, 2"}, {FakeSaltKey: fakeKey, Iterations: -1}} {
					if _, err := NewAuthQuery(dial, o).Lookup(context.Background(), "u_app"); failure.ClassOf(err) != failure.ConfigInvalid {
						t.Fatalf("%+v: %v", o.Query, err)
					}
				}
				for _, c := range []struct{ query, user, want string }{
					{"SELECT rolname, rolpassword FROM pg_catalog.pg_roles WHERE $1::text IS NOT NULL", "u_app", "more than one row"},
					{"SELECT 'u_app'::name, NULL::text WHERE $1::text IS NOT NULL", "no_such_user", "another role"},
					{"SELECT $1::name, 2, 3", "u_app", "3 columns"},
				} {
					q := NewAuthQuery(dial, AuthQueryOptions{FakeSaltKey: fakeKey, Query: c.query})
					_, err := q.Lookup(context.Background(), c.user)
					q.Close()
					if failure.ClassOf(err) != failure.ConfigInvalid || !strings.Contains(err.Error(), c.want) {
						t.Fatalf("%s: %v", c.query, err)
					}
				}
				missing := NewAuthQuery(dial, AuthQueryOptions{FakeSaltKey: fakeKey, Query: "SELECT rolname, rolpassword FROM nowhere.f($1)"})
				defer missing.Close()
				_, err := missing.Lookup(context.Background(), "u_app")
				if fe, ok := failure.As(err); !ok || fe.Class != failure.ConfigInvalid || !strings.Contains(fe.Fix, "FunctionSQL") {
					t.Fatalf("missing function: %v", err)
				}
			})

			t.Run("non-SCRAM rows and iteration mismatch are logged, not returned", func(t *testing.T) {
				md5hash := "md5" + strings.Repeat("0123456789abcdef", 2)
				buf := &syncBuf{}
				q := NewAuthQuery(dial, AuthQueryOptions{FakeSaltKey: fakeKey, Iterations: 10000, Logger: slog.New(slog.NewTextHandler(buf, nil)),
					Query: "SELECT $1::name, CASE WHEN $1 = 'u_app' THEN (SELECT rolpassword FROM " + FunctionSchema + "." + FunctionName + "($1)) ELSE '" + md5hash + "' END"})
				defer q.Close()
				if v := lookup(t, q, "u_other"); !q.IsDecoy(v) || v.Iterations != 10000 {
					t.Fatal("an md5 row was not turned into a decoy")
				}
				got := lookup(t, q, "u_app")
				lookup(t, q, "u_app2")
				log := buf.String()
				secretscan.Record(t, "auth_query log", log)
				if !strings.Contains(log, "no SCRAM-SHA-256 verifier") || !strings.Contains(log, "iterations differ") || strings.Contains(log, md5hash) || strings.Contains(log, got.String()[14:]) {
					t.Fatalf("log: %s", strings.ReplaceAll(log, md5hash, "<HASH>"))
				}
			})

			t.Run("SCRAM login with the looked-up verifier", func(t *testing.T) {
				gw := startGateway(t, a)
				conninfo := fmt.Sprintf("host=127.0.0.1 port=%d dbname=app sslmode=disable gssencmode=disable", gw.port())
				cases := []struct {
					user, secret string
					ok, decoy    bool
				}{
					{"u_app", appSecret, true, false},
					{"u_app", wrongSecret, false, false},
					{"no_such_user", appSecret, false, true},
					{"u_md5", appSecret, false, true},
					{"u_super", appSecret, false, true},
				}
				for _, c := range cases {
					err := pgconnSelect(t, conninfo+" user="+c.user, c.secret)
					o := gw.next(t)
					if c.ok {
						if err != nil || o.err != nil {
							t.Fatalf("%s: pgconn %v, server %v", c.user, err, o.err)
						}
					} else {
						var pgErr *pgconn.PgError
						if !errors.As(err, &pgErr) || pgErr.Code != "28P01" || pgErr.Message != fmt.Sprintf("password authentication failed for user %q", c.user) {
							t.Fatalf("%s: pgconn: %v", c.user, err)
						}
						if !errors.Is(o.err, scram.ErrAuthFailed) || o.decoy != c.decoy {
							t.Fatalf("%s: server: %v decoy=%v", c.user, o.err, o.decoy)
						}
						noSecret(t, o.err, c.secret)
					}
					res := pgtest.Psql(t, conninfo+" user="+c.user, map[string]string{"PGPASSWORD": c.secret})
					secretscan.Record(t, "psql output", res.Stdout+res.Stderr)
					o = gw.next(t)
					if c.ok != res.OK || c.ok && strings.TrimSpace(res.Stdout) != "1" ||
						!c.ok && !strings.Contains(res.Stderr, fmt.Sprintf("password authentication failed for user \"%s\"", c.user)) {
						t.Fatalf("%s: psql exit %d: %s (server %v)", c.user, res.ExitCode, res.Stderr, o.err)
					}
				}
			})
		})
	}
}

func pgconnSelect(t *testing.T, conninfo, secret string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cfg, err := pgconn.ParseConfig(conninfo + " connect_timeout=10")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Password = secret
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	res, err := conn.Exec(ctx, "SELECT 1").ReadAll()
	if err != nil {
		return err
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || string(res[0].Rows[0][0]) != "1" {
		return fmt.Errorf("SELECT 1 returned %v", res)
	}
	return nil
}

// gateway is an in-test PostgreSQL front that authenticates with
// AuthQuery.Lookup and scram.Authenticate, as the pooling gateway will.
type gateway struct {
	ln net.Listener
	// candidates returns the exchange's verifiers (none: scram's
	// unknown-user path) and whether they are a decoy.
	candidates func(ctx context.Context, user string) ([]*scram.Verifier, bool, error)
	outcomes   chan outcome
	wg         sync.WaitGroup
}

type outcome struct {
	err   error
	decoy bool
}

func startGateway(t *testing.T, aq *AuthQuery) *gateway {
	t.Helper()
	return startFront(t, func(ctx context.Context, user string) ([]*scram.Verifier, bool, error) {
		v, err := aq.Lookup(ctx, user)
		if err != nil {
			return nil, false, err
		}
		return []*scram.Verifier{v}, aq.IsDecoy(v), nil
	})
}

func startFront(t *testing.T, candidates func(ctx context.Context, user string) ([]*scram.Verifier, bool, error)) *gateway {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gateway{ln: ln, candidates: candidates, outcomes: make(chan outcome, 16)}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			g.wg.Add(1)
			go func() {
				defer g.wg.Done()
				defer c.Close()
				g.handle(c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); g.wg.Wait() })
	return g
}

func (g *gateway) port() int { return g.ln.Addr().(*net.TCPAddr).Port }

func (g *gateway) next(t *testing.T) outcome {
	t.Helper()
	select {
	case o := <-g.outcomes:
		return o
	case <-time.After(30 * time.Second):
		t.Fatal("the gateway saw no authentication")
		return outcome{}
	}
}

func (g *gateway) handle(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	be := pgproto3.NewBackend(c, c)
	var startup *pgproto3.StartupMessage
	for startup == nil {
		msg, err := be.ReceiveStartupMessage()
		if err != nil {
			return
		}
		switch m := msg.(type) {
		case *pgproto3.SSLRequest, *pgproto3.GSSEncRequest:
			if _, err := c.Write([]byte("N")); err != nil {
				return
			}
		case *pgproto3.StartupMessage:
			startup = m
		default:
			return
		}
	}
	user := startup.Parameters["user"]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cands, decoy, err := g.candidates(ctx, user)
	if err != nil {
		g.outcomes <- outcome{err: err}
		return
	}
	_, err = scram.Authenticate(be, user, scram.ServerOptions{Candidates: cands, FakeSaltKey: fakeKey, Iterations: scram.DefaultIterations})
	g.outcomes <- outcome{err: err, decoy: decoy}
	if err != nil {
		be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "28P01",
			Message: fmt.Sprintf("password authentication failed for user %q", user)})
		_ = be.Flush()
		return
	}
	be.SetMaxBodyLen(0)
	be.Send(&pgproto3.AuthenticationOk{})
	for k, v := range map[string]string{"server_version": "15.0", "client_encoding": "UTF8", "standard_conforming_strings": "on", "DateStyle": "ISO, MDY", "integer_datetimes": "on"} {
		be.Send(&pgproto3.ParameterStatus{Name: k, Value: v})
	}
	be.Send(&pgproto3.BackendKeyData{ProcessID: 1, SecretKey: []byte{0, 0, 0, 1}})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if be.Flush() != nil {
		return
	}
	for {
		msg, err := be.Receive()
		if err != nil {
			return
		}
		switch msg.(type) {
		case *pgproto3.Query:
			be.Send(&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("?column?"), DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1}}})
			be.Send(&pgproto3.DataRow{Values: [][]byte{[]byte("1")}})
			be.Send(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")})
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
			if be.Flush() != nil {
				return
			}
		default:
			return
		}
	}
}
