package ratls_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/ratls"
)

const (
	polV4MRTD  = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
	polSimMRTD = "e53236d44a074bc78e784cdfa1a2c858a5f6b53afc1b60d8f079662314978b64241b646d8498dd767d5ea48e1e115822"
)

// polFakeSource stands in for a collateral source in configuration tests
// only; it is never asked for collateral.
type polFakeSource struct{}

func (polFakeSource) Collateral(context.Context, string, string) (*ratls.Collateral, error) {
	panic("not used")
}

func TestPolicyValidate(t *testing.T) {
	h := func(n int) string { return strings.Repeat("ab", n) }
	base := func() ratls.Policy { return ratls.Policy{MRTD: []string{polV4MRTD}, SkipTCB: true} }
	for _, tc := range []struct {
		name   string
		mutate func(p *ratls.Policy)
		field  string // "" = valid
	}{
		{"valid", func(p *ratls.Policy) {}, ""},
		{"uppercase 0X MRTD", func(p *ratls.Policy) { p.MRTD = []string{"0X" + strings.ToUpper(polV4MRTD)} }, ""},
		{"any MRTD", func(p *ratls.Policy) { p.MRTD, p.AllowAnyMRTD = nil, true }, ""},
		{"collateral", func(p *ratls.Policy) { p.SkipTCB, p.Collateral = false, polFakeSource{} }, ""},
		{"simulator without collateral", func(p *ratls.Policy) { p.SkipTCB, p.AllowSimulator = false, true }, ""},
		{"all pins", func(p *ratls.Policy) {
			p.RTMR = [4]string{h(48), "", "0x" + h(48), h(48)}
			p.MinTEETCBSVN, p.AppID, p.ComposeHash, p.KeyProvider = h(16), []string{h(20)}, []string{h(32)}, "kms"
			p.AcceptTCBStatuses = []ratls.TCBStatus{ratls.StatusUpToDate, ratls.StatusSWHardeningNeeded, ratls.StatusConfigurationNeeded}
		}, ""},

		{"zero policy", func(p *ratls.Policy) { *p = ratls.Policy{} }, "field MRTD:"},
		{"empty allowlist", func(p *ratls.Policy) { p.MRTD = nil }, "field MRTD:"},
		{"allowlist and any", func(p *ratls.Policy) { p.AllowAnyMRTD = true }, "field AllowAnyMRTD:"},
		{"MRTD not hex", func(p *ratls.Policy) { p.MRTD = append(p.MRTD, "zz"+polV4MRTD[2:]) }, "field MRTD[1]:"},
		{"MRTD short", func(p *ratls.Policy) { p.MRTD = []string{"deadbeef"} }, "field MRTD[0]: expected 48 bytes"},
		{"MRTD odd", func(p *ratls.Policy) { p.MRTD = []string{polV4MRTD[1:]} }, "field MRTD[0]:"},
		{"RTMR2 long", func(p *ratls.Policy) { p.RTMR[2] = h(49) }, "field RTMR[2]:"},
		{"MinTEETCBSVN 17 bytes", func(p *ratls.Policy) { p.MinTEETCBSVN = h(17) }, "field MinTEETCBSVN:"},
		{"status case", func(p *ratls.Policy) { p.AcceptTCBStatuses = []ratls.TCBStatus{"uptodate"} }, "field AcceptTCBStatuses[0]:"},
		{"status Revoked", func(p *ratls.Policy) {
			p.AcceptTCBStatuses = []ratls.TCBStatus{ratls.StatusUpToDate, ratls.StatusRevoked}
		}, "field AcceptTCBStatuses[1]:"},
		{"AppID 32 bytes", func(p *ratls.Policy) { p.AppID = []string{h(32)} }, "field AppID[0]: expected 20 bytes"},
		{"ComposeHash 20 bytes", func(p *ratls.Policy) { p.ComposeHash = []string{h(32), h(20)} }, "field ComposeHash[1]: expected 32 bytes"},
		{"KeyProvider spaces", func(p *ratls.Policy) { p.KeyProvider = " kms" }, "field KeyProvider:"},
		{"no collateral", func(p *ratls.Policy) { p.SkipTCB = false }, "field Collateral:"},
		{"collateral and SkipTCB", func(p *ratls.Policy) { p.Collateral = polFakeSource{} }, "field SkipTCB:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := base()
			tc.mutate(&p)
			err := p.Validate()
			if tc.field == "" {
				if err != nil {
					t.Fatalf("valid policy refused: %s", failureDetail(err))
				}
				return
			}
			fe := wantClass(t, err, ratls.ClassPolicy)
			if !strings.Contains(fe.Evidence, tc.field) {
				t.Errorf("evidence %q does not name %q", fe.Evidence, tc.field)
			}
		})
	}
}

