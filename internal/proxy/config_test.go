package proxy

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

func TestConfigDefaultsAndValidation(t *testing.T) {
	conn := mustParse(t, "host=db.example sslmode=verify-full")
	cfg, err := Config{Upstreams: []UpstreamConfig{{Name: "a", Conn: conn}}}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	u := cfg.Upstreams[0]
	if u.Listen != DefaultListen || u.UnixSocketPort != 6432 || u.MaxConnections != 100 ||
		cfg.DrainTimeout != DefaultDrainTimeout || cfg.StartupTimeout != DefaultStartupTimeout || cfg.MaxStartupPacket != 10000 {
		t.Fatalf("defaults: %+v %+v", cfg, u)
	}
	cfg, err = Config{Upstreams: []UpstreamConfig{{Name: "a", UnixSocketDir: "/tmp/x", Conn: conn}}}.withDefaults()
	if err != nil || cfg.Upstreams[0].Listen != "" || cfg.Upstreams[0].UnixSocketPort != 5432 {
		t.Fatalf("socket only: %v %+v", err, cfg.Upstreams)
	}

	for name, c := range map[string]Config{
		"no upstream":                   {},
		"no name":                       {Upstreams: []UpstreamConfig{{Conn: conn}}},
		"duplicate":                     {Upstreams: []UpstreamConfig{{Name: "a", Conn: conn, Listen: "127.0.0.1:1"}, {Name: "a", Conn: conn, Listen: "127.0.0.1:2"}}},
		"same address":                  {Upstreams: []UpstreamConfig{{Name: "a", Conn: conn, Listen: "127.0.0.1:1"}, {Name: "b", Conn: conn, Listen: "127.0.0.1:1"}}},
		"no conn":                       {Upstreams: []UpstreamConfig{{Name: "a"}}},
		"bad listen":                    {Upstreams: []UpstreamConfig{{Name: "a", Conn: conn, Listen: "nonsense"}}},
		"gateway without a certificate": {Upstreams: []UpstreamConfig{{Name: "a", Conn: conn, Gateways: []GatewayConfig{{Auth: AuthClusterSecret}}}}},
		"gateway md5 mode":              {Upstreams: []UpstreamConfig{{Name: "a", Conn: conn, Gateways: []GatewayConfig{{Auth: "md5", CertFile: "a", KeyFile: "b"}}}}},
		"cluster_secret without roles":  {Upstreams: []UpstreamConfig{{Name: "a", Conn: conn, Gateways: []GatewayConfig{{Auth: AuthClusterSecret, CertFile: "a", KeyFile: "b"}}}}},
		"cert mode without a CA":        {Upstreams: []UpstreamConfig{{Name: "a", Conn: conn, Gateways: []GatewayConfig{{Auth: AuthCert, CertFile: "a", KeyFile: "b"}}}}},
		"half TLS pair":                 {Upstreams: []UpstreamConfig{{Name: "a", Conn: conn, ClientTLS: &ClientTLS{CertFile: "x.crt"}}}},
		"TLS no cert":                   {Upstreams: []UpstreamConfig{{Name: "a", Conn: conn, ClientTLS: &ClientTLS{}}}},
	} {
		_, err := New(c)
		if failure.ClassOf(err) != failure.ConfigInvalid {
			t.Errorf("%s: want config_invalid, got %v", name, err)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: secret in error", name)
		}
	}
	if s := fmt.Sprintf("%v %#v", UpstreamAuth{Password: "hunter2"}, UpstreamAuth{Password: "hunter2"}); strings.Contains(s, "hunter2") {
		t.Fatalf("UpstreamAuth prints its password: %s", s)
	}
}

func TestNewRejectsBadClientCertificate(t *testing.T) {
	ca := testpki.NewRootCA(t, "ca")
	a, b := ca.Client(t, "app"), ca.Client(t, "app")
	dir := t.TempDir()
	cert := testpki.WriteFile(t, dir, "c.crt", a.ChainPEM, 0o644)
	key := testpki.WriteFile(t, dir, "c.key", b.KeyPEM, 0o600)
	conn := mustParse(t, fmt.Sprintf("host=127.0.0.1 sslmode=require sslcert=%s sslkey=%s", cert, key))
	_, err := New(Config{Upstreams: []UpstreamConfig{{Name: "main", Conn: conn}}})
	if failure.ClassOf(err) != failure.KeyMismatch || !strings.Contains(err.Error(), "upstream main") {
		t.Fatalf("want key_mismatch naming the upstream, got %v (%s)", err, failure.ClassOf(err))
	}
}

