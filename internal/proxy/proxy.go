// Package proxy is pgtrust's sidecar: local TCP and Unix-socket listeners
// whose clients (plaintext, or TLS by SSLRequest or direct TLS with ALPN)
// are passed to named upstream PostgreSQL servers over transports opened by
// pgtls with libpq's exact semantics, with the upstream client certificate
// from a hot-reloading certs.FileSource or a certs.RenewingSource (a CA:
// Vault PKI, step-ca; see Renewal).
//
// A session reads the client's startup packets exactly (never ahead, so
// bytes injected after an SSLRequest are seen and refused), dials the
// upstream, forwards the client's own StartupMessage and relays the
// authentication exchange (removing SCRAM-SHA-256-PLUS, which cannot cross
// the proxy, and recording BackendKeyData for CancelRequest routing), then
// becomes a byte pipe with pooled buffers. Every refusal and upstream failure
// reaches the client as a PostgreSQL ErrorResponse naming the class and fix.
package proxy

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/authlimit"
	"github.com/pgtrust/pgtrust/internal/keyfile"
	"github.com/pgtrust/pgtrust/internal/relay"
	"github.com/pgtrust/pgtrust/pgtls"
)

// HealthStatus is what the health package reports.
type HealthStatus struct {
	Draining  bool
	Upstreams []UpstreamStatus
	Gateways  []GatewayStatus
	Pools     []PoolStatus
}

// GatewayStatus is one gateway listener in /health.
type GatewayStatus struct {
	Upstream string `json:"upstream"`
	Listen   string `json:"listen"`
	Auth     string `json:"auth"`
	// CertificateNotAfter is the expiry of the server certificate in use.
	CertificateNotAfter *time.Time `json:"certificate_not_after,omitempty"`
	// Attestation is "none" (certificate from files), or the RA-TLS
	// provider ("configfs", "simulator"); AttestationError the latest
	// failed (re-)issue, while the previous certificate stays in use.
	Attestation      string          `json:"attestation"`
	AttestationError *failure.Report `json:"attestation_error,omitempty"`
	// CertificateRenewal is set when the server certificate comes from a CA.
	CertificateRenewal *RenewalStatus `json:"certificate_renewal,omitempty"`
}

// UpstreamStatus is one upstream in the shape of seed 000's
// /health/database/ssl, plus expiry and activity.
type UpstreamStatus struct {
	Name                  string          `json:"name"`
	Listen                []string        `json:"listen"`
	SSLEnabled            bool            `json:"ssl_enabled"`
	SSLMode               string          `json:"ssl_mode"`
	SSLVersion            string          `json:"ssl_version"` // "TLSv1.3" from the latest upstream handshake or probe
	SSLCipher             string          `json:"ssl_cipher"`
	CertificateValidation string          `json:"certificate_validation"` // "enabled", "disabled", or "disabled (the CA named no certificates)" for trust_issued_ca
	Status                string          `json:"status"`                 // "healthy" | "unhealthy" | "insecure" (plaintext not declared intended) | "unknown" (no handshake yet)
	LastHandshake         time.Time       `json:"last_handshake,omitzero"`
	LastError             *failure.Report `json:"last_error,omitempty"`
	ClientCertNotAfter    *time.Time      `json:"client_certificate_not_after,omitempty"`
	// ClientCertRenewal is set when the client certificate comes from a CA
	// ([upstreams.NAME.vault] / .step): next renewal, last success,
	// failures and the last class.
	ClientCertRenewal *RenewalStatus `json:"client_certificate_renewal,omitempty"`
	ActiveConnections int64          `json:"active_connections"`
}

// tuning holds the settings a reload may change outside the upstreams.
type tuning struct {
	DrainTimeout     time.Duration
	DrainDelay       time.Duration
	StartupTimeout   time.Duration
	ConnectTimeout   time.Duration
	AuthTimeout      time.Duration
	MaxStartupPacket int
}

func tuningOf(cfg Config) *tuning {
	return &tuning{DrainTimeout: cfg.DrainTimeout, DrainDelay: cfg.DrainDelay, StartupTimeout: cfg.StartupTimeout,
		ConnectTimeout: cfg.ConnectTimeout, AuthTimeout: cfg.AuthTimeout, MaxStartupPacket: cfg.MaxStartupPacket}
}

