package certs

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/keyfile"
)

// TestIssueFiles checks the one writer `certs init` and `certs issue`
// share: key 0600 (encrypted when asked), certificate 0644, role-specific
// subject fields, no silent overwrite.
func TestIssueFiles(t *testing.T) {
	ca := mustCA(t)
	dir := t.TempDir()
	opts := Options{Hosts: []string{"db.internal", "127.0.0.1"}, CommonName: "app"}

	srv, err := IssueFiles(ca, IssueFilesOptions{Role: "server", Dir: dir, Options: opts})
	if err != nil {
		t.Fatal(err)
	}
	if srv.CertPath != filepath.Join(dir, "server.crt") || srv.KeyPath != filepath.Join(dir, "server.key") {
		t.Fatalf("paths %s %s", srv.CertPath, srv.KeyPath)
	}
	for path, want := range map[string]os.FileMode{srv.KeyPath: 0o600, srv.CertPath: 0o644} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode().Perm(), want)
		}
	}
	if _, err := keyfile.LoadKeyPair(srv.CertPath, srv.KeyPath, ""); err != nil {
		t.Fatalf("written pair does not load: %v", err)
	}
	// A server certificate is named by its hosts, not by CommonName.
	if c := srv.Pair.Cert; c.Subject.CommonName != "db.internal" || len(c.DNSNames) != 1 || len(c.IPAddresses) != 1 {
		t.Fatalf("server subject %s SANs %v %v", c.Subject, c.DNSNames, c.IPAddresses)
	}

	cli, err := IssueFiles(ca, IssueFilesOptions{Role: "client", Dir: dir, Name: "app", KeyPassword: "passphrase", Options: opts})
	if err != nil {
		t.Fatal(err)
	}
	if c := cli.Pair.Cert; c.Subject.CommonName != "app" || len(c.DNSNames)+len(c.IPAddresses) != 0 {
		t.Fatalf("client subject %s SANs %v %v", c.Subject, c.DNSNames, c.IPAddresses)
	}
	if _, err := keyfile.LoadKeyPair(cli.CertPath, cli.KeyPath, ""); failure.ClassOf(err) == failure.OK {
		t.Fatal("encrypted key loaded without its passphrase")
	}
	if _, err := keyfile.LoadKeyPair(cli.CertPath, cli.KeyPath, "passphrase"); err != nil {
		t.Fatalf("encrypted key: %v", err)
	}

	// Existing files are kept unless Force, before anything is generated.
	before, _ := os.ReadFile(srv.KeyPath)
	if _, err := IssueFiles(ca, IssueFilesOptions{Role: "server", Dir: dir, Options: opts}); failure.ClassOf(err) != failure.ConfigInvalid {
		t.Fatalf("overwrite without Force: %v", err)
	}
	if after, _ := os.ReadFile(srv.KeyPath); string(after) != string(before) {
		t.Fatal("key replaced without Force")
	}
	if _, err := IssueFiles(ca, IssueFilesOptions{Role: "server", Dir: dir, Force: true, Options: opts}); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(srv.KeyPath); string(after) == string(before) {
		t.Fatal("key not replaced with Force")
	}
	if _, err := IssueFiles(ca, IssueFilesOptions{Role: "intermediate", Dir: dir}); failure.ClassOf(err) != failure.ConfigInvalid {
		t.Fatalf("unknown role: %v", err)
	}
}
