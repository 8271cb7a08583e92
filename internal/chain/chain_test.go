package chain_test

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/chain"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

func TestVerify(t *testing.T) {
	root := testpki.NewRootCA(t, "root")
	other := testpki.NewRootCA(t, "other")
	inter := root.NewIntermediate(t, "inter")
	leaf := inter.Server(t)
	expired := root.Server(t, testpki.Expired())
	future := root.Server(t, testpki.NotYetValid())
	strangerExpired := other.Server(t, testpki.Expired())
	now := time.Now()
	crlRoot, _ := chain.ParseCRLs(root.CRL(t))
	crlInter, _ := chain.ParseCRLs(inter.CRL(t))
	crlRevoked, _ := chain.ParseCRLs(inter.CRL(t, leaf.Cert))
	staleInter, _ := chain.ParseCRLs(inter.CRLAt(t, now.Add(-48*time.Hour), now.Add(-24*time.Hour)))
	rootsOnly := chain.SplitRoots("root.crt", []*x509.Certificate{root.Cert})
	interOnly := chain.SplitRoots("inter.crt", []*x509.Certificate{inter.Cert})
	bundle := chain.SplitRoots("bundle.crt", []*x509.Certificate{inter.Cert, root.Cert})
	if len(bundle.Anchors) != 1 || len(bundle.Intermediates) != 1 {
		t.Fatalf("bundle split %d anchors, %d intermediates", len(bundle.Anchors), len(bundle.Intermediates))
	}

	tests := []struct {
		name      string
		presented []*x509.Certificate
		roots     *chain.Roots
		crls      [][]*x509.RevocationList
		want      failure.Class
	}{
		{"leaf and intermediate to root", []*x509.Certificate{leaf.Cert, inter.Cert}, rootsOnly, nil, failure.OK},
		{"intermediate missing", []*x509.Certificate{leaf.Cert}, rootsOnly, nil, failure.UnknownCA},
		{"intermediate from the root file", []*x509.Certificate{leaf.Cert}, bundle, nil, failure.OK},
		{"intermediate alone is no anchor", []*x509.Certificate{leaf.Cert, inter.Cert}, interOnly, nil, failure.UnknownCA},
		{"expired", []*x509.Certificate{expired.Cert}, rootsOnly, nil, failure.CertExpired},
		{"not yet valid", []*x509.Certificate{future.Cert}, rootsOnly, nil, failure.CertNotYetValid},
		{"expired and from another CA is an unknown CA", []*x509.Certificate{strangerExpired.Cert}, rootsOnly, nil, failure.UnknownCA},
		{"CRLs for every issuer", []*x509.Certificate{leaf.Cert, inter.Cert}, rootsOnly, [][]*x509.RevocationList{crlRoot, crlInter}, failure.OK},
		{"root CRL alone does not cover the intermediate's leaf", []*x509.Certificate{leaf.Cert, inter.Cert}, rootsOnly, [][]*x509.RevocationList{crlRoot}, failure.UnknownCA},
		{"revoked", []*x509.Certificate{leaf.Cert, inter.Cert}, rootsOnly, [][]*x509.RevocationList{crlRoot, crlRevoked}, failure.CertRevoked},
		{"stale CRL", []*x509.Certificate{leaf.Cert, inter.Cert}, rootsOnly, [][]*x509.RevocationList{crlRoot, staleInter}, failure.CertExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var crls []*x509.RevocationList
			for _, c := range tt.crls {
				crls = append(crls, c...)
			}
			_, err := chain.Verify(tt.presented, chain.Options{Roots: tt.roots.Pool, RootFile: tt.roots.File,
				Intermediates: tt.roots.Intermediates, CRLs: crls, Now: now, Role: "server"})
			if got := failure.ClassOf(err); got != tt.want {
				t.Fatalf("class %s, want %s (%v)", got, tt.want, err)
			}
			if e, ok := failure.As(err); ok && (e.Evidence == "" || e.Fix == "" || e.Message != chain.VerifyFailed) {
				t.Fatalf("incomplete error: %q / %q / %q", e.Message, e.Evidence, e.Fix)
			}
		})
	}
}

func TestParseCRLsRejectsGarbage(t *testing.T) {
	for _, in := range []string{"", "garbage", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"} {
		if _, err := chain.ParseCRLs([]byte(in)); err == nil {
			t.Errorf("ParseCRLs(%q) succeeded", in)
		}
	}
}