// Proxy is a running (or ready to start) set of listeners and upstreams.
type Proxy struct {
	log       *slog.Logger
	metrics   *metrics
	upstreams []*upstream
	probeIvl  time.Duration
	tune      atomic.Pointer[tuning]
	refusals  *sampledLog // repeated refusals, aggregated
	nonce     string      // prefix of correlation ids, distinct per process

	ctx    context.Context // lives until Close: certificate watchers, probes, dials
	cancel context.CancelFunc

	reg      prometheus.Registerer // for the renewing sources' series
	renewMu  sync.Mutex
	renewing map[string]*renewHandle // running renewing sources by RenewOptions.Name

	mu        sync.Mutex
	started   bool
	closed    bool
	listeners []*listener
	sessions  map[*session]struct{}
	reloadMu  sync.Mutex

	draining atomic.Bool // Ready is false: load balancers should stop sending
	refusing atomic.Bool // new sessions are refused (after DrainDelay)
	forced   atomic.Bool // sessions are being closed by Close
	nextID   atomic.Uint64
	sessWG   sync.WaitGroup
	loopWG   sync.WaitGroup // accept loops, the probe and the log flusher
	kickWG   sync.WaitGroup // immediate probes

	cancelMu   sync.Mutex
	cancelKeys map[uint32][]*session

	// relays moves established sessions' bytes; nil: each session pipes
	// with two goroutines.
	relays *relay.Loops
}

// listener is one TCP or Unix listener of an upstream.
type listener struct {
	up     *upstream
	ln     net.Listener
	addr   string
	unix   bool
	public bool                  // a TCP listener not bound to loopback: upstream evidence stays in the log
	gw     int                   // index of the gateway front in the settings, -1 for a local listener
	err    atomic.Pointer[error] // the latest Accept failure, nil while healthy
}

// New validates cfg, loads the certificate material (upstream client
// certificates from Conn.SSLCert/SSLKey/SSLPassword and client-side server
// certificates, each watched by a certs.FileSource so that rotation applies
// to new connections), obtains the first certificate of every renewing
// source (Renewal: the only network step of New) and registers the
// metrics. It opens no listening socket.
func New(cfg Config) (*Proxy, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("register proxy metrics: %w", err)
	}
	p := &Proxy{log: cfg.Logger, metrics: m, probeIvl: cfg.ProbeInterval, reg: cfg.Registerer, renewing: map[string]*renewHandle{},
		sessions: map[*session]struct{}{}, cancelKeys: map[uint32][]*session{}}
	p.tune.Store(tuningOf(cfg))
	p.refusals = newSampledLog(cfg.Logger, cfg.RefusalLogInterval)
	var nonce [3]byte
	_, _ = rand.Read(nonce[:])
	p.nonce = hex.EncodeToString(nonce[:])
	p.ctx, p.cancel = context.WithCancel(context.Background())
	if err := p.startRelays(cfg.EventLoops); err != nil {
		return nil, err
	}
	var b renewBuild
	for _, uc := range cfg.Upstreams {
		u := &upstream{name: uc.Name, cfg: uc, metrics: m.forUpstream(uc.Name)}
		for _, g := range uc.Gateways {
			o := g.Backoff
			u.limiters = append(u.limiters, authlimit.New(o))
		}
		set, err := p.buildSettings(uc, &b)
		if err != nil {
			b.discard()
			p.Close()
			return nil, err
		}
		u.settings.Store(set)
		p.upstreams = append(p.upstreams, u)
		if err := p.startPools(u); err != nil {
			b.discard()
			p.Close()
			return nil, err
		}
	}
	p.commitRenewals(&b)
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(newPoolCollector(p)); err != nil {
			p.Close()
			return nil, fmt.Errorf("register pool metrics: %w", err)
		}
	}
	return p, nil
}

func (p *Proxy) tuning() *tuning { return p.tune.Load() }

// wrapTransport is the pgtls hook that lets an event loop take an
// upstream's socket from under its TLS connection; nil without loops.
func (p *Proxy) wrapTransport() func(net.Conn) net.Conn {
	if p.relays == nil {
		return nil
	}
	return relay.Wrap
}

