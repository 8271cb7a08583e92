package attestation_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/attestation"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/testpki"
	"github.com/pgtrust/pgtrust/ratls"
)

var testdata = filepath.Join("..", "..", "..", "shared", "testdata", "ratls")

const sampleMRTD = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"

func readData(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testdata, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sampleQuote(t *testing.T) (*ratls.Quote, []byte) {
	t.Helper()
	raw := readData(t, "dcap_qvl_tdx_quote_v4.bin")
	q, err := ratls.ParseQuote(raw)
	if err != nil {
		t.Fatal(err)
	}
	return q, raw
}

// report is a policy report as ratls produces it: the genuine sample quote,
// an appraisal, an app identity, and checks that pass, are skipped and fail.
func report(t *testing.T, failMRTD bool) *ratls.Report {
	q, _ := sampleQuote(t)
	mrtd := ratls.Check{Name: "mrtd", Class: "attestation_mrtd", Passed: true, Detail: "MRTD " + sampleMRTD + " is allowed"}
	if failMRTD {
		mrtd = ratls.Check{Name: "mrtd", Class: "attestation_mrtd",
			Err: failure.New("attestation_mrtd", "MRTD is not in the allowlist").
				WithEvidence("mrtd: expected one of [deadbeef…], got %s", sampleMRTD).
				WithFix("add the MRTD to --mrtd if this firmware is trusted")}
	}
	return &ratls.Report{
		Checks: []ratls.Check{
			{Name: "quote", Class: "attestation_quote_signature", Passed: true, Detail: "signatures and PCK chain verified"},
			{Name: "tcb_status", Class: "attestation_tcb_status", Passed: true, Detail: "UpToDate is accepted"},
			mrtd,
			{Name: "rtmr0", Class: "attestation_rtmr", Skipped: true, Detail: "not pinned"},
		},
		Quote: q,
		Appraisal: &ratls.Appraisal{Status: ratls.StatusSWHardeningNeeded, PlatformStatus: ratls.StatusSWHardeningNeeded,
			ModuleStatus: ratls.StatusUpToDate, QEStatus: ratls.StatusUpToDate, AdvisoryIDs: []string{"INTEL-SA-00615", "INTEL-SA-00828"},
			FMSPC: "b0c06f000000", TCBEvaluationDataNumber: 17, TCBDate: time.Date(2024, 3, 13, 0, 0, 0, 0, time.UTC),
			CollateralValidUntil: time.Date(2025, 7, 19, 10, 0, 35, 0, time.UTC)},
		Identity: &ratls.AppIdentity{AppID: []byte{0xab, 0xcd}, ComposeHash: []byte{0x01, 0x02, 0x03},
			KeyProvider: &ratls.KeyProvider{Name: "kms", ID: []byte{0x30, 0x59}}, Events: []string{"app-id", "compose-hash", "key-provider"}},
		Evidence: &ratls.Evidence{Format: "v0", EventLog: make([]ratls.Event, 3)},
	}
}

var at = time.Date(2025, 7, 1, 0, 0, 0, 0, time.UTC)

func TestDocumentAndText(t *testing.T) {
	d := attestation.NewDocument(report(t, false), "quote q.bin", at, nil, nil)
	if !d.OK || d.Class != failure.OK || d.Error != nil || len(d.Checks) != 4 {
		t.Fatalf("passing report: %+v", d)
	}
	if s := []string{d.Checks[0].Status, d.Checks[2].Status, d.Checks[3].Status}; strings.Join(s, ",") != "pass,pass,skip" {
		t.Errorf("statuses %v", s)
	}
	m := d.Measurements
	if m == nil || !m.Verified || m.MRTD != sampleMRTD || m.RTMR[3] != strings.Repeat("0", 96) ||
		!strings.HasPrefix(m.RTMR[0], "44c0197b") || m.TCBStatus != "SWHardeningNeeded" || m.FMSPC != "b0c06f000000" ||
		len(m.AdvisoryIDs) != 2 || m.AppID != "abcd" || m.ComposeHash != "010203" || m.KeyProvider != "kms" ||
		m.KeyProviderID != "3059" || m.EventCount != 3 || m.EvidenceFormat != "v0" || m.Debug || m.QuoteVersion != 4 {
		t.Fatalf("measurements %+v", m)
	}
	var text strings.Builder
	d.WriteText(&text)
	for _, want := range []string{"attestation of quote q.bin at 2025-07-01T00:00:00Z", "PASS  quote", "SKIP  rtmr0       not pinned",
		"MRTD  ", sampleMRTD, "SWHardeningNeeded (platform SWHardeningNeeded, TDX module UpToDate, QE UpToDate)",
		"INTEL-SA-00615, INTEL-SA-00828", "b0c06f000000", "compose hash", "010203", "kms (id 3059)", "verdict: attested"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, text.String())
		}
	}

	// A failing check: the document's class and error are the check's,
	// and the text shows class, evidence and fix under it.
	d = attestation.NewDocument(report(t, true), "quote q.bin", at, nil, nil)
	if d.OK || d.Class != "attestation_mrtd" || d.Error == nil || d.Error.Fix == "" || d.Checks[2].Status != "fail" ||
		!strings.Contains(d.Checks[2].Evidence, sampleMRTD) {
		t.Fatalf("failing report: %+v", d)
	}
	text.Reset()
	d.WriteText(&text)
	for _, want := range []string{"FAIL  mrtd        MRTD is not in the allowlist", "class:    attestation_mrtd", "evidence: mrtd: expected",
		"fix:      add the MRTD", "verdict: attestation refused: MRTD is not in the allowlist"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, text.String())
		}
	}

	// JSON round trip keeps the shape.
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"ok", "class", "source", "at", "checks", "measurements", "error"} {
		if _, ok := back[k]; !ok {
			t.Errorf("JSON lacks %q: %s", k, b)
		}
	}
}

