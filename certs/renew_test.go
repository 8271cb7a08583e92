package certs

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/secretscan"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

// fakeClock drives the engine's time: Now reads it, and every After call
// is handed to the test, which advances the clock and fires it.
type fakeClock struct {
	mu   sync.Mutex
	t    time.Time
	reqs chan afterReq
}

type afterReq struct {
	d time.Duration
	c chan time.Time
}

func newFakeClock() *fakeClock {
	// Whole seconds, as certificates have; after the CAs' NotBefore.
	return &fakeClock{t: time.Now().Truncate(time.Second), reqs: make(chan afterReq, 16)}
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeClock) advance(d time.Duration) {
	f.mu.Lock()
	f.t = f.t.Add(d)
	f.mu.Unlock()
}

func (f *fakeClock) After(d time.Duration) <-chan time.Time {
	c := make(chan time.Time, 1)
	f.reqs <- afterReq{d, c}
	return c
}

// next returns the loop's next wait; the deadline only bounds a broken test.
func (f *fakeClock) next(t *testing.T) afterReq {
	t.Helper()
	select {
	case r := <-f.reqs:
		return r
	case <-time.After(15 * time.Second):
		t.Fatal("the renewal loop did not schedule a wait")
		return afterReq{}
	}
}

// fire advances the clock by the requested wait and ends it.
func (f *fakeClock) fire(r afterReq) {
	f.advance(r.d)
	r.c <- f.Now()
}

// issueMode makes the test issuer misbehave.
type issueMode int

const (
	issueOK            issueMode = iota
	issueMismatch                // the key of another certificate
	issueExpired                 // a certificate already expired
	issueWrongCA                 // signed by another CA than the one it names
	issueBackdated               // valid since 80% of its lifetime ago
	issueNoCertificate           // an empty answer
)

// testIssuer is an Issuer backed by a real local CA: it signs real
// certificates with the requested lifetime, valid from the clock's now.
// The real CAs (Vault, step-ca) are tested through their own sources.
type testIssuer struct {
	t        *testing.T
	ca       *testpki.CA
	other    *testpki.CA // the wrong CA
	now      func() time.Time
	lifetime time.Duration
	server   bool
	noCAs    bool

	mu       sync.Mutex
	errs     []error // returned in order before issuing again
	modes    []issueMode
	calls    int
	currents []*tls.Certificate
}

func newTestIssuer(t *testing.T, now func() time.Time, lifetime time.Duration) *testIssuer {
	// The CAs outlive every lifetime the tests ask for.
	v := testpki.WithValidity(time.Now().Add(-time.Hour), time.Now().AddDate(10, 0, 0))
	return &testIssuer{t: t, ca: testpki.NewRootCA(t, "renew test CA", v), other: testpki.NewRootCA(t, "other CA", v), now: now, lifetime: lifetime}
}

func (i *testIssuer) Name() string { return "test-ca" }

func (i *testIssuer) fail(errs ...error) {
	i.mu.Lock()
	i.errs = append(i.errs, errs...)
	i.mu.Unlock()
}

func (i *testIssuer) misbehave(m ...issueMode) {
	i.mu.Lock()
	i.modes = append(i.modes, m...)
	i.mu.Unlock()
}

func (i *testIssuer) Issue(_ context.Context, current *tls.Certificate) (*Issued, error) {
	i.mu.Lock()
	i.calls++
	i.currents = append(i.currents, current)
	if len(i.errs) > 0 {
		err := i.errs[0]
		i.errs = i.errs[1:]
		i.mu.Unlock()
		return nil, err
	}
	mode := issueOK
	if len(i.modes) > 0 {
		mode, i.modes = i.modes[0], i.modes[1:]
	}
	i.mu.Unlock()

	now := i.now()
	nb, na := now, now.Add(i.lifetime)
	signer := i.ca
	switch mode {
	case issueExpired:
		nb, na = now.Add(-2*i.lifetime), now.Add(-i.lifetime)
	case issueWrongCA:
		signer = i.other
	case issueBackdated:
		nb, na = now.Add(-i.lifetime*8/10), now.Add(i.lifetime*2/10)
	case issueNoCertificate:
		return &Issued{}, nil
	}
	mk := func(ca *testpki.CA) *testpki.Leaf {
		if i.server {
			return ca.Server(i.t, testpki.WithValidity(nb, na))
		}
		return ca.Client(i.t, "alice", testpki.WithValidity(nb, na))
	}
	leaf := mk(signer)
	cert := leaf.TLSCertificate()
	if mode == issueMismatch {
		cert.PrivateKey = mk(signer).Key
	}
	iss := &Issued{Certificate: cert}
	if !i.noCAs {
		iss.CAs = []*x509.Certificate{i.ca.Cert}
	}
	return iss, nil
}

