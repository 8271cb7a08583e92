package ratls_test

import (
	"crypto/sha512"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"testing"

	"github.com/pgtrust/pgtrust/ratls"
)

// TestKeyBindingGolden: KeyBinding of the dstack KMS CA's SPKI is the
// README 5.2 golden value, and the SPKI is the one ratls_expected.json
// lists.
func TestKeyBindingGolden(t *testing.T) {
	const golden = "2d3a4b5a928758be8ffa0de31cbb716d1c5969c244b165c414d9dc3cadee93d8497d9d099beae3832a5f17798c18a08a8b407fdaed3b22aba002492a4402cd3b"
	var exp struct {
		KeyBinding struct {
			SPKI       string `json:"example_spki_der"`
			ReportData string `json:"example_report_data"`
		} `json:"key_binding"`
	}
	if err := json.Unmarshal(readTestdata(t, "ratls_expected.json"), &exp); err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(readTestdata(t, "dstack_simulator_kms_ca.pem"))
	if block == nil {
		t.Fatal("no PEM block")
	}
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(ca.RawSubjectPublicKeyInfo) != exp.KeyBinding.SPKI {
		t.Fatalf("KMS CA SPKI %x, want %s", ca.RawSubjectPublicKeyInfo, exp.KeyBinding.SPKI)
	}
	got := ratls.KeyBinding(ca.RawSubjectPublicKeyInfo)
	if hex.EncodeToString(got[:]) != golden || exp.KeyBinding.ReportData != golden {
		t.Errorf("KeyBinding = %x, want %s", got, golden)
	}
	if other := ratls.KeyBinding(ca.RawSubjectPublicKeyInfo[1:]); other == got {
		t.Error("KeyBinding ignores its input")
	}
}

// TestExtend: one extension is SHA-384 of the register and the digest.
func TestExtend(t *testing.T) {
	d := sha512.Sum384([]byte("event"))
	var zero [48]byte
	want := sha512.Sum384(append(zero[:], d[:]...))
	if got := ratls.Extend(zero, d[:]); got != want {
		t.Errorf("Extend = %x, want %x", got, want)
	}
}