// startRelays starts n event loops for established sessions (0: one per
// GOMAXPROCS; negative: none).
func (p *Proxy) startRelays(n int) error {
	if n < 0 {
		return nil
	}
	if n == 0 {
		n = runtime.GOMAXPROCS(0)
	}
	loops, err := relay.New(n)
	switch {
	case errors.Is(err, relay.ErrUnsupported):
		return nil // sessions keep their goroutine pipes on this system
	case err != nil:
		p.cancel()
		return failure.Wrap(failure.ConfigInvalid, err, "start the event loops that relay sessions").
			WithEvidence("an epoll set or eventfd for %d event loops could not be created", n).
			WithFix("raise the process's open-file limit (ulimit -n), or set event_loops = -1 in [proxy] to relay with goroutines")
	}
	p.relays = loops
	return nil
}

// Start opens every listener and serves them in goroutines. It returns once
// all are listening; if one cannot be opened, none stays open and the error
// names the upstream and the address. The proxy's lifetime is not tied to
// ctx: end it with Shutdown or Close.
func (p *Proxy) Start(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("proxy: Start after Close")
	}
	if p.started {
		return errors.New("proxy: already started")
	}
	var opened []*listener
	fail := func(err error) error {
		for _, l := range opened {
			l.ln.Close()
		}
		return err
	}
	for _, u := range p.upstreams {
		if u.cfg.Listen != "" {
			var lc net.ListenConfig
			ln, err := lc.Listen(ctx, "tcp", u.cfg.Listen)
			if err != nil {
				return fail(failure.Wrap(failure.ConfigInvalid, err, "upstream %s: cannot listen on %s", u.name, u.cfg.Listen).
					WithFix("choose a free address for the upstream's listen setting, or stop the process that holds %s", u.cfg.Listen))
			}
			opened = append(opened, &listener{up: u, ln: ln, addr: ln.Addr().String(), public: !isLoopback(ln.Addr()), gw: -1})
		}
		for i, g := range u.cfg.Gateways {
			var lc net.ListenConfig
			ln, err := lc.Listen(ctx, "tcp", g.Listen)
			if err != nil {
				return fail(failure.Wrap(failure.ConfigInvalid, err, "upstream %s: gateway: cannot listen on %s", u.name, g.Listen).
					WithFix("choose a free address for the gateway's listen setting, or stop the process that holds %s", g.Listen))
			}
			opened = append(opened, &listener{up: u, ln: ln, addr: ln.Addr().String(), public: !isLoopback(ln.Addr()), gw: i})
		}
		if dir := u.cfg.UnixSocketDir; dir != "" {
			path := socketPath(dir, u.cfg.UnixSocketPort)
			ln, err := listenUnix(ctx, dir, path)
			if fe, ok := failure.As(err); ok {
				return fail(wrapUpstream(u.name, "unix_socket_dir", fe))
			}
			if err != nil {
				return fail(failure.Wrap(failure.ConfigInvalid, err, "upstream %s: cannot listen on %s", u.name, path).
					WithFix("make sure %s is a directory this user can create and write, and that no other server uses %s", dir, path))
			}
			opened = append(opened, &listener{up: u, ln: ln, addr: path, unix: true, gw: -1})
		}
	}
	p.listeners = opened
	p.started = true
	for _, l := range opened {
		attrs := []any{"upstream", l.up.name, "address", l.addr, "upstream_settings", l.up.settings.Load().conn.Redacted()}
		if l.gw >= 0 {
			attrs = append(attrs, "gateway_auth", string(l.up.cfg.Gateways[l.gw].Auth))
		}
		p.log.Info("listening", attrs...)
		p.loopWG.Add(1)
		go p.acceptLoop(l)
	}
	if p.probeIvl > 0 {
		p.loopWG.Add(1)
		go p.probeLoop()
	}
	p.loopWG.Add(1)
	go func() {
		defer p.loopWG.Done()
		p.refusals.run(p.ctx)
	}()
	return nil
}

// isLoopback reports whether a listener address is reachable only from
// this machine.
func isLoopback(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// listenUnix creates dir (0700) and listens on path, replacing a stale
// socket left by a process that died (but never a live one or a non-socket).
// An existing directory must belong to this user and be writable by no one
// else: whoever can write there can replace the socket and receive the
// clients' passwords.
func listenUnix(ctx context.Context, dir, path string) (net.Listener, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := CheckSocketDir(dir); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("another server is listening on %s", path)
		}
		_ = os.Remove(path)
	}
	var lc net.ListenConfig
	return lc.Listen(ctx, "unix", filepath.Clean(path))
}

