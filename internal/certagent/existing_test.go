package certagent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/keyfile"
	"github.com/pgtrust/pgtrust/internal/steptest"
)

// TestMarkerSymlinkNotFollowed: a symbolic link planted at the
// reload-pending marker's name (by whoever may write the certificate
// directory) is replaced by the marker; its target keeps its content.
func TestMarkerSymlinkNotFollowed(t *testing.T) {
	e := newVault(t)
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := e.config(t, func(d string) string {
		return strings.Replace(d, `reload_command = ["true"]`, `reload_command = ["false"]`, 1)
	})
	a, err := New(context.Background(), cfg, e.options())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, cfg.reloadMarker()); err != nil {
		t.Fatal(err)
	}
	wantClass(t, a.Sync(context.Background()), ReloadFailed)
	if b, _ := os.ReadFile(victim); string(b) != "precious" {
		t.Fatalf("the marker's symlink target was changed: %q", b)
	}
	fi, err := os.Lstat(cfg.reloadMarker())
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Fatalf("marker is not a fresh 0600 regular file: %v %v", err, fi.Mode())
	}
	// A restart sees the pending reload through the marker.
	b, err := New(context.Background(), cfg, e.options())
	if err != nil || !b.ReloadPending() {
		t.Fatalf("restart: %v, pending %v", err, b != nil && b.ReloadPending())
	}
	// A directory (non-empty) at the marker's name: the marker is not
	// written, the error says why, the victim is untouched, files are in place.
	if err := os.Remove(cfg.reloadMarker()); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(cfg.reloadMarker(), 0o700)
	os.WriteFile(filepath.Join(cfg.reloadMarker(), "x"), nil, 0o600)
	if err := writeMarker(cfg.reloadMarker()); err == nil {
		t.Fatal("marker written over a non-empty directory")
	}
}

// TestRenameReplacesSymlink: a symbolic link planted at cert_file after
// the start is replaced by the rename (the link itself, not its target).
func TestRenameReplacesSymlink(t *testing.T) {
	e := newVault(t)
	cfg := e.config(t, nil)
	a, err := New(context.Background(), cfg, e.options())
	if err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(victim, []byte("precious"), 0o640)
	for _, p := range []string{cfg.Agent.CertFile, cfg.Agent.KeyFile} {
		if err := os.Symlink(victim, p); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "precious" || mode(t, victim) != 0o640 {
		t.Fatalf("victim changed through a link: %q %o", b, mode(t, victim))
	}
	for _, p := range []string{cfg.Agent.CertFile, cfg.Agent.KeyFile} {
		if fi, err := os.Lstat(p); err != nil || !fi.Mode().IsRegular() {
			t.Fatalf("%s is not a regular file after the write: %v", p, err)
		}
	}
	if _, err := keyfile.LoadKeyPair(cfg.Agent.CertFile, cfg.Agent.KeyFile, ""); err != nil {
		t.Fatal(err)
	}
}

// foreignPair writes a self-signed certificate for cn and its key to dir.
func foreignPair(t *testing.T, dir, cn string) (certPath, keyPath string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: cn}, DNSNames: []string{cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), BasicConstraintsValid: true, IsCA: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	certPath, keyPath = filepath.Join(dir, "svc.crt"), filepath.Join(dir, "svc.key")
	os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
	return certPath, keyPath
}

