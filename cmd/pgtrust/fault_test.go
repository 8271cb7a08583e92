//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/internal/faultnet"
	"github.com/pgtrust/pgtrust/internal/pgproc"
	"github.com/pgtrust/pgtrust/internal/pgtest"
)

// faultMainEnv makes the test binary run pgtrust's main with the
// arguments after "--" (TestFaultProcessMain): the real command, signal
// handling included, in its own process, without a separate build.
const faultMainEnv = "PGTRUST_FAULT_PROCESS_MAIN"

// TestFaultProcessMain is not a test: it is the entry point of the child
// process TestFaultSIGHUPStorm starts, and returns at once otherwise.
func TestFaultProcessMain(t *testing.T) {
	if os.Getenv(faultMainEnv) != "1" {
		return
	}
	os.Args = append([]string{"pgtrust"}, flag.Args()...)
	main()
	os.Exit(0)
}

// proxyProcess is `pgtrust proxy` running as a child process.
type proxyProcess struct {
	cmd              *exec.Cmd
	exited           chan struct{}
	waitErr          error
	port, healthPort int
	logPath          string
}

func startProxyProcess(t *testing.T, upstreamDSN string) *proxyProcess {
	t.Helper()
	port, err := pgproc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	hport, err := pgproc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	pp := &proxyProcess{port: port, healthPort: hport, exited: make(chan struct{}), logPath: filepath.Join(t.TempDir(), "proxy.log")}
	logf, err := os.Create(pp.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestFaultProcessMain$", "--", "proxy",
		"--upstream", upstreamDSN,
		"--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--health-listen", fmt.Sprintf("127.0.0.1:%d", hport))
	cmd.Env = []string{faultMainEnv + "=1", "PATH=/usr/bin:/bin", "HOME=" + t.TempDir(), "LC_ALL=C"}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := pgproc.Start(cmd); err != nil { // the parent-death signal holds
		t.Fatal(err)
	}
	pp.cmd = cmd
	go func() {
		pp.waitErr = cmd.Wait()
		close(pp.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-pp.exited:
		default:
			_ = cmd.Process.Kill()
			<-pp.exited
		}
		if t.Failed() {
			t.Logf("proxy process log:\n%s", pp.log())
		}
	})
	end := time.Now().Add(30 * time.Second)
	for {
		if code, _ := pp.get("/readyz"); code == 200 {
			return pp
		}
		select {
		case <-pp.exited:
			t.Fatalf("the proxy process exited at start: %v\n%s", pp.waitErr, pp.log())
		default:
		}
		if time.Now().After(end) {
			t.Fatalf("the proxy process is not ready after 30s\n%s", pp.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (pp *proxyProcess) log() string {
	b, _ := os.ReadFile(pp.logPath)
	return string(b)
}

func (pp *proxyProcess) get(path string) (int, string) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d%s", pp.healthPort, path))
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var b strings.Builder
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		b.WriteString(sc.Text() + "\n")
	}
	return resp.StatusCode, b.String()
}

// metric returns the sum of the samples of name whose label set contains
// every label in want ("" = any), from /metrics.
func (pp *proxyProcess) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	code, body := pp.get("/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(name) + `(\{[^}]*\})? (\S+)$`)
	var sum float64
lines:
	for _, line := range strings.Split(body, "\n") {
		m := re.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(m[1], l) {
				continue lines
			}
		}
		v, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum += v
	}
	return sum
}

