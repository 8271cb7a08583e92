package ratls

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"strings"
	"time"

	"github.com/pgtrust/pgtrust/failure"
)

// collateralTimeout bounds a collateral fetch when the caller's context
// has no deadline: a PCCS that never answers must not hang a handshake.
const collateralTimeout = 30 * time.Second

// nominalClass is the class each check fails with in the common case; a
// skipped or passed check reports it so renderers can say what it guards.
var nominalClass = map[string]failure.Class{
	CheckPolicy: ClassPolicy, CheckEvidence: ClassNoEvidence, CheckQuote: ClassQuoteSignature,
	CheckTCB: ClassTCBUnavailable, CheckTCBStatus: ClassTCBStatus, CheckMRTD: ClassMRTD,
	CheckRTMR0: ClassRTMR, CheckRTMR1: ClassRTMR, CheckRTMR2: ClassRTMR, CheckRTMR3: ClassRTMR,
	CheckDebug: ClassDebug, CheckSEAM: ClassSEAM, CheckTEETCBSVN: ClassTEETCBSVN,
	CheckEventLog: ClassRTMR3Replay, CheckAppID: ClassAppID, CheckComposeHash: ClassComposeHash,
	CheckKeyProvider: ClassKeyProvider, CheckKeyBinding: ClassKeyBinding, CheckKMSChain: ClassKMSChain,
}

// run accumulates checks by name; finish lists them in CheckNames order,
// marking every check no stage reached as skipped for the given reason.
type run struct {
	r      *Report
	checks map[string]Check
}

func (u *run) set(c Check) { u.checks[c.Name] = c }

func (u *run) skip(reason string, names ...string) {
	for _, n := range names {
		u.set(skipped(n, nominalClass[n], "%s", reason))
	}
}

func (u *run) finish(reason string) *Report {
	for _, n := range CheckNames {
		c, ok := u.checks[n]
		if !ok {
			c = skipped(n, nominalClass[n], "%s", reason)
		}
		u.r.Checks = append(u.r.Checks, c)
	}
	return u.r
}

// asFailure keeps a classified error as it is and classifies any other.
func asFailure(err error, fallback failure.Class, fix, format string, args ...any) *failure.Error {
	if fe, ok := failure.As(err); ok {
		return fe
	}
	return failure.Wrap(fallback, err, format, args...).
		WithEvidence("%v", err).
		WithFix("%s", fix)
}

// VerifyCertificate runs every check on the leaf of a TLS handshake at the
// instant at (zero: now) and returns a report with every check; it does
// not stop at the first failure. Report.Err gives the verdict.
func (p *Policy) VerifyCertificate(ctx context.Context, leaf *x509.Certificate, at time.Time) *Report {
	return p.VerifyChain(ctx, []*x509.Certificate{leaf}, at)
}

// VerifyChain is VerifyCertificate for a peer chain, leaf first: the
// certificates after the leaf serve as intermediates towards KMSRoots.
func (p *Policy) VerifyChain(ctx context.Context, chain []*x509.Certificate, at time.Time) *Report {
	u, c, at := p.start(at)
	if c == nil {
		return u.finish("policy is invalid: nothing was verified")
	}
	if len(chain) == 0 || chain[0] == nil {
		u.set(failed(CheckEvidence, failure.New(ClassNoEvidence, "no certificate to verify").
			WithEvidence("the peer presented no certificate").
			WithFix("connect to an RA-TLS server: it presents a certificate carrying a TDX quote")))
		return u.finish("no certificate")
	}
	ev, err := ParseCertificateEvidence(chain[0])
	if err != nil {
		u.set(failed(CheckEvidence, asFailure(err, ClassNoEvidence,
			"connect to an RA-TLS server: its certificate carries a TDX quote",
			"certificate carries no usable attestation evidence")))
		return u.finish("no attestation evidence in the certificate")
	}
	u.r.Evidence = ev
	u.set(passed(CheckEvidence, ClassNoEvidence, "%s evidence: quote %d bytes, %d events", evidenceFormat(ev), len(ev.Quote), len(ev.EventLog)))
	return p.verify(ctx, u, c, ev.Quote, ev.EventLog, chain, at)
}