func TestStartNamesUpstreamAndAddress(t *testing.T) {
	conn := mustParse(t, "host=127.0.0.1 sslmode=disable")
	p1, err := New(Config{Upstreams: []UpstreamConfig{{Name: "one", Listen: "127.0.0.1:0", Conn: conn}}})
	if err != nil {
		t.Fatal(err)
	}
	defer p1.Close()
	if err := p1.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	taken := p1.Addrs()["one"][0].String()
	p2, err := New(Config{Upstreams: []UpstreamConfig{{Name: "two", Listen: taken, Conn: conn}}})
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	err = p2.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "upstream two") || !strings.Contains(err.Error(), taken) {
		t.Fatalf("Start: %v", err)
	}
	if ok, _ := p2.Ready(); ok {
		t.Fatal("ready without listeners")
	}
}

func TestReload(t *testing.T) {
	ca := testpki.NewRootCA(t, "ca")
	leaf := ca.Client(t, "app")
	dir := t.TempDir()
	cert := testpki.WriteFile(t, dir, "c.crt", leaf.ChainPEM, 0o644)
	key := testpki.WriteFile(t, dir, "c.key", leaf.KeyPEM, 0o600)
	conn := mustParse(t, fmt.Sprintf("host=127.0.0.1 port=1 sslmode=require sslcert=%s sslkey=%s", cert, key))
	reg := prometheus.NewRegistry()
	base := Config{Registerer: reg, Upstreams: []UpstreamConfig{{Name: "main", Listen: "127.0.0.1:0", Conn: conn}}}
	p, err := New(base)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	r := &running{Proxy: p, reg: reg}

	if err := p.Reload(nil); err != nil {
		t.Fatalf("certificate reload: %v", err)
	}
	moved := base
	moved.Upstreams = []UpstreamConfig{{Name: "main", Listen: "127.0.0.1:9", Conn: conn}}
	if err := p.Reload(&moved); failure.ClassOf(err) != failure.ConfigInvalid {
		t.Fatalf("listener change: %v", err)
	}
	other := mustParse(t, fmt.Sprintf("host=127.0.0.1 port=2 sslmode=verify-full sslrootcert=%s sslcert=%s sslkey=%s",
		filepath.Join(dir, "missing-root.crt"), cert, key))
	bad := base
	bad.Upstreams = []UpstreamConfig{{Name: "main", Listen: "127.0.0.1:0", Conn: other, ClientTLS: &ClientTLS{CertFile: cert, KeyFile: filepath.Join(dir, "nope.key")}}}
	if err := p.Reload(&bad); err == nil {
		t.Fatal("a reload with a missing key file was accepted")
	}
	if got := p.upstreams[0].settings.Load().conn.Hosts[0].Port; got != 1 {
		t.Fatalf("failed reload changed the settings: port %d", got)
	}
	missingRoot := base
	missingRoot.Upstreams = []UpstreamConfig{{Name: "main", Listen: "127.0.0.1:0", Conn: other}}
	if err := p.Reload(&missingRoot); failure.ClassOf(err) != failure.RootCertMissing {
		t.Fatalf("verify-full without its root file: %v", err)
	}
	other.SSLRootCert = testpki.WriteFile(t, dir, "root.crt", ca.CertPEM, 0o644)
	good := base
	good.Upstreams = []UpstreamConfig{{Name: "main", Listen: "127.0.0.1:0", Conn: other}}
	if err := p.Reload(&good); err != nil {
		t.Fatalf("good reload: %v", err)
	}
	if got := p.upstreams[0].settings.Load().conn.Hosts[0].Port; got != 2 {
		t.Fatalf("reload not applied: port %d", got)
	}
	if r.metric(t, "pgtrust_reloads_total", map[string]string{"kind": "config", "result": "failure"}) != 3 ||
		r.metric(t, "pgtrust_reloads_total", map[string]string{"kind": "config", "result": "success"}) != 2 {
		t.Fatal("reload results not counted")
	}
}

func TestUpstreamErrorResponse(t *testing.T) {
	err := fmt.Errorf("dial: %w", failure.New(failure.UnknownCA, "certificate verify failed").
		WithEvidence("issuer CN=x not in root.crt").WithFix("set sslrootcert to the CA"))
	msg := upstreamErrorResponse("main", err, false, "")
	er := decodeError(t, msg)
	if er.Severity != "FATAL" || er.Code != "08006" || er.Message != "pgtrust: upstream main: unknown_ca: certificate verify failed" ||
		er.Detail != "issuer CN=x not in root.crt" || er.Hint != "set sslrootcert to the CA" {
		t.Fatalf("%+v", er)
	}
	if er := decodeError(t, upstreamErrorResponse("m", errors.New("boom"), false, "")); er.Message != "pgtrust: upstream m: protocol_error: boom" {
		t.Fatalf("%+v", er)
	}
}

func TestSidecarProcs(t *testing.T) {
	for cpus, want := range map[int]int{1: 1, 2: 1, 3: 1, 4: 2, 16: 8} {
		if got := SidecarProcs(cpus); got != want {
			t.Errorf("SidecarProcs(%d) = %d, want %d", cpus, got, want)
		}
	}
}
