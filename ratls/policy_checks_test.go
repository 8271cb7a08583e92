package ratls

// Internal tests of the individual policy checks over parsed genuine
// quotes (README sections 3.2-3.5). They use only this package's parser
// and verifier, never another engineer's code, so they hold on their own.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
)

var polTestdata = filepath.Join("..", "..", "shared", "testdata", "ratls")

const (
	polV4MRTD     = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
	polV4RTMR0    = "44c0197b39157fdd7a4dcc44767f9d6b0bb3977c7a8e347b8492f827fe9d9e5c48aca29b220b80b6a540cf994b9bc9c0"
	polSimAppID   = "5bb4ff9a3837357f19dc176407a5709c62eb6c56"
	polSimCompose = "c143116fef3940e7f776bfc0919c256232ae5338a6e948c96b711e0b2383483a"
)

func polRead(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(polTestdata, name))
	if err != nil {
		t.Fatalf("RA-TLS test data missing (expected beside the repository): %v", err)
	}
	return b
}

// polQuote parses a genuine quote: a raw .bin, the simulator's SCALE
// envelope (quote of 5010 bytes at offset 4), or a dstack JSON "quote".
func polQuote(t testing.TB, name string) *Quote {
	t.Helper()
	b := polRead(t, name)
	switch {
	case name == "dstack_simulator_attestation.bin":
		b = b[4 : 4+5010]
	case strings.HasSuffix(name, ".json"):
		var j struct{ Quote string }
		if err := json.Unmarshal(b, &j); err != nil {
			t.Fatal(err)
		}
		var err error
		if b, err = hex.DecodeString(j.Quote); err != nil {
			t.Fatal(err)
		}
	}
	q, err := ParseQuote(b)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return q
}

func polCompile(t testing.TB, p Policy) *compiledPolicy {
	t.Helper()
	if p.Collateral == nil && !p.AllowSimulator {
		p.SkipTCB = true
	}
	if len(p.MRTD) == 0 && !p.AllowAnyMRTD {
		p.MRTD = []string{polV4MRTD}
	}
	c, err := p.compile()
	if err != nil {
		t.Fatalf("compile: %s", err.Detail())
	}
	return c
}

func wantPass(t testing.TB, c Check, name string) {
	t.Helper()
	if c.Name != name || !c.Passed || c.Skipped || c.Err != nil || c.Detail == "" {
		t.Fatalf("check %+v: want %s passed with a detail", c, name)
	}
}

func wantSkip(t testing.TB, c Check, name, detail string) {
	t.Helper()
	if c.Name != name || c.Passed || !c.Skipped || c.Err != nil || !strings.Contains(c.Detail, detail) {
		t.Fatalf("check %+v: want %s skipped with detail containing %q", c, name, detail)
	}
}

// wantFail asserts a refusal of class cl whose evidence names each string
// in evidence and which has a fix.
func wantFail(t testing.TB, c Check, name string, cl failure.Class, evidence ...string) {
	t.Helper()
	if c.Name != name || c.Passed || c.Skipped || c.Err == nil {
		t.Fatalf("check %+v: want %s failed", c, name)
	}
	if c.Class != cl || c.Err.Class != cl {
		t.Fatalf("check %s class %s / %s (%s), want %s", name, c.Class, c.Err.Class, c.Err.Detail(), cl)
	}
	if c.Err.Fix == "" || c.Err.Evidence == "" || c.Detail != c.Err.Message {
		t.Fatalf("check %s lacks fix/evidence/detail: %s", name, c.Err.Detail())
	}
	for _, e := range evidence {
		if !strings.Contains(c.Err.Evidence, e) {
			t.Errorf("check %s evidence %q lacks %q", name, c.Err.Evidence, e)
		}
	}
}

