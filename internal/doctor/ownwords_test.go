package doctor_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/chain"
	"github.com/pgtrust/pgtrust/internal/doctor"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/testpki"
	"github.com/pgtrust/pgtrust/pgtls"
)

// testOwnWords runs doctor and pgtls over the certificate failures of
// pgtls's parity scenarios (unknown CA, expired, wrong host, intermediate
// missing, revoked, not yet valid, and a CA regenerated under the same
// name) and requires that crypto/x509's texts appear nowhere: not in the
// failure's message, evidence or fix, not in any stage or verdict, not in
// the rendered report. The class's words and the evidence explain.
func testOwnWords(t *testing.T, w *world) {
	// Two more servers: one whose certificate is not valid yet, one that
	// does not send its intermediate.
	future := w.ca.Server(t, testpki.NotYetValid())
	inter := w.ca.NewIntermediate(t, "doctor test intermediate")
	interLeaf := inter.Server(t)
	fsrv := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: future.ChainPEM, ServerKey: future.KeyPEM})
	isrv := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: interLeaf.CertPEM, ServerKey: interLeaf.KeyPEM})
	// The same subject as the CA that issued the main server's certificate,
	// another key: a development CA made again.
	regen := testpki.NewRootCA(t, w.ca.Cert.Subject.CommonName)
	testpki.WriteFile(t, w.dir, "regen.crt", regen.CertPEM, 0o644)
	at := func(s *pgtest.Server) string { return fmt.Sprintf("host=%s port=%d", s.Host, s.Port) }

	const base = " user=postgres dbname=postgres connect_timeout=10 "
	cases := []struct {
		name, dsn string
		class     failure.Class
	}{
		{"unknown CA", "{main}" + base + "sslmode=verify-ca sslrootcert={dir}/other.crt", failure.UnknownCA},
		{"expired", "{old}" + base + "sslmode=verify-ca sslrootcert={dir}/root.crt", failure.CertExpired},
		{"wrong host", fmt.Sprintf("host=db.example.com hostaddr=127.0.0.1 port=%d", w.main.Port) + base + "sslmode=verify-full sslrootcert={dir}/root.crt", failure.HostnameMismatch},
		{"intermediate missing", at(isrv) + base + "sslmode=verify-ca sslrootcert={dir}/root.crt", failure.UnknownCA},
		{"revoked", "{main}" + base + "sslmode=verify-ca sslrootcert={dir}/root.crt sslcrl={dir}/root.crl", failure.CertRevoked},
		{"not yet valid", at(fsrv) + base + "sslmode=verify-ca sslrootcert={dir}/root.crt", failure.CertNotYetValid},
		{"same name, other key", "{main}" + base + "sslmode=verify-ca sslrootcert={dir}/regen.crt", failure.UnknownCA},
		{"same name, other key, verify-full", "{main}" + base + "sslmode=verify-full sslrootcert={dir}/regen.crt", failure.UnknownCA},
	}
	noX509 := func(t *testing.T, what, s string) {
		t.Helper()
		if strings.Contains(s, "x509:") {
			t.Errorf("%s carries crypto/x509's text:\n%s", what, s)
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dsn := w.dsn(c.dsn)
			r := w.diagnose(t, dsn)
			if r.Class != c.class {
				t.Fatalf("doctor: class %s, want %s: %s", r.Class, c.class, jsonOf(t, r.Error))
			}
			var b strings.Builder
			r.WriteText(&b, doctor.Style{})
			if testing.Verbose() {
				t.Logf("doctor's report:\n%s", b.String())
			}
			noX509(t, "doctor's report", jsonOf(t, r))
			noX509(t, "doctor's rendered report", b.String())

			cfg, err := doctor.ParseDSN(dsn, w.opts())
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			pg, facts, err := pgtls.Connect(ctx, cfg, nil)
			if err == nil {
				pg.Close(ctx)
			}
			if got := failure.ClassOf(err); got != c.class {
				t.Fatalf("pgtls: class %s, want %s: %v", got, c.class, err)
			}
			if e, ok := failure.As(err); ok {
				noX509(t, "pgtls's error", e.Detail())
				noX509(t, "pgtls's report", jsonOf(t, failure.ReportOf(err)))
			}
			// The verification on its own, as certs and doctor call it.
			roots, err := chain.LoadRoots(cfg.SSLRootCert)
			if err != nil || facts == nil || len(facts.PeerCertificates) == 0 {
				t.Fatalf("roots %v, facts %+v", err, facts)
			}
			vo := pgtls.VerifyOptions{Roots: roots.Pool, RootFile: roots.File, Intermediates: roots.Intermediates,
				CheckHost: cfg.SSLMode == "verify-full", Host: cfg.Hosts[0].Host}
			if cfg.SSLCRL != "" && !cfg.SSLCRLDefault {
				data, rerr := os.ReadFile(cfg.SSLCRL)
				if rerr != nil {
					t.Fatal(rerr)
				}
				if vo.CRLs, rerr = chain.ParseCRLs(data); rerr != nil {
					t.Fatal(rerr)
				}
			}
			_, verr := pgtls.VerifyServer(facts.PeerCertificates, vo)
			if got := failure.ClassOf(verr); got != c.class {
				t.Fatalf("VerifyServer: class %s, want %s: %v", got, c.class, verr)
			}
			noX509(t, "VerifyServer's error", verr.Error())
			noX509(t, "VerifyServer's report", jsonOf(t, failure.ReportOf(verr)))
			if strings.Contains(c.name, "same name") {
				sameNameSaid(t, "VerifyServer's evidence", failure.ReportOf(verr).Evidence, w, regen)
			}

			if strings.Contains(c.name, "same name") {
				for what, ev := range map[string]string{
					"the verify-ca verdict":        r.ServerCertificate.VerifyCA.Detail,
					"the server-certificate stage": stage(r, doctor.StageServerCertificate).Detail,
				} {
					sameNameSaid(t, what, ev, w, regen)
				}
				if e, ok := failure.As(err); ok {
					sameNameSaid(t, "pgtls's evidence", e.Evidence, w, regen)
					if !strings.Contains(e.Fix, "copy the current certificate of "+w.ca.Cert.Subject.String()) {
						t.Errorf("pgtls's fix: %s", e.Fix)
					}
				}
				sameNameSaid(t, "doctor's evidence", r.Error.Evidence, w, regen)
			}
		})
	}
}

// sameNameSaid requires the evidence of a regenerated CA: the file's CA by
// name and key, the server certificate's authority key id, and the word
// for it, instead of "it needs the certificate of" a CA the file holds.
func sameNameSaid(t *testing.T, what, s string, w *world, regen *testpki.CA) {
	t.Helper()
	for _, want := range []string{
		"regen.crt holds " + regen.Cert.Subject.String(),
		"key SHA-256 " + chain.KeyFingerprint(regen.Cert),
		"signed by a different key with the same name",
		"authority key id " + chain.KeyID(w.server.Cert.AuthorityKeyId),
		"regenerated",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("%s lacks %q:\n%s", what, want, s)
		}
	}
	if strings.Contains(s, "it needs the certificate of") {
		t.Errorf("%s still asks for a certificate the file holds:\n%s", what, s)
	}
}