func TestPolicyNormalizeHex(t *testing.T) {
	for in, want := range map[string]string{"0X91EB2B44": "91eb2b44", "0xAbCd": "abcd", " ab ": "ab", "": ""} {
		if got, err := ratls.NormalizeHex(in); err != nil || got != want {
			t.Errorf("NormalizeHex(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"0x0g", "abc", "x12"} {
		if _, err := ratls.NormalizeHex(in); err == nil {
			t.Errorf("NormalizeHex(%q) accepted", in)
		}
	}
}

// polState renders a check as P (passed), S (skipped) or F:<class>.
func polState(c ratls.Check) string {
	switch {
	case c.Passed:
		return "P"
	case c.Skipped:
		return "S"
	}
	return "F:" + string(c.Class)
}

// polWantReport compares every check's state, in report order, with want
// (name -> state; names absent from want must have passed), checks the
// report invariants and returns the report's error.
func polWantReport(t testing.TB, r *ratls.Report, want map[string]string) error {
	t.Helper()
	if len(r.Checks) != len(ratls.CheckNames) {
		t.Fatalf("%d checks, want %d", len(r.Checks), len(ratls.CheckNames))
	}
	var first error
	for i, c := range r.Checks {
		if c.Name != ratls.CheckNames[i] {
			t.Fatalf("check %d is %q, want %q", i, c.Name, ratls.CheckNames[i])
		}
		w, ok := want[c.Name]
		if !ok {
			w = "P"
		}
		if got := polState(c); got != w {
			t.Errorf("check %s: %s (%s), want %s", c.Name, got, c.Detail, w)
		}
		if c.Detail == "" || c.Class == "" || (c.Passed && c.Skipped) {
			t.Errorf("check %s: bad invariants %+v", c.Name, c)
		}
		if c.Failed() {
			if c.Err == nil || c.Err.Class != c.Class || c.Err.Evidence == "" || c.Err.Fix == "" {
				t.Errorf("failed check %s lacks a classified error with evidence and fix: %+v", c.Name, c.Err)
			} else if first == nil {
				first = c.Err
			}
		} else if c.Err != nil {
			t.Errorf("check %s is not failed but has an error", c.Name)
		}
	}
	err := r.Err()
	if (err == nil) != (first == nil) || (err != nil && err != first) {
		t.Fatalf("Report.Err = %v, want the first failed check's error %v", err, first)
	}
	return err
}

// polUnpinned adds the skipped state of the RTMR and SVN checks of a policy
// that pins none of them.
func polUnpinned(m map[string]string) map[string]string {
	for _, n := range []string{ratls.CheckRTMR0, ratls.CheckRTMR1, ratls.CheckRTMR2, ratls.CheckRTMR3, ratls.CheckTEETCBSVN} {
		m[n] = "S"
	}
	return m
}

func polDetailOf(r *ratls.Report, name string) string { return r.Check(name).Detail }

func TestPolicyVerifyQuoteGenuine(t *testing.T) {
	raw, at := genuineV4(t) // 2025-07-01
	p := ratls.Policy{MRTD: []string{"0X" + strings.ToUpper(polV4MRTD)}, SkipTCB: true,
		RTMR: [4]string{
			"44C0197B39157FDD7A4DCC44767F9D6B0BB3977C7A8E347B8492F827FE9D9E5C48ACA29B220B80B6A540CF994B9BC9C0",
			"0x0084452c01668329d4bc06acdf58a7205c26743304509973949e5619bf81a6a7aea8c323c173019b3093d54e579e9378",
			"d833feef2cd945148aa38ead2c53e9b7f138190aaaebfc551dccd829fc207aa3ba80b70870d7330733642e01d48c3132",
			strings.Repeat("00", 48)},
		MinTEETCBSVN: "06010300000000000000000000000000"}
	r := p.VerifyQuote(context.Background(), raw, nil, at)
	err := polWantReport(t, r, map[string]string{
		ratls.CheckTCB: "S", ratls.CheckTCBStatus: "S", ratls.CheckAppID: "S", ratls.CheckComposeHash: "S",
		ratls.CheckKeyProvider: "S", ratls.CheckKeyBinding: "S", ratls.CheckKMSChain: "S"})
	if err != nil {
		t.Fatalf("genuine quote refused: %s", failureDetail(err))
	}
	if !strings.Contains(polDetailOf(r, ratls.CheckPolicy), "SkipTCB") || !strings.Contains(polDetailOf(r, ratls.CheckTCB), "SkipTCB") {
		t.Errorf("relaxation not reported: %q / %q", polDetailOf(r, ratls.CheckPolicy), polDetailOf(r, ratls.CheckTCB))
	}
	if !strings.Contains(polDetailOf(r, ratls.CheckKeyBinding), "VerifyQuote") {
		t.Errorf("key_binding detail %q", polDetailOf(r, ratls.CheckKeyBinding))
	}
	if r.Quote == nil || r.Quote.Body.MRTD[0] != 0x91 || r.Identity == nil || r.Identity.AppID != nil || r.Appraisal != nil {
		t.Errorf("report contents: quote %v identity %+v appraisal %+v", r.Quote != nil, r.Identity, r.Appraisal)
	}

	// A foreign MRTD is refused; the other checks still run and pass.
	p.MRTD = []string{"deadbeef" + strings.Repeat("00", 44)}
	r = p.VerifyQuote(context.Background(), raw, nil, at)
	err = polWantReport(t, r, map[string]string{
		ratls.CheckTCB: "S", ratls.CheckTCBStatus: "S", ratls.CheckMRTD: "F:attestation_mrtd", ratls.CheckAppID: "S",
		ratls.CheckComposeHash: "S", ratls.CheckKeyProvider: "S", ratls.CheckKeyBinding: "S", ratls.CheckKMSChain: "S"})
	fe := wantClass(t, err, ratls.ClassMRTD)
	if !strings.Contains(fe.Evidence, polV4MRTD) || !strings.Contains(fe.Evidence, "deadbeef") {
		t.Errorf("evidence %q", fe.Evidence)
	}

	// Two failures: Err is the first in report order (mrtd before rtmr1).
	p.RTMR[1] = strings.Repeat("11", 48)
	r = p.VerifyQuote(context.Background(), raw, nil, at)
	wantClass(t, r.Err(), ratls.ClassMRTD)
	if !r.Check(ratls.CheckRTMR1).Failed() || r.Check(ratls.CheckRTMR1).Class != ratls.ClassRTMR {
		t.Errorf("rtmr1 %+v", *r.Check(ratls.CheckRTMR1))
	}
}

func TestPolicyVerifyQuotePrerequisites(t *testing.T) {
	raw, at := genuineV4(t)
	p := ratls.Policy{MRTD: []string{polV4MRTD}, SkipTCB: true}
	allSkipped := func(from string) map[string]string {
		m := map[string]string{}
		on := false
		for _, n := range ratls.CheckNames {
			on = on || n == from
			if on {
				m[n] = "S"
			}
		}
		return m
	}

	// A quote whose signed body was altered: every later check is skipped,
	// naming the failed quote check.
	m := bytes.Clone(raw)
	m[200] ^= 1 // inside MRTD
	r := p.VerifyQuote(context.Background(), m, nil, at)
	want := allSkipped(ratls.CheckTCB)
	want[ratls.CheckQuote] = "F:attestation_quote_signature"
	wantClass(t, polWantReport(t, r, want), ratls.ClassQuoteSignature)
	if !strings.Contains(polDetailOf(r, ratls.CheckMRTD), "quote check failed") || r.Quote == nil {
		t.Errorf("mrtd detail %q", polDetailOf(r, ratls.CheckMRTD))
	}

	// A truncated quote does not parse.
	r = p.VerifyQuote(context.Background(), raw[:600], nil, at)
	want[ratls.CheckQuote] = "F:attestation_malformed"
	wantClass(t, polWantReport(t, r, want), ratls.ClassMalformed)
	if r.Quote != nil {
		t.Error("unparsed quote in report")
	}

	// Before the PCK certificate is valid (simulator quote, README 3.5).
	sim := quoteBytes(t, "dstack_simulator_attestation.bin", loadExpected(t)["dstack_simulator_attestation.bin"])
	r = (&ratls.Policy{MRTD: []string{polSimMRTD}, SkipTCB: true}).VerifyQuote(context.Background(), sim, nil, mustTime(t, "2026-01-08T00:00:00Z"))
	want[ratls.CheckQuote] = "F:attestation_pck_chain"
	wantClass(t, polWantReport(t, r, want), ratls.ClassPCKChain)

	// An invalid policy verifies nothing.
	r = (&ratls.Policy{SkipTCB: true}).VerifyQuote(context.Background(), raw, nil, at)
	want = allSkipped(ratls.CheckEvidence)
	want[ratls.CheckPolicy] = "F:attestation_policy"
	wantClass(t, polWantReport(t, r, want), ratls.ClassPolicy)
	if !strings.Contains(polDetailOf(r, ratls.CheckQuote), "policy is invalid") || r.Quote != nil {
		t.Errorf("quote detail %q", polDetailOf(r, ratls.CheckQuote))
	}

	// No certificate at all.
	r = p.VerifyCertificate(context.Background(), nil, at)
	want = allSkipped(ratls.CheckQuote)
	want[ratls.CheckEvidence] = "F:attestation_no_evidence"
	polWantReport(t, r, want)

	// A nil policy is refused like the zero policy.
	var nilPolicy *ratls.Policy
	wantClass(t, nilPolicy.Validate(), ratls.ClassPolicy)
	r = nilPolicy.VerifyQuote(context.Background(), raw, nil, at)
	want = allSkipped(ratls.CheckEvidence)
	want[ratls.CheckPolicy] = "F:attestation_policy"
	wantClass(t, polWantReport(t, r, want), ratls.ClassPolicy)

	var empty ratls.Report
	wantClass(t, empty.Err(), ratls.ClassPolicy)
}

// TestPolicyVerifyQuoteUnexplainedRTMR3: the simulator attestation's quote
// without its event log has an RTMR3 nothing explains, so no identity
// check can pass, even when pinned, and the key provider is not
// evaluated; the pinned KMS root fails outright: a bare quote has no
// certificate to chain to it.
func TestPolicyVerifyQuoteUnexplainedRTMR3(t *testing.T) {
	sim := quoteBytes(t, "dstack_simulator_attestation.bin", loadExpected(t)["dstack_simulator_attestation.bin"])
	roots := x509.NewCertPool()
	p := ratls.Policy{MRTD: []string{polSimMRTD}, SkipTCB: true, AppID: []string{"5bb4ff9a3837357f19dc176407a5709c62eb6c56"},
		KeyProvider: "kms", KMSRoots: roots}
	r := p.VerifyQuote(context.Background(), sim, nil, mustTime(t, "2026-02-01T00:00:00Z"))
	err := polWantReport(t, r, polUnpinned(map[string]string{
		ratls.CheckTCB: "S", ratls.CheckTCBStatus: "S", ratls.CheckEventLog: "F:attestation_rtmr3_replay",
		ratls.CheckAppID: "S", ratls.CheckComposeHash: "S", ratls.CheckKeyProvider: "S", ratls.CheckKeyBinding: "S",
		ratls.CheckKMSChain: "F:attestation_kms_chain"}))
	fe := wantClass(t, err, ratls.ClassRTMR3Replay)
	if !strings.Contains(fe.Evidence, "f28a1490ee924e9396c2ccf2d93ad536b83cbe159a1d45024d1fd7acdcc102145efcfcd0cfa209416446c70226affadf") {
		t.Errorf("evidence %q lacks the quote's RTMR3", fe.Evidence)
	}
	if !strings.Contains(polDetailOf(r, ratls.CheckAppID), "event_log") || r.Identity != nil {
		t.Errorf("app_id detail %q, identity %+v", polDetailOf(r, ratls.CheckAppID), r.Identity)
	}
}

// TestPolicyGenuineQuoteNeedsCollateral: AllowSimulator lets a policy have
// no collateral source, but a genuine quote then fails its TCB check
// instead of passing unappraised.
func TestPolicyGenuineQuoteNeedsCollateral(t *testing.T) {
	raw, at := genuineV4(t)
	r := (&ratls.Policy{MRTD: []string{polV4MRTD}, AllowSimulator: true}).VerifyQuote(context.Background(), raw, nil, at)
	err := polWantReport(t, r, polUnpinned(map[string]string{
		ratls.CheckTCB: "F:attestation_tcb_unavailable", ratls.CheckTCBStatus: "S", ratls.CheckAppID: "S",
		ratls.CheckComposeHash: "S", ratls.CheckKeyProvider: "S", ratls.CheckKeyBinding: "S", ratls.CheckKMSChain: "S"}))
	wantClass(t, err, ratls.ClassTCBUnavailable)
}