func TestPolicyCheckMRTD(t *testing.T) {
	q := polQuote(t, "dcap_qvl_tdx_quote_v4.bin")
	// README 3.2: the uppercase 0X-prefixed MRTD matches after normalisation.
	c := polCompile(t, Policy{MRTD: []string{"deadbeef" + strings.Repeat("00", 44), "0X" + strings.ToUpper(polV4MRTD)}})
	wantPass(t, checkMRTD(c, false, &q.Body), CheckMRTD)

	c = polCompile(t, Policy{MRTD: []string{"deadbeef" + strings.Repeat("00", 44)}})
	wantFail(t, checkMRTD(c, false, &q.Body), CheckMRTD, ClassMRTD,
		"body.mrtd", "deadbeef"+strings.Repeat("00", 44), polV4MRTD)

	c = polCompile(t, Policy{AllowAnyMRTD: true})
	wantSkip(t, checkMRTD(c, true, &q.Body), CheckMRTD, polV4MRTD)
}

func TestPolicyCheckRTMR(t *testing.T) {
	q := polQuote(t, "dcap_qvl_tdx_quote_v4.bin")
	zero := strings.Repeat("00", 48)
	c := polCompile(t, Policy{RTMR: [4]string{"0x" + strings.ToUpper(polV4RTMR0), zero, "", zero}})
	wantPass(t, checkRTMR(0, c.rtmr[0], &q.Body), CheckRTMR0)
	wantFail(t, checkRTMR(1, c.rtmr[1], &q.Body), CheckRTMR1, ClassRTMR, "body.rtmr1", zero,
		"0084452c01668329d4bc06acdf58a7205c26743304509973949e5619bf81a6a7aea8c323c173019b3093d54e579e9378")
	wantSkip(t, checkRTMR(2, c.rtmr[2], &q.Body), CheckRTMR2, "not pinned")
	// RTMR3 of this quote is zero (no application events).
	wantPass(t, checkRTMR(3, c.rtmr[3], &q.Body), CheckRTMR3)
}

func TestPolicyCheckDebug(t *testing.T) {
	for _, name := range []string{"dcap_qvl_tdx_quote_v4.bin", "dcap_qvl_tdx_quote_v5_no_tcb_match.bin", "dstack_simulator_attestation.bin"} {
		q := polQuote(t, name)
		wantPass(t, checkDebug(&q.Body, false), CheckDebug)
		// Setting the bit in the bytes would break the signature (README
		// 3.5), so the parsed structure is changed instead.
		q.Body.TDAttributes[0] |= 1
		wantFail(t, checkDebug(&q.Body, false), CheckDebug, ClassDebug, "td_attributes", "0100001000000000")
		if c := checkDebug(&q.Body, true); !c.Passed || !strings.Contains(c.Detail, "WARNING") {
			t.Errorf("AllowDebug: debug TD check = %+v, want passed with a warning", c)
		}
	}
}

func TestPolicyCheckSEAM(t *testing.T) {
	v4 := polQuote(t, "dcap_qvl_tdx_quote_v4.bin")
	wantPass(t, checkSEAM(&v4.Body, v4.BodyType), CheckSEAM)
	v5 := polQuote(t, "dcap_qvl_tdx_quote_v5_no_tcb_match.bin")
	if v5.BodyType != BodyTypeTD15 {
		t.Fatalf("v5 body type %d", v5.BodyType)
	}
	c := checkSEAM(&v5.Body, v5.BodyType)
	wantPass(t, c, CheckSEAM)
	if !strings.Contains(c.Detail, "mr_service_td") {
		t.Errorf("TD 1.5 detail %q does not mention mr_service_td", c.Detail)
	}

	m := *v4
	m.Body.MRSignerSEAM[47] = 1
	wantFail(t, checkSEAM(&m.Body, m.BodyType), CheckSEAM, ClassSEAM, "mr_signer_seam")
	m = *v4
	m.Body.SEAMAttributes[0] = 0x80
	wantFail(t, checkSEAM(&m.Body, m.BodyType), CheckSEAM, ClassSEAM, "seam_attributes", "8000000000000000")
	m = *v5
	m.Body.MRServiceTD[0] = 0xaa
	wantFail(t, checkSEAM(&m.Body, m.BodyType), CheckSEAM, ClassSEAM, "mr_service_td")
}

