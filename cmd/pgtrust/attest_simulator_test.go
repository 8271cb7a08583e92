package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/internal/attestation"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/ratls"
)

// TestAttestVerifySimulatorEndToEnd: a real PostgreSQL server presents an
// RA-TLS certificate made by the simulator provider. `attest verify
// host:port` fetches it through pgtls and every check passes, including
// the key binding, with --allow-simulator and the simulator's MRTD;
// without --allow-simulator it is refused with attestation_simulator. The
// /attestation handler serves the same certificate, and its saved
// response verifies the same way.
func TestAttestVerifySimulatorEndToEnd(t *testing.T) {
	sim, err := ratls.NewSimulator(ratls.SimulatorOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ratls.NewCertificate(context.Background(), sim, ratls.CertificateOptions{DNSNames: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	s := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: certPEM, ServerKey: keyPEM})
	t.Setenv("HOME", pgtest.EmptyHome(t))
	mrtd := ratls.DefaultSimulatorMRTD()
	simMRTD := hex.EncodeToString(mrtd[:])
	target := s.Host + ":" + itoa(s.Port)

	out, errOut, code := runCerts(t, "attest", "verify", target, "--allow-simulator", "--mrtd", simMRTD, "--json")
	d := decodeAttest(t, out)
	if code != 0 || !d.OK || d.Measurements == nil || d.Measurements.MRTD != simMRTD {
		t.Fatalf("simulator RA-TLS server: exit %d %+v\n%s%s", code, d, out, errOut)
	}
	for _, c := range d.Checks {
		if c.Name == "key_binding" && c.Status != "pass" {
			t.Errorf("key binding %s", c.Status)
		}
	}
	out, _, code = runCerts(t, "attest", "verify", target, "--skip-tcb", "--mrtd", simMRTD, "--json")
	if d = decodeAttest(t, out); code != 1 || d.Class != "attestation_simulator" {
		t.Fatalf("without --allow-simulator: exit %d %s", code, d.Class)
	}

	// doctor with the same policy: the attestation stage passes and the
	// diagnosis connection is made (exit 0, 10 stages).
	out, errOut, code = runCerts(t, "doctor", "host=127.0.0.1 port="+itoa(s.Port)+" user=postgres dbname=postgres sslmode=require",
		"--allow-simulator", "--mrtd", simMRTD, "--json")
	var r struct {
		OK     bool `json:"ok"`
		Stages []struct{ Name, Status string }
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil || code != 0 || !r.OK || len(r.Stages) != 10 ||
		r.Stages[6].Name != "attestation" || r.Stages[6].Status != "ok" {
		t.Fatalf("doctor: exit %d %v\n%s%s", code, err, out, errOut)
	}

	// ping with the policy connects and runs SELECT 1; without
	// --allow-simulator, or with another MRTD, it is refused (exit 1).
	dsn := "host=127.0.0.1 port=" + itoa(s.Port) + " user=postgres dbname=postgres sslmode=require"
	out, errOut, code = runCerts(t, "ping", dsn, "--allow-simulator", "--mrtd", simMRTD, "--json")
	var p struct {
		OK          bool
		Class       string
		Attested    *bool `json:"attested"`
		Attestation *struct {
			MRTD      string `json:"mrtd"`
			Simulated bool   `json:"simulated"`
		} `json:"attestation"`
	}
	if err := json.Unmarshal([]byte(out), &p); err != nil || code != 0 || !p.OK || p.Attested == nil || !*p.Attested ||
		p.Attestation == nil || p.Attestation.MRTD != simMRTD || !p.Attestation.Simulated {
		t.Fatalf("ping with the simulator policy: exit %d %v\n%s%s", code, err, out, errOut)
	}
	for _, c := range []struct {
		flags []string
		class string
	}{
		{[]string{"--skip-tcb", "--mrtd", simMRTD}, "attestation_simulator"},
		{[]string{"--allow-simulator", "--mrtd", strings.Repeat("ab", 48)}, "attestation_mrtd"},
	} {
		out, errOut, code = runCerts(t, append([]string{"ping", dsn, "--json"}, c.flags...)...)
		p.Class = ""
		if err := json.Unmarshal([]byte(out), &p); err != nil || code != 1 || p.OK || p.Class != c.class || p.Attested == nil || *p.Attested {
			t.Fatalf("ping %v: exit %d class %q, want 1 %s\n%s%s", c.flags, code, p.Class, c.class, out, errOut)
		}
	}

	// /attestation serves the certificate; the saved response verifies.
	h := attestation.NewHandler(attestation.CertificateSource(func() *tls.Certificate { return cert }), attestation.HandlerOptions{})
	srv := httptest.NewServer(h)
	defer srv.Close()
	res, err := srv.Client().Get(srv.URL + "/attestation")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || strings.Contains(string(body), "PRIVATE KEY") {
		t.Fatalf("/attestation: %d\n%s", res.StatusCode, body)
	}
	saved := filepath.Join(t.TempDir(), "attestation.json")
	if err := os.WriteFile(saved, body, 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = runCerts(t, "attest", "verify", saved, "--allow-simulator", "--mrtd", simMRTD)
	if code != 0 || !strings.Contains(out, "PASS  key_binding") {
		t.Fatalf("saved /attestation response: exit %d\n%s%s", code, out, errOut)
	}
}
