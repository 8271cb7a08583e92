package certagent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/failure"
)

// Options tune an Agent. Zero values take the defaults.
type Options struct {
	Logger *slog.Logger
	// Registry receives the engine's and the agent's metrics and is what
	// /metrics serves; default a new registry.
	Registry *prometheus.Registry
	Now      func() time.Time
	// RetryBase and RetryMax bound the backoff of a failed write or reload
	// command: base doubled per failure up to max (default 5s and 5m).
	RetryBase, RetryMax time.Duration
}

// Agent keeps the files of one Config fresh.
type Agent struct {
	cfg *Config
	o   Options
	log *slog.Logger
	rec *recordingIssuer
	src *certs.RenewingSource
	met *agentMetrics

	initial   *certs.Issued // what was on disk at start; nil when nothing usable
	notReused string        // why initial is nil
	reused    bool          // the engine adopted initial instead of issuing

	mu         sync.Mutex
	pending    *certs.Issued // renewed material not yet written
	written    int           // generation of the last write
	reloaded   int           // generation the last successful reload covered
	healthAddr net.Addr

	wake chan struct{}
}

// recordingIssuer remembers the last material its issuer returned, so the
// agent can write the CA certificates as well as the certificate the
// engine swapped in (OnRenew reports only the status).
type recordingIssuer struct {
	certs.Issuer
	mu   sync.Mutex
	last *certs.Issued
}

func (r *recordingIssuer) Issue(ctx context.Context, current *tls.Certificate) (*certs.Issued, error) {
	iss, err := r.Issuer.Issue(ctx, current)
	if err == nil {
		r.mu.Lock()
		r.last = iss
		r.mu.Unlock()
	}
	return iss, err
}

func (r *recordingIssuer) lastIssued() *certs.Issued {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

// New builds the issuer, hands the files already on disk to the engine as
// RenewOptions.Initial and obtains a certificate: the one on disk while it
// is valid, else a new one from the CA (an error then has a renewal_*
// class; configuration errors are config_invalid). Nothing is written
// until Sync or Run.
func New(ctx context.Context, cfg *Config, o Options) (*Agent, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.RetryBase <= 0 {
		o.RetryBase = 5 * time.Second
	}
	if o.RetryMax <= 0 {
		o.RetryMax = 5 * time.Minute
	}
	a := &Agent{cfg: cfg, o: o, log: o.Logger, wake: make(chan struct{}, 1)}
	met, err := newAgentMetrics(o.Registry)
	if err != nil {
		return nil, err
	}
	a.met = met
	iss, ro, err := cfg.Issuer(o.Logger)
	if err != nil {
		return nil, err
	}
	a.rec = &recordingIssuer{Issuer: iss}
	cfg.warnDirectories(a.log)
	id, err := cfg.identity()
	if err != nil {
		return nil, err
	}
	initial, why, err := cfg.readInitial(id, o.Now())
	if err != nil {
		return nil, err
	}
	if initial == nil {
		a.log.Info("no reusable certificate on disk; asking the CA", "cert_file", cfg.Agent.CertFile, "reason", why)
	}
	a.initial, a.notReused = initial, why
	ro.Initial = initial
	ro.Logger = o.Logger
	ro.Registerer = o.Registry
	ro.Now = o.Now
	ro.Name = "agent " + cfg.Agent.CertFile
	ro.OnRenew = a.onRenew
	src, err := certs.NewRenewingSource(ctx, a.rec, ro)
	if err != nil {
		return nil, err
	}
	a.src = src
	a.mu.Lock()
	a.reused = a.pending == nil
	if len(cfg.Agent.ReloadCommand) == 0 {
		_ = os.Remove(cfg.reloadMarker()) // nothing to run any more
	} else if _, err := os.Lstat(cfg.reloadMarker()); err == nil {
		// An earlier run wrote files and its reload did not succeed (or it
		// stopped before running it): the reload is still due.
		a.written = 1
		a.log.Info("a reload command from an earlier run is pending; it runs again", "marker", cfg.reloadMarker())
	}
	a.mu.Unlock()
	if a.reused {
		if err := cfg.fixMetadata(); err != nil {
			return nil, err
		}
		a.met.notAfter.Set(float64(leafOf(&initial.Certificate).NotAfter.Unix()))
	}
	return a, nil
}

// onRenew runs in the engine after each attempt; a success queues the new
// material for writing and wakes Run.
func (a *Agent) onRenew(_ certs.Status, err error) {
	if err != nil {
		return // logged and counted by the engine
	}
	iss := a.rec.lastIssued()
	if iss == nil {
		return
	}
	a.mu.Lock()
	a.pending = iss
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// ReloadPending reports whether files were written that the reload
// command has not yet covered (in this run or, through the marker file, an
// earlier one).
func (a *Agent) ReloadPending() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.written > a.reloaded && len(a.cfg.Agent.ReloadCommand) > 0
}

// Source is the renewing source behind the agent.
func (a *Agent) Source() *certs.RenewingSource { return a.src }

// Reused reports whether the certificate on disk at start was adopted
// (no issue was needed).
func (a *Agent) Reused() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.reused
}