// TestDocumentFailsClosed: a report without checks, or a failed check
// without an error, never reads as attested.
func TestDocumentFailsClosed(t *testing.T) {
	if d := attestation.NewDocument(&ratls.Report{}, "x", at, nil, nil); d.OK || d.Error == nil {
		t.Errorf("empty report attested: %+v", d)
	}
	if d := attestation.NewDocument(nil, "x", at, nil, nil); d.OK || d.Class != attestation.ClassNoEvidence {
		t.Errorf("nil report attested: %+v", d)
	}
	d := attestation.NewDocument(&ratls.Report{Checks: []ratls.Check{{Name: "debug"}}}, "x", at, nil, nil)
	if d.OK || d.Class != "attestation_debug" || d.Checks[0].Status != "fail" {
		t.Errorf("check without error: %+v", d)
	}
}

// TestUnverifiedMeasurements: when the quote check failed, the values are
// still shown (parsed from the bytes given) but marked as not verified.
func TestUnverifiedMeasurements(t *testing.T) {
	_, raw := sampleQuote(t)
	rep := &ratls.Report{Checks: []ratls.Check{{Name: "quote", Class: "attestation_quote_signature",
		Err: failure.New("attestation_quote_signature", "quote signature does not verify")}}}
	d := attestation.NewDocument(rep, "quote", at, raw, nil)
	if d.Measurements == nil || d.Measurements.Verified || d.Measurements.MRTD != sampleMRTD {
		t.Fatalf("%+v", d.Measurements)
	}
	var text strings.Builder
	d.WriteText(&text)
	if !strings.Contains(text.String(), "NOT verified") || !regexpMatch(`TCB status +not appraised`, text.String()) {
		t.Errorf("%s", text.String())
	}
}

func parseFlags(t *testing.T, args ...string) (*attestation.PolicyFlags, error) {
	t.Helper()
	var pf attestation.PolicyFlags
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	pf.Register(fs, true)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return &pf, nil
}

