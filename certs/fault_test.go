//go:build linux

package certs

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/faultnet"
)

// Fault campaign: certificate writes into a directory that refuses them
// (read-only, full) while a FileSource serves the current files. The old
// files must stay intact and in use, and the error must name the cause.

// pkiSnapshot is the bytes of every dev PKI file.
func pkiSnapshot(t *testing.T, p *DevPKI) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, f := range p.files() {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[f] = b
	}
	return out
}

// changedFiles lists the files whose bytes differ from the snapshot.
func changedFiles(t *testing.T, snap map[string][]byte) []string {
	t.Helper()
	var out []string
	for f, want := range snap {
		got, err := os.ReadFile(f)
		if err != nil || !bytes.Equal(got, want) {
			out = append(out, filepath.Base(f))
		}
	}
	return out
}

// tempLeftovers lists the atomic-write temp files left in dir.
func tempLeftovers(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, ".*.tmp-*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// servedSerial runs a TLS handshake against a server whose certificate
// comes from src and returns the serial the client saw: the material
// really in use, not just what Status says.
func servedSerial(t *testing.T, src *FileSource) string {
	t.Helper()
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	_ = c1.SetDeadline(time.Now().Add(10 * time.Second))
	_ = c2.SetDeadline(time.Now().Add(10 * time.Second))
	srv := tls.Server(c1, &tls.Config{GetCertificate: src.GetCertificate})
	errc := make(chan error, 1)
	go func() { errc <- srv.Handshake() }()
	cl := tls.Client(c2, &tls.Config{InsecureSkipVerify: true}) // the serial is what is checked
	if err := cl.Handshake(); err != nil {
		t.Fatalf("handshake with the FileSource's certificate: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	return SerialHex(cl.ConnectionState().PeerCertificates[0])
}

// startServing makes a dev PKI in dir and a FileSource on its server pair.
func startServing(t *testing.T, dir string) (*DevPKI, *FileSource, string) {
	t.Helper()
	p, err := InitDevPKI(dir, DevPKIOptions{})
	if err != nil {
		t.Fatal(err)
	}
	src, err := NewFileSource(t.Context(), FileSourceOptions{CertFile: p.ServerCert, KeyFile: p.ServerKey, CAFile: p.CACert,
		Debounce: 20 * time.Millisecond, Settle: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	serial := servedSerial(t, src)
	if serial != SerialHex(p.Server) {
		t.Fatalf("served serial %s, want %s", serial, SerialHex(p.Server))
	}
	return p, src, serial
}

// checkWriteError asserts a write failure is classified and names its
// cause and fix.
func checkWriteError(t *testing.T, err error, errno syscall.Errno, fix string) {
	t.Helper()
	if err == nil {
		t.Fatal("the write succeeded")
	}
	fe, ok := failure.As(err)
	if !ok || fe.Class != failure.ConfigInvalid {
		t.Fatalf("error %v (%T) is not a config_invalid failure.Error", err, err)
	}
	if !errors.Is(err, errno) {
		t.Errorf("error does not wrap %v: %v", errno, err)
	}
	if !strings.Contains(fe.Message, "could not write file") || !strings.Contains(fe.Fix, fix) {
		t.Errorf("error does not name the cause and fix %q:\n%s", fix, fe.Detail())
	}
	t.Logf("error: %s", strings.ReplaceAll(fe.Detail(), "\n", " | "))
}

// TestFaultCertWriteReadOnly regenerates the dev PKI (certs init --force,
// and the auto-generation path of EnsureDevPKI) into a directory that has
// turned read-only under a running FileSource.
func TestFaultCertWriteReadOnly(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	p, src, serial := startServing(t, dir)
	snap := pkiSnapshot(t, p)
	auto := filepath.Join(dir, "auto") // an empty auto_cert_dir: EnsureDevPKI generates
	if err := os.Mkdir(auto, 0o700); err != nil {
		t.Fatal(err)
	}
	errno := faultnet.MakeReadOnly(t, dir)
	fix := "read-only file system"
	if errno == syscall.EACCES {
		fix = "writable by uid"
		faultnet.MakeReadOnly(t, auto) // chmod, unlike a mount, is not inherited
	}

	_, err := InitDevPKI(dir, DevPKIOptions{Force: true})
	checkWriteError(t, err, errno, fix)
	_, err = EnsureDevPKI(auto, DevPKIOptions{})
	checkWriteError(t, err, errno, fix)
	if fe, _ := failure.As(err); fe != nil && !strings.HasPrefix(fe.Message, "could not generate certificates: ") {
		t.Errorf("EnsureDevPKI's error does not say what it was doing: %q", fe.Message)
	}

	if ch := changedFiles(t, snap); len(ch) > 0 {
		t.Errorf("files changed although every write failed: %v", ch)
	}
	if left := tempLeftovers(t, dir); len(left) > 0 {
		t.Errorf("temp files left: %v", left)
	}
	// A SIGHUP-style reload re-reads the intact files; the same
	// certificate stays in use.
	if err := src.Reload(); err != nil {
		t.Errorf("reload of the intact files: %v", err)
	}
	if got := servedSerial(t, src); got != serial {
		t.Errorf("served serial %s after the failed writes, want the old %s", got, serial)
	}
}

// TestFaultCertWriteDiskFull regenerates the dev PKI on a tmpfs that is
// full, then on one with a single free page (each file alone fits, but a
// larger certificate does not).
func TestFaultCertWriteDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		// CI runs as root; without privileges no file system can be made full.
		t.Skip("a full file system needs a tmpfs mount, which needs root")
	}
	dir := filepath.Join(t.TempDir(), "pki")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	faultnet.MountTmpfs(t, dir, 64<<10)
	p, src, serial := startServing(t, dir)
	snap := pkiSnapshot(t, p)
	const fix = "free space on the file system"

	t.Run("no space at all", func(t *testing.T) {
		filler := faultnet.Fill(t, dir, 0)
		defer os.Remove(filler)
		_, err := InitDevPKI(dir, DevPKIOptions{Force: true})
		checkWriteError(t, err, syscall.ENOSPC, fix)
		if ch := changedFiles(t, snap); len(ch) > 0 {
			t.Errorf("files changed although the disk was full: %v", ch)
		}
		if left := tempLeftovers(t, dir); len(left) > 0 {
			t.Errorf("temp files left: %v", left)
		}
		if err := src.Reload(); err != nil {
			t.Errorf("reload of the intact files: %v", err)
		}
		if got := servedSerial(t, src); got != serial {
			t.Errorf("served serial %s, want the old %s", got, serial)
		}
	})

	t.Run("space for the key, not for the certificate", func(t *testing.T) {
		filler := faultnet.Fill(t, dir, 1)
		defer os.Remove(filler)
		// 200 SANs make a server certificate of more than one page; the
		// new server key replaces the old one page for page.
		hosts := make([]string, 200)
		for i := range hosts {
			hosts[i] = fmt.Sprintf("replica-%03d.db.example.internal", i)
		}
		_, err := InitDevPKI(dir, DevPKIOptions{Force: true, Hosts: hosts})
		checkWriteError(t, err, syscall.ENOSPC, fix)
		if left := tempLeftovers(t, dir); len(left) > 0 {
			t.Errorf("temp files left: %v", left)
		}
		// The running source refuses the mismatched pair and keeps serving
		// the old certificate.
		rerr := src.Reload()
		if got := servedSerial(t, src); got != serial {
			t.Errorf("served serial %s, want the old %s", got, serial)
		}
		// The set is written all or nothing: no file changed, the pair on
		// disk still matches, and a reload takes it.
		if ch := changedFiles(t, snap); len(ch) != 0 {
			t.Errorf("files changed by the failed regeneration: %v", ch)
		}
		if rerr != nil {
			t.Errorf("reload of the intact files: %v", rerr)
		}
		if _, err := tls.LoadX509KeyPair(p.ServerCert, p.ServerKey); err != nil {
			t.Errorf("the pair on disk no longer matches: %v", err)
		}
	})
}
