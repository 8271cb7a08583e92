package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/config"
	"github.com/pgtrust/pgtrust/internal/health"
	"github.com/pgtrust/pgtrust/internal/proxy"
)

func init() { register(newProxyCmd) }

// proxyStarted, when set (tests), is called once the proxy and the health
// server listen.
var proxyStarted func(p *proxy.Proxy, hs *health.Server)

func newProxyCmd() *cobra.Command {
	var configPath string
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Run the TLS sidecar: local plaintext/TLS listeners, libpq-exact TLS to PostgreSQL",
		Long: `Run the sidecar proxy. Local clients connect to the listen address (or Unix
socket) without having to get TLS right; the proxy connects to PostgreSQL with
libpq's exact TLS semantics (sslmode default verify-full) and pipes the session.

Configuration comes from --config FILE (TOML, see docs/proxy.md), then the
PGTRUST_* and DB_SSL_* environment variables, then these flags. Without a file,
--upstream DSN (or PGTRUST_UPSTREAM) is enough.

Signals: SIGTERM/SIGINT turn /readyz to 503, keep serving for --drain-delay,
stop accepting, let sessions finish for up to --drain-timeout and exit; a
second signal exits at once.
SIGHUP reloads the configuration and certificates; a reload that does not
validate is logged and the running configuration stays. A certificate from a
CA ([upstreams.NAME.vault] / .step, seed 001's vault_pki_role) whose table
did not change keeps its certificate and renewal schedule: a SIGHUP asks the
CA for nothing (a failed renewal goes on being retried with backoff).

Exit status: 0 after a clean shutdown, 1 on a runtime failure, 2 when the
configuration is invalid.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			flags := changedFlags(cmd, "config")
			sigs := make(chan os.Signal, 2)
			signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
			defer signal.Stop(sigs)
			return runProxy(cmd.Context(), configPath, flags, cmd.ErrOrStderr(), sigs)
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "", "TOML configuration file (docs/proxy.md)")
	for _, o := range config.Overrides {
		if o.Flag != "" {
			cmd.Flags().String(o.Flag, "", o.Help+" (env "+o.Env+"; file "+o.Key+")")
		}
	}
	return cmd
}

// loadProxyConfig reads the file (when given) and the environment, then
// applies the flags.
func loadProxyConfig(path string, flags map[string]string) (*config.File, error) {
	var f *config.File
	if path != "" {
		var err error
		if f, err = config.Load(path); err != nil {
			return nil, err
		}
	} else {
		f = config.Empty()
		if err := f.ApplyEnv(config.Environ()); err != nil {
			return nil, err
		}
	}
	if err := f.ApplyFlags(flags); err != nil {
		return nil, err
	}
	return f, nil
}

// checkFindings logs warnings and returns an error listing the failures.
func checkFindings(log *slog.Logger, findings []config.Finding) error {
	var errs []error
	for _, fd := range findings {
		switch fd.Status {
		case config.StatusWarn:
			log.Warn(fd.Message, "check", fd.Check, "class", fd.Class, "evidence", fd.Evidence, "fix", fd.Fix)
		case config.StatusFail:
			errs = append(errs, &failure.Error{Class: fd.Class, Message: fd.Check + ": " + fd.Message, Evidence: fd.Evidence, Fix: fd.Fix})
		}
	}
	return errors.Join(errs...)
}

// detail renders an error with the class, evidence and fix of every
// classified error in it.
func failureText(err error) string {
	var parts []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		parts = j.Unwrap()
	} else {
		parts = []error{err}
	}
	out := ""
	for _, e := range parts {
		out += failure.Text(e) + "\n"
	}
	return out
}

func runProxy(ctx context.Context, path string, flags map[string]string, stderr io.Writer, sigs <-chan os.Signal) error {
	if ctx == nil {
		ctx = context.Background()
	}
	f, err := loadProxyConfig(path, flags)
	if err != nil {
		fmt.Fprint(stderr, "pgtrust proxy: ", failureText(err))
		return exitCode(2)
	}
	log := f.NewLogger(stderr)
	if os.Getenv("GOMAXPROCS") == "" {
		procs := proxy.SidecarProcs(runtime.GOMAXPROCS(0))
		runtime.GOMAXPROCS(procs)
		log.Debug("GOMAXPROCS set for a sidecar (override with the GOMAXPROCS environment variable)", "procs", procs)
	}
	if err := checkFindings(log, config.Validate(f)); err != nil {
		fmt.Fprint(stderr, "pgtrust proxy: the configuration does not validate:\n", failureText(err))
		return exitCode(2)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	pc, err := f.ProxyConfig(log, reg)
	if err != nil {
		fmt.Fprint(stderr, "pgtrust proxy: ", failureText(err))
		return exitCode(2)
	}
	p, err := proxy.New(*pc)
	if err != nil {
		fmt.Fprint(stderr, "pgtrust proxy: ", failureText(err))
		return exitCode(classExit(err))
	}
	if err := p.Start(ctx); err != nil {
		p.Close()
		fmt.Fprint(stderr, "pgtrust proxy: ", failureText(err))
		return exitCode(classExit(err))
	}
	var hs *health.Server
	if addr := f.HealthListen(); addr != "" {
		hs = health.New(addr, p, reg, log)
		if err := hs.Start(ctx); err != nil {
			p.Close()
			fmt.Fprint(stderr, "pgtrust proxy: ", err, "\n")
			return exitCode(1)
		}
	}
	if proxyStarted != nil {
		proxyStarted(p, hs)
	}

	for {
		var sig os.Signal
		select {
		case sig = <-sigs:
		case <-ctx.Done():
			sig = syscall.SIGTERM
		}
		if sig == syscall.SIGHUP {
			reloadProxy(log, p, path, flags, f.HealthListen())
			continue
		}
		return shutdownProxy(log, p, hs, sig, sigs)
	}
}

// reloadProxy re-reads the configuration and certificates, validates them
// and swaps them in; on any failure the running configuration stays.
func reloadProxy(log *slog.Logger, p *proxy.Proxy, path string, flags map[string]string, healthAddr string) {
	log.Info("SIGHUP: reloading configuration and certificates")
	nf, err := loadProxyConfig(path, flags)
	if err == nil {
		err = checkFindings(log, config.Validate(nf))
	}
	var pc *proxy.Config
	if err == nil {
		pc, err = nf.ProxyConfig(log, nil)
	}
	if err != nil {
		log.Error("reload rejected; keeping the running configuration", "class", failure.ClassOf(err), "error", err.Error())
		return
	}
	if nf.HealthListen() != healthAddr {
		log.Warn("health.listen changed; the new address applies after a restart", "running", healthAddr, "new", nf.HealthListen())
	}
	// proxy.Reload re-reads every certificate file, validates, swaps and
	// logs its own outcome.
	_ = p.Reload(pc)
}

// shutdownProxy drains: readiness goes first, then the listeners close and
// sessions get the drain timeout; a second signal ends everything at once.
func shutdownProxy(log *slog.Logger, p *proxy.Proxy, hs *health.Server, sig os.Signal, sigs <-chan os.Signal) error {
	log.Info("shutting down", "signal", sig.String())
	if hs != nil {
		hs.SetNotReady("draining: shutting down")
	}
	done := make(chan error, 1)
	go func() { done <- p.Shutdown(context.Background()) }()
	code := 0
	select {
	case err := <-done:
		if err != nil {
			log.Warn("shutdown", "error", err.Error())
		}
	case sig := <-sigs:
		log.Warn("second signal: closing all sessions now", "signal", sig.String())
		p.Close()
		<-done
		code = 1
	}
	if hs != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = hs.Shutdown(ctx)
		cancel()
	}
	if code != 0 {
		return exitCode(code)
	}
	return nil
}

func classExit(err error) int {
	if failure.ClassOf(err) == failure.ConfigInvalid {
		return 2
	}
	return 1
}

// changedFlags returns the flags given on the command line, by name, except
// those named in skip: the highest layer of the configuration.
func changedFlags(cmd *cobra.Command, skip ...string) map[string]string {
	flags := map[string]string{}
	cmd.Flags().Visit(func(fl *pflag.Flag) {
		for _, s := range skip {
			if fl.Name == s {
				return
			}
		}
		flags[fl.Name] = fl.Value.String()
	})
	return flags
}
