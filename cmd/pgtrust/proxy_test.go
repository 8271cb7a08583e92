package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/internal/health"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/proxy"
	"github.com/pgtrust/pgtrust/internal/secretscan"
	"github.com/pgtrust/pgtrust/pgtls"
)

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestConfigValidateCommand(t *testing.T) {
	dir := t.TempDir()
	pki, err := certs.InitDevPKI(filepath.Join(dir, "pki"), certs.DevPKIOptions{})
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.toml", fmt.Sprintf("[health]\nlisten = \"127.0.0.1:9090\"\n[upstreams.main]\nlisten = \"127.0.0.1:6432\"\ndsn = %q\n", pki.ConnString()))
	out, errOut, code := runCerts(t, "config", "validate", good)
	if code != 0 || !strings.Contains(out, "good.toml: valid") {
		t.Fatalf("good: %d\n%s%s", code, out, errOut)
	}
	noRoot := write("noroot.toml", "[upstreams.main]\nlisten = \"127.0.0.1:6432\"\ndsn = \"host=db.internal sslrootcert="+dir+"/missing.crt\"\n")
	out, _, code = runCerts(t, "config", "validate", noRoot)
	if code != 1 || !strings.Contains(out, "FAIL upstreams.main.sslrootcert") || !strings.Contains(out, "root_cert_missing") {
		t.Fatalf("missing root: %d\n%s", code, out)
	}
	out, _, code = runCerts(t, "config", "validate", "--json", noRoot)
	if code != 1 || !strings.Contains(out, `"class": "root_cert_missing"`) || !strings.Contains(out, `"ok": false`) {
		t.Fatalf("missing root, JSON: %d\n%s", code, out)
	}
	unknown := write("unknown.toml", "[upstreams.main]\nlisten = \"127.0.0.1:6432\"\nsslmode = \"verify-full\"\n")
	_, errOut, code = runCerts(t, "config", "validate", unknown)
	if code != 2 || !strings.Contains(errOut, "unknown key upstreams.main.sslmode") {
		t.Fatalf("unknown key: %d %s", code, errOut)
	}
	if _, _, code = runCerts(t, "config", "validate", filepath.Join(dir, "absent.toml")); code != 2 {
		t.Fatalf("absent file: %d", code)
	}
}

func TestQuickstart(t *testing.T) {
	out, errOut, code := runCerts(t, "quickstart", "--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0", "--duration", "2s")
	if code != 0 {
		t.Fatalf("quickstart: %d\n%s\n%s", code, out, errOut)
	}
	for _, want := range []string{
		"-> user=postgres ssl=true version=TLSv1.",
		`"ssl_mode": "verify-full"`,
		`"certificate_validation": "enabled"`,
		`"status": "healthy"`,
		`psql "host=127.0.0.1 port=`,
		"Stopped; removed ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// Nothing is left: the PKI dir and the server dir are gone.
	m := regexp.MustCompile(`dev PKI\s+(\S+)/pki`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no PKI dir in output:\n%s", out)
	}
	if _, err := os.Stat(m[1]); !os.IsNotExist(err) {
		t.Errorf("%s still exists (%v)", m[1], err)
	}
	if left, _ := filepath.Glob(filepath.Join(os.TempDir(), "pgtrust-devserver-*")); len(left) > 0 {
		t.Errorf("server directories left: %v", left)
	}
}

// startUpstream starts PostgreSQL 15 that accepts only TLS with client
// certificates of the dev PKI.
func startUpstream(t *testing.T) (*pgtest.Server, *certs.DevPKI) {
	t.Helper()
	pki, err := certs.InitDevPKI(filepath.Join(t.TempDir(), "pki"), certs.DevPKIOptions{User: "postgres"})
	if err != nil {
		t.Fatal(err)
	}
	srv := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: readFile(t, pki.ServerCert), ServerKey: readFile(t, pki.ServerKey), CA: readFile(t, pki.CACert),
		HBA: []string{"hostssl all all 127.0.0.1/32 cert clientcert=verify-full"}})
	return srv, pki
}

