package ratls_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/ratls"
)

// TestParseCollateralJSONStrict: the shape is dcap-qvl's, nothing more.
func TestParseCollateralJSONStrict(t *testing.T) {
	good := string(readFile(t, collB0))
	if _, err := ratls.ParseCollateralJSON([]byte(good)); err != nil {
		t.Fatal(failureDetail(err))
	}
	// Newer dcap-qvl adds the PCK chain; it is accepted (and not used).
	m := collFields(t, collB0)
	withChain := strings.Replace(string(marshalColl(t, m)), "{", `{"pck_certificate_chain":"x",`, 1)
	if _, err := ratls.ParseCollateralJSON([]byte(withChain)); err != nil {
		t.Errorf("pck_certificate_chain refused: %s", failureDetail(err))
	}
	bad := map[string]string{
		"unknown key":   strings.Replace(good, "{", `{"extra":"1",`, 1),
		"trailing data": good + "{}",
		"not an object": "[]",
		"empty":         "",
		"truncated":     good[:len(good)/2],
	}
	for _, field := range []string{"tcb_info", "qe_identity", "tcb_info_signature", "qe_identity_signature", "pck_crl", "root_ca_crl",
		"tcb_info_issuer_chain", "qe_identity_issuer_chain", "pck_crl_issuer_chain"} {
		m := collFields(t, collB0)
		delete(m, field)
		bad["without "+field] = string(marshalColl(t, m))
	}
	m = collFields(t, collB0)
	m["tcb_info_signature"] = m["tcb_info_signature"][:126]
	bad["short signature"] = string(marshalColl(t, m))
	m = collFields(t, collB0)
	m["tcb_info"] = strings.Replace(m["tcb_info"], `{"svn":0},{"svn":0},{"svn":0},{"svn":0},{"svn":0},{"svn":0},{"svn":0},{"svn":0}],"pcesvn"`, `{"svn":0},{"svn":0},{"svn":0},{"svn":0},{"svn":0},{"svn":0},{"svn":0}],"pcesvn"`, 1)
	bad["15 SGX components"] = string(marshalColl(t, m))
	m = collFields(t, collB0)
	m["tcb_info"] = strings.Replace(m["tcb_info"], `"tcbStatus":"UpToDate"`, `"tcbStatus":"Fine"`, 1)
	bad["unknown status"] = string(marshalColl(t, m))
	m = collFields(t, collB0)
	m["qe_identity"] = strings.Replace(m["qe_identity"], `"version":2`, `"version":1`, 1)
	bad["QE identity v1"] = string(marshalColl(t, m))
	for name, b := range bad {
		t.Run(name, func(t *testing.T) {
			_, err := ratls.ParseCollateralJSON([]byte(b))
			wantClass(t, err, ratls.ClassCollateral)
		})
	}
}

