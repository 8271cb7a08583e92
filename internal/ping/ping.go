// Package ping is what `pgtrust ping` does: one connection with libpq's TLS
// semantics through pgtls, SELECT 1, and a result that reports the
// negotiated TLS facts or the failure with its class, evidence and fix.
package ping

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"time"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/pgtls"
	"github.com/pgtrust/pgtrust/ratls"
)

// Result is the outcome of Run; its JSON form is `pgtrust ping --json`.
type Result struct {
	OK               bool          `json:"ok"`
	Class            failure.Class `json:"class"`
	Connection       string        `json:"connection,omitempty"` // the settings, secrets masked
	Host             string        `json:"host,omitempty"`
	Address          string        `json:"address,omitempty"`
	SSL              bool          `json:"ssl"`
	Negotiation      string        `json:"negotiation,omitempty"`
	TLSVersion       string        `json:"tls_version,omitempty"`
	Cipher           string        `json:"cipher,omitempty"`
	ALPN             string        `json:"alpn,omitempty"`
	ServerVerified   bool          `json:"server_verified"`
	HostnameVerified bool          `json:"hostname_verified"`
	ClientCertSent   bool          `json:"client_certificate_sent"`
	AuthMethod       string        `json:"auth_method,omitempty"`
	ServerVersion    string        `json:"server_version,omitempty"`
	// Attested is set when an attestation policy was given: the server's
	// RA-TLS certificate passed it (Attestation summarises the measured
	// values that matter).
	Attested    *bool        `json:"attested,omitempty"`
	Attestation *Attestation `json:"attestation,omitempty"`
	DurationMS  float64      `json:"duration_ms"`
	// Warnings are what libpq prints as WARNING: while connecting (an
	// sslkeylogfile that cannot be opened); the connection went on.
	Warnings []string        `json:"warnings,omitempty"`
	Error    *failure.Report `json:"error,omitempty"`
}

// Attestation is what ping reports of a passed attestation.
type Attestation struct {
	MRTD      string          `json:"mrtd"`
	TCBStatus ratls.TCBStatus `json:"tcb_status,omitempty"`
	Simulated bool            `json:"simulated,omitempty"`
}

// Run parses dsn (libpq key/value or URI; "" for the PG* environment),
// connects, runs SELECT 1 and closes. timeout bounds the whole attempt when
// the settings set no connect_timeout (0: no bound). A non-nil policy makes
// the server's certificate pass attestation before anything is sent.
func Run(ctx context.Context, dsn string, timeout time.Duration, policy *ratls.Policy) Result {
	if ctx == nil {
		ctx = context.Background()
	}
	start := time.Now()
	cfg, err := connstring.Parse(dsn)
	if err != nil {
		return Result{Class: failure.ClassOf(err), Error: failure.ReportOf(err)}
	}
	res := Result{Connection: cfg.Redacted()}
	if cfg.ConnectTimeout == 0 && timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	var opts *pgtls.Options
	if policy != nil {
		opts = &pgtls.Options{Attestation: policy}
	}
	pg, facts, err := pgtls.Connect(ctx, cfg, opts)
	if err == nil {
		_, err = pg.Exec(ctx, "SELECT 1").ReadAll()
		res.ServerVersion = pg.ParameterStatus("server_version")
		defer pg.Close(context.Background())
	}
	res.DurationMS = float64(time.Since(start).Microseconds()) / 1000
	if facts != nil {
		res.Host = facts.Host.Display()
		res.Address = facts.Address
		res.SSL = facts.Encrypted
		res.Negotiation = facts.Negotiation
		res.TLSVersion = facts.TLSVersionName()
		res.Cipher = facts.CipherName()
		res.ALPN = facts.ALPN
		res.ServerVerified = facts.ServerChainVerified && facts.Encrypted
		res.HostnameVerified = facts.HostnameVerified && facts.Encrypted
		res.ClientCertSent = facts.ClientCertSent
		res.Warnings = facts.Warnings
		if policy != nil {
			attested := facts.Attested
			res.Attested = &attested
			if r := facts.Attestation; attested && r != nil && r.Quote != nil {
				a := &Attestation{MRTD: hex.EncodeToString(r.Quote.Body.MRTD[:]), Simulated: ratls.IsSimulated(r.Quote)}
				if r.Appraisal != nil {
					a.TCBStatus = r.Appraisal.Status
				}
				res.Attestation = a
			}
		}
		if err == nil {
			res.AuthMethod = facts.AuthMethod()
		}
	}
	if err != nil {
		res.Class = failure.ClassOf(err)
		res.Error = failure.ReportOf(err)
		return res
	}
	res.OK, res.Class = true, failure.OK
	return res
}

// ExitCode is the process exit status: 0 connected and ran SELECT 1, 1 the
// connection failed (attestation refusals included), 2 the connection
// settings are invalid.
func (r Result) ExitCode() int {
	switch {
	case r.OK:
		return 0
	case r.Class == failure.ConfigInvalid && (r.Connection == "" || r.Address == ""):
		// Settings refused before any server was reached (unparseable,
		// or a combination such as an attestation policy with prefer).
		return 2
	}
	return 1
}

// WriteText writes the result for a person: the connection's facts to out,
// or the failure, in failure's shared layout, to errOut.
func (r Result) WriteText(out, errOut io.Writer) {
	for _, w := range r.Warnings {
		fmt.Fprintf(errOut, "WARNING: %s\n", w)
	}
	if !r.OK {
		r.Error.WriteText(errOut, "pgtrust: ")
		return
	}
	fmt.Fprintf(out, "ok: connected to %s (%s), PostgreSQL %s, SELECT 1 in %.1f ms\n", r.Host, r.Address, r.ServerVersion, r.DurationMS)
	if r.SSL {
		verified := "server NOT verified (no root certificate; sslmode does not verify)"
		switch {
		case r.HostnameVerified:
			verified = "server verified: chain and host name"
		case r.ServerVerified:
			verified = "server verified: chain only (not the host name)"
		}
		fmt.Fprintf(out, "  tls:  %s %s (negotiation %s) — %s\n", r.TLSVersion, r.Cipher, r.Negotiation, verified)
		if r.ClientCertSent {
			fmt.Fprintf(out, "  client certificate sent\n")
		}
	} else {
		fmt.Fprintf(out, "  tls:  none — the connection is NOT encrypted\n")
	}
	if a := r.Attestation; a != nil {
		tcb := string(a.TCBStatus)
		if tcb == "" {
			tcb = "not appraised"
		}
		sim := ""
		if a.Simulated {
			sim = " — SIMULATED quote (allow_simulator): proves nothing about hardware"
		}
		fmt.Fprintf(out, "  attestation: passed, MRTD %s, TCB %s%s\n", a.MRTD, tcb, sim)
	}
	fmt.Fprintf(out, "  auth: %s\n", r.AuthMethod)
}
