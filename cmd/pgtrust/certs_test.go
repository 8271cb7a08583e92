package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/internal/secretscan"
)

// runCerts runs pgtrust in-process and returns stdout, stderr and the exit code.
func runCerts(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.Execute()
	code := 0
	var ee *exitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.code
		if ee.err != nil {
			errOut.WriteString(ee.err.Error())
		}
	default:
		code = 2
		errOut.WriteString(err.Error())
	}
	secretscan.Record(t, "pgtrust command output", out.String()+errOut.String())
	return out.String(), errOut.String(), code
}

func TestCertsCommands(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "pki")
	out, errOut, code := runCerts(t, "certs", "init", "--dir", dir, "--user", "app", "--hosts", "db.example.com,10.1.2.3")
	if code != 0 || !strings.Contains(out, "hostssl all app all cert clientcert=verify-full") || !strings.Contains(out, "ssl_ca_file = '"+dir+"/ca.crt'") {
		t.Fatalf("init: %d\n%s\n%s", code, out, errOut)
	}
	if _, errOut, code = runCerts(t, "certs", "init", "--dir", dir); code != 2 || !strings.Contains(errOut, "--force") {
		t.Fatalf("init over existing files: %d %s", code, errOut)
	}
	if _, _, code = runCerts(t, "certs", "init", "--dir", filepath.Join(base, "x"), "--key-type", "dsa"); code != 2 {
		t.Fatalf("bad key type: %d", code)
	}

	ca, caKey := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	out, errOut, code = runCerts(t, "certs", "verify", "--ca", ca, "--cert", filepath.Join(dir, "server.crt"), "--key", filepath.Join(dir, "server.key"), "--host", "10.1.2.3")
	if code != 0 {
		t.Fatalf("verify good: %d\n%s%s", code, out, errOut)
	}
	out, _, code = runCerts(t, "certs", "verify", "--ca", ca, "--cert", filepath.Join(dir, "server.crt"), "--host", "other.example.com", "--json")
	var vr struct {
		OK       bool
		Findings []struct{ Check, Status, Class string }
	}
	if err := json.Unmarshal([]byte(out), &vr); err != nil || code != 1 || vr.OK {
		t.Fatalf("verify wrong host: %d %v\n%s", code, err, out)
	}

	// Issue from the CA with an encrypted CA key and an encrypted new key.
	pw := filepath.Join(base, "pw")
	os.WriteFile(pw, []byte("hunter2\n"), 0o600)
	encCA := filepath.Join(base, "ca-enc.key")
	if b, err := exec.Command("openssl", "pkey", "-in", caKey, "-aes256", "-passout", "pass:hunter2", "-out", encCA).CombinedOutput(); err != nil {
		t.Fatalf("openssl: %v %s", err, b)
	}
	out, errOut, code = runCerts(t, "certs", "issue", "client", "--ca", ca, "--ca-key", encCA, "--ca-key-password-file", pw,
		"--user", "bob", "--dir", base, "--key-password-file", pw)
	if code != 0 || !strings.Contains(out, "CN=bob") {
		t.Fatalf("issue: %d\n%s%s", code, out, errOut)
	}
	if b, err := exec.Command("openssl", "pkey", "-in", filepath.Join(base, "client.key"), "-passin", "pass:hunter2", "-noout").CombinedOutput(); err != nil {
		t.Fatalf("openssl cannot read the issued key: %s", b)
	}
	if _, errOut, code = runCerts(t, "certs", "issue", "client", "--ca", ca, "--ca-key", encCA, "--user", "x", "--dir", base, "--name", "y"); code != 2 || !strings.Contains(errOut, "key_decrypt_failed") && !strings.Contains(errOut, "passphrase") {
		t.Fatalf("issue without CA passphrase: %d %s", code, errOut)
	}
	if _, _, code = runCerts(t, "certs", "issue", "client", "--ca", ca, "--ca-key", encCA, "--ca-key-password-file", pw, "--user", "bob", "--dir", base); code != 2 {
		t.Fatalf("issue over existing files: %d", code)
	}

	out, _, code = runCerts(t, "certs", "inspect", "--json", filepath.Join(dir, "server.crt"))
	if code != 0 || !strings.Contains(out, `"10.1.2.3"`) || !strings.Contains(out, `"fingerprint_sha256"`) {
		t.Fatalf("inspect: %d %s", code, out)
	}
	if _, _, code = runCerts(t, "certs", "inspect", filepath.Join(dir, "server.key")); code != 2 {
		t.Fatalf("inspect of a key: %d", code)
	}

	prom := filepath.Join(base, "m.prom")
	if _, _, code = runCerts(t, "certs", "check", "--prometheus-textfile", prom, dir); code != 0 {
		t.Fatalf("check: %d", code)
	}
	if b, _ := os.ReadFile(prom); !strings.Contains(string(b), `subject="CN=app"`) {
		t.Fatalf("textfile:\n%s", b)
	}
	if _, _, code = runCerts(t, "certs", "check", "--warn-days", "400", dir); code != 1 {
		t.Fatalf("check warn: %d", code)
	}
	os.WriteFile(filepath.Join(base, "bad.crt"), []byte("garbage"), 0o644)
	if _, _, code = runCerts(t, "certs", "check", filepath.Join(base, "bad.crt")); code != 2 {
		t.Fatalf("check unreadable: %d", code)
	}
}
