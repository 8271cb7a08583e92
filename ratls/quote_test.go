package ratls_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/ratls"
)

// testdata is the shared RA-TLS test data beside the repository (see its
// README); CI places a copy of shared/ beside the clone.
var testdata = filepath.Join("..", "..", "shared", "testdata", "ratls")

type expectedQuote struct {
	Source       string `json:"source"`
	QuoteLen     int    `json:"quote_len"`
	Version      int    `json:"version"`
	TEEType      string `json:"tee_type"`
	AttKeyType   int    `json:"att_key_type"`
	BodyOffset   int    `json:"body_offset"`
	SignedLen    int    `json:"signed_len"`
	Trailing     int    `json:"trailing_zero_bytes"`
	MRTD         string `json:"mrtd"`
	TDAttributes string `json:"td_attributes"`
	Debug        bool   `json:"debug"`
	XFAM         string `json:"xfam"`
	TEETCBSVN    string `json:"tee_tcb_svn"`
	MRSEAM       string `json:"mr_seam"`
	MRSignerSEAM string `json:"mr_signer_seam"`
	MRConfigID   string `json:"mr_config_id"`
	RTMR0        string `json:"rtmr0"`
	RTMR1        string `json:"rtmr1"`
	RTMR2        string `json:"rtmr2"`
	RTMR3        string `json:"rtmr3"`
	ReportData   string `json:"report_data"`
	QESVN        int    `json:"qe_svn"`
	PCESVN       int    `json:"pce_svn"`
	QEVendorID   string `json:"qe_vendor_id"`
	QEISVSVN     int    `json:"qe_isvsvn"`
	PCKSerial    string `json:"pck_serial"`
	PCKNotBefore string `json:"pck_not_before"`
	PCKIssuerCN  string `json:"pck_issuer_cn"`
	TEETCBSVN2   string `json:"tee_tcb_svn2"`
	MRServiceTD  string `json:"mr_service_td"`
	Appraisal    struct {
		Now string `json:"now"`
	} `json:"appraisal"`
}

