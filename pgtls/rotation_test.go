package pgtls_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/testpki"
	"github.com/pgtrust/pgtrust/pgtls"
)

// TestClientCertificateRotation opens connections in a loop through pgtls
// with a certs.FileSource while the client certificate files are replaced
// 20 times (by rename, once with an invalid pair, once by a Kubernetes-style
// ..data symlink swap). No connection may fail, the invalid pair must be
// rejected and counted, and the server must see each new certificate.
func TestClientCertificateRotation(t *testing.T) {
	ca := testpki.NewRootCA(t, "rotation root")
	srv := ca.Server(t)
	s := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: srv.ChainPEM, ServerKey: srv.KeyPEM, CA: ca.CertPEM,
		HBA:   []string{"local all all trust", "hostssl all all 127.0.0.1/32 cert"},
		Setup: []string{"CREATE ROLE app LOGIN;"}})

	// Kubernetes Secret layout: tls.crt -> ..data/tls.crt, ..data -> ..v0.
	dir := t.TempDir()
	version := 0
	writeVersion := func(leaf *testpki.Leaf, key []byte) string {
		version++
		v := filepath.Join(dir, fmt.Sprintf("..v%d", version))
		if err := os.Mkdir(v, 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(v, "tls.crt"), leaf.ChainPEM, 0o644)
		os.WriteFile(filepath.Join(v, "tls.key"), key, 0o600)
		return v
	}
	swapData := func(target string) {
		tmp := filepath.Join(dir, "..data_tmp")
		os.Remove(tmp)
		if err := os.Symlink(filepath.Base(target), tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	first := ca.Client(t, "app")
	swapData(writeVersion(first, first.KeyPEM))
	for _, name := range []string{"tls.crt", "tls.key"} {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	rootFile := filepath.Join(t.TempDir(), "root.crt")
	os.WriteFile(rootFile, ca.CertPEM, 0o644)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src, err := certs.NewFileSource(ctx, certs.FileSourceOptions{CertFile: certFile, KeyFile: keyFile, CAFile: rootFile,
		Debounce: 50 * time.Millisecond, Settle: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()

	home := pgtest.EmptyHome(t)
	cfg, err := connstring.ParseWithEnv(fmt.Sprintf("host=localhost hostaddr=127.0.0.1 port=%d user=app dbname=postgres sslmode=verify-full sslrootcert=%s connect_timeout=5", s.Port, rootFile), nil, home)
	if err != nil {
		t.Fatal(err)
	}
	opts := &pgtls.Options{GetClientCertificate: src.GetClientCertificate}
	serialSeen := func() (string, error) {
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		defer ccancel()
		pg, _, err := pgtls.Connect(cctx, cfg, opts)
		if err != nil {
			return "", err
		}
		defer pg.Close(context.Background())
		res, err := pg.Exec(cctx, "SELECT client_serial FROM pg_stat_ssl WHERE pid = pg_backend_pid()").ReadAll()
		if err != nil {
			return "", err
		}
		return string(res[0].Rows[0][0]), nil
	}

	// Background load: connections opened back to back during every swap.
	var opened, failed atomic.Int64
	var failMu sync.Mutex
	var failures []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := serialSeen(); err != nil {
					failed.Add(1)
					failMu.Lock()
					failures = append(failures, err.Error())
					failMu.Unlock()
				}
				opened.Add(1)
			}
		}()
	}

	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s (status %+v)", what, src.Status())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	current := first
	for i := 1; i <= 20; i++ {
		next := ca.Client(t, "app")
		before := src.Status()
		switch i {
		case 7: // an invalid pair: the new certificate with another key
			wrong := ca.Client(t, "app")
			swapData(writeVersion(next, wrong.KeyPEM))
			waitFor("the invalid pair to be rejected", func() bool { return src.Status().Failures > before.Failures })
			if got := src.Status().Serial; got != certs.SerialHex(current.Cert) {
				t.Fatalf("serial after invalid pair = %s, want the old %s", got, certs.SerialHex(current.Cert))
			}
			continue
		case 13: // Kubernetes-style: a new ..vN directory and an atomic ..data swap
			swapData(writeVersion(next, next.KeyPEM))
		default: // editors and tools: write next to the file, rename over it
			v := filepath.Join(dir, "..data")
			for name, data := range map[string][]byte{"tls.key": next.KeyPEM, "tls.crt": next.ChainPEM} {
				tmp := filepath.Join(v, "."+name+".tmp")
				os.WriteFile(tmp, data, 0o600)
				if err := os.Rename(tmp, filepath.Join(v, name)); err != nil {
					t.Fatal(err)
				}
			}
		}
		want := certs.SerialHex(next.Cert)
		waitFor("rotation "+fmt.Sprint(i), func() bool { return src.Status().Serial == want })
		current = next
		got, err := serialSeen()
		if err != nil {
			t.Fatalf("rotation %d: %v", i, err)
		}
		if got != next.Cert.SerialNumber.String() {
			t.Fatalf("rotation %d: server saw client_serial %s, want %s", i, got, next.Cert.SerialNumber)
		}
	}
	close(stop)
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d connections failed during rotation; first: %s", n, opened.Load(), strings.Join(failures[:1], ""))
	}
	st := src.Status()
	if st.Failures < 1 || st.Reloads < 19 {
		t.Fatalf("status %+v: want >= 19 reloads and the invalid pair counted", st)
	}
	t.Logf("%d connections opened during 20 rotations, none failed; reloads %d, rejected %d", opened.Load(), st.Reloads, st.Failures)
}