func (p *Proxy) acceptLoop(l *listener) {
	defer p.loopWG.Done()
	backoff := 5 * time.Millisecond
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: report unready, retry.
			l.err.Store(&err)
			p.log.Error("accept failed", "upstream", l.up.name, "address", l.addr, "error", err.Error())
			time.Sleep(backoff)
			backoff = min(backoff*2, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		l.err.Store(nil)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetNoDelay(true)
		}
		s := &session{p: p, up: l.up, set: l.up.settings.Load(), ln: l, id: p.nextID.Add(1), start: time.Now(), raw: c}
		if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
			s.source = sourceKey(ta.IP)
		}
		if !l.unix {
			s.pending = true
			s.overPending = l.up.pending.Add(1) > int64(s.set.maxPending)
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			s.endPending()
			c.Close()
			return
		}
		p.sessions[s] = struct{}{}
		p.sessWG.Add(1)
		p.mu.Unlock()
		go s.run()
	}
}

// sourceKey is the client address that max_authenticating_per_source
// counts: the IPv4 address, or the IPv6 /64, since one host usually holds a
// whole /64 and could otherwise take a new "source" per connection.
func sourceKey(ip net.IP) string {
	if v4 := ip.To4(); v4 != nil {
		return v4.String()
	}
	return ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
}

// sessionDone releases what a session held.
func (p *Proxy) sessionDone(s *session) {
	s.endPending()
	s.endAuth()
	if s.counted {
		s.up.release()
		s.up.metrics.active.Dec()
	}
	p.unregisterCancel(s)
	p.mu.Lock()
	delete(p.sessions, s)
	p.mu.Unlock()
	p.sessWG.Done()
}

func (p *Proxy) probeLoop() {
	defer p.loopWG.Done()
	t := time.NewTicker(p.probeIvl)
	defer t.Stop()
	for {
		for _, u := range p.upstreams {
			if p.ctx.Err() != nil {
				return
			}
			p.probe(p.ctx, u)
		}
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Addrs returns the listener addresses per upstream name.
func (p *Proxy) Addrs() map[string][]net.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string][]net.Addr{}
	for _, l := range p.listeners {
		out[l.up.name] = append(out[l.up.name], l.ln.Addr())
	}
	return out
}

// Shutdown marks the proxy draining (Ready turns false first), keeps
// serving for DrainDelay (or until ctx ends) so that load balancers stop
// sending, then stops accepting, waits for the sessions to end up to
// DrainTimeout or ctx, and closes what is left.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.draining.Store(true)
	if d := p.tuning().DrainDelay; d > 0 {
		// Ready is false now; keep serving while load balancers notice.
		p.log.Info("not ready; listeners close after the drain delay", "drain_delay", d)
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		case <-p.ctx.Done():
			t.Stop()
		}
	}
	p.refusing.Store(true)
	p.log.Info("draining", "sessions", p.sessionCount(), "drain_timeout", p.tuning().DrainTimeout)
	p.closeListeners()
	ctx, cancel := context.WithTimeout(ctx, p.tuning().DrainTimeout)
	defer cancel()
	done := make(chan struct{})
	go func() {
		p.sessWG.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
		p.log.Info("drained")
	case <-ctx.Done():
		err = fmt.Errorf("proxy: %d sessions still open after the drain timeout; closing them: %w", p.sessionCount(), ctx.Err())
		p.log.Warn("drain timeout; closing the remaining sessions", "sessions", p.sessionCount())
	}
	if cerr := p.Close(); err == nil {
		err = cerr
	}
	return err
}

func (p *Proxy) sessionCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.sessions)
}

func (p *Proxy) closeListeners() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.listeners {
		l.ln.Close()
	}
}

// Close closes the listeners and every session at once, stops the
// certificate watchers and probes, and waits for the goroutines to end.
func (p *Proxy) Close() error {
	p.draining.Store(true)
	p.refusing.Store(true)
	p.mu.Lock()
	already := p.closed
	p.closed = true
	for _, l := range p.listeners {
		l.ln.Close()
	}
	if len(p.sessions) > 0 {
		p.forced.Store(true)
	}
	for s := range p.sessions {
		s.closeAll()
	}
	p.mu.Unlock()
	if already {
		return nil
	}
	p.cancel()
	p.loopWG.Wait()
	p.sessWG.Wait()
	p.kickWG.Wait()
	for _, u := range p.upstreams {
		u.closePools()
		if set := u.settings.Load(); set != nil {
			set.close()
		}
	}
	p.stopRenewals()
	if p.relays != nil {
		_ = p.relays.Close()
	}
	return nil
}