type runningProxy struct {
	p    *proxy.Proxy
	hs   *health.Server
	sigs chan os.Signal
	done chan struct{} // closed when runProxy has returned
	err  error         // its result, set before done is closed
	log  *syncBuffer
}

// wait returns runProxy's result once it has returned.
func (rp *runningProxy) wait() error {
	<-rp.done
	return rp.err
}

func startProxyCmd(t *testing.T, path string, flags map[string]string) *runningProxy {
	t.Helper()
	started := make(chan *runningProxy, 1)
	rp := &runningProxy{sigs: make(chan os.Signal, 2), done: make(chan struct{}), log: &syncBuffer{}}
	proxyStarted = func(p *proxy.Proxy, hs *health.Server) {
		rp.p, rp.hs = p, hs
		started <- rp
	}
	t.Cleanup(func() { proxyStarted = nil })
	go func() {
		rp.err = runProxy(context.Background(), path, flags, rp.log, rp.sigs)
		close(rp.done)
	}()
	select {
	case <-started:
	case <-rp.done:
		t.Fatalf("proxy exited at start: %v\n%s", rp.err, rp.log.String())
	}
	t.Cleanup(func() {
		select {
		case <-rp.done:
		default:
			rp.sigs <- syscall.SIGTERM
			rp.sigs <- syscall.SIGTERM
			_ = rp.wait()
		}
		secretscan.Record(t, "proxy command log", rp.log.String())
	})
	return rp
}

func (rp *runningProxy) addr(t *testing.T) *net.TCPAddr {
	for _, as := range rp.p.Addrs() {
		for _, a := range as {
			if tcp, ok := a.(*net.TCPAddr); ok {
				return tcp
			}
		}
	}
	t.Fatal("no TCP listener")
	return nil
}

