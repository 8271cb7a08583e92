package certs

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/keyfile"
)

// Issued is what a CA returned: the certificate (leaf first, with the chain
// the CA sent), its private key, and the CA certificates the CA named
// (issuing_ca / ca_chain), which feed a trust store only when the caller opts in.
type Issued struct {
	Certificate tls.Certificate // Leaf set
	CAs         []*x509.Certificate
}

// Issuer obtains certificates from a CA. Renew is given the current
// certificate (nil for the first one); issuers that renew over mTLS use it,
// the others issue afresh.
//
// Errors should be *failure.Error with one of the renewal classes
// (RenewalAuth, RenewalUnreachable, RenewalIssueFailed); other errors are
// classified by the engine (network errors and timeouts as
// RenewalUnreachable, the rest as RenewalIssueFailed).
type Issuer interface {
	Issue(ctx context.Context, current *tls.Certificate) (*Issued, error)
	// Name identifies the CA in logs, metrics and errors ("vault", "step-ca").
	Name() string
}

// RenewOptions configure a RenewingSource. Zero values take the defaults.
type RenewOptions struct {
	Threshold     float64        // fraction of the lifetime after which to renew; default 0.7; (0,1)
	Jitter        float64        // fraction of the lifetime, renewal moves EARLIER by up to this; default 0.05
	BackoffBase   time.Duration  // default 1s
	BackoffMax    time.Duration  // default 5m
	TrustIssuedCA bool           // Roots() returns the CAs the issuer named (off by default)
	Roots         *x509.CertPool // otherwise Roots() returns this
	Logger        *slog.Logger
	Registerer    prometheus.Registerer
	OnRenew       func(Status, error)
	Now           func() time.Time
	Rand          func() float64                       // [0,1), for jitter and backoff; default math/rand/v2
	After         func(time.Duration) <-chan time.Time // default time.After (tests drive it)
	// Name identifies this source among several that share an issuer and a
	// registry ("upstream main client certificate"); it labels the metrics
	// (source) and log lines. Default: the issuer's name.
	Name string
	// Initial, when set, is material obtained earlier (a certificate and key
	// written to files by a previous run). It is validated like issued
	// material and used instead of a first issue while it is valid, so a
	// restart does not ask the CA for a certificate it does not need; one
	// that fails validation or has expired is ignored and a new one issued.
	Initial *Issued
}

// issueTimeout bounds one call to Issuer.Issue, so that a CA that accepts
// the connection and never answers cannot stall renewal.
const issueTimeout = time.Minute

// issuedMaterial is what the callbacks read: swapped as a whole.
type issuedMaterial struct {
	cert *tls.Certificate
	cas  *x509.CertPool // the CAs the issuer named; nil when it named none
}

// RenewingSource is a Source whose certificate comes from an Issuer and is
// renewed by one engine (timing, jitter, backoff, validation before swap).
//
// Timing: a certificate valid from NotBefore for lifetime L is renewed at
// NotBefore + Threshold×L − U×Jitter×L (U uniform in [0,1)), so jitter only
// moves renewal earlier; one already past that instant is renewed at once.
// A failed renewal is retried after a capped exponential backoff with full
// jitter, never past the current certificate's expiry; the current
// certificate stays in use until it expires, after which the callbacks
// return a *failure.Error of class RenewalExpired.
type RenewingSource struct {
	iss Issuer
	o   RenewOptions
	log *slog.Logger
	met *renewMetrics
	cur atomic.Pointer[issuedMaterial]

	renewMu sync.Mutex // serialises renewals (held across Issue)

	mu       sync.Mutex // guards the fields below
	status   Status
	next     time.Time
	failures int // consecutive failed renewals
	// dueOnArrival counts consecutive renewals whose new certificate was
	// already past its renewal instant (a CA clock far behind, a TTL capped
	// below the threshold, a CA that returns the same certificate).
	dueOnArrival int
	lastErr      error // of the last failed renewal, nil after a success

	changed chan struct{} // wakes Run when Reload rescheduled
}

