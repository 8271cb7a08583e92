package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/failure"
)

// Renewal is a certificate issued by a CA (Vault PKI, step-ca) and kept
// fresh by a certs.RenewingSource: an upstream's client certificate
// (UpstreamConfig.ClientRenewal) or a gateway listener's server
// certificate (GatewayConfig.Renewal).
type Renewal struct {
	// Key identifies the configuration the certificate comes from (a hash
	// of the table). A reload whose Key is unchanged keeps the running
	// source and its certificate: a SIGHUP asks the CA for nothing.
	Key string
	// NewIssuer builds the issuer, logging to log; it must not contact the CA.
	NewIssuer func(log *slog.Logger) (certs.Issuer, error)
	// Options: Threshold, Jitter and TrustIssuedCA. The proxy sets Name
	// (unique per process), Logger, Registerer and OnRenew.
	Options certs.RenewOptions
}

// RenewalStatus is a renewing source in /health/database/ssl.
type RenewalStatus struct {
	Source      string          `json:"source"` // RenewOptions.Name, as the metrics' source label
	Issuer      string          `json:"issuer"` // "vault", "step-ca"
	Subject     string          `json:"subject,omitempty"`
	Serial      string          `json:"serial,omitempty"`
	NotAfter    time.Time       `json:"not_after,omitzero"`
	NextRenewal time.Time       `json:"next_renewal,omitzero"`
	LastSuccess time.Time       `json:"last_success,omitzero"`
	Renewals    uint64          `json:"renewals"`
	Failures    uint64          `json:"failures"`
	LastClass   failure.Class   `json:"last_class"`
	LastError   *failure.Report `json:"last_error,omitempty"`
}

// renewHandle is one running RenewingSource. The proxy owns it (not a
// settings snapshot), so that a reload can hand it to the next snapshot.
type renewHandle struct {
	name        string
	key         string
	issuer      string
	src         *certs.RenewingSource
	cancel      context.CancelFunc
	done        chan struct{}
	lastSuccess atomic.Int64 // UnixNano of the last issue or renewal
}

func (h *renewHandle) stop() {
	h.cancel()
	<-h.done
}

// status renders the handle for health.
func (h *renewHandle) status() *RenewalStatus {
	st := h.src.Status()
	rs := &RenewalStatus{Source: h.name, Issuer: h.issuer, Subject: st.Subject, Serial: st.Serial, NotAfter: st.NotAfter,
		NextRenewal: h.src.NextRenewal(), Renewals: st.Reloads, Failures: st.Failures, LastClass: st.LastReloadClass}
	if n := h.lastSuccess.Load(); n != 0 {
		rs.LastSuccess = time.Unix(0, n)
	}
	if st.LastReloadErr != nil {
		rs.LastError = failure.ReportOf(st.LastReloadErr)
	}
	return rs
}

// expired reports whether the certificate in use has expired (renewal
// failed until NotAfter), with the class of the last renewal failure.
func (h *renewHandle) expired(now time.Time) (bool, certs.Status) {
	st := h.src.Status()
	return st.LastReloadClass == certs.RenewalExpired || (!st.NotAfter.IsZero() && !now.Before(st.NotAfter)), st
}

// renewBuild collects the sources one settings build created, to be
// committed with the settings or stopped with them.
type renewBuild struct {
	created []*renewHandle
}

func (b *renewBuild) discard() {
	for _, h := range b.created {
		h.stop()
	}
	b.created = nil
}

