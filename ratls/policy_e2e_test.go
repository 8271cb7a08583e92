package ratls_test

// End-to-end policy tests over the whole pipeline: evidence extraction,
// quote verification, collateral and TCB appraisal, event-log replay and
// identity, key binding and KMS chain. They need the collateral, evidence
// and simulator code of issue 10 (not H4's), so they pass only once all of
// it is merged; every step is real (genuine Intel quotes and collateral,
// the simulator provider for a positive binding, which no genuine public
// quote can give: README 5.2).

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/ratls"
)

// polCollateralDir copies the named collateral files into a fresh directory,
// so the source sees collateral only, not the other test data.
func polCollateralDir(t *testing.T, names ...string) ratls.CollateralSource {
	t.Helper()
	dir := t.TempDir()
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(testdata, n))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return ratls.CollateralDir(dir)
}

var polBothCollaterals = []string{"dcap_qvl_tdx_collateral_b0c06f.json", "dcap_qvl_tdx_collateral_90c06f.json"}

// TestE2EPolicyDCAP: README 3.2, the upstream-asserted full appraisal:
// UpToDate at 2025-07-01 with the uppercase 0X-prefixed MRTD allowlisted.
func TestE2EPolicyDCAP(t *testing.T) {
	raw, at := genuineV4(t)
	p := ratls.Policy{MRTD: []string{"0X" + strings.ToUpper(polV4MRTD)}, Collateral: polCollateralDir(t, polBothCollaterals...)}
	r := p.VerifyQuote(context.Background(), raw, nil, at)
	err := polWantReport(t, r, polUnpinned(map[string]string{ratls.CheckAppID: "S", ratls.CheckComposeHash: "S",
		ratls.CheckKeyProvider: "S", ratls.CheckKeyBinding: "S", ratls.CheckKMSChain: "S"}))
	if err != nil {
		t.Fatalf("3.2 refused: %s", failureDetail(err))
	}
	a := r.Appraisal
	if a == nil || a.Status != ratls.StatusUpToDate || a.FMSPC != "b0c06f000000" || len(a.AdvisoryIDs) != 0 || a.TCBEvaluationDataNumber != 17 {
		t.Fatalf("appraisal %+v, want UpToDate, FMSPC b0c06f000000, no advisories, evaluation data 17", a)
	}
	if d := polDetailOf(r, ratls.CheckTCB); !strings.Contains(d, "b0c06f000000") || !strings.Contains(d, "platform") {
		t.Errorf("tcb detail %q", d)
	}

	// After the PCK CRL's nextUpdate the collateral is stale: the TCB
	// cannot be appraised; the measurement checks still run and pass.
	r = p.VerifyQuote(context.Background(), raw, nil, mustTime(t, "2025-07-19T10:00:36Z"))
	polWantTCBFailed(t, r)
	if r.Check(ratls.CheckMRTD).Passed != true || r.Check(ratls.CheckDebug).Passed != true {
		t.Errorf("measurement checks did not run after a TCB failure")
	}
}

// polWantTCBFailed: the tcb check failed with an attestation class and the
// status check was skipped for it.
func polWantTCBFailed(t testing.TB, r *ratls.Report) {
	t.Helper()
	c := r.Check(ratls.CheckTCB)
	if !c.Failed() || !strings.HasPrefix(string(c.Class), "attestation_") || c.Err == nil || c.Err.Evidence == "" || c.Err.Fix == "" {
		t.Fatalf("tcb check %+v, want a classified failure", *c)
	}
	if s := r.Check(ratls.CheckTCBStatus); !s.Skipped || !strings.Contains(s.Detail, "tcb check failed") {
		t.Errorf("tcb_status %+v, want skipped for the failed tcb check", *s)
	}
	if r.Appraisal != nil || r.Err() != c.Err {
		t.Errorf("appraisal %+v / Err %v after a failed appraisal", r.Appraisal, r.Err())
	}
}

// TestE2EPolicyNoTCBMatch: README 3.3 and 3.7, genuine quotes whose
// platform matches no TCB level of valid collateral.
func TestE2EPolicyNoTCBMatch(t *testing.T) {
	col := polCollateralDir(t, polBothCollaterals...)
	e := loadExpected(t)
	for _, tc := range []struct{ name, at string }{
		{"dcap_qvl_tdx_quote_v5_no_tcb_match.bin", "2026-03-01T00:00:00Z"},
		{"dstack_ratls_asset_quote.bin", "2025-07-01T00:00:00Z"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := quoteBytes(t, tc.name, e[tc.name])
			p := ratls.Policy{MRTD: []string{e[tc.name].MRTD}, Collateral: col}
			polWantTCBFailed(t, p.VerifyQuote(context.Background(), raw, nil, mustTime(t, tc.at)))
		})
	}
}