// VerifyQuote runs every check but the certificate ones on a quote and
// its event log: key_binding and kms_chain are skipped (no certificate),
// so the caller must bind the quote to its channel some other way.
func (p *Policy) VerifyQuote(ctx context.Context, raw []byte, events []Event, at time.Time) *Report {
	u, c, at := p.start(at)
	if c == nil {
		return u.finish("policy is invalid: nothing was verified")
	}
	u.set(passed(CheckEvidence, ClassNoEvidence, "quote given directly: %d bytes, %d events", len(raw), len(events)))
	return p.verify(ctx, u, c, raw, events, nil, at)
}

func evidenceFormat(ev *Evidence) string {
	if ev.Format == "" {
		return "RA-TLS"
	}
	return ev.Format
}

func (p *Policy) start(at time.Time) (*run, *compiledPolicy, time.Time) {
	u := &run{r: &Report{}, checks: map[string]Check{}}
	if p == nil {
		// A nil policy is the zero policy: refused, never "no policy".
		p = &Policy{}
	}
	if at.IsZero() {
		at = time.Now()
	}
	c, err := p.compile()
	if err != nil {
		u.set(failed(CheckPolicy, err))
		return u, nil, at
	}
	u.set(passed(CheckPolicy, ClassPolicy, "policy valid%s", relaxations(p)))
	return u, c, at
}

// relaxations names the development switches that are on, so a report
// never hides that it was produced under a relaxed policy.
func relaxations(p *Policy) string {
	var s []string
	for _, r := range []struct {
		on   bool
		name string
	}{{p.AllowAnyMRTD, "AllowAnyMRTD"}, {p.AllowSimulator, "AllowSimulator"}, {p.AllowDebug, "AllowDebug"}, {p.SkipTCB, "SkipTCB"}} {
		if r.on {
			s = append(s, r.name)
		}
	}
	if len(s) == 0 {
		return ""
	}
	return "; development relaxations: " + strings.Join(s, ", ")
}