// TestRootFileReplacedTakesEffect: sslrootcert is read at every connection,
// as libpq reads it, so replacing the file changes the next connection's
// verdict, although pgtls parses each distinct content only once. psql,
// with the same connection string at each step, is the oracle.
func TestRootFileReplacedTakesEffect(t *testing.T) {
	ca := testpki.NewRootCA(t, "serving root")
	other := testpki.NewRootCA(t, "unrelated root")
	srv := ca.Server(t)
	s := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: srv.ChainPEM, ServerKey: srv.KeyPEM, CA: ca.CertPEM,
		HBA: []string{"local all all trust", "hostssl all all 127.0.0.1/32 trust"}})
	rootFile := filepath.Join(t.TempDir(), "root.crt")
	home := pgtest.EmptyHome(t)
	dsn := fmt.Sprintf("host=localhost hostaddr=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=verify-full sslrootcert=%s connect_timeout=10", s.Port, rootFile)
	cfg, err := connstring.ParseWithEnv(dsn, nil, home)
	if err != nil {
		t.Fatal(err)
	}
	for i, step := range []struct {
		content []byte
		ok      bool
	}{
		{ca.CertPEM, true},
		{ca.CertPEM, true}, // the same bytes again: served from the parse above
		{other.CertPEM, false},
		{append(append([]byte{}, other.CertPEM...), ca.CertPEM...), true},
		{ca.CertPEM, true},
	} {
		// Replaced by rename, as a deployment tool does.
		tmp := rootFile + ".new"
		if err := os.WriteFile(tmp, step.content, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, rootFile); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		pg, _, err := pgtls.Connect(ctx, cfg, nil)
		if err == nil {
			pg.Close(ctx)
		}
		cancel()
		lib := pgtest.Psql(t, dsn, map[string]string{"HOME": home})
		if (err == nil) != step.ok || lib.OK != step.ok {
			t.Errorf("step %d: pgtls connected=%v (%v), libpq connected=%v (%s); want %v", i, err == nil, err, lib.OK, strings.TrimSpace(lib.Stderr), step.ok)
		}
		if !step.ok && failure.ClassOf(err) != failure.UnknownCA {
			t.Errorf("step %d: class %s, want unknown_ca: %v", i, failure.ClassOf(err), err)
		}
	}
}
