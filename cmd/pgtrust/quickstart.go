package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/pgtrust/pgtrust/internal/quickstart"
)

func init() { register(newQuickstartCmd) }

func newQuickstartCmd() *cobra.Command {
	var o quickstart.Options
	cmd := &cobra.Command{
		Use:   "quickstart",
		Short: "See pgtrust work in one command: dev PKI, throwaway PostgreSQL with TLS, the proxy, a query through it",
		Long: `Create a development PKI in a temporary directory, start a throwaway
PostgreSQL 15 that accepts only TLS with client-certificate authentication,
start the proxy in front of it (upstream sslmode=verify-full with the client
certificate), run a query through the proxy's plaintext local port, print
/health/database/ssl and the psql command to connect, then wait for Ctrl-C
(or --duration, or --exit) and remove everything.

Needs PostgreSQL 15's server binaries (/usr/lib/postgresql/15/bin, or
PGTRUST_PG15_BIN): apt-get install -y postgresql-15.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
			defer stop()
			if err := quickstart.Run(ctx, o, cmd.OutOrStdout(), cmd.ErrOrStderr()); err != nil {
				return exitCode(classExit(err))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&o.Listen, "listen", "127.0.0.1:6432", "proxy address for local clients")
	cmd.Flags().StringVar(&o.HealthListen, "health-listen", "127.0.0.1:9090", "health and metrics address")
	cmd.Flags().BoolVar(&o.Exit, "exit", false, "stop right after the demonstration instead of waiting for Ctrl-C")
	cmd.Flags().DurationVar(&o.Duration, "duration", 0, "keep running this long, then stop (non-interactive use)")
	return cmd
}