// verify runs the checks after evidence extraction. Order: quote
// signatures, TCB appraisal, TD report checks, event-log replay and the
// identity it measures, key binding, KMS chain. A check whose
// prerequisite failed is skipped naming that prerequisite.
func (p *Policy) verify(ctx context.Context, u *run, c *compiledPolicy, raw []byte, events []Event, chain []*x509.Certificate, at time.Time) *Report {
	q, err := ParseQuote(raw)
	if err != nil {
		u.set(failed(CheckQuote, asFailure(err, ClassMalformed, fixMalformed, "TDX quote does not parse")))
		return u.finish("quote check failed: nothing in it can be trusted")
	}
	u.r.Quote = q
	if ev := u.r.Evidence; ev != nil && ev.ReportData != nil && !bytes.Equal(ev.ReportData, q.Body.ReportData[:]) {
		// dstack's verifier requires the envelope to repeat the quote's
		// report_data: an envelope that disagrees was assembled from parts.
		u.set(failed(CheckEvidence, failure.New(ClassExtension, "attestation envelope's report_data differs from its quote's").
			WithEvidence("field envelope.report_data: expected the quote's %x, got %x", q.Body.ReportData[:], ev.ReportData).
			WithFix("the certificate's evidence was assembled from parts: do not trust this server")))
		return u.finish("evidence check failed: the envelope does not match its quote")
	}
	v, err := q.Verify(VerifyOptions{Root: p.Root, Time: at, AllowSimulator: p.AllowSimulator})
	if err != nil {
		u.set(failed(CheckQuote, asFailure(err, ClassQuoteSignature, "obtain fresh evidence", "TDX quote does not verify")))
		return u.finish("quote check failed: its measurements are not signed by a trusted platform")
	}
	simulated := IsSimulated(q)
	if simulated && !p.AllowSimulator {
		// Verify already refuses this; checked again so that the policy
		// never relies on one layer for the development switch.
		u.set(failed(CheckQuote, failure.New(ClassSimulator, "quote comes from the simulator provider").
			WithEvidence("simulated quote, AllowSimulator not set").
			WithFix("a simulated quote proves nothing about hardware: for development only, set AllowSimulator")))
		return u.finish("quote check failed: simulated quote")
	}
	if simulated {
		u.set(passed(CheckQuote, ClassQuoteSignature, "SIMULATED quote accepted (AllowSimulator): it proves nothing about hardware"))
	} else {
		u.set(passed(CheckQuote, ClassQuoteSignature, "quote v%d signatures valid; PCK chain to %q valid at %s",
			q.Header.Version, v.PCKChain[len(v.PCKChain)-1].Subject.CommonName, at.UTC().Format(time.RFC3339)))
	}

	switch {
	case simulated:
		u.skip("simulated quote: simulated quotes have no Intel collateral, the TCB is not appraised", CheckTCB, CheckTCBStatus)
	case p.SkipTCB:
		u.skip("SkipTCB (development): the TCB is not appraised", CheckTCB, CheckTCBStatus)
	default:
		a, chk := p.appraise(ctx, q, v, at)
		u.set(chk)
		if a == nil {
			u.skip("tcb check failed: no appraisal to judge", CheckTCBStatus)
		} else {
			u.r.Appraisal = a
			u.set(checkTCBStatus(c.accept, a))
		}
	}

	u.set(checkMRTD(c, p.AllowAnyMRTD, &q.Body))
	for i := range c.rtmr {
		u.set(checkRTMR(i, c.rtmr[i], &q.Body))
	}
	u.set(checkDebug(&q.Body, p.AllowDebug))
	u.set(checkSEAM(&q.Body, q.BodyType))
	u.set(checkTEETCBSVN(c.minSVN, &q.Body))

	id := p.replay(u, events, &q.Body)
	if id != nil {
		u.r.Identity = id
		u.set(checkAppID(c.appID, id))
		u.set(checkComposeHash(c.composeHash, id))
		u.set(checkKeyProvider(p.KeyProvider, id))
	} else {
		u.skip("event_log check failed: the application identity is not measured", CheckAppID, CheckComposeHash, CheckKeyProvider)
	}

	if chain == nil {
		u.skip("no certificate (VerifyQuote): the quote is not bound to a TLS key here", CheckKeyBinding)
	} else {
		u.set(checkKeyBinding(&q.Body, chain[0]))
	}
	switch {
	case p.KMSRoots == nil:
		u.set(checkKMSChain(nil, chain, id, at))
	case chain == nil:
		// A pinned KMS root is a requirement, not a hint: without a
		// certificate it cannot be met, so it fails rather than skips.
		u.set(failed(CheckKMSChain, failure.New(ClassKMSChain, "a KMS root is pinned but there is no certificate to check against it").
			WithEvidence("the evidence is a bare quote (VerifyQuote): no certificate chain to verify up to KMSRoots").
			WithFix("verify the server's RA-TLS certificate instead (attest verify CERT.pem or HOST:PORT), or drop the KMS root pin for a bare quote")))
	case id == nil:
		u.skip("event_log check failed: no measured key provider to compare with the KMS root", CheckKMSChain)
	default:
		u.set(checkKMSChain(p.KMSRoots, chain, id, at))
	}
	return u.finish("not reached")
}

