package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/pgtls"
)

func init() { register(newPingCmd) }

type pingResult struct {
	OK               bool            `json:"ok"`
	Class            failure.Class   `json:"class"`
	Connection       string          `json:"connection,omitempty"`
	Host             string          `json:"host,omitempty"`
	Address          string          `json:"address,omitempty"`
	SSL              bool            `json:"ssl"`
	Negotiation      string          `json:"negotiation,omitempty"`
	TLSVersion       string          `json:"tls_version,omitempty"`
	Cipher           string          `json:"cipher,omitempty"`
	ALPN             string          `json:"alpn,omitempty"`
	ServerVerified   bool            `json:"server_verified"`
	HostnameVerified bool            `json:"hostname_verified"`
	ClientCertSent   bool            `json:"client_certificate_sent"`
	AuthMethod       string          `json:"auth_method,omitempty"`
	ServerVersion    string          `json:"server_version,omitempty"`
	DurationMS       float64         `json:"duration_ms"`
	Error            *failure.Report `json:"error,omitempty"`
}

func newPingCmd() *cobra.Command {
	var asJSON bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "ping [DSN]",
		Short: "Connect with libpq's TLS semantics, run SELECT 1, report TLS facts or the failure class",
		Long: `Connect to PostgreSQL exactly as libpq would (sslmode, sslrootcert, client
certificates, CRLs, sslnegotiation, host-name rules), run SELECT 1 and report the
negotiated TLS version and cipher, or the failure with its class, evidence and fix.

The DSN is a libpq key/value string or a postgres:// URI; without one, the PG*
environment variables (and DATABASE_URL) are used, as psql does.

Exit status: 0 connected and ran SELECT 1, 1 the connection failed,
2 the connection settings are invalid.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dsn := ""
			if len(args) == 1 {
				dsn = args[0]
			}
			res := runPing(cmd.Context(), dsn, timeout)
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				_ = enc.Encode(res)
			} else {
				printPing(out, cmd.ErrOrStderr(), res)
			}
			switch {
			case res.OK:
				return nil
			case res.Class == failure.ConfigInvalid && res.Connection == "":
				return exitCode(2)
			}
			return exitCode(1)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as one JSON object")
	cmd.Flags().DurationVar(&timeout, "timeout", 60*time.Second, "overall limit when the DSN sets no connect_timeout")
	return cmd
}

func runPing(ctx context.Context, dsn string, timeout time.Duration) pingResult {
	if ctx == nil {
		ctx = context.Background()
	}
	start := time.Now()
	cfg, err := connstring.Parse(dsn)
	if err != nil {
		return pingResult{Class: failure.ClassOf(err), Error: failure.ReportOf(err)}
	}
	res := pingResult{Connection: cfg.Redacted()}
	if cfg.ConnectTimeout == 0 && timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	pg, facts, err := pgtls.Connect(ctx, cfg, nil)
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

func printPing(out, errOut io.Writer, r pingResult) {
	if !r.OK {
		fmt.Fprintf(errOut, "pgtrust: %s\n", r.Error.Message)
		fmt.Fprintf(errOut, "  class:    %s\n", r.Class)
		if r.Error.Evidence != "" {
			fmt.Fprintf(errOut, "  evidence: %s\n", r.Error.Evidence)
		}
		if r.Error.Fix != "" {
			fmt.Fprintf(errOut, "  fix:      %s\n", r.Error.Fix)
		}
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
	fmt.Fprintf(out, "  auth: %s\n", r.AuthMethod)
}
