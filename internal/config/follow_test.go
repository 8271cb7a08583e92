package config

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/leader"
	"github.com/pgtrust/pgtrust/internal/leader/leadertest"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/proxy"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

const followCluster = "0xbd32b609057a1a4569558a571d535c8f1212b097"

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// followEnv is two real PostgreSQL servers under one CA, a loopback DNS
// server publishing the leader manifest, and a signing key.
type followEnv struct {
	a, b     *pgtest.Server
	root     string
	dns      *leadertest.DNSServer
	validFor int64
}

func newFollowEnv(t *testing.T) *followEnv {
	ca := testpki.NewRootCA(t, "follow root")
	srv := ca.Server(t)
	start := func() *pgtest.Server {
		return pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: srv.ChainPEM, ServerKey: srv.KeyPEM})
	}
	e := &followEnv{a: start(), b: start(), validFor: time.Now().Add(time.Hour).Unix()}
	e.root = filepath.Join(t.TempDir(), "root.crt")
	os.WriteFile(e.root, ca.CertPEM, 0o644)
	e.dns = leadertest.StartDNS(t, "_teesql-leader.cluster.test", "")
	return e
}

// publish makes the DNS server serve a manifest naming s at epoch.
func (e *followEnv) publish(s *pgtest.Server, epoch uint64) {
	e.dns.Set(leadertest.Sign(leadertest.Key(), leadertest.Fields{Cluster: followCluster, LeaderInstance: "ea23198e3419ebbb240571a29d0112d9bcbe69c0",
		LeaderURL: fmt.Sprintf("https://127.0.0.1:%d", s.Port), Epoch: epoch, ValidUntil: e.validFor}))
}

