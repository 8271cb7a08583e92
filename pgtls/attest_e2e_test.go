package pgtls_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/testpki"
	"github.com/pgtrust/pgtrust/pgtls"
	"github.com/pgtrust/pgtrust/ratls"
)

// raTLSPEM makes an RA-TLS certificate from a fresh simulator with the
// default MRTD and returns it and its key as PEM, plus the parsed leaf.
func raTLSPEM(t *testing.T) (certPEM, keyPEM []byte, leaf *x509.Certificate) {
	t.Helper()
	sim, err := ratls.NewSimulator(ratls.SimulatorOptions{MRTD: ratls.DefaultSimulatorMRTD()})
	if err != nil {
		t.Fatal(err)
	}
	c, err := ratls.NewCertificate(context.Background(), sim, ratls.CertificateOptions{
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	})
	if err != nil {
		t.Fatal(err)
	}
	return tlsToPEM(t, c)
}

func tlsToPEM(t *testing.T, c *tls.Certificate) (certPEM, keyPEM []byte, leaf *x509.Certificate) {
	t.Helper()
	for _, der := range c.Certificate {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	k, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err = x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: k}), leaf
}

// sameEvidenceOtherKey copies the RA-TLS extensions of leaf into a
// self-signed certificate for a fresh key: the quote's key binding then
// names a key the server does not hold.
func sameEvidenceOtherKey(t *testing.T, leaf *x509.Certificate) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: leaf.Subject,
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, ext := range leaf.Extensions {
		if strings.HasPrefix(ext.Id.String(), "1.3.6.1.4.1.62397.") {
			tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, ext)
		}
	}
	if len(tmpl.ExtraExtensions) == 0 {
		t.Fatal("the RA-TLS certificate carries no dstack extension")
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), testpki.KeyPEMPKCS8(key)
}

func simPolicy() *ratls.Policy {
	mrtd := ratls.DefaultSimulatorMRTD()
	return &ratls.Policy{AllowSimulator: true, MRTD: []string{hex.EncodeToString(mrtd[:])}, SkipTCB: true}
}

// TestAttestationSimulatorEndToEnd: PostgreSQL serves an RA-TLS certificate
// made by the simulator provider; pgtls.Connect with sslmode=require and a
// policy (allow_simulator, MRTD = the simulator's) runs SELECT 1, and each
// policy or server change is refused with its class. psql (libpq) also
// connects with sslmode=require: it cannot check attestation.
func TestAttestationSimulatorEndToEnd(t *testing.T) {
	certPEM, keyPEM, leaf := raTLSPEM(t)
	s := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: certPEM, ServerKey: keyPEM})
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=require connect_timeout=10", s.Port)

	t.Run("accepted", func(t *testing.T) {
		var tr attestTrace
		pg, facts, err := pgtls.Connect(context.Background(), parseDSN(t, dsn), tr.options(simPolicy()))
		if err != nil {
			t.Fatal(err)
		}
		defer pg.Close(context.Background())
		res, err := pg.Exec(context.Background(), "SELECT 1").ReadAll()
		if err != nil || string(res[0].Rows[0][0]) != "1" {
			t.Fatalf("SELECT 1: %v", err)
		}
		if !facts.Attested || facts.Attestation == nil || facts.Attestation.Err() != nil || len(tr.reports) != 1 {
			t.Fatalf("not attested: %+v", facts)
		}
		for _, c := range facts.Attestation.Checks {
			t.Logf("check %-24s passed=%v skipped=%v %s", c.Name, c.Passed, c.Skipped, c.Detail)
		}
	})

	refused := func(t *testing.T, p *ratls.Policy, want ...failure.Class) {
		t.Helper()
		var tr attestTrace
		pg, _, err := pgtls.Connect(context.Background(), parseDSN(t, dsn), tr.options(p))
		if err == nil {
			pg.Close(context.Background())
			t.Fatal("connected")
		}
		e, ok := failure.As(err)
		if !ok {
			t.Fatalf("not a failure: %v", err)
		}
		for _, w := range want {
			if e.Class == w {
				if e.Evidence == "" || e.Fix == "" {
					t.Fatalf("%s without evidence or fix", e.Class)
				}
				return
			}
		}
		t.Fatalf("class %s, want one of %v: %v", e.Class, want, err)
	}
	t.Run("without allow_simulator", func(t *testing.T) {
		p := simPolicy()
		p.AllowSimulator = false
		refused(t, p, ratls.ClassSimulator)
	})
	t.Run("other MRTD", func(t *testing.T) {
		p := simPolicy()
		p.MRTD = []string{strings.Repeat("00", 48)}
		refused(t, p, "attestation_mrtd")
	})
	t.Run("psql connects without attestation", func(t *testing.T) {
		r := pgtest.Psql(t, dsn, nil)
		if !r.OK || strings.TrimSpace(r.Stdout) != "1" {
			t.Fatalf("psql: %+v", r)
		}
	})

	t.Run("key differs from the binding", func(t *testing.T) {
		c, k := sameEvidenceOtherKey(t, leaf)
		s.SetServerCert(t, c, k)
		s.Reload(t)
		refused(t, simPolicy(), "attestation_key_binding")
	})
	t.Run("plain certificate", func(t *testing.T) {
		plain := testpki.SelfSigned(t)
		s.SetServerCert(t, plain.CertPEM, plain.KeyPEM)
		s.Reload(t)
		refused(t, simPolicy(), "attestation_no_evidence")
	})
}

