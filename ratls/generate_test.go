package ratls_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"math/big"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/ratls"
)

// patchingProvider stands in for TDX hardware, which this machine lacks:
// like configfs-tsm it returns a quote whose report_data is the requested
// one. The quote is genuine dstack data (quote-report) with report_data
// written at its offset, as dstack's simulator does (patch_report_data);
// that voids Intel's signature, which NewCertificate does not check. Its
// event log is the quote's own, so the RTMRs still replay.
type patchingProvider struct {
	quote  []byte
	events []ratls.Event
	asked  [][64]byte
	ignore bool // return the quote unpatched: a broken provider
	err    error
}

func (p *patchingProvider) Quote(_ context.Context, rd [64]byte) ([]byte, error) {
	p.asked = append(p.asked, rd)
	if p.err != nil {
		return nil, p.err
	}
	q := bytes.Clone(p.quote)
	if !p.ignore {
		copy(q[568:632], rd[:]) // v4 report_data (README section 2)
	}
	return q, nil
}

func (p *patchingProvider) EventLog(context.Context) ([]ratls.Event, error) { return p.events, nil }

// quoteOnly hides the EventLog method.
type quoteOnly struct{ p *patchingProvider }

func (q quoteOnly) Quote(ctx context.Context, rd [64]byte) ([]byte, error) { return q.p.Quote(ctx, rd) }

func newProvider(t testing.TB) *patchingProvider {
	t.Helper()
	events, quote := logOf(t, reportName)
	return &patchingProvider{quote: quote, events: events}
}

// handshake runs a TLS handshake over an in-memory pipe with the server
// presenting cert and the client trusting roots for name.
func handshake(t testing.TB, cert *tls.Certificate, roots *x509.CertPool, name string) error {
	t.Helper()
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	deadline := time.Now().Add(10 * time.Second)
	_ = c.SetDeadline(deadline)
	_ = s.SetDeadline(deadline)
	srv := tls.Server(s, &tls.Config{Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS12})
	done := make(chan error, 1)
	go func() { done <- srv.Handshake() }()
	err := tls.Client(c, &tls.Config{RootCAs: roots, ServerName: name, MinVersion: tls.VersionTLS12}).Handshake()
	c.Close()
	<-done
	return err
}

// TestNewCertificate issues certificates in both formats and reads them
// back: the provider was asked for exactly KeyBinding(SPKI of the final
// certificate), the quote and event log round-trip through the
// extensions, the key is a fresh P-256 key, and the certificate serves TLS.
func TestNewCertificate(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		t.Run(map[bool]string{false: "v0", true: "legacy"}[legacy], func(t *testing.T) {
			p := newProvider(t)
			appID := unhex(t, "3763bc34552cf3a27ff71ad5f7a90471562a1a2d")
			cert, err := ratls.NewCertificate(context.Background(), p, ratls.CertificateOptions{
				DNSNames: []string{"db.example"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, AppID: appID, Legacy: legacy})
			if err != nil {
				t.Fatalf("NewCertificate: %s", failureDetail(err))
			}
			leaf, err := x509.ParseCertificate(cert.Certificate[0])
			if err != nil {
				t.Fatal(err)
			}
			binding := ratls.KeyBinding(leaf.RawSubjectPublicKeyInfo)
			if len(p.asked) != 1 || p.asked[0] != binding {
				t.Fatalf("provider asked for %x, want once KeyBinding(SPKI) %x", p.asked, binding)
			}
			key, ok := cert.PrivateKey.(*ecdsa.PrivateKey)
			if !ok || key.Curve != elliptic.P256() || !key.PublicKey.Equal(leaf.PublicKey) {
				t.Fatalf("private key %T does not match the certificate's P-256 key", cert.PrivateKey)
			}
			e, err := ratls.ParseCertificateEvidence(leaf)
			if err != nil {
				t.Fatalf("ParseCertificateEvidence: %s", failureDetail(err))
			}
			q, err := ratls.ParseQuote(e.Quote)
			if err != nil {
				t.Fatal(failureDetail(err))
			}
			if q.Body.ReportData != binding {
				t.Error("quote in the certificate is not bound to its key")
			}
			if !reflect.DeepEqual(e.EventLog, p.events) {
				t.Error("event log did not round-trip")
			}
			if rtmr, err := ratls.ReplayRTMRs(e.EventLog); err != nil || rtmr != q.Body.RTMR {
				t.Errorf("event log does not replay to the quote: %v", err)
			}
			if !bytes.Equal(e.AppID, appID) {
				t.Errorf("app id %x", e.AppID)
			}
			wantFormat, has18 := "v0", true
			if legacy {
				wantFormat, has18 = "legacy", false
			}
			if e.Format != wantFormat {
				t.Errorf("format %q, want %q", e.Format, wantFormat)
			}
			if legacy && e.ReportData != nil || !legacy && !bytes.Equal(e.ReportData, binding[:]) {
				t.Errorf("envelope report_data %x", e.ReportData)
			}
			found := map[string]bool{}
			for _, x := range leaf.Extensions {
				found[x.Id.String()] = true
			}
			if found[ratls.OIDAttestation.String()] != has18 || found[ratls.OIDRawQuote.String()] == has18 ||
				found[ratls.OIDEventLog.String()] == has18 || !found[ratls.OIDAppID.String()] {
				t.Errorf("extensions %v", found)
			}
			if leaf.KeyUsage != x509.KeyUsageDigitalSignature || !reflect.DeepEqual(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) || leaf.IsCA {
				t.Errorf("key usage %v, ext %v, CA %v", leaf.KeyUsage, leaf.ExtKeyUsage, leaf.IsCA)
			}
			if d := leaf.NotAfter.Sub(leaf.NotBefore); d < 24*time.Hour || d > 24*time.Hour+2*time.Minute {
				t.Errorf("validity %s, want about 24h", d)
			}
			roots := x509.NewCertPool()
			roots.AddCert(leaf)
			if err := handshake(t, cert, roots, "db.example"); err != nil {
				t.Errorf("TLS handshake with the certificate: %v", err)
			}
			if err := handshake(t, cert, roots, "other.example"); err == nil {
				t.Error("handshake accepted a name the certificate does not carry")
			}
		})
	}
}