// Reload applies a SIGHUP. With cfgNew nil it re-reads every certificate
// source (a rejected file keeps the current material). Otherwise it builds
// and validates the new upstream settings and certificate sources, then
// swaps them in for new connections; established sessions are untouched.
// Listener changes (names, addresses, sockets) need a restart and are
// refused. On any error the old settings stay.
func (p *Proxy) Reload(cfgNew *Config) error {
	p.reloadMu.Lock()
	defer p.reloadMu.Unlock()
	err := p.reload(cfgNew)
	result := "success"
	if err != nil {
		result = "failure"
		p.log.Warn("reload rejected; keeping the current configuration", "class", failure.ClassOf(err), "error", err.Error())
	} else {
		p.log.Info("reloaded")
	}
	p.metrics.reloads.WithLabelValues("config", result).Inc()
	return err
}

func (p *Proxy) reload(cfgNew *Config) error {
	if cfgNew == nil {
		var errs []error
		for _, u := range p.upstreams {
			set := u.settings.Load()
			// Files are re-read; a renewing source is asked only when its
			// certificate has expired or its last renewal failed (an
			// operator's retry), never for a certificate that is fine.
			var srcs []certs.Source
			if fs, ok := set.clientCert.(*certs.FileSource); ok {
				srcs = append(srcs, fs)
			}
			if set.serverCert != nil {
				srcs = append(srcs, set.serverCert)
			}
			for _, g := range set.gateways {
				if g.certSrc != nil {
					srcs = append(srcs, g.certSrc)
				}
				if g.users != nil {
					// The scram listener's userlist is read again too; a
					// bad file keeps the users in force.
					if err := g.users.Reload(); err != nil {
						errs = append(errs, wrapUpstream(u.name, "auth_file reload", err))
					}
				}
			}
			for _, h := range set.renewals() {
				if st := h.src.Status(); st.LastReloadClass != failure.OK {
					srcs = append(srcs, h.src)
				}
			}
			for _, src := range srcs {
				if src != nil {
					if err := src.Reload(); err != nil {
						errs = append(errs, wrapUpstream(u.name, "certificate reload", err))
					}
				}
			}
		}
		return errors.Join(errs...)
	}
	cfg, err := cfgNew.withDefaults()
	if err != nil {
		return err
	}
	if len(cfg.Upstreams) != len(p.upstreams) {
		return configError("reload cannot add or remove upstreams (%d configured, %d running)", len(cfg.Upstreams), len(p.upstreams)).
			WithFix("restart the proxy to change the set of upstreams")
	}
	byName := map[string]UpstreamConfig{}
	for _, uc := range cfg.Upstreams {
		byName[uc.Name] = uc
	}
	built := make([]*upstreamSettings, len(p.upstreams))
	var b renewBuild
	discard := func() {
		for _, s := range built {
			if s != nil {
				s.close()
			}
		}
		b.discard()
	}
	for i, u := range p.upstreams {
		uc, ok := byName[u.name]
		if !ok {
			discard()
			return configError("reload cannot remove upstream %q", u.name).WithFix("restart the proxy to change the set of upstreams")
		}
		if uc.Listen != u.cfg.Listen || uc.UnixSocketDir != u.cfg.UnixSocketDir || uc.UnixSocketPort != u.cfg.UnixSocketPort || !sameGatewayListeners(uc.Gateways, u.cfg.Gateways) {
			discard()
			return configError("reload cannot change the listeners of upstream %q", u.name).
				WithEvidence("running: listen %q, unix_socket_dir %q; new: listen %q, unix_socket_dir %q", u.cfg.Listen, u.cfg.UnixSocketDir, uc.Listen, uc.UnixSocketDir).
				WithFix("restart the proxy to change listen addresses or sockets")
		}
		if !samePool(uc, u.cfg) {
			discard()
			return configError("reload cannot change the pool settings of upstream %q", u.name).
				WithFix("restart the proxy to change pool settings or pool modes")
		}
		set, err := p.buildSettings(uc, &b)
		if err != nil {
			discard()
			return err
		}
		built[i] = set
	}
	for i, u := range p.upstreams {
		old := u.settings.Swap(built[i])
		// Sessions hold the old snapshot; its sources only stop watching,
		// their current material stays usable.
		old.close()
		// Pooled server connections were opened with the old settings
		// (credentials, certificates, target): they retire after their
		// current transaction.
		u.retirePools()
	}
	p.commitRenewals(&b)
	p.tune.Store(tuningOf(cfg))
	return nil
}

