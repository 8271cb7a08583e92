package userlist

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/scram"
)

// FunctionSchema and FunctionName name the lookup function FunctionSQL creates.
const (
	FunctionSchema = "pgtrust_auth"
	FunctionName   = "user_verifier"
)

// DefaultQuery calls the lookup function, schema-qualified so that no
// search_path can put another function in its place (PgBouncer's
// CVE-2025-12819). A custom query takes the user name as $1 and returns zero
// or one row of (rolname, rolpassword).
const DefaultQuery = "SELECT rolname, rolpassword FROM " + FunctionSchema + "." + FunctionName + "($1)"

// FunctionSQL is the SQL a superuser runs once, in the database the lookup
// role connects to, so that a NOSUPERUSER role can read SCRAM verifiers one
// user at a time without being able to read pg_authid. lookupRole is the
// role's name (quoted here as an identifier). The function is SECURITY
// DEFINER (it runs with its owner's rights), pins search_path, and returns
// nothing for roles that cannot log in, superusers (a pooler should not
// carry them, and the lookup role should not be able to read their
// verifiers), roles past VALID UNTIL (PgBouncer's CVE-2025-2291), and roles
// without a SCRAM verifier.
func FunctionSQL(lookupRole string) string {
	role := `"` + strings.ReplaceAll(lookupRole, `"`, `""`) + `"`
	fn := FunctionSchema + "." + FunctionName
	return `CREATE SCHEMA IF NOT EXISTS ` + FunctionSchema + `;
REVOKE ALL ON SCHEMA ` + FunctionSchema + ` FROM PUBLIC;
CREATE OR REPLACE FUNCTION ` + fn + `(p_user name)
RETURNS TABLE (rolname name, rolpassword text)
LANGUAGE sql STABLE STRICT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
  SELECT a.rolname, a.rolpassword
  FROM pg_catalog.pg_authid AS a
  WHERE a.rolname = p_user
    AND a.rolcanlogin
    AND NOT a.rolsuper
    AND (a.rolvaliduntil IS NULL OR a.rolvaliduntil > pg_catalog.now())
    AND a.rolpassword LIKE 'SCRAM-SHA-256$%'
$fn$;
REVOKE ALL ON FUNCTION ` + fn + `(name) FROM PUBLIC;
GRANT USAGE ON SCHEMA ` + FunctionSchema + ` TO ` + role + `;
GRANT EXECUTE ON FUNCTION ` + fn + `(name) TO ` + role + `;
`
}

// AuthQueryOptions configures an AuthQuery. Zero values take the defaults.
type AuthQueryOptions struct {
	// Query is run with the user name as $1 (default DefaultQuery).
	Query string
	// FakeSaltKey keys the salts of unknown users' decoy verifiers; required
	// (at least scram.MinFakeSaltKeyLen bytes), secret, stable across restarts
	// and replicas, and the same key the gateway gives scram.ServerOptions, so
	// a user name has one salt whichever path answers.
	FakeSaltKey []byte
	// Iterations of decoy verifiers (default scram.DefaultIterations): set it
	// to the iterations of the real verifiers (PostgreSQL's scram_iterations),
	// or a client could tell decoys by the count. A fetched verifier with
	// another count is logged once.
	Iterations int
	// TTL is how long an answer, a verifier or "no such user" alike, is used
	// before the database is asked again (default 15 s). It is one TTL for
	// both on purpose: a shorter TTL for unknown users would make their
	// lookups the slow ones at some ages, and a client could time that.
	TTL time.Duration
	// MaxStale lets an answer up to this old be used when the database cannot
	// be asked (down, timeout), again for known and unknown users alike.
	// Default 0: no stale answers, a failed fetch fails the lookup; a dropped
	// role or a changed password should not live on through an outage.
	MaxStale time.Duration
	// Timeout bounds one fetch: waiting for a connection slot, dialing and
	// the query (default 5 s).
	Timeout time.Duration
	// MaxConns bounds concurrent fetches and idle lookup connections (default 2).
	MaxConns int
	// MaxEntries bounds the cache (default 10000); when full, an entry chosen
	// at random is dropped, whichever kind it is.
	MaxEntries int
	// Logger receives operator notes (user names and reasons, never a
	// verifier). Nil discards them.
	Logger *slog.Logger
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time
}

