package ratls_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/ratls"
)

// collFields decodes a collateral file into its string fields.
func collFields(t testing.TB, name string) map[string]string {
	t.Helper()
	var m map[string]string
	readJSON(t, name, &m)
	if len(m) != 9 {
		t.Fatalf("%s has %d fields, want 9", name, len(m))
	}
	return m
}

func marshalColl(t testing.TB, m map[string]string) []byte {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// appraiseMutated parses the mutated collateral and appraises the v4 quote
// with it at the pinned instant; the first error is returned.
func appraiseMutated(t testing.TB, m map[string]string) error {
	t.Helper()
	q, v := verifiedQuote(t, v4Name)
	c, err := ratls.ParseCollateralJSON(marshalColl(t, m))
	if err != nil {
		return err
	}
	_, err = ratls.Appraise(q, v, c, time.Date(2025, 7, 1, 0, 0, 0, 0, time.UTC))
	return err
}

// flipHex flips the lowest bit of byte i (negative: from the end) of a
// hex field's decoded bytes.
func flipHex(t testing.TB, s string, i int) string {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	if i < 0 {
		i += len(b)
	}
	b[i] ^= 0x01
	return hex.EncodeToString(b)
}

// flipPEMSignature flips a bit inside the signature of certificate k of a
// PEM chain (re-encoded, so the PEM stays well-formed).
func flipPEMSignature(t testing.TB, s string, k int) string {
	t.Helper()
	var out bytes.Buffer
	rest := []byte(s)
	for i := 0; ; i++ {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if i == k {
			blk.Bytes = bytes.Clone(blk.Bytes)
			blk.Bytes[len(blk.Bytes)-5] ^= 0x01
		}
		if err := pem.Encode(&out, blk); err != nil {
			t.Fatal(err)
		}
	}
	return out.String()
}

// TestCollateralMutations flips one bit in each part of the genuine
// collateral: every mutation is refused as attestation_collateral, by
// parsing or by the appraisal's signature checks.
func TestCollateralMutations(t *testing.T) {
	base := collFields(t, collB0)
	if err := appraiseMutated(t, base); err != nil {
		t.Fatalf("genuine collateral: %s", failureDetail(err))
	}
	cases := []struct {
		name     string
		mutate   func(m map[string]string)
		evidence string // the refusal names this
	}{
		// '5' ^ 1 = '4': valid JSON, a lower level requirement, a broken signature.
		{"tcb_info svn", func(m map[string]string) {
			m["tcb_info"] = strings.Replace(m["tcb_info"], `{"svn":5,`, `{"svn":4,`, 1)
		}, "tcb_info ("},
		{"tcb_info status", func(m map[string]string) {
			m["tcb_info"] = strings.Replace(m["tcb_info"], `"tcbStatus":"OutOfDate"`, `"tcbStatus":"UpToDate"`, 1)
		}, "tcb_info ("},
		{"tcb_info first byte", func(m map[string]string) { m["tcb_info"] = "[" + m["tcb_info"][1:] }, "tcb_info"},
		{"tcb_info_signature r", func(m map[string]string) { m["tcb_info_signature"] = flipHex(t, m["tcb_info_signature"], 3) }, "tcb_info ("},
		{"tcb_info_signature s", func(m map[string]string) { m["tcb_info_signature"] = flipHex(t, m["tcb_info_signature"], -1) }, "tcb_info ("},
		{"qe_identity isvsvn", func(m map[string]string) {
			m["qe_identity"] = strings.Replace(m["qe_identity"], `"isvsvn":4`, `"isvsvn":5`, 1)
		}, "qe_identity ("},
		{"qe_identity_signature", func(m map[string]string) { m["qe_identity_signature"] = flipHex(t, m["qe_identity_signature"], 10) }, "qe_identity ("},
		{"pck_crl signature", func(m map[string]string) { m["pck_crl"] = flipHex(t, m["pck_crl"], -3) }, "pck_crl"},
		{"pck_crl body", func(m map[string]string) { m["pck_crl"] = flipHex(t, m["pck_crl"], 300) }, "pck_crl"},
		{"root_ca_crl signature", func(m map[string]string) { m["root_ca_crl"] = flipHex(t, m["root_ca_crl"], -3) }, "root_ca_crl"},
		{"root_ca_crl thisUpdate", func(m map[string]string) { m["root_ca_crl"] = flipHex(t, m["root_ca_crl"], 140) }, "root_ca_crl"},
		{"tcb_info_issuer_chain signer", func(m map[string]string) {
			m["tcb_info_issuer_chain"] = flipPEMSignature(t, m["tcb_info_issuer_chain"], 0)
		}, "tcb_info_issuer_chain"},
		{"tcb_info_issuer_chain root", func(m map[string]string) {
			m["tcb_info_issuer_chain"] = flipPEMSignature(t, m["tcb_info_issuer_chain"], 1)
		}, "tcb_info_issuer_chain"},
		{"qe_identity_issuer_chain signer", func(m map[string]string) {
			m["qe_identity_issuer_chain"] = flipPEMSignature(t, m["qe_identity_issuer_chain"], 0)
		}, "qe_identity_issuer_chain"},
		{"pck_crl_issuer_chain CA", func(m map[string]string) {
			m["pck_crl_issuer_chain"] = flipPEMSignature(t, m["pck_crl_issuer_chain"], 0)
		}, "pck_crl_issuer_chain"},
		{"pck_crl_issuer_chain base64", func(m map[string]string) {
			s := m["pck_crl_issuer_chain"]
			i := strings.Index(s, "\n") + 40
			m["pck_crl_issuer_chain"] = s[:i] + string(flipBase64(s[i])) + s[i+1:]
		}, "pck_crl_issuer_chain"},
		{"swapped chains", func(m map[string]string) { m["pck_crl_issuer_chain"] = m["tcb_info_issuer_chain"] }, "pck_crl_issuer_chain"},
		{"qe_identity for tcb_info", func(m map[string]string) {
			m["tcb_info"], m["tcb_info_signature"] = m["qe_identity"], m["qe_identity_signature"]
		}, "tcb_info"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := collFields(t, collB0)
			c.mutate(m)
			if bytes.Equal(marshalColl(t, m), marshalColl(t, base)) {
				t.Fatal("mutation changed nothing")
			}
			fe := wantClass(t, appraiseMutated(t, m), ratls.ClassCollateral)
			t.Log(fe.Message, "|", fe.Evidence)
			if !strings.Contains(fe.Evidence, c.evidence) {
				t.Errorf("evidence %q lacks %q", fe.Evidence, c.evidence)
			}
		})
	}
}

