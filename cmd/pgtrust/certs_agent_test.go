package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/internal/certagent"
	"github.com/pgtrust/pgtrust/internal/keyfile"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/secretscan"
	"github.com/pgtrust/pgtrust/internal/vaulttest"
)

// agentToken is secretscan's known Vault token, so a leak is caught by the
// suite's scan as well as by the assertions here.
const agentToken = "hvs.R2-vault-Token-secret-1"

func newAgentVault(t *testing.T) *vaulttest.Server {
	t.Helper()
	srv, err := vaulttest.New(vaulttest.Options{Roles: []vaulttest.Role{{Name: "pg-server", MaxTTL: 24 * time.Hour, AllowIPSANs: true}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	srv.AddToken(agentToken, 0, false)
	t.Setenv("PGTRUST_TEST_VAULT_TOKEN", agentToken)
	return srv
}

// agentDir is a directory the postgres user can traverse (t.TempDir's
// parents are 0700 root), for files PostgreSQL reads.
func agentDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pgtrust-agent-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

type agentFile struct {
	dir, name, vault, owner, ttl string
	cn                           string // default localhost
	reload                       []string
}

func (f agentFile) write(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "[agent]\ncert_file = %q\nkey_file = %q\nca_file = %q\n",
		filepath.Join(f.dir, f.name+".crt"), filepath.Join(f.dir, f.name+".key"), filepath.Join(f.dir, f.name+"-ca.crt"))
	if f.owner != "" {
		fmt.Fprintf(&b, "owner = %q\n", f.owner)
	}
	if len(f.reload) > 0 {
		q := make([]string, len(f.reload))
		for i, a := range f.reload {
			q[i] = strconv.Quote(a)
		}
		fmt.Fprintf(&b, "reload_command = [%s]\nreload_timeout = \"20s\"\n", strings.Join(q, ", "))
	}
	ttl := f.ttl
	if ttl == "" {
		ttl = "1h"
	}
	cn := f.cn
	if cn == "" {
		cn = "localhost"
	}
	fmt.Fprintf(&b, "\n[vault]\naddr = %q\npki_role = \"pki/issue/pg-server\"\ncommon_name = %q\nip_sans = [\"127.0.0.1\"]\nttl = %q\ntoken = \"${PGTRUST_TEST_VAULT_TOKEN}\"\n", f.vault, cn, ttl)
	p := filepath.Join(f.dir, f.name+".toml")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func serialOnDisk(t *testing.T, dir, name string) string {
	t.Helper()
	pair, err := keyfile.LoadKeyPair(filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"), "")
	if err != nil {
		t.Fatalf("agent files do not load: %v", err)
	}
	return certs.SerialHex(pair.Leaf)
}

func noAgentSecret(t *testing.T, what, text string) {
	t.Helper()
	secretscan.Record(t, what, text)
	for _, s := range []string{agentToken, "PRIVATE KEY"} {
		if strings.Contains(text, s) {
			t.Fatalf("%s holds a secret (%.8s…):\n%s", what, s, text)
		}
	}
}

// TestCertsRenewExitCodes: pgtrust certs renew's exit statuses for cron.
func TestCertsRenewExitCodes(t *testing.T) {
	vault := newAgentVault(t)
	dir := t.TempDir()
	cfg := agentFile{dir: dir, name: "a", vault: vault.URL}.write(t)

	out, errOut, code := runCerts(t, "certs", "renew", "--config", cfg)
	if code != 0 || !strings.HasPrefix(out, "renewed: ") || !strings.Contains(out, "next renewal due at") {
		t.Fatalf("first renew: %d\n%s%s", code, out, errOut)
	}
	s1 := serialOnDisk(t, dir, "a")

	out, errOut, code = runCerts(t, "certs", "renew", "--config", cfg)
	if code != 0 || !strings.HasPrefix(out, "not due: ") || !strings.Contains(out, s1) || !strings.Contains(out, "next renewal due at") {
		t.Fatalf("not due: %d\n%s%s", code, out, errOut)
	}
	if serialOnDisk(t, dir, "a") != s1 {
		t.Fatal("a renew that was not due rewrote the files")
	}

	out, errOut, code = runCerts(t, "certs", "renew", "--config", cfg, "--force")
	s2 := serialOnDisk(t, dir, "a")
	if code != 0 || !strings.HasPrefix(out, "renewed: ") || s2 == s1 || !strings.Contains(out, s2) {
		t.Fatalf("forced renew: %d (%s → %s)\n%s%s", code, s1, s2, out, errOut)
	}

	// Configuration errors: 2, with class and fix.
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("[agent]\ncert_file = \"x.crt\"\nkey_file = \"x.key\"\nreload = [\"true\"]\n"), 0o600)
	_, errOut, code = runCerts(t, "certs", "renew", "--config", bad)
	if code != 2 || !strings.Contains(errOut, "config_invalid") || !strings.Contains(errOut, "agent.reload (line 4)") || !strings.Contains(errOut, "fix:") {
		t.Fatalf("bad config: %d\n%s", code, errOut)
	}
	_, errOut, code = runCerts(t, "certs", "renew", "--config", filepath.Join(dir, "missing.toml"))
	if code != 2 {
		t.Fatalf("missing config: %d\n%s", code, errOut)
	}
	_, errOut, code = runCerts(t, "certs", "renew")
	if code != 2 {
		t.Fatalf("no --config: %d\n%s", code, errOut)
	}

	// A certificate that expires: issued for 3s (Vault backdates NotBefore by
	// 30s). X.509 times are whole seconds, so NotAfter can land up to a second
	// early; 1s was too short to pass the agent's own validity check.
	shortCfg := agentFile{dir: dir, name: "short", vault: vault.URL, ttl: "3s"}.write(t)
	if out, errOut, code := runCerts(t, "certs", "renew", "--config", shortCfg); code != 0 {
		t.Fatalf("short renew: %d\n%s%s", code, out, errOut)
	}
	missingCfg := agentFile{dir: dir, name: "never", vault: vault.URL}.write(t)

	// Vault goes down.
	vault.Close()
	out, errOut, code = runCerts(t, "certs", "renew", "--config", cfg, "--force")
	if code != 1 || !strings.Contains(errOut, "renewal_unreachable") || !strings.Contains(errOut, "fix:") || !strings.Contains(out, "stays in use") {
		t.Fatalf("vault down, valid cert: %d\n%s%s", code, out, errOut)
	}
	if serialOnDisk(t, dir, "a") != s2 {
		t.Fatal("a failed renewal changed the files")
	}
	out, errOut, code = runCerts(t, "certs", "renew", "--config", missingCfg)
	if code != 3 || !strings.Contains(errOut, "renewal_unreachable") {
		t.Fatalf("vault down, no cert: %d\n%s%s", code, out, errOut)
	}
	// Let the short certificate expire: wait for its own NotAfter.
	short, err := keyfile.LoadKeyPair(filepath.Join(dir, "short.crt"), filepath.Join(dir, "short.key"), "")
	if err != nil {
		t.Fatalf("short certificate does not load: %v", err)
	}
	time.Sleep(time.Until(short.Leaf.NotAfter) + 100*time.Millisecond)
	out, errOut, code = runCerts(t, "certs", "renew", "--config", shortCfg)
	if code != 3 || !strings.Contains(errOut, "renewal_unreachable") {
		t.Fatalf("vault down, expired cert: %d\n%s%s", code, out, errOut)
	}
	noAgentSecret(t, "certs renew output", out+errOut)
}

// syncBuffer (proxy_test.go) collects the agent's log.

func probeSerial(t *testing.T, addr string) string {
	t.Helper()
	p, err := certs.ProbeServer(context.Background(), certs.ProbeOptions{Addr: addr, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("probe %s: %v", addr, err)
	}
	return p.Chain[0].Serial
}

// TestCertsAgentRenewsPostgres: a real PostgreSQL server whose
// ssl_cert_file and ssl_key_file are the agent's files. The certificate is
// issued before the server starts (certs renew, as an ExecStartPre would),
// the agent then runs, SIGHUP renews, the agent rewrites the files and runs
// pg_ctl reload as the postgres user; new connections see the new serial
// (Go probe, psql sslmode=verify-full) while a session opened before the
// renewal keeps working.
func TestCertsAgentRenewsPostgres(t *testing.T) {
	vault := newAgentVault(t)
	dir := agentDir(t)
	bin, err := pgtest.BinDir(15)
	if err != nil {
		t.Fatal(err)
	}
	ownerName := "postgres"
	if os.Geteuid() != 0 {
		u, _ := user.Current()
		ownerName = u.Username
	}
	boot := agentFile{dir: dir, name: "server", vault: vault.URL, owner: ownerName}.write(t)
	out, errOut, code := runCerts(t, "certs", "renew", "--config", boot)
	if code != 0 {
		t.Fatalf("bootstrap renew: %d\n%s%s", code, out, errOut)
	}
	certFile, keyFile, caFile := filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key"), filepath.Join(dir, "server-ca.crt")
	certPEM, _ := os.ReadFile(certFile)
	keyPEM, _ := os.ReadFile(keyFile)
	srv := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: certPEM, ServerKey: keyPEM,
		Conf: map[string]string{"ssl_cert_file": certFile, "ssl_key_file": keyFile}})
	s1 := serialOnDisk(t, dir, "server")
	if got := probeSerial(t, srv.Addr()); got != s1 {
		t.Fatalf("server presents %s, the agent wrote %s", got, s1)
	}
	if fi, _ := os.Stat(keyFile); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %o", fi.Mode().Perm())
	}

	// A session opened before the renewal, verified against the agent's CA file.
	ctx := context.Background()
	dsn := srv.DSN(fmt.Sprintf("sslmode=verify-full sslrootcert=%s", caFile))
	old, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect before renewal: %v", err)
	}
	defer old.Close(ctx)

	reload := []string{filepath.Join(bin, "pg_ctl"), "reload", "-D", srv.DataDir}
	if os.Geteuid() == 0 {
		// pg_ctl refuses to run as root; run it as the server's user.
		reload = append([]string{"runuser", "-u", "postgres", "--"}, reload...)
	}
	agentCfg := agentFile{dir: dir, name: "server", vault: vault.URL, owner: ownerName, reload: reload}.write(t)
	started := make(chan *certagent.Agent, 1)
	certsAgentStarted = func(a *certagent.Agent) { started <- a }
	t.Cleanup(func() { certsAgentStarted = nil })
	logs := &syncBuffer{}
	sigs := make(chan os.Signal, 2)
	done := make(chan error, 1)
	go func() { done <- runCertsAgent(ctx, agentCfg, logs, sigs) }()
	var a *certagent.Agent
	select {
	case a = <-started:
	case err := <-done:
		t.Fatalf("agent exited: %v\n%s", err, logs.String())
	case <-time.After(30 * time.Second):
		t.Fatal("agent did not start")
	}
	if !a.Reused() {
		t.Fatalf("the agent did not reuse the bootstrap certificate\n%s", logs.String())
	}

	sigs <- syscall.SIGHUP
	deadline := time.Now().Add(30 * time.Second)
	var s2 string
	for {
		if s2 = probeSerial(t, srv.Addr()); s2 != s1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server still presents %s after SIGHUP\n--- agent ---\n%s\n--- server ---\n%s", s1, logs.String(), srv.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if disk := serialOnDisk(t, dir, "server"); disk != s2 {
		t.Fatalf("server presents %s, disk has %s", s2, disk)
	}
	// libpq's view: verify-full against the CA file the agent wrote.
	r := pgtest.PsqlQuery(t, dsn, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", nil)
	if !r.OK || strings.TrimSpace(r.Stdout) != "t" {
		t.Fatalf("psql verify-full after renewal: %+v", r)
	}
	// The pre-renewal session continues.
	var one int
	if err := old.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("session opened before the renewal broke: %v", err)
	}
	out, errOut, code = runCerts(t, "certs", "inspect", "--server", srv.Addr())
	if code != 0 || !strings.Contains(out, s2) {
		t.Fatalf("certs inspect --server: %d\n%s%s", code, out, errOut)
	}
	if fi, _ := os.Stat(keyFile); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key mode after renewal %o", fi.Mode().Perm())
	}
	// pg_ctl returns once it has signalled the server, which may be after
	// the new certificate is served: wait for the agent's line.
	for deadline := time.Now().Add(30 * time.Second); strings.Count(logs.String(), "reload command succeeded") < 1; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no reload logged\n%s", logs.String())
		}
	}

	sigs <- syscall.SIGTERM
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("agent exit: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("agent did not stop on SIGTERM")
	}
	noAgentSecret(t, "certs agent log", logs.String())
	t.Logf("server certificate %s → %s after SIGHUP; old session alive; psql verify-full ok", s1, s2)
}

