package proxy

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/secretscan"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

const scramPassword = "scram-Secret-7"

// testEnv is a real PostgreSQL 15 server with TLS, certificate auth for
// user app and SCRAM for user scram, and the client files for the proxy.
type testEnv struct {
	ca                         *testpki.CA
	srv                        *pgtest.Server
	dir                        string
	rootFile, certFile, keyFil string
	client                     *testpki.Leaf
}

func newEnv(t *testing.T) *testEnv {
	t.Helper()
	ca := testpki.NewRootCA(t, "pgtrust proxy test CA")
	server := ca.Server(t)
	srv := pgtest.Start(t, pgtest.Options{
		SSL: true, ServerCert: server.ChainPEM, ServerKey: server.KeyPEM, CA: ca.CertPEM,
		HBA: []string{
			"hostssl all app 127.0.0.1/32 cert",
			"hostssl all scram 127.0.0.1/32 scram-sha-256",
			"host all all 127.0.0.1/32 reject",
		},
		Setup: []string{
			"CREATE ROLE app LOGIN",
			"CREATE ROLE scram LOGIN PASSWORD '" + scramPassword + "'",
			"CREATE DATABASE appdb OWNER app",
		},
	})
	dir := t.TempDir()
	client := ca.Client(t, "app")
	return &testEnv{
		ca: ca, srv: srv, dir: dir, client: client,
		rootFile: testpki.WriteFile(t, dir, "root.crt", ca.CertPEM, 0o644),
		certFile: testpki.WriteFile(t, dir, "client.crt", client.ChainPEM, 0o644),
		keyFil:   testpki.WriteFile(t, dir, "client.key", client.KeyPEM, 0o600),
	}
}

// upstream returns verify-full settings with the client certificate.
func (e *testEnv) upstream(t *testing.T) *connstring.Config {
	t.Helper()
	return mustParse(t, fmt.Sprintf("host=127.0.0.1 port=%d sslmode=verify-full sslrootcert=%s sslcert=%s sslkey=%s",
		e.srv.Port, e.rootFile, e.certFile, e.keyFil))
}

func mustParse(t *testing.T, dsn string) *connstring.Config {
	t.Helper()
	c, err := connstring.ParseWithEnv(dsn, map[string]string{}, "")
	if err != nil {
		t.Fatalf("parse %q: %v", dsn, err)
	}
	return c
}

// logBuffer collects the proxy's log for assertions and failure output.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type running struct {
	*Proxy
	logs *logBuffer
	reg  *prometheus.Registry
}

// startProxy starts a proxy with a fresh registry and a captured log; it is
// closed at cleanup.
func startProxy(t *testing.T, cfg Config) *running {
	t.Helper()
	logs := &logBuffer{}
	reg := prometheus.NewRegistry()
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.Registerer = reg
	p, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := p.Start(context.Background()); err != nil {
		p.Close()
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		p.Close()
		secretscan.Record(t, "proxy log", logs.String())
		if t.Failed() {
			t.Logf("proxy log:\n%s", logs.String())
		}
	})
	return &running{Proxy: p, logs: logs, reg: reg}
}

// port returns the TCP port of upstream name's listener.
func (r *running) port(t *testing.T, name string) int {
	t.Helper()
	for _, a := range r.Addrs()[name] {
		if ta, ok := a.(*net.TCPAddr); ok {
			return ta.Port
		}
	}
	t.Fatalf("upstream %s has no TCP listener: %v", name, r.Addrs())
	return 0
}

// metric sums the samples of a counter or gauge family whose labels
// include want.
func (r *running) metric(t *testing.T, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue metrics
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}

// waitFor polls cond (a hang guard, not a timing assertion).
func waitFor(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	end := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pgxConnect connects pgx through the proxy with the given DSN tail.
func pgxConnect(t *testing.T, port int, extra string) (*pgx.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=app dbname=appdb connect_timeout=10 %s", port, extra))
	if err != nil {
		t.Fatalf("pgx config: %v", err)
	}
	return pgx.ConnectConfig(ctx, cfg)
}

// pgbench runs pgbench 15 with args and a clean environment.
func pgbench(t *testing.T, env map[string]string, args ...string) (string, error) {
	t.Helper()
	bin := "/usr/lib/postgresql/15/bin/pgbench"
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("pgbench not installed at %s (run .ci/setup): %v", bin, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{"HOME=" + pgtest.EmptyHome(t), "LC_ALL=C", "PATH=/usr/bin:/bin", "PGCONNECT_TIMEOUT=10"}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// writeAtomic replaces path with data through a rename, as deploy tools do.
func writeAtomic(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tmp, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func lines(s string) []string { return strings.Split(strings.TrimSpace(s), "\n") }