// AuthQuery looks SCRAM verifiers up in PostgreSQL through a dedicated
// role. For a user the database does not return (no such role, NOLOGIN,
// superuser, expired, no SCRAM verifier), Lookup returns a decoy verifier of
// the same shape: the salt scram.FakeSalt gives for the name, the configured
// iterations, and keys no proof matches. The caller runs the exchange with
// it exactly as with a real one and the client sees a wrong password. Known
// and unknown users share one cache, one TTL, one flight per user and one
// error path, so neither timing nor results tell them apart; IsDecoy is for
// the operator's log after the exchange.
type AuthQuery struct {
	dial func(ctx context.Context) (*pgconn.PgConn, error)
	o    AuthQueryOptions
	log  *slog.Logger

	decoyStored, decoyServer [32]byte

	sem  chan struct{}
	idle chan *pgconn.PgConn

	mu      sync.Mutex
	cache   map[string]*entry
	flights map[string]*flight
	closed  bool

	fetches      atomic.Int64 // queries run (tests)
	iterWarnOnce sync.Once
	cfgErr       error
}

type entry struct {
	v       *scram.Verifier // nil: the database returned no usable verifier
	fetched time.Time
}

type flight struct {
	done    chan struct{}
	e       *entry
	err     error
	waiters int
}