// TestCollateralForeignRoot signs a permissive TCB info and QE identity
// with a test CA that copies the Intel root's name: refused, because the
// signer does not chain to the quote's root.
func TestCollateralForeignRoot(t *testing.T) {
	m := collFields(t, collB0)
	intel := ratls.IntelSGXRoot()
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: intel.Subject, NotBefore: intel.NotBefore, NotAfter: intel.NotAfter,
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	rootCert, _ := x509.ParseCertificate(rootDER)
	signKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	signTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "Intel SGX TCB Signing"},
		NotBefore: intel.NotBefore, NotAfter: intel.NotAfter, KeyUsage: x509.KeyUsageDigitalSignature}
	signDER, err := x509.CreateCertificate(rand.Reader, signTmpl, rootCert, &signKey.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	chain := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: signDER})) + string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER}))
	sign := func(doc string) string {
		d := sha256.Sum256([]byte(doc))
		r, s, err := ecdsa.Sign(rand.Reader, signKey, d[:])
		if err != nil {
			t.Fatal(err)
		}
		sig := make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
		return hex.EncodeToString(sig)
	}
	m["tcb_info"] = strings.ReplaceAll(m["tcb_info"], `"tcbStatus":"OutOfDate"`, `"tcbStatus":"UpToDate"`)
	m["tcb_info_signature"], m["tcb_info_issuer_chain"] = sign(m["tcb_info"]), chain
	m["qe_identity_signature"], m["qe_identity_issuer_chain"] = sign(m["qe_identity"]), chain
	fe := wantClass(t, appraiseMutated(t, m), ratls.ClassCollateral)
	if !strings.Contains(fe.Evidence, ratls.IntelSGXRootSHA256) {
		t.Errorf("evidence does not name the quote's root: %s", fe.Evidence)
	}
	// The test signer presented under the genuine Intel root.
	m["tcb_info_issuer_chain"] = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: signDER})) +
		string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: intel.Raw}))
	fe = wantClass(t, appraiseMutated(t, m), ratls.ClassCollateral)
	if !strings.Contains(fe.Evidence, "is not signed by certificate 1") {
		t.Errorf("evidence: %s", fe.Evidence)
	}
}
