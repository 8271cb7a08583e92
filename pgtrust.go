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
//
// The CancelRequests pgx sends (PgConn.CancelRequest, or when it abandons a
// session) go to the session's server with the encryption the session
// used, as libpq's PQcancelCreate does. Each config keeps its own state,
// bounded by its connects in flight and its server addresses.
package pgtrust

import (
	"context"
	"database/sql"

	"github.com/jackc/pgx/v5"
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
	cc, _, err := connConfig(cfg, opts)
	return cc, err
}

// connConfig also returns the plan whose state the config's LookupFunc,
// DialFunc and ValidateConnect share (tests inspect it).
func connConfig(cfg *connstring.Config, opts *pgtls.Options) (*pgx.ConnConfig, *plan, error) {
	// pgx requires configs made by its ParseConfig; the explicit keywords
	// neutralise whatever PG* variables pgx would otherwise read.
	cc, err := pgx.ParseConfig("host=/nonexistent port=5432 user=pgtrust dbname=pgtrust sslmode=disable connect_timeout=0 target_session_attrs=any channel_binding=prefer sslnegotiation=postgres")
	if err != nil {
		return nil, nil, failure.Wrap(failure.ConfigInvalid, err, "prepare pgx configuration")
	}
	p := newPlan(cfg, opts)
	cc.Host, cc.Port = planHost, 5432
	cc.TLSConfig, cc.Fallbacks = nil, nil
	cc.User, cc.Database = cfg.User, cfg.Database
	if len(cfg.Hosts) > 0 {
		if cc.Password, err = cfg.PasswordFor(cfg.Hosts[0]); err != nil {
			return nil, nil, err
		}
	}
	cc.RuntimeParams = map[string]string{}
	for k, v := range cfg.RuntimeParams {
		cc.RuntimeParams[k] = v
	}
	cc.ChannelBinding = cfg.ChannelBinding
	cc.RequireAuth = cfg.RequireAuth
	cc.MinProtocolVersion, cc.MaxProtocolVersion = pgtls.ProtocolVersions(cfg)
	cc.ConnectTimeout = 0
	cc.LookupFunc = p.lookup
	cc.DialFunc = p.dial
	cc.ValidateConnect = p.validate
	return cc, p, nil
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