// Initial is the certificate found on disk at start (nil when none was usable).
func (a *Agent) Initial() *certs.Issued { return a.initial }

// NotReusedReason says why the files on disk at start were not handed to
// the engine (missing, unreadable, or not matching the configuration); ""
// when they were.
func (a *Agent) NotReusedReason() string { return a.notReused }

// Sync writes renewed material that is not on disk yet and runs the reload
// command when the files changed since its last success. It returns the
// first failure; the material stays queued and the reload due, so a later
// Sync retries them.
func (a *Agent) Sync(ctx context.Context) error {
	return a.sync(ctx)
}

func (a *Agent) sync(ctx context.Context) error {
	a.mu.Lock()
	p := a.pending
	a.mu.Unlock()
	if p != nil {
		files, err := a.cfg.encode(p)
		if err == nil {
			err = a.cfg.writeFiles(files)
		}
		if err != nil {
			a.met.writeFailures.Inc()
			a.log.Error("could not write the renewed certificate files; the old files stay", "class", failure.ClassOf(err),
				"error", err.Error(), "fix", fixOf(err))
			return err
		}
		leaf := leafOf(&p.Certificate)
		if len(a.cfg.Agent.ReloadCommand) > 0 {
			// Until the reload succeeds, the marker tells the next run
			// (cron's certs renew, a restarted agent) that it is due.
			if err := writeMarker(a.cfg.reloadMarker()); err != nil {
				a.log.Warn("could not record the pending reload; a restart before the reload succeeds will not rerun it", "marker", a.cfg.reloadMarker(), "error", err.Error())
			}
		}
		a.mu.Lock()
		if a.pending == p {
			a.pending = nil
		}
		a.written++
		a.mu.Unlock()
		a.met.writes.Inc()
		a.met.notAfter.Set(float64(leaf.NotAfter.Unix()))
		a.log.Info("certificate files written", "cert_file", a.cfg.Agent.CertFile, "key_file", a.cfg.Agent.KeyFile,
			"ca_file", a.cfg.Agent.CAFile, "serial", certs.SerialHex(leaf), "not_after", leaf.NotAfter)
	}
	argv := a.cfg.Agent.ReloadCommand
	a.mu.Lock()
	gen, due := a.written, a.written > a.reloaded
	a.mu.Unlock()
	if !due || len(argv) == 0 {
		return nil
	}
	start := a.o.Now()
	out, err := runReload(ctx, argv, a.cfg.ReloadTimeout())
	took := a.o.Now().Sub(start).Round(time.Millisecond)
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		c := failure.ClassOf(err)
		a.met.reloadFailures.WithLabelValues(string(c)).Inc()
		a.log.Warn("reload command failed; the new files are in place", "command", argv[0], "class", c,
			"error", err.Error(), "output", out, "took", took, "fix", fixOf(err))
		return err
	}
	a.mu.Lock()
	if gen > a.reloaded {
		a.reloaded = gen
	}
	current := a.reloaded == a.written
	a.mu.Unlock()
	if current {
		if err := os.Remove(a.cfg.reloadMarker()); err != nil && !os.IsNotExist(err) {
			a.log.Warn("could not remove the pending-reload marker", "marker", a.cfg.reloadMarker(), "error", err.Error())
		}
	}
	a.met.reloads.Inc()
	a.log.Info("reload command succeeded", "command", argv[0], "output", out, "took", took)
	return nil
}

func fixOf(err error) string {
	if fe, ok := failure.As(err); ok {
		return fe.Fix
	}
	return ""
}