// resources is the child's goroutines (its Go collector) and descriptors.
func (pp *proxyProcess) resources(t *testing.T) (int, int) {
	t.Helper()
	fds, err := faultnet.FDs(pp.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	return int(pp.metric(t, "go_goroutines")), len(fds)
}

// TestFaultSIGHUPStorm sends the real `pgtrust proxy` process 200 SIGHUPs
// in quick succession while 8 clients run queries through it: it must keep
// serving without a failed query, count a plausible number of reloads, all
// successful, and leak neither goroutines nor descriptors.
func TestFaultSIGHUPStorm(t *testing.T) {
	const storm = 200
	srv, pki := startUpstream(t)
	pp := startProxyProcess(t, pki.ConnString()+fmt.Sprintf(" hostaddr=127.0.0.1 port=%d dbname=postgres", srv.Port))
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable connect_timeout=10", pp.port)
	query := func(ctx context.Context, c *pgx.Conn, i int) error {
		var v int
		if err := c.QueryRow(ctx, "SELECT $1::int", i).Scan(&v); err != nil || v != i {
			return fmt.Errorf("query: %v (got %d want %d)", err, v, i)
		}
		return nil
	}
	warm, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatalf("through the proxy process: %v\n%s", err, pp.log())
	}
	if err := query(context.Background(), warm, 1); err != nil {
		t.Fatal(err)
	}
	warm.Close(context.Background())
	before := faultnet.Count(t)
	g0, fd0 := pp.resources(t)

	// 8 clients: 4 keep a session, 4 open one per query.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ok, fail atomic.Int64
	var errMu sync.Mutex
	var errs []string
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var c *pgx.Conn
			defer func() {
				if c != nil {
					c.Close(context.Background())
				}
			}()
			for q := 0; ; q++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				err := func() error {
					if c == nil {
						var err error
						if c, err = pgx.Connect(ctx, dsn); err != nil {
							return fmt.Errorf("connect: %w", err)
						}
					}
					return query(ctx, c, q)
				}()
				cancel()
				if err != nil {
					fail.Add(1)
					errMu.Lock()
					errs = append(errs, fmt.Sprintf("client %d: %v", i, err))
					errMu.Unlock()
				} else {
					ok.Add(1)
				}
				if (err != nil || i >= 4) && c != nil {
					c.Close(context.Background())
					c = nil
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)

	pid := pp.cmd.Process.Pid
	t0 := time.Now()
	for range storm {
		if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
			t.Fatalf("SIGHUP: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
	sent := time.Since(t0)
	// Let the queued reloads run while the clients keep going.
	waitReloads := func() float64 { return pp.metric(t, "pgtrust_reloads_total", `kind="config"`) }
	var reloads float64
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); {
		r := waitReloads()
		time.Sleep(200 * time.Millisecond)
		if r == waitReloads() && r > 0 {
			reloads = r
			break
		}
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()

	select {
	case <-pp.exited:
		t.Fatalf("the proxy process died in the storm: %v", pp.waitErr)
	default:
	}
	reloads = pp.metric(t, "pgtrust_reloads_total", `kind="config"`)
	okReloads := pp.metric(t, "pgtrust_reloads_total", `kind="config"`, `result="success"`)
	logged := strings.Count(pp.log(), "SIGHUP: reloading")
	t.Logf("storm: %d SIGHUPs sent in %v; %v config reloads (%v successful), %d logged; clients: %d queries ok, %d failed",
		storm, sent.Round(time.Millisecond), reloads, okReloads, logged, ok.Load(), fail.Load())
	if fail.Load() != 0 || ok.Load() == 0 {
		t.Errorf("clients during the storm: %d ok, %d failed: %v", ok.Load(), fail.Load(), errs[:min(len(errs), 10)])
	}
	// Signals arriving while a reload runs coalesce (the channel holds
	// two), so fewer reloads than signals is right; none or more is not.
	if reloads < 1 || reloads > storm || okReloads != reloads || float64(logged) != reloads {
		t.Errorf("reloads %v (successful %v, logged %d) for %d SIGHUPs", reloads, okReloads, logged, storm)
	}
	if strings.Contains(pp.log(), "reload rejected") {
		t.Errorf("a reload was rejected:\n%s", pp.log())
	}

	// A fresh session after the storm.
	c, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatalf("fresh session after the storm: %v", err)
	}
	if err := query(context.Background(), c, 42); err != nil {
		t.Fatal(err)
	}
	c.Close(context.Background())

	// The child's goroutines and descriptors settle back (each reload
	// replaced certificate watchers: inotify descriptors and goroutines).
	var g1, fd1 int
	for end := time.Now().Add(20 * time.Second); ; {
		g1, fd1 = pp.resources(t)
		if g1 <= g0+4 && fd1 <= fd0+4 {
			break
		}
		if time.Now().After(end) {
			fds, _ := faultnet.FDs(pid)
			t.Errorf("the proxy process leaked: goroutines %d -> %d, descriptors %d -> %d\n%v", g0, g1, fd0, fd1, fds)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("proxy process: %d goroutines, %d fds before; %d goroutines, %d fds after", g0, fd0, g1, fd1)
	faultnet.Settle(t, "SIGHUP storm (test process)", before, 4, 20*time.Second)

	// A clean shutdown still works after the storm.
	if err := pp.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-pp.exited:
		if pp.waitErr != nil {
			t.Errorf("exit after SIGTERM: %v", pp.waitErr)
		}
	case <-time.After(40 * time.Second):
		t.Fatal("the proxy process did not exit after SIGTERM")
	}
}

// servedSerialTLS opens a TLS session to the proxy the way libpq does
// (SSLRequest, then the handshake) and returns the serial of the
// certificate the proxy showed.
func servedSerialTLS(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'S' {
		t.Fatalf("SSLRequest answer %q: %v", b[0], err)
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true}) // the serial is what is checked
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake with the proxy: %v", err)
	}
	return certs.SerialHex(tc.ConnectionState().PeerCertificates[0])
}