var _ Source = (*RenewingSource)(nil)

// NewRenewingSource validates the options and obtains the first
// certificate synchronously; it fails when that first issue fails. Call
// Run to keep the certificate renewed.
func NewRenewingSource(ctx context.Context, iss Issuer, o RenewOptions) (*RenewingSource, error) {
	if iss == nil {
		return nil, failure.New(failure.ConfigInvalid, "a renewing certificate source needs an issuer")
	}
	if o.Threshold == 0 {
		o.Threshold = 0.7
	}
	if o.Jitter == 0 {
		o.Jitter = 0.05
	}
	if !(o.Threshold > 0 && o.Threshold < 1) {
		return nil, failure.New(failure.ConfigInvalid, "certificate renewal threshold must be between 0 and 1").
			WithEvidence("threshold %v for %s", o.Threshold, iss.Name()).
			WithFix("set the renewal threshold to a fraction of the lifetime, such as 0.7")
	}
	if !(o.Jitter > 0 && o.Jitter < o.Threshold) {
		return nil, failure.New(failure.ConfigInvalid, "certificate renewal jitter must be between 0 and the threshold").
			WithEvidence("jitter %v, threshold %v for %s", o.Jitter, o.Threshold, iss.Name()).
			WithFix("set the jitter to a small fraction of the lifetime, such as 0.05")
	}
	if o.BackoffBase <= 0 {
		o.BackoffBase = time.Second
	}
	if o.BackoffMax <= 0 {
		o.BackoffMax = 5 * time.Minute
	}
	if o.BackoffMax < o.BackoffBase {
		o.BackoffMax = o.BackoffBase
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Rand == nil {
		o.Rand = rand.Float64
	}
	if o.After == nil {
		o.After = time.After
	}
	if o.Name == "" {
		o.Name = iss.Name()
	}
	s := &RenewingSource{iss: iss, o: o, log: o.Logger, changed: make(chan struct{}, 1)}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	met, err := newRenewMetrics(o.Registerer, o.Name, iss.Name())
	if err != nil {
		return nil, err
	}
	s.met = met
	if o.Initial != nil {
		if m, err := s.validate(o.Initial); err == nil {
			s.adopt(m)
			return s, nil
		} else {
			s.log.Info("existing certificate not reused; issuing a new one", "source", s.o.Name, "issuer", iss.Name(), "reason", err.Error())
		}
	}
	if err := s.renew(ctx, true); err != nil {
		return nil, err
	}
	return s, nil
}

// Run renews the certificate at the computed instants until ctx is done.
func (s *RenewingSource) Run(ctx context.Context) {
	for {
		d := s.NextRenewal().Sub(s.o.Now())
		if d < 0 {
			d = 0
		}
		select {
		case <-ctx.Done():
			return
		case <-s.changed:
			continue // Reload renewed: recompute
		case <-s.o.After(d):
		}
		if ctx.Err() != nil {
			return
		}
		if s.NextRenewal().After(s.o.Now()) {
			continue // a Reload renewed meanwhile and moved the schedule
		}
		_ = s.renew(ctx, false) // recorded, logged and rescheduled by renew
	}
}

// NextRenewal is when the next renewal attempt is scheduled.
func (s *RenewingSource) NextRenewal() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.next
}

// Reload implements Source: renews now (SIGHUP, `pgtrust certs renew`).
// On failure the current certificate stays in use and the failure is
// counted and backed off like a scheduled one.
func (s *RenewingSource) Reload() error {
	err := s.renew(context.Background(), false)
	select {
	case s.changed <- struct{}{}:
	default:
	}
	return err
}

// GetClientCertificate implements Source. Once the certificate has
// expired it returns a RenewalExpired error rather than a certificate the
// server would refuse.
func (s *RenewingSource) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return s.current()
}

// GetCertificate implements Source, like GetClientCertificate.
func (s *RenewingSource) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.current()
}