// TestAttestationStageTimeout: the handshake completes but the attestation
// does not — the PCCS the policy fetches collateral from never answers. The
// connection is refused within AttestationTimeout with the attestation
// stage named. The certificate carries a genuine Intel quote in the legacy
// raw-quote extension (and an empty event log), so every check before the TCB appraisal passes and
// the collateral fetch is what hangs.
func TestAttestationStageTimeout(t *testing.T) {
	quote, err := os.ReadFile(filepath.Join("..", "..", "shared", "testdata", "ratls", "dcap_qvl_tdx_quote_v4.bin"))
	if err != nil {
		t.Fatal(err)
	}
	val, err := asn1.Marshal(quote)
	if err != nil {
		t.Fatal(err)
	}
	emptyLog, err := asn1.Marshal([]byte("[]")) // RTMR3 of this quote is zero
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "genuine quote, unbound key"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		ExtraExtensions: []pkix.Extension{{Id: ratls.OIDRawQuote, Value: val}, {Id: ratls.OIDEventLog, Value: emptyLog}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	s := pgtest.Start(t, pgtest.Options{SSL: true,
		ServerCert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), ServerKey: testpki.KeyPEMPKCS8(key)})

	release := make(chan struct{})
	var asked atomic.Int32
	pccs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer pccs.Close()
	defer close(release)

	var reports []*ratls.Report
	opts := &pgtls.Options{
		Attestation: &ratls.Policy{
			MRTD:       []string{"91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"},
			Collateral: ratls.NewPCCS(pccs.URL, pccs.Client()),
		},
		AttestationTimeout: 400 * time.Millisecond,
		Trace:              &pgtls.Trace{Attestation: func(_ string, r *ratls.Report) { reports = append(reports, r) }},
	}
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=require", s.Port)
	_, _, err = pgtls.Connect(context.Background(), parseDSN(t, dsn), opts)
	e, ok := failure.As(err)
	if !ok || e.Class != failure.Timeout || !strings.Contains(e.Message, "attestation timed out after 400ms") ||
		!strings.Contains(e.Evidence, "TLS handshake completed") {
		t.Fatalf("want the attestation stage's timeout, got %v", err)
	}
	if asked.Load() == 0 {
		t.Fatal("the PCCS was never asked: the timeout did not come from the attestation stage")
	}
	if len(reports) != 0 {
		t.Fatalf("an unfinished attestation reported %d reports", len(reports))
	}
}

// TestAttestationKMSChainWithIntermediate: the server sends its RA-TLS
// certificate with the KMS intermediate that issued it; the policy pins the
// KMS root the TD measured as its key provider. The whole chain the server
// sent is attested, so the leaf chains to the root through the
// intermediate and SELECT 1 runs; without the pinned root it is refused.
func TestAttestationKMSChainWithIntermediate(t *testing.T) {
	root := testpki.NewRootCA(t, "KMS root")
	inter := root.NewIntermediate(t, "KMS intermediate")
	kp, err := json.Marshal(map[string]string{"name": "kms", "id": hex.EncodeToString(root.Cert.RawSubjectPublicKeyInfo)})
	if err != nil {
		t.Fatal(err)
	}
	var events []ratls.Event
	for _, e := range []struct {
		name    string
		payload []byte
	}{{"system-preparing", nil}, {"key-provider", kp}, {"system-ready", nil}} {
		events = append(events, ratls.Event{IMR: 3, EventType: ratls.RuntimeEventType, Event: e.name, Payload: e.payload})
	}
	sim, err := ratls.NewSimulator(ratls.SimulatorOptions{Events: events})
	if err != nil {
		t.Fatal(err)
	}
	issuer := &tls.Certificate{Certificate: [][]byte{inter.Cert.Raw}, PrivateKey: inter.Key, Leaf: inter.Cert}
	c, err := ratls.NewCertificate(context.Background(), sim, ratls.CertificateOptions{
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, Issuer: issuer})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Certificate) < 2 {
		t.Fatalf("the RA-TLS certificate carries %d certificates, want the leaf and the intermediate", len(c.Certificate))
	}
	certPEM, keyPEM, _ := tlsToPEM(t, c)
	s := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: certPEM, ServerKey: keyPEM})
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=require", s.Port)

	p := simPolicy()
	p.KMSRoots = root.Pool()
	p.KeyProvider = "kms"
	pg, facts, err := pgtls.Connect(context.Background(), parseDSN(t, dsn), &pgtls.Options{Attestation: p})
	if err != nil {
		t.Fatalf("KMS-issued RA-TLS certificate with its intermediate: %v", err)
	}
	defer pg.Close(context.Background())
	if _, err := pg.Exec(context.Background(), "SELECT 1").ReadAll(); err != nil || !facts.Attested {
		t.Fatalf("SELECT 1: %v, attested %v", err, facts.Attested)
	}

	other := simPolicy()
	other.KMSRoots = testpki.NewRootCA(t, "another KMS root").Pool()
	_, _, err = pgtls.Connect(context.Background(), parseDSN(t, dsn), &pgtls.Options{Attestation: other})
	if e, ok := failure.As(err); !ok || e.Class != ratls.ClassKMSChain {
		t.Fatalf("another KMS root pinned: want %s, got %v", ratls.ClassKMSChain, err)
	}
}