// sameGatewayListeners reports whether a reload keeps the gateway
// listeners (addresses and order): they are opened at Start.
func sameGatewayListeners(a, b []GatewayConfig) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Listen != b[i].Listen {
			return false
		}
	}
	return true
}

// onCertReload counts reloads of one certificate source and keeps its
// expiry gauge current.
func (p *Proxy) onCertReload(upstream, kind string) func(certs.Status, error) {
	return func(st certs.Status, err error) {
		result := "success"
		if err != nil {
			result = "failure"
		} else {
			p.setExpiry(upstream, kind, st)
			p.certRotated(upstream, kind)
		}
		p.metrics.reloads.WithLabelValues("certificate", result).Inc()
	}
}

// certRotated retires the pooled server connections of an upstream whose
// client certificate changed: each closes after its current transaction
// (session), and new ones present the new certificate.
func (p *Proxy) certRotated(upstream, kind string) {
	if kind != certUpstreamClient {
		return
	}
	for _, u := range p.upstreams {
		if u.name == upstream {
			u.retirePools()
		}
	}
}

func (p *Proxy) setExpiry(upstream, kind string, st certs.Status) {
	if !st.NotAfter.IsZero() {
		p.metrics.certExpiry.WithLabelValues(upstream, kind).Set(float64(st.NotAfter.Unix()))
	}
}

// HealthStatus reports each upstream from its latest handshake or probe.
func (p *Proxy) HealthStatus() HealthStatus {
	p.mu.Lock()
	listen := map[*upstream][]string{}
	gwAddr := map[gwKey]string{}
	for _, l := range p.listeners {
		listen[l.up] = append(listen[l.up], l.addr)
		if l.gw >= 0 {
			gwAddr[gwKey{l.up, l.gw}] = l.addr
		}
	}
	p.mu.Unlock()
	hs := HealthStatus{Draining: p.draining.Load()}
	for _, u := range p.upstreams {
		hs.Upstreams = append(hs.Upstreams, u.status(listen[u]))
		set := u.settings.Load()
		for i, g := range set.gateways {
			gs := GatewayStatus{Upstream: u.name, Listen: g.cfg.Listen, Auth: string(g.cfg.Auth), Attestation: "none"}
			if a := gwAddr[gwKey{u, i}]; a != "" {
				gs.Listen = a
			}
			if na := g.notAfter(); !na.IsZero() {
				gs.CertificateNotAfter = &na
			}
			if g.ra != nil {
				gs.Attestation = g.cfg.RATLS.Kind
				gs.AttestationError = g.ra.lastErr.Load()
			}
			if g.renew != nil {
				gs.CertificateRenewal = g.renew.status()
			}
			hs.Gateways = append(hs.Gateways, gs)
		}
		hs.Pools = append(hs.Pools, u.poolStatus()...)
	}
	return hs
}

type gwKey struct {
	u *upstream
	i int
}

// AttestationCertificate returns the current RA-TLS certificate of the
// first gateway listener that has one (for /attestation), or nil when no
// listener uses RA-TLS.
func (p *Proxy) AttestationCertificate() func() *tls.Certificate {
	for _, u := range p.upstreams {
		for i, g := range u.cfg.Gateways {
			if g.RATLS == nil {
				continue
			}
			return func() *tls.Certificate {
				set := u.settings.Load()
				if i >= len(set.gateways) || set.gateways[i].ra == nil {
					return nil
				}
				return set.gateways[i].ra.cur.Load()
			}
		}
	}
	return nil
}

