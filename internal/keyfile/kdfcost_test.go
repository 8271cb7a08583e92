package keyfile

import (
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/failure"
)

// encryptedKeyWithKDF builds an ENCRYPTED PRIVATE KEY structure whose KDF
// parameters are given; the ciphertext is junk, since a refused cost must
// be refused before any decryption.
func encryptedKeyWithKDF(t *testing.T, kdf pkix.AlgorithmIdentifier) []byte {
	t.Helper()
	iv, _ := asn1.Marshal(make([]byte, 16))
	params, err := asn1.Marshal(struct{ KDF, Scheme pkix.AlgorithmIdentifier }{
		kdf, pkix.AlgorithmIdentifier{Algorithm: asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 42}, Parameters: asn1.RawValue{FullBytes: iv}}})
	if err != nil {
		t.Fatal(err)
	}
	der, err := asn1.Marshal(encryptedPrivateKeyInfo{
		Algorithm:     pkix.AlgorithmIdentifier{Algorithm: oidPBES2, Parameters: asn1.RawValue{FullBytes: params}},
		EncryptedData: make([]byte, 64)})
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: der})
}

func TestKDFCostBounded(t *testing.T) {
	pbkdf2 := func(iter int64) pkix.AlgorithmIdentifier {
		p, _ := asn1.Marshal(struct {
			Salt []byte
			Iter *big.Int
		}{make([]byte, 16), big.NewInt(iter)})
		return pkix.AlgorithmIdentifier{Algorithm: oidPBKDF2, Parameters: asn1.RawValue{FullBytes: p}}
	}
	scrypt := func(n, r, p int64) pkix.AlgorithmIdentifier {
		b, _ := asn1.Marshal(struct {
			Salt    []byte
			N, R, P *big.Int
		}{make([]byte, 16), big.NewInt(n), big.NewInt(r), big.NewInt(p)})
		return pkix.AlgorithmIdentifier{Algorithm: oidScrypt, Parameters: asn1.RawValue{FullBytes: b}}
	}
	for name, kdf := range map[string]pkix.AlgorithmIdentifier{
		"PBKDF2 with 2^31 iterations":  pbkdf2(1 << 31),
		"scrypt N=2^20 r=8 (1 GiB)":    scrypt(1<<20, 8, 1),
		"scrypt with a huge p":         scrypt(1<<14, 8, 1<<30),
		"scrypt with a negative N":     scrypt(-1, 8, 1),
		"PBKDF2 just above the bound":  pbkdf2(maxPBKDF2Iterations + 1),
		"scrypt just above 32 MiB (N)": scrypt(1<<15, 8, 1<<10),
	} {
		// No timing assertion: paying 2^31 iterations would take half an
		// hour and time the test out.
		_, err := ParsePrivateKey(encryptedKeyWithKDF(t, kdf), "pw", "k.pem")
		e, ok := failure.As(err)
		if !ok || e.Class != failure.KeyDecryptFailed || !strings.Contains(e.Message, "too expensive") {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Within the bounds the decryption is attempted (and fails on the junk).
	_, err := ParsePrivateKey(encryptedKeyWithKDF(t, pbkdf2(2048)), "pw", "k")
	if e, _ := failure.As(err); e == nil || strings.Contains(e.Message, "too expensive") {
		t.Errorf("an ordinary cost was refused: %v", err)
	}
}