func (s *RenewingSource) current() (*tls.Certificate, error) {
	m := s.cur.Load()
	if !s.o.Now().Before(m.cert.Leaf.NotAfter) {
		return nil, s.expiredErr(m.cert.Leaf)
	}
	return m.cert, nil
}

// Roots implements Source: the CAs the issuer named when TrustIssuedCA is
// set, otherwise RenewOptions.Roots.
func (s *RenewingSource) Roots() *x509.CertPool {
	if s.o.TrustIssuedCA {
		return s.cur.Load().cas
	}
	return s.o.Roots
}

// Status implements Source. Reloads counts successful renewals after the
// first issue, Failures the failed ones. Once the certificate has expired,
// LastReloadClass is RenewalExpired and LastReloadErr says which class the
// last renewal failed with.
func (s *RenewingSource) Status() Status {
	m := s.cur.Load()
	s.mu.Lock()
	st := s.status
	s.mu.Unlock()
	if !s.o.Now().Before(m.cert.Leaf.NotAfter) {
		err := s.expiredErr(m.cert.Leaf)
		st.LastReloadErr, st.LastReloadClass = err, RenewalExpired
	}
	return st
}

// expiredErr is the refusal once leaf has expired.
func (s *RenewingSource) expiredErr(leaf *x509.Certificate) *failure.Error {
	s.mu.Lock()
	last, at, n := s.lastErr, s.status.LastReload, s.failures
	s.mu.Unlock()
	name := s.iss.Name()
	e := failure.New(RenewalExpired, "the certificate from %s expired and could not be renewed", name)
	if last == nil {
		// No failure recorded: the renewal loop is not running or has not
		// attempted yet.
		return e.WithEvidence("certificate %q (serial %s) expired at %s; no renewal attempt has failed (is the renewal loop running?)",
			leaf.Subject.String(), SerialHex(leaf), leaf.NotAfter.UTC().Format(time.RFC3339)).
			WithFix("run the renewal loop (RenewingSource.Run), or renew now with pgtrust certs renew / SIGHUP")
	}
	c := failure.ClassOf(last)
	return e.WithEvidence("certificate %q (serial %s) expired at %s; %d renewal attempt(s) in a row failed, the last at %s with %s: %s",
		leaf.Subject.String(), SerialHex(leaf), leaf.NotAfter.UTC().Format(time.RFC3339), n, at.UTC().Format(time.RFC3339), c, last.Error()).
		WithFix("%s", renewFix(c, name))
}

// adopt installs Initial material as the current certificate and
// schedules its renewal; it is not a renewal, so no counter moves.
func (s *RenewingSource) adopt(m *issuedMaterial) {
	now := s.o.Now()
	leaf := m.cert.Leaf
	s.cur.Store(m)
	s.mu.Lock()
	s.status = Status{NotAfter: leaf.NotAfter, Subject: leaf.Subject.String(), Serial: SerialHex(leaf), LastReload: now, LastReloadClass: failure.OK}
	s.next = s.renewAt(leaf, now)
	next := s.next
	s.mu.Unlock()
	s.met.notAfter.WithLabelValues(s.o.Name, s.iss.Name()).Set(float64(leaf.NotAfter.Unix()))
	s.met.next.WithLabelValues(s.o.Name, s.iss.Name()).Set(float64(next.Unix()))
	s.log.Info("existing certificate reused", "source", s.o.Name, "issuer", s.iss.Name(), "subject", leaf.Subject.String(),
		"serial", SerialHex(leaf), "not_after", leaf.NotAfter, "next_renewal", next)
}

