package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/ping"
)

// TestPingAgainstCertsInit configures a real server with `certs init`
// output and checks that `pgtrust ping` and psql both make a verify-full
// mutual-TLS connection with the printed connection string.
func TestPingAgainstCertsInit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	out, errOut, code := runCerts(t, "certs", "init", "--dir", dir, "--user", "app")
	if code != 0 {
		t.Fatalf("certs init: %d %s", code, errOut)
	}
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var hba string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "hostssl ") {
			hba = line
		}
	}
	if hba == "" {
		t.Fatalf("no pg_hba line in:\n%s", out)
	}
	s := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: read("server.crt"), ServerKey: read("server.key"), CA: read("ca.crt"),
		HBA: []string{"local all all trust", hba}, Setup: []string{"CREATE ROLE app LOGIN;"}})
	home := pgtest.EmptyHome(t)
	t.Setenv("HOME", home)
	dsn := fmt.Sprintf("host=localhost hostaddr=127.0.0.1 port=%d dbname=postgres user=app sslmode=verify-full sslrootcert=%s sslcert=%s sslkey=%s",
		s.Port, filepath.Join(dir, "ca.crt"), filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key"))

	out, errOut, code = runCerts(t, "ping", "--json", dsn)
	var res ping.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("ping output %q: %v (%s)", out, err, errOut)
	}
	if code != 0 || !res.OK || !res.SSL || !res.HostnameVerified || !res.ClientCertSent || res.AuthMethod != "cert" || res.TLSVersion != "TLSv1.3" {
		t.Fatalf("ping: exit %d %+v", code, res)
	}
	if r := pgtest.Psql(t, dsn, map[string]string{"HOME": home}); !r.OK {
		t.Fatalf("psql: %s", r.Stderr)
	}

	// Without the client certificate the server refuses, and both agree.
	noCert := strings.Replace(dsn, "sslcert=", "sslcert=/nonexistent/", 1)
	out, _, code = runCerts(t, "ping", "--json", noCert)
	res = ping.Result{}
	json.Unmarshal([]byte(out), &res)
	if code != 1 || res.OK || res.Class != "client_cert_required" {
		t.Fatalf("ping without certificate: exit %d %+v", code, res)
	}
	if r := pgtest.Psql(t, noCert, map[string]string{"HOME": home}); r.OK {
		t.Fatal("psql connected without a client certificate")
	}
	// A bad DSN is a usage error.
	if _, _, code = runCerts(t, "ping", "sslmode=sometimes"); code != 2 {
		t.Fatalf("bad DSN exit %d", code)
	}
}
