package main

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

// ratlsData is the shared RA-TLS test data beside the repository.
var ratlsData = filepath.Join("..", "..", "..", "shared", "testdata", "ratls")

// The genuine dcap-qvl v4 sample quote (README 3.2): its MRTD, and the
// instant inside its collateral's validity window.
const (
	sampleMRTD = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
	sampleAt   = "2025-07-01T00:00:00Z"
	otherMRTD  = "deadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeef"
)

// checkNames are the stable check names of /work/contract/checks.md, in order.
var checkNames = []string{"policy", "evidence", "quote", "tcb", "tcb_status", "mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3",
	"debug", "seam", "tee_tcb_svn", "event_log", "app_id", "compose_hash", "key_provider", "key_binding", "kms_chain"}

// attestDoc is the JSON document of `attest verify --json`.
type attestDoc struct {
	OK     bool   `json:"ok"`
	Class  string `json:"class"`
	Checks []struct {
		Name, Status, Class, Message, Evidence, Fix string
	} `json:"checks"`
	Measurements *struct {
		MRTD      string    `json:"mrtd"`
		RTMR      [4]string `json:"rtmr"`
		TCBStatus string    `json:"tcb_status"`
		FMSPC     string    `json:"fmspc"`
		Advisory  []string  `json:"advisory_ids"`
	} `json:"measurements"`
	Error *struct{ Class, Message, Evidence, Fix string } `json:"error"`
}