func TestPolicyFlags(t *testing.T) {
	col := t.TempDir()
	kms := filepath.Join(testdata, "dstack_simulator_kms_ca.pem")
	mrtdB, rtmr3 := strings.Repeat("bb", 48), strings.Repeat("cc", 48)
	appID, compose, svn := strings.Repeat("01", 20), strings.Repeat("02", 32), strings.Repeat("03", 16)
	pf, _ := parseFlags(t, "--mrtd", sampleMRTD, "--mrtd", mrtdB, "--rtmr3", rtmr3, "--accept-tcb-status", "uptodate",
		"--accept-tcb-status", "SWHardeningNeeded,ConfigurationNeeded", "--app-id", appID, "--compose-hash", compose, "--key-provider", "kms",
		"--kms-root-ca", kms, "--allow-simulator", "--allow-debug-mode", "--collateral", col, "--min-tee-tcb-svn", svn, "--at", "2025-07-01T00:00:00Z")
	if !pf.Configured() {
		t.Error("not configured")
	}
	p, err := pf.Policy()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(p.MRTD, ",") != sampleMRTD+","+mrtdB || p.RTMR[3] != rtmr3 || p.RTMR[0] != "" || p.MinTEETCBSVN != svn ||
		len(p.AcceptTCBStatuses) != 3 || p.AcceptTCBStatuses[0] != ratls.StatusUpToDate || p.AcceptTCBStatuses[2] != ratls.StatusConfigurationNeeded ||
		p.AppID[0] != appID || p.ComposeHash[0] != compose || p.KeyProvider != "kms" || p.KMSRoots == nil || !p.AllowSimulator ||
		!p.AllowDebug || p.Collateral == nil || p.SkipTCB || p.AllowAnyMRTD {
		t.Fatalf("policy %+v", p)
	}
	if got, err := pf.Instant(time.Now); err != nil || !got.Equal(at) {
		t.Errorf("instant %v %v", got, err)
	}
	// The KMS root pool holds the dstack KMS CA.
	blk, _ := pem.Decode(readData(t, "dstack_simulator_kms_ca.pem"))
	kc, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kc.Verify(x509.VerifyOptions{Roots: p.KMSRoots, CurrentTime: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}); err != nil {
		t.Errorf("KMS root not in pool: %v", err)
	}

	// --at alone does not configure a policy (doctor's stage stays off).
	pf, _ = parseFlags(t, "--at", "2025-07-01T00:00:00Z")
	if pf.Configured() {
		t.Error("--at alone configured a policy")
	}
	if pf, _ = parseFlags(t); pf.Configured() {
		t.Error("no flags configured a policy")
	}
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	if got, _ := pf.Instant(func() time.Time { return now }); !got.Equal(now) {
		t.Errorf("default instant %v", got)
	}
	pf, _ = parseFlags(t, "--pccs-url", "https://pccs.example.com/sgx/certification/v4", "--allow-any-mrtd")
	if p, err := pf.Policy(); err != nil || p.Collateral == nil || !p.AllowAnyMRTD || p.SkipTCB {
		t.Errorf("pccs: %+v %v", p, err)
	}

	for _, bad := range [][]string{
		{"--mrtd", sampleMRTD, "--accept-tcb-status", "Fine"},
		{"--mrtd", sampleMRTD, "--collateral", col, "--pccs-url", "https://x.example"},
		{"--mrtd", sampleMRTD, "--collateral", filepath.Join(col, "none")},
		{"--mrtd", sampleMRTD, "--pccs-url", "ftp://x.example"},
		{"--mrtd", sampleMRTD, "--kms-root-ca", filepath.Join(col, "none.pem")},
		{"--mrtd", sampleMRTD, "--kms-root-ca", filepath.Join(testdata, "dcap_qvl_tdx_collateral_b0c06f.json")},
	} {
		pf, _ := parseFlags(t, bad...)
		if _, err := pf.Policy(); failure.ClassOf(err) != failure.ConfigInvalid {
			t.Errorf("%v: %v", bad, err)
		}
	}
	pf, _ = parseFlags(t, "--at", "2025-07-01")
	if _, err := pf.Instant(time.Now); failure.ClassOf(err) != failure.ConfigInvalid {
		t.Errorf("bad --at: %v", err)
	}
}

