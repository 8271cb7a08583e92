package health

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/internal/attestation"
	"github.com/pgtrust/pgtrust/internal/proxy"
	"github.com/pgtrust/pgtrust/ratls"
)

// TestGatewayHealthAndAttestation runs a gateway listener whose server
// certificate comes from the RA-TLS simulator, in front of an upstream that
// is down: /health reports the listener (auth mode, certificate expiry,
// attestation "simulator") and the upstream unreachable (503), /attestation
// serves the quote of the very certificate the listener presents.
func TestGatewayHealthAndAttestation(t *testing.T) {
	sim, err := ratls.NewSimulator(ratls.SimulatorOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadPort := dead.Addr().(*net.TCPAddr).Port
	dead.Close()
	conn, err := connstring.ParseWithEnv(fmt.Sprintf("host=127.0.0.1 port=%d sslmode=require", deadPort), map[string]string{}, "")
	if err != nil {
		t.Fatal(err)
	}
	p, err := proxy.New(proxy.Config{Upstreams: []proxy.UpstreamConfig{{Name: "db", Conn: conn,
		Gateways: []proxy.GatewayConfig{{Listen: "127.0.0.1:0", RATLS: &proxy.RATLSCertificate{Provider: sim, Kind: "simulator",
			Options: ratls.CertificateOptions{IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}}}}}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	addr := p.Addrs()["db"][0].String()

	// The listener's certificate, through SSLRequest.
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	ssl, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	if _, err := c.Write(ssl); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := c.Read(b[:]); err != nil || b[0] != 'S' {
		t.Fatalf("SSLRequest: %q %v", b[0], err)
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}) // the evidence is what is checked
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	leaf := tc.ConnectionState().PeerCertificates[0]
	ev, err := ratls.ParseCertificateEvidence(leaf)
	if err != nil {
		t.Fatalf("the listener's certificate carries no RA-TLS evidence: %v", err)
	}

	s := New("127.0.0.1:0", p, prometheus.NewRegistry(), nil)
	code, body := get(t, s.Handler(), "/health")
	if code != 503 {
		t.Fatalf("/health with the upstream down: %d %s", code, body)
	}
	var r GatewayReport
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatal(err)
	}
	// No probe ran yet: the upstream's status is unknown, so not reachable.
	if len(r.Upstreams) != 1 || r.Upstreams[0].Reachable || len(r.Gateways) != 1 {
		t.Fatalf("report %s", body)
	}
	g := r.Gateways[0]
	if g.Auth != "passthrough" || g.Attestation != "simulator" || g.Listen != addr || g.CertificateNotAfter == nil ||
		!g.CertificateNotAfter.Equal(leaf.NotAfter) {
		t.Fatalf("gateway status %+v (certificate not after %s)", g, leaf.NotAfter)
	}
	code, body = get(t, s.Handler(), "/attestation")
	if code != 200 {
		t.Fatalf("/attestation: %d %s", code, body)
	}
	var ar attestation.Response
	if err := json.Unmarshal([]byte(body), &ar); err != nil {
		t.Fatal(err)
	}
	if ar.Quote != hex.EncodeToString(ev.Quote) {
		t.Fatalf("/attestation serves another quote than the listener's certificate")
	}
}