// renewSource returns the running source called name when its table is
// unchanged, else starts a new one (which obtains its first certificate
// now and is renewed by Run until it is replaced or the proxy closes).
func (p *Proxy) renewSource(b *renewBuild, name string, r *Renewal, log *slog.Logger, expiryUpstream, expiryKind string) (*renewHandle, error) {
	p.renewMu.Lock()
	cur := p.renewing[name]
	p.renewMu.Unlock()
	if cur != nil && cur.key == r.Key {
		return cur, nil
	}
	if r.NewIssuer == nil {
		return nil, configError("%s: no certificate issuer configured", name)
	}
	iss, err := r.NewIssuer(log)
	if err != nil {
		return nil, err
	}
	h := &renewHandle{name: name, key: r.Key, issuer: iss.Name(), done: make(chan struct{})}
	o := r.Options
	o.Name, o.Logger, o.Registerer = name, log, p.reg
	o.OnRenew = func(st certs.Status, err error) {
		if err == nil {
			h.lastSuccess.Store(st.LastReload.UnixNano())
			p.setExpiry(expiryUpstream, expiryKind, st)
			p.certRotated(expiryUpstream, expiryKind)
		}
	}
	src, err := certs.NewRenewingSource(p.ctx, iss, o)
	if err != nil {
		return nil, err
	}
	h.src = src
	if h.lastSuccess.Load() == 0 {
		// Initial material was reused: no OnRenew call.
		st := src.Status()
		h.lastSuccess.Store(st.LastReload.UnixNano())
		p.setExpiry(expiryUpstream, expiryKind, st)
	}
	ctx, cancel := context.WithCancel(p.ctx)
	h.cancel = cancel
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); src.Run(ctx) }()
	if tr, ok := iss.(interface{ RunTokenRenewal(context.Context) }); ok {
		// A Vault token may live shorter than the gap between two
		// issues; kept alive here, it is stopped with the source.
		wg.Add(1)
		go func() { defer wg.Done(); tr.RunTokenRenewal(ctx) }()
	}
	go func() {
		wg.Wait()
		close(h.done)
	}()
	b.created = append(b.created, h)
	return h, nil
}

// commitRenewals makes the sources of the settings now in use the
// running ones and stops those no snapshot will start from again
// (replaced by a changed table, or no longer configured). Sessions that
// hold an old snapshot keep its certificate until they end.
func (p *Proxy) commitRenewals(b *renewBuild) {
	inUse := map[string]bool{}
	for _, u := range p.upstreams {
		set := u.settings.Load()
		if set == nil {
			continue
		}
		for _, h := range set.renewals() {
			inUse[h.name] = true
		}
	}
	var stop []*renewHandle
	p.renewMu.Lock()
	for _, h := range b.created {
		if old := p.renewing[h.name]; old != nil && old != h {
			stop = append(stop, old)
		}
		p.renewing[h.name] = h
	}
	for name, h := range p.renewing {
		if !inUse[name] {
			stop = append(stop, h)
			delete(p.renewing, name)
		}
	}
	p.renewMu.Unlock()
	b.created = nil
	for _, h := range stop {
		h.stop()
	}
}

// stopRenewals stops every running source (Close).
func (p *Proxy) stopRenewals() {
	p.renewMu.Lock()
	hs := p.renewing
	p.renewing = map[string]*renewHandle{}
	p.renewMu.Unlock()
	for _, h := range hs {
		h.stop()
	}
}

// renewals are the renewing sources a snapshot uses.
func (s *upstreamSettings) renewals() []*renewHandle {
	var out []*renewHandle
	if s.clientRenew != nil {
		out = append(out, s.clientRenew)
	}
	for _, g := range s.gateways {
		if g != nil && g.renew != nil {
			out = append(out, g.renew)
		}
	}
	return out
}

// clientRenewalName and gatewayRenewalName are RenewOptions.Name: the
// metrics' source label, unique per process.
func clientRenewalName(upstream string) string {
	return fmt.Sprintf("upstream %s client certificate", upstream)
}

func gatewayRenewalName(upstream, listen string) string {
	return fmt.Sprintf("upstream %s gateway %s server certificate", upstream, listen)
}

// renewalExpiredReason is Ready's text for an expired renewing source.
func renewalExpiredReason(upstream, what string, h *renewHandle, st certs.Status) string {
	last := ""
	if fe, ok := failure.As(st.LastReloadErr); ok && fe.Evidence != "" {
		last = "; " + fe.Evidence
	}
	return fmt.Sprintf("upstream %s: %s from %s expired at %s and could not be renewed (%s)%s",
		upstream, what, h.issuer, st.NotAfter.UTC().Format(time.RFC3339), certs.RenewalExpired, last)
}
