package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/internal/pgtest"
)

// TestDoctorCommand checks the command's exit codes, its JSON shape and
// that piped output has no colour.
func TestDoctorCommand(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	for _, k := range []string{"PGHOST", "PGPORT", "PGSSLMODE", "PGUSER", "PGDATABASE", "DATABASE_URL", "PGSERVICE"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}

	out, _, code := runCerts(t, "doctor", "host=127.0.0.1 port=1 bogus=1", "--json")
	var r struct {
		OK     bool   `json:"ok"`
		Class  string `json:"class"`
		Stages []struct {
			Name, Status string
		} `json:"stages"`
		TLS      map[string]any `json:"tls"`
		Warnings []any          `json:"warnings"`
		Error    *struct{ Class, Message, Evidence, Fix string }
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil || code != 2 || r.Class != "config_invalid" || r.Error == nil || len(r.Stages) != 9 {
		t.Fatalf("unknown keyword: code %d, %v\n%s", code, err, out)
	}

	h, port := pgtest.FakeServer(t, pgtest.FakeRefuseSSL)
	dsn := "host=" + h + " port=" + itoa(port) + " user=postgres password=hunter2-secret"
	out, _, code = runCerts(t, "doctor", dsn+" sslmode=require", "--json")
	if err := json.Unmarshal([]byte(out), &r); err != nil || code != 1 || r.OK || r.Class != "no_ssl_server" || r.TLS == nil || r.Warnings == nil {
		t.Fatalf("ssl=off with require: code %d, %v\n%s", code, err, out)
	}
	if strings.Contains(out, "hunter2") {
		t.Errorf("password in output: %s", out)
	}

	out, _, code = runCerts(t, "doctor", dsn+" sslmode=prefer")
	if code != 0 || !strings.Contains(out, "verdict: connected without encryption") || strings.Contains(out, "\x1b[") ||
		!strings.Contains(out, "password_in_dsn") || strings.Contains(out, "hunter2") {
		t.Fatalf("prefer: code %d\n%s", code, out)
	}
	out, _, code = runCerts(t, "doctor", "-q", dsn+" sslmode=verify-full")
	if code != 1 || strings.Count(strings.TrimSpace(out), "\n") != 0 || !strings.HasPrefix(out, "fail: no_ssl_server") {
		t.Fatalf("quiet: code %d\n%q", code, out)
	}
	out, _, code = runCerts(t, "doctor", "--matrix", "--json", dsn+" sslmode=prefer")
	var m struct {
		Rows []struct {
			SSLMode   string `json:"sslmode"`
			Connected bool   `json:"connected"`
			Class     string `json:"class"`
		} `json:"rows"`
		Direct string `json:"direct_negotiation"`
	}
	if err := json.Unmarshal([]byte(out), &m); err != nil || code != 0 || len(m.Rows) < 7 || m.Direct == "" {
		t.Fatalf("matrix: code %d, %v\n%s", code, err, out)
	}

	// --config / --upstream.
	cfgFile := filepath.Join(t.TempDir(), "pgtrust.toml")
	if err := os.WriteFile(cfgFile, []byte("[upstreams.main]\nlisten = \"127.0.0.1:7000\"\ndsn = \"host=127.0.0.1 port=1 sslmode=require\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, code = runCerts(t, "doctor", "--config", cfgFile, "--upstream", "nope", "-q"); code != 2 {
		t.Errorf("unknown upstream: exit %d", code)
	}
	if out, _, code = runCerts(t, "doctor", "--config", cfgFile, "--upstream", "main", "-q"); code != 1 || !strings.Contains(out, "connection_refused") {
		t.Errorf("upstream main: exit %d %s", code, out)
	}
	if _, _, code = runCerts(t, "doctor", "--config", filepath.Join(t.TempDir(), "none.toml"), "--upstream", "main"); code != 2 {
		t.Errorf("missing config: exit %d", code)
	}
	if _, _, code = runCerts(t, "doctor", "--config", cfgFile); code != 2 {
		t.Errorf("--config without --upstream: exit %d", code)
	}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}