// TestNewCertificateWithoutEventLog: a provider without EventLog gives an
// envelope with an empty event log; options pass through.
func TestNewCertificateWithoutEventLog(t *testing.T) {
	p := newProvider(t)
	nb, na := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)
	cert, err := ratls.NewCertificate(context.Background(), quoteOnly{p}, ratls.CertificateOptions{NotBefore: nb, NotAfter: na})
	if err != nil {
		t.Fatal(failureDetail(err))
	}
	e, err := ratls.ParseCertificateEvidence(cert.Leaf)
	if err != nil {
		t.Fatal(failureDetail(err))
	}
	if len(e.EventLog) != 0 || e.AppID != nil || !cert.Leaf.NotBefore.Equal(nb) || !cert.Leaf.NotAfter.Equal(na) {
		t.Errorf("events %d, app id %x, validity %s..%s", len(e.EventLog), e.AppID, cert.Leaf.NotBefore, cert.Leaf.NotAfter)
	}
}

// TestNewCertificateIssuer: with an issuer the leaf chains to it, the chain
// carries the issuer's certificate, and a TLS client trusting only the
// issuer connects.
func TestNewCertificateIssuer(t *testing.T) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "test KMS CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	issuer := &tls.Certificate{Certificate: [][]byte{caDER}, PrivateKey: caKey}
	p := newProvider(t)
	cert, err := ratls.NewCertificate(context.Background(), p, ratls.CertificateOptions{DNSNames: []string{"db.example"}, Issuer: issuer})
	if err != nil {
		t.Fatal(failureDetail(err))
	}
	if len(cert.Certificate) != 2 || !bytes.Equal(cert.Certificate[1], caDER) {
		t.Fatalf("chain of %d certificates, want leaf and CA", len(cert.Certificate))
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "db.example"}); err != nil {
		t.Errorf("leaf does not chain to the issuer: %v", err)
	}
	if p.asked[0] != ratls.KeyBinding(cert.Leaf.RawSubjectPublicKeyInfo) {
		t.Error("issuer-signed leaf: provider not asked for the leaf's binding")
	}
	if err := handshake(t, cert, roots, "db.example"); err != nil {
		t.Errorf("TLS handshake through the issuer: %v", err)
	}
}

// TestNewCertificateRefusals: a failing provider, a provider that ignores
// report_data, a quote that is no quote, a bad issuer, an empty validity.
// No error carries private key material.
func TestNewCertificateRefusals(t *testing.T) {
	otherKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(8), Subject: pkix.Name{CommonName: "CA"}, NotBefore: time.Now(),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	var secrets []string
	for _, k := range []*ecdsa.PrivateKey{otherKey, caKey} {
		raw, err := k.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, hex.EncodeToString(raw), new(big.Int).SetBytes(raw).String())
	}

	for name, c := range map[string]struct {
		p    ratls.QuoteProvider
		opts ratls.CertificateOptions
	}{
		"provider error":            {&patchingProvider{err: errors.New("configfs-tsm: no such device")}, ratls.CertificateOptions{}},
		"report_data ignored":       {&patchingProvider{quote: newProvider(t).quote, ignore: true}, ratls.CertificateOptions{}},
		"not a quote":               {&patchingProvider{quote: make([]byte, 700)}, ratls.CertificateOptions{}},
		"issuer key mismatch":       {newProvider(t), ratls.CertificateOptions{Issuer: &tls.Certificate{Certificate: [][]byte{caDER}, PrivateKey: otherKey}}},
		"issuer without cert":       {newProvider(t), ratls.CertificateOptions{Issuer: &tls.Certificate{PrivateKey: caKey}}},
		"issuer key cannot sign":    {newProvider(t), ratls.CertificateOptions{Issuer: &tls.Certificate{Certificate: [][]byte{caDER}, PrivateKey: "k"}}},
		"log not explaining RTMR3":  {staleLogProvider(t), ratls.CertificateOptions{}},
		"NotAfter before NotBefore": {newProvider(t), ratls.CertificateOptions{NotBefore: time.Now(), NotAfter: time.Now().Add(-time.Hour)}},
	} {
		t.Run(name, func(t *testing.T) {
			cert, err := ratls.NewCertificate(context.Background(), c.p, c.opts)
			if cert != nil {
				t.Fatal("certificate returned with an error")
			}
			fe := wantClass(t, err, ratls.ClassIssue)
			text := fe.Detail() + fe.Error()
			for _, s := range secrets {
				if strings.Contains(text, s) {
					t.Errorf("error carries private key material: %s", text)
				}
			}
			if strings.Contains(text, "PRIVATE KEY") {
				t.Errorf("error carries a PEM key: %s", text)
			}
		})
	}
}

// staleLogProvider's event log lacks the quote's last RTMR3 event.
func staleLogProvider(t testing.TB) *patchingProvider {
	p := newProvider(t)
	p.events = p.events[:len(p.events)-1]
	return p
}