// renew obtains, validates and swaps in a new certificate, records the
// attempt and schedules the next one. first is the synchronous first issue.
func (s *RenewingSource) renew(ctx context.Context, first bool) error {
	s.renewMu.Lock()
	defer s.renewMu.Unlock()
	var current *tls.Certificate
	if m := s.cur.Load(); m != nil {
		current = m.cert
	}
	ictx, cancel := context.WithTimeout(ctx, issueTimeout)
	iss, err := s.iss.Issue(ictx, current)
	cancel()
	var m *issuedMaterial
	if err != nil {
		err = s.classify(err)
	} else {
		m, err = s.validate(iss)
	}
	now := s.o.Now()
	if err != nil && first {
		return err
	}
	if err != nil && ctx.Err() != nil {
		// Shutting down mid-issue is not a renewal failure.
		return err
	}

	s.mu.Lock()
	if err != nil {
		s.failures++
		s.lastErr = err
		s.status.Failures++
		s.status.LastReload, s.status.LastReloadErr, s.status.LastReloadClass = now, err, failure.ClassOf(err)
		s.next = now.Add(s.backoff(s.failures, now, current))
	} else {
		s.cur.Store(m)
		reloads, failures := s.status.Reloads, s.status.Failures
		if !first {
			reloads++
		}
		leaf := m.cert.Leaf
		s.status = Status{NotAfter: leaf.NotAfter, Subject: leaf.Subject.String(), Serial: SerialHex(leaf),
			LastReload: now, LastReloadClass: failure.OK, Reloads: reloads, Failures: failures}
		s.failures, s.lastErr = 0, nil
		s.next = s.renewAt(leaf, now)
		if s.next.After(now) {
			s.dueOnArrival = 0
		} else {
			s.dueOnArrival++
			s.next = now.Add(s.arrivalDelay(s.dueOnArrival, now, leaf))
		}
	}
	st, next, n, due := s.status, s.next, s.failures, s.dueOnArrival
	s.mu.Unlock()

	name := s.iss.Name()
	if err != nil {
		s.met.failures.WithLabelValues(s.o.Name, name, string(failure.ClassOf(err))).Inc()
		attrs := []any{"source", s.o.Name, "issuer", name, "class", failure.ClassOf(err), "error", err.Error(), "attempt", n, "next_renewal", next}
		if fe, ok := failure.As(err); ok {
			if fe.Evidence != "" {
				attrs = append(attrs, "evidence", fe.Evidence)
			}
			attrs = append(attrs, "fix", fe.Fix)
		}
		if current != nil {
			attrs = append(attrs, "current_not_after", current.Leaf.NotAfter)
		}
		s.log.Warn("certificate renewal failed; keeping the current certificate", attrs...)
	} else {
		s.met.lastSuccess.WithLabelValues(s.o.Name, name).Set(float64(now.Unix()))
		s.met.notAfter.WithLabelValues(s.o.Name, name).Set(float64(st.NotAfter.Unix()))
		msg := "certificate renewed"
		if first {
			msg = "certificate issued"
		} else {
			s.met.renewals.WithLabelValues(s.o.Name, name).Inc()
		}
		if due > 1 {
			s.log.Warn("the CA keeps issuing certificates that are already due for renewal; slowing down", "source", s.o.Name, "issuer", name,
				"in_a_row", due, "not_before", m.cert.Leaf.NotBefore, "not_after", st.NotAfter, "next_renewal", next,
				"fix", "check the CA's clock and that its maximum lifetime (Vault role max_ttl, step-ca maxTLSCertDuration) leaves room for the renewal threshold")
		}
		s.log.Info(msg, "source", s.o.Name, "issuer", name, "subject", st.Subject, "serial", st.Serial, "not_after", st.NotAfter, "next_renewal", next)
	}
	s.met.next.WithLabelValues(s.o.Name, name).Set(float64(next.Unix()))
	if s.o.OnRenew != nil {
		s.o.OnRenew(st, err)
	}
	return err
}

// renewAt is when leaf is due: NotBefore + Threshold×L − U×Jitter×L, not
// before now and not after NotAfter.
func (s *RenewingSource) renewAt(leaf *x509.Certificate, now time.Time) time.Time {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	at := leaf.NotBefore.Add(time.Duration(s.o.Threshold*float64(life)) - time.Duration(s.o.Rand()*s.o.Jitter*float64(life)))
	if at.After(leaf.NotAfter) {
		at = leaf.NotAfter
	}
	if at.Before(now) {
		at = now
	}
	return at
}