func TestPolicyCheckTEETCBSVN(t *testing.T) {
	q := polQuote(t, "dcap_qvl_tdx_quote_v4.bin") // tee_tcb_svn 06010300..
	rest := strings.Repeat("00", 13)
	for _, tc := range []struct {
		min  string
		pass bool
	}{
		{"060103" + rest, true},
		{"0X050000" + rest, true},
		{"070000" + rest, false}, // component 0
		{"060200" + rest, false}, // component 1 higher although component 0 equal
		{"000004" + rest, false}, // component 2
	} {
		c := polCompile(t, Policy{MinTEETCBSVN: tc.min})
		chk := checkTEETCBSVN(c.minSVN, &q.Body)
		if tc.pass {
			wantPass(t, chk, CheckTEETCBSVN)
		} else {
			wantFail(t, chk, CheckTEETCBSVN, ClassTEETCBSVN, "tee_tcb_svn", "06010300")
		}
	}
	wantSkip(t, checkTEETCBSVN(nil, &q.Body), CheckTEETCBSVN, "no minimum")
}

func TestPolicyCheckTCBStatus(t *testing.T) {
	a := &Appraisal{Status: StatusSWHardeningNeeded, PlatformStatus: StatusSWHardeningNeeded,
		ModuleStatus: StatusUpToDate, QEStatus: StatusUpToDate, FMSPC: "b0c06f000000",
		AdvisoryIDs: []string{"INTEL-SA-00615", "INTEL-SA-00657"}}
	def := polCompile(t, Policy{})
	wantFail(t, checkTCBStatus(def.accept, a), CheckTCBStatus, ClassTCBStatus,
		"SWHardeningNeeded", "INTEL-SA-00615, INTEL-SA-00657", "[UpToDate]")
	relaxed := polCompile(t, Policy{AcceptTCBStatuses: []TCBStatus{StatusUpToDate, StatusSWHardeningNeeded}})
	c := checkTCBStatus(relaxed.accept, a)
	wantPass(t, c, CheckTCBStatus)
	if !strings.Contains(c.Detail, "INTEL-SA-00657") {
		t.Errorf("accepted status detail %q hides the advisories", c.Detail)
	}
	wantPass(t, checkTCBStatus(def.accept, &Appraisal{Status: StatusUpToDate}), CheckTCBStatus)
	// Revoked can never be accepted, even by a hand-built policy.
	wantFail(t, checkTCBStatus([]TCBStatus{StatusRevoked}, &Appraisal{Status: StatusRevoked}), CheckTCBStatus, ClassTCBStatus, "Revoked")
}

// polLeaf makes a self-signed P-256 certificate.
func polLeaf(t testing.TB) *x509.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ratls"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
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

func TestPolicyCheckKeyBinding(t *testing.T) {
	leaf := polLeaf(t)
	// README 3.5: the simulator quote's report_data is zero, so it binds
	// no certificate.
	sim := polQuote(t, "dstack_simulator_attestation.bin")
	want := KeyBinding(leaf.RawSubjectPublicKeyInfo)
	wantFail(t, checkKeyBinding(&sim.Body, leaf), CheckKeyBinding, ClassKeyBinding,
		"report_data", hex.EncodeToString(want[:]), strings.Repeat("00", 64))
	// A genuine quote with arbitrary report_data (README 3.7) too.
	asset := polQuote(t, "dstack_ratls_asset_quote.bin")
	wantFail(t, checkKeyBinding(&asset.Body, leaf), CheckKeyBinding, ClassKeyBinding, hex.EncodeToString(asset.Body.ReportData[:]))

	synthetic := sim.Body
	synthetic.ReportData = want
	wantPass(t, checkKeyBinding(&synthetic, leaf), CheckKeyBinding)
	// One bit off in the last byte is refused: all 64 bytes are compared.
	synthetic.ReportData[63] ^= 1
	wantFail(t, checkKeyBinding(&synthetic, leaf), CheckKeyBinding, ClassKeyBinding)
	// Another certificate's key is refused.
	synthetic.ReportData = want
	wantFail(t, checkKeyBinding(&synthetic, polLeaf(t)), CheckKeyBinding, ClassKeyBinding)
}

