package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spf13/cobra"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/attestation"
	"github.com/pgtrust/pgtrust/internal/config"
	"github.com/pgtrust/pgtrust/internal/dbenv"
	"github.com/pgtrust/pgtrust/internal/dbpool"
	"github.com/pgtrust/pgtrust/internal/doctor"
	"github.com/pgtrust/pgtrust/internal/mcphttp"
	"github.com/pgtrust/pgtrust/internal/mcpserver"
	"github.com/pgtrust/pgtrust/internal/readonly"
	"github.com/pgtrust/pgtrust/pgtls"
)

func init() { register(newMCPCmd) }

// mcpFlags are pgtrust mcp's settings; the database ones come from dbenv.
type mcpFlags struct {
	dsn            string
	httpAddr       string // "" = stdio
	tokenFile      string
	tokenEnv       string
	tlsCert        string
	tlsKey         string
	limits         readonly.Limits
	poolSize       int
	logLevel       string
	logFormat      string
	att            attestation.PolicyFlags
	allowSuperuser bool
}

// mcpStarted, when set by a test, is told the running server (HTTP: its address).
var mcpStarted func(addr net.Addr)

func newMCPCmd() *cobra.Command { return mcpCommand(config.Environ) }

// mcpCommand builds the command reading its environment from environ
// (tests give their own instead of the process's).
func mcpCommand(environ func() map[string]string) *cobra.Command {
	var f mcpFlags
	cmd := &cobra.Command{
		Use:   "mcp",
		Short: "MCP server: read-only PostgreSQL access for AI agents over verified TLS",
		Long: `Serve the Model Context Protocol to an AI agent (stdio by default, or streamable
HTTP) with tools to list schemas and tables, describe tables, run read-only
queries, explain them, and check the connection's TLS.

The database connection is libpq-exact TLS. Settings come from
--connection-string, else POSTGRES_CONNECTION, else DATABASE_URL, else the PG*
variables; DB_SSL_ENABLED, DB_SSL_MODE, DB_SSL_REJECT_UNAUTHORIZED and DB_SSL_CA
keep their node-postgres meaning. When nothing sets sslmode it is verify-full.

Every call runs in a read-only transaction with a statement timeout, as one
statement through the extended protocol, with row and byte limits: the safety
is enforced by PostgreSQL. Connect as a dedicated least-privilege role
(docs/mcp.md gives its SQL).

In stdio mode stdout carries only the protocol; logs go to stderr.

Exit status: 0 stopped cleanly, 1 the server failed, 2 the settings are invalid.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runMCP(ctx, &f, environ(), cmd.ErrOrStderr())
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&f.dsn, "connection-string", "", "libpq DSN or postgres:// URI (else POSTGRES_CONNECTION, DATABASE_URL, PG* variables)")
	fs.StringVar(&f.httpAddr, "http", "", "serve streamable HTTP on this address instead of stdio, e.g. "+mcphttp.DefaultAddr+" (a non-loopback address needs a token)")
	fs.StringVar(&f.tokenFile, "http-token-file", "", "file holding the bearer token HTTP clients must send (mode 0600)")
	fs.StringVar(&f.tokenEnv, "http-token-env", mcphttp.DefaultTokenEnv, "environment variable holding the bearer token")
	fs.StringVar(&f.tlsCert, "http-tls-cert", "", "serve HTTPS with this certificate (reloaded when the file changes)")
	fs.StringVar(&f.tlsKey, "http-tls-key", "", "its private key")
	fs.DurationVar(&f.limits.StatementTimeout, "statement-timeout", readonly.DefaultStatementTimeout, "statement_timeout of every call")
	fs.DurationVar(&f.limits.IdleInTransactionTimeout, "idle-in-transaction-timeout", readonly.DefaultIdleInTransactionTimeout, "idle_in_transaction_session_timeout of every call")
	fs.IntVar(&f.limits.MaxRows, "max-rows", readonly.DefaultMaxRows, "most rows a query returns (more are cut off and flagged)")
	fs.IntVar(&f.limits.MaxBytes, "max-bytes", readonly.DefaultMaxBytes, "most bytes of row data a query returns")
	fs.IntVar(&f.poolSize, "pool-size", dbpool.DefaultSize, "database connections at most")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level on stderr: debug, info, warn, error")
	fs.StringVar(&f.logFormat, "log-format", "text", `log format on stderr: "text" or "json"`)
	fs.BoolVar(&f.allowSuperuser, "allow-superuser", false, "let query and explain run when the role is a superuser (not recommended)")
	f.att.Register(fs, false)
	return cmd
}

// runMCP serves until ctx is done (stdio: until the client closes stdin).
// Logs go to stderr; in stdio mode os.Stdout carries only the protocol.
func runMCP(ctx context.Context, f *mcpFlags, env map[string]string, stderr io.Writer) error {
	fail := func(code int, err error) error {
		failure.WriteText(stderr, "pgtrust mcp: ", err)
		return exitCode(code)
	}
	lf := config.File{}
	lf.Log.Level, lf.Log.Format = f.logLevel, f.logFormat
	if _, err := config.ParseLevel(f.logLevel); err != nil {
		return fail(2, err)
	}
	if f.logFormat != "text" && f.logFormat != "json" {
		return fail(2, failure.New(failure.ConfigInvalid, "--log-format %q is not a log format", f.logFormat).
			WithEvidence("--log-format=%s", f.logFormat).WithFix(`use "text" or "json"`))
	}
	log := lf.NewLogger(stderr)

	home := env["HOME"]
	if home == "" {
		home, _ = os.UserHomeDir()
	}
	// Settings.Warnings are logged by mcpserver.New and reported by connection_health.
	settings, err := dbenv.Resolve(f.dsn, env, home)
	if err != nil {
		return fail(2, err)
	}
	opts := &pgtls.Options{}
	if f.att.Configured() {
		p, err := f.att.Policy()
		if err != nil {
			return fail(2, err)
		}
		opts.Attestation = p
	}
	// pool is set once built; a reload before that has no connections to retire.
	var pool atomic.Pointer[dbpool.Pool]
	var source certs.Source
	cfg := settings.Config
	if cfg.SSLCertMode != "disable" && cfg.SSLCert != "" {
		if _, statErr := os.Stat(cfg.SSLCert); statErr == nil {
			src, err := certs.NewFileSource(ctx, certs.FileSourceOptions{
				CertFile: cfg.SSLCert, KeyFile: cfg.SSLKey, KeyPassword: cfg.SSLPassword,
				Logger: log.With("certificate", "database client certificate"),
				OnReload: func(st certs.Status, err error) {
					if p := pool.Load(); err == nil && p != nil {
						// New connections present the new certificate; move the old ones out.
						p.RetireAll()
					}
				},
			})
			if err != nil {
				return fail(2, err)
			}
			defer src.Close()
			source = src
			opts.GetClientCertificate = src.GetClientCertificate
		}
	}
	db, err := dbpool.New(cfg, opts, dbpool.Options{Size: f.poolSize, Source: source, Warnings: settings.Warnings})
	if err != nil {
		return fail(2, err)
	}
	defer db.Close()
	pool.Store(db)

	dopts := &doctor.Options{Env: env}
	if opts.Attestation != nil {
		dopts.Attestation = opts.Attestation
	}
	srv, err := mcpserver.New(mcpserver.Options{Pool: db, Config: cfg, Doctor: dopts, Limits: f.limits,
		Logger: log, Version: version, Warnings: settings.Warnings, AllowSuperuser: f.allowSuperuser})
	if err != nil {
		return fail(2, err)
	}
	log.Info("pgtrust mcp starting", "database", cfg.Redacted(), "settings_from", settings.Source, "sslmode", cfg.SSLMode,
		"transport", transportName(f.httpAddr), "max_rows", srv.Limits().MaxRows, "statement_timeout", srv.Limits().StatementTimeout.String())
	probeDatabase(ctx, db, log, f.allowSuperuser)

	if f.httpAddr == "" {
		err = srv.MCP().Run(ctx, &mcp.StdioTransport{})
		if err != nil && ctx.Err() == nil && !errors.Is(err, io.EOF) {
			return fail(1, err)
		}
		log.Info("pgtrust mcp stopped")
		return nil
	}
	ho := mcphttp.Options{Addr: f.httpAddr, Logger: log}
	if ho.Token, err = mcphttp.LoadToken(f.tokenFile, f.tokenEnv, env); err != nil {
		return fail(2, err)
	}
	if f.tlsCert != "" || f.tlsKey != "" {
		tsrc, err := certs.NewFileSource(ctx, certs.FileSourceOptions{CertFile: f.tlsCert, KeyFile: f.tlsKey,
			Logger: log.With("certificate", "MCP HTTPS certificate")})
		if err != nil {
			return fail(2, err)
		}
		defer tsrc.Close()
		ho.TLS = tsrc
	}
	err = mcphttp.Serve(ctx, srv.MCP(), ho, func(a net.Addr) {
		if mcpStarted != nil {
			mcpStarted(a)
		}
	})
	if err != nil {
		return fail(exitForClass(err, 1), err)
	}
	log.Info("pgtrust mcp stopped")
	return nil
}

func transportName(httpAddr string) string {
	if httpAddr == "" {
		return "stdio"
	}
	return "http"
}

// probeTimeout bounds the start-up connection check.
const probeTimeout = 15 * time.Second

// probeDatabase opens one connection at start so a wrong setting shows in
// the log at once, with its class and fix. The server starts either way: the
// agent's tls_diagnose and connection_health report the same finding.
func probeDatabase(ctx context.Context, pool *dbpool.Pool, log *slog.Logger, allowSuperuser bool) {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	c, err := pool.Acquire(ctx)
	if err != nil {
		r := failure.ReportOf(err)
		log.Warn("the database is not reachable yet; tools will report the error until it is", "class", r.Class,
			"error", r.Message, "evidence", r.Evidence, "fix", r.Fix)
		return
	}
	defer c.Release()
	attrs := []any{"user", c.PgConn.ParameterStatus("session_authorization"), "server_version", c.PgConn.ParameterStatus("server_version"),
		"tls", c.Facts.TLSVersionName()}
	log.Info("database connection checked", attrs...)
	if err := mcpserver.CheckAgentRole(ctx, c.PgConn, probeTimeout); err != nil {
		r := failure.ReportOf(err)
		if allowSuperuser {
			log.Warn("the agent's SQL runs as a superuser or equivalent (--allow-superuser): read-only transactions do not stop COPY … TO PROGRAM or server file access",
				"evidence", r.Evidence)
		} else {
			log.Warn("the role is a superuser or equivalent: query and explain will refuse to run", "evidence", r.Evidence, "fix", r.Fix)
		}
	}
}