// collateralDir is a temporary directory holding only the B0C06F collateral.
func collateralDir(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(ratlsData, "dcap_qvl_tdx_collateral_b0c06f.json"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dcap_qvl_tdx_collateral_b0c06f.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func decodeAttest(t *testing.T, out string) attestDoc {
	t.Helper()
	var d attestDoc
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("attest verify --json output does not parse: %v\n%s", err, out)
	}
	return d
}

// TestAttestVerifyGenuineQuote verifies the genuine Intel-signed sample
// quote with its genuine collateral at an instant inside the collateral's
// validity: every check passes (exit 0); the wrong MRTD is refused with
// attestation_mrtd (exit 1), and the JSON names every check.
func TestAttestVerifyGenuineQuote(t *testing.T) {
	quote := filepath.Join(ratlsData, "dcap_qvl_tdx_quote_v4.bin")
	col := collateralDir(t)

	out, errOut, code := runCerts(t, "attest", "verify", "--quote", quote, "--collateral", col, "--at", sampleAt, "--mrtd", sampleMRTD)
	if code != 0 || !strings.Contains(out, "verdict: attested") || !strings.Contains(out, "PASS  mrtd") ||
		!strings.Contains(out, "UpToDate") || !strings.Contains(out, "b0c06f000000") || !strings.Contains(out, sampleMRTD) {
		t.Fatalf("genuine quote: exit %d\n%s%s", code, out, errOut)
	}

	// The same quote, hex-encoded, with the allowlist written as upper
	// case with a 0X prefix (which must match after normalisation).
	raw, err := os.ReadFile(quote)
	if err != nil {
		t.Fatal(err)
	}
	hexQuote := filepath.Join(t.TempDir(), "quote.hex")
	if err := os.WriteFile(hexQuote, []byte("0x"+hex.EncodeToString(raw)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = runCerts(t, "attest", "verify", "--json", "--quote", hexQuote, "--collateral", col, "--at", sampleAt, "--mrtd", "0X"+strings.ToUpper(sampleMRTD))
	d := decodeAttest(t, out)
	if code != 0 || !d.OK || d.Class != "ok" || d.Measurements == nil || d.Measurements.MRTD != sampleMRTD ||
		d.Measurements.TCBStatus != "UpToDate" || d.Measurements.FMSPC != "b0c06f000000" || len(d.Measurements.Advisory) != 0 {
		t.Fatalf("hex quote: exit %d %+v\n%s", code, d, errOut)
	}
	var names []string
	for _, c := range d.Checks {
		names = append(names, c.Name)
		if c.Status != "pass" && c.Status != "skip" {
			t.Errorf("check %s: %s", c.Name, c.Status)
		}
	}
	if strings.Join(names, ",") != strings.Join(checkNames, ",") {
		t.Errorf("checks %v, want %v", names, checkNames)
	}

	// Another MRTD in the allowlist: refused, by the mrtd check alone.
	out, errOut, code = runCerts(t, "attest", "verify", "--quote", quote, "--collateral", col, "--at", sampleAt, "--mrtd", otherMRTD, "--json")
	d = decodeAttest(t, out)
	if code != 1 || d.OK || d.Class != "attestation_mrtd" || d.Error == nil || d.Error.Fix == "" || d.Error.Evidence == "" {
		t.Fatalf("wrong MRTD: exit %d %+v\n%s", code, d, errOut)
	}
	for _, c := range d.Checks {
		if (c.Name == "mrtd") != (c.Status == "fail") {
			t.Errorf("wrong MRTD: check %s is %s", c.Name, c.Status)
		}
		if c.Name == "mrtd" && (!strings.Contains(c.Evidence, sampleMRTD) || c.Class != "attestation_mrtd") {
			t.Errorf("mrtd check does not show what was measured: %+v", c)
		}
	}
	out, _, code = runCerts(t, "attest", "verify", "--quote", quote, "--collateral", col, "--at", sampleAt, "--mrtd", otherMRTD)
	if code != 1 || !strings.Contains(out, "FAIL  mrtd") || !strings.Contains(out, "class:    attestation_mrtd") ||
		!strings.Contains(out, "fix:") || !strings.Contains(out, "verdict: attestation refused") {
		t.Fatalf("wrong MRTD, text: exit %d\n%s", code, out)
	}

	// A policy ratls refuses (no MRTD allowlist, no collateral source) is
	// a usage error, before any verification.
	out, errOut, code = runCerts(t, "attest", "verify", "--quote", quote)
	if code != 2 || !strings.Contains(errOut, "attestation_policy") {
		t.Fatalf("empty policy: exit %d\n%s%s", code, out, errOut)
	}

	// After the collateral's window: refused (not a usage error).
	if _, _, code = runCerts(t, "attest", "verify", "--quote", quote, "--collateral", col, "--at", "2025-07-19T10:00:36Z", "--mrtd", sampleMRTD); code != 1 {
		t.Fatalf("expired collateral: exit %d", code)
	}
}

// TestAttestVerifyUsage checks that input and flag errors exit 2 and say
// what is wrong, before any verification.
func TestAttestVerifyUsage(t *testing.T) {
	quote := filepath.Join(ratlsData, "dcap_qvl_tdx_quote_v4.bin")
	missing := filepath.Join(t.TempDir(), "no-such-cert.pem")
	garbage := filepath.Join(t.TempDir(), "garbage.bin")
	if err := os.WriteFile(garbage, []byte("not evidence at all"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"missing file", []string{missing, "--mrtd", sampleMRTD, "--skip-tcb"}, "could not read evidence file"},
		{"missing quote", []string{"--quote", missing, "--mrtd", sampleMRTD, "--skip-tcb"}, "could not read quote file"},
		{"missing event log", []string{"--quote", quote, "--event-log", missing, "--mrtd", sampleMRTD, "--skip-tcb"}, "could not read event log file"},
		{"not evidence", []string{garbage, "--mrtd", sampleMRTD, "--skip-tcb"}, "neither a certificate"},
		{"no evidence", []string{"--mrtd", sampleMRTD}, "no evidence given"},
		{"both inputs", []string{garbage, "--quote", quote, "--mrtd", sampleMRTD}, "not both"},
		{"event log alone", []string{garbage, "--event-log", garbage, "--mrtd", sampleMRTD}, "--event-log goes with --quote"},
		{"bad --at", []string{"--quote", quote, "--mrtd", sampleMRTD, "--at", "yesterday"}, "RFC 3339"},
		{"bad status", []string{"--quote", quote, "--mrtd", sampleMRTD, "--accept-tcb-status", "Fine"}, "not a TCB status"},
		{"both collateral sources", []string{"--quote", quote, "--mrtd", sampleMRTD, "--collateral", t.TempDir(), "--pccs-url", "https://pccs.invalid/"}, "exclude each other"},
		{"missing collateral dir", []string{"--quote", quote, "--mrtd", sampleMRTD, "--collateral", missing}, "not a readable directory"},
		{"missing kms root", []string{"--quote", quote, "--mrtd", sampleMRTD, "--kms-root-ca", missing}, "--kms-root-ca"},
		{"unreachable host", []string{"127.0.0.1:1", "--mrtd", sampleMRTD, "--skip-tcb"}, "connection_refused"},
	}
	for _, c := range cases {
		out, errOut, code := runCerts(t, append([]string{"attest", "verify"}, c.args...)...)
		if code != 2 || !strings.Contains(out+errOut, c.want) {
			t.Errorf("%s: exit %d, want 2 and %q\n%s%s", c.name, code, c.want, out, errOut)
		}
	}
	if _, _, code := runCerts(t, "attest", "verify", "--no-such-flag"); code != 2 {
		t.Errorf("unknown flag: exit %d", code)
	}
	// --json reports the input error as a document too.
	out, _, code := runCerts(t, "attest", "verify", missing, "--mrtd", sampleMRTD, "--skip-tcb", "--json")
	d := decodeAttest(t, out)
	if code != 2 || d.OK || d.Class != "config_invalid" || d.Error == nil || len(d.Checks) != 0 {
		t.Errorf("missing file --json: exit %d %+v", code, d)
	}
}

// TestAttestVerifyExitCodesThroughMain runs the real binary (this test
// binary re-executed as pgtrust, as the fault tests do) so that main's
// exit-code mapping is covered: 2 for a missing file, 1 for a refusal.
func TestAttestVerifyExitCodesThroughMain(t *testing.T) {
	run := func(args ...string) (int, string) {
		cmd := exec.Command(os.Args[0], append([]string{"-test.run=^TestFaultProcessMain$", "--"}, args...)...)
		cmd.Env = []string{faultMainEnv + "=1", "PATH=/usr/bin:/bin", "HOME=" + t.TempDir(), "LC_ALL=C"}
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), string(out)
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	abs, err := filepath.Abs(ratlsData)
	if err != nil {
		t.Fatal(err)
	}
	if code, out := run("attest", "verify", filepath.Join(t.TempDir(), "none.pem"), "--mrtd", sampleMRTD, "--skip-tcb"); code != 2 || !strings.Contains(out, "config_invalid") {
		t.Errorf("missing file: exit %d\n%s", code, out)
	}
	code, out := run("attest", "verify", "--quote", filepath.Join(abs, "dcap_qvl_tdx_quote_v4.bin"), "--collateral", collateralDir(t), "--at", sampleAt, "--mrtd", otherMRTD)
	if code != 1 || !strings.Contains(out, "attestation_mrtd") {
		t.Errorf("wrong MRTD: exit %d\n%s", code, out)
	}
}

// TestAttestVerifyLivePlainCertificate asks a real PostgreSQL server with
// an ordinary (CA-issued, quote-less) certificate, given as host:port and
// as a connection string: the certificate is fetched through pgtls and
// refused for carrying no evidence (exit 1, attestation_no_evidence).
func TestAttestVerifyLivePlainCertificate(t *testing.T) {
	ca := testpki.NewRootCA(t, "plain root")
	leaf := ca.Server(t)
	s := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: leaf.ChainPEM, ServerKey: leaf.KeyPEM})
	t.Setenv("HOME", pgtest.EmptyHome(t))
	target := s.Host + ":" + itoa(s.Port)
	for _, arg := range []string{target, "host=" + s.Host + " port=" + itoa(s.Port) + " sslmode=prefer"} {
		out, errOut, code := runCerts(t, "attest", "verify", arg, "--mrtd", sampleMRTD, "--skip-tcb", "--json")
		d := decodeAttest(t, out)
		if code != 1 || d.OK || d.Class != "attestation_no_evidence" || d.Error == nil || d.Error.Fix == "" {
			t.Fatalf("%s: exit %d %+v\n%s", arg, code, d, errOut)
		}
		for _, c := range d.Checks {
			if c.Name == "evidence" && c.Status != "fail" {
				t.Errorf("%s: evidence check %s", arg, c.Status)
			}
		}
	}
	out, _, code := runCerts(t, "attest", "verify", target, "--mrtd", sampleMRTD, "--skip-tcb")
	if code != 1 || !strings.Contains(out, "attestation of server "+target) || !strings.Contains(out, "class:    attestation_no_evidence") {
		t.Fatalf("text: exit %d\n%s", code, out)
	}
}

// TestAttestVerifyServerWithoutTLS: a server that refuses TLS answered,
// so this is a refusal (exit 1, no_ssl_server), not a usage error; a
// closed port is unreachable (exit 2, TestAttestVerifyUsage).
func TestAttestVerifyServerWithoutTLS(t *testing.T) {
	h, port := pgtest.FakeServer(t, pgtest.FakeRefuseSSL)
	out, errOut, code := runCerts(t, "attest", "verify", h+":"+itoa(port), "--mrtd", sampleMRTD, "--skip-tcb")
	if code != 1 || !strings.Contains(out+errOut, "no_ssl_server") {
		t.Fatalf("server without TLS: exit %d\n%s%s", code, out, errOut)
	}
}

// TestDoctorAttestationFlags: doctor takes the same policy flags as
// attest verify; with them, a real server with a plain certificate fails
// the attestation stage (attestation_no_evidence, exit 1), placed after
// the server certificate; bad policy flags are usage errors (exit 2).
func TestDoctorAttestationFlags(t *testing.T) {
	t.Setenv("HOME", pgtest.EmptyHome(t))
	for _, k := range []string{"PGHOST", "PGPORT", "PGSSLMODE", "PGUSER", "PGDATABASE", "DATABASE_URL", "PGSERVICE"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	missing := filepath.Join(t.TempDir(), "none")
	for _, args := range [][]string{
		{"--mrtd", sampleMRTD, "--collateral", missing},
		{"--mrtd", sampleMRTD, "--at", "soon"},
		{"--mrtd", sampleMRTD, "--matrix"},
	} {
		if out, errOut, code := runCerts(t, append([]string{"doctor", "host=127.0.0.1 port=1"}, args...)...); code != 2 {
			t.Errorf("%v: exit %d\n%s%s", args, code, out, errOut)
		}
	}

	ca := testpki.NewRootCA(t, "plain root")
	leaf := ca.Server(t)
	s := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: leaf.ChainPEM, ServerKey: leaf.KeyPEM})
	dsn := "host=127.0.0.1 port=" + itoa(s.Port) + " user=postgres dbname=postgres sslmode=require"
	var r struct {
		OK          bool   `json:"ok"`
		Class       string `json:"class"`
		FailedStage string `json:"failed_stage"`
		Stages      []struct{ Name, Status, Class string }
		Attestation *attestDoc `json:"attestation"`
	}
	out, _, code := runCerts(t, "doctor", dsn, "--json")
	if err := json.Unmarshal([]byte(out), &r); err != nil || code != 0 || !r.OK || len(r.Stages) != 9 || r.Attestation != nil {
		t.Fatalf("without a policy: exit %d %v\n%s", code, err, out)
	}
	out, _, code = runCerts(t, "doctor", dsn, "--json", "--mrtd", sampleMRTD, "--skip-tcb")
	r.Attestation = nil
	if err := json.Unmarshal([]byte(out), &r); err != nil || code != 1 || r.OK || len(r.Stages) != 10 ||
		r.Stages[6].Name != "attestation" || r.Stages[6].Status != "fail" || r.FailedStage != "attestation" || r.Attestation == nil {
		t.Fatalf("with a policy: exit %d %v\n%s", code, err, out)
	}
	if r.Class != "attestation_no_evidence" || r.Stages[6].Class != "attestation_no_evidence" {
		t.Fatalf("class %s, stage %+v", r.Class, r.Stages[6])
	}
}