// polJSONEvents reads a dstack JSON report's event log (README 3.4,
// 3.6) independently of the evidence parser.
func polJSONEvents(t testing.TB, name string) []Event {
	t.Helper()
	var doc struct {
		EventLog string `json:"event_log"`
	}
	if err := json.Unmarshal(polRead(t, name), &doc); err != nil {
		t.Fatal(err)
	}
	var raw []struct {
		IMR       uint32 `json:"imr"`
		EventType uint32 `json:"event_type"`
		Digest    string `json:"digest"`
		Event     string `json:"event"`
		Payload   string `json:"event_payload"`
	}
	if err := json.Unmarshal([]byte(doc.EventLog), &raw); err != nil {
		t.Fatal(err)
	}
	var evs []Event
	for _, r := range raw {
		evs = append(evs, Event{IMR: r.IMR, EventType: r.EventType, Digest: polUnhex(t, r.Digest), Event: r.Event, Payload: polUnhex(t, r.Payload)})
	}
	return evs
}

// polReplay replays events: stored digests for RTMR0-2, the V1 digest
// recomputed for runtime events (README 5.3).
func polReplay(evs []Event) (out [4][48]byte, covered [4]bool, counts [4]int) {
	for _, e := range evs {
		d := e.Digest
		if e.EventType == RuntimeEventType {
			v := RuntimeEventDigest(e.EventType, e.Event, e.Payload)
			d = v[:]
		}
		out[e.IMR] = Extend(out[e.IMR], d)
		covered[e.IMR] = true
		counts[e.IMR]++
	}
	return out, covered, counts
}

func polCheckReplay(evs []Event, r *TDReport) Check {
	rep, cov, counts := polReplay(evs)
	return checkReplay(rep, cov, counts, r)
}

func polFilter(evs []Event, keep func(Event) bool) []Event {
	var out []Event
	for _, e := range evs {
		if keep(e) {
			out = append(out, e)
		}
	}
	return out
}

func TestPolicyCheckReplay(t *testing.T) {
	q := polQuote(t, "dstack_quote_report.json")
	evs := polJSONEvents(t, "dstack_quote_report.json")
	if len(evs) != 28 {
		t.Fatalf("%d events, want 28", len(evs))
	}
	c := polCheckReplay(evs, &q.Body)
	wantPass(t, c, CheckEventLog)
	if c.Detail != "28 events reproduce RTMR0, RTMR1, RTMR2, RTMR3" {
		t.Errorf("detail %q", c.Detail)
	}

	// An altered application event changes the replayed RTMR3.
	alt := append([]Event(nil), evs...)
	for i := range alt {
		if alt[i].Event == "compose-hash" {
			alt[i].Payload = append([]byte{0xff}, alt[i].Payload[1:]...)
		}
	}
	wantFail(t, polCheckReplay(alt, &q.Body), CheckEventLog, ClassRTMR3Replay,
		"RTMR3", "0f787c3877f3e95095d5a4d13dd0fe0233803b30120d8469866719dc28f519ce021fe1e53459121e7a5a4443147185a8", "8 RTMR3 events, 28 in all")
	// So does a dropped one, or an added one.
	wantFail(t, polCheckReplay(polFilter(evs, func(e Event) bool { return e.Event != "key-provider" }), &q.Body), CheckEventLog, ClassRTMR3Replay, "7 RTMR3 events")
	wantFail(t, polCheckReplay(append(append([]Event(nil), evs...), evs[len(evs)-1]), &q.Body), CheckEventLog, ClassRTMR3Replay, "9 RTMR3 events")

	// A log that does not reproduce RTMR1 (a kernel event dropped) is
	// reported, not refused: nothing is taken from RTMR0-2 events.
	first := true
	noKernel := polFilter(evs, func(e Event) bool {
		drop := e.IMR == 1 && first
		first = first && !drop
		return !drop
	})
	c = polCheckReplay(noKernel, &q.Body)
	wantPass(t, c, CheckEventLog)
	if c.Detail != "27 events reproduce RTMR0, RTMR2, RTMR3; the log does not reproduce RTMR1 (4 events): a partial log (as in dstack's stripped certificates), those events are not trusted" {
		t.Errorf("detail %q", c.Detail)
	}

	// Only the RTMR3 events: RTMR0-2 are not covered.
	c = polCheckReplay(polFilter(evs, func(e Event) bool { return e.IMR == 3 }), &q.Body)
	wantPass(t, c, CheckEventLog)
	if c.Detail != "8 events reproduce RTMR3" {
		t.Errorf("detail %q", c.Detail)
	}

	// No log at all: RTMR3 must then be zero. True for the dcap-qvl
	// sample, false for a dstack quote.
	v4 := polQuote(t, "dcap_qvl_tdx_quote_v4.bin")
	wantPass(t, checkReplay([4][48]byte{}, [4]bool{}, [4]int{}, &v4.Body), CheckEventLog)
	wantFail(t, checkReplay([4][48]byte{}, [4]bool{}, [4]int{}, &q.Body), CheckEventLog, ClassRTMR3Replay, "RTMR3", "replay of 0 RTMR3 events")
}

