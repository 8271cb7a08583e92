package certagent

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/keyfile"
	"github.com/pgtrust/pgtrust/internal/secretscan"
	"github.com/pgtrust/pgtrust/internal/vaulttest"
)

// testToken is secretscan's known Vault token: a leak into a log or an
// error is caught by the suite's scan as well as by the assertions here.
const testToken = "hvs.R2-vault-Token-secret-1"

func getenv(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func wantClass(t *testing.T, err error, c failure.Class) *failure.Error {
	t.Helper()
	if err == nil {
		t.Fatalf("want %s, got no error", c)
	}
	fe, ok := failure.As(err)
	if !ok || fe.Class != c {
		t.Fatalf("want class %s, got %v (%T)", c, err, err)
	}
	return fe
}

func noSecret(t *testing.T, what, text string) {
	t.Helper()
	secretscan.Record(t, what, text)
	for _, s := range []string{testToken, "PRIVATE KEY"} {
		if strings.Contains(text, s) {
			t.Fatalf("%s holds a secret (%q):\n%s", what, s[:8], text)
		}
	}
}

const baseConfig = `
[agent]
cert_file = "%[1]s/server.crt"
key_file = "%[1]s/server.key"
ca_file = "%[1]s/ca.crt"
reload_command = ["true"]

[vault]
addr = "%[2]s"
pki_role = "pki/issue/server"
common_name = "localhost"
ip_sans = ["127.0.0.1"]
ttl = "1h"
token = "${TEST_VAULT_TOKEN}"
`

func TestParseConfig(t *testing.T) {
	dir := t.TempDir()
	env := getenv(map[string]string{"TEST_VAULT_TOKEN": testToken})
	c, err := Parse([]byte(fmt.Sprintf(baseConfig, dir, "http://127.0.0.1:1")), "agent.toml", env)
	if err != nil {
		t.Fatal(err)
	}
	if c.Vault.Token != testToken || c.ReloadTimeout() != DefaultReloadTimeout || c.HealthListen() != "" || c.KeyMode() != 0o600 {
		t.Fatalf("parsed %+v", c.Agent)
	}
	c, err = Parse([]byte(fmt.Sprintf(baseConfig, dir, "http://127.0.0.1:1")+"\n[health]\n"), "agent.toml", env)
	if err != nil || c.HealthListen() != DefaultHealthListen {
		t.Fatalf("health default: %v %q", err, c.HealthListen())
	}

	bad := map[string]struct {
		doc  string
		want string
	}{
		"unknown key":   {strings.Replace(baseConfig, "ca_file", "ca_fil", 1), "agent.ca_fil (line 5)"},
		"unknown table": {baseConfig + "\n[vaultt]\naddr = \"x\"\n", "vaultt"},
		"both CAs":      {baseConfig + "\n[step]\nca_url = \"https://127.0.0.1:9000\"\n", "both are present"},
		"no CA":         {"[agent]\ncert_file = \"%[1]s/a.crt\"\nkey_file = \"%[1]s/a.key\"\n", "neither [vault] nor [step]"},
		"no cert_file":  {strings.Replace(baseConfig, "cert_file", "#", 1), "agent.cert_file: is required"},
		"same files":    {strings.Replace(baseConfig, "ca.crt", "server.crt", 1), "same file"},
		"missing var":   {strings.Replace(baseConfig, "TEST_VAULT_TOKEN", "TEST_UNSET_VAR", 1), "TEST_UNSET_VAR"},
		"bad owner":     {strings.Replace(baseConfig, "[agent]", "[agent]\nowner = \"no-such-user-x\"", 1), "no-such-user-x"},
		"empty argv":    {strings.Replace(baseConfig, `["true"]`, `[""]`, 1), "reload_command"},
		"bad duration":  {strings.Replace(baseConfig, "[agent]", "[agent]\nreload_timeout = \"soon\"", 1), "soon"},
		"bad listen":    {baseConfig + "\n[health]\nlisten = \"nowhere\"\n", "health.listen"},
	}
	for name, tc := range bad {
		t.Run(name, func(t *testing.T) {
			_, err := Parse([]byte(fmt.Sprintf(tc.doc, dir, "http://127.0.0.1:1")), "agent.toml", env)
			fe := wantClass(t, err, failure.ConfigInvalid)
			text := failure.Text(err)
			if !strings.Contains(text, tc.want) || fe.Fix == "" {
				t.Fatalf("error does not name %q or has no fix:\n%s", tc.want, text)
			}
			noSecret(t, "config error", text)
		})
	}
}

// postgresOwner is the owner the tests give files to: postgres when the
// tests run as root (CI), else the current user.
func postgresOwner(t *testing.T) (name string, uid int) {
	t.Helper()
	if os.Geteuid() != 0 {
		u, err := user.Current()
		if err != nil {
			t.Fatal(err)
		}
		return u.Username, os.Geteuid()
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Fatalf("tests run as root need the postgres user (run .ci/setup): %v", err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	return "postgres", uid
}

type vaultEnv struct {
	srv *vaulttest.Server
	dir string
	log *bytes.Buffer
}

func newVault(t *testing.T) *vaultEnv {
	t.Helper()
	srv, err := vaulttest.New(vaulttest.Options{Roles: []vaulttest.Role{{Name: "server", MaxTTL: 24 * time.Hour, AllowIPSANs: true}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	srv.AddToken(testToken, 0, false)
	e := &vaultEnv{srv: srv, dir: t.TempDir(), log: &bytes.Buffer{}}
	t.Cleanup(func() { noSecret(t, "agent log", e.log.String()) })
	return e
}

func (e *vaultEnv) config(t *testing.T, extra func(string) string) *Config {
	t.Helper()
	doc := fmt.Sprintf(baseConfig, e.dir, e.srv.URL)
	if extra != nil {
		doc = extra(doc)
	}
	c, err := Parse([]byte(doc), "agent.toml", getenv(map[string]string{"TEST_VAULT_TOKEN": testToken}))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (e *vaultEnv) options() Options {
	return Options{Logger: slog.New(slog.NewTextHandler(e.log, nil)), RetryBase: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond}
}

func mode(t *testing.T, p string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func owner(t *testing.T, p string) (uid, gid int) {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return int(st.Uid), int(st.Gid)
}

// TestIssueWriteReuse: the first run issues and writes the three files with
// PostgreSQL's modes and owner; a second run adopts them without asking the
// CA; --force-like Reload issues a new one and rewrites.
func TestIssueWriteReuse(t *testing.T) {
	e := newVault(t)
	name, uid := postgresOwner(t)
	cfg := e.config(t, func(d string) string { return strings.Replace(d, "[agent]", "[agent]\nowner = \""+name+"\"", 1) })
	ctx := context.Background()
	a, err := New(ctx, cfg, e.options())
	if err != nil {
		t.Fatal(err)
	}
	if a.Reused() {
		t.Fatal("nothing was on disk, yet Reused")
	}
	if err := a.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	pair, err := keyfile.LoadKeyPair(cfg.Agent.CertFile, cfg.Agent.KeyFile, "")
	if err != nil {
		t.Fatalf("written files do not load as a pair: %v", err)
	}
	keyPEM, _ := os.ReadFile(cfg.Agent.KeyFile)
	if b, _ := pem.Decode(keyPEM); b == nil || b.Type != "PRIVATE KEY" {
		t.Fatalf("key is not PKCS#8 PEM")
	}
	cas, err := keyfile.LoadCertificates(cfg.Agent.CAFile)
	if err != nil || len(cas) != 2 || !cas[1].Equal(e.srv.Root) {
		t.Fatalf("ca file: %v %d", err, len(cas))
	}
	pool := x509.NewCertPool()
	pool.AddCert(e.srv.Root)
	inter := x509.NewCertPool()
	inter.AddCert(cas[0])
	if _, err := pair.Leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, DNSName: "localhost"}); err != nil {
		t.Fatalf("leaf does not verify against the CA file: %v", err)
	}
	for p, want := range map[string]os.FileMode{cfg.Agent.KeyFile: 0o600, cfg.Agent.CertFile: 0o644, cfg.Agent.CAFile: 0o644} {
		if m := mode(t, p); m != want {
			t.Errorf("%s mode %o, want %o", p, m, want)
		}
		if u, _ := owner(t, p); u != uid {
			t.Errorf("%s owner %d, want %d", p, u, uid)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(e.dir, ".*tmp-*")); len(left) != 0 {
		t.Fatalf("temp files left: %v", left)
	}
	issues := e.srv.CountPath("pki/issue/server")
	// The owner and modes are enforced on files reused at start (the
	// configuration may have changed): the CA file was made 0600 and root's.
	os.Chmod(cfg.Agent.CAFile, 0o600)
	os.Chown(cfg.Agent.CAFile, 0, 0)

	// A restart reuses the files: no request to the CA.
	b, err := New(ctx, cfg, e.options())
	if err != nil {
		t.Fatal(err)
	}
	if !b.Reused() || e.srv.CountPath("pki/issue/server") != issues {
		t.Fatalf("restart asked the CA again (reused %v, issues %d → %d)", b.Reused(), issues, e.srv.CountPath("pki/issue/server"))
	}
	if m := mode(t, cfg.Agent.CAFile); m != 0o644 {
		t.Fatalf("reused CA file mode %o, want 0644", m)
	}
	if u, _ := owner(t, cfg.Agent.CAFile); u != uid {
		t.Fatalf("reused CA file owner %d, want %d", u, uid)
	}
	if st := b.Source().Status(); st.Serial != certs.SerialHex(pair.Leaf) {
		t.Fatalf("adopted serial %s, files have %s", st.Serial, certs.SerialHex(pair.Leaf))
	}
	// Renew now: new serial on disk.
	if err := b.Source().Reload(); err != nil {
		t.Fatal(err)
	}
	if err := b.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	pair2, err := keyfile.LoadKeyPair(cfg.Agent.CertFile, cfg.Agent.KeyFile, "")
	if err != nil || pair2.Leaf.SerialNumber.Cmp(pair.Leaf.SerialNumber) == 0 {
		t.Fatalf("renewal did not rewrite the files: %v", err)
	}
	// A lost CA file is not reused around: a new issue rewrites all three.
	os.Remove(cfg.Agent.CAFile)
	c, err := New(ctx, cfg, e.options())
	if err != nil || c.Reused() {
		t.Fatalf("missing CA file: err %v, reused %v", err, c != nil && c.Reused())
	}
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := keyfile.LoadCertificates(cfg.Agent.CAFile); err != nil {
		t.Fatal(err)
	}
	t.Logf("issued serial %s, renewed serial %s; %d issue requests", certs.SerialHex(pair.Leaf), certs.SerialHex(pair2.Leaf), e.srv.CountPath("pki/issue/server"))
}

// TestRootGroupKeyMode: owner root:GROUP gives the key 0640, the other
// arm of PostgreSQL's rule.
func TestRootGroupKeyMode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test checks chown to root:postgres and runs as root (as CI does)")
	}
	e := newVault(t)
	cfg := e.config(t, func(d string) string { return strings.Replace(d, "[agent]", "[agent]\nowner = \"root:postgres\"", 1) })
	a, err := New(context.Background(), cfg, e.options())
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	g, _ := user.LookupGroup("postgres")
	gid, _ := strconv.Atoi(g.Gid)
	if u, gg := owner(t, cfg.Agent.KeyFile); u != 0 || gg != gid || mode(t, cfg.Agent.KeyFile) != 0o640 {
		t.Fatalf("key owner %d:%d mode %o, want 0:%d 0640", u, gg, mode(t, cfg.Agent.KeyFile), gid)
	}
}

// TestAtomicUnderConcurrentReader rewrites the files many times while
// readers load them in a loop: every read is a complete file that parses.
// The key and the certificate are two renames apart, so a reader can catch
// a pair that does not match (and a reader that reads them one after the
// other can straddle a whole rewrite); such reads are counted, not forbidden.
func TestAtomicUnderConcurrentReader(t *testing.T) {
	e := newVault(t)
	cfg := e.config(t, nil)
	ctx := context.Background()
	// A few distinct materials, written in turn.
	var mats []*certs.Issued
	a, err := New(ctx, cfg, e.options())
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		if err := a.Source().Reload(); err != nil {
			t.Fatal(err)
		}
		mats = append(mats, a.rec.lastIssued())
	}
	files0, _ := cfg.encode(mats[0])
	if err := cfg.writeFiles(files0); err != nil {
		t.Fatal(err)
	}
	const writes = 100
	var stop atomic.Bool
	var reads, mismatches atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for r := 0; r < 2; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				if _, err := keyfile.LoadCertificates(cfg.Agent.CertFile); err != nil {
					errs <- fmt.Errorf("certificate read: %w", err)
					return
				}
				if _, err := keyfile.LoadPrivateKey(cfg.Agent.KeyFile, ""); err != nil {
					errs <- fmt.Errorf("key read: %w", err)
					return
				}
				if _, err := keyfile.LoadKeyPair(cfg.Agent.CertFile, cfg.Agent.KeyFile, ""); err != nil {
					if failure.ClassOf(err) != failure.KeyMismatch {
						errs <- fmt.Errorf("pair read: %w", err)
						return
					}
					mismatches.Add(1)
				}
				reads.Add(1)
			}
		}()
	}
	for i := 0; i < writes; i++ {
		files, err := cfg.encode(mats[i%len(mats)])
		if err != nil {
			t.Fatal(err)
		}
		if err := cfg.writeFiles(files); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if reads.Load() == 0 {
		t.Fatal("no read happened")
	}
	for p, want := range map[string]os.FileMode{cfg.Agent.KeyFile: 0o600, cfg.Agent.CertFile: 0o644, cfg.Agent.CAFile: 0o644} {
		if m := mode(t, p); m != want {
			t.Errorf("%s mode %o, want %o", p, m, want)
		}
	}
	t.Logf("%d rewrites, %d complete reads; %d pair reads saw a key and a certificate of different generations (the reader read them at different moments, across a rewrite)", writes, reads.Load(), mismatches.Load())
}

func TestRunReload(t *testing.T) {
	ctx := context.Background()
	out, err := runReload(ctx, []string{"sh", "-c", "echo reloaded; echo warn >&2"}, 5*time.Second)
	if err != nil || !strings.Contains(out, "reloaded") || !strings.Contains(out, "warn") {
		t.Fatalf("ok run: %q %v", out, err)
	}
	_, err = runReload(ctx, []string{"sh", "-c", "echo nope; exit 3"}, 5*time.Second)
	fe := wantClass(t, err, ReloadFailed)
	if !strings.Contains(fe.Message, "status 3") || !strings.Contains(fe.Evidence, "nope") {
		t.Fatalf("exit error: %s", failure.Text(err))
	}
	_, err = runReload(ctx, []string{"/nonexistent/reload"}, 5*time.Second)
	wantClass(t, err, ReloadFailed)
	// A command that outlives the timeout, with a child holding the output
	// pipe: the group is killed and the class is timeout.
	_, err = runReload(ctx, []string{"sh", "-c", "sleep 60 & sleep 60"}, 200*time.Millisecond)
	wantClass(t, err, failure.Timeout)
	// Output is bounded.
	out, err = runReload(ctx, []string{"sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x"}, 5*time.Second)
	if err != nil || len(out) > maxOutput+64 || !strings.Contains(out, "more bytes not kept") {
		t.Fatalf("bounded output: len %d err %v", len(out), err)
	}
}

func TestReloadRetryDelay(t *testing.T) {
	want := []time.Duration{5 * time.Second, 10 * time.Second, 20 * time.Second, 40 * time.Second, 80 * time.Second, 160 * time.Second, 5 * time.Minute, 5 * time.Minute}
	for i, w := range want {
		if d := reloadRetryDelay(i+1, 5*time.Second, 5*time.Minute); d != w {
			t.Errorf("retry %d: %s, want %s", i+1, d, w)
		}
	}
}

// TestFailedReloadRetried: a reload command that fails is counted with its
// class and run again by the next Sync (the loop's retry), with the files
// already in place; once it succeeds it is not run again until new files.
func TestFailedReloadRetried(t *testing.T) {
	e := newVault(t)
	marker := filepath.Join(e.dir, "runs")
	okFile := filepath.Join(e.dir, "ok")
	script := fmt.Sprintf(`echo run >> %s; test -e %s`, marker, okFile)
	cfg := e.config(t, func(d string) string {
		return strings.Replace(d, `reload_command = ["true"]`, fmt.Sprintf(`reload_command = ["sh", "-c", %q]`, script), 1)
	})
	reg := prometheus.NewRegistry()
	o := e.options()
	o.Registry = reg
	ctx := context.Background()
	a, err := New(ctx, cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	wantClass(t, a.Sync(ctx), ReloadFailed)
	if _, err := keyfile.LoadKeyPair(cfg.Agent.CertFile, cfg.Agent.KeyFile, ""); err != nil {
		t.Fatalf("files not in place after a failed reload: %v", err)
	}
	wantClass(t, a.Sync(ctx), ReloadFailed)
	if m := metricsText(reg); !strings.Contains(m, `pgtrust_cert_agent_reload_failures_total{class="reload_failed"} 2`) {
		t.Fatalf("reload failures not counted:\n%s", m)
	}
	os.WriteFile(okFile, nil, 0o600)
	if err := a.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Sync(ctx); err != nil { // nothing new: no run
		t.Fatal(err)
	}
	runs, _ := os.ReadFile(marker)
	if n := strings.Count(string(runs), "run"); n != 3 {
		t.Fatalf("reload ran %d times, want 3 (two failures, one success, none without new files)", n)
	}
	if m := metricsText(reg); !strings.Contains(m, "pgtrust_cert_agent_reloads_total 1\n") || !strings.Contains(m, "pgtrust_cert_agent_writes_total 1\n") {
		t.Fatalf("reloads/writes not counted once:\n%s", m)
	}
	noSecret(t, "agent log", e.log.String())
}

// TestRunSignalAndReadyz drives Run: a value on renewNow renews, writes and
// reloads; /metrics counts it; once the certificate has expired with the CA
// down, /readyz is 503 with renewal_expired.
func TestRunSignalAndReadyz(t *testing.T) {
	e := newVault(t)
	marker := filepath.Join(e.dir, "reloads")
	cfg := e.config(t, func(d string) string {
		d = strings.Replace(d, `reload_command = ["true"]`, fmt.Sprintf(`reload_command = ["sh", "-c", "echo r >> %s"]`, marker), 1)
		return d + "\n[health]\nlisten = \"127.0.0.1:0\"\n"
	})
	var offset atomic.Int64
	o := e.options()
	o.Now = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, err := New(ctx, cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	first := a.Source().Status().Serial
	renew := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, renew) }()
	waitFor(t, "first write and reload", func() bool { return countLines(marker) == 1 })
	renew <- struct{}{}
	waitFor(t, "renewal on signal", func() bool { return countLines(marker) == 2 })
	pair, err := keyfile.LoadKeyPair(cfg.Agent.CertFile, cfg.Agent.KeyFile, "")
	if err != nil || certs.SerialHex(pair.Leaf) == first {
		t.Fatalf("files not renewed: %v", err)
	}
	base := "http://" + a.HealthAddr().String()
	if code, body := get(t, base+"/readyz"); code != 200 {
		t.Fatalf("readyz %d %s", code, body)
	}
	// The reload command has run; its success is counted when it returns.
	for _, want := range []string{"pgtrust_cert_agent_reloads_total 2", "pgtrust_cert_agent_writes_total 2", "pgtrust_cert_renewals_total"} {
		waitFor(t, "metric "+want, func() bool { _, m := get(t, base+"/metrics"); return strings.Contains(m, want) })
	}
	// The CA goes away and the clock passes NotAfter.
	e.srv.Close()
	offset.Store(int64(48 * time.Hour))
	renew <- struct{}{}
	waitFor(t, "readyz 503", func() bool { code, _ := get(t, base+"/readyz"); return code == 503 })
	_, body := get(t, base+"/readyz")
	if !strings.Contains(body, string(certs.RenewalExpired)) {
		t.Fatalf("readyz body %q", body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func countLines(p string) int {
	b, _ := os.ReadFile(p)
	return strings.Count(string(b), "\n")
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func metricsText(reg *prometheus.Registry) string {
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}

// TestRunRenewsOnSchedule: with a 20s certificate (Vault backdates
// NotBefore by 30s, so the lifetime is 50s and 70% of it is reached about
// 5s after the issue) the engine's own timer renews, and the agent writes
// and reloads without any signal.
func TestRunRenewsOnSchedule(t *testing.T) {
	e := newVault(t)
	marker := filepath.Join(e.dir, "reloads")
	cfg := e.config(t, func(d string) string {
		d = strings.Replace(d, `ttl = "1h"`, `ttl = "20s"`, 1)
		return strings.Replace(d, `reload_command = ["true"]`, fmt.Sprintf(`reload_command = ["sh", "-c", "echo r >> %s"]`, marker), 1)
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, err := New(ctx, cfg, e.options())
	if err != nil {
		t.Fatal(err)
	}
	first := a.Source().Status().Serial
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, nil) }()
	waitFor(t, "a scheduled renewal written and reloaded", func() bool { return countLines(marker) >= 2 })
	pair, err := keyfile.LoadKeyPair(cfg.Agent.CertFile, cfg.Agent.KeyFile, "")
	if err != nil || certs.SerialHex(pair.Leaf) == first {
		t.Fatalf("not renewed on schedule: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(e.log.String(), `msg="certificate renewed"`) {
		t.Fatalf("no renewal logged:\n%s", e.log.String())
	}
}
