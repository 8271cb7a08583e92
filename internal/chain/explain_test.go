package chain_test

import (
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/chain"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

// A CA made again under the same name: the root file holds one, the peer's
// certificate was signed by the other. The evidence must say that, with
// the key of the file's CA and the authority key id of the certificate,
// instead of asking for a CA the file already names.
func TestSameNameOtherKey(t *testing.T) {
	dir := t.TempDir()
	old := testpki.NewRootCA(t, "dev CA")
	regen := testpki.NewRootCA(t, "dev CA")
	leaf := old.Server(t)
	regenFile := testpki.WriteFile(t, dir, "regen.crt", regen.CertPEM, 0o644)

	root := testpki.NewRootCA(t, "root")
	inter1 := root.NewIntermediate(t, "issuing CA")
	inter2 := root.NewIntermediate(t, "issuing CA")
	interLeaf := inter1.Server(t)
	bundleFile := testpki.WriteFile(t, dir, "bundle.crt", append(append([]byte{}, inter2.CertPEM...), root.CertPEM...), 0o644)

	tests := []struct {
		name      string
		presented []*x509.Certificate
		file      string
		holder    *x509.Certificate
		child     *x509.Certificate
	}{
		{"leaf alone", []*x509.Certificate{leaf.Cert}, regenFile, regen.Cert, leaf.Cert},
		{"leaf sent with its (old) root", []*x509.Certificate{leaf.Cert, old.Cert}, regenFile, regen.Cert, leaf.Cert},
		{"intermediate regenerated, file holds the new one", []*x509.Certificate{interLeaf.Cert}, bundleFile, inter2.Cert, interLeaf.Cert},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			roots, err := chain.LoadRoots(tt.file)
			if err != nil {
				t.Fatal(err)
			}
			_, err = chain.Verify(tt.presented, chain.Options{Roots: roots.Pool, RootFile: roots.File, Intermediates: roots.Intermediates, Role: "server"})
			e, ok := failure.As(err)
			if !ok || e.Class != failure.UnknownCA {
				t.Fatalf("want unknown_ca, got %v", err)
			}
			for _, want := range []string{
				tt.file + " holds " + tt.holder.Subject.String(),
				"key SHA-256 " + chain.KeyFingerprint(tt.holder),
				"subject key id " + chain.KeyID(tt.holder.SubjectKeyId),
				"server certificate for localhost was signed by a different key with the same name",
				"authority key id " + chain.KeyID(tt.child.AuthorityKeyId),
				"regenerated",
			} {
				if !strings.Contains(e.Evidence, want) {
					t.Errorf("evidence lacks %q:\n%s", want, e.Evidence)
				}
			}
			if !strings.Contains(e.Fix, "copy the current certificate of "+tt.holder.Subject.String()) {
				t.Errorf("fix: %s", e.Fix)
			}
			if e.Error() != chain.VerifyFailed || strings.Contains(e.Evidence+e.Fix, "x509:") {
				t.Errorf("crypto/x509's words surface: %q / %q", e.Error(), e.Evidence)
			}
		})
	}

	// Not that case: another CA altogether keeps the general evidence.
	other := testpki.NewRootCA(t, "other CA")
	otherFile := testpki.WriteFile(t, dir, "other.crt", other.CertPEM, 0o644)
	roots, err := chain.LoadRoots(otherFile)
	if err != nil {
		t.Fatal(err)
	}
	_, err = chain.Verify([]*x509.Certificate{leaf.Cert}, chain.Options{Roots: roots.Pool, RootFile: roots.File, Role: "server"})
	if e, ok := failure.As(err); !ok || !strings.Contains(e.Evidence, `it needs the certificate of "CN=dev CA"`) || strings.Contains(e.Evidence, "same name") {
		t.Errorf("other CA: %v", err)
	}
	// And the right CA verifies: nothing to explain.
	if _, found := chain.FindSameNameOtherKey([]*x509.Certificate{leaf.Cert}, []*x509.Certificate{old.Cert}); found {
		t.Error("the issuing CA itself was reported as another key")
	}
}

// Every failure of Verify is said in pgtrust's words: libpq's message,
// and evidence without crypto/x509's text.
func TestVerifyOwnWords(t *testing.T) {
	root := testpki.NewRootCA(t, "root")
	other := testpki.NewRootCA(t, "other")
	inter := root.NewIntermediate(t, "inter")
	client := root.Client(t, "alice")
	now := time.Now()
	rootsOnly := chain.SplitRoots("root.crt", []*x509.Certificate{root.Cert})
	revokedLeaf := root.Server(t)
	crlRevoked, err := chain.ParseCRLs(root.CRL(t, revokedLeaf.Cert))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name      string
		presented []*x509.Certificate
		crls      []*x509.RevocationList
		want      failure.Class
	}{
		{"unknown CA", []*x509.Certificate{other.Server(t).Cert}, nil, failure.UnknownCA},
		{"intermediate missing", []*x509.Certificate{inter.Server(t).Cert}, nil, failure.UnknownCA},
		{"expired", []*x509.Certificate{root.Server(t, testpki.Expired()).Cert}, nil, failure.CertExpired},
		{"not yet valid", []*x509.Certificate{root.Server(t, testpki.NotYetValid()).Cert}, nil, failure.CertNotYetValid},
		{"client certificate presented as a server's", []*x509.Certificate{client.Cert}, nil, failure.UnknownCA},
		{"revoked", []*x509.Certificate{revokedLeaf.Cert}, crlRevoked, failure.CertRevoked},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := chain.Verify(c.presented, chain.Options{Roots: rootsOnly.Pool, RootFile: rootsOnly.File, CRLs: c.crls, Now: now, Role: "server"})
			e, ok := failure.As(err)
			if !ok || e.Class != c.want {
				t.Fatalf("class %s, want %s: %v", failure.ClassOf(err), c.want, err)
			}
			if e.Evidence == "" {
				t.Errorf("no evidence")
			}
			t.Logf("%s — %s", e.Error(), e.Evidence)
			rep := failure.ReportOf(err)
			for what, s := range map[string]string{"error": err.Error(), "message": rep.Message, "evidence": rep.Evidence, "fix": rep.Fix, "detail": e.Detail()} {
				if strings.Contains(s, "x509:") {
					t.Errorf("%s carries crypto/x509's text: %s", what, s)
				}
			}
		})
	}
}