// TestLinkedFilesRefused: a symbolic link, a hard link or a FIFO at a
// configured path is refused at start with config_invalid naming the path
// and the fix; the link's target keeps its mode, owner and content.
func TestLinkedFilesRefused(t *testing.T) {
	other := t.TempDir()
	foreignCert, foreignKey := foreignPair(t, other, "unrelated.example")
	before, _ := os.ReadFile(foreignCert)
	cases := map[string]func(cfg *Config) (path string){
		"cert symlink": func(cfg *Config) string { os.Symlink(foreignCert, cfg.Agent.CertFile); return cfg.Agent.CertFile },
		"key symlink":  func(cfg *Config) string { os.Symlink(foreignKey, cfg.Agent.KeyFile); return cfg.Agent.KeyFile },
		"ca symlink":   func(cfg *Config) string { os.Symlink(foreignCert, cfg.Agent.CAFile); return cfg.Agent.CAFile },
		"key hardlink": func(cfg *Config) string { os.Link(foreignKey, cfg.Agent.KeyFile); return cfg.Agent.KeyFile },
		"ca fifo": func(cfg *Config) string {
			if err := syscall.Mkfifo(cfg.Agent.CAFile, 0o600); err != nil {
				t.Fatal(err)
			}
			return cfg.Agent.CAFile
		},
		"cert directory": func(cfg *Config) string { os.Mkdir(cfg.Agent.CertFile, 0o700); return cfg.Agent.CertFile },
	}
	for name, plant := range cases {
		t.Run(name, func(t *testing.T) {
			e := newVault(t)
			cfg := e.config(t, func(d string) string { return strings.Replace(d, "[agent]", "[agent]\nowner = \"nobody\"", 1) })
			path := plant(cfg)
			_, err := New(context.Background(), cfg, e.options())
			fe := wantClass(t, err, failure.ConfigInvalid)
			text := failure.Text(err)
			if !strings.Contains(fe.Message, path) || !strings.Contains(fe.Fix, "rm") || !strings.Contains(fe.Fix, "regular files") {
				t.Fatalf("refusal does not name %s or the fix:\n%s", path, text)
			}
			noSecret(t, "refusal", text)
			for _, p := range []string{foreignCert, foreignKey} {
				if u, _ := owner(t, p); mode(t, p) != 0o600 || u != os.Geteuid() {
					t.Fatalf("%s changed through a link: mode %o owner %d", p, mode(t, p), u)
				}
			}
			if b, _ := os.ReadFile(foreignCert); !bytes.Equal(b, before) {
				t.Fatal("foreign certificate changed")
			}
			if n := e.srv.CountPath("pki/issue/server"); n != 0 {
				t.Fatalf("the CA was asked %d times before the refusal", n)
			}
			t.Logf("%s: %s", name, strings.ReplaceAll(text, "\n", " | "))
		})
	}
}

// TestFixMetadataNoFollow: a link swapped in after the start (between
// reading the files and fixing their owner and mode) is refused, not
// followed.
func TestFixMetadataNoFollow(t *testing.T) {
	e := newVault(t)
	cfg := e.config(t, nil)
	a, _ := New(context.Background(), cfg, e.options())
	if err := a.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(victim, []byte("precious"), 0o604)
	os.Remove(cfg.Agent.CAFile)
	os.Symlink(victim, cfg.Agent.CAFile)
	wantClass(t, cfg.fixMetadata(), failure.ConfigInvalid)
	if mode(t, victim) != 0o604 {
		t.Fatalf("chmod went through the link: %o", mode(t, victim))
	}
}

