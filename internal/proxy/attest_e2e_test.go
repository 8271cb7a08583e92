package proxy

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/ratls"
)

// TestAttestationProxySimulator: PostgreSQL serves an RA-TLS certificate
// from the simulator provider; psql through the proxy (upstream
// sslmode=require plus a policy allowing the simulator's MRTD) runs
// SELECT 1, and the same upstream without allow_simulator is refused with
// attestation_simulator.
func TestAttestationProxySimulator(t *testing.T) {
	mrtd := ratls.DefaultSimulatorMRTD()
	sim, err := ratls.NewSimulator(ratls.SimulatorOptions{MRTD: mrtd})
	if err != nil {
		t.Fatal(err)
	}
	c, err := ratls.NewCertificate(context.Background(), sim, ratls.CertificateOptions{IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	var certPEM []byte
	for _, der := range c.Certificate {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	k, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	srv := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: certPEM, ServerKey: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: k})})
	conn := mustParse(t, fmt.Sprintf("host=127.0.0.1 port=%d sslmode=require", srv.Port))
	good := &ratls.Policy{AllowSimulator: true, MRTD: []string{hex.EncodeToString(mrtd[:])}, SkipTCB: true}
	noSim := &ratls.Policy{MRTD: []string{hex.EncodeToString(mrtd[:])}, SkipTCB: true}
	p := startProxy(t, Config{Upstreams: []UpstreamConfig{
		{Name: "tee", Listen: "127.0.0.1:0", Conn: conn, Attestation: good},
		{Name: "nosim", Listen: "127.0.0.1:0", Conn: conn, Attestation: noSim},
	}})
	r := pgtest.Psql(t, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", p.port(t, "tee")), nil)
	if !r.OK || strings.TrimSpace(r.Stdout) != "1" {
		t.Fatalf("attested upstream: %+v", r)
	}
	r = pgtest.Psql(t, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", p.port(t, "nosim")), nil)
	if r.OK || !strings.Contains(r.Stderr, "pgtrust: upstream nosim: "+string(ratls.ClassSimulator)) {
		t.Fatalf("without allow_simulator: %+v", r)
	}
}
