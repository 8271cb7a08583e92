package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/scram"
	"github.com/pgtrust/pgtrust/internal/secretscan"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

// runWithStdin runs pgtrust with args and stdin.
func runWithStdin(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	root := newRootCmd()
	root.SetIn(strings.NewReader(stdin))
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.Execute()
	code := 0
	if err != nil {
		code = 2
		if ee, ok := err.(*exitError); ok {
			code = ee.code
		}
		errOut.WriteString(err.Error())
	}
	secretscan.Record(t, "pgtrust command output", out.String()+errOut.String())
	return out.String(), errOut.String(), code
}

func TestGatewayHashSecret(t *testing.T) {
	out, errOut, code := runWithStdin(t, "s3cr3t-pw\n", "gateway", "hash-secret")
	if code != 0 {
		t.Fatalf("hash-secret: %d %s", code, errOut)
	}
	rw, err := scram.ParseVerifier(strings.TrimSpace(out))
	if err != nil || rw.Iterations != 4096 {
		t.Fatalf("output %q does not parse: %v", out, err)
	}
	// The trailing newline is not part of the secret.
	again, _ := scram.NewVerifier([]byte("s3cr3t-pw"), 4096, rw.Salt)
	if again.String() != rw.String() {
		t.Fatalf("verifier of another secret")
	}
	dir := t.TempDir()
	rwFile := testpki.WriteFile(t, dir, "rw.verifier", []byte(out), 0o600)
	secretFile := testpki.WriteFile(t, dir, "read.secret", []byte("hunter2"), 0o600)
	out, errOut, code = runWithStdin(t, "", "gateway", "hash-secret", "--like", rwFile, "--secret-file", secretFile)
	if code != 0 {
		t.Fatalf("hash-secret --like: %d %s", code, errOut)
	}
	read, err := scram.ParseVerifier(strings.TrimSpace(out))
	if err != nil || !scram.SameSalt(read, rw) || read.String() == rw.String() {
		t.Fatalf("--like: %q %v", out, err)
	}
	if _, _, code = runWithStdin(t, "", "gateway", "hash-secret", "--like", rwFile, "--iterations", "8192", "--secret-file", secretFile); code != 2 {
		t.Fatalf("--like with other iterations: exit %d", code)
	}
	// There is no way to give the secret on the command line.
	if _, _, code = runWithStdin(t, "", "gateway", "hash-secret", "--secret", "hunter2"); code != 2 {
		t.Fatalf("--secret accepted: exit %d", code)
	}
}

// TestGatewayCommand runs pgtrust gateway from a TOML file with verifier
// files made by hash-secret, in front of a real PostgreSQL: psql 15
// connects as teesql_readwrite with verify-full, /health reports the
// listener, and a configuration without a gateway is refused.
func TestGatewayCommand(t *testing.T) {
	ca := testpki.NewRootCA(t, "gateway command CA")
	server := ca.Server(t)
	srv := pgtest.Start(t, pgtest.Options{
		SSL: true, ServerCert: server.ChainPEM, ServerKey: server.KeyPEM, CA: ca.CertPEM,
		HBA:   []string{"hostssl all app_rw 127.0.0.1/32 scram-sha-256", "host all all 127.0.0.1/32 reject"},
		Setup: []string{"CREATE ROLE app_rw LOGIN PASSWORD 'clear-pw'"},
	})
	dir := t.TempDir()
	root := testpki.WriteFile(t, dir, "root.crt", ca.CertPEM, 0o644)
	gw := ca.Server(t)
	cert := testpki.WriteFile(t, dir, "gw.crt", gw.ChainPEM, 0o644)
	key := testpki.WriteFile(t, dir, "gw.key", gw.KeyPEM, 0o600)
	out, _, code := runWithStdin(t, "s3cr3t-pw\n", "gateway", "hash-secret")
	if code != 0 {
		t.Fatal("hash-secret failed")
	}
	rwFile := testpki.WriteFile(t, dir, "rw.verifier", []byte(out), 0o600)
	pwFile := testpki.WriteFile(t, dir, "app_rw.password", []byte("clear-pw\n"), 0o600)
	conf := fmt.Sprintf(`
[health]
listen = "127.0.0.1:0"

[upstreams.db]
dsn = "host=127.0.0.1 port=%d dbname=postgres sslmode=verify-full sslrootcert=%s"

[[upstreams.db.gateway]]
listen = "127.0.0.1:0"
auth = "cluster_secret"
cert_file = %q
key_file = %q

[upstreams.db.gateway.roles.teesql_readwrite]
role = "app_rw"
verifier_file = %q
password_file = %q
`, srv.Port, root, cert, key, rwFile, pwFile)
	path := filepath.Join(dir, "gateway.toml")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := runWithStdin(t, "", "config", "validate", path); code != 0 || !strings.Contains(out, "ok   upstreams.db.roles.app_rw") {
		t.Fatalf("config validate: %d\n%s%s", code, out, errOut)
	}
	missing := filepath.Join(dir, "missing.toml")
	if err := os.WriteFile(missing, []byte(strings.Replace(conf, `role = "app_rw"`, `role = "app_nosuch"`, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := runWithStdin(t, "", "config", "validate", missing); code != 1 || !strings.Contains(out, "FAIL upstreams.db.roles.app_nosuch") {
		t.Fatalf("config validate, missing role: %d\n%s%s", code, out, errOut)
	}
	rp := startProxyCmd(t, path, nil)
	gws := rp.p.HealthStatus().Gateways
	if len(gws) != 1 || gws[0].Auth != "cluster_secret" {
		t.Fatalf("gateways %+v", gws)
	}
	r := pgtest.PsqlQuery(t, "host=127.0.0.1 port="+portOf(gws[0].Listen)+" user=teesql_readwrite dbname=postgres sslmode=verify-full channel_binding=require sslrootcert="+root,
		"SELECT current_user", map[string]string{"PGPASSWORD": "s3cr3t-pw"})
	if !r.OK || strings.TrimSpace(r.Stdout) != "app_rw" {
		t.Fatalf("psql: ok=%v stdout=%q stderr=%q\n%s", r.OK, r.Stdout, r.Stderr, rp.log.String())
	}
	resp, err := http.Get("http://" + rp.hs.Addr().String() + "/health")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `"auth": "cluster_secret"`) || !strings.Contains(string(body), `"reachable": true`) {
		t.Fatalf("/health %d %s", resp.StatusCode, body)
	}
	if !strings.Contains(rp.log.String(), `client_identity="teesql_readwrite SCRAM-SHA-256-PLUS"`) {
		t.Fatalf("no session line with the identity:\n%s", rp.log.String())
	}

	plain := filepath.Join(dir, "plain.toml")
	if err := os.WriteFile(plain, []byte(fmt.Sprintf("[upstreams.db]\nlisten = \"127.0.0.1:0\"\ndsn = \"host=127.0.0.1 port=%d sslmode=verify-full sslrootcert=%s\"\n", srv.Port, root)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := runWithStdin(t, "", "gateway", "--config", plain); code != 2 || !strings.Contains(errOut, "no gateway listener") {
		t.Fatalf("no gateway: %d %s", code, errOut)
	}
}

func portOf(addr string) string {
	i := strings.LastIndex(addr, ":")
	return addr[i+1:]
}
