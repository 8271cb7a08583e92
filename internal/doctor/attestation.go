package doctor

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/attestation"
	"github.com/pgtrust/pgtrust/pgtls"
)

// StageAttestation is the attestation stage. It is present only when
// Options.Attestation is set, right after the server certificate stage:
// the server's certificate must carry TDX evidence the policy accepts.
const StageAttestation = "attestation"

// attested is what the attestation stage found.
type attested struct {
	doc *attestation.Document
	err error // the refusal (first failed check, or no certificate); nil when attested
	dur time.Duration
}

// stageNames are the stages of this diagnosis: StageNames, plus the
// attestation stage when a policy is configured.
func (d *diagnosis) stageNames() []string {
	if d.att == nil {
		return StageNames
	}
	var out []string
	for _, n := range StageNames {
		out = append(out, n)
		if n == StageServerCertificate {
			out = append(out, StageAttestation)
		}
	}
	return out
}

// preAttest opens the transport (pgtls.Dial: the same plan, negotiation and
// handshake as the diagnosis, but no startup message, so no password or
// other credential reaches an unattested server) and verifies the server's
// certificate with the policy. stop is true when the diagnosis ends here:
// the transport failed (err is pgtls's) or the attestation refused the
// server (err is the refusal); obs and facts are that attempt's.
func preAttest(ctx context.Context, cfg *connstring.Config, o *Options) (att *attested, obs *observations, facts *pgtls.Facts, err error) {
	rec := newRecorder(cfg, o.OnStage)
	start := time.Now()
	conn, facts, err := pgtls.Dial(ctx, cfg, &pgtls.Options{Trace: rec.trace(), DialContext: rec.dial, Now: o.Now})
	if conn != nil {
		conn.Close()
	}
	obs = rec.stop()
	if err != nil {
		return nil, obs, facts, err
	}
	o.OnStage(StageAttestation)
	att = attestFacts(ctx, facts, o)
	att.dur = time.Since(start)
	return att, obs, facts, att.err
}

// attestFacts runs the policy on the certificate of a connection.
func attestFacts(ctx context.Context, facts *pgtls.Facts, o *Options) *attested {
	t0 := time.Now()
	at := o.AttestationAt
	if at.IsZero() {
		at = o.Now()
	}
	src := "server"
	if facts != nil && facts.Address != "" {
		src = "server " + facts.Address
	}
	if facts == nil || !facts.Encrypted || len(facts.PeerCertificates) == 0 {
		err := attestation.NoCertificate(src)
		return &attested{doc: attestation.ErrorDocument(err, src, at), err: err, dur: time.Since(t0)}
	}
	in := &attestation.Input{Source: src, Leaf: facts.PeerCertificates[0]}
	doc := in.Verify(ctx, o.Attestation, at)
	a := &attested{doc: doc, dur: time.Since(t0)}
	if !doc.OK {
		a.err = reportError(doc.Error)
	}
	return a
}

// recheck verifies the certificate of the diagnosis connection when it is
// not the one attested first (a server can change between two
// connections): the stage reports the certificate the connection used.
func (a *attested) recheck(ctx context.Context, facts *pgtls.Facts, o *Options, first *pgtls.Facts) *attested {
	if facts == nil || first == nil || len(facts.PeerCertificates) == 0 || len(first.PeerCertificates) == 0 ||
		!facts.PeerCertificates[0].Equal(first.PeerCertificates[0]) {
		return attestFacts(ctx, facts, o)
	}
	return a
}

// reportError turns the document's error back into a *failure.Error so
// that the report's class, evidence and fix are the failing check's.
func reportError(r *failure.Report) error {
	if r == nil {
		return failure.New(attestation.ClassNoEvidence, "attestation refused")
	}
	return failure.New(r.Class, "%s", r.Message).WithEvidence("%s", r.Evidence).WithFix("%s", r.Fix)
}

// attestationStage renders the stage: one line per check, then the
// measured values that identify the server.
func (d *diagnosis) attestationStage() {
	st := d.stages[StageAttestation]
	if st == nil {
		return
	}
	a := d.att
	if a.doc == nil {
		st.Status, st.Detail = StatusSkipped, "not reached: no TLS connection to attest"
		return
	}
	d.r.Attestation = a.doc
	st.DurationMS = ms(a.dur)
	var lines []string
	// Checks skipped for one reason (a failed prerequisite) share a line.
	var names []string
	status, text := "", ""
	flush := func() {
		if len(names) > 0 {
			lines = append(lines, fmt.Sprintf("%s %s: %s", strings.ToUpper(status), strings.Join(names, ", "), text))
		}
		names = nil
	}
	for _, c := range a.doc.Checks {
		t := c.Detail
		if c.Status == attestation.StatusFail {
			t = c.Message
		}
		t = firstLine(t)
		if c.Status != attestation.StatusSkip || status != attestation.StatusSkip || t != text {
			flush()
		}
		names, status, text = append(names, c.Name), c.Status, t
	}
	flush()
	if m := a.doc.Measurements; m != nil {
		lines = append(lines, "MRTD "+m.MRTD)
		if m.TCBStatus != "" {
			adv := "no advisories"
			if len(m.AdvisoryIDs) > 0 {
				adv = "advisories " + strings.Join(m.AdvisoryIDs, ", ")
			}
			lines = append(lines, fmt.Sprintf("TCB %s (FMSPC %s, %s)", m.TCBStatus, m.FMSPC, adv))
		}
		if m.AppID != "" || m.ComposeHash != "" || m.KeyProvider != "" {
			lines = append(lines, fmt.Sprintf("app id %s, compose hash %s, key provider %s", orNone(m.AppID), orNone(m.ComposeHash), orNone(m.KeyProvider)))
		}
	}
	if a.err == nil {
		lines = append(lines, "the server's certificate carries TDX evidence this policy accepts")
	} else {
		lines = append(lines, "a client with this policy refuses the server before sending any credential")
	}
	st.Detail = strings.Join(lines, "\n")
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
