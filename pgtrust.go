// Package pgtrust is the Go front door of pgtrust: pgx, pgxpool and
// database/sql connections whose transport is opened by pgtls, so a Go
// application gets libpq's exact TLS semantics without a sidecar.
//
// pgx speaks the protocol (startup, SCRAM, queries); pgtrust decides how to
// reach the server: hosts and addresses in libpq's order, the sslmode's
// encryption methods, SSLRequest or direct TLS, libpq's verification rules
// and its errors with a class.
//
//	pool, err := pgtrust.NewPool(ctx, "host=db.internal sslmode=verify-full sslrootcert=/etc/ssl/db-ca.crt")
//
// Differences from pgtls.Connect, which runs the whole plan itself: after a
// server error during startup, allow/prefer retry with the other encryption
// method through pgconn, which (like libpq) does so for every server error
// except a wrong password, a missing database or a missing CONNECT
// privilege; the password from ~/.pgpass is the one of the first host; and
// a target_session_attrs mismatch fails the connection instead of moving on
// to the next host.
package pgtrust

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/pgtls"
)

// ParseConfig parses a libpq connection string or URI (with PG* environment
// and libpq defaults) into a pgx.ConnConfig whose connections are opened by
// pgtls. opts may be nil.
func ParseConfig(dsn string, opts *pgtls.Options) (*pgx.ConnConfig, error) {
	cfg, err := connstring.Parse(dsn)
	if err != nil {
		return nil, err
	}
	return ConnConfig(cfg, opts)
}

// ConnConfig builds a pgx.ConnConfig from parsed connection settings.
func ConnConfig(cfg *connstring.Config, opts *pgtls.Options) (*pgx.ConnConfig, error) {
	// pgx requires configs made by its ParseConfig; the explicit keywords
	// neutralise whatever PG* variables pgx would otherwise read.
	cc, err := pgx.ParseConfig("host=/nonexistent port=5432 user=pgtrust dbname=pgtrust sslmode=disable connect_timeout=0 target_session_attrs=any channel_binding=prefer sslnegotiation=postgres")
	if err != nil {
		return nil, failure.Wrap(failure.ConfigInvalid, err, "prepare pgx configuration")
	}
	p := &plan{cfg: cfg, opts: opts}
	cc.Host, cc.Port = planHost, 5432
	cc.TLSConfig, cc.Fallbacks = nil, nil
	cc.User, cc.Database = cfg.User, cfg.Database
	if len(cfg.Hosts) > 0 {
		if cc.Password, err = cfg.PasswordFor(cfg.Hosts[0]); err != nil {
			return nil, err
		}
	}
	cc.RuntimeParams = map[string]string{}
	for k, v := range cfg.RuntimeParams {
		cc.RuntimeParams[k] = v
	}
	cc.ChannelBinding = cfg.ChannelBinding
	cc.RequireAuth = cfg.RequireAuth
	cc.ConnectTimeout = 0
	cc.LookupFunc = p.lookup
	cc.DialFunc = p.dial
	cc.ValidateConnect = p.validate
	return cc, nil
}

// Connect opens one pgx connection.
func Connect(ctx context.Context, dsn string) (*pgx.Conn, error) {
	cc, err := ParseConfig(dsn, nil)
	if err != nil {
		return nil, err
	}
	return ConnectConfig(ctx, cc)
}

// ConnectConfig opens one pgx connection from a config made by ParseConfig
// or ConnConfig. Its errors are classified (*failure.Error).
func ConnectConfig(ctx context.Context, cc *pgx.ConnConfig) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, pgtls.Classify(err)
	}
	return conn, nil
}

// ParsePoolConfig returns a pgxpool.Config whose connections are opened by
// pgtls. Pool settings (pool_max_conns, ...) are not libpq keywords: set
// them on the returned config.
func ParsePoolConfig(dsn string, opts *pgtls.Options) (*pgxpool.Config, error) {
	cc, err := ParseConfig(dsn, opts)
	if err != nil {
		return nil, err
	}
	pc, err := pgxpool.ParseConfig("")
	if err != nil {
		// pgxpool reads PG* itself; only its own settings matter here.
		pc = &pgxpool.Config{}
	}
	pc.ConnConfig = cc
	return pc, nil
}

// NewPool opens a pgxpool.Pool.
func NewPool(ctx context.Context, dsn string) (*pgxpool.Pool, error) {
	pc, err := ParsePoolConfig(dsn, nil)
	if err != nil {
		return nil, err
	}
	return pgxpool.NewWithConfig(ctx, pc)
}

// OpenDB returns a database/sql handle whose connections are opened by
// pgtls (driver: pgx's stdlib).
func OpenDB(dsn string, opts *pgtls.Options) (*sql.DB, error) {
	cc, err := ParseConfig(dsn, opts)
	if err != nil {
		return nil, err
	}
	return stdlib.OpenDB(*cc), nil
}

