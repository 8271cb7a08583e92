package ratls_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/ratls"
)

const (
	collB0 = "dcap_qvl_tdx_collateral_b0c06f.json"
	coll90 = "dcap_qvl_tdx_collateral_90c06f.json"
)

func readJSON(t testing.TB, name string, v any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testdata, name))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

func readFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testdata, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// verifiedQuote parses and verifies a genuine quote at its pinned instant.
func verifiedQuote(t testing.TB, name string) (*ratls.Quote, *ratls.Verified) {
	t.Helper()
	e, ok := loadExpected(t)[name]
	if !ok {
		t.Fatalf("no expected values for %s", name)
	}
	q, err := ratls.ParseQuote(quoteBytes(t, name, e))
	if err != nil {
		t.Fatal(err)
	}
	v, err := q.Verify(ratls.VerifyOptions{Time: mustTime(t, e.Appraisal.Now)})
	if err != nil {
		t.Fatal(failureDetail(err))
	}
	return q, v
}

func collateral(t testing.TB, name string) *ratls.Collateral {
	t.Helper()
	c, err := ratls.ParseCollateralJSON(readFile(t, name))
	if err != nil {
		t.Fatal(failureDetail(err))
	}
	return c
}

// TestAppraiseVerdicts runs README section 4's table of verdicts.
func TestAppraiseVerdicts(t *testing.T) {
	cases := []struct {
		quote, coll, at string
		status          ratls.TCBStatus // "" for a refusal
		class           failure.Class
		tcbDate         string
		evidence        string
	}{
		{quote: v4Name, coll: collB0, at: "2025-07-01T00:00:00Z", status: ratls.StatusUpToDate, tcbDate: "2024-03-13T00:00:00Z"},
		// Upstream's pin: the last second of the window.
		{quote: v4Name, coll: collB0, at: "2025-07-19T10:00:35Z", status: ratls.StatusUpToDate, tcbDate: "2024-03-13T00:00:00Z"},
		{quote: v4Name, coll: collB0, at: "2025-07-19T10:00:36Z", class: ratls.ClassCollateralExpired, evidence: "PCK CRL valid 2025-06-19T10:00:35Z..2025-07-19T10:00:35Z"},
		{quote: v4Name, coll: collB0, at: "2025-06-19T10:32:26Z", class: ratls.ClassCollateralExpired, evidence: "QE identity valid 2025-06-19T10:32:27Z..2025-07-19T10:32:27Z"},
		{quote: "dcap_qvl_tdx_quote_v5_no_tcb_match.bin", coll: coll90, at: "2026-03-01T00:00:00Z", class: ratls.ClassTCBNoMatch, evidence: "SGX TCB component 8 = 3 < 5"},
		{quote: "dstack_quote_report.json", coll: coll90, at: "2026-03-01T00:00:00Z", status: ratls.StatusUpToDate, tcbDate: "2024-11-13T00:00:00Z"},
		{quote: "dstack_ratls_asset_quote.bin", coll: collB0, at: "2025-07-01T00:00:00Z", class: ratls.ClassTCBNoMatch, evidence: "SGX TCB component 8 = 3 < 5"},
		// Collateral of another FMSPC.
		{quote: v4Name, coll: coll90, at: "2026-03-01T00:00:00Z", class: ratls.ClassCollateral, evidence: "TCB info FMSPC 90C06F000000"},
	}
	for _, c := range cases {
		t.Run(c.quote+"@"+c.at, func(t *testing.T) {
			q, v := verifiedQuote(t, c.quote)
			a, err := ratls.Appraise(q, v, collateral(t, c.coll), mustTime(t, c.at))
			if c.status == "" {
				fe := wantClass(t, err, c.class)
				if !strings.Contains(fe.Evidence, c.evidence) {
					t.Errorf("evidence %q lacks %q", fe.Evidence, c.evidence)
				}
				if c.class == ratls.ClassCollateralExpired && !strings.Contains(fe.Evidence, c.at) {
					t.Errorf("evidence does not name the instant: %s", fe.Evidence)
				}
				return
			}
			if err != nil {
				t.Fatal(failureDetail(err))
			}
			if a.Status != c.status || a.PlatformStatus != ratls.StatusUpToDate || a.ModuleStatus != ratls.StatusUpToDate || a.QEStatus != ratls.StatusUpToDate {
				t.Errorf("appraisal %+v, want all %s", a, c.status)
			}
			if len(a.AdvisoryIDs) != 0 || a.AdvisoryIDs == nil {
				t.Errorf("advisories %#v, want an empty list", a.AdvisoryIDs)
			}
			if !a.TCBDate.Equal(mustTime(t, c.tcbDate)) {
				t.Errorf("TCB date %s, want %s", a.TCBDate, c.tcbDate)
			}
			var x struct {
				Collateral map[string]struct {
					FMSPC  string   `json:"fmspc"`
					Number int      `json:"tcb_evaluation_data_number"`
					Window []string `json:"window"`
				} `json:"collateral"`
			}
			readJSON(t, "ratls_expected.json", &x)
			want := x.Collateral[c.coll]
			if a.FMSPC != strings.ToLower(want.FMSPC) || a.TCBEvaluationDataNumber != want.Number || !a.CollateralValidUntil.Equal(mustTime(t, want.Window[1])) {
				t.Errorf("FMSPC %s number %d valid until %s, want %s %d %s", a.FMSPC, a.TCBEvaluationDataNumber, a.CollateralValidUntil, want.FMSPC, want.Number, want.Window[1])
			}
		})
	}
}

// TestCollateralAccessors checks the window against ratls_expected.json.
func TestCollateralAccessors(t *testing.T) {
	var x struct {
		Collateral map[string]struct {
			FMSPC  string   `json:"fmspc"`
			Number int      `json:"tcb_evaluation_data_number"`
			Window []string `json:"window"`
		} `json:"collateral"`
	}
	readJSON(t, "ratls_expected.json", &x)
	for _, name := range []string{collB0, coll90} {
		c := collateral(t, name)
		w := x.Collateral[name]
		if c.FMSPC() != strings.ToLower(w.FMSPC) || c.CA() != "platform" || c.TCBEvaluationDataNumber() != w.Number ||
			!c.ValidFrom().Equal(mustTime(t, w.Window[0])) || !c.NextUpdate().Equal(mustTime(t, w.Window[1])) {
			t.Errorf("%s: FMSPC %s CA %s number %d window %s..%s, want %+v", name, c.FMSPC(), c.CA(), c.TCBEvaluationDataNumber(), c.ValidFrom(), c.NextUpdate(), w)
		}
	}
}
