package main

import (
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtrust/pgtrust/internal/ping"
)

func init() { register(newPingCmd) }

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
			res := ping.Run(cmd.Context(), dsn, timeout)
			if asJSON {
				writeJSON(cmd.OutOrStdout(), res)
			} else {
				res.WriteText(cmd.OutOrStdout(), cmd.ErrOrStderr())
			}
			if code := res.ExitCode(); code != 0 {
				return exitCode(code)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as one JSON object")
	cmd.Flags().DurationVar(&timeout, "timeout", 60*time.Second, "overall limit when the DSN sets no connect_timeout")
	return cmd
}
