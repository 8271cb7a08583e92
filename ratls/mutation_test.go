package ratls_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/binary"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/ratls"
)

const v4Name = "dcap_qvl_tdx_quote_v4.bin"

// genuineV4 returns a copy of the dcap-qvl v4 quote and its pinned instant.
func genuineV4(t testing.TB) ([]byte, time.Time) {
	t.Helper()
	e := loadExpected(t)[v4Name]
	return bytes.Clone(quoteBytes(t, v4Name, e)), mustTime(t, e.Appraisal.Now)
}

// Offsets in the v4 quote (README section 2): signature data at 636.
const (
	offSig     = 636
	offAttKey  = offSig + 64
	offQEReprt = offAttKey + 64 + 6 // after cert_data type and size
	offQESig   = offQEReprt + 384
	offAuthLen = offQESig + 64
)

// TestMutationsFailWithTheirClass flips one bit in each part of a genuine
// quote and checks that verification refuses it with that part's class.
func TestMutationsFailWithTheirClass(t *testing.T) {
	raw, at := genuineV4(t)
	authLen := int(binary.LittleEndian.Uint16(raw[offAuthLen:]))
	if authLen == 0 {
		t.Fatal("genuine quote has no QE auth data")
	}
	cases := []struct {
		name  string
		off   int
		class failure.Class
	}{
		{"header qe_vendor_id", 12, ratls.ClassQuoteSignature},
		{"body mrtd", 184, ratls.ClassQuoteSignature},
		{"body td_attributes debug bit", 168, ratls.ClassQuoteSignature},
		{"body report_data last byte", 631, ratls.ClassQuoteSignature},
		{"quote signature r", offSig + 5, ratls.ClassQuoteSignature},
		{"quote signature s", offSig + 40, ratls.ClassQuoteSignature},
		{"attestation key", offAttKey + 3, ratls.ClassQEBinding},
		{"QE report cpusvn", offQEReprt + 2, ratls.ClassQEReportSignature},
		{"QE report report_data", offQEReprt + 320, ratls.ClassQEReportSignature},
		{"QE report signature", offQESig + 10, ratls.ClassQEReportSignature},
		{"QE auth data", offAuthLen + 2, ratls.ClassQEBinding},
		{"PCK leaf signature", leafSignatureOffset(t, raw), ratls.ClassPCKChain},
	}
	// The genuine quote verifies, so each refusal below is the mutation's.
	if q, err := ratls.ParseQuote(raw); err != nil {
		t.Fatal(err)
	} else if _, err := q.Verify(ratls.VerifyOptions{Time: at}); err != nil {
		t.Fatal(failureDetail(err))
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := bytes.Clone(raw)
			if c.name == "PCK leaf signature" {
				m[c.off] = flipBase64(m[c.off])
			} else {
				m[c.off] ^= 0x01
			}
			q, err := ratls.ParseQuote(m)
			if err != nil {
				t.Fatalf("mutated quote no longer parses: %v", err)
			}
			_, err = q.Verify(ratls.VerifyOptions{Time: at})
			wantClass(t, err, c.class)
		})
	}
}

// leafSignatureOffset returns the offset in the quote of a base64 character
// that encodes a byte inside the PCK leaf's signature value (near the end
// of its DER).
func leafSignatureOffset(t testing.TB, raw []byte) int {
	t.Helper()
	begin := bytes.Index(raw, []byte("-----BEGIN CERTIFICATE-----"))
	end := bytes.Index(raw, []byte("-----END CERTIFICATE-----"))
	if begin < 0 || end < begin {
		t.Fatal("no PEM certificate in the quote")
	}
	start := begin + len("-----BEGIN CERTIFICATE-----")
	var pos []int // offsets of base64 characters, in order
	var text []byte
	for i := start; i < end; i++ {
		if c := raw[i]; c != '\n' && c != '\r' {
			pos = append(pos, i)
			text = append(text, c)
		}
	}
	der, err := base64.StdEncoding.DecodeString(string(text))
	if err != nil {
		t.Fatal(err)
	}
	target := len(der) - 10 // inside the ECDSA signature's s
	k := (target/3)*4 + 1
	return pos[k]
}

// flipBase64 returns the base64 character whose 6-bit value differs in its
// lowest bit.
func flipBase64(c byte) byte {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	return alphabet[strings.IndexByte(alphabet, c)^1]
}