func TestLoadInputs(t *testing.T) {
	_, raw := sampleQuote(t)
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		return testpki.WriteFile(t, dir, name, b, 0o644)
	}
	// Binary and hex quotes give the same bytes.
	in, err := attestation.LoadQuote(filepath.Join(testdata, "dcap_qvl_tdx_quote_v4.bin"), "")
	if err != nil || string(in.Quote) != string(raw) || in.Leaf != nil {
		t.Fatalf("binary quote: %v", err)
	}
	in, err = attestation.LoadQuote(write("q.hex", []byte("0X"+strings.ToUpper(hex.EncodeToString(raw))+"\n")), "")
	if err != nil || string(in.Quote) != string(raw) {
		t.Fatalf("hex quote: %v", err)
	}
	// A certificate, PEM (leaf first) or DER.
	leaf := testpki.SelfSigned(t)
	other := testpki.SelfSigned(t)
	in, err = attestation.LoadFile(write("c.pem", append(append([]byte{}, leaf.CertPEM...), other.CertPEM...)))
	if err != nil || in.Leaf == nil || !in.Leaf.Equal(leaf.Cert) || !strings.HasPrefix(in.Source, "certificate ") {
		t.Fatalf("PEM: %v", err)
	}
	in, err = attestation.LoadFile(write("c.der", leaf.Cert.Raw))
	if err != nil || in.Leaf == nil || !in.Leaf.Equal(leaf.Cert) {
		t.Fatalf("DER: %v", err)
	}
	// JSON with a certificate (a saved /attestation response) verifies
	// the certificate.
	j, _ := json.Marshal(map[string]string{"quote": hex.EncodeToString(raw), "event_log": "[]", "certificate": string(leaf.CertPEM)})
	if in, err = attestation.LoadFile(write("a.json", j)); err != nil || in.Leaf == nil || !in.Leaf.Equal(leaf.Cert) {
		t.Fatalf("response JSON: %v", err)
	}
	// JSON with only a quote.
	j, _ = json.Marshal(map[string]string{"quote": hex.EncodeToString(raw)})
	if in, err = attestation.LoadFile(write("q.json", j)); err != nil || in.Leaf != nil || string(in.Quote) != string(raw) {
		t.Fatalf("quote JSON: %v", err)
	}
	for name, b := range map[string][]byte{
		"garbage.bin": []byte("\x00\x01 nothing"), "bad.json": []byte("{\"quote\": 1}"), "empty.json": []byte("{}"),
		"nohex.json": []byte(`{"quote":"zz"}`), "nocert.pem": []byte("-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n"),
	} {
		if _, err := attestation.LoadFile(write(name, b)); failure.ClassOf(err) != failure.ConfigInvalid {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := attestation.LoadFile(filepath.Join(dir, "missing")); failure.ClassOf(err) != failure.ConfigInvalid || attestation.InputExitCode(err) != 2 {
		t.Errorf("missing: %v", err)
	}
	if _, err := attestation.LoadQuote(filepath.Join(testdata, "dcap_qvl_tdx_quote_v4.bin"), filepath.Join(dir, "missing")); failure.ClassOf(err) != failure.ConfigInvalid {
		t.Errorf("missing event log: %v", err)
	}

	for arg, live := range map[string]bool{"db.example.com:5432": true, "127.0.0.1:5432": true, "[::1]:5432": true,
		"host=db sslmode=require": true, "postgresql://db/x": true, filepath.Join(dir, "c.pem"): false,
		"cert.pem": false, "db.example.com:http": false, filepath.Join(dir, "missing"): false} {
		if attestation.IsLive(arg) != live {
			t.Errorf("IsLive(%q) = %v", arg, !live)
		}
	}
}

// TestFetchServer takes the certificate of a real PostgreSQL server
// through pgtls without trusting any CA, and never sends credentials.
func TestFetchServer(t *testing.T) {
	ca := testpki.NewRootCA(t, "fetch root")
	leaf := ca.Server(t)
	s := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: leaf.ChainPEM, ServerKey: leaf.KeyPEM,
		HBA: []string{"local all all trust", "hostssl all all 127.0.0.1/32 reject"}})
	// A root certificate in ~/.postgresql would turn require into
	// verify-ca under libpq's rules: host:port must ignore it.
	home := pgtest.EmptyHome(t)
	other := testpki.NewRootCA(t, "unrelated root")
	if err := os.MkdirAll(filepath.Join(home, ".postgresql"), 0o700); err != nil {
		t.Fatal(err)
	}
	testpki.WriteFile(t, filepath.Join(home, ".postgresql"), "root.crt", other.CertPEM, 0o644)
	t.Setenv("HOME", home)
	t.Setenv("PGSSLMODE", "verify-full")

	ctx := context.Background()
	target := s.Host + ":" + itoa(s.Port)
	in, err := attestation.FetchServer(ctx, target, 10*time.Second)
	if err != nil || in.Leaf == nil || !in.Leaf.Equal(leaf.Cert) || in.Source != "server "+target {
		t.Fatalf("host:port: %+v %v", in, err)
	}
	// A connection string keeps its settings: verify-full with the
	// unrelated root fails the chain (a refusal, exit 1).
	_, err = attestation.FetchServer(ctx, "host=localhost hostaddr=127.0.0.1 port="+itoa(s.Port)+" sslmode=verify-full", 10*time.Second)
	if failure.ClassOf(err) != failure.UnknownCA || attestation.InputExitCode(err) != 1 {
		t.Fatalf("verify-full with another root: %v", err)
	}
	// sslmode=disable is raised to require: attestation needs TLS. (The
	// root file is named, and absent, so that libpq's rule "require with
	// a root file verifies the CA" does not apply.)
	in, err = attestation.FetchServer(ctx, "host=127.0.0.1 port="+itoa(s.Port)+" sslmode=disable sslrootcert="+filepath.Join(home, "none.crt"), 10*time.Second)
	if err != nil || !in.Leaf.Equal(leaf.Cert) || in.Source != "server 127.0.0.1:"+itoa(s.Port) {
		t.Fatalf("disable raised to require: %+v %v", in, err)
	}
	// Unreachable: an input error (exit 2).
	_, err = attestation.FetchServer(ctx, "127.0.0.1:1", 10*time.Second)
	if attestation.InputExitCode(err) != 2 {
		t.Fatalf("closed port: %v", err)
	}
	if _, err = attestation.FetchServer(ctx, "host=127.0.0.1 port=1 sslmode=bogus", 10*time.Second); attestation.InputExitCode(err) != 2 {
		t.Fatalf("bad DSN: %v", err)
	}
}

