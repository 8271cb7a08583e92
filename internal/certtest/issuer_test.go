package certtest

import (
	"context"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/certs"
)

func TestIssuer(t *testing.T) {
	ca, err := certs.NewCA(certs.Options{CommonName: "certtest CA"})
	if err != nil {
		t.Fatal(err)
	}
	iss, err := Issuer{CA: ca, CommonName: "app", Validity: time.Hour}.Issue(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	leaf := iss.Certificate.Leaf
	if leaf.Subject.CommonName != "app" || leaf.NotAfter.Sub(leaf.NotBefore) != time.Hour || len(iss.CAs) != 1 || !iss.CAs[0].Equal(ca.Cert) {
		t.Fatalf("issued %s valid %s, CAs %d", leaf.Subject, leaf.NotAfter.Sub(leaf.NotBefore), len(iss.CAs))
	}
	if err := leaf.CheckSignatureFrom(ca.Cert); err != nil {
		t.Fatal(err)
	}
}
