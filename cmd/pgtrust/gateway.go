package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/scram"
)

func init() { register(newGatewayCmd) }

func newGatewayCmd() *cobra.Command {
	var configPath string
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Run the gateway: remote TLS listeners that authenticate clients and open PostgreSQL with the gateway's own credentials",
		Long: `Run the gateway: the server-side half of pgtrust, on the proxy's session engine.
Remote clients connect over TLS (mandatory; default port 5433) and authenticate
per listener: passthrough (the client's own authentication reaches PostgreSQL),
cluster_secret (SCRAM-SHA-256 and SCRAM-SHA-256-PLUS against verifiers in the
configuration, user names mapped to upstream roles) or cert (the verified
client certificate's identity mapped to a role). In the last two the gateway
opens PostgreSQL as the mapped role with its own credentials.

The configuration is the proxy's TOML (docs/gateway.md): [[upstreams.NAME.gateway]]
tables, the environment and the flags apply in the same order. Secrets come
from files or environment variables, never from the command line.

Signals and exit status are those of pgtrust proxy.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			flags := changedFlags(cmd, "config")
			f, err := loadProxyConfig(configPath, flags)
			if err != nil {
				fmt.Fprint(cmd.ErrOrStderr(), "pgtrust gateway: ", failureText(err))
				return exitCode(2)
			}
			if !f.HasGateway() {
				fmt.Fprint(cmd.ErrOrStderr(), "pgtrust gateway: ", failureText(failure.New(failure.ConfigInvalid, "the configuration has no gateway listener").
					WithFix("add a [[upstreams.NAME.gateway]] table (listen, cert_file/key_file, auth), or run pgtrust proxy")))
				return exitCode(2)
			}
			sigs := make(chan os.Signal, 2)
			signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
			defer signal.Stop(sigs)
			return runProxy(cmd.Context(), configPath, flags, cmd.ErrOrStderr(), sigs)
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "", "TOML configuration file (docs/gateway.md)")
	cmd.AddCommand(newHashSecretCmd())
	return cmd
}

func newHashSecretCmd() *cobra.Command {
	var like, secretFile string
	var iterations int
	cmd := &cobra.Command{
		Use:   "hash-secret",
		Short: "Print the SCRAM-SHA-256 verifier of a secret read from stdin or --secret-file",
		Long: `Print the SCRAM-SHA-256 verifier (PostgreSQL's stored form) of a cluster
secret, for a cluster_secret role table. The secret is read from standard
input (one trailing newline removed) or from --secret-file; never from the
command line, where other users could read it.

--like VERIFIER_FILE reuses that verifier's salt and iterations: a downgrade
pair (the readwrite secret may log in as the read user) must share them, as
one SCRAM exchange advertises one salt.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var likeV *scram.Verifier
			if like != "" {
				b, err := os.ReadFile(like)
				if err == nil {
					likeV, err = scram.ParseVerifier(strings.TrimSpace(string(b)))
				}
				if err != nil {
					return exitWith(2, fmt.Errorf("pgtrust gateway hash-secret: --like %s: %s", like, failure.Text(err)))
				}
			}
			var in io.Reader = cmd.InOrStdin()
			if secretFile != "" {
				fh, err := os.Open(secretFile)
				if err != nil {
					return exitWith(2, fmt.Errorf("pgtrust gateway hash-secret: --secret-file: %w", err))
				}
				defer fh.Close()
				in = fh
			}
			v, err := scram.HashSecret(in, iterations, likeV)
			if err != nil {
				return exitWith(2, fmt.Errorf("pgtrust gateway hash-secret: %s", failure.Text(err)))
			}
			fmt.Fprintln(cmd.OutOrStdout(), v.String())
			return nil
		},
	}
	cmd.Flags().StringVar(&like, "like", "", "reuse the salt and iterations of the verifier in this file (downgrade pairs)")
	cmd.Flags().StringVar(&secretFile, "secret-file", "", "read the secret from this file instead of stdin")
	cmd.Flags().IntVar(&iterations, "iterations", 0, "PBKDF2 iterations (default 4096, PostgreSQL's)")
	return cmd
}