// TestPolicyCheckReplayLite: README 3.6, dstack's "lite" evidence. Its
// RTMR3 digests are empty (recomputed here), and its certificate form
// keeps only the 3 ACPI events of RTMR0 besides RTMR3: RTMR3 must verify,
// the partial RTMR0 must not sink it.
func TestPolicyCheckReplayLite(t *testing.T) {
	q := polQuote(t, "dstack_tdx_lite_getquote.json")
	evs := polJSONEvents(t, "dstack_tdx_lite_getquote.json")
	c := polCheckReplay(evs, &q.Body)
	wantPass(t, c, CheckEventLog)
	if c.Detail != "29 events reproduce RTMR0, RTMR1, RTMR2, RTMR3" {
		t.Errorf("full log detail %q", c.Detail)
	}
	stripped := polFilter(evs, func(e Event) bool { return e.IMR == 3 || strings.HasPrefix(e.Event, "acpi-") })
	if len(stripped) != 12 {
		t.Fatalf("stripped log of %d events, want 12 (README 3.6)", len(stripped))
	}
	c = polCheckReplay(stripped, &q.Body)
	wantPass(t, c, CheckEventLog)
	if !strings.Contains(c.Detail, "12 events reproduce RTMR3; the log does not reproduce RTMR0 (3 events)") {
		t.Errorf("stripped log detail %q", c.Detail)
	}
}

func polUnhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPolicyCheckIdentity(t *testing.T) {
	// The simulator attestation's RTMR3 identity (README 3.5).
	id := &AppIdentity{AppID: polUnhex(t, polSimAppID), ComposeHash: polUnhex(t, polSimCompose),
		KeyProvider: &KeyProvider{Name: "kms", ID: polUnhex(t, "3059301306072a8648ce3d020106082a8648ce3d0301070342000419b2457dd9b8aa6446d980f136fff7812ecd6c77740eeb0e28b10d56c0c00028a5b6e59dcea307d583bd1f70769e9c116df2bcfb1758a95d8613e7de1c8482c0")}}
	other20, other32 := strings.Repeat("ab", 20), strings.Repeat("cd", 32)

	c := polCompile(t, Policy{AppID: []string{other20, "0x" + strings.ToUpper(polSimAppID)}, ComposeHash: []string{polSimCompose}})
	wantPass(t, checkAppID(c.appID, id), CheckAppID)
	wantPass(t, checkComposeHash(c.composeHash, id), CheckComposeHash)
	wantPass(t, checkKeyProvider("kms", id), CheckKeyProvider)

	c = polCompile(t, Policy{AppID: []string{other20}, ComposeHash: []string{other32}})
	wantFail(t, checkAppID(c.appID, id), CheckAppID, ClassAppID, "app-id", other20, polSimAppID)
	wantFail(t, checkComposeHash(c.composeHash, id), CheckComposeHash, ClassComposeHash, "compose-hash", other32, polSimCompose)
	wantFail(t, checkKeyProvider("local-sgx", id), CheckKeyProvider, ClassKeyProvider, `"local-sgx"`, `"kms"`)

	// Pinned but absent: refused, never taken as a match.
	empty := &AppIdentity{}
	wantFail(t, checkAppID(c.appID, empty), CheckAppID, ClassAppID, "no such event")
	wantFail(t, checkComposeHash(c.composeHash, empty), CheckComposeHash, ClassComposeHash, "no such event")
	wantFail(t, checkKeyProvider("kms", empty), CheckKeyProvider, ClassKeyProvider, "no key-provider event")

	wantSkip(t, checkAppID(nil, id), CheckAppID, polSimAppID)
	wantSkip(t, checkComposeHash(nil, empty), CheckComposeHash, "no compose-hash event")
	wantSkip(t, checkKeyProvider("", id), CheckKeyProvider, "not pinned")
}

