package ratls_test

import (
	"encoding/hex"
	"testing"

	"github.com/google/go-tdx-guest/pcs"
	"github.com/pgtrust/pgtrust/ratls"
)

// TestParsePCKInfoGenuine reads the SGX extension of every genuine quote's
// PCK leaf and compares it with ratls_expected.json and with go-tdx-guest's
// independent parser.
func TestParsePCKInfoGenuine(t *testing.T) {
	extra := loadPCKExpected(t)
	n := 0
	for name, e := range loadExpected(t) {
		t.Run(name, func(t *testing.T) {
			q, err := ratls.ParseQuote(quoteBytes(t, name, e))
			if err != nil {
				t.Fatal(err)
			}
			v, err := q.Verify(ratls.VerifyOptions{Time: mustTime(t, e.Appraisal.Now)})
			if err != nil {
				t.Fatal(failureDetail(err))
			}
			info, err := ratls.ParsePCKInfo(v.PCKChain[0])
			if err != nil {
				t.Fatal(failureDetail(err))
			}
			x := extra[name]
			if x.FMSPC == "" || x.CPUSVN == "" || x.PCESVN == 0 {
				t.Fatalf("no expected PCK values for %s", name)
			}
			if got := hex.EncodeToString(info.FMSPC[:]); got != x.FMSPC {
				t.Errorf("FMSPC %s, want %s", got, x.FMSPC)
			}
			if int(info.PCESVN) != x.PCESVN {
				t.Errorf("PCESVN %d, want %d", info.PCESVN, x.PCESVN)
			}
			if got := hex.EncodeToString(info.CPUSVN[:]); got != x.CPUSVN {
				t.Errorf("CPUSVN %s, want %s", got, x.CPUSVN)
			}
			if info.PCEID != [2]byte{} {
				t.Errorf("PCEID %x, want 0000", info.PCEID)
			}
			// go-tdx-guest's parser is lenient but independent: the
			// values must agree.
			g, err := pcs.PckCertificateExtensions(v.PCKChain[0])
			if err != nil {
				t.Fatal(err)
			}
			if g.FMSPC != hex.EncodeToString(info.FMSPC[:]) || g.PCEID != hex.EncodeToString(info.PCEID[:]) ||
				g.TCB.PCESvn != info.PCESVN || hex.EncodeToString(g.TCB.CPUSvn) != hex.EncodeToString(info.CPUSVN[:]) ||
				hex.EncodeToString(g.TCB.CPUSvnComponents) != hex.EncodeToString(info.SGXTCBComponents[:]) {
				t.Errorf("go-tdx-guest reads %+v, ParsePCKInfo %+v", g, info)
			}
			// The intermediate and root have no SGX extension.
			_, err = ratls.ParsePCKInfo(v.PCKChain[1])
			wantClass(t, err, ratls.ClassPCKExtension)
			n++
		})
	}
	if n != 6 {
		t.Fatalf("%d quotes checked, want 6", n)
	}
	_, err := ratls.ParsePCKInfo(nil)
	wantClass(t, err, ratls.ClassPCKExtension)
}

type pckExpected struct {
	FMSPC  string `json:"fmspc"`
	PCESVN int    `json:"pck_pcesvn"`
	CPUSVN string `json:"pck_cpusvn"`
}

func loadPCKExpected(t testing.TB) map[string]pckExpected {
	t.Helper()
	var doc struct {
		Quotes map[string]pckExpected `json:"quotes"`
	}
	readJSON(t, "ratls_expected.json", &doc)
	return doc.Quotes
}
