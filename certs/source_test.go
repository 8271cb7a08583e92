package certs

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/keyfile"
)

// waitFor polls cond until it holds; the deadline only bounds a broken
// test, it asserts nothing about speed.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func currentSerial(t *testing.T, s Source) string {
	t.Helper()
	c, err := s.GetClientCertificate(&tls.CertificateRequestInfo{})
	if err != nil || c.Leaf == nil {
		t.Fatalf("GetClientCertificate: %v", err)
	}
	return SerialHex(c.Leaf)
}

// replace writes cert and key by rename, as editors and cert-manager do.
func replace(t *testing.T, dir string, p *KeyPair) {
	t.Helper()
	writePair(t, dir, "client", p)
}

func TestFileSourceRotation(t *testing.T) {
	dir := t.TempDir()
	ca := mustCA(t)
	caFile := write(t, filepath.Join(dir, "ca.crt"), ca.CertPEM(), 0o644)
	first, _ := IssueClient(ca, Options{CommonName: "app"})
	crt, key := writePair(t, dir, "client", first)

	var mu sync.Mutex
	var events []error
	s, err := NewFileSource(context.Background(), FileSourceOptions{CertFile: crt, KeyFile: key, CAFile: caFile,
		Debounce: 20 * time.Millisecond, Settle: 200 * time.Millisecond,
		OnReload: func(_ Status, err error) { mu.Lock(); events = append(events, err); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Roots() == nil || currentSerial(t, s) != SerialHex(first.Cert) {
		t.Fatal("initial material not served")
	}
	if c, err := s.GetCertificate(&tls.ClientHelloInfo{}); err != nil || c.Leaf.Subject.CommonName != "app" {
		t.Fatalf("GetCertificate: %v", err)
	}

	// A valid replacement is picked up by the watcher.
	second, _ := IssueClient(ca, Options{CommonName: "app"})
	replace(t, dir, second)
	waitFor(t, "second certificate", func() bool { return currentSerial(t, s) == SerialHex(second.Cert) })
	if st := s.Status(); st.Reloads < 1 || st.Failures != 0 || st.LastReloadClass != failure.OK || !st.NotAfter.Equal(second.Cert.NotAfter) {
		t.Errorf("status after good reload: %+v", st)
	}

	// An invalid pair (a key that does not match) is rejected and counted;
	// the old certificate keeps being served.
	other, _ := GenerateKey(ECDSAP256)
	otherPEM, _ := keyfile.EncodePrivateKeyPEM(other)
	write(t, key, otherPEM, 0o600)
	waitFor(t, "rejected reload", func() bool { return s.Status().Failures == 1 })
	st := s.Status()
	if st.LastReloadClass != failure.KeyMismatch || st.LastReloadErr == nil || currentSerial(t, s) != SerialHex(second.Cert) {
		t.Errorf("status after bad reload: %+v", st)
	}

	// Explicit reload of a certificate from another CA: rejected.
	foreign, _ := IssueClient(mustCA(t), Options{CommonName: "app"})
	s.Close() // stop the watcher so that only Reload acts
	replace(t, dir, foreign)
	if err := s.Reload(); failure.ClassOf(err) != failure.UnknownCA {
		t.Errorf("foreign CA reload: %v", err)
	}
	expired, _ := IssueClient(ca, Options{CommonName: "app", NotBefore: time.Now().Add(-3 * day), Validity: day})
	replace(t, dir, expired)
	if err := s.Reload(); failure.ClassOf(err) != failure.CertExpired {
		t.Errorf("expired reload: %v", err)
	}
	if currentSerial(t, s) != SerialHex(second.Cert) || s.Status().Failures != 3 {
		t.Errorf("after rejected reloads: serial %s status %+v", currentSerial(t, s), s.Status())
	}
	third, _ := IssueClient(ca, Options{CommonName: "app"})
	replace(t, dir, third)
	if err := s.Reload(); err != nil || currentSerial(t, s) != SerialHex(third.Cert) {
		t.Errorf("explicit reload: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(events) < 5 {
		t.Errorf("OnReload called %d times", len(events))
	}
}

// TestFileSourceKubernetesSwap mimics how the kubelet updates a Secret
// volume: files are symlinks through ..data, which is swapped atomically to
// a new timestamped directory.
func TestFileSourceKubernetesSwap(t *testing.T) {
	dir := t.TempDir()
	ca := mustCA(t)
	publish := func(version string, p *KeyPair) {
		t.Helper()
		vdir := filepath.Join(dir, "..2024_"+version)
		if err := os.Mkdir(vdir, 0o755); err != nil {
			t.Fatal(err)
		}
		writePair(t, vdir, "tls", p)
		write(t, filepath.Join(vdir, "ca.crt"), ca.CertPEM(), 0o644)
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(filepath.Base(vdir), tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	first, _ := IssueClient(ca, Options{CommonName: "app"})
	publish("01", first)
	for _, n := range []string{"tls.crt", "tls.key", "ca.crt"} {
		if err := os.Symlink(filepath.Join("..data", n), filepath.Join(dir, n)); err != nil {
			t.Fatal(err)
		}
	}
	s, err := NewFileSource(context.Background(), FileSourceOptions{
		CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key"), CAFile: filepath.Join(dir, "ca.crt"),
		Debounce: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	second, _ := IssueClient(ca, Options{CommonName: "app"})
	publish("02", second)
	waitFor(t, "swapped certificate", func() bool { return currentSerial(t, s) == SerialHex(second.Cert) })
	if st := s.Status(); st.Failures != 0 {
		t.Errorf("status %+v", st)
	}
}

func TestNewFileSourceErrors(t *testing.T) {
	if _, err := NewFileSource(context.Background(), FileSourceOptions{CertFile: "x"}); failure.ClassOf(err) != failure.ConfigInvalid {
		t.Errorf("cert without key: %v", err)
	}
	dir := t.TempDir()
	_, err := NewFileSource(context.Background(), FileSourceOptions{CertFile: filepath.Join(dir, "a"), KeyFile: filepath.Join(dir, "b")})
	if err == nil {
		t.Error("missing files accepted")
	}
	// CA only: no client certificate is sent.
	ca := mustCA(t)
	s, err := NewFileSource(context.Background(), FileSourceOptions{CAFile: write(t, filepath.Join(dir, "ca.crt"), ca.CertPEM(), 0o644)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if c, err := s.GetClientCertificate(nil); err != nil || len(c.Certificate) != 0 {
		t.Errorf("CA-only source sent a certificate: %v", err)
	}
	if _, err := s.GetCertificate(nil); err == nil {
		t.Error("CA-only source served a server certificate")
	}
}

// fakePostgres answers one SSLRequest (or direct TLS) with TLS, requesting
// a client certificate when ask is set.
func fakePostgres(t *testing.T, reply byte, cert tls.Certificate, ask bool, direct bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if !direct {
			var req [8]byte
			if _, err := io.ReadFull(c, req[:]); err != nil || binary.BigEndian.Uint32(req[4:]) != 80877103 /* SSLRequest */ {
				return
			}
			c.Write([]byte{reply})
			if reply != 'S' {
				return
			}
		}
		cfg := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"postgresql"}}
		if ask {
			cfg.ClientAuth = tls.RequestClientCert
		}
		tc := tls.Server(c, cfg)
		if tc.Handshake() == nil {
			io.Copy(io.Discard, tc)
		}
	}()
	return ln.Addr().String()
}

func TestProbeServer(t *testing.T) {
	dir := t.TempDir()
	ca := mustCA(t)
	srv, _ := IssueServer(ca, Options{Hosts: []string{"localhost"}})
	crt, key := writePair(t, dir, "server", srv)
	pair, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	p, err := ProbeServer(ctx, ProbeOptions{Addr: fakePostgres(t, 'S', pair, true, false)})
	if err != nil {
		t.Fatal(err)
	}
	if !p.ClientCertRequested || p.Negotiation != "postgres" || p.Version == "" || len(p.Chain) != 1 || p.Chain[0].Subject != "CN=localhost" || !p.VerificationNotPerformed {
		t.Errorf("probe: %+v", p)
	}
	p, err = ProbeServer(ctx, ProbeOptions{Addr: fakePostgres(t, 'S', pair, false, true), Direct: true})
	if err != nil || p.ClientCertRequested || p.ALPN != "postgresql" {
		t.Errorf("direct probe: %+v %v", p, err)
	}
	_, err = ProbeServer(ctx, ProbeOptions{Addr: fakePostgres(t, 'N', pair, false, false)})
	if failure.ClassOf(err) != failure.NoSSLServer {
		t.Errorf("'N': %v", err)
	}
	_, err = ProbeServer(ctx, ProbeOptions{Addr: fakePostgres(t, 'E', pair, false, false)})
	if failure.ClassOf(err) != failure.ProtocolError {
		t.Errorf("'E': %v", err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	if _, err := ProbeServer(ctx, ProbeOptions{Addr: addr}); failure.ClassOf(err) != failure.ConnectionRefused {
		t.Errorf("refused: %v", err)
	}
}