// backoff is the delay before retry number n (n ≥ 1): uniform in
// [BackoffBase, min(BackoffMax, BackoffBase×2^(n−1))]. While the current
// certificate is still valid the retry comes before it expires: a delay
// that would reach expiry is cut to half the time left (at least
// BackoffBase, or the time left when that is shorter), so the last
// attempts land before, or at, expiry rather than after it.
func (s *RenewingSource) backoff(n int, now time.Time, current *tls.Certificate) time.Duration {
	base, max := s.o.BackoffBase, s.o.BackoffMax
	ceiling := base
	for i := 1; i < n && ceiling < max; i++ {
		ceiling *= 2
	}
	if ceiling > max {
		ceiling = max
	}
	d := base + time.Duration(s.o.Rand()*float64(ceiling-base))
	if current != nil {
		if left := current.Leaf.NotAfter.Sub(now); left > 0 && d >= left {
			d = left / 2
			if d < base {
				d = min(base, left)
			}
		}
	}
	return d
}

// arrivalDelay is the wait before renewing a certificate that was already
// due when it arrived, the k-th such in a row: at once the first time (one
// issued backdated is simply renewed), then BackoffBase doubling up to
// BackoffMax, never reaching NotAfter — so a CA that keeps answering with
// certificates already due is not asked in a tight loop.
func (s *RenewingSource) arrivalDelay(k int, now time.Time, leaf *x509.Certificate) time.Duration {
	if k <= 1 {
		return 0
	}
	d := s.o.BackoffBase
	for i := 2; i < k && d < s.o.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, s.o.BackoffMax)
	if left := leaf.NotAfter.Sub(now); left > 0 && d >= left {
		d = left / 2
	}
	return d
}

// classify gives an issuer's error a renewal class, so that Status, the
// metric labels and RenewalExpired's evidence speak one vocabulary. An
// error of another class (a TLS or network class from the CA's client)
// keeps its evidence and fix under the renewal class it amounts to.
func (s *RenewingSource) classify(err error) error {
	name := s.iss.Name()
	fe, ok := failure.As(err)
	if ok && isRenewClass(fe.Class) {
		if fe.Fix == "" {
			c := *fe // the issuer's error is not ours to change
			return c.WithFix("%s", renewFix(c.Class, name))
		}
		return err
	}
	var c failure.Class
	var ne net.Error
	switch {
	case ok && (fe.Class == failure.AuthFailed || fe.Class == failure.ClientCertRejected || fe.Class == failure.ClientCertRequired):
		c = RenewalAuth
	case ok && (fe.Class == failure.Timeout || fe.Class == failure.ConnectionRefused || fe.Class == failure.DNSFailure):
		c = RenewalUnreachable
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne):
		c = RenewalUnreachable
	default:
		c = RenewalIssueFailed
	}
	msg := "%s did not issue a certificate"
	if c == RenewalUnreachable {
		msg = "could not reach %s to renew the certificate"
	} else if c == RenewalAuth {
		msg = "%s refused the credentials used to renew the certificate"
	}
	e := failure.Wrap(c, err, msg, name).WithFix("%s", renewFix(c, name))
	if ok {
		e = e.WithEvidence("%s (%s)", fe.Evidence, fe.Class)
		if fe.Fix != "" {
			e = e.WithFix("%s", fe.Fix)
		}
	}
	return e
}