// TestCollateralDir picks the file of the requested FMSPC and CA, valid
// at the appraisal instant, else the freshest; it skips damaged files and
// refuses with the list of what it found.
func TestCollateralDir(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{collB0, coll90} {
		write(name, readFile(t, name))
	}
	// An older B0C06F set (re-signed by a test PKI, valid until
	// 2025-07-02), a damaged copy of the genuine one that sorts first, and
	// files that are not collateral.
	old := newSynthPKI(t)
	old.edit("tcb_info", `"nextUpdate":"2025-07-19T10:16:03Z"`, `"nextUpdate":"2025-07-02T00:00:00Z"`)
	write("a_old_b0c06f.json", old.json())
	m := collFields(t, collB0)
	m["tcb_info"] = strings.Replace(m["tcb_info"], `"tcbStatus":"OutOfDate"`, `"tcbStatus":"UpToDate"`, 1)
	write("0_damaged_b0c06f.json", marshalColl(t, m))
	write("notes.json", []byte(`{"a":1}`))
	write("readme.txt", []byte("x"))

	src := ratls.CollateralDir(dir)
	ctx := context.Background()
	for fmspc, until := range map[string]string{"b0c06f000000": "2025-07-19T10:00:35Z", "90C06F000000": "2026-03-20T10:41:15Z"} {
		c, err := src.Collateral(ctx, fmspc, "platform")
		if err != nil {
			t.Fatal(failureDetail(err))
		}
		if c.FMSPC() != strings.ToLower(fmspc) || !c.NextUpdate().Equal(mustTime(t, until)) {
			t.Errorf("%s: got FMSPC %s valid until %s, want until %s", fmspc, c.FMSPC(), c.NextUpdate(), until)
		}
	}
	// The chosen file is the genuine one, not the damaged copy.
	c, _ := src.Collateral(ctx, "b0c06f000000", "platform")
	q, v := verifiedQuote(t, v4Name)
	if a, err := ratls.Appraise(q, v, c, time.Date(2025, 7, 1, 0, 0, 0, 0, time.UTC)); err != nil || a.Status != ratls.StatusUpToDate {
		t.Fatalf("appraisal: %+v %s", a, failureDetail(err))
	}

	// A later set, valid 2025-07-10..08-10: fresher than the genuine one,
	// but not valid at 2025-07-01, where the genuine one is preferred.
	late := newSynthPKI(t)
	late.crlFrom, late.crlUntil = time.Date(2025, 7, 10, 0, 0, 0, 0, time.UTC), time.Date(2025, 8, 10, 0, 0, 0, 0, time.UTC)
	late.edit("tcb_info", `"issueDate":"2025-06-19T10:16:03Z","nextUpdate":"2025-07-19T10:16:03Z"`, `"issueDate":"2025-07-10T00:00:00Z","nextUpdate":"2025-08-10T00:00:00Z"`)
	late.edit("qe_identity", `"issueDate":"2025-06-19T10:32:27Z","nextUpdate":"2025-07-19T10:32:27Z"`, `"issueDate":"2025-07-10T00:00:00Z","nextUpdate":"2025-08-10T00:00:00Z"`)
	write("b_late_b0c06f.json", late.json())
	for at, until := range map[string]string{"2025-07-01T00:00:00Z": "2025-07-19T10:00:35Z", "2025-07-25T00:00:00Z": "2025-08-10T00:00:00Z", "": "2025-08-10T00:00:00Z"} {
		actx := ctx
		if at != "" {
			actx = ratls.ContextWithAppraisalTime(ctx, mustTime(t, at))
		}
		c, err := src.Collateral(actx, "b0c06f000000", "platform")
		if err != nil || !c.NextUpdate().Equal(mustTime(t, until)) {
			t.Errorf("at %q: chose the file valid until %v (%v), want %s", at, c.NextUpdate(), err, until)
		}
	}

	_, err := src.Collateral(ctx, "00806f050000", "platform")
	fe := wantClass(t, err, ratls.ClassCollateralUnavailable)
	for _, s := range []string{"6 files", "notes.json: does not parse", "0_damaged_b0c06f.json: damaged (tcb_info (",
		"dcap_qvl_tdx_collateral_90c06f.json: FMSPC 90c06f000000, platform CA, valid 2026-02-18T10:58:51Z..2026-03-20T10:41:15Z"} {
		if !strings.Contains(fe.Evidence, s) {
			t.Errorf("evidence lacks %q: %s", s, fe.Evidence)
		}
	}
	if !strings.Contains(fe.Fix, dir) || !strings.Contains(fe.Fix, "00806f050000") {
		t.Errorf("fix: %s", fe.Fix)
	}
	_, err = src.Collateral(ctx, "b0c06f000000", "processor")
	wantClass(t, err, ratls.ClassCollateralUnavailable)
	_, err = ratls.CollateralDir(filepath.Join(dir, "absent")).Collateral(ctx, "b0c06f000000", "platform")
	wantClass(t, err, ratls.ClassCollateralUnavailable)
	_, err = src.Collateral(ctx, "b0c06f", "platform")
	wantClass(t, err, ratls.ClassCollateralUnavailable)
}

// TestCollateralZero: a zero Collateral is no collateral, not a panic.
func TestCollateralZero(t *testing.T) {
	z := &ratls.Collateral{}
	if z.FMSPC() != "" || z.CA() != "" || !z.NextUpdate().IsZero() || !z.ValidFrom().IsZero() || z.TCBEvaluationDataNumber() != 0 {
		t.Error("zero collateral has values")
	}
	q, v := verifiedQuote(t, v4Name)
	for _, c := range []*ratls.Collateral{nil, z} {
		_, err := ratls.Appraise(q, v, c, time.Date(2025, 7, 1, 0, 0, 0, 0, time.UTC))
		wantClass(t, err, ratls.ClassCollateralUnavailable)
	}
	_, err := ratls.Appraise(q, nil, collateral(t, collB0), time.Time{})
	wantClass(t, err, ratls.ClassPCKChain)
}
