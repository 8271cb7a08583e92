package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/vaulttest"
)

// seedVaultToken is secretscan's known Vault token, so a leak into a log fails the scan.
const seedVaultToken = "hvs.R2-vault-Token-secret-1"

// seedFile is testdata/NAME with the seed's host, paths and Vault address
// replaced by the test's (and a port line for the test server): nothing
// else of the seed's text changes.
func seedFile(t *testing.T, name string, port int, repl map[string]string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(b), `host = "db.example.com"`, fmt.Sprintf("host = \"127.0.0.1\"\nport = %d", port), 1)
	for from, to := range repl {
		if !strings.Contains(s, from) {
			t.Fatalf("testdata/%s has no %q", name, from)
		}
		s = strings.ReplaceAll(s, from, to)
	}
	p := filepath.Join(t.TempDir(), "epoch.toml")
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

var epochSetup = []string{"CREATE ROLE epoch_user LOGIN", "CREATE DATABASE production OWNER epoch_user"}

// Seed 001's epoch.toml runs the proxy as written (the server's host,
// port and the certificate paths substituted) and psql gets through as
// epoch_user with the seed's client certificate.
func TestProxySeed001EpochToml(t *testing.T) {
	pki, err := certs.InitDevPKI(filepath.Join(t.TempDir(), "pki"), certs.DevPKIOptions{User: "epoch_user"})
	if err != nil {
		t.Fatal(err)
	}
	srv := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: readFile(t, pki.ServerCert), ServerKey: readFile(t, pki.ServerKey), CA: readFile(t, pki.CACert),
		HBA: []string{"hostssl all all 127.0.0.1/32 cert clientcert=verify-full"}, Setup: epochSetup})
	path := seedFile(t, "epoch.toml", srv.Port, map[string]string{
		"/etc/epoch/certs/client.crt": pki.ClientCert, "/etc/epoch/certs/client.key": pki.ClientKey, "/etc/epoch/certs/ca.crt": pki.CACert})

	out, errOut, code := runCerts(t, "config", "validate", path)
	if code != 0 || !strings.Contains(out, "ok   storage.postgres.production.sslcert.key") && !strings.Contains(out, "ok   upstreams.production.sslcert.key") {
		t.Fatalf("config validate: %d\n%s%s", code, out, errOut)
	}
	rp := startProxyCmd(t, path, map[string]string{"listen": "127.0.0.1:0", "health-listen": "127.0.0.1:0"})
	res := pgtest.PsqlQuery(t, fmt.Sprintf("host=127.0.0.1 port=%d user=epoch_user dbname=production sslmode=disable", rp.addr(t).Port),
		"SELECT current_user || ' ' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", nil)
	if !res.OK || strings.TrimSpace(res.Stdout) != "epoch_user true" {
		t.Fatalf("psql through the proxy: %+v\n%s", res, rp.log.String())
	}
}

// vaultPG is the Vault double and a PostgreSQL server that trusts its CA
// for client certificates (cert clientcert=verify-full).
func vaultPG(t *testing.T) (*vaulttest.Server, *pgtest.Server, *certs.DevPKI) {
	t.Helper()
	v, err := vaulttest.New(vaulttest.Options{Roles: []vaulttest.Role{{Name: "epoch-client", MaxTTL: 24 * time.Hour}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	v.AddToken(seedVaultToken, 0, false)
	pki, err := certs.InitDevPKI(filepath.Join(t.TempDir(), "pki"), certs.DevPKIOptions{User: "epoch_user"})
	if err != nil {
		t.Fatal(err)
	}
	vaultCAs := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: v.Root.Raw}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: v.Issuing.Raw})...)
	srv := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: readFile(t, pki.ServerCert), ServerKey: readFile(t, pki.ServerKey), CA: vaultCAs,
		HBA: []string{"hostssl all all 127.0.0.1/32 cert clientcert=verify-full"}, Setup: epochSetup})
	return v, srv, pki
}

