package main

import (
	"context"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/steptest"
)

// TestProxyRenewsFromStepCAUnderLoad is issue 12's acceptance run: a real
// step-ca issues short-lived client certificates to the proxy's upstream
// ([upstreams.main.step], threshold 0.7), and pgbench drives 8 clients
// through the proxy with a new connection per transaction (-C), so every
// transaction performs an upstream handshake with whatever certificate is
// current. The proxy must renew at least 3 times with no failed transaction;
// PostgreSQL's pg_stat_ssl.client_serial must show each new certificate on
// new connections; the metrics must count the renewals.
//
// The lifetime is PGTRUST_STEP_E2E_LIFETIME (default 30s, so that 3
// renewals fit in CI's budget; docs/renewal.md reports a run with 3m).
func TestProxyRenewsFromStepCAUnderLoad(t *testing.T) {
	lifetime := 30 * time.Second
	if v := os.Getenv("PGTRUST_STEP_E2E_LIFETIME"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("PGTRUST_STEP_E2E_LIFETIME: %v", err)
		}
		lifetime = d
	}
	const renewals = 3
	ca := steptest.Start(t, steptest.Options{MinDuration: 10 * time.Second, DefaultDuration: lifetime, MaxDuration: time.Hour})
	rootPEM, err := os.ReadFile(ca.RootFile)
	if err != nil {
		t.Fatal(err)
	}

	// The server trusts step-ca's root for client certificates and maps the
	// CN to the role; its own certificate comes from a dev PKI.
	pki, err := certs.InitDevPKI(filepath.Join(t.TempDir(), "pki"), certs.DevPKIOptions{User: "app"})
	if err != nil {
		t.Fatal(err)
	}
	srv := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: readFile(t, pki.ServerCert), ServerKey: readFile(t, pki.ServerKey), CA: rootPEM,
		HBA:   []string{"hostssl all all 127.0.0.1/32 cert clientcert=verify-full"},
		Setup: []string{"CREATE ROLE app LOGIN", "CREATE DATABASE bench OWNER app"}})

	dir := t.TempDir()
	conf := filepath.Join(dir, "pgtrust.toml")
	body := fmt.Sprintf(`[health]
listen = "127.0.0.1:0"

[upstreams.main]
listen = "127.0.0.1:0"
max_connections = 64
dsn = "host=localhost hostaddr=127.0.0.1 port=%d user=app dbname=bench sslmode=verify-full sslrootcert=%s"

[upstreams.main.step]
ca_url = %q
root = %q
provisioner = %q
provisioner_key_file = %q
provisioner_password_file = %q
duration = %q
renewal_threshold = 0.7
`, srv.Port, pki.CACert, ca.URL, ca.RootFile, ca.Provisioner, ca.ProvisionerKeyFile, ca.PasswordFile, lifetime.String())
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	rp := startProxyCmd(t, conf, nil)
	local := rp.addr(t)
	base := "http://" + rp.hs.Addr().String()
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=app dbname=bench sslmode=disable", local.Port)

	if out, err := pgbenchCmd(t, "-i", "-s", "1", "-q", dsn); err != nil {
		t.Fatalf("pgbench -i through the proxy: %v\n%s\n%s", err, out, rp.log.String())
	}

	// Watch the client serials PostgreSQL sees on new connections, while
	// pgbench runs.
	var mu sync.Mutex
	seen := map[string]bool{}
	var order []string
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Second):
			}
			r := pgtest.PsqlQuery(t, dsn, "SELECT client_serial FROM pg_stat_ssl WHERE pid = pg_backend_pid()", nil)
			if !r.OK {
				continue // pgbench's verdict is the one on failures
			}
			s := strings.TrimSpace(r.Stdout)
			mu.Lock()
			if !seen[s] {
				seen[s] = true
				order = append(order, s)
			}
			mu.Unlock()
		}
	}()

	// Long enough for `renewals` renewals at 0.7 of the lifetime, plus slack.
	run := time.Duration(float64(lifetime)*0.7*renewals) + lifetime/4
	out, err := pgbenchCmd(t, "-C", "-S", "-c", "8", "-j", "2", "-T", strconv.Itoa(int(run.Seconds())+1), "-n", dsn)
	close(stop)
	<-watched
	if err != nil {
		t.Fatalf("pgbench under renewal: %v\n%s\n%s", err, out, rp.log.String())
	}
	t.Logf("pgbench:\n%s", out)
	failed := regexp.MustCompile(`number of failed transactions: (\d+)`).FindStringSubmatch(out)
	processed := regexp.MustCompile(`number of transactions actually processed: (\d+)`).FindStringSubmatch(out)
	if failed == nil || failed[1] != "0" || processed == nil || processed[1] == "0" || strings.Contains(out, "aborted") {
		t.Fatalf("pgbench reports failures:\n%s", out)
	}

	_, metrics := httpStatus(t, base+"/metrics")
	m := regexp.MustCompile(`pgtrust_cert_renewals_total\{issuer="step-ca",source="upstream main client certificate"\} (\d+)`).FindStringSubmatch(metrics)
	if m == nil {
		t.Fatalf("no renewal counter for the upstream in /metrics:\n%s", grepLines(metrics, "pgtrust_cert_"))
	}
	if n, _ := strconv.Atoi(m[1]); n < renewals {
		t.Fatalf("renewed %d times, want at least %d\n%s", n, renewals, grepLines(rp.log.String(), "certificate"))
	}
	if strings.Contains(metrics, `pgtrust_cert_renewal_failures_total{class="renewal_`) && regexp.MustCompile(`pgtrust_cert_renewal_failures_total\{[^}]*\} [1-9]`).MatchString(metrics) {
		t.Errorf("renewal failures counted:\n%s", grepLines(metrics, "pgtrust_cert_renewal_failures_total"))
	}

	// Every serial the server saw is one the proxy logged as issued or
	// renewed, and the watcher saw at least one per renewal.
	logged := map[string]bool{}
	for _, mm := range regexp.MustCompile(`msg="certificate (?:issued|renewed)".*? serial=([0-9A-F]+)`).FindAllStringSubmatch(rp.log.String(), -1) {
		v, ok := new(big.Int).SetString(mm[1], 16)
		if !ok {
			t.Fatalf("serial %q in the log is not hex", mm[1])
		}
		logged[v.String()] = true
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("client serials seen by PostgreSQL on new connections, in order: %v", order)
	t.Logf("the proxy's renewal log:\n%s", grepLines(rp.log.String(), "msg=\"certificate "))
	if len(order) < renewals+1 {
		t.Fatalf("PostgreSQL saw %d distinct client certificates on new connections, want at least %d", len(order), renewals+1)
	}
	for _, s := range order {
		if !logged[s] {
			t.Errorf("PostgreSQL saw serial %s, which the proxy never logged as issued or renewed", s)
		}
	}
}

// pgbenchCmd runs pgbench 15 with a clean environment and a timeout.
func pgbenchCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	bin := "/usr/lib/postgresql/15/bin/pgbench"
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("pgbench not installed at %s (run .ci/setup): %v", bin, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = []string{"HOME=" + pgtest.EmptyHome(t), "LC_ALL=C", "PATH=/usr/bin:/bin", "PGCONNECT_TIMEOUT=10"}
	out, err := cmd.CombinedOutput()
	return string(out), err
}