// TestAttestVerifyDstackEvidence verifies dstack's quote report (quote hex
// and event-log string) with the 90C06F collateral inside its window: the
// event log replays into RTMR3, whose events pin the app id, compose hash
// and key provider (README 3.4 and ratls_expected.json).
func TestAttestVerifyDstackEvidence(t *testing.T) {
	const (
		mrtd        = "b24d3b24e9e3c16012376b52362ca09856c4adecb709d5fac33addf1c47e193da075b125b6c364115771390a5461e217"
		appID       = "3763bc34552cf3a27ff71ad5f7a90471562a1a2d"
		composeHash = "3763bc34552cf3a27ff71ad5f7a90471562a1a2df552dfc1998cba2d60da27e7"
	)
	b, err := os.ReadFile(filepath.Join(ratlsData, "dcap_qvl_tdx_collateral_90c06f.json"))
	if err != nil {
		t.Fatal(err)
	}
	col := t.TempDir()
	if err := os.WriteFile(filepath.Join(col, "c.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	evidence := filepath.Join(ratlsData, "dstack_quote_report.json")
	base := []string{"attest", "verify", evidence, "--collateral", col, "--at", "2026-03-01T00:00:00Z", "--mrtd", mrtd, "--json",
		"--app-id", appID, "--key-provider", "local-sgx"}
	out, errOut, code := runCerts(t, append(base, "--compose-hash", composeHash)...)
	var d struct {
		OK           bool   `json:"ok"`
		Class        string `json:"class"`
		Measurements *struct {
			AppID       string `json:"app_id"`
			ComposeHash string `json:"compose_hash"`
			KeyProvider string `json:"key_provider"`
			TCBStatus   string `json:"tcb_status"`
			FMSPC       string `json:"fmspc"`
			RTMR        [4]string
			EventCount  int `json:"event_count"`
		} `json:"measurements"`
	}
	if err := json.Unmarshal([]byte(out), &d); err != nil || code != 0 || !d.OK || d.Measurements == nil {
		t.Fatalf("dstack evidence: exit %d %v\n%s%s", code, err, out, errOut)
	}
	m := d.Measurements
	if m.AppID != appID || m.ComposeHash != composeHash || m.KeyProvider != "local-sgx" || m.TCBStatus != "UpToDate" ||
		m.FMSPC != "90c06f000000" || m.EventCount != 28 || !strings.HasPrefix(m.RTMR[3], "0f787c38") {
		t.Fatalf("measurements %+v", m)
	}
	out, _, code = runCerts(t, append(base, "--compose-hash", strings.Repeat("00", 32))...)
	d.OK, d.Class = true, ""
	if err := json.Unmarshal([]byte(out), &d); err != nil || code != 1 || d.OK || d.Class != "attestation_compose_hash" {
		t.Fatalf("other compose hash: exit %d %v %s", code, err, d.Class)
	}
}