func (i *testIssuer) callCount() int {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.calls
}

// startRenewing makes a source on the fake clock and runs its loop.
func startRenewing(t *testing.T, iss *testIssuer, clk *fakeClock, o RenewOptions) *RenewingSource {
	t.Helper()
	o.Now, o.After = clk.Now, clk.After
	s, err := NewRenewingSource(context.Background(), iss, o)
	if err != nil {
		t.Fatalf("NewRenewingSource: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

func constRand(u float64) func() float64 { return func() float64 { return u } }

func leafOf(t *testing.T, s *RenewingSource) *x509.Certificate {
	t.Helper()
	c, err := s.GetClientCertificate(&tls.CertificateRequestInfo{})
	if err != nil {
		t.Fatalf("GetClientCertificate: %v", err)
	}
	return c.Leaf
}

// TestRenewTiming: across five lifetimes and the whole jitter range,
// renewal is scheduled at NotBefore + 0.7L − U×0.05L, inside
// [NotBefore+0.65L, NotBefore+0.7L], and happens there.
func TestRenewTiming(t *testing.T) {
	lifetimes := []time.Duration{2 * time.Minute, 10 * time.Minute, time.Hour, 24 * time.Hour, 90 * 24 * time.Hour}
	for _, life := range lifetimes {
		for _, u := range []float64{0, 0.5, 0.999} {
			t.Run(fmt.Sprintf("%v/U=%v", life, u), func(t *testing.T) {
				clk := newFakeClock()
				iss := newTestIssuer(t, clk.Now, life)
				s := startRenewing(t, iss, clk, RenewOptions{Rand: constRand(u)})
				for round := 0; round < 3; round++ {
					leaf := leafOf(t, s)
					r := clk.next(t)
					at := clk.Now().Add(r.d)
					want := leaf.NotBefore.Add(time.Duration(0.7*float64(life)) - time.Duration(u*0.05*float64(life)))
					if !at.Equal(want) {
						t.Fatalf("round %d: renewal at %v after NotBefore, want %v", round, at.Sub(leaf.NotBefore), want.Sub(leaf.NotBefore))
					}
					if lo, hi := leaf.NotBefore.Add(time.Duration(0.65*float64(life))), leaf.NotBefore.Add(time.Duration(0.7*float64(life))); at.Before(lo) || at.After(hi) {
						t.Fatalf("round %d: renewal at %v outside [%v, %v]", round, at, lo, hi)
					}
					if !s.NextRenewal().Equal(at) {
						t.Fatalf("NextRenewal %v, loop waits until %v", s.NextRenewal(), at)
					}
					calls := iss.callCount()
					clk.fire(r)
					// The next wait is scheduled after the renewal finished.
					r2 := clk.next(t)
					if iss.callCount() != calls+1 {
						t.Fatalf("round %d: issuer called %d times, want %d", round, iss.callCount(), calls+1)
					}
					if nl := leafOf(t, s); nl.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
						t.Fatalf("round %d: certificate not swapped", round)
					}
					if st := s.Status(); st.Reloads != uint64(round+1) || st.LastReloadClass != failure.OK {
						t.Fatalf("round %d: status %+v", round, st)
					}
					clk.reqs <- r2 // put it back for the next round
				}
				// The issuer was handed the current certificate on renewals.
				if iss.currents[0] != nil || iss.currents[1] == nil {
					t.Fatalf("issuer got current %v on first issue and %v on renewal", iss.currents[0], iss.currents[1])
				}
			})
		}
	}
}

// TestRenewWorkedExample: the docs' example, a 10-minute certificate at
// threshold 0.7 and jitter 0.05 renews between 6m30s and 7m after NotBefore.
func TestRenewWorkedExample(t *testing.T) {
	for u, want := range map[float64]time.Duration{0: 7 * time.Minute, 0.5: 6*time.Minute + 45*time.Second, 1: 6*time.Minute + 30*time.Second} {
		clk := newFakeClock()
		iss := newTestIssuer(t, clk.Now, 10*time.Minute)
		s, err := NewRenewingSource(context.Background(), iss, RenewOptions{Threshold: 0.7, Jitter: 0.05, Rand: constRand(u), Now: clk.Now, After: clk.After})
		if err != nil {
			t.Fatal(err)
		}
		if got := s.NextRenewal().Sub(leafOf(t, s).NotBefore); got != want {
			t.Errorf("U=%v: renewal %v after NotBefore, want %v", u, got, want)
		}
	}
}

// TestRenewPastThreshold: a certificate already past its threshold is
// renewed at once.
func TestRenewPastThreshold(t *testing.T) {
	clk := newFakeClock()
	iss := newTestIssuer(t, clk.Now, time.Hour)
	iss.misbehave(issueBackdated)
	s := startRenewing(t, iss, clk, RenewOptions{Rand: constRand(0)})
	if !s.NextRenewal().Equal(clk.Now()) {
		t.Fatalf("next renewal %v, want now %v", s.NextRenewal(), clk.Now())
	}
	if r := clk.next(t); r.d != 0 {
		t.Fatalf("loop waits %v, want 0", r.d)
	} else {
		clk.fire(r)
	}
	clk.next(t)
	if iss.callCount() != 2 || s.Status().Reloads != 1 {
		t.Fatalf("calls %d, status %+v", iss.callCount(), s.Status())
	}
}

type netErr struct{}

func (netErr) Error() string   { return "dial tcp 127.0.0.1:8200: i/o timeout" }
func (netErr) Timeout() bool   { return true }
func (netErr) Temporary() bool { return true }

var _ net.Error = netErr{}

// TestRenewBackoff: failures of each class back off along the capped
// sequence, keep the current certificate and are reported in Status and
// the metrics; a success resets the backoff.
func TestRenewBackoff(t *testing.T) {
	clk := newFakeClock()
	iss := newTestIssuer(t, clk.Now, 24*time.Hour)
	reg := prometheus.NewRegistry()
	s := startRenewing(t, iss, clk, RenewOptions{Rand: constRand(0.5), BackoffBase: time.Second, BackoffMax: time.Minute, Registerer: reg})
	first := leafOf(t, s)

	errs := []struct {
		err  error
		want failure.Class
	}{
		{failure.New(RenewalIssueFailed, "vault: 500 internal error"), RenewalIssueFailed},
		{failure.New(RenewalAuth, "vault: 403 permission denied"), RenewalAuth},
		{failure.New(RenewalUnreachable, "vault: connection refused"), RenewalUnreachable},
		{netErr{}, RenewalUnreachable},
		{context.DeadlineExceeded, RenewalUnreachable},
		{errors.New("unexpected answer"), RenewalIssueFailed},
		{failure.New(failure.AuthFailed, "token expired"), RenewalAuth},
		{failure.New(failure.Timeout, "timed out"), RenewalUnreachable},
	}
	for _, e := range errs {
		iss.fail(e.err)
	}
	clk.fire(clk.next(t)) // the scheduled renewal: the first failure
	// ceilings 1,2,4,8,16,32,60,60 s; U=0.5 puts each delay half-way from 1s.
	ceilings := []float64{1, 2, 4, 8, 16, 32, 60, 60}
	for n, e := range errs {
		r := clk.next(t)
		want := time.Second + time.Duration(0.5*(ceilings[n]-1)*float64(time.Second))
		if r.d != want {
			t.Fatalf("failure %d: backoff %v, want %v", n+1, r.d, want)
		}
		st := s.Status()
		if st.LastReloadClass != e.want || failure.ClassOf(st.LastReloadErr) != e.want || st.Failures != uint64(n+1) {
			t.Fatalf("failure %d: status class %s (%v), failures %d; want %s", n+1, st.LastReloadClass, st.LastReloadErr, st.Failures, e.want)
		}
		if fe, ok := failure.As(st.LastReloadErr); !ok || fe.Fix == "" {
			t.Fatalf("failure %d: %#v has no fix", n+1, st.LastReloadErr)
		}
		if l := leafOf(t, s); l.SerialNumber.Cmp(first.SerialNumber) != 0 {
			t.Fatalf("failure %d: the current certificate was replaced", n+1)
		}
		clk.fire(r)
	}
	// The ninth attempt succeeded: back to the threshold schedule.
	r := clk.next(t)
	leaf := leafOf(t, s)
	if leaf.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatal("not renewed after the CA recovered")
	}
	if want := leaf.NotBefore.Add(time.Duration(0.7*float64(24*time.Hour)) - time.Duration(0.5*0.05*float64(24*time.Hour))); !clk.Now().Add(r.d).Equal(want) {
		t.Fatalf("after recovery renewal at %v, want %v", clk.Now().Add(r.d), want)
	}
	if st := s.Status(); st.LastReloadClass != failure.OK || st.LastReloadErr != nil || st.Reloads != 1 || st.Failures != 8 {
		t.Fatalf("status after recovery %+v", st)
	}
	for c, n := range map[failure.Class]float64{RenewalIssueFailed: 2, RenewalAuth: 2, RenewalUnreachable: 4, RenewalInvalid: 0} {
		if got := metricValue(t, reg, "pgtrust_cert_renewal_failures_total", "issuer", "test-ca", "class", string(c)); got != n {
			t.Errorf("failures_total{class=%s} = %v, want %v", c, got, n)
		}
	}
	if got := metricValue(t, reg, "pgtrust_cert_renewal_next_timestamp_seconds", "issuer", "test-ca"); got != float64(s.NextRenewal().Unix()) {
		t.Errorf("next renewal gauge %v, want %v", got, s.NextRenewal().Unix())
	}
	if got := metricValue(t, reg, "pgtrust_cert_not_after_timestamp_seconds", "issuer", "test-ca"); got != float64(leaf.NotAfter.Unix()) {
		t.Errorf("not_after gauge %v, want %v", got, leaf.NotAfter.Unix())
	}
	if got := metricValue(t, reg, "pgtrust_cert_renewal_last_success_timestamp_seconds", "issuer", "test-ca"); got != float64(clk.Now().Unix()) {
		t.Errorf("last success gauge %v, want %v", got, clk.Now().Unix())
	}
	// The first issue is not a renewal; the recovery is the one renewal.
	if got := metricValue(t, reg, "pgtrust_cert_renewals_total", "source", "test-ca", "issuer", "test-ca"); got != 1 {
		t.Errorf("renewals_total %v, want 1", got)
	}
}

// metricValue gathers reg and returns the value of the series of name
// with the given label pairs; the test fails when there is none.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue series
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no series %s%v", name, labels)
	return 0
}

