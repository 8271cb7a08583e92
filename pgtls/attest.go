package pgtls

import (
	"context"
	"crypto/x509"
	"errors"
	"time"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/ratls"
)

// DefaultAttestationTimeout bounds the TLS handshake plus the attestation
// of the server's certificate when Options.Attestation is set and
// Options.AttestationTimeout is zero (seed 003: "upstream TLS handshake
// timed out after 5000ms").
const DefaultAttestationTimeout = 5000 * time.Millisecond

// errAttestationDeadline is the cause of the attestation deadline, so that
// its expiry is told apart from connect_timeout's.
var errAttestationDeadline = errors.New("attestation deadline")

func (o *Options) attestation() *ratls.Policy {
	if o == nil {
		return nil
	}
	return o.Attestation
}

func (o *Options) attestationTimeout() time.Duration {
	if o == nil || o.AttestationTimeout <= 0 {
		return DefaultAttestationTimeout
	}
	return o.AttestationTimeout
}

// checkAttestation refuses, before anything is dialled, settings under
// which an attestation policy could be bypassed: it needs TLS on every
// attempt, so no sslmode that may fall back to (or start with) plaintext,
// and no Unix-socket host, where libpq ignores sslmode.
func checkAttestation(cfg *connstring.Config, opts *Options) error {
	p := opts.attestation()
	if p == nil {
		return nil
	}
	switch cfg.SSLMode {
	case connstring.SSLDisable, connstring.SSLAllow, connstring.SSLPrefer:
		return failure.New(failure.ConfigInvalid, "an attestation policy needs sslmode=require or stronger").
			WithEvidence("sslmode=%s may connect without TLS (disable never uses it, allow starts in plaintext, prefer falls back to it); a plaintext connection carries no certificate to attest", cfg.SSLMode).
			WithFix("use sslmode=require (attestation only), verify-ca (chain + attestation) or verify-full (chain + host name + attestation)")
	}
	for _, h := range cfg.Hosts {
		if h.IsUnixSocket() && h.HostAddr == "" {
			return failure.New(failure.ConfigInvalid, "an attestation policy cannot apply to a Unix-domain socket").
				WithEvidence("host %q is a Unix-domain socket, where sslmode is ignored and no TLS certificate is presented", h.Display()).
				WithFix("connect over TCP (host=<name or address>, port=<port>) to the attested server")
		}
	}
	if err := p.Validate(); err != nil {
		if _, ok := failure.As(err); ok {
			return err
		}
		return failure.Wrap(failure.ConfigInvalid, err, "invalid attestation policy").
			WithFix("correct the attestation policy")
	}
	return nil
}

// CheckAttestationSettings refuses, as Connect and Dial do before anything
// is dialled, settings under which policy p could be bypassed: an sslmode
// that may connect without TLS, or a Unix-socket host. Callers that open
// their own connections under a policy (doctor) check the same rule.
func CheckAttestationSettings(cfg *connstring.Config, p *ratls.Policy) error {
	return checkAttestation(cfg, &Options{Attestation: p})
}

// attestationContext returns the context of the TLS handshake and the
// attestation when a policy is set: both together must finish within
// AttestationTimeout (and, as always, within connect_timeout).
func attestationContext(ctx context.Context, opts *Options) (context.Context, context.CancelFunc) {
	if opts.attestation() == nil {
		return ctx, func() {}
	}
	return context.WithTimeoutCause(ctx, opts.attestationTimeout(), errAttestationDeadline)
}

// attestationTimedOut reports whether ctx ended because of the attestation
// deadline (not connect_timeout or the caller's context).
func attestationTimedOut(ctx context.Context) bool {
	return ctx.Err() != nil && context.Cause(ctx) == errAttestationDeadline
}

// handshakeTimedOut reports whether a failed handshake hit the attestation
// deadline: the socket deadline (set to it) can fire a moment before the
// context's timer reports it, so a socket timeout counts when the
// attestation deadline is the tighter one and has passed.
func handshakeTimedOut(parent, hctx context.Context, err error) bool {
	if attestationTimedOut(hctx) {
		return true
	}
	hdl, ok := hctx.Deadline()
	if !ok || !isTimeout(context.Background(), err) || time.Now().Before(hdl) {
		return false
	}
	pdl, ok := parent.Deadline()
	return !ok || hdl.Before(pdl)
}

// attestationTimeoutError names the stage that was running and the figure.
func attestationTimeoutError(stage, address string, opts *Options, err error) *failure.Error {
	ms := opts.attestationTimeout().Milliseconds()
	what := "the SSLRequest answer and TLS handshake did not complete"
	if stage == "attestation" {
		what = "the TLS handshake completed but the attestation of the server's certificate (quote verification, collateral, policy) did not"
	}
	return failure.Wrap(failure.Timeout, err, "%s timed out after %dms", stage, ms).
		WithEvidence("%s at %s within the attestation timeout of %dms, which covers the TLS handshake plus the attestation", what, address, ms).
		WithFix("check that the server is running and reachable and that the collateral source (collateral directory or PCCS URL) answers quickly; raise the attestation timeout if the path is slow")
}

// attest runs the policy on the leaf certificate of the handshake that just
// completed (so the server has proved possession of its key) and refuses
// the connection with the report's error. It is bounded by ctx even if the
// verifier does not honour it.
// The whole chain the server sent is given, leaf first, so that a
// KMS-issued certificate sent with its intermediate chains to a pinned KMS
// root.
func attest(ctx context.Context, p *ratls.Policy, chain []*x509.Certificate, address string, opts *Options, facts *Facts) error {
	now := opts.now()
	done := make(chan *ratls.Report, 1)
	go func() { done <- p.VerifyChain(ctx, chain, now) }()
	var r *ratls.Report
	select {
	case r = <-done:
	case <-ctx.Done():
	}
	if r == nil && ctx.Err() != nil || attestationTimedOut(ctx) {
		if attestationTimedOut(ctx) {
			return attestationTimeoutError("attestation", address, opts, ctx.Err())
		}
		return classifyIO(ctx, ctx.Err(), "the attestation of the server's certificate")
	}
	facts.Attestation = r
	if tr := opts.trace(); tr.Attestation != nil {
		tr.Attestation(address, r)
	}
	if r == nil {
		// Fail closed: a verifier that returns no report has not verified.
		return failure.New(failure.ProtocolError, "attestation produced no report").
			WithEvidence("the attestation verifier returned no report for the certificate of %s", address).
			WithFix("this is a bug in the verifier; report it")
	}
	if err := r.Err(); err != nil {
		if _, ok := failure.As(err); ok {
			return err
		}
		return failure.Wrap(failure.ProtocolError, err, "attestation failed: %v", err)
	}
	facts.Attested = true
	return nil
}

// attestationLeaf is the leaf of the handshake's chain, or an error when
// the server presented none (TLS 1.2/1.3 servers always do).
func attestationLeaf(chain []*x509.Certificate, address string) (*x509.Certificate, error) {
	if len(chain) == 0 {
		return nil, failure.New(failure.ProtocolError, "the server presented no certificate to attest").
			WithEvidence("the TLS handshake with %s completed without a server certificate", address).
			WithFix("check that %s is the attested PostgreSQL server", address)
	}
	return chain[0], nil
}