// planHost is the placeholder host pgconn resolves through plan.lookup,
// which answers with one token per encryption method of this connect.
const planHost = "pgtrust"

type plan struct {
	cfg  *connstring.Config
	opts *pgtls.Options
}

// attemptState links the pgconn attempts of one connect: the transport
// plan's outcome decides whether the second method is tried.
type attemptState struct {
	created time.Time
	facts   *pgtls.Facts
	err     error
}

var (
	states   sync.Map // id → *attemptState
	byConn   sync.Map // net.Conn → *attemptState, for ValidateConnect
	nextID   atomic.Uint64
	sweeping atomic.Bool
)

// lookup is called once at the start of each pgconn connect: it creates the
// per-connect state and returns one pseudo-address per method.
func (p *plan) lookup(ctx context.Context, host string) ([]string, error) {
	if host != planHost {
		return nil, fmt.Errorf("pgtrust: unexpected host %q", host)
	}
	id := nextID.Add(1)
	states.Store(id, &attemptState{created: time.Now()})
	sweepStates()
	addrs := []string{token(id, 0)}
	if m := p.cfg.SSLMode; m == connstring.SSLAllow || m == connstring.SSLPrefer {
		addrs = append(addrs, token(id, 1))
	}
	return addrs, nil
}

// Tokens look like "attempt-7.0:1" (connect 7, step 0); pgconn hands them
// back to dial unchanged and shows them in its error messages.
func token(id uint64, step int) string {
	return net.JoinHostPort("attempt-"+strconv.FormatUint(id, 10)+"."+strconv.Itoa(step), "1")
}

func (p *plan) dial(ctx context.Context, network, address string) (net.Conn, error) {
	host, _, _ := net.SplitHostPort(address)
	idText, stepText, ok := strings.Cut(strings.TrimPrefix(host, "attempt-"), ".")
	id, err1 := strconv.ParseUint(idText, 10, 64)
	if !ok || err1 != nil {
		return nil, fmt.Errorf("pgtrust: unexpected dial address %q", address)
	}
	v, ok := states.Load(id)
	if !ok {
		return nil, fmt.Errorf("pgtrust: connect state expired")
	}
	st := v.(*attemptState)
	if stepText == "0" {
		conn, facts, err := pgtls.Dial(ctx, p.cfg, p.opts)
		st.facts, st.err = facts, err
		if err != nil {
			states.Delete(id)
			return nil, err
		}
		byConn.Store(conn, st)
		return conn, nil
	}
	// Step 1: the transport of step 0 worked but startup failed with a
	// server error; libpq then retries with the other method.
	states.Delete(id)
	if st.err != nil || st.facts == nil {
		return nil, fmt.Errorf("pgtrust: no other encryption method to try")
	}
	method := pgtls.MethodPlaintext
	if !st.facts.Encrypted {
		method = pgtls.MethodSSL
	}
	if (p.cfg.SSLMode == connstring.SSLPrefer && method != pgtls.MethodPlaintext) ||
		(p.cfg.SSLMode == connstring.SSLAllow && method != pgtls.MethodSSL) {
		return nil, fmt.Errorf("pgtrust: no other encryption method to try")
	}
	conn, facts, err := pgtls.DialAddress(ctx, p.cfg, st.facts.Host, st.facts.Address, method, p.opts)
	if err != nil {
		return nil, err
	}
	byConn.Store(conn, &attemptState{created: time.Now(), facts: facts})
	return conn, nil
}

// validate applies the checks libpq makes once authentication succeeded:
// sslcertmode=require and target_session_attrs.
func (p *plan) validate(ctx context.Context, pg *pgconn.PgConn) error {
	v, ok := byConn.LoadAndDelete(pg.Conn())
	if !ok {
		return nil
	}
	facts := v.(*attemptState).facts
	if p.cfg.SSLCertMode == "require" && facts != nil {
		if !facts.ClientCertRequested {
			return failure.New(failure.ClientCertRequired, "server did not request an SSL certificate")
		}
		if !facts.ClientCertSent {
			return failure.New(failure.ClientCertRequired, "server accepted connection without a valid SSL certificate")
		}
	}
	return pgtls.CheckSessionAttrs(ctx, pg, p.cfg.TargetSessionAttrs)
}

// sweepStates drops per-connect state of connects that ended without
// reaching step 1 or validate (failed startups), so nothing accumulates.
func sweepStates() {
	if !sweeping.CompareAndSwap(false, true) {
		return
	}
	defer sweeping.Store(false)
	cutoff := time.Now().Add(-10 * time.Minute)
	for _, m := range []*sync.Map{&states, &byConn} {
		m.Range(func(k, v any) bool {
			if v.(*attemptState).created.Before(cutoff) {
				m.Delete(k)
			}
			return true
		})
	}
}