// TestFaultCertsWriteReadOnly runs `pgtrust certs issue --force` and
// `pgtrust certs init --force` into the directories of a running proxy's
// certificates after they turned read-only (a read-only bind mount as
// root, chmod 0500 otherwise). The commands must fail with exit status 2
// naming the cause; the files must stay intact; the proxy must keep
// serving with them, a SIGHUP reload included.
func TestFaultCertsWriteReadOnly(t *testing.T) {
	srv, pki := startUpstream(t)
	local := filepath.Join(t.TempDir(), "local")
	if _, errOut, code := runCerts(t, "certs", "init", "--dir", local); code != 0 {
		t.Fatalf("certs init: %d %s", code, errOut)
	}
	lp := filepath.Join(local, certs.ServerCertName)
	lk := filepath.Join(local, certs.ServerKeyName)
	rp := startProxyCmd(t, "", map[string]string{
		"upstream":        pki.ConnString() + fmt.Sprintf(" hostaddr=127.0.0.1 port=%d dbname=postgres", srv.Port),
		"listen":          "127.0.0.1:0",
		"health-listen":   "",
		"client-tls-cert": lp,
		"client-tls-key":  lk,
	})
	addr := rp.addr(t).String()
	queryTLS := func() {
		t.Helper()
		res := pgtest.PsqlQuery(t, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=verify-full sslrootcert=%s",
			rp.addr(t).Port, filepath.Join(local, certs.CACertName)), "SELECT 'alive'", nil)
		if !res.OK || strings.TrimSpace(res.Stdout) != "alive" {
			t.Fatalf("psql over TLS through the proxy: %+v\n%s", res, rp.log.String())
		}
	}
	queryTLS()
	serial := servedSerialTLS(t, addr)
	before := faultnet.Count(t)

	snapshot := func(dir string) map[string][]byte {
		out := map[string][]byte{}
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			out[e.Name()] = b
		}
		return out
	}
	snapLocal, snapUp := snapshot(local), snapshot(pki.Dir)
	errno := faultnet.MakeReadOnly(t, local)
	faultnet.MakeReadOnly(t, pki.Dir)
	cause := "read-only file system"
	if errno == syscall.EACCES {
		cause = "writable by uid"
	}

	for _, args := range [][]string{
		{"certs", "issue", "server", "--ca", filepath.Join(local, certs.CACertName), "--ca-key", filepath.Join(local, certs.CAKeyName),
			"--dir", local, "--hosts", "localhost,127.0.0.1", "--force"},
		{"certs", "issue", "client", "--ca", pki.CACert, "--ca-key", pki.CAKey, "--dir", pki.Dir, "--name", "client", "--user", "postgres", "--force"},
		{"certs", "init", "--dir", local, "--force"},
	} {
		_, errOut, code := runCerts(t, args...)
		t.Logf("pgtrust %s %s: exit %d: %s", args[0], args[1], code, strings.ReplaceAll(strings.TrimSpace(errOut), "\n", " | "))
		if code != 2 || !strings.Contains(errOut, "could not write file") || !strings.Contains(errOut, cause) {
			t.Errorf("pgtrust %v: exit %d, want 2 and an error naming %q:\n%s", args, code, cause, errOut)
		}
	}
	for dir, snap := range map[string]map[string][]byte{local: snapLocal, pki.Dir: snapUp} {
		now := snapshot(dir)
		if len(now) != len(snap) {
			t.Errorf("%s: files %d, before %d (temp files left?)", dir, len(now), len(snap))
		}
		for name, b := range snap {
			if !bytes.Equal(now[name], b) {
				t.Errorf("%s/%s changed although the write failed", dir, name)
			}
		}
	}

	// A SIGHUP reload re-reads the intact files; the proxy keeps serving
	// the same certificate locally and its client certificate upstream.
	rp.sigs <- syscall.SIGHUP
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for end := time.Now().Add(15 * time.Second); !cond(); {
			if time.Now().After(end) {
				t.Fatalf("timed out waiting for %s\n%s", what, rp.log.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor("the SIGHUP reload", func() bool {
		return strings.Count(rp.log.String(), "SIGHUP: reloading") == 1 && strings.Contains(rp.log.String(), "reloaded")
	})
	if strings.Contains(rp.log.String(), "reload rejected") {
		t.Errorf("reload rejected:\n%s", rp.log.String())
	}
	if got := servedSerialTLS(t, addr); got != serial {
		t.Errorf("the proxy shows serial %s, want the old %s", got, serial)
	}
	queryTLS()
	faultnet.Settle(t, "read-only certificate write campaign", before, 4, 20*time.Second)
}
