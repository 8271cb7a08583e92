package proxy

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

	"github.com/pgtrust/pgtrust/internal/testpki"
)

// loadClients runs n clients that each open a new session, query and close,
// until stop; failures are collected.
func loadClients(t *testing.T, port, n int, stop <-chan struct{}) (wait func() (ok int64, failures []error)) {
	var wg sync.WaitGroup
	var okCount atomic.Int64
	var mu sync.Mutex
	var failures []error
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				err := func() error {
					c, err := pgxConnect(t, port, "sslmode=disable")
					if err != nil {
						return fmt.Errorf("client %d connect: %w", i, err)
					}
					defer c.Close(context.Background())
					for q := range 3 {
						var v int
						if err := c.QueryRow(context.Background(), "SELECT $1::int", q).Scan(&v); err != nil || v != q {
							return fmt.Errorf("client %d query: %v", i, err)
						}
					}
					return nil
				}()
				if err != nil {
					mu.Lock()
					failures = append(failures, err)
					mu.Unlock()
					time.Sleep(50 * time.Millisecond)
				} else {
					okCount.Add(1)
				}
			}
		}()
	}
	return func() (int64, []error) {
		wg.Wait()
		return okCount.Load(), failures
	}
}

// TestRotationUnderLoad rotates the upstream client certificate 20 times
// (one invalid pair, one Kubernetes ..data symlink swap) under 8 clients:
// no query fails, new sessions present the new certificate, and the
// invalid pair is counted as a failed reload.
func TestRotationUnderLoad(t *testing.T) {
	e := newEnv(t)
	// Kubernetes Secret layout: files are symlinks through ..data.
	dir := t.TempDir()
	version := 0
	writeVersion := func(leaf *testpki.Leaf) {
		version++
		vdir := filepath.Join(dir, fmt.Sprintf("..v%d", version))
		if err := os.Mkdir(vdir, 0o700); err != nil {
			t.Fatal(err)
		}
		testpki.WriteFile(t, vdir, "client.crt", leaf.ChainPEM, 0o644)
		testpki.WriteFile(t, vdir, "client.key", leaf.KeyPEM, 0o600)
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(filepath.Base(vdir), tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	writeVersion(e.client)
	for _, n := range []string{"client.crt", "client.key"} {
		if err := os.Symlink(filepath.Join("..data", n), filepath.Join(dir, n)); err != nil {
			t.Fatal(err)
		}
	}
	conn := e.upstream(t)
	conn.SSLCert, conn.SSLKey = filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
	p := startProxy(t, Config{Upstreams: []UpstreamConfig{{Name: "main", Listen: "127.0.0.1:0", Conn: conn}}})
	port := p.port(t, "main")

	serialSeen := func() string {
		c, err := pgxConnect(t, port, "sslmode=disable")
		if err != nil {
			return "connect: " + err.Error()
		}
		defer c.Close(context.Background())
		var s string
		if err := c.QueryRow(context.Background(), "SELECT client_serial::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&s); err != nil {
			return "query: " + err.Error()
		}
		return s
	}
	if got := serialSeen(); got != e.client.Cert.SerialNumber.String() {
		t.Fatalf("initial serial %s", got)
	}

	stop := make(chan struct{})
	wait := loadClients(t, port, 8, stop)
	// A long-lived session established before the rotations must survive them.
	long, err := pgxConnect(t, port, "sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close(context.Background())

	failed := func() float64 {
		return p.metric(t, "pgtrust_reloads_total", map[string]string{"kind": "certificate", "result": "failure"})
	}
	for i := 1; i <= 20; i++ {
		leaf := e.ca.Client(t, "app")
		switch i {
		case 7: // an invalid pair: a certificate with another certificate's key
			other := e.ca.Client(t, "app")
			cur := filepath.Join(dir, "..data")
			writeAtomic(t, filepath.Join(cur, "client.key"), other.KeyPEM, 0o600)
			waitFor(t, "the invalid pair to be counted", 15*time.Second, func() bool { return failed() >= 1 })
			if got := serialSeen(); strings.Contains(got, ":") {
				t.Fatalf("after the invalid pair, new sessions fail: %s", got)
			}
			continue
		case 13: // Kubernetes-style swap of the ..data symlink
			writeVersion(leaf)
		default: // in-place atomic replacement of both files
			cur := filepath.Join(dir, "..data")
			writeAtomic(t, filepath.Join(cur, "client.key"), leaf.KeyPEM, 0o600)
			writeAtomic(t, filepath.Join(cur, "client.crt"), leaf.ChainPEM, 0o644)
		}
		want := leaf.Cert.SerialNumber.String()
		waitFor(t, fmt.Sprintf("rotation %d to reach new sessions", i), 15*time.Second, func() bool { return serialSeen() == want })
	}
	close(stop)
	okCount, failures := wait()
	if len(failures) > 0 {
		t.Fatalf("%d failed client sessions during rotation, first: %v", len(failures), failures[0])
	}
	if okCount < 20 {
		t.Fatalf("only %d sessions ran under load", okCount)
	}
	var one int
	if err := long.QueryRow(context.Background(), "SELECT 1").Scan(&one); err != nil {
		t.Fatalf("the established session broke: %v", err)
	}
	if f := failed(); f < 1 {
		t.Fatalf("invalid pair not counted: %v", f)
	}
	if s := p.metric(t, "pgtrust_reloads_total", map[string]string{"kind": "certificate", "result": "success"}); s < 19 {
		t.Fatalf("successful reloads = %v", s)
	}
	if ok, why := p.Ready(); !ok {
		t.Fatalf("not ready: %s", why)
	}
}

// TestUpstreamRestart: the server restarts mid-load; the proxy stays up,
// affected clients get a clear error, new sessions succeed afterwards.
func TestUpstreamRestart(t *testing.T) {
	e := newEnv(t)
	p := startProxy(t, Config{Upstreams: []UpstreamConfig{{Name: "main", Listen: "127.0.0.1:0", Conn: e.upstream(t)}}})
	port := p.port(t, "main")
	held, err := pgxConnect(t, port, "sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close(context.Background())
	stop := make(chan struct{})
	wait := loadClients(t, port, 4, stop)
	time.Sleep(300 * time.Millisecond)
	e.srv.Restart(t)
	// The session that was open when the server went away gets an error.
	var one int
	err = held.QueryRow(context.Background(), "SELECT 1").Scan(&one)
	if err == nil {
		t.Fatal("a session across the restart kept working")
	}
	waitFor(t, "new sessions after the restart", 20*time.Second, func() bool {
		c, err := pgxConnect(t, port, "sslmode=disable")
		if err != nil {
			return false
		}
		defer c.Close(context.Background())
		return c.QueryRow(context.Background(), "SELECT 1").Scan(&one) == nil
	})
	close(stop)
	okCount, failures := wait()
	if okCount == 0 {
		t.Fatal("no session under load succeeded")
	}
	for _, f := range failures {
		msg := f.Error()
		// Clear: the server's own shutdown message, or the proxy's classified
		// upstream error; or the end of the connection as a direct client
		// sees it: a backend that exits closes its socket with the client's
		// unread query in it, so the client's kernel reports a reset, and the
		// proxy passes that close on the same way.
		if !strings.Contains(msg, "pgtrust: upstream main: ") &&
			!strings.Contains(msg, "terminating connection") &&
			!strings.Contains(msg, "the database system is") &&
			!strings.Contains(msg, "unexpected EOF") && !strings.Contains(msg, "conn closed") &&
			!strings.Contains(msg, "connection reset by peer") {
			t.Errorf("unclear error during the restart: %v", f)
		}
	}
	if ok, why := p.Ready(); !ok {
		t.Fatalf("proxy not ready after the restart: %s", why)
	}
	t.Logf("%d sessions ok, %d failed during the restart", okCount, len(failures))
}
