package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/config"
)

func init() { register(newConfigCmd) }

func newConfigCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Work with the proxy's configuration file",
	}
	var asJSON bool
	validate := &cobra.Command{
		Use:   "validate FILE",
		Short: "Check a proxy configuration without starting anything",
		Long: `Check everything the proxy would need, without starting it or connecting:
the file parses (unknown keys are errors), every upstream's connection settings
resolve (sslmode defaults to verify-full), the CA, client certificate and key
files exist and load (libpq's key permission rule, key decrypts and matches),
no certificate has expired (a cert_expiring warning within 30 days), listen
and health addresses parse, Unix socket and certificate directories are
writable (and an existing socket directory is this user's and not group- or
world-writable). The PGTRUST_* and DB_SSL_* environment variables apply, as
they would to pgtrust proxy: one that weakens an sslmode the file writes is a
failure, a PG* or DB_SSL_MODE variable that weakens the verify-full default a
warning.

${VAR} references in any string of the file are expanded from the
environment; a variable that is not set (or empty) is an error naming the key
and the variable (exit 2). Seed 001's [storage.postgres.NAME] tables are
checked as the upstreams they become.

A [vault] or [step] table (an upstream's client certificate, a gateway's
server certificate, or seed 001's vault_* keys) is checked as the proxy
will build it: vault_pki_role / pki_role is "<mount>/issue/<role>", the
renewal threshold is in (0,1) and the jitter below it, one way to log in to
Vault, the files it names exist, Vault's CA file parses. No certificate is
requested: the CA is first contacted when the proxy starts.

With gateway tables ([[upstreams.NAME.gateway]]) it also checks every
verifier and downgrade pair, and connects upstream (the only step that does)
as each mapped role with the gateway's credentials; an unreachable database
is a warning.

Exit status: 0 no problem (warnings allowed), 1 problems found,
2 the file cannot be read or is not a valid configuration.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			f, err := config.Load(args[0])
			if err != nil {
				if asJSON {
					writeJSON(out, map[string]any{"ok": false, "error": failure.ReportOf(err)})
				} else {
					fmt.Fprintln(cmd.ErrOrStderr(), "pgtrust: "+detail(err))
				}
				return exitCode(2)
			}
			findings := config.Validate(f)
			if f.HasGateway() {
				// The gateway's roles are checked upstream when it is reachable.
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				findings = append(findings, config.CheckGatewayRoles(ctx, f)...)
				cancel()
			}
			ok := !config.Failed(findings)
			if asJSON {
				writeJSON(out, map[string]any{"ok": ok, "file": args[0], "findings": findings})
			} else {
				printFindings(out, args[0], findings)
			}
			if !ok {
				return exitCode(1)
			}
			return nil
		},
	}
	validate.Flags().BoolVar(&asJSON, "json", false, "print the findings as JSON")
	cmd.AddCommand(validate)
	return cmd
}

func printFindings(w io.Writer, file string, findings []config.Finding) {
	fails, warns := 0, 0
	for _, fd := range findings {
		label := "ok  "
		switch fd.Status {
		case config.StatusWarn:
			label, warns = "WARN", warns+1
		case config.StatusFail:
			label, fails = "FAIL", fails+1
		}
		fmt.Fprintf(w, "%s %s: %s\n", label, fd.Check, fd.Message)
		if fd.Status != config.StatusOK {
			(&failure.Report{Class: fd.Class, Evidence: fd.Evidence, Fix: fd.Fix}).WriteDetails(w, "     ")
		}
	}
	if fails == 0 {
		fmt.Fprintf(w, "%s: valid (%d warning(s))\n", file, warns)
	} else {
		fmt.Fprintf(w, "%s: %d problem(s), %d warning(s)\n", file, fails, warns)
	}
}