func regexpMatch(re, s string) bool { return regexp.MustCompile(re).MatchString(s) }

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// TestHandler serves the genuine sample quote with a certificate and
// decodes the response: GET only, quote hex, event log, certificate PEM,
// the verification summary, and nothing secret.
func TestHandler(t *testing.T) {
	_, raw := sampleQuote(t)
	leaf := testpki.SelfSigned(t)
	src := attestation.EvidenceFunc(func(context.Context) (*attestation.Served, error) {
		return &attestation.Served{Chain: []*x509.Certificate{leaf.Cert}, Quote: raw}, nil
	})
	policy := &ratls.Policy{MRTD: []string{sampleMRTD}, SkipTCB: true}
	srv := httptest.NewServer(attestation.NewHandler(src, attestation.HandlerOptions{Policy: policy, Now: func() time.Time { return at }}))
	defer srv.Close()

	res, err := http.Get(srv.URL + "/attestation")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "application/json" || res.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("status %d %v", res.StatusCode, res.Header)
	}
	var r attestation.Response
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("%v\n%s", err, body)
	}
	if r.Quote != hex.EncodeToString(raw) || r.EventLog != "[]" {
		t.Errorf("quote/event log: %.40s %q", r.Quote, r.EventLog)
	}
	blk, rest := pem.Decode([]byte(r.Certificate))
	if blk == nil || blk.Type != "CERTIFICATE" || len(strings.TrimSpace(string(rest))) != 0 {
		t.Fatalf("certificate %q", r.Certificate)
	}
	if c, err := x509.ParseCertificate(blk.Bytes); err != nil || !c.Equal(leaf.Cert) {
		t.Errorf("certificate differs: %v", err)
	}
	if r.Report == nil || len(r.Report.Checks) == 0 || !r.Report.At.Equal(at) || r.Report.Source != "this server" {
		t.Fatalf("report %+v", r.Report)
	}
	for _, c := range r.Report.Checks {
		if c.Name == "" || (c.Status != "pass" && c.Status != "fail" && c.Status != "skip") {
			t.Errorf("check %+v", c)
		}
	}
	if r.Report.Measurements == nil || r.Report.Measurements.MRTD != sampleMRTD {
		t.Errorf("measurements %+v", r.Report.Measurements)
	}
	if strings.Contains(string(body), "PRIVATE KEY") || strings.Contains(string(body), string(leaf.KeyPEM)) {
		t.Error("the response holds key material")
	}

	// Only GET.
	res, err = http.Post(srv.URL+"/attestation", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusMethodNotAllowed || res.Header.Get("Allow") != "GET" {
		t.Errorf("POST: %d %v", res.StatusCode, res.Header)
	}

	// The same response is evidence `attest verify` reads back: it names
	// the certificate.
	saved := testpki.WriteFile(t, t.TempDir(), "resp.json", body, 0o644)
	in, err := attestation.LoadFile(saved)
	if err != nil || in.Leaf == nil || !in.Leaf.Equal(leaf.Cert) {
		t.Errorf("saved response: %v", err)
	}

	// Without a policy: evidence only. A source error: 503 with its class.
	noPolicy := httptest.NewServer(attestation.NewHandler(src, attestation.HandlerOptions{}))
	defer noPolicy.Close()
	res, err = http.Get(noPolicy.URL)
	if err != nil {
		t.Fatal(err)
	}
	r = attestation.Response{}
	json.NewDecoder(res.Body).Decode(&r)
	res.Body.Close()
	if res.StatusCode != 200 || r.Report != nil || r.Quote == "" {
		t.Errorf("no policy: %d %+v", res.StatusCode, r)
	}
	empty := httptest.NewServer(attestation.NewHandler(attestation.CertificateSource(func() *tls.Certificate { return nil }), attestation.HandlerOptions{}))
	defer empty.Close()
	res, err = http.Get(empty.URL)
	if err != nil {
		t.Fatal(err)
	}
	var e struct{ Error *failure.Report }
	json.NewDecoder(res.Body).Decode(&e)
	res.Body.Close()
	if res.StatusCode != http.StatusServiceUnavailable || e.Error == nil || e.Error.Class != attestation.ClassNoEvidence {
		t.Errorf("no certificate: %d %+v", res.StatusCode, e.Error)
	}
}