// replay sets the event_log check and returns the measured identity, nil
// when the log does not reproduce the quote.
func (p *Policy) replay(u *run, events []Event, r *TDReport) *AppIdentity {
	var replayed [4][48]byte
	var covered [4]bool
	var counts [4]int
	if len(events) > 0 {
		var err error
		replayed, err = ReplayRTMRs(events)
		if err != nil {
			u.set(failed(CheckEventLog, asFailure(err, ClassRTMR3Replay,
				"the event log is malformed or altered: obtain fresh evidence", "event log cannot be replayed")))
			return nil
		}
		for _, e := range events {
			if e.IMR < 4 {
				covered[e.IMR] = true
				counts[e.IMR]++
			}
		}
	}
	chk := checkReplay(replayed, covered, counts, r)
	if !chk.Passed {
		u.set(chk)
		return nil
	}
	// No events: nothing is claimed, RTMR3 was checked to be zero.
	id := &AppIdentity{}
	if len(events) > 0 {
		var err error
		id, err = ParseAppIdentity(events)
		if err != nil {
			u.set(failed(CheckEventLog, asFailure(err, ClassRTMR3Replay,
				"the RTMR3 events are malformed: obtain fresh evidence", "RTMR3 events do not state an application identity")))
			return nil
		}
	}
	u.set(chk)
	return id
}

// appraise fetches the collateral for the quote's platform and appraises
// its TCB; it returns the tcb check and the appraisal when one was made.
func (p *Policy) appraise(ctx context.Context, q *Quote, v *Verified, at time.Time) (*Appraisal, Check) {
	if p.Collateral == nil {
		return nil, failed(CheckTCB, failure.New(ClassTCBUnavailable, "no collateral source to appraise a genuine quote's TCB").
			WithEvidence("Policy.Collateral is nil (allowed only for simulated quotes)").
			WithFix("configure a PCCS or an offline collateral directory"))
	}
	if len(v.PCKChain) < 2 {
		return nil, failed(CheckTCB, failure.New(ClassTCBUnavailable, "PCK chain has no issuing CA").
			WithEvidence("verified PCK chain of %d certificates", len(v.PCKChain)).
			WithFix("obtain fresh evidence: Intel PCK chains are leaf, PCK CA, root"))
	}
	info, err := ParsePCKInfo(v.PCKChain[0])
	if err != nil {
		return nil, failed(CheckTCB, asFailure(err, ClassTCBUnavailable, "obtain fresh evidence",
			"PCK certificate's SGX extension does not parse"))
	}
	ca, fe := pckCA(v.PCKChain[1])
	if fe != nil {
		return nil, failed(CheckTCB, fe)
	}
	fmspc := hex.EncodeToString(info.FMSPC[:])
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, collateralTimeout)
		defer cancel()
	}
	// The directory source picks the file valid at the appraisal instant
	// (attest verify --at), not the newest one.
	col, err := p.Collateral.Collateral(ContextWithAppraisalTime(ctx, at), fmspc, ca)
	if err != nil {
		return nil, failed(CheckTCB, asFailure(err, ClassTCBUnavailable,
			"check the PCCS or collateral directory: it must hold collateral for this FMSPC valid now",
			"no collateral for FMSPC %s (%s CA)", fmspc, ca))
	}
	a, err := Appraise(q, v, col, at)
	if err != nil {
		return nil, failed(CheckTCB, asFailure(err, ClassTCBUnavailable,
			"fetch fresh collateral; if it still fails, the platform's TCB cannot be appraised",
			"TCB appraisal failed for FMSPC %s", fmspc))
	}
	return a, passed(CheckTCB, ClassTCBUnavailable, "collateral for FMSPC %s (%s CA) verified at %s, TCB evaluation data number %d",
		fmspc, ca, at.UTC().Format(time.RFC3339), a.TCBEvaluationDataNumber)
}

// pckCA names the PCK CA for collateral lookup from the intermediate's
// CN, as Intel's PCS API does ("platform" or "processor").
func pckCA(c *x509.Certificate) (string, *failure.Error) {
	if ca := pckCAName(c.Subject.CommonName); ca != "" {
		return ca, nil
	}
	return "", failure.New(ClassTCBUnavailable, "PCK chain's CA is neither the Platform nor the Processor CA").
		WithEvidence("PCK CA common name: expected %q or %q, got %q", pckPlatformCA, pckProcessorCA, c.Subject.CommonName).
		WithFix("the quote's PCK chain is not Intel's: verify against the Intel root (Policy.Root nil)")
}