// TestReuseOnlyMatching: files that load, are valid and chain to the CA
// file are still replaced when they are not what the configuration asks
// for: another common name, other DNS names or IP addresses, or someone
// else's pair copied in. Unchanged configuration: reused, no issue.
func TestReuseOnlyMatching(t *testing.T) {
	e := newVault(t)
	base := e.config(t, nil)
	a, err := New(context.Background(), base, e.options())
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, why string
		edit      func(string) string
	}{
		{"same", "", nil},
		{"common name", `its common name is "localhost", the configuration asks for "db.localhost"`,
			func(d string) string {
				return strings.Replace(d, `common_name = "localhost"`, `common_name = "db.localhost"`, 1)
			}},
		{"alt names", "its DNS names are [], the configuration asks for [db.example]",
			func(d string) string {
				return strings.Replace(d, `ip_sans`, "alt_names = [\"db.example\"]\nip_sans", 1)
			}},
		{"ip sans", "its IP addresses are [127.0.0.1], the configuration asks for [127.0.0.1 127.0.0.2]",
			func(d string) string { return strings.Replace(d, `["127.0.0.1"]`, `["127.0.0.1", "127.0.0.2"]`, 1) }},
	}
	for _, tc := range cases {
		cfg := e.config(t, tc.edit)
		e.log.Reset()
		before := e.srv.CountPath("pki/issue/server")
		b, err := New(context.Background(), cfg, e.options())
		if err != nil {
			t.Fatal(err)
		}
		issued := e.srv.CountPath("pki/issue/server") - before
		if tc.why == "" {
			if !b.Reused() || issued != 0 {
				t.Fatalf("%s: unchanged configuration not reused (%d issues)\n%s", tc.name, issued, e.log.String())
			}
			continue
		}
		if b.Reused() || issued != 1 || !strings.Contains(b.NotReusedReason(), tc.why) {
			t.Fatalf("%s: reused %v, %d issues, reason %q (want %q)", tc.name, b.Reused(), issued, b.NotReusedReason(), tc.why)
		}
		if !strings.Contains(e.log.String(), "level=INFO msg=\"no reusable certificate on disk; asking the CA\"") ||
			!strings.Contains(e.log.String(), "does not match the configuration") {
			t.Fatalf("%s: not logged at INFO:\n%s", tc.name, e.log.String())
		}
		if st := b.Source().Status(); !strings.Contains(st.Subject, cfg.Vault.CommonName) {
			t.Fatalf("%s: new certificate %s", tc.name, st.Subject)
		}
		t.Logf("%s: %s", tc.name, b.NotReusedReason())
	}

	// Someone else's valid pair, copied in as regular files, without a CA file.
	e2 := newVault(t)
	cfg := e2.config(t, func(d string) string { return strings.Replace(d, "ca_file", "#ca_file", 1) })
	c, k := foreignPair(t, t.TempDir(), "unrelated.example")
	for src, dst := range map[string]string{c: cfg.Agent.CertFile, k: cfg.Agent.KeyFile} {
		data, _ := os.ReadFile(src)
		os.WriteFile(dst, data, 0o600)
	}
	b, err := New(context.Background(), cfg, e2.options())
	if err != nil {
		t.Fatal(err)
	}
	if b.Reused() || e2.srv.CountPath("pki/issue/server") != 1 || !strings.Contains(b.NotReusedReason(), `"unrelated.example"`) {
		t.Fatalf("foreign pair: reused %v, reason %q", b.Reused(), b.NotReusedReason())
	}
	if err := b.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	pair, err := keyfile.LoadKeyPair(cfg.Agent.CertFile, cfg.Agent.KeyFile, "")
	if err != nil || pair.Leaf.Subject.CommonName != "localhost" {
		t.Fatalf("foreign pair not replaced: %v", err)
	}
}

// TestDirectoryWarning: a directory another user may write (group write
// bit, or owned by another uid) is warned about once at start, saying why;
// the agent's own 0700 directory is not.
func TestDirectoryWarning(t *testing.T) {
	_, pgUID := postgresOwner(t)
	for _, tc := range []struct {
		name  string
		setup func(dir string)
		want  string
	}{
		{"private", func(string) {}, ""},
		{"group-writable", func(d string) { os.Chmod(d, 0o770) }, "may write it (mode 0770)"},
		{"world-writable", func(d string) { os.Chmod(d, 0o777) }, "every user may write it"},
		{"other owner", func(d string) { os.Chown(d, pgUID, -1) }, fmt.Sprintf("owned by uid %d", pgUID)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "other owner" && pgUID == os.Geteuid() {
				t.Fatal("this case gives the directory to postgres and runs as root (as CI does)")
			}
			e := newVault(t)
			tc.setup(e.dir)
			cfg := e.config(t, nil)
			a, err := New(context.Background(), cfg, e.options())
			if err != nil {
				t.Fatal(err)
			}
			if err := a.Sync(context.Background()); err != nil {
				t.Fatal(err)
			}
			a.Source().Reload()
			a.Sync(context.Background())
			n := strings.Count(e.log.String(), "level=WARN msg=\"another user may write the directory")
			if tc.want == "" {
				if n != 0 {
					t.Fatalf("warned about a private directory:\n%s", e.log.String())
				}
				return
			}
			if n != 1 || !strings.Contains(e.log.String(), tc.want) || !strings.Contains(e.log.String(), "could swap the files") {
				t.Fatalf("want one warning with %q, got %d:\n%s", tc.want, n, e.log.String())
			}
		})
	}
}