// Run keeps the files fresh until ctx is done: the engine renews on its
// schedule, each renewal is written and followed by the reload command;
// a value on renewNow (SIGHUP) renews at once. A failed write or reload is
// retried with backoff (RetryBase doubled up to RetryMax) until it
// succeeds or a newer renewal supersedes it; it never stops the agent.
// With a [health] listen address, /metrics, /livez and /readyz are served.
func (a *Agent) Run(ctx context.Context, renewNow <-chan struct{}) error {
	if l := a.cfg.HealthListen(); l != "" {
		srv, ln, err := a.startHealth(ctx, l)
		if err != nil {
			return err
		}
		a.mu.Lock()
		a.healthAddr = ln.Addr()
		a.mu.Unlock()
		a.log.Info("health server listening", "addr", ln.Addr().String())
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Add(1)
	go func() { defer wg.Done(); a.src.Run(ctx) }()
	if tr, ok := a.rec.Issuer.(interface{ RunTokenRenewal(context.Context) }); ok {
		wg.Add(1)
		go func() { defer wg.Done(); tr.RunTokenRenewal(ctx) }()
	}
	st := a.src.Status()
	a.log.Info("certificate agent running", "cert_file", a.cfg.Agent.CertFile, "serial", st.Serial, "not_after", st.NotAfter,
		"next_renewal", a.src.NextRenewal(), "reused_from_disk", a.Reused())

	failures := 0
	var retry <-chan time.Time
	syncNow := func() {
		if err := a.Sync(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			failures++
			d := reloadRetryDelay(failures, a.o.RetryBase, a.o.RetryMax)
			a.log.Info("retrying", "in", d, "attempt", failures)
			retry = time.After(d)
			return
		}
		failures, retry = 0, nil
	}
	syncNow()
	for {
		select {
		case <-ctx.Done():
			a.log.Info("certificate agent stopping")
			return nil
		case <-renewNow:
			a.log.Info("renewing now (signal)")
			wg.Add(1)
			// Off the loop: an issue can take up to the CA's request
			// timeout, during which writes, retries and signals go on (a
			// shutdown waits for it, bounded by that timeout).
			go func() { defer wg.Done(); _ = a.src.Reload() }()
			continue
		case <-a.wake:
			failures = 0 // new material: start the backoff afresh
		case <-retry:
		}
		syncNow()
	}
}

// Ready reports whether the certificate in use is still valid, with the
// reason when not.
func (a *Agent) Ready() (bool, string) {
	st := a.src.Status()
	if st.LastReloadClass == certs.RenewalExpired {
		return false, fmt.Sprintf("%s: %v", certs.RenewalExpired, st.LastReloadErr)
	}
	return true, fmt.Sprintf("certificate serial %s valid until %s", st.Serial, st.NotAfter.UTC().Format(time.RFC3339))
}

func (a *Agent) startHealth(ctx context.Context, addr string) (*http.Server, net.Listener, error) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.o.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, why := a.Ready()
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintln(w, why)
	})
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, failure.Wrap(failure.ConfigInvalid, err, "health server: cannot listen on %s", addr).
			WithEvidence("%v", err).WithFix("choose a free address for health.listen, or \"\" to disable it")
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 60 * time.Second, MaxHeaderBytes: 16 << 10,
		ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelWarn)}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("health server stopped", "error", err.Error())
		}
	}()
	return srv, ln, nil
}

// HealthAddr is the health server's address once Run listens (nil before).
func (a *Agent) HealthAddr() net.Addr {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.healthAddr
}

type agentMetrics struct {
	writes, writeFailures, reloads prometheus.Counter
	reloadFailures                 *prometheus.CounterVec
	notAfter                       prometheus.Gauge
}

func newAgentMetrics(reg *prometheus.Registry) (*agentMetrics, error) {
	m := &agentMetrics{
		writes: prometheus.NewCounter(prometheus.CounterOpts{Name: "pgtrust_cert_agent_writes_total",
			Help: "Certificate, key and CA file sets written by the agent."}),
		writeFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "pgtrust_cert_agent_write_failures_total",
			Help: "Failed writes of the certificate files (the old files stay)."}),
		reloads: prometheus.NewCounter(prometheus.CounterOpts{Name: "pgtrust_cert_agent_reloads_total",
			Help: "Successful runs of the reload command."}),
		reloadFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgtrust_cert_agent_reload_failures_total",
			Help: "Failed runs of the reload command, by class (reload_failed, timeout)."}, []string{"class"}),
		notAfter: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pgtrust_cert_agent_file_not_after_timestamp_seconds",
			Help: "NotAfter of the certificate last written to cert_file, as a Unix timestamp."}),
	}
	for _, c := range []prometheus.Collector{m.writes, m.writeFailures, m.reloads, m.reloadFailures, m.notAfter} {
		if err := reg.Register(c); err != nil {
			return nil, failure.Wrap(failure.ConfigInvalid, err, "could not register the agent's metrics")
		}
	}
	for _, c := range []failure.Class{ReloadFailed, failure.Timeout} {
		m.reloadFailures.WithLabelValues(string(c))
	}
	return m, nil
}