// TestDifferentRoot verifies a genuine quote against another root with the
// Intel root's name: refused as an untrusted root.
func TestDifferentRoot(t *testing.T) {
	raw, at := genuineV4(t)
	q, err := ratls.ParseQuote(raw)
	if err != nil {
		t.Fatal(err)
	}
	intel := ratls.IntelSGXRoot()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: intel.Subject.CommonName, Organization: intel.Subject.Organization},
		NotBefore: intel.NotBefore, NotAfter: intel.NotAfter, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	other, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	_, err = q.Verify(ratls.VerifyOptions{Root: other, Time: at})
	fe := wantClass(t, err, ratls.ClassUntrustedRoot)
	if !strings.Contains(fe.Evidence, ratls.IntelSGXRootSHA256) {
		t.Errorf("evidence does not name the chain's root hash: %s", fe.Evidence)
	}
}

// TestVerifyTimeWindow: the chain is refused after the PCK leaf expires.
func TestVerifyTimeWindow(t *testing.T) {
	raw, _ := genuineV4(t)
	q, err := ratls.ParseQuote(raw)
	if err != nil {
		t.Fatal(err)
	}
	_, err = q.Verify(ratls.VerifyOptions{Time: time.Date(2032, 2, 7, 0, 0, 0, 0, time.UTC)})
	fe := wantClass(t, err, ratls.ClassPCKChain)
	if !strings.Contains(fe.Evidence, "2032-02-07T00:00:00Z") {
		t.Errorf("evidence does not name the verification instant: %s", fe.Evidence)
	}
}

// TestMalformed: every truncation of a genuine quote that cuts into its
// signature data is refused as malformed, naming the field and offset;
// bad header values are refused as unsupported.
func TestMalformed(t *testing.T) {
	raw, _ := genuineV4(t)
	q, err := ratls.ParseQuote(raw)
	if err != nil {
		t.Fatal(err)
	}
	sigEnd := len(raw) - len(q.Extra)
	for n := 0; n < len(raw); n++ {
		_, err := ratls.ParseQuote(raw[:n])
		if n >= sigEnd {
			if err != nil {
				t.Fatalf("truncated to %d bytes (only padding cut): %v", n, err)
			}
			continue
		}
		fe := wantClass(t, err, ratls.ClassMalformed)
		if !strings.Contains(fe.Evidence, "offset") {
			t.Fatalf("truncated to %d: evidence lacks the offset: %s", n, fe.Evidence)
		}
	}
	fe := wantClass(t, parseMutated(raw, func(m []byte) { binary.LittleEndian.PutUint32(m[632:], 1<<30) }), ratls.ClassMalformed)
	if !strings.Contains(fe.Evidence, "signature_data at offset 636") {
		t.Errorf("evidence: %s", fe.Evidence)
	}
	// The declared signature data is shorter than its contents.
	wantClass(t, parseMutated(raw, func(m []byte) { binary.LittleEndian.PutUint32(m[632:], binary.LittleEndian.Uint32(m[632:])-1) }), ratls.ClassMalformed)
	wantClass(t, parseMutated(raw, func(m []byte) { m[0] = 3 }), ratls.ClassUnsupported)
	wantClass(t, parseMutated(raw, func(m []byte) { m[2] = 3 }), ratls.ClassUnsupported)
	wantClass(t, parseMutated(raw, func(m []byte) { m[4] = 0 }), ratls.ClassUnsupported)
	wantClass(t, parseMutated(raw, func(m []byte) { m[offAttKey+64] = 5 }), ratls.ClassUnsupported)
}

// TestMalformedV5 checks the v5 body descriptor.
func TestMalformedV5(t *testing.T) {
	name := "dcap_qvl_tdx_quote_v5_no_tcb_match.bin"
	raw := bytes.Clone(quoteBytes(t, name, loadExpected(t)[name]))
	fe := wantClass(t, parseMutated(raw, func(m []byte) { m[50] = 0x80 }), ratls.ClassMalformed)
	if !strings.Contains(fe.Evidence, "expected 648") {
		t.Errorf("evidence: %s", fe.Evidence)
	}
	wantClass(t, parseMutated(raw, func(m []byte) { m[48] = 1 }), ratls.ClassUnsupported)
	if _, err := ratls.ParseQuote(raw[:len(raw)-1]); err == nil {
		t.Error("v5 quote without padding, one byte short: parsed")
	}
}

func parseMutated(raw []byte, f func([]byte)) error {
	m := bytes.Clone(raw)
	f(m)
	_, err := ratls.ParseQuote(m)
	return err
}