// validate checks issued material before it may be swapped in, as
// FileSource does for files: the leaf parses, the key matches it, it is
// valid now, and it chains to the CAs the issuer named when it named any.
func (s *RenewingSource) validate(iss *Issued) (*issuedMaterial, error) {
	name := s.iss.Name()
	invalid := func(cause error, format string, args ...any) error {
		e := failure.Wrap(RenewalInvalid, cause, format, args...).WithFix("%s", renewFix(RenewalInvalid, name))
		if fe, ok := failure.As(cause); ok && cause != nil {
			e = e.WithEvidence("%s (%s)", fe.Evidence, fe.Class)
		}
		return e
	}
	if iss == nil || len(iss.Certificate.Certificate) == 0 {
		return nil, invalid(nil, "%s returned no certificate", name)
	}
	cert := iss.Certificate // a copy: the issuer's value is not ours to fill in
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, invalid(err, "%s returned a certificate that does not parse", name)
	}
	cert.Leaf = leaf
	key, ok := cert.PrivateKey.(crypto.Signer)
	if !ok || !keyfile.KeyMatches(leaf, key) {
		return nil, failure.New(RenewalInvalid, "%s returned a private key that does not match its certificate", name).
			WithEvidence("certificate %q (serial %s)", leaf.Subject.String(), SerialHex(leaf)).
			WithFix("%s", renewFix(RenewalInvalid, name))
	}
	where := name + " certificate"
	now := s.o.Now()
	if err := checkValidity(leaf, now, where); err != nil {
		return nil, invalid(err, "%s returned a certificate that is not valid now", name)
	}
	m := &issuedMaterial{cert: &cert}
	if len(iss.CAs) > 0 {
		m.cas = x509.NewCertPool()
		for _, c := range iss.CAs {
			m.cas.AddCert(c)
		}
		if err := validateLeaf(leaf, cert.Certificate[1:], m.cas, now, where, name+" CA"); err != nil {
			return nil, invalid(err, "%s returned a certificate that does not chain to the CA it named", name)
		}
	}
	return m, nil
}

// renewMetrics are the engine's series, labelled by source (RenewOptions.Name,
// unique per process) and issuer.
type renewMetrics struct {
	next, lastSuccess, notAfter *prometheus.GaugeVec
	failures, renewals          *prometheus.CounterVec
}

// newRenewMetrics registers the series on reg (when given). Several
// sources share one registry: a collector already registered is reused.
func newRenewMetrics(reg prometheus.Registerer, source, issuer string) (*renewMetrics, error) {
	m := &renewMetrics{
		next: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgtrust_cert_renewal_next_timestamp_seconds", Help: "When the next certificate renewal attempt is scheduled, as a Unix timestamp, per source.",
		}, []string{"source", "issuer"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgtrust_cert_renewal_last_success_timestamp_seconds", Help: "When a certificate was last issued or renewed, as a Unix timestamp, per source.",
		}, []string{"source", "issuer"}),
		notAfter: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgtrust_cert_not_after_timestamp_seconds", Help: "NotAfter of the renewed certificate in use, as a Unix timestamp, per source.",
		}, []string{"source", "issuer"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgtrust_cert_renewal_failures_total", Help: "Failed certificate renewals, by source, issuer and failure class.",
		}, []string{"source", "issuer", "class"}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgtrust_cert_renewals_total", Help: "Successful certificate renewals (after the first issue), per source.",
		}, []string{"source", "issuer"}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	m.next, err = register(reg, m.next)
	if err == nil {
		m.lastSuccess, err = register(reg, m.lastSuccess)
	}
	if err == nil {
		m.notAfter, err = register(reg, m.notAfter)
	}
	if err == nil {
		m.failures, err = register(reg, m.failures)
	}
	if err == nil {
		m.renewals, err = register(reg, m.renewals)
	}
	if err != nil {
		return nil, failure.Wrap(failure.ConfigInvalid, err, "could not register the certificate renewal metrics for %s", source)
	}
	// Present from the start, so a dashboard sees zero rather than nothing.
	for _, c := range renewClasses[:4] {
		m.failures.WithLabelValues(source, issuer, string(c))
	}
	m.renewals.WithLabelValues(source, issuer)
	return m, nil
}

// register registers c on reg, or returns the collector of the same
// description registered before.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}
