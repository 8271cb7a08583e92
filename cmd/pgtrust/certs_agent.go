package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/certagent"
)

// certsAgentStarted, when set (tests), is called once the agent holds a
// certificate, before its loop starts.
var certsAgentStarted func(a *certagent.Agent)

func newCertsAgentCmd() *cobra.Command {
	var configPath string
	cmd := &cobra.Command{
		Use:   "agent --config FILE",
		Short: "Keep certificate, key and CA files fresh from Vault PKI or step-ca, and reload the server after each renewal",
		Long: `Run the certificate agent: obtain a certificate from the CA of the
configuration's [vault] or [step] table, write it to agent.cert_file,
agent.key_file (PKCS#8, 0600) and agent.ca_file atomically, renew it once the
renewal threshold of its lifetime has passed, and run agent.reload_command
(an argument list, no shell) after each write — for example
["pg_ctl", "reload", "-D", DATADIR] to make PostgreSQL load its new server
certificate. Files left by an earlier run are reused while they are valid
and match the configuration (common name, SANs, and for step-ca the
configured root); otherwise a new certificate is issued. The three paths
must be regular files (or absent): a symbolic link, hard link or other
file there is refused (exit 2), and a directory that another user may write
is warned about at start.
A failed reload is retried with backoff and never stops the agent.

Signals: SIGTERM/SIGINT stop the agent (exit 0); SIGHUP renews now.

Exit status: 0 after a clean stop, 1 when no certificate could be obtained
at start or the agent failed, 2 when the configuration is invalid.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sigs := make(chan os.Signal, 2)
			signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
			defer signal.Stop(sigs)
			return runCertsAgent(cmd.Context(), configPath, cmd.ErrOrStderr(), sigs)
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "", "agent configuration file (TOML, see docs/renewal.md)")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

// exitForClass is 2 for a configuration error, else code.
func exitForClass(err error, code int) int {
	if failure.ClassOf(err) == failure.ConfigInvalid {
		return 2
	}
	return code
}

func runCertsAgent(ctx context.Context, path string, stderr io.Writer, sigs <-chan os.Signal) error {
	if ctx == nil {
		ctx = context.Background()
	}
	cfg, err := certagent.Load(path, nil)
	if err != nil {
		failure.WriteText(stderr, "pgtrust certs agent: ", err)
		return exitCode(2)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a, err := certagent.New(ctx, cfg, certagent.Options{Logger: log, Registry: reg})
	if err != nil {
		failure.WriteText(stderr, "pgtrust certs agent: ", err)
		return exitCode(exitForClass(err, 1))
	}
	if certsAgentStarted != nil {
		certsAgentStarted(a)
	}
	renewNow := make(chan struct{}, 1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case sig := <-sigs:
				if sig == syscall.SIGHUP {
					select {
					case renewNow <- struct{}{}:
					default:
					}
					continue
				}
				log.Info("signal received; stopping", "signal", sig.String())
				cancel()
				return
			}
		}
	}()
	if err := a.Run(ctx, renewNow); err != nil {
		failure.WriteText(stderr, "pgtrust certs agent: ", err)
		return exitCode(exitForClass(err, 1))
	}
	return nil
}

func newCertsRenewCmd() *cobra.Command {
	var configPath string
	var force bool
	cmd := &cobra.Command{
		Use:   "renew --config FILE [--force]",
		Short: "Renew the agent's certificate once if it is due (for cron), write the files and run the reload command",
		Long: `Renew the certificate of an agent configuration once: when the certificate
on disk is missing, expired, or past its renewal time (or with --force), ask
the CA for a new one, write the files atomically and run agent.reload_command;
otherwise say when it will be due.

Files on disk that do not match the configuration (another common name,
other SANs, another step-ca root) are replaced, never reported "not due".

Exit status: 0 renewed or not yet due (printed, with the next due time),
1 the renewal (or the reload command) failed but the current certificate is
still valid, 2 usage or configuration error, 3 the renewal failed and the
current certificate is missing or expired.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runCertsRenew(cmd, configPath, force)
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "", "agent configuration file (TOML, see docs/renewal.md)")
	cmd.Flags().BoolVar(&force, "force", false, "renew even if the certificate is not due yet")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

func describeStatus(st certs.Status) string {
	return fmt.Sprintf("certificate %q serial %s valid until %s", st.Subject, st.Serial, st.NotAfter.UTC().Format(time.RFC3339))
}

func runCertsRenew(cmd *cobra.Command, path string, force bool) error {
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	out := cmd.OutOrStdout()
	cfg, err := certagent.Load(path, nil)
	if err != nil {
		return failWith(cmd, false, 2, err)
	}
	// Cron mails what a job prints: the warning reaches the operator.
	for _, w := range cfg.DirectoryWarnings() {
		fmt.Fprintf(cmd.ErrOrStderr(), "pgtrust certs renew: warning: another user may write %s (%s): that user could swap the certificate files\n  fix: %s\n",
			w.Dir, w.Why, certagent.DirectoryFix())
	}
	now := time.Now()
	a, err := certagent.New(ctx, cfg, certagent.Options{})
	if err != nil {
		// New fails only when nothing usable was on disk: no certificate,
		// or one that expired or does not load.
		return failWith(cmd, false, exitForClass(err, 3), err)
	}
	src := a.Source()
	// currentCode is the exit status of a failure from here: 1 while the
	// certificate on disk is still valid, 3 once it is not.
	currentCode := func() int {
		if in := a.Initial(); in != nil && in.Certificate.Leaf != nil && time.Now().Before(in.Certificate.Leaf.NotAfter) {
			return 1
		}
		return 3
	}
	if a.Reused() {
		if next := src.NextRenewal(); !force && now.Before(next) {
			pending := ""
			if a.ReloadPending() {
				// An earlier run wrote these files and its reload failed.
				if err := a.Sync(ctx); err != nil {
					return failWith(cmd, false, 1, err)
				}
				pending = "; the pending reload command succeeded"
			}
			fmt.Fprintf(out, "not due: %s%s; next renewal due at %s\n", describeStatus(src.Status()), pending, next.UTC().Format(time.RFC3339))
			return nil
		}
		if err := src.Reload(); err != nil {
			code := currentCode()
			if code == 1 {
				fmt.Fprintf(out, "renewal failed; the current %s stays in use\n", describeStatus(src.Status()))
			}
			return failWith(cmd, false, code, err)
		}
	}
	if err := a.Sync(ctx); err != nil {
		code := currentCode()
		if failure.ClassOf(err) == certagent.ReloadFailed || failure.ClassOf(err) == failure.Timeout {
			// The new files are in place and valid; the server has not loaded them.
			code = 1
		}
		return failWith(cmd, false, code, err)
	}
	reload := ""
	if len(cfg.Agent.ReloadCommand) > 0 {
		reload = "; reload command succeeded"
	}
	fmt.Fprintf(out, "renewed: %s, written to %s%s; next renewal due at %s\n", describeStatus(src.Status()),
		cfg.Agent.CertFile, reload, src.NextRenewal().UTC().Format(time.RFC3339))
	if why := a.NotReusedReason(); a.Initial() == nil && why != "" && why != "no certificate on disk yet" {
		fmt.Fprintf(out, "the files on disk were not reused: %s\n", why)
	}
	return nil
}