// polQuoteReport reads README 3.4's dstack quote report: quote and event log.
func polQuoteReport(t testing.TB) ([]byte, []ratls.Event) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testdata, "dstack_quote_report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Quote    string `json:"quote"`
		EventLog string `json:"event_log"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	events, err := ratls.ParseEventLogJSON([]byte(doc.EventLog))
	if err != nil {
		t.Fatal(err)
	}
	return unhex(t, doc.Quote), events
}

// TestE2EPolicyDstackQuoteReport: README 3.4, a dstack quote with full
// DCAP appraisal (UpToDate), full RTMR0-3 replay and its RTMR3 identity.
func TestE2EPolicyDstackQuoteReport(t *testing.T) {
	raw, events := polQuoteReport(t)
	p := ratls.Policy{
		MRTD:        []string{"b24d3b24e9e3c16012376b52362ca09856c4adecb709d5fac33addf1c47e193da075b125b6c364115771390a5461e217"},
		RTMR:        [4]string{3: "0f787c3877f3e95095d5a4d13dd0fe0233803b30120d8469866719dc28f519ce021fe1e53459121e7a5a4443147185a8"},
		AppID:       []string{"3763bc34552cf3a27ff71ad5f7a90471562a1a2d"},
		ComposeHash: []string{"3763BC34552CF3A27FF71AD5F7A90471562A1A2DF552DFC1998CBA2D60DA27E7"},
		KeyProvider: "local-sgx",
		Collateral:  polCollateralDir(t, polBothCollaterals...),
	}
	at := mustTime(t, "2026-03-01T00:00:00Z")
	r := p.VerifyQuote(context.Background(), raw, events, at)
	want := polUnpinned(map[string]string{ratls.CheckKeyBinding: "S", ratls.CheckKMSChain: "S"})
	delete(want, ratls.CheckRTMR3)
	if err := polWantReport(t, r, want); err != nil {
		t.Fatalf("3.4 refused: %s", failureDetail(err))
	}
	if r.Appraisal.Status != ratls.StatusUpToDate || r.Appraisal.FMSPC != "90c06f000000" {
		t.Errorf("appraisal %+v", r.Appraisal)
	}
	if d := polDetailOf(r, ratls.CheckEventLog); d != "28 events reproduce RTMR0, RTMR1, RTMR2, RTMR3" {
		t.Errorf("event_log detail %q", d)
	}
	if r.Identity == nil || hex.EncodeToString(r.Identity.AppID) != "3763bc34552cf3a27ff71ad5f7a90471562a1a2d" ||
		r.Identity.KeyProvider == nil || r.Identity.KeyProvider.Name != "local-sgx" {
		t.Errorf("identity %+v", r.Identity)
	}

	// An altered compose-hash payload breaks the replay: the identity
	// checks are then skipped, never evaluated on unmeasured events.
	alt := append([]ratls.Event(nil), events...)
	for i := range alt {
		if alt[i].Event == "compose-hash" {
			alt[i].Payload = []byte(strings.Repeat("0", 64))
			alt[i].Digest = nil
		}
	}
	r = p.VerifyQuote(context.Background(), raw, alt, at)
	if c := r.Check(ratls.CheckEventLog); !c.Failed() {
		t.Fatalf("altered event log accepted: %+v", *c)
	}
	for _, n := range []string{ratls.CheckAppID, ratls.CheckComposeHash, ratls.CheckKeyProvider} {
		if c := r.Check(n); !c.Skipped || !strings.Contains(c.Detail, "event_log") {
			t.Errorf("check %s %+v, want skipped for event_log", n, *c)
		}
	}

	// Other pins refuse with their classes.
	p.AppID, p.ComposeHash, p.KeyProvider = []string{strings.Repeat("ab", 20)}, []string{strings.Repeat("cd", 32)}, "kms"
	r = p.VerifyQuote(context.Background(), raw, events, at)
	want[ratls.CheckAppID], want[ratls.CheckComposeHash], want[ratls.CheckKeyProvider] =
		"F:attestation_app_id", "F:attestation_compose_hash", "F:attestation_key_provider"
	wantClass(t, polWantReport(t, r, want), ratls.ClassAppID)
}

// polOidAttestation is the .1.8 VersionedAttestation extension (README 5.1).
var polOidAttestation = ratls.OIDAttestation

// polCertWith makes a self-signed certificate with a fresh key carrying the
// given extensions.
func polCertWith(t testing.TB, exts []pkix.Extension, nb, na time.Time) *x509.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "ratls"},
		NotBefore: nb, NotAfter: na, ExtraExtensions: exts}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestE2EPolicyDstackSimulatorCertificate: README 3.5's genuine dstack
// evidence in a certificate's .1.8 extension. Everything about the TD
// verifies, but its report_data is zero, so it binds no key; and the
// certificate is not issued by the KMS root the TD measured.
func TestE2EPolicyDstackSimulatorCertificate(t *testing.T) {
	att, err := os.ReadFile(filepath.Join(testdata, "dstack_simulator_attestation.bin"))
	if err != nil {
		t.Fatal(err)
	}
	val, err := asn1.Marshal(att)
	if err != nil {
		t.Fatal(err)
	}
	at := mustTime(t, "2026-02-01T00:00:00Z")
	leaf := polCertWith(t, []pkix.Extension{{Id: polOidAttestation, Value: val}}, at.Add(-time.Hour), at.Add(time.Hour))
	blk, _ := pem.Decode(polReadTestdata(t, "dstack_simulator_kms_ca.pem"))
	kmsCA, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(kmsCA)
	p := ratls.Policy{MRTD: []string{polSimMRTD}, SkipTCB: true, KMSRoots: roots, KeyProvider: "kms",
		AppID: []string{"5bb4ff9a3837357f19dc176407a5709c62eb6c56"}, ComposeHash: []string{"c143116fef3940e7f776bfc0919c256232ae5338a6e948c96b711e0b2383483a"}}
	r := p.VerifyCertificate(context.Background(), leaf, at)
	err = polWantReport(t, r, polUnpinned(map[string]string{ratls.CheckTCB: "S", ratls.CheckTCBStatus: "S",
		ratls.CheckKeyBinding: "F:attestation_key_binding", ratls.CheckKMSChain: "F:attestation_kms_chain"}))
	wantClass(t, err, ratls.ClassKeyBinding)
	if r.Evidence == nil || r.Evidence.Format != "v0" || len(r.Evidence.EventLog) == 0 {
		t.Errorf("evidence %+v", r.Evidence)
	}
	if d := polDetailOf(r, ratls.CheckEventLog); !strings.Contains(d, "reproduce RTMR0, RTMR1, RTMR2, RTMR3") {
		t.Errorf("event_log detail %q", d)
	}
	if !strings.Contains(r.Check(ratls.CheckKMSChain).Err.Evidence, "CN=ratls") {
		t.Errorf("kms_chain evidence %q", r.Check(ratls.CheckKMSChain).Err.Evidence)
	}

	// A certificate without evidence.
	r = p.VerifyCertificate(context.Background(), polCertWith(t, nil, at.Add(-time.Hour), at.Add(time.Hour)), at)
	if c := r.Check(ratls.CheckEvidence); !c.Failed() || c.Class != "attestation_no_evidence" || r.Err() != c.Err {
		t.Fatalf("evidence check %+v", *c)
	}
}

func polReadTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testdata, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// polTestCA is a KMS root CA for the simulator tests.
func polTestCA(t testing.TB, cn string) *tls.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k, Leaf: c}
}

func polRuntimeEvent(name string, payload []byte) ratls.Event {
	d := ratls.RuntimeEventDigest(ratls.RuntimeEventType, name, payload)
	return ratls.Event{IMR: 3, EventType: ratls.RuntimeEventType, Digest: d[:], Event: name, Payload: payload}
}

const (
	polSimAppID   = "00112233445566778899aabbccddeeff00112233"
	polSimCompose = "a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0"
)

// polSimEvents are dstack-style RTMR3 events naming kms as key provider.
func polSimEvents(t testing.TB, kms *x509.Certificate) []ratls.Event {
	kp, err := json.Marshal(map[string]string{"name": "kms", "id": hex.EncodeToString(kms.RawSubjectPublicKeyInfo)})
	if err != nil {
		t.Fatal(err)
	}
	return []ratls.Event{
		polRuntimeEvent("system-preparing", nil),
		polRuntimeEvent("app-id", unhex(t, polSimAppID)),
		polRuntimeEvent("compose-hash", unhex(t, polSimCompose)),
		polRuntimeEvent("key-provider", kp),
		polRuntimeEvent("system-ready", nil),
	}
}

// TestE2EPolicySimulator: the simulator provider end to end, the only
// positive key binding available (README 5.2).
func TestE2EPolicySimulator(t *testing.T) {
	ctx := context.Background()
	kms := polTestCA(t, "Test KMS root")
	sim, err := ratls.NewSimulator(ratls.SimulatorOptions{MRTD: ratls.DefaultSimulatorMRTD(), Events: polSimEvents(t, kms.Leaf)})
	if err != nil {
		t.Fatal(err)
	}
	mrtd := ratls.DefaultSimulatorMRTD()
	base := ratls.Policy{MRTD: []string{hex.EncodeToString(mrtd[:])}, AllowSimulator: true,
		AppID: []string{polSimAppID}, ComposeHash: []string{polSimCompose}, KeyProvider: "kms"}
	newLeaf := func(opts ratls.CertificateOptions) *x509.Certificate {
		t.Helper()
		opts.DNSNames = []string{"localhost"}
		c, err := ratls.NewCertificate(ctx, sim, opts)
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		return leaf
	}
	selfSigned := newLeaf(ratls.CertificateOptions{})
	allPass := func() map[string]string {
		return polUnpinned(map[string]string{ratls.CheckTCB: "S", ratls.CheckTCBStatus: "S", ratls.CheckKMSChain: "S"})
	}

	for _, leaf := range []*x509.Certificate{selfSigned, newLeaf(ratls.CertificateOptions{Legacy: true})} {
		p := base
		r := p.VerifyCertificate(ctx, leaf, time.Now())
		if err := polWantReport(t, r, allPass()); err != nil {
			t.Fatalf("simulator evidence refused: %s", failureDetail(err))
		}
		if d := polDetailOf(r, ratls.CheckTCB); !strings.Contains(d, "simulated quotes have no Intel collateral") {
			t.Errorf("tcb detail %q", d)
		}
		if !strings.Contains(polDetailOf(r, ratls.CheckPolicy), "AllowSimulator") || !strings.Contains(polDetailOf(r, ratls.CheckQuote), "SIMULATED") {
			t.Errorf("simulation not reported: %q / %q", polDetailOf(r, ratls.CheckPolicy), polDetailOf(r, ratls.CheckQuote))
		}
		if r.Identity == nil || hex.EncodeToString(r.Identity.ComposeHash) != polSimCompose {
			t.Errorf("identity %+v", r.Identity)
		}
	}

	// Without AllowSimulator the quote is refused as simulated.
	p := base
	p.AllowSimulator, p.SkipTCB = false, true
	r := p.VerifyCertificate(ctx, selfSigned, time.Now())
	want := map[string]string{ratls.CheckQuote: "F:attestation_simulator"}
	for _, n := range ratls.CheckNames[3:] {
		want[n] = "S"
	}
	wantClass(t, polWantReport(t, r, want), ratls.ClassSimulator)

	// Another MRTD allowlisted.
	p = base
	p.MRTD = []string{strings.Repeat("ee", 48)}
	r = p.VerifyCertificate(ctx, selfSigned, time.Now())
	want = allPass()
	want[ratls.CheckMRTD] = "F:attestation_mrtd"
	wantClass(t, polWantReport(t, r, want), ratls.ClassMRTD)

	// The same evidence on a certificate with another key.
	var exts []pkix.Extension
	for _, e := range selfSigned.Extensions {
		if len(e.Id) > 7 && e.Id[6] == 62397 {
			exts = append(exts, e)
		}
	}
	if len(exts) == 0 {
		t.Fatal("simulator certificate has no RA-TLS extension")
	}
	other := polCertWith(t, exts, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	r = base.VerifyCertificate(ctx, other, time.Now())
	want = allPass()
	want[ratls.CheckKeyBinding] = "F:attestation_key_binding"
	wantClass(t, polWantReport(t, r, want), ratls.ClassKeyBinding)

	// KMS chain: issued by the KMS root the TD measured.
	issued := newLeaf(ratls.CertificateOptions{Issuer: kms})
	roots := x509.NewCertPool()
	roots.AddCert(kms.Leaf)
	p = base
	p.KMSRoots = roots
	r = p.VerifyChain(ctx, []*x509.Certificate{issued}, time.Now())
	want = allPass()
	delete(want, ratls.CheckKMSChain)
	if err := polWantReport(t, r, want); err != nil {
		t.Fatalf("KMS-issued certificate refused: %s", failureDetail(err))
	}
	// A self-signed certificate does not chain to the KMS root.
	r = p.VerifyCertificate(ctx, selfSigned, time.Now())
	want[ratls.CheckKMSChain] = "F:attestation_kms_chain"
	wantClass(t, polWantReport(t, r, want), ratls.ClassKMSChain)
	// Issued by a pinned root that is not the measured key provider.
	rogue := polTestCA(t, "Rogue KMS root")
	roots.AddCert(rogue.Leaf)
	r = p.VerifyCertificate(ctx, newLeaf(ratls.CertificateOptions{Issuer: rogue}), time.Now())
	fe := wantClass(t, polWantReport(t, r, want), ratls.ClassKMSChain)
	if !strings.Contains(fe.Evidence, hex.EncodeToString(kms.Leaf.RawSubjectPublicKeyInfo)) {
		t.Errorf("kms_chain evidence %q lacks the measured id", fe.Evidence)
	}
}

// TestE2EPolicyDstackLite: README 3.6, dstack's stripped certificate
// evidence (3 ACPI events of RTMR0, RTMR3 events with empty digests):
// RTMR3 and the identity verify; the partial RTMR0 log is reported, not
// refused.
func TestE2EPolicyDstackLite(t *testing.T) {
	var j struct {
		Attestation string `json:"attestation"`
	}
	if err := json.Unmarshal(polReadTestdata(t, "dstack_tdx_lite_attestation.json"), &j); err != nil {
		t.Fatal(err)
	}
	ev, err := ratls.ParseAttestationV0(unhex(t, j.Attestation))
	if err != nil {
		t.Fatal(err)
	}
	p := ratls.Policy{MRTD: []string{"fd685522ce791dfef67414614eb07d03fc07a32c5a66f36288b329dab92b724b1564c73d436ffb9ea84488c51ac5a1c5"},
		SkipTCB: true, ComposeHash: []string{"86b0e55f2fa8e4fb69d890f14f54d5612707646e2573d54e0d2ddaaade77caa9"}, KeyProvider: "kms"}
	r := p.VerifyQuote(context.Background(), ev.Quote, ev.EventLog, mustTime(t, "2026-05-01T00:00:00Z"))
	err = polWantReport(t, r, polUnpinned(map[string]string{ratls.CheckTCB: "S", ratls.CheckTCBStatus: "S",
		ratls.CheckAppID: "S", ratls.CheckKeyBinding: "S", ratls.CheckKMSChain: "S"}))
	if err != nil {
		t.Fatalf("lite evidence refused: %s", failureDetail(err))
	}
	if d := polDetailOf(r, ratls.CheckEventLog); !strings.Contains(d, "12 events reproduce RTMR3; the log does not reproduce RTMR0 (3 events)") {
		t.Errorf("event_log detail %q", d)
	}
}

// TestE2EPolicyEnvelopeReportDataMismatch: a V0 envelope whose own
// report_data differs from its quote's is refused before anything else is
// believed, as dstack's verifier refuses it.
func TestE2EPolicyEnvelopeReportDataMismatch(t *testing.T) {
	ev, err := ratls.ParseAttestationV0(polReadTestdata(t, "dstack_simulator_attestation.bin"))
	if err != nil {
		t.Fatal(err)
	}
	ev.ReportData = bytes.Repeat([]byte{0x5a}, 64)
	env, err := ev.MarshalV0()
	if err != nil {
		t.Fatal(err)
	}
	val, err := asn1.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	at := mustTime(t, "2026-02-01T00:00:00Z")
	leaf := polCertWith(t, []pkix.Extension{{Id: ratls.OIDAttestation, Value: val}}, at.Add(-time.Hour), at.Add(time.Hour))
	p := ratls.Policy{MRTD: []string{polSimMRTD}, SkipTCB: true}
	r := p.VerifyCertificate(context.Background(), leaf, at)
	c := r.Check(ratls.CheckEvidence)
	if !c.Failed() || c.Class != ratls.ClassExtension || !strings.Contains(c.Err.Evidence, "envelope.report_data") {
		t.Fatalf("evidence check %+v", *c)
	}
	wantClass(t, r.Err(), ratls.ClassExtension)
	if q := r.Check(ratls.CheckQuote); !q.Skipped {
		t.Errorf("quote check after a mismatched envelope = %+v, want skipped", *q)
	}
}