// polCA makes a CA and a leaf it issues.
func polCA(t testing.TB, cn string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, k
}

func polIssue(t testing.TB, ca *x509.Certificate, caKey *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "app"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestPolicyCheckKMSChain(t *testing.T) {
	kms, kmsKey := polCA(t, "Test KMS CA")
	other, otherKey := polCA(t, "Other CA")
	leaf := polIssue(t, kms, kmsKey)
	roots := x509.NewCertPool()
	roots.AddCert(kms)
	now := time.Now()
	id := &AppIdentity{KeyProvider: &KeyProvider{Name: "kms", ID: kms.RawSubjectPublicKeyInfo}}

	wantPass(t, checkKMSChain(roots, []*x509.Certificate{leaf}, id, now), CheckKMSChain)
	wantSkip(t, checkKMSChain(nil, []*x509.Certificate{leaf}, id, now), CheckKMSChain, "no KMS roots")

	// Issued under the root, but the TD measured another key provider.
	wrongID := &AppIdentity{KeyProvider: &KeyProvider{Name: "kms", ID: other.RawSubjectPublicKeyInfo}}
	wantFail(t, checkKMSChain(roots, []*x509.Certificate{leaf}, wrongID, now), CheckKMSChain, ClassKMSChain,
		hex.EncodeToString(kms.RawSubjectPublicKeyInfo), hex.EncodeToString(other.RawSubjectPublicKeyInfo))
	wantFail(t, checkKMSChain(roots, []*x509.Certificate{leaf}, &AppIdentity{}, now), CheckKMSChain, ClassKMSChain, "no such event")
	// Measured the right provider, but issued by another CA.
	wantFail(t, checkKMSChain(roots, []*x509.Certificate{polIssue(t, other, otherKey)}, id, now), CheckKMSChain, ClassKMSChain, `issuer "CN=Other CA"`)
	// A self-signed RA-TLS leaf does not chain to the KMS.
	wantFail(t, checkKMSChain(roots, []*x509.Certificate{polLeaf(t)}, id, now), CheckKMSChain, ClassKMSChain)
	// Validity is judged at the verification instant.
	wantFail(t, checkKMSChain(roots, []*x509.Certificate{leaf}, id, now.Add(2*time.Hour)), CheckKMSChain, ClassKMSChain)
}

// TestPolicyKMSRootIsMeasured: the real simulator KMS CA's SPKI is the
// key-provider id its attestation measured (README 3.5), the equality
// checkKMSChain relies on.
func TestPolicyKMSRootIsMeasured(t *testing.T) {
	blk, _ := pem.Decode(polRead(t, "dstack_simulator_kms_ca.pem"))
	ca, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	att := polRead(t, "dstack_simulator_attestation.bin")
	payload := []byte(`{"name":"kms","id":"` + hex.EncodeToString(ca.RawSubjectPublicKeyInfo) + `"}`)
	if !strings.Contains(string(att), string(payload)) {
		t.Fatalf("simulator attestation does not measure key-provider %s", payload)
	}
}