// NewAuthQuery returns an AuthQuery that opens lookup connections with dial
// (connecting as the lookup role). Invalid options make every Lookup fail
// with a config_invalid error.
func NewAuthQuery(dial func(ctx context.Context) (*pgconn.PgConn, error), o AuthQueryOptions) *AuthQuery {
	if o.Query == "" {
		o.Query = DefaultQuery
	}
	if o.Iterations == 0 {
		o.Iterations = scram.DefaultIterations
	}
	if o.TTL <= 0 {
		o.TTL = 15 * time.Second
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.MaxConns <= 0 {
		o.MaxConns = 2
	}
	if o.MaxEntries <= 0 {
		o.MaxEntries = 10000
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	a := &AuthQuery{
		dial: dial, o: o, log: o.Logger,
		sem: make(chan struct{}, o.MaxConns), idle: make(chan *pgconn.PgConn, o.MaxConns),
		cache: make(map[string]*entry), flights: make(map[string]*flight),
	}
	if a.log == nil {
		a.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if _, err := rand.Read(a.decoyStored[:]); err != nil {
		panic("userlist: no randomness for decoy keys")
	}
	if _, err := rand.Read(a.decoyServer[:]); err != nil {
		panic("userlist: no randomness for decoy keys")
	}
	switch {
	case dial == nil:
		a.cfgErr = failure.New(failure.ConfigInvalid, "auth_query: no dial function").WithFix("pass a function that connects as the lookup role")
	case len(o.FakeSaltKey) < scram.MinFakeSaltKeyLen:
		a.cfgErr = failure.New(failure.ConfigInvalid, "auth_query: FakeSaltKey of %d bytes", len(o.FakeSaltKey)).
			WithEvidence("at least %d bytes are needed so unknown users' salts cannot be predicted", scram.MinFakeSaltKeyLen).
			WithFix("pass the gateway's fake-salt key")
	case o.Iterations < 1 || o.Iterations > scram.MaxIterations:
		a.cfgErr = failure.New(failure.ConfigInvalid, "auth_query: decoy iterations %d out of range", o.Iterations).
			WithFix("use PostgreSQL's scram_iterations (default %d)", scram.DefaultIterations)
	case !strings.Contains(o.Query, "$1"):
		a.cfgErr = failure.New(failure.ConfigInvalid, "auth_query: the query does not use $1").
			WithEvidence("the user name is passed as $1").WithFix("use the default query: %s", DefaultQuery)
	}
	return a
}

// Lookup returns user's verifier, or a decoy for a user the database does
// not return (see AuthQuery). An error means the lookup itself failed
// (database unreachable, timeout, permission, a bad query): the caller
// refuses the connection without starting the exchange.
func (a *AuthQuery) Lookup(ctx context.Context, user string) (*scram.Verifier, error) {
	if a.cfgErr != nil {
		return nil, a.cfgErr
	}
	// A name no role can have never reaches the database: PostgreSQL would
	// truncate a long one to another role's name, or fail on bad UTF-8.
	if checkName(user) != nil {
		return a.decoy(user), nil
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil, failure.New(failure.ConfigInvalid, "auth_query: closed").WithFix("do not use an AuthQuery after Close")
	}
	now := a.o.Now()
	if e, ok := a.cache[user]; ok && now.Sub(e.fetched) < a.o.TTL {
		a.mu.Unlock()
		return a.answer(user, e), nil
	}
	f, ok := a.flights[user]
	if !ok {
		f = &flight{done: make(chan struct{})}
		a.flights[user] = f
		go a.run(user, f)
	}
	f.waiters++
	a.mu.Unlock()

	select {
	case <-f.done:
	case <-ctx.Done():
		return nil, ctxError(ctx.Err(), "waiting for the auth_query lookup")
	}
	if f.err != nil {
		return nil, f.err
	}
	return a.answer(user, f.e), nil
}

// run is one flight: a fetch for user that every concurrent Lookup of the
// same user waits for. Its context is its own, so a caller that gives up
// does not fail the others.
func (a *AuthQuery) run(user string, f *flight) {
	ctx, cancel := context.WithTimeout(context.Background(), a.o.Timeout)
	defer cancel()
	v, err := a.fetch(ctx, user)
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.flights, user)
	now := a.o.Now()
	if err == nil {
		f.e = &entry{v: v, fetched: now}
		if _, ok := a.cache[user]; !ok && len(a.cache) >= a.o.MaxEntries {
			for k := range a.cache { // map order is random: no kind is favoured
				delete(a.cache, k)
				break
			}
		}
		a.cache[user] = f.e
	} else if e, ok := a.cache[user]; ok && a.o.MaxStale > 0 && now.Sub(e.fetched) < a.o.MaxStale {
		a.log.Warn("auth_query failed; using the cached answer", "user", user, "age", now.Sub(e.fetched).Round(time.Second), "error", failure.Text(err))
		f.e = e
	} else {
		f.err = err
	}
	close(f.done)
}

func (a *AuthQuery) answer(user string, e *entry) *scram.Verifier {
	if e.v == nil {
		return a.decoy(user)
	}
	return e.v
}

// decoy is the verifier an unknown user gets: scram's fake salt for the
// name, the configured iterations, and per-process random keys.
func (a *AuthQuery) decoy(user string) *scram.Verifier {
	return &scram.Verifier{Iterations: a.o.Iterations, Salt: scram.FakeSalt(a.o.FakeSaltKey, user), StoredKey: a.decoyStored, ServerKey: a.decoyServer}
}

// IsDecoy reports whether v is a decoy Lookup returned for an unknown user,
// for the operator's log after the exchange failed ("unknown user"). Never
// branch on it before the exchange: that is what the decoy avoids.
func (a *AuthQuery) IsDecoy(v *scram.Verifier) bool {
	if v == nil {
		return false
	}
	s := subtle.ConstantTimeCompare(v.StoredKey[:], a.decoyStored[:])
	k := subtle.ConstantTimeCompare(v.ServerKey[:], a.decoyServer[:])
	return s&k == 1
}

// Forget drops user's cached answer (e.g. after ALTER ROLE ... PASSWORD).
func (a *AuthQuery) Forget(user string) {
	a.mu.Lock()
	delete(a.cache, user)
	a.mu.Unlock()
}

// Close closes the idle lookup connections; later Lookups fail.
func (a *AuthQuery) Close() {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	for {
		select {
		case c := <-a.idle:
			closeConn(c)
		default:
			return
		}
	}
}

func closeConn(c *pgconn.PgConn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = c.Close(ctx)
}

// fetch runs the query once, and once more on a fresh connection when a
// reused idle connection turned out dead (a server restart).
func (a *AuthQuery) fetch(ctx context.Context, user string) (*scram.Verifier, error) {
	select {
	case a.sem <- struct{}{}:
		defer func() { <-a.sem }()
	case <-ctx.Done():
		return nil, ctxError(ctx.Err(), "waiting for an auth_query connection slot")
	}
	for attempt := 0; ; attempt++ {
		conn, reused, err := a.conn(ctx)
		if err != nil {
			return nil, err
		}
		v, retry, err := a.query(ctx, conn, user)
		if retry || conn.IsClosed() || ctx.Err() != nil {
			closeConn(conn)
		} else {
			a.putIdle(conn)
		}
		if err != nil && retry && reused && attempt == 0 && ctx.Err() == nil {
			continue
		}
		return v, err
	}
}

func (a *AuthQuery) conn(ctx context.Context) (*pgconn.PgConn, bool, error) {
	select {
	case c := <-a.idle:
		if !c.IsClosed() {
			return c, true, nil
		}
	default:
	}
	c, err := a.dial(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, false, ctxError(ctx.Err(), "connecting as the auth_query lookup role")
		}
		if fe, ok := failure.As(err); ok {
			return nil, false, fe
		}
		return nil, false, failure.Wrap(failure.ConnectionRefused, err, "auth_query: cannot connect as the lookup role").
			WithFix("check the lookup role's connection settings and that PostgreSQL is up")
	}
	return c, false, nil
}

func (a *AuthQuery) putIdle(c *pgconn.PgConn) {
	a.mu.Lock()
	closed := a.closed
	a.mu.Unlock()
	if !closed {
		select {
		case a.idle <- c:
			return
		default:
		}
	}
	closeConn(c)
}

// query runs the lookup on conn. retry reports a connection-level failure
// (not an answer from the server), worth one more try on a new connection.
func (a *AuthQuery) query(ctx context.Context, conn *pgconn.PgConn, user string) (v *scram.Verifier, retry bool, err error) {
	a.fetches.Add(1)
	res := readAll(conn.ExecParams(ctx, a.o.Query, [][]byte{[]byte(user)}, nil, nil, nil))
	if res.Err != nil {
		var pgErr *pgconn.PgError
		switch {
		case ctx.Err() != nil:
			return nil, false, ctxError(ctx.Err(), "running the auth_query")
		case errors.As(res.Err, &pgErr):
			return nil, false, queryError(pgErr)
		}
		return nil, true, failure.Wrap(failure.ConnectionRefused, res.Err, "auth_query: the lookup connection failed").
			WithFix("check that PostgreSQL is up")
	}
	if len(res.FieldDescriptions) != 2 {
		return nil, false, failure.New(failure.ConfigInvalid, "auth_query returned %d columns", len(res.FieldDescriptions)).
			WithEvidence("expected two: rolname, rolpassword").WithFix("use the default query: %s", DefaultQuery)
	}
	switch len(res.Rows) {
	case 0:
		return nil, false, nil
	case 1:
	default:
		return nil, false, failure.New(failure.ConfigInvalid, "auth_query returned more than one row for user %q", user).
			WithEvidence("a lookup returns at most one row").WithFix("use the default query: %s", DefaultQuery)
	}
	row := res.Rows[0]
	if string(row[0]) != user {
		return nil, false, failure.New(failure.ConfigInvalid, "auth_query returned another role for user %q", user).
			WithEvidence("the first column must be the role name asked for").WithFix("use the default query: %s", DefaultQuery)
	}
	if row[1] == nil {
		a.log.Info("auth_query: role has no password; logins fail as for an unknown user", "user", user)
		return nil, false, nil
	}
	secret := string(row[1])
	if !strings.HasPrefix(secret, scram.Scheme+"$") {
		a.log.Warn("auth_query: role has no SCRAM-SHA-256 verifier (md5 or plain); logins fail as for an unknown user", "user", user,
			"fix", "SET password_encryption = 'scram-sha-256' and set the role's password again")
		return nil, false, nil
	}
	v, err = scram.ParseVerifier(secret)
	if err != nil {
		a.log.Warn("auth_query: role's SCRAM verifier does not parse; logins fail as for an unknown user", "user", user, "error", failure.Text(err))
		return nil, false, nil
	}
	if v.Iterations != a.o.Iterations {
		a.iterWarnOnce.Do(func() {
			a.log.Warn("auth_query: a verifier's iterations differ from the decoys'; a client could tell unknown users by the count",
				"user", user, "iterations", v.Iterations, "decoy_iterations", a.o.Iterations,
				"fix", fmt.Sprintf("set the auth_query iterations to %d, or store all verifiers with one scram_iterations", v.Iterations))
		})
	}
	return v, false, nil
}

func queryError(e *pgconn.PgError) *failure.Error {
	fe := failure.New(failure.ConfigInvalid, "auth_query failed: %s (SQLSTATE %s)", e.Message, e.Code)
	switch e.Code {
	case "42501": // insufficient_privilege
		return fe.WithEvidence("the lookup role may not run the query").
			WithFix("run userlist.FunctionSQL(<lookup role>) as a superuser and use the default query, which needs only EXECUTE on %s.%s", FunctionSchema, FunctionName)
	case "42883", "3F000", "42P01": // undefined function, schema, table
		return fe.WithEvidence("the lookup function is missing in the database the lookup role connects to").
			WithFix("run userlist.FunctionSQL(<lookup role>) as a superuser in that database")
	}
	return fe.WithFix("check the auth_query; the default is %s", DefaultQuery)
}

func ctxError(err error, what string) *failure.Error {
	if errors.Is(err, context.DeadlineExceeded) {
		return failure.Wrap(failure.Timeout, err, "auth_query: timeout %s", what).
			WithFix("check that PostgreSQL answers; raise the auth_query timeout if it is slow")
	}
	return failure.Wrap(failure.Timeout, err, "auth_query: canceled %s", what)
}

// readAll is ResultReader.Read, but keeps the field descriptions of a result
// without rows (Read fills them from the first row only).
func readAll(rr *pgconn.ResultReader) *pgconn.Result {
	res := &pgconn.Result{}
	for rr.NextRow() {
		if len(res.Rows) >= 2 {
			continue // more than one row is refused; keep none of the rest
		}
		row := make([][]byte, len(rr.Values()))
		for i, v := range rr.Values() {
			if v != nil {
				row[i] = append([]byte{}, v...)
			}
		}
		res.Rows = append(res.Rows, row)
	}
	res.FieldDescriptions = rr.FieldDescriptions()
	res.CommandTag, res.Err = rr.Close()
	return res
}
