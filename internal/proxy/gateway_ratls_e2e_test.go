package proxy

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/ping"
	"github.com/pgtrust/pgtrust/internal/scram"
	"github.com/pgtrust/pgtrust/internal/testpki"
	"github.com/pgtrust/pgtrust/pgtls"
	"github.com/pgtrust/pgtrust/ratls"
)

// TestGatewayRATLSEndToEnd: the gateway serves an RA-TLS certificate from
// the simulator provider in front of a real PostgreSQL, in cluster_secret
// mode. With a policy that allows the simulator and pins its MRTD,
// pgtls.Connect (with channel_binding=require, bound to that very RA-TLS
// certificate), ping's code path, and psql through a pgtrust proxy whose
// upstream is the gateway with an [attestation] policy each run SELECT 1.
// Without allow_simulator, or with another MRTD in the allowlist, the
// gateway is refused before any credential is sent.
func TestGatewayRATLSEndToEnd(t *testing.T) {
	ca := testpki.NewRootCA(t, "pgtrust gateway RA-TLS test CA")
	server := ca.Server(t)
	srv := pgtest.Start(t, pgtest.Options{
		SSL: true, ServerCert: server.ChainPEM, ServerKey: server.KeyPEM,
		HBA: []string{
			"hostssl all app_rw 127.0.0.1/32 scram-sha-256",
			"host all all 127.0.0.1/32 reject",
		},
		Setup: []string{"CREATE ROLE app_rw LOGIN PASSWORD '" + gwUpRWPW + "'"},
	})
	dir := t.TempDir()
	root := testpki.WriteFile(t, dir, "root.crt", ca.CertPEM, 0o644)
	rw, err := scram.NewVerifier([]byte(gwReadWriteSecret), 4096, nil)
	if err != nil {
		t.Fatal(err)
	}
	mrtd := ratls.DefaultSimulatorMRTD()
	sim, err := ratls.NewSimulator(ratls.SimulatorOptions{MRTD: mrtd})
	if err != nil {
		t.Fatal(err)
	}
	up := mustParse(t, fmt.Sprintf("host=127.0.0.1 port=%d sslmode=verify-full sslrootcert=%s dbname=postgres", srv.Port, root))
	gw := startProxy(t, Config{Upstreams: []UpstreamConfig{{Name: "db", Conn: up, Gateways: []GatewayConfig{{
		Listen: "127.0.0.1:0", Auth: AuthClusterSecret,
		RATLS: &RATLSCertificate{Provider: sim, Kind: "simulator",
			Options: ratls.CertificateOptions{IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}},
		Roles:   []GatewayRole{{User: "teesql_readwrite", Role: "app_rw", Verifier: rw, Password: gwUpRWPW}},
		Backoff: backoffForTests(),
	}}}}})
	gwAddr := gw.Addrs()["db"][0].(*net.TCPAddr)
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=teesql_readwrite dbname=postgres sslmode=require channel_binding=require connect_timeout=10", gwAddr.Port)
	simMRTD := hex.EncodeToString(mrtd[:])
	policy := func(allowSim bool, mrtd string) *ratls.Policy {
		return &ratls.Policy{MRTD: []string{mrtd}, AllowSimulator: allowSim, SkipTCB: !allowSim}
	}
	connect := func(p *ratls.Policy) (*pgtls.Facts, error) {
		cfg := mustParse(t, dsn)
		cfg.Password = gwReadWriteSecret
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		pg, facts, err := pgtls.Connect(ctx, cfg, &pgtls.Options{Attestation: p})
		if err != nil {
			return facts, err
		}
		defer pg.Close(context.Background())
		_, err = exec1(t, pg, "SELECT 1")
		return facts, err
	}

	facts, err := connect(policy(true, simMRTD))
	if err != nil || !facts.Attested {
		t.Fatalf("pgtls.Connect through the RA-TLS gateway: %v", err)
	}
	if !strings.Contains(gw.logs.String(), "SCRAM-SHA-256-PLUS") {
		t.Errorf("the session did not use SCRAM-SHA-256-PLUS bound to the RA-TLS certificate:\n%s", gw.logs.String())
	}
	for _, c := range []struct {
		p     *ratls.Policy
		class failure.Class
	}{
		{policy(false, simMRTD), ratls.ClassSimulator},
		{policy(true, strings.Repeat("ab", 48)), ratls.ClassMRTD},
	} {
		_, err := connect(c.p)
		if e, ok := failure.As(err); !ok || e.Class != c.class {
			t.Fatalf("want %s, got %v", c.class, err)
		}
	}
	if n := strings.Count(gw.logs.String(), "user=teesql_readwrite"); n == 0 {
		t.Fatalf("no gateway session logged:\n%s", gw.logs.String())
	}

	// ping's code path (pgtrust ping --allow-simulator --mrtd …).
	t.Setenv("PGPASSWORD", gwReadWriteSecret)
	if r := ping.Run(context.Background(), dsn, time.Minute, policy(true, simMRTD)); !r.OK || r.Attested == nil || !*r.Attested {
		t.Fatalf("ping through the RA-TLS gateway: %+v %+v", r, r.Error)
	}

	// psql → pgtrust proxy (upstream = the gateway, attestation policy) →
	// gateway → PostgreSQL. The client's SCRAM passes through the proxy to
	// the gateway (-PLUS is stripped there, as always in passthrough).
	toGW := mustParse(t, fmt.Sprintf("host=127.0.0.1 port=%d sslmode=require dbname=postgres", gwAddr.Port))
	px := startProxy(t, Config{Upstreams: []UpstreamConfig{
		{Name: "attested", Listen: "127.0.0.1:0", Conn: toGW, Attestation: policy(true, simMRTD)},
		{Name: "nosim", Listen: "127.0.0.1:0", Conn: toGW.Clone(), Attestation: policy(false, simMRTD)},
	}})
	q := func(name string) pgtest.PsqlResult {
		return pgtest.PsqlQuery(t, fmt.Sprintf("host=127.0.0.1 port=%d user=teesql_readwrite dbname=postgres sslmode=disable", px.port(t, name)),
			"SELECT 1", map[string]string{"PGPASSWORD": gwReadWriteSecret})
	}
	if r := q("attested"); !r.OK || strings.TrimSpace(r.Stdout) != "1" {
		t.Fatalf("psql through the proxy to the attested gateway: %+v", r)
	}
	if r := q("nosim"); r.OK || !strings.Contains(r.Stderr, string(ratls.ClassSimulator)) {
		t.Fatalf("proxy without allow_simulator: %+v", r)
	}
}