// startProxy runs the proxy a TOML document describes (through Parse,
// ProxyConfig and proxy.New, as the CLI does) and returns its port.
func (e *followEnv) startProxy(t *testing.T, epochFile, refresh, extra string) (int, *syncBuf) {
	doc := fmt.Sprintf(`
[health]
listen = ""
[upstreams.tee]
listen = "127.0.0.1:0"
dsn = "user=postgres dbname=postgres sslmode=verify-full sslrootcert=%s"
manifest = "dns:cluster.test"
manifest_signer_address = "%s"
cluster = "%s"
epoch_file = "%s"
manifest_refresh_interval = "%s"
manifest_dns_server = "%s"
%s`, e.root, leadertest.Address(leadertest.Key()), followCluster, epochFile, refresh, e.dns.Addr, extra)
	f, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuf{}
	pc, err := f.ProxyConfig(slog.New(slog.NewTextHandler(logs, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := proxy.New(*pc)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Close()
		if t.Failed() {
			t.Logf("proxy log:\n%s", logs.String())
		}
	})
	return p.Addrs()["tee"][0].(*net.TCPAddr).Port, logs
}

// serverPort runs SELECT inet_server_port() through the proxy with psql.
func serverPort(t *testing.T, proxyPort int) (string, pgtest.PsqlResult) {
	r := pgtest.PsqlQuery(t, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", proxyPort), "SELECT inet_server_port()", nil)
	return strings.TrimSpace(r.Stdout), r
}

// TestFollowLeaderThroughProxy: the proxy follows the manifest a local DNS
// server publishes: new sessions go to the leader of the highest epoch, a
// replayed lower epoch is refused (sessions stay with the last good leader
// while its manifest is valid), and a restarted proxy with the same epoch
// file refuses the rollback outright (fail closed).
func TestFollowLeaderThroughProxy(t *testing.T) {
	e := newFollowEnv(t)
	epochs := filepath.Join(t.TempDir(), "epochs.json")
	e.publish(e.a, 5)
	// A refresh interval of 1ms: every session fetches the record again.
	port, logs := e.startProxy(t, epochs, "1ms", "")
	pa, pb := fmt.Sprint(e.a.Port), fmt.Sprint(e.b.Port)

	if got, r := serverPort(t, port); got != pa {
		t.Fatalf("epoch 5 leader: got %q, want %s: %+v", got, pa, r)
	}
	e.publish(e.b, 6)
	if got, r := serverPort(t, port); got != pb {
		t.Fatalf("epoch 6 leader: got %q, want %s: %+v", got, pb, r)
	}
	q := e.dns.Queries()
	e.publish(e.a, 4) // a replay of an older, still valid manifest
	if got, r := serverPort(t, port); got != pb {
		t.Fatalf("after a rollback record: got %q, want the last good leader %s: %+v", got, pb, r)
	}
	if e.dns.Queries() <= q {
		t.Fatal("the rollback record was never fetched")
	}
	if !strings.Contains(logs.String(), "class="+string(leader.ClassEpochRollback)) {
		t.Fatalf("rollback not logged:\n%s", logs.String())
	}
	data, _ := os.ReadFile(epochs)
	if !strings.Contains(string(data), `": 6`) {
		t.Fatalf("epoch file: %s", data)
	}
	if fi, err := os.Stat(epochs); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("epoch file mode: %v %v", fi.Mode(), err)
	}

	// A restarted proxy: same epoch file, the rollback record still served.
	port2, _ := e.startProxy(t, epochs, "1ms", "")
	_, r := serverPort(t, port2)
	if r.OK || !strings.Contains(r.Stderr, "pgtrust: upstream tee: "+string(leader.ClassEpochRollback)) {
		t.Fatalf("restart with a rollback record: %+v", r)
	}
	t.Logf("psql: %s", strings.TrimSpace(r.Stderr))
}

// TestFollowLeaderOnFailure: within the refresh interval the manifest is
// not fetched again, but a failed dial is: when the old leader goes away,
// the next session re-resolves and reaches the new one.
func TestFollowLeaderOnFailure(t *testing.T) {
	e := newFollowEnv(t)
	e.publish(e.a, 1)
	port, _ := e.startProxy(t, filepath.Join(t.TempDir(), "epochs.json"), "1h", "")
	pa, pb := fmt.Sprint(e.a.Port), fmt.Sprint(e.b.Port)
	if got, r := serverPort(t, port); got != pa {
		t.Fatalf("leader a: %q %+v", got, r)
	}
	e.publish(e.b, 2)
	if got, r := serverPort(t, port); got != pa {
		t.Fatalf("within the interval: got %q, want the cached leader %s: %+v", got, pa, r)
	}
	e.a.Stop(t)
	if got, r := serverPort(t, port); got != pb {
		t.Fatalf("after the old leader stopped: got %q, want %s: %+v", got, pb, r)
	}
}

// TestFollowLeaderAttested: the leader must also pass the upstream's
// attestation policy; an ordinary certificate does not.
func TestFollowLeaderAttested(t *testing.T) {
	e := newFollowEnv(t)
	e.publish(e.a, 1)
	port, _ := e.startProxy(t, filepath.Join(t.TempDir(), "epochs.json"), "30s", `
[upstreams.tee.attestation]
allowed_mrtds = ["`+strings.Repeat("ab", 48)+`"]
skip_tcb = true
`)
	_, r := serverPort(t, port)
	if r.OK || !strings.Contains(r.Stderr, "pgtrust: upstream tee: attestation_") {
		t.Fatalf("attested leader: %+v", r)
	}
}

// TestFollowConfigRefused: the follow keys' rules.
func TestFollowConfigRefused(t *testing.T) {
	signer := leadertest.Address(leadertest.Key())
	base := func(dsn, keys string) string {
		return "[upstreams.tee]\nlisten = \"127.0.0.1:6440\"\ndsn = \"" + dsn + "\"\n" + keys
	}
	full := "manifest = \"dns:cluster.test\"\nmanifest_signer_address = \"" + signer + "\"\nepoch_file = \"/tmp/e.json\"\n"
	for _, tc := range []struct{ name, doc, key string }{
		{"no signer", base("sslmode=require", "manifest = \"dns:c.test\"\nepoch_file = \"/tmp/e\""), "manifest_signer_address"},
		{"bad signer", base("sslmode=require", "manifest = \"dns:c.test\"\nepoch_file = \"/tmp/e\"\nmanifest_signer_address = \"0x12\""), "manifest_signer_address"},
		{"no epoch file", base("sslmode=require", "manifest = \"dns:c.test\"\nmanifest_signer_address = \""+signer+"\""), "epoch_file"},
		{"http manifest", base("sslmode=require", strings.Replace(full, "dns:cluster.test", "http://m.test/x", 1)), "manifest"},
		{"empty domain", base("sslmode=require", strings.Replace(full, "dns:cluster.test", "dns:", 1)), "manifest"},
		{"bad cluster", base("sslmode=require", full+"cluster = \"0x1234\""), "cluster"},
		{"bad dns server", base("sslmode=require", full+"manifest_dns_server = \"10.0.0.2\""), "manifest_dns_server"},
		{"dns server with https", base("sslmode=require", strings.Replace(full, "dns:cluster.test", "https://m.test/x", 1)+"manifest_dns_server = \"127.0.0.1:53\""), "manifest_dns_server"},
		{"follow key without manifest", base("sslmode=require", "epoch_file = \"/tmp/e\""), "epoch_file"},
		{"bad interval", base("sslmode=require", full+"manifest_refresh_interval = \"soon\""), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			e, ok := failure.As(err)
			if !ok || e.Class != failure.ConfigInvalid || e.Fix == "" || !strings.Contains(e.Message, tc.key) {
				t.Fatalf("want config_invalid naming %s, got %v", tc.key, err)
			}
		})
	}
	// host or port in the dsn of a following upstream.
	f, err := Parse([]byte(base("host=db.internal sslmode=require", full)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.upstream("tee", testEnv(t.TempDir())); failure.ClassOf(err) != failure.ConfigInvalid || !strings.Contains(err.Error(), "host is set") {
		t.Fatalf("host with manifest: %v", err)
	}
}