// TestRenewFailingUntilExpiry: retries never land after the expiry of the
// current certificate; once it expires the callbacks refuse with
// renewal_expired naming the CA, the last class and a fix, Status says so,
// and a later success restores service.
func TestRenewFailingUntilExpiry(t *testing.T) {
	clk := newFakeClock()
	iss := newTestIssuer(t, clk.Now, 10*time.Minute)
	s := startRenewing(t, iss, clk, RenewOptions{Rand: constRand(0.999), BackoffBase: time.Second, BackoffMax: 5 * time.Minute})
	leaf := leafOf(t, s)
	for range 100 {
		iss.fail(failure.New(RenewalAuth, "vault: 403 permission denied"))
	}
	clk.fire(clk.next(t)) // the threshold renewal fails
	var waits []time.Duration
	for clk.Now().Before(leaf.NotAfter) {
		r := clk.next(t)
		waits = append(waits, r.d)
		if at := clk.Now().Add(r.d); at.After(leaf.NotAfter) {
			t.Fatalf("retry scheduled at %v, after the certificate's expiry %v (waits %v)", at, leaf.NotAfter, waits)
		}
		if _, err := s.GetClientCertificate(nil); err != nil {
			t.Fatalf("before expiry the current certificate must stay in use: %v", err)
		}
		clk.fire(r)
	}
	// The exponential part, then halving towards expiry.
	if len(waits) < 9 || waits[0] != time.Second || waits[6] <= waits[5] || waits[len(waits)-1] > time.Second {
		t.Fatalf("unexpected retry sequence %v", waits)
	}
	if len(waits) > 20 {
		t.Fatalf("%d retries before expiry: too many for a 3-minute window (%v)", len(waits), waits)
	}
	r := clk.next(t) // a retry is still scheduled after expiry
	if r.d < time.Second || r.d > 5*time.Minute {
		t.Fatalf("retry after expiry in %v", r.d)
	}
	for _, get := range []func() error{
		func() error { _, err := s.GetClientCertificate(nil); return err },
		func() error { _, err := s.GetCertificate(nil); return err },
	} {
		err := get()
		fe, ok := failure.As(err)
		if !ok || fe.Class != RenewalExpired {
			t.Fatalf("after expiry: %v, want class %s", err, RenewalExpired)
		}
		if !strings.Contains(fe.Message, "test-ca") || !strings.Contains(fe.Evidence, string(RenewalAuth)) || !strings.Contains(fe.Fix, "credentials") {
			t.Fatalf("renewal_expired does not name the CA, the last class and the fix: %s", failure.Text(err))
		}
	}
	st := s.Status()
	if st.LastReloadClass != RenewalExpired || !strings.Contains(st.LastReloadErr.Error(), "expired") || !st.NotAfter.Equal(leaf.NotAfter) {
		t.Fatalf("status after expiry %+v", st)
	}
	// The CA comes back.
	iss.mu.Lock()
	iss.errs = nil
	iss.mu.Unlock()
	clk.fire(r)
	clk.next(t)
	if l := leafOf(t, s); l.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Fatal("not renewed after the CA came back")
	}
	if st := s.Status(); st.LastReloadClass != failure.OK {
		t.Fatalf("status after recovery %+v", st)
	}
}