// The seed's Vault PKI variant: the client certificate is issued by Vault
// for CN = username; psql gets through with it (pg_stat_ssl shows the
// Vault serial), health and metrics show the renewal, a SIGHUP with the
// same file asks Vault for nothing.
func TestProxySeed001VaultPKI(t *testing.T) {
	v, srv, pki := vaultPG(t)
	t.Setenv("VAULT_TOKEN", seedVaultToken)
	path := seedFile(t, "epoch-vault.toml", srv.Port, map[string]string{
		"https://vault.example.com:8200": v.URL, "/etc/epoch/certs/ca.crt": pki.CACert})

	out, errOut, code := runCerts(t, "config", "validate", path)
	if code != 0 || !strings.Contains(out, "not requested by validate") || !strings.Contains(out, `CN="epoch_user"`) {
		t.Fatalf("config validate: %d\n%s%s", code, out, errOut)
	}
	if n := v.CountPath("pki/issue/epoch-client"); n != 0 {
		t.Fatalf("config validate asked Vault for %d certificate(s)", n)
	}

	rp := startProxyCmd(t, path, map[string]string{"listen": "127.0.0.1:0", "health-listen": "127.0.0.1:0"})
	port := rp.addr(t).Port
	res := pgtest.PsqlQuery(t, fmt.Sprintf("host=127.0.0.1 port=%d user=epoch_user dbname=production sslmode=disable", port),
		"SELECT current_user || ' ' || client_serial FROM pg_stat_ssl WHERE pid = pg_backend_pid()", nil)
	if !res.OK {
		t.Fatalf("psql through the proxy: %+v\n%s", res, rp.log.String())
	}
	user, serial, _ := strings.Cut(strings.TrimSpace(res.Stdout), " ")
	base := "http://" + rp.hs.Addr().String()
	_, body := httpStatus(t, base+"/health/database/ssl")
	var health struct {
		Upstreams []struct {
			Name    string `json:"name"`
			Renewal *struct {
				Source, Issuer, Serial string
				NextRenewal            time.Time `json:"next_renewal"`
				LastSuccess            time.Time `json:"last_success"`
				Failures               int
				LastClass              string `json:"last_class"`
			} `json:"client_certificate_renewal"`
		} `json:"upstreams"`
	}
	if err := json.Unmarshal([]byte(body), &health); err != nil || len(health.Upstreams) != 1 || health.Upstreams[0].Renewal == nil {
		t.Fatalf("health: %v\n%s", err, body)
	}
	rs := health.Upstreams[0].Renewal
	t.Logf("/health/database/ssl:\n%s", body)
	n, _ := new(big.Int).SetString(serial, 10)
	if user != "epoch_user" || n == nil || fmt.Sprintf("%x", n) != rs.Serial || rs.Issuer != "vault" || rs.NextRenewal.IsZero() || rs.LastSuccess.IsZero() || rs.LastClass != "ok" {
		t.Fatalf("session %q, health renewal %+v\n%s", res.Stdout, rs, body)
	}
	if code, _ := httpStatus(t, base+"/readyz"); code != 200 {
		t.Fatalf("readyz %d", code)
	}
	_, metrics := httpStatus(t, base+"/metrics")
	if !strings.Contains(metrics, `pgtrust_cert_renewal_next_timestamp_seconds{issuer="vault",source="upstream production client certificate"}`) {
		t.Fatalf("metrics lack the source's series:\n%s", grepLines(metrics, "pgtrust_cert"))
	}

	issued := v.CountPath("pki/issue/epoch-client")
	rp.sigs <- syscall.SIGHUP
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(rp.log.String(), "msg=reloaded") {
		if time.Now().After(deadline) {
			t.Fatalf("no reload:\n%s", rp.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := v.CountPath("pki/issue/epoch-client"); got != issued {
		t.Fatalf("SIGHUP with an unchanged file made %d issue request(s)", got-issued)
	}
	secretsOut := rp.log.String() + body + metrics
	if strings.Contains(secretsOut, seedVaultToken) {
		t.Fatal("the Vault token is in the log, health or metrics")
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// `pgtrust config validate` reports a wrong vault_pki_role shape (exit 1,
// the class, the key, the fix) and a missing ${VAR} (exit 2: the file is
// not a valid configuration).
func TestConfigValidateSeed001Errors(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.crt")
	pki, err := certs.InitDevPKI(filepath.Join(dir, "pki"), certs.DevPKIOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(pki.CACert)
	if err := os.WriteFile(ca, b, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("VAULT_TOKEN", seedVaultToken)
	bad := seedFile(t, "epoch-vault.toml", 5432, map[string]string{`"pki/issue/epoch-client"`: `"epoch-client"`, "/etc/epoch/certs/ca.crt": ca})
	out, errOut, code := runCerts(t, "config", "validate", bad)
	t.Logf("validate (wrong pki role):\n%s", out)
	for _, want := range []string{"FAIL storage.postgres.production.vault_pki_role", `"epoch-client" is not <mount>/issue/<role>`, "config_invalid", `pki/issue/epoch-client`} {
		if !strings.Contains(out, want) {
			t.Fatalf("validate output lacks %q (exit %d):\n%s%s", want, code, out, errOut)
		}
	}
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}

	os.Unsetenv("VAULT_TOKEN")
	good := seedFile(t, "epoch-vault.toml", 5432, map[string]string{"/etc/epoch/certs/ca.crt": ca})
	out, errOut, code = runCerts(t, "config", "validate", good)
	t.Logf("validate (VAULT_TOKEN unset):\n%s", errOut)
	for _, want := range []string{"storage.postgres.production.vault_token", "VAULT_TOKEN is not set", "config_invalid", "export VAULT_TOKEN"} {
		if !strings.Contains(errOut, want) {
			t.Fatalf("validate output lacks %q (exit %d):\n%s%s", want, code, out, errOut)
		}
	}
	if code != 2 {
		t.Fatalf("exit %d, want 2", code)
	}
}

// [upstreams.NAME.vault] tables through the command: two upstreams on one
// Vault, one verifying the server with sslrootcert, the other with
// trust_issued_ca = true (PostgreSQL's own certificate is Vault-issued, and
// no sslrootcert is given); psql gets through both, and /metrics keeps a
// series per source.
func TestProxyUpstreamVaultTables(t *testing.T) {
	v, err := vaulttest.New(vaulttest.Options{Roles: []vaulttest.Role{{Name: "pg", MaxTTL: 24 * time.Hour, AllowIPSANs: true}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	v.AddToken(seedVaultToken, 0, false)
	iss, err := certs.NewVaultIssuer(certs.VaultOptions{Address: v.URL, Mount: "pki", Role: "pg", CommonName: "localhost",
		IPSANs: []net.IP{net.ParseIP("127.0.0.1")}, Token: seedVaultToken})
	if err != nil {
		t.Fatal(err)
	}
	server, err := iss.Issue(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var chain []byte
	for _, der := range server.Certificate.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(server.Certificate.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	root := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: v.Root.Raw})
	srv := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: chain, ServerKey: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		CA:  append(append([]byte{}, root...), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: v.Issuing.Raw})...),
		HBA: []string{"hostssl all all 127.0.0.1/32 cert clientcert=verify-full"}, Setup: []string{"CREATE ROLE app LOGIN", "CREATE DATABASE appdb OWNER app"}})
	dir := t.TempDir()
	rootFile := filepath.Join(dir, "vault-root.crt")
	if err := os.WriteFile(rootFile, root, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PGTRUST_TEST_VAULT_TOKEN", seedVaultToken)
	t.Setenv("HOME", dir) // no ~/.postgresql/root.crt: x must verify with the issued CA
	path := filepath.Join(dir, "proxy.toml")
	doc := fmt.Sprintf(`
[health]
listen = "127.0.0.1:0"

[upstreams.x]
listen = "127.0.0.1:0"
dsn = "host=127.0.0.1 port=%[1]d user=app dbname=appdb sslmode=verify-full"
[upstreams.x.vault]
addr = "%[2]s"
pki_role = "pki/issue/pg"
token = "${PGTRUST_TEST_VAULT_TOKEN}"
trust_issued_ca = true

[upstreams.y]
listen = "127.0.0.1:0"
dsn = "host=127.0.0.1 port=%[1]d user=app dbname=appdb sslmode=verify-full sslrootcert=%[3]s"
[upstreams.y.vault]
addr = "%[2]s"
pki_role = "pki/issue/pg"
token = "${PGTRUST_TEST_VAULT_TOKEN}"
renewal_threshold = 0.6
`, srv.Port, v.URL, rootFile)
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runCerts(t, "config", "validate", path)
	if code != 0 || !strings.Contains(out, "ok   upstreams.x.sslrootcert: the server is verified against the CA that issues the client certificate") {
		t.Fatalf("config validate: %d\n%s%s", code, out, errOut)
	}
	rp := startProxyCmd(t, path, nil)
	for _, name := range []string{"x", "y"} {
		port := rp.p.Addrs()[name][0].(*net.TCPAddr).Port
		res := pgtest.PsqlQuery(t, fmt.Sprintf("host=127.0.0.1 port=%d user=app dbname=appdb sslmode=disable", port),
			"SELECT current_user FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl", nil)
		if !res.OK || strings.TrimSpace(res.Stdout) != "app" {
			t.Fatalf("psql through upstream %s: %+v\n%s", name, res, rp.log.String())
		}
	}
	_, metrics := httpStatus(t, "http://"+rp.hs.Addr().String()+"/metrics")
	for _, name := range []string{"x", "y"} {
		want := fmt.Sprintf(`pgtrust_cert_not_after_timestamp_seconds{issuer="vault",source="upstream %s client certificate"}`, name)
		if !strings.Contains(metrics, want) {
			t.Fatalf("metrics lack %s:\n%s", want, grepLines(metrics, "pgtrust_cert"))
		}
	}
	hs := rp.p.HealthStatus()
	if hs.Upstreams[0].ClientCertRenewal == nil || hs.Upstreams[1].ClientCertRenewal == nil ||
		hs.Upstreams[0].ClientCertRenewal.Serial == hs.Upstreams[1].ClientCertRenewal.Serial {
		t.Fatalf("health: %+v %+v", hs.Upstreams[0].ClientCertRenewal, hs.Upstreams[1].ClientCertRenewal)
	}
}