// Ready is false before Start, while draining, when a listener fails to
// accept, when an upstream is saturated (max_connections reached for TCP
// clients), or when certificate material in use has expired; the string
// says why. It never opens a database connection, and an upstream that is
// down does not make it false: the proxy still answers every client with
// the failure's class and fix, and a shared database outage must not empty
// a load balancer of every sidecar at once (/health/database/ssl reports
// the upstream).
func (p *Proxy) Ready() (bool, string) {
	if p.draining.Load() {
		return false, "draining"
	}
	p.mu.Lock()
	started, listeners := p.started, p.listeners
	p.mu.Unlock()
	if !started {
		return false, "not started"
	}
	for _, l := range listeners {
		if e := l.err.Load(); e != nil {
			return false, fmt.Sprintf("upstream %s: listener %s cannot accept: %v", l.up.name, l.addr, *e)
		}
	}
	for _, u := range p.upstreams {
		if full, limit := u.saturated(); full {
			return false, fmt.Sprintf("upstream %s: saturated: %d sessions open, max_connections reached for TCP clients", u.name, limit)
		}
	}
	now := time.Now()
	for _, u := range p.upstreams {
		set := u.settings.Load()
		fileClient, _ := set.clientCert.(*certs.FileSource)
		for _, c := range []struct {
			src  *certs.FileSource
			what string
		}{{fileClient, "upstream client certificate"}, {set.serverCert, "client TLS certificate"}} {
			if c.src == nil {
				continue
			}
			if na := c.src.Status().NotAfter; !na.IsZero() && now.After(na) {
				return false, fmt.Sprintf("upstream %s: %s expired at %s", u.name, c.what, na.UTC().Format(time.RFC3339))
			}
		}
		if h := set.clientRenew; h != nil {
			if exp, st := h.expired(now); exp {
				return false, renewalExpiredReason(u.name, "client certificate", h, st)
			}
		}
		for _, g := range set.gateways {
			if h := g.renew; h != nil {
				if exp, st := h.expired(now); exp {
					return false, renewalExpiredReason(u.name, "gateway "+g.cfg.Listen+" server certificate", h, st)
				}
				continue
			}
			if na := g.notAfter(); !na.IsZero() && now.After(na) {
				return false, fmt.Sprintf("upstream %s: gateway %s server certificate expired at %s", u.name, g.cfg.Listen, na.UTC().Format(time.RFC3339))
			}
		}
	}
	return true, "ready"
}

// registerCancel makes s reachable by its BackendKeyData.
func (p *Proxy) registerCancel(s *session) {
	if s.secret == nil {
		return
	}
	p.cancelMu.Lock()
	p.cancelKeys[s.pid] = append(p.cancelKeys[s.pid], s)
	p.cancelMu.Unlock()
}