// TestCertsRenewPendingReload: a reload command that fails after the files
// were written is not forgotten: the next certs renew, although the
// certificate is not due, runs it again until it succeeds.
func TestCertsRenewPendingReload(t *testing.T) {
	vault := newAgentVault(t)
	dir := t.TempDir()
	ok := filepath.Join(dir, "server-up")
	cfg := agentFile{dir: dir, name: "a", vault: vault.URL, reload: []string{"sh", "-c", "echo reloading; test -e " + ok}}.write(t)
	out, errOut, code := runCerts(t, "certs", "renew", "--config", cfg)
	if code != 1 || !strings.Contains(errOut, "reload_failed") || !strings.Contains(errOut, "evidence: output: reloading") {
		t.Fatalf("first run: %d\n%s%s", code, out, errOut)
	}
	s1 := serialOnDisk(t, dir, "a")
	out, errOut, code = runCerts(t, "certs", "renew", "--config", cfg)
	if code != 1 || !strings.Contains(errOut, "reload_failed") || serialOnDisk(t, dir, "a") != s1 {
		t.Fatalf("second run (reload still failing): %d\n%s%s", code, out, errOut)
	}
	os.WriteFile(ok, nil, 0o600)
	out, errOut, code = runCerts(t, "certs", "renew", "--config", cfg)
	if code != 0 || !strings.Contains(out, "not due: ") || !strings.Contains(out, "pending reload command succeeded") {
		t.Fatalf("third run (reload works): %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = runCerts(t, "certs", "renew", "--config", cfg)
	if code != 0 || !strings.Contains(out, "not due: ") || strings.Contains(out, "pending") {
		t.Fatalf("fourth run (nothing pending): %d\n%s%s", code, out, errOut)
	}
	if serialOnDisk(t, dir, "a") != s1 || vault.CountPath("pki/issue/pg-server") != 1 {
		t.Fatalf("retrying the reload asked the CA again (%d issues)", vault.CountPath("pki/issue/pg-server"))
	}
	noAgentSecret(t, "certs renew output", out+errOut)
}

// TestCertsAgentStartFailures: the daemon's exit statuses when it cannot
// run: 2 for a configuration error, 1 when no certificate can be obtained.
func TestCertsAgentStartFailures(t *testing.T) {
	vault := newAgentVault(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("[agent]\ncert_file = \"x.crt\"\nkey_file = \"x.key\"\n"), 0o600)
	logs := &syncBuffer{}
	err := runCertsAgent(context.Background(), bad, logs, make(chan os.Signal))
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(logs.String(), "neither [vault] nor [step]") {
		t.Fatalf("bad config: %v\n%s", err, logs.String())
	}
	cfg := agentFile{dir: dir, name: "a", vault: vault.URL}.write(t)
	vault.Close()
	logs = &syncBuffer{}
	err = runCertsAgent(context.Background(), cfg, logs, make(chan os.Signal))
	if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(logs.String(), "renewal_unreachable") || !strings.Contains(logs.String(), "fix:") {
		t.Fatalf("no certificate obtainable: %v\n%s", err, logs.String())
	}
	noAgentSecret(t, "certs agent output", logs.String())
}

// TestCertsRenewChangedCommonName: after common_name changes, certs renew
// replaces the valid certificate on disk instead of saying "not due", and
// the agent issues a new one at its next start; a symbolic link at
// cert_file stops both with exit 2.
func TestCertsRenewChangedCommonName(t *testing.T) {
	vault := newAgentVault(t)
	dir := t.TempDir()
	cfg := agentFile{dir: dir, name: "a", vault: vault.URL}.write(t)
	if out, errOut, code := runCerts(t, "certs", "renew", "--config", cfg); code != 0 {
		t.Fatalf("first renew: %d\n%s%s", code, out, errOut)
	}
	s1 := serialOnDisk(t, dir, "a")
	cfg = agentFile{dir: dir, name: "a", vault: vault.URL, cn: "db.localhost"}.write(t)
	out, errOut, code := runCerts(t, "certs", "renew", "--config", cfg)
	if code != 0 || !strings.HasPrefix(out, "renewed: ") || !strings.Contains(out, `the files on disk were not reused: the certificate on disk does not match the configuration: its common name is "localhost", the configuration asks for "db.localhost"`) {
		t.Fatalf("renew after a common_name change: %d\n%s%s", code, out, errOut)
	}
	pair, err := keyfile.LoadKeyPair(filepath.Join(dir, "a.crt"), filepath.Join(dir, "a.key"), "")
	if err != nil || pair.Leaf.Subject.CommonName != "db.localhost" || certs.SerialHex(pair.Leaf) == s1 {
		t.Fatalf("files not replaced: %v", err)
	}
	if out, _, code := runCerts(t, "certs", "renew", "--config", cfg); code != 0 || !strings.HasPrefix(out, "not due: ") {
		t.Fatalf("matching files: %d %s", code, out)
	}

	// The daemon, started with the common name changed back.
	cfg = agentFile{dir: dir, name: "a", vault: vault.URL}.write(t)
	started := make(chan *certagent.Agent, 1)
	certsAgentStarted = func(a *certagent.Agent) { started <- a }
	t.Cleanup(func() { certsAgentStarted = nil })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logs := &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- runCertsAgent(ctx, cfg, logs, make(chan os.Signal)) }()
	select {
	case a := <-started:
		if a.Reused() || a.Source().Status().Subject != "CN=localhost" {
			t.Fatalf("agent reused %v, subject %s\n%s", a.Reused(), a.Source().Status().Subject, logs.String())
		}
	case err := <-done:
		t.Fatalf("agent exited: %v\n%s", err, logs.String())
	case <-time.After(30 * time.Second):
		t.Fatal("agent did not start")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "level=INFO msg=\"no reusable certificate on disk; asking the CA\"") || !strings.Contains(logs.String(), "does not match the configuration") {
		t.Fatalf("agent did not say why it issued:\n%s", logs.String())
	}
	if pair, err := keyfile.LoadKeyPair(filepath.Join(dir, "a.crt"), filepath.Join(dir, "a.key"), ""); err != nil || pair.Leaf.Subject.CommonName != "localhost" {
		t.Fatalf("agent did not write the new certificate: %v", err)
	}

	// A symbolic link at cert_file: refused, exit 2, the target untouched.
	victim := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(victim, []byte("precious"), 0o600)
	os.Remove(filepath.Join(dir, "a.crt"))
	os.Symlink(victim, filepath.Join(dir, "a.crt"))
	_, errOut, code = runCerts(t, "certs", "renew", "--config", cfg)
	if code != 2 || !strings.Contains(errOut, "is not a regular file") || !strings.Contains(errOut, "fix:") {
		t.Fatalf("symlinked cert_file, renew: %d\n%s", code, errOut)
	}
	logs = &syncBuffer{}
	err = runCertsAgent(context.Background(), cfg, logs, make(chan os.Signal))
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(logs.String(), "symbolic link") {
		t.Fatalf("symlinked cert_file, agent: %v\n%s", err, logs.String())
	}
	if b, _ := os.ReadFile(victim); string(b) != "precious" {
		t.Fatalf("victim changed: %q", b)
	}
	if fi, _ := os.Stat(victim); fi.Mode().Perm() != 0o600 {
		t.Fatalf("victim mode changed: %o", fi.Mode().Perm())
	}
	noAgentSecret(t, "certs output", out+errOut+logs.String())
}

// TestCertsRenewDirectoryWarning: certs renew warns on stderr when another
// user may write the directory of the files.
func TestCertsRenewDirectoryWarning(t *testing.T) {
	vault := newAgentVault(t)
	dir := t.TempDir()
	cfg := agentFile{dir: dir, name: "a", vault: vault.URL}.write(t)
	if _, errOut, code := runCerts(t, "certs", "renew", "--config", cfg); code != 0 || strings.Contains(errOut, "warning") {
		t.Fatalf("private directory: %d\n%s", code, errOut)
	}
	os.Chmod(dir, 0o777)
	_, errOut, code := runCerts(t, "certs", "renew", "--config", cfg)
	if code != 0 || strings.Count(errOut, "warning: another user may write "+dir) != 1 || !strings.Contains(errOut, "every user may write it") {
		t.Fatalf("world-writable directory: %d\n%s", code, errOut)
	}
}