// TestRenewInvalidNotSwapped: material that fails validation is refused
// with renewal_invalid, the current certificate stays, and it is retried
// with backoff.
func TestRenewInvalidNotSwapped(t *testing.T) {
	for _, c := range []struct {
		name string
		mode issueMode
		want string
	}{
		{"mismatched key", issueMismatch, "does not match"},
		{"expired", issueExpired, "not valid now"},
		{"wrong CA", issueWrongCA, "does not chain"},
		{"no certificate", issueNoCertificate, "no certificate"},
	} {
		t.Run(c.name, func(t *testing.T) {
			clk := newFakeClock()
			iss := newTestIssuer(t, clk.Now, time.Hour)
			s, err := NewRenewingSource(context.Background(), iss, RenewOptions{Now: clk.Now, After: clk.After, Rand: constRand(0), BackoffBase: 2 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			before := leafOf(t, s)
			iss.misbehave(c.mode)
			err = s.Reload()
			if failure.ClassOf(err) != RenewalInvalid || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Reload: %v (class %s), want %s mentioning %q", err, failure.ClassOf(err), RenewalInvalid, c.want)
			}
			if fe, _ := failure.As(err); fe.Fix == "" {
				t.Fatalf("no fix: %s", failure.Text(err))
			}
			if l := leafOf(t, s); l.SerialNumber.Cmp(before.SerialNumber) != 0 {
				t.Fatal("invalid material was swapped in")
			}
			if got := s.NextRenewal().Sub(clk.Now()); got != 2*time.Second {
				t.Fatalf("retry in %v, want the backoff base 2s", got)
			}
			if st := s.Status(); st.LastReloadClass != RenewalInvalid || st.Failures != 1 {
				t.Fatalf("status %+v", st)
			}
			if err := s.Reload(); err != nil {
				t.Fatalf("valid material refused: %v", err)
			}
		})
	}
	// The first issue is validated too, and its failure is returned.
	clk := newFakeClock()
	iss := newTestIssuer(t, clk.Now, time.Hour)
	iss.misbehave(issueMismatch)
	if _, err := NewRenewingSource(context.Background(), iss, RenewOptions{Now: clk.Now}); failure.ClassOf(err) != RenewalInvalid {
		t.Fatalf("first issue with a mismatched key: %v", err)
	}
	// Without named CAs the chain is not checked (there is nothing to check it against).
	iss = newTestIssuer(t, clk.Now, time.Hour)
	iss.noCAs = true
	iss.misbehave(issueWrongCA)
	if _, err := NewRenewingSource(context.Background(), iss, RenewOptions{Now: clk.Now}); err != nil {
		t.Fatalf("no CAs named: %v", err)
	}
}

// TestRenewTrustIssuedCA: Roots returns the CA the issuer named only when
// asked to, RenewOptions.Roots otherwise.
func TestRenewTrustIssuedCA(t *testing.T) {
	clk := newFakeClock()
	iss := newTestIssuer(t, clk.Now, time.Hour)
	verifies := func(p *x509.CertPool, leaf *x509.Certificate) bool {
		if p == nil {
			return false
		}
		_, err := leaf.Verify(x509.VerifyOptions{Roots: p, CurrentTime: clk.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		return err == nil
	}
	on, err := NewRenewingSource(context.Background(), iss, RenewOptions{Now: clk.Now, TrustIssuedCA: true})
	if err != nil {
		t.Fatal(err)
	}
	if !verifies(on.Roots(), leafOf(t, on)) {
		t.Fatal("TrustIssuedCA: Roots does not hold the issued CA")
	}
	off, err := NewRenewingSource(context.Background(), iss, RenewOptions{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	if off.Roots() != nil {
		t.Fatal("without TrustIssuedCA or Roots, Roots must be nil")
	}
	own := testpki.NewRootCA(t, "operator CA").Pool()
	off2, err := NewRenewingSource(context.Background(), iss, RenewOptions{Now: clk.Now, Roots: own})
	if err != nil {
		t.Fatal(err)
	}
	if off2.Roots() != own || verifies(off2.Roots(), leafOf(t, off2)) {
		t.Fatal("without TrustIssuedCA, Roots must be the configured pool, not the issued CA")
	}
}

// TestRenewOptionsRefused: out-of-range options are config errors.
func TestRenewOptionsRefused(t *testing.T) {
	iss := newTestIssuer(t, time.Now, time.Hour)
	for _, o := range []RenewOptions{{Threshold: 1}, {Threshold: -0.1}, {Threshold: 0.5, Jitter: 0.6}, {Jitter: -1}} {
		if _, err := NewRenewingSource(context.Background(), iss, o); failure.ClassOf(err) != failure.ConfigInvalid {
			t.Errorf("%+v: %v, want config_invalid", o, err)
		}
	}
	if _, err := NewRenewingSource(context.Background(), nil, RenewOptions{}); failure.ClassOf(err) != failure.ConfigInvalid {
		t.Errorf("nil issuer: %v", err)
	}
	iss.fail(failure.New(RenewalAuth, "403"))
	if _, err := NewRenewingSource(context.Background(), iss, RenewOptions{}); failure.ClassOf(err) != RenewalAuth {
		t.Errorf("failed first issue: %v", err)
	}
}

// TestRenewHandshakeAfterSwap: a real crypto/tls server presents the new
// certificate to new connections after a swap, while a connection opened
// before keeps working.
func TestRenewHandshakeAfterSwap(t *testing.T) {
	iss := newTestIssuer(t, time.Now, time.Hour)
	iss.server = true
	s, err := NewRenewingSource(context.Background(), iss, RenewOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{GetCertificate: s.GetCertificate, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	dial := func() (*tls.Conn, string) {
		t.Helper()
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", ln.Addr().String(), &tls.Config{RootCAs: iss.ca.Pool(), ServerName: "localhost"})
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		return c, SerialHex(c.ConnectionState().PeerCertificates[0])
	}
	echo := func(c *tls.Conn, msg string) {
		t.Helper()
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo %q: %q, %v", msg, buf, err)
		}
	}
	old, oldSerial := dial()
	defer old.Close()
	echo(old, "before")
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	nc, newSerial := dial()
	defer nc.Close()
	if newSerial == oldSerial || newSerial != s.Status().Serial {
		t.Fatalf("new connection got serial %s, old %s, current %s", newSerial, oldSerial, s.Status().Serial)
	}
	echo(nc, "new")
	echo(old, "after the swap")
}

// TestRenewConcurrent: callbacks, Status and Roots during swaps (run
// with -race).
func TestRenewConcurrent(t *testing.T) {
	iss := newTestIssuer(t, time.Now, time.Hour)
	s, err := NewRenewingSource(context.Background(), iss, RenewOptions{TrustIssuedCA: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				c, err := s.GetClientCertificate(nil)
				if err != nil || c.Leaf == nil {
					t.Errorf("GetClientCertificate during swaps: %v", err)
					return
				}
				if _, err := s.GetCertificate(nil); err != nil {
					t.Errorf("GetCertificate: %v", err)
					return
				}
				_ = s.Status()
				_ = s.Roots()
				_ = s.NextRenewal()
			}
		}()
	}
	runCtx, stop := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { defer close(ran); s.Run(runCtx) }()
	for i := range 30 {
		if i%5 == 0 {
			iss.fail(errors.New("transient"))
		}
		_ = s.Reload()
	}
	cancel()
	wg.Wait()
	stop()
	<-ran
	if st := s.Status(); st.Reloads != 24 || st.Failures != 6 {
		t.Fatalf("status %+v, want 24 renewals and 6 failures", st)
	}
}

// TestRenewLogsNoKeyMaterial: one log line per renewal with the issuer,
// subject, serial, not_after and next renewal, and no private key in the
// logs or errors.
func TestRenewLogsNoKeyMaterial(t *testing.T) {
	var buf bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(&lockedWriter{w: &buf, mu: &mu}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	clk := newFakeClock()
	iss := newTestIssuer(t, clk.Now, time.Hour)
	s, err := NewRenewingSource(context.Background(), iss, RenewOptions{Logger: log, Now: clk.Now, After: clk.After})
	if err != nil {
		t.Fatal(err)
	}
	var errs []string
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	iss.misbehave(issueMismatch)
	errs = append(errs, failure.Text(s.Reload()))
	iss.fail(failure.New(RenewalAuth, "403"))
	errs = append(errs, failure.Text(s.Reload()))
	clk.advance(2 * time.Hour)
	_, err = s.GetClientCertificate(nil)
	errs = append(errs, failure.Text(err))

	mu.Lock()
	out := buf.String()
	mu.Unlock()
	secretscan.Record(t, "renewal log", out)
	secretscan.Record(t, "renewal errors", strings.Join(errs, "\n"))
	for _, text := range append(errs, out) {
		if hits := secretscan.Line(text); len(hits) > 0 {
			t.Fatalf("key material in %q: %v", text, hits)
		}
	}
	if n := strings.Count(out, "msg=\"certificate renewed\""); n != 1 {
		t.Fatalf("%d renewal lines, want 1:\n%s", n, out)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "certificate renewed") {
			for _, k := range []string{"issuer=test-ca", `subject="CN=alice"`, "serial=", "not_after=", "next_renewal="} {
				if !strings.Contains(line, k) {
					t.Fatalf("renewal line lacks %s: %s", k, line)
				}
			}
		}
	}
	if strings.Count(out, "certificate renewal failed") != 2 {
		t.Fatalf("want two failure lines:\n%s", out)
	}
	// The key PEM is what the check would catch.
	if len(secretscan.Line(string(iss.ca.KeyPEM))) == 0 {
		t.Fatal("secretscan.Line does not recognise a PEM private key")
	}
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestRenewMetricsShared: sources with different issuers share a registry.
func TestRenewMetricsShared(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := newTestIssuer(t, time.Now, time.Hour)
	b := &namedIssuer{a, "other-ca"}
	for _, iss := range []Issuer{a, b} {
		if _, err := NewRenewingSource(context.Background(), iss, RenewOptions{Registerer: reg}); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"test-ca", "other-ca"} {
		if v := metricValue(t, reg, "pgtrust_cert_not_after_timestamp_seconds", "issuer", name); v == 0 {
			t.Fatalf("no not_after for %s", name)
		}
	}
}

type namedIssuer struct {
	*testIssuer
	name string
}

func (n *namedIssuer) Name() string { return n.name }

// TestRenewMetricsPerSource: two sources of one issuer in one registry
// (two upstreams renewing from the same Vault) keep separate series.
func TestRenewMetricsPerSource(t *testing.T) {
	reg := prometheus.NewRegistry()
	iss := newTestIssuer(t, time.Now, time.Hour)
	var srcs []*RenewingSource
	for _, name := range []string{"upstream a client certificate", "upstream b client certificate"} {
		s, err := NewRenewingSource(context.Background(), iss, RenewOptions{Registerer: reg, Name: name})
		if err != nil {
			t.Fatal(err)
		}
		srcs = append(srcs, s)
	}
	if err := srcs[1].Reload(); err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"upstream a client certificate", "upstream b client certificate"} {
		if v := metricValue(t, reg, "pgtrust_cert_not_after_timestamp_seconds", "source", name, "issuer", "test-ca"); v != float64(srcs[i].Status().NotAfter.Unix()) {
			t.Errorf("%s: not_after %v, want %v", name, v, srcs[i].Status().NotAfter.Unix())
		}
		if v := metricValue(t, reg, "pgtrust_cert_renewals_total", "source", name); v != float64(i) {
			t.Errorf("%s: renewals_total %v, want %d", name, v, i)
		}
	}
}

// TestRenewInitialMaterial: material from an earlier run is reused while it
// is valid (no call to the CA, renewal scheduled from its own lifetime), and
// ignored for a fresh issue when it is expired or its key does not match.
func TestRenewInitialMaterial(t *testing.T) {
	clk := newFakeClock()
	iss := newTestIssuer(t, clk.Now, 10*time.Minute)
	earlier, err := iss.Issue(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	prev, _ := x509.ParseCertificate(earlier.Certificate.Certificate[0])
	clk.advance(2 * time.Minute)
	calls := iss.callCount()
	s, err := NewRenewingSource(context.Background(), iss, RenewOptions{Initial: earlier, Now: clk.Now, After: clk.After, Rand: constRand(0)})
	if err != nil {
		t.Fatal(err)
	}
	if iss.callCount() != calls {
		t.Fatal("valid initial material was not reused: the CA was asked")
	}
	if l := leafOf(t, s); l.SerialNumber.Cmp(prev.SerialNumber) != 0 {
		t.Fatalf("serial %s, want the initial %s", SerialHex(l), SerialHex(prev))
	}
	if want := prev.NotBefore.Add(7 * time.Minute); !s.NextRenewal().Equal(want) {
		t.Fatalf("next renewal %v, want %v (70%% of the initial certificate's lifetime)", s.NextRenewal(), want)
	}
	if st := s.Status(); st.Reloads != 0 || st.Serial != SerialHex(prev) {
		t.Fatalf("status %+v", st)
	}

	for name, mode := range map[string]issueMode{"expired": issueExpired, "key mismatch": issueMismatch} {
		iss.misbehave(mode)
		bad, err := iss.Issue(context.Background(), nil)
		if err != nil {
			t.Fatal(err)
		}
		calls := iss.callCount()
		s, err := NewRenewingSource(context.Background(), iss, RenewOptions{Initial: bad, Now: clk.Now, After: clk.After})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if iss.callCount() != calls+1 {
			t.Fatalf("%s initial material: no fresh issue", name)
		}
		if l := leafOf(t, s); SerialHex(l) == SerialHex(bad.Certificate.Leaf) {
			t.Fatalf("%s initial material was used", name)
		}
	}
}

// TestRenewClasses pins the renewal classes' strings (metric labels and
// /readyz use them) and checks renewClasses lists exactly the declared
// renewal_ constants, none colliding with package failure's vocabulary.
func TestRenewClasses(t *testing.T) {
	want := []string{"renewal_issue_failed", "renewal_unreachable", "renewal_auth", "renewal_invalid", "renewal_expired"}
	got := RenewClasses()
	if len(got) != len(want) {
		t.Fatalf("RenewClasses %v, want %v", got, want)
	}
	general := map[failure.Class]bool{}
	for _, c := range failure.Classes {
		general[c] = true
	}
	for i, c := range got {
		if string(c) != want[i] || general[c] {
			t.Errorf("class %d: %q, want %q distinct from package failure's", i, c, want[i])
		}
	}
	f, err := parser.ParseFile(token.NewFileSet(), "errors_renew.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var declared []string
	ast.Inspect(f, func(n ast.Node) bool {
		if vs, ok := n.(*ast.ValueSpec); ok {
			for _, v := range vs.Values {
				if lit, ok := v.(*ast.BasicLit); ok && strings.HasPrefix(lit.Value, `"renewal_`) {
					s, _ := strconv.Unquote(lit.Value)
					declared = append(declared, s)
				}
			}
		}
		return true
	})
	if strings.Join(declared, ",") != strings.Join(want, ",") {
		t.Fatalf("declared %v, listed %v: keep renewClasses and this test in step", declared, want)
	}
}

// TestRenewDueOnArrivalSlowsDown: a CA that keeps answering with
// certificates already past their renewal point (its clock far behind, a
// lifetime capped below the threshold) is not asked in a tight loop: the
// first such certificate is renewed at once, the next ones after a doubling
// delay from BackoffBase, never reaching NotAfter.
func TestRenewDueOnArrivalSlowsDown(t *testing.T) {
	clk := newFakeClock()
	iss := newTestIssuer(t, clk.Now, time.Hour)
	for range 8 {
		iss.misbehave(issueBackdated) // valid since 80% of its hour: due at once
	}
	s := startRenewing(t, iss, clk, RenewOptions{Rand: constRand(0), BackoffBase: time.Second, BackoffMax: 8 * time.Second})
	want := []time.Duration{0, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second, 8 * time.Second, 8 * time.Second}
	for i, w := range want {
		r := clk.next(t)
		if r.d != w {
			t.Fatalf("due-on-arrival %d: the loop waits %v, want %v", i+1, r.d, w)
		}
		clk.fire(r)
	}
	// The ninth certificate is a normal one: back to the threshold schedule.
	r := clk.next(t)
	leaf := leafOf(t, s)
	if want := leaf.NotBefore.Add(42 * time.Minute); !clk.Now().Add(r.d).Equal(want) {
		t.Fatalf("after a normal certificate the renewal is at %v, want %v", clk.Now().Add(r.d), want)
	}
	if n := iss.callCount(); n != 9 {
		t.Fatalf("%d issue calls, want 9", n)
	}
}