// TestStepReuseNeedsConfiguredRoot: with a real step-ca, files issued by
// one CA are reused against that CA's root, and replaced (a new
// certificate from the configured CA) when the configuration names
// another step-ca's root or other SANs; the default SANs are [common_name].
func TestStepReuseNeedsConfiguredRoot(t *testing.T) {
	caA := steptest.Start(t, steptest.Options{MaxDuration: time.Hour, DefaultDuration: time.Hour})
	caB := steptest.Start(t, steptest.Options{MaxDuration: time.Hour, DefaultDuration: time.Hour})
	dir := t.TempDir()
	conf := func(ca *steptest.CA, sans string) *Config {
		doc := fmt.Sprintf(`
[agent]
cert_file = "%[1]s/s.crt"
key_file = "%[1]s/s.key"
ca_file = "%[1]s/ca.crt"

[step]
ca_url = %[2]q
root = %[3]q
provisioner = %[4]q
provisioner_key_file = %[5]q
provisioner_password_file = %[6]q
common_name = "localhost"
%[7]s
`, dir, ca.URL, ca.RootFile, ca.Provisioner, ca.ProvisionerKeyFile, ca.PasswordFile, sans)
		c, err := Parse([]byte(doc), "agent.toml", nil)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	var log bytes.Buffer
	o := Options{Logger: slog.New(slog.NewTextHandler(&log, nil))}
	ctx := context.Background()
	a, err := New(ctx, conf(caA, ""), o)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	first := a.Source().Status().Serial
	// Same CA, default SANs: reused.
	b, err := New(ctx, conf(caA, `sans = ["localhost"]`), o)
	if err != nil || !b.Reused() {
		t.Fatalf("same CA not reused: %v %q\n%s", err, b.NotReusedReason(), log.String())
	}
	// Other SANs: replaced.
	b, err = New(ctx, conf(caA, `sans = ["localhost", "127.0.0.1"]`), o)
	if err != nil || b.Reused() || !strings.Contains(b.NotReusedReason(), "IP addresses") {
		t.Fatalf("other SANs: %v reused %v %q", err, b != nil && b.Reused(), b.NotReusedReason())
	}
	// Another CA's root: the files on disk (from A, with A's CA file) are not reused.
	c, err := New(ctx, conf(caB, ""), o)
	if err != nil {
		t.Fatal(err)
	}
	if c.Reused() || !strings.Contains(c.NotReusedReason(), "does not chain to the configured step-ca root "+caB.RootFile) {
		t.Fatalf("another CA's root: reused %v, reason %q", c.Reused(), c.NotReusedReason())
	}
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	pair, err := keyfile.LoadKeyPair(dir+"/s.crt", dir+"/s.key", "")
	if err != nil || certs.SerialHex(pair.Leaf) == first {
		t.Fatalf("not replaced: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caB.Root)
	inter := x509.NewCertPool()
	inter.AddCert(caB.Intermediate)
	if _, err := pair.Leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("new certificate not from the configured CA: %v", err)
	}
	t.Logf("step-ca A serial %s → B serial %s; reason: %s", first, certs.SerialHex(pair.Leaf), c.NotReusedReason())
}