func (p *Proxy) unregisterCancel(s *session) {
	if s.secret == nil {
		return
	}
	p.cancelMu.Lock()
	defer p.cancelMu.Unlock()
	list := p.cancelKeys[s.pid]
	for i, x := range list {
		if x == s {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(p.cancelKeys, s.pid)
	} else {
		p.cancelKeys[s.pid] = list
	}
}

// lookupCancel finds the session with this key, comparing the secret in
// constant time.
func (p *Proxy) lookupCancel(pid uint32, secret []byte) *session {
	p.cancelMu.Lock()
	defer p.cancelMu.Unlock()
	var found *session
	for _, s := range p.cancelKeys[pid] {
		if subtle.ConstantTimeCompare(s.secret, secret) == 1 {
			found = s
		}
	}
	return found
}

// forwardCancel delivers a client's CancelRequest to the upstream server of
// the session it names, over the same kind of channel as that session (TLS
// when the session is TLS), as PQcancelCreate does. Like PostgreSQL, it
// never answers the requester.
func (p *Proxy) forwardCancel(req *pgproto3.CancelRequest, from *session) {
	target := p.lookupCancel(req.ProcessID, req.SecretKey)
	if target == nil {
		p.metrics.cancels.WithLabelValues("unknown").Inc()
		p.refusals.Log(slog.LevelWarn, "cancel request for an unknown session", []any{"upstream", from.up.name},
			"client", from.raw.RemoteAddr().String())
		return
	}
	if target.pooled != nil {
		// A pooled session: the server connection running its query, if
		// any, and only while it runs it.
		ctx, cancel := context.WithTimeout(p.ctx, p.tuning().ConnectTimeout)
		defer cancel()
		sent, err := target.pooled.Cancel(ctx)
		if err != nil {
			p.metrics.cancels.WithLabelValues("failed").Inc()
			p.refusals.Log(slog.LevelWarn, "cancel request not delivered", []any{"upstream", target.up.name, "class", string(failure.ClassOf(err))},
				"id", target.id, "error", err.Error())
			return
		}
		if !sent {
			// Between transactions: nothing runs, as PostgreSQL ignores a
			// cancel of an idle session.
			p.metrics.cancels.WithLabelValues("idle").Inc()
			return
		}
		p.metrics.cancels.WithLabelValues("forwarded").Inc()
		p.log.Info("cancel request forwarded to the pooled session's server connection", "id", target.id, "upstream", target.up.name)
		return
	}
	if target.upSecret != nil {
		// A session the gateway authenticated: the client holds the
		// gateway's key, the upstream knows only its own.
		req = &pgproto3.CancelRequest{ProcessID: target.upPID, SecretKey: target.upSecret}
	}
	method := pgtls.MethodPlaintext
	if target.facts.Encrypted {
		method = pgtls.MethodSSL
	}
	ctx, cancel := context.WithTimeout(p.ctx, p.tuning().ConnectTimeout)
	defer cancel()
	conn, _, err := pgtls.DialAddress(ctx, target.set.conn, target.facts.Host, target.facts.Address, method, target.set.opts)
	if err == nil {
		msg, _ := req.Encode(nil)
		if dl, ok := ctx.Deadline(); ok {
			_ = conn.SetDeadline(dl)
		}
		if _, err = conn.Write(msg); err == nil {
			// The server closes once it has read the request; waiting for
			// that makes sure it arrived before the client is told "done".
			_, _ = io.Copy(io.Discard, conn)
		}
		conn.Close()
	}
	if err != nil {
		p.metrics.cancels.WithLabelValues("failed").Inc()
		p.refusals.Log(slog.LevelWarn, "cancel request not delivered", []any{"upstream", target.up.name, "class", string(failure.ClassOf(err))},
			"id", target.id, "error", err.Error())
		return
	}
	p.metrics.cancels.WithLabelValues("forwarded").Inc()
	p.log.Info("cancel request forwarded", "id", target.id, "upstream", target.up.name, "upstream_address", target.facts.Address)
}

// kickProbe probes u now, in the background, unless a probe of u is already
// under way: a failed dial or a dropped upstream should show in health at
// once, not at the next probe interval. After a dropped upstream (dropped
// true) a successful probe is repeated a few times over the next seconds:
// a server going down closes its sessions first and may still complete a
// TLS handshake for a moment.
func (p *Proxy) kickProbe(u *upstream, dropped bool) {
	if !u.probing.CompareAndSwap(false, true) {
		return
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		u.probing.Store(false)
		return
	}
	p.kickWG.Add(1)
	p.mu.Unlock()
	go func() {
		defer p.kickWG.Done()
		defer u.probing.Store(false)
		waits := []time.Duration{0}
		if dropped {
			waits = append(waits, 500*time.Millisecond, time.Second, 2*time.Second)
		}
		for _, w := range waits {
			if w > 0 {
				t := time.NewTimer(w)
				select {
				case <-p.ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
			}
			if !p.probe(p.ctx, u) {
				return
			}
		}
	}()
}

// CheckSocketDir refuses an existing Unix-socket directory that another
// user owns or that group or others may write (a peer could replace the
// socket and receive the clients' connections). A missing directory is an error wrapping
// fs.ErrNotExist (the proxy then creates it 0700).
func CheckSocketDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return failure.New(failure.ConfigInvalid, "%s is not a directory", dir).
			WithFix("point unix_socket_dir at a directory owned by the proxy's user, mode 0700")
	}
	owner, ok := keyfile.FileOwner(fi)
	if ok && owner != os.Getuid() {
		return failure.New(failure.ConfigInvalid, "unix socket directory %s belongs to another user", dir).
			WithEvidence("%s is owned by uid %d; the proxy runs as uid %d", dir, owner, os.Getuid()).
			WithFix("use a directory of the proxy's own (e.g. /run/pgtrust created by the service manager), or chown %d %s && chmod 0700 %s", os.Getuid(), dir, dir)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return failure.New(failure.ConfigInvalid, "unix socket directory %s is writable by group or others", dir).
			WithEvidence("%s has mode %04o: another user could replace the socket and receive the clients' connections", dir, perm).
			WithFix("chmod 0700 %s (or 0750 to let a group connect), or use a directory of the proxy's own", dir)
	}
	return nil
}
