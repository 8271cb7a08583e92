package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/attestation"
	"github.com/pgtrust/pgtrust/internal/config"
	"github.com/pgtrust/pgtrust/internal/doctor"
)

func init() { register(newDoctorCmd) }

type doctorFlags struct {
	asJSON, quiet, matrix bool
	warnDays              int
	configFile, upstream  string
	att                   attestation.PolicyFlags
}

func newDoctorCmd() *cobra.Command {
	var f doctorFlags
	cmd := &cobra.Command{
		Use:   "doctor [DSN]",
		Short: "Diagnose a PostgreSQL connection stage by stage: name the cause and the fix",
		Long: `Diagnose a connection on the same path as every pgtrust connection (libpq's
exact TLS rules): configuration files, DNS, TCP, SSL negotiation, TLS handshake,
server certificate, client certificate, authentication, query. Stops at the
first failure and shows its class, the evidence and the fix; warns about weak
settings even when the connection works.

The DSN is a libpq key/value string or a postgres:// URI; without one, the PG*
environment variables (and DATABASE_URL) are used, as psql does. connect_timeout
defaults to 10 s.

--matrix tries every sslmode (and direct TLS negotiation when the server
accepts it) and prints what each concludes.

The attestation flags (--mrtd, --collateral, ... as for pgtrust attest verify)
add an attestation stage after the server certificate: the server's
certificate must carry Intel TDX evidence the policy accepts, checked before
any credential is sent.

Exit status: 0 connected, 1 a problem found, 2 usage or configuration error.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dsn := ""
			if len(args) == 1 {
				dsn = args[0]
			}
			return runDoctor(cmd, dsn, f)
		},
	}
	cmd.Flags().BoolVar(&f.asJSON, "json", false, "print the report as one JSON object")
	cmd.Flags().BoolVarP(&f.quiet, "quiet", "q", false, "print a single line")
	cmd.Flags().BoolVar(&f.matrix, "matrix", false, "try every sslmode (and direct negotiation) and print a table")
	cmd.Flags().IntVar(&f.warnDays, "warn-days", 30, "warn about certificates that expire within this many days")
	cmd.Flags().StringVar(&f.configFile, "config", "", "the proxy's TOML configuration file (with --upstream)")
	cmd.Flags().StringVar(&f.upstream, "upstream", "", "the upstream of --config to diagnose")
	f.att.Register(cmd.Flags(), true)
	return cmd
}

func runDoctor(cmd *cobra.Command, dsn string, f doctorFlags) error {
	out, errOut := cmd.OutOrStdout(), cmd.ErrOrStderr()
	if f.asJSON && f.quiet {
		return exitWith(2, fmt.Errorf("--json and --quiet exclude each other"))
	}
	if (f.configFile == "") != (f.upstream == "") {
		return exitWith(2, fmt.Errorf("--config and --upstream go together"))
	}
	if f.configFile != "" && dsn != "" {
		return exitWith(2, fmt.Errorf("give either a DSN or --config/--upstream, not both"))
	}
	if f.warnDays < 0 {
		return exitWith(2, fmt.Errorf("--warn-days must not be negative"))
	}
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	style := doctor.Style{Color: isTerminal(out) && os.Getenv("NO_COLOR") == "" && !f.asJSON}
	if f.att.Configured() && f.matrix {
		return exitWith(2, fmt.Errorf("--matrix does not run the attestation stage: drop the attestation flags or --matrix"))
	}
	opts := &doctor.Options{WarnDays: f.warnDays}
	if f.att.Configured() {
		policy, err := f.att.Policy()
		if err == nil {
			opts.AttestationAt, err = f.att.Instant(time.Now)
		}
		if err != nil {
			writeReport(out, doctor.ConfigFailure(err, 0), f, style)
			return exitCode(2)
		}
		opts.Attestation = policy
	}
	progress := newProgress(errOut, !f.asJSON && !f.quiet && isTerminal(errOut))
	opts.OnStage = progress.set

	var cfg *connstring.Config
	var err error
	if f.configFile != "" {
		cfg, err = loadUpstream(f.configFile, f.upstream)
	} else {
		cfg, err = doctor.ParseDSN(dsn, opts)
	}
	if err != nil {
		progress.stop()
		r := doctor.ConfigFailure(err, 0)
		if f.matrix {
			m := &doctor.Matrix{Error: failure.ReportOf(err), Rows: []doctor.MatrixRow{}}
			writeMatrix(out, m, f, style)
		} else {
			writeReport(out, r, f, style)
		}
		return exitCode(2)
	}

	if f.matrix {
		m := doctor.RunMatrix(ctx, cfg, opts)
		progress.stop()
		writeMatrix(out, m, f, style)
		if row := m.ConfiguredRow(cfg.SSLNegotiation); row != nil && row.Connected {
			return nil
		}
		return exitCode(1)
	}
	var r *doctor.Report
	if f.configFile != "" {
		r = doctor.Run(ctx, cfg, opts)
	} else {
		r = doctor.Diagnose(ctx, dsn, opts)
	}
	progress.stop()
	writeReport(out, r, f, style)
	if code := r.ExitCode(); code != 0 {
		return exitCode(code)
	}
	return nil
}

func writeReport(out io.Writer, r *doctor.Report, f doctorFlags, style doctor.Style) {
	switch {
	case f.asJSON:
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		_ = enc.Encode(r)
	case f.quiet:
		fmt.Fprintln(out, r.QuietLine())
	default:
		r.WriteText(out, style)
	}
}

func writeMatrix(out io.Writer, m *doctor.Matrix, f doctorFlags, style doctor.Style) {
	switch {
	case f.asJSON:
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		_ = enc.Encode(m)
	case m.Error != nil:
		m.Error.WriteText(out, "fail: ")
	case f.quiet:
		for _, r := range m.Rows {
			res := "ok"
			if !r.Connected {
				res = string(r.Class)
			}
			fmt.Fprintf(out, "%s/%s=%s ", r.SSLMode, r.Negotiation, res)
		}
		fmt.Fprintln(out)
	default:
		m.WriteText(out, style)
	}
}

// loadUpstream reads the connection settings of one upstream of the
// proxy's configuration file, resolved as the proxy resolves them.
func loadUpstream(path, name string) (*connstring.Config, error) {
	f, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	return f.Upstream(name)
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// progress draws a spinner line on stderr while stages run (terminals only).
type progress struct {
	w       io.Writer
	mu      sync.Mutex
	stage   string
	done    chan struct{}
	stopped chan struct{}
	once    sync.Once
}

func newProgress(w io.Writer, on bool) *progress {
	p := &progress{w: w}
	if !on {
		return p
	}
	p.done, p.stopped = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(p.stopped)
		frames := []string{"|", "/", "-", "\\"}
		t := time.NewTicker(120 * time.Millisecond)
		defer t.Stop()
		for i := 0; ; i++ {
			select {
			case <-p.done:
				fmt.Fprint(p.w, "\r\x1b[K")
				return
			case <-t.C:
				p.mu.Lock()
				stage := p.stage
				p.mu.Unlock()
				if stage != "" {
					fmt.Fprintf(p.w, "\r\x1b[K%s %s …", frames[i%len(frames)], doctor.StageTitle(stage))
				}
			}
		}
	}()
	return p
}

func (p *progress) set(stage string) {
	p.mu.Lock()
	p.stage = stage
	p.mu.Unlock()
}

func (p *progress) stop() {
	if p.done == nil {
		return
	}
	p.once.Do(func() {
		close(p.done)
		<-p.stopped
	})
}