// readFile returns the content of p; the test fails when it cannot be read.
func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func httpStatus(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestProxyCommandEndToEnd(t *testing.T) {
	srv, pki := startUpstream(t)
	t.Setenv("PGTRUST_DRAIN_TIMEOUT", "1ms") // the flag below wins over the environment
	rp := startProxyCmd(t, "", map[string]string{
		"upstream":      pki.ConnString() + fmt.Sprintf(" hostaddr=127.0.0.1 port=%d dbname=postgres", srv.Port),
		"listen":        "127.0.0.1:0",
		"health-listen": "127.0.0.1:0",
		"drain-timeout": "60s",
	})
	local := rp.addr(t)
	base := "http://" + rp.hs.Addr().String()

	// psql (libpq) through the proxy, plaintext locally.
	res := pgtest.PsqlQuery(t, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", local.Port),
		"SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", nil)
	if !res.OK || strings.TrimSpace(res.Stdout) != "t" {
		t.Fatalf("psql through the proxy: %+v\n%s", res, rp.log.String())
	}
	if code, body := httpStatus(t, base+"/health/database/ssl"); code != 200 || !strings.Contains(body, `"status": "healthy"`) {
		t.Fatalf("health: %d %s", code, body)
	}
	if code, _ := httpStatus(t, base+"/readyz"); code != 200 {
		t.Fatalf("readyz before shutdown: %d", code)
	}
	if code, body := httpStatus(t, base+"/metrics"); code != 200 || !strings.Contains(body, "go_goroutines") {
		t.Fatalf("metrics: %d", code)
	}

	// SIGHUP with an unchanged configuration reloads and keeps serving.
	rp.sigs <- syscall.SIGHUP

	// Hold a session open, then SIGTERM: readiness turns 503 while the
	// session drains, and the command ends once the session does.
	cfg, err := connstring.ParseWithEnv(fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", local.Port), map[string]string{}, "")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	pg, _, err := pgtls.Connect(ctx, cfg, nil)
	if err != nil {
		t.Fatalf("session through the proxy: %v\n%s", err, rp.log.String())
	}
	rp.sigs <- syscall.SIGTERM
	for {
		code, body := httpStatus(t, base+"/readyz")
		if code == 503 {
			if !strings.Contains(body, "draining") {
				t.Fatalf("readyz body: %q", body)
			}
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The held session still works during the drain.
	if _, err := pg.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
		t.Fatalf("session during drain: %v", err)
	}
	select {
	case <-rp.done:
		t.Fatalf("proxy exited before its session ended: %v", rp.err)
	default:
	}
	pg.Close(ctx)
	if err := rp.wait(); err != nil {
		t.Fatalf("proxy exit: %v\n%s", err, rp.log.String())
	}
	logs := rp.log.String()
	if !strings.Contains(logs, "SIGHUP: reloading") || !strings.Contains(logs, "drain_timeout=1m0s") || strings.Contains(logs, "reload rejected") {
		t.Errorf("log:\n%s", logs)
	}
}

func TestProxyCommandRejectsBadConfig(t *testing.T) {
	var errOut strings.Builder
	err := runProxy(context.Background(), "", map[string]string{"upstream": "host=db.internal", "listen": "127.0.0.1:0", "health-listen": ""}, &errOut, nil)
	// verify-full by default, and no root certificate file: refused before starting.
	if code := exitCodeOf(err); code != 2 || !strings.Contains(errOut.String(), "root_cert_missing") {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	errOut.Reset()
	err = runProxy(context.Background(), filepath.Join(t.TempDir(), "missing.toml"), nil, &errOut, nil)
	if code := exitCodeOf(err); code != 2 || !strings.Contains(errOut.String(), "cannot read configuration file") {
		t.Fatalf("missing file: exit %d: %s", code, errOut.String())
	}
}

func exitCodeOf(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exitError); ok {
		return ee.code
	}
	return -1
}

// TestEnvironmentCannotWeakenSSLMode: DB_SSL_MODE=disable over a DSN that
// says verify-full used to start the proxy with one WARN line; now the
// proxy refuses to start (exit 2, config_invalid with the fix), and
// `pgtrust config validate` reports it. A PGSSLMODE that weakens an
// unwritten sslmode draws a warning in both.
func TestEnvironmentCannotWeakenSSLMode(t *testing.T) {
	dir := t.TempDir()
	pki, err := certs.InitDevPKI(filepath.Join(dir, "pki"), certs.DevPKIOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dsn := pki.ConnString() // writes sslmode=verify-full
	t.Setenv("DB_SSL_MODE", "disable")
	var errOut strings.Builder
	err = runProxy(context.Background(), "", map[string]string{"upstream": dsn, "listen": "127.0.0.1:0", "health-listen": ""}, &errOut, nil)
	if code := exitCodeOf(err); code != 2 || !strings.Contains(errOut.String(), "DB_SSL_MODE=disable would weaken it") ||
		!strings.Contains(errOut.String(), "class:    config_invalid") || !strings.Contains(errOut.String(), "allow_weaker_env_sslmode") {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	t.Logf("pgtrust proxy: %s", errOut.String())
	file := filepath.Join(dir, "p.toml")
	if err := os.WriteFile(file, []byte(fmt.Sprintf("[upstreams.main]\nlisten = \"127.0.0.1:6432\"\ndsn = %q\n", dsn)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, code := runCerts(t, "config", "validate", file)
	if code != 1 || !strings.Contains(out, "FAIL upstreams.main.dsn") || !strings.Contains(out, "would weaken it") {
		t.Fatalf("validate: %d\n%s", code, out)
	}

	// Nothing written, PGSSLMODE weaker than the verify-full default: a
	// warning, at start and in validate.
	t.Setenv("DB_SSL_MODE", "")
	t.Setenv("PGSSLMODE", "require")
	unwritten := filepath.Join(dir, "u.toml")
	if err := os.WriteFile(unwritten, []byte(fmt.Sprintf("[upstreams.main]\nlisten = \"127.0.0.1:6432\"\ndsn = %q\n", strings.Replace(pki.ConnString(), "sslmode=verify-full ", "", 1))), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, code = runCerts(t, "config", "validate", unwritten)
	if code != 0 || !strings.Contains(out, "WARN upstreams.main.sslmode: the environment variable PGSSLMODE weakens") {
		t.Fatalf("validate with PGSSLMODE: %d\n%s", code, out)
	}
}
