package doctor

import (
	"context"
	"crypto/tls"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/pgtls"
)

// MatrixRow is the outcome of one sslmode (and negotiation).
type MatrixRow struct {
	SSLMode          string        `json:"sslmode"`
	Negotiation      string        `json:"sslnegotiation"`
	Connected        bool          `json:"connected"`
	Encrypted        bool          `json:"encrypted"`
	ServerVerified   bool          `json:"server_verified"`
	HostnameVerified bool          `json:"hostname_verified"`
	TLSVersion       string        `json:"tls_version,omitempty"`
	Cipher           string        `json:"cipher,omitempty"`
	Class            failure.Class `json:"class"`
	Message          string        `json:"message,omitempty"`
	DurationMS       float64       `json:"duration_ms"`
}

// Matrix is the result of trying every sslmode against one server.
type Matrix struct {
	Connection string `json:"connection,omitempty"`
	// ConfiguredMode is the sslmode of the settings given; its row decides
	// the exit status.
	ConfiguredMode string `json:"configured_sslmode"`
	// Direct says whether the server accepts direct TLS (PostgreSQL 17+):
	// "accepted", or "not accepted: <why>".
	Direct string          `json:"direct_negotiation"`
	Rows   []MatrixRow     `json:"rows"`
	Error  *failure.Report `json:"error,omitempty"`
}

// MatrixModes are the sslmodes the matrix tries, weakest first.
var MatrixModes = []connstring.SSLMode{connstring.SSLDisable, connstring.SSLAllow, connstring.SSLPrefer,
	connstring.SSLRequire, connstring.SSLVerifyCA, connstring.SSLVerifyFull}

// RunMatrix connects once per sslmode, each a separate pgtls.Connect with
// the settings of cfg except sslmode (and sslnegotiation), then probes
// direct TLS with sslmode=require and, when the server accepts it, adds
// the verifying modes over direct TLS.
func RunMatrix(ctx context.Context, cfg *connstring.Config, opts *Options) *Matrix {
	o := opts.fill()
	m := &Matrix{Connection: cfg.Redacted(), ConfiguredMode: string(cfg.SSLMode)}
	for _, mode := range MatrixModes {
		o.OnStage("sslmode=" + string(mode))
		row, _ := matrixRow(ctx, cfg, mode, "postgres", o)
		m.Rows = append(m.Rows, row)
	}
	o.OnStage("sslnegotiation=direct")
	row, accepted := matrixRow(ctx, cfg, connstring.SSLRequire, "direct", o)
	m.Rows = append(m.Rows, row)
	if accepted {
		m.Direct = "accepted"
		for _, mode := range []connstring.SSLMode{connstring.SSLVerifyCA, connstring.SSLVerifyFull} {
			row, _ := matrixRow(ctx, cfg, mode, "direct", o)
			m.Rows = append(m.Rows, row)
		}
	} else {
		m.Direct = "not accepted: " + row.Message
		if row.Class == failure.ConfigInvalid || row.Class == failure.DNSFailure || row.Class == failure.ConnectionRefused || row.Class == failure.Timeout {
			m.Direct = "unknown: " + row.Message
		}
	}
	return m
}

// ConfiguredRow returns the row for the settings' own sslmode and
// negotiation.
func (m *Matrix) ConfiguredRow(negotiation string) *MatrixRow {
	if negotiation == "" {
		negotiation = "postgres"
	}
	for i := range m.Rows {
		if m.Rows[i].SSLMode == m.ConfiguredMode && m.Rows[i].Negotiation == negotiation {
			return &m.Rows[i]
		}
	}
	return nil
}

// matrixRow runs one connection. accepted reports whether a TLS handshake
// completed with ALPN "postgresql" (how direct TLS support is detected).
func matrixRow(ctx context.Context, base *connstring.Config, mode connstring.SSLMode, negotiation string, o Options) (MatrixRow, bool) {
	row := MatrixRow{SSLMode: string(mode), Negotiation: negotiation}
	start := time.Now()
	cfg, err := withMode(base, mode, negotiation, o.Env)
	if err != nil {
		rep := failure.ReportOf(err)
		row.Class, row.Message = rep.Class, firstLine(rep.Message)
		return row, false
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = o.DefaultConnectTimeout
	}
	// Atomic: the hook runs on pgtls's goroutine, and pgx abandons a
	// session from its own.
	var sawALPN atomic.Bool
	tr := &pgtls.Trace{TLSHandshakeDone: func(_ string, st *tls.ConnectionState, err error, _ time.Duration) {
		if err == nil && st != nil && st.NegotiatedProtocol == pgtls.ALPNProtocol {
			sawALPN.Store(true)
		}
	}}
	pg, facts, err := pgtls.Connect(ctx, cfg, &pgtls.Options{Trace: tr, Now: o.Now})
	if err == nil {
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err = pg.Exec(qctx, "SELECT 1").ReadAll()
		cancel()
		pg.Close(context.Background())
	}
	row.DurationMS = ms(time.Since(start))
	accepted := sawALPN.Load()
	if err != nil {
		rep := failure.ReportOf(err)
		row.Class, row.Message = rep.Class, summaryLine(rep.Message)
		return row, accepted
	}
	row.Connected, row.Class = true, failure.OK
	if facts != nil && facts.Encrypted {
		row.Encrypted = true
		row.ServerVerified = facts.ServerChainVerified
		row.HostnameVerified = facts.HostnameVerified
		row.TLSVersion, row.Cipher = facts.TLSVersionName(), facts.CipherName()
	}
	return row, accepted
}

// withMode rebuilds the settings with another sslmode and negotiation by
// parsing them again, so that libpq's validation (e.g. weak modes with
// sslrootcert=system or direct negotiation) applies to each row.
func withMode(base *connstring.Config, mode connstring.SSLMode, negotiation string, env map[string]string) (*connstring.Config, error) {
	settings := map[string]string{}
	for k, v := range base.Settings {
		settings[k] = v
	}
	settings["sslmode"] = string(mode)
	settings["sslnegotiation"] = negotiation
	delete(settings, "requiressl")
	dsn := connstring.KeyValueString(settings)
	// The settings already hold what the environment supplied; the
	// environment still matters for what is not a keyword (HOME, PGDATESTYLE…).
	envCopy := map[string]string{}
	for k, v := range env {
		envCopy[k] = v
	}
	delete(envCopy, "DATABASE_URL")
	delete(envCopy, "PGREQUIRESSL")
	delete(envCopy, "PGSSLMODE")
	delete(envCopy, "PGSSLNEGOTIATION")
	return connstring.ParseWithEnv(dsn, envCopy, base.Home())
}

// targetPrefix is libpq's "connection to server at ... failed: ", which
// the table's rows do not need to repeat.
var targetPrefix = regexp.MustCompile(`^connection to server (at|on socket) .*? failed: `)

// summaryLine is the line of a libpq message that says what failed: the
// last attempt's line without its target prefix, else the first line.
func summaryLine(s string) string {
	out := ""
	for _, line := range strings.Split(s, "\n") {
		if targetPrefix.MatchString(line) {
			out = targetPrefix.ReplaceAllString(line, "")
		}
	}
	if out == "" {
		out = firstLine(s)
	}
	return out
}
