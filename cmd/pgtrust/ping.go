package main

import (
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/attestation"
	"github.com/pgtrust/pgtrust/internal/ping"
	"github.com/pgtrust/pgtrust/ratls"
)

func init() { register(newPingCmd) }

func newPingCmd() *cobra.Command {
	var asJSON bool
	var timeout time.Duration
	var att attestation.PolicyFlags
	cmd := &cobra.Command{
		Use:   "ping [DSN]",
		Short: "Connect with libpq's TLS semantics, run SELECT 1, report TLS facts or the failure class",
		Long: `Connect to PostgreSQL exactly as libpq would (sslmode, sslrootcert, client
certificates, CRLs, sslnegotiation, host-name rules), run SELECT 1 and report the
negotiated TLS version and cipher, or the failure with its class, evidence and fix.

The DSN is a libpq key/value string or a postgres:// URI; without one, the PG*
environment variables (and DATABASE_URL) are used, as psql does.

With attestation flags (--mrtd, --allow-simulator, --collateral, ...; the same
as "pgtrust attest verify") the server's RA-TLS certificate must also pass that
policy, checked after the sslmode's own checks and before any startup message
is sent; sslmode must then be require or stronger.

Exit status: 0 connected and ran SELECT 1, 1 the connection failed (or the
attestation refused the server), 2 the connection settings or the attestation
flags are invalid.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dsn := ""
			if len(args) == 1 {
				dsn = args[0]
			}
			var res ping.Result
			var policy *ratls.Policy
			var err error
			if att.Configured() {
				policy, err = att.Policy()
			}
			if err != nil {
				// A policy the flags cannot build is a usage error (exit 2).
				res = ping.Result{Class: failure.ClassOf(err), Error: failure.ReportOf(err)}
			} else {
				res = ping.Run(cmd.Context(), dsn, timeout, policy)
			}
			if asJSON {
				writeJSON(cmd.OutOrStdout(), res)
			} else {
				res.WriteText(cmd.OutOrStdout(), cmd.ErrOrStderr())
			}
			switch {
			case err != nil:
				return exitCode(2)
			case res.ExitCode() != 0:
				return exitCode(res.ExitCode())
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as one JSON object")
	cmd.Flags().DurationVar(&timeout, "timeout", 60*time.Second, "overall limit when the DSN sets no connect_timeout")
	att.Register(cmd.Flags(), false)
	return cmd
}