func loadExpected(t testing.TB) map[string]expectedQuote {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testdata, "ratls_expected.json"))
	if err != nil {
		t.Fatalf("RA-TLS test data missing (expected beside the repository): %v", err)
	}
	var doc struct {
		Quotes map[string]expectedQuote `json:"quotes"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Quotes) != 6 {
		t.Fatalf("ratls_expected.json lists %d quotes, want 6", len(doc.Quotes))
	}
	return doc.Quotes
}

// quoteBytes extracts the raw quote from a test data file: a raw .bin, a
// dstack JSON with a hex "quote" field, or the simulator's SCALE envelope
// (quote at offset 4, README 3.5).
func quoteBytes(t testing.TB, name string, e expectedQuote) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testdata, name))
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case strings.HasSuffix(name, ".json"):
		var j struct {
			Quote string `json:"quote"`
		}
		if err := json.Unmarshal(b, &j); err != nil {
			t.Fatal(err)
		}
		q, err := hex.DecodeString(strings.TrimPrefix(j.Quote, "0x"))
		if err != nil {
			t.Fatal(err)
		}
		return q
	case strings.HasPrefix(e.Source, "SCALE"):
		return b[4 : 4+e.QuoteLen]
	default:
		return b
	}
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestParseGenuineQuotes parses every genuine quote and compares each field
// with the independently computed ratls_expected.json.
func TestParseGenuineQuotes(t *testing.T) {
	for name, e := range loadExpected(t) {
		t.Run(name, func(t *testing.T) {
			raw := quoteBytes(t, name, e)
			if len(raw) != e.QuoteLen {
				t.Fatalf("quote is %d bytes, want %d", len(raw), e.QuoteLen)
			}
			q, err := ratls.ParseQuote(raw)
			if err != nil {
				t.Fatalf("ParseQuote: %v", err)
			}
			eq := func(field string, got []byte, want string) {
				t.Helper()
				if want == "" {
					t.Fatalf("%s: no expected value", field)
				}
				if !bytes.Equal(got, unhex(t, want)) {
					t.Errorf("%s = %x, want %s", field, got, want)
				}
			}
			h := q.Header
			if int(h.Version) != e.Version || int(h.AttestationKeyType) != e.AttKeyType || "0x"+hexU(h.TEEType) != e.TEEType {
				t.Errorf("header version %d att_key_type %d tee_type %#x, want %d %d %s", h.Version, h.AttestationKeyType, h.TEEType, e.Version, e.AttKeyType, e.TEEType)
			}
			if int(h.QESVN) != e.QESVN || int(h.PCESVN) != e.PCESVN {
				t.Errorf("qe_svn %d pce_svn %d, want %d %d", h.QESVN, h.PCESVN, e.QESVN, e.PCESVN)
			}
			eq("qe_vendor_id", h.QEVendorID[:], e.QEVendorID)
			if q.BodyOffset != e.BodyOffset || len(q.Signed) != e.SignedLen {
				t.Errorf("body offset %d signed %d, want %d %d", q.BodyOffset, len(q.Signed), e.BodyOffset, e.SignedLen)
			}
			if len(q.Extra) != e.Trailing || !bytes.Equal(q.Extra, make([]byte, e.Trailing)) {
				t.Errorf("extra %d bytes %x, want %d zero bytes", len(q.Extra), q.Extra, e.Trailing)
			}
			b := &q.Body
			eq("mrtd", b.MRTD[:], e.MRTD)
			eq("td_attributes", b.TDAttributes[:], e.TDAttributes)
			eq("xfam", b.XFAM[:], e.XFAM)
			eq("tee_tcb_svn", b.TEETCBSVN[:], e.TEETCBSVN)
			eq("mr_seam", b.MRSEAM[:], e.MRSEAM)
			eq("mr_signer_seam", b.MRSignerSEAM[:], e.MRSignerSEAM)
			eq("mr_config_id", b.MRConfigID[:], e.MRConfigID)
			eq("rtmr0", b.RTMR[0][:], e.RTMR0)
			eq("rtmr1", b.RTMR[1][:], e.RTMR1)
			eq("rtmr2", b.RTMR[2][:], e.RTMR2)
			eq("rtmr3", b.RTMR[3][:], e.RTMR3)
			eq("report_data", b.ReportData[:], e.ReportData)
			if b.Debug() != e.Debug {
				t.Errorf("debug %v, want %v", b.Debug(), e.Debug)
			}
			if e.Version == 5 {
				if q.BodyType != ratls.BodyTypeTD15 {
					t.Errorf("body type %d, want 3", q.BodyType)
				}
				eq("tee_tcb_svn2", b.TEETCBSVN2[:], e.TEETCBSVN2)
				eq("mr_service_td", b.MRServiceTD[:], e.MRServiceTD)
			}
			if int(q.QEReport.ISVSVN) != e.QEISVSVN {
				t.Errorf("QE ISVSVN %d, want %d", q.QEReport.ISVSVN, e.QEISVSVN)
			}
			if !bytes.HasPrefix(q.PCKChainPEM, []byte("-----BEGIN CERTIFICATE-----")) || bytes.Count(q.PCKChainPEM, []byte("BEGIN CERTIFICATE")) != 3 {
				t.Errorf("PCK chain is not three PEM certificates: %.60q", q.PCKChainPEM)
			}
			// The seam offsets, independently of the parser: the MRTD sits
			// at the README's offset in the raw bytes.
			mrtdOff := e.BodyOffset + 136
			if !bytes.Equal(raw[mrtdOff:mrtdOff+48], b.MRTD[:]) {
				t.Errorf("MRTD not at offset %d", mrtdOff)
			}
		})
	}
}

func hexU(v uint32) string {
	return strings.TrimLeft(hex.EncodeToString([]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), "0")
}

// TestVerifyGenuineQuotes verifies every genuine quote at the instant the
// README pins for it, and checks the verified PCK leaf.
func TestVerifyGenuineQuotes(t *testing.T) {
	for name, e := range loadExpected(t) {
		t.Run(name, func(t *testing.T) {
			q, err := ratls.ParseQuote(quoteBytes(t, name, e))
			if err != nil {
				t.Fatal(err)
			}
			at := mustTime(t, e.Appraisal.Now)
			v, err := q.Verify(ratls.VerifyOptions{Time: at})
			if err != nil {
				t.Fatalf("Verify at %s: %v", at, failureDetail(err))
			}
			if len(v.PCKChain) != 3 {
				t.Fatalf("chain of %d certificates, want 3", len(v.PCKChain))
			}
			leaf := v.PCKChain[0]
			if got := hex.EncodeToString(leaf.SerialNumber.Bytes()); got != strings.TrimLeft(e.PCKSerial, "0") && got != e.PCKSerial {
				t.Errorf("PCK serial %s, want %s", got, e.PCKSerial)
			}
			if !leaf.NotBefore.Equal(mustTime(t, e.PCKNotBefore)) {
				t.Errorf("PCK notBefore %s, want %s", leaf.NotBefore, e.PCKNotBefore)
			}
			if leaf.Issuer.CommonName != e.PCKIssuerCN {
				t.Errorf("PCK issuer %q, want %q", leaf.Issuer.CommonName, e.PCKIssuerCN)
			}
			if sum := sha256.Sum256(v.PCKChain[2].Raw); hex.EncodeToString(sum[:]) != ratls.IntelSGXRootSHA256 {
				t.Errorf("chain root SHA-256 %x, want the pinned root", sum)
			}
			// Before the PCK certificate was issued, the chain is refused.
			_, err = q.Verify(ratls.VerifyOptions{Time: leaf.NotBefore.Add(-time.Second)})
			wantClass(t, err, ratls.ClassPCKChain)
		})
	}
}

// TestEmbeddedRoot pins the embedded root to the README's hash and to the
// test data's copy.
func TestEmbeddedRoot(t *testing.T) {
	der, err := os.ReadFile(filepath.Join(testdata, "intel_sgx_root_ca.der"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ratls.IntelSGXRoot().Raw, der) {
		t.Fatal("embedded root differs from intel_sgx_root_ca.der")
	}
	if sum := sha256.Sum256(der); hex.EncodeToString(sum[:]) != ratls.IntelSGXRootSHA256 {
		t.Fatalf("root SHA-256 %x", sum)
	}
}

func mustTime(t testing.TB, s string) time.Time {
	t.Helper()
	at, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatal(err)
	}
	return at
}

func failureDetail(err error) string {
	var fe *failure.Error
	if errors.As(err, &fe) {
		return string(fe.Class) + ": " + fe.Detail()
	}
	return err.Error()
}

func wantClass(t testing.TB, err error, c failure.Class) *failure.Error {
	t.Helper()
	var fe *failure.Error
	if !errors.As(err, &fe) {
		t.Fatalf("error %v, want a failure.Error of class %s", err, c)
	}
	if fe.Class != c {
		t.Fatalf("class %s (%s), want %s", fe.Class, fe.Detail(), c)
	}
	if fe.Evidence == "" || fe.Fix == "" {
		t.Errorf("%s error lacks evidence or fix: %s", c, fe.Detail())
	}
	return fe
}
