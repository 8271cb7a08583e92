// Package pgtest starts throwaway real PostgreSQL servers for tests, runs psql
// (libpq) as the reference client, and provides fake servers for the
// protocol misbehaviours no real server shows.
//
// Each server gets a private directory (data dir, certificates, Unix socket,
// log), a free 127.0.0.1 port and its own postgresql.conf and pg_hba.conf.
// Servers are copies of an initdb template, so starting one is fast. When the
// test process is root, servers run as the OS user postgres. Everything is
// torn down in t.Cleanup, and a server whose test binary dies is killed by the
// kernel (parent-death signal).
//
// Missing binaries fail the test with a message naming the setup script; the
// harness never skips.
package pgtest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/internal/pgproc"
)

// Options configures a server.
type Options struct {
	Version int  // PostgreSQL major version: 15 (default) or 18
	SSL     bool // ssl=on

	// ServerCert and ServerKey are PEM; the cert may be followed by its chain.
	// Required when SSL.
	ServerCert, ServerKey []byte
	CA                    []byte // PEM for ssl_ca_file (nil: none)
	CRL                   []byte // PEM for ssl_crl_file (nil: none)

	// HBA is the pg_hba.conf lines. Default: local all all trust, host all all
	// 127.0.0.1/32 trust, host all all ::1/128 trust. A "local all postgres
	// trust" line is always put first so the harness itself can connect.
	HBA []string
	// Conf holds extra postgresql.conf settings; they override the defaults.
	// Values are written quoted, e.g. "ssl_min_protocol_version": "TLSv1.3".
	Conf map[string]string
	// Setup is SQL run as superuser over the Unix socket after start, one
	// psql script per entry (e.g. CREATE ROLE ...).
	Setup []string
}

// DefaultHBA is the pg_hba.conf used when Options.HBA is empty.
var DefaultHBA = []string{
	"local all all trust",
	"host all all 127.0.0.1/32 trust",
	"host all all ::1/128 trust",
}

// Server is a running (or stopped) throwaway PostgreSQL server.
type Server struct {
	Host      string // "127.0.0.1"
	Port      int
	SocketDir string // unix_socket_directories
	DataDir   string
	Version   int
	Dir       string // the server's private directory, removed at cleanup

	// Paths of the TLS files given in Options ("" when not given).
	CertFile, KeyFile, CAFile, CRLFile string

	opts    Options
	bin     string
	who     runAs
	logPath string

	mu  sync.Mutex
	run *procRun // nil when stopped
}

// procRun is one run of the postmaster.
type procRun struct {
	proc    *os.Process
	exited  chan struct{} // closed once proc has been reaped
	waitErr error         // set before exited is closed
}

// Start starts a server and registers its teardown with t.Cleanup. Any
// failure ends the test with t.Fatal and the server log.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	if opts.Version == 0 {
		opts.Version = 15
	}
	bin, err := BinDir(opts.Version)
	if err != nil {
		t.Fatal(err)
	}
	who, err := serverIdentity()
	if err != nil {
		t.Fatal(err)
	}
	if opts.SSL && (len(opts.ServerCert) == 0 || len(opts.ServerKey) == 0) {
		t.Fatal("pgtest: Options.SSL needs ServerCert and ServerKey")
	}
	sweepStaleDirs()
	tmpl, err := templateDir(opts.Version)
	if err != nil {
		t.Fatal(err)
	}

	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	s := &Server{
		Host:      "127.0.0.1",
		SocketDir: dir,
		DataDir:   filepath.Join(dir, "data"),
		Version:   opts.Version,
		Dir:       dir,
		opts:      opts,
		bin:       bin,
		who:       who,
		logPath:   filepath.Join(dir, "server.log"),
	}
	// Registered before anything can fail, so a half-started server is
	// still stopped and its directory removed.
	t.Cleanup(func() {
		if err := s.stop(); err != nil {
			t.Errorf("pgtest: stop: %v", err)
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("pgtest: remove %s: %v", dir, err)
		}
	})
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	if err := s.who.Chown(dir); err != nil {
		t.Fatalf("pgtest: chown %s: %v", dir, err)
	}
	if out, err := exec.Command("cp", "-a", tmpl, s.DataDir).CombinedOutput(); err != nil {
		t.Fatalf("pgtest: copy template data dir: %v: %s", err, out)
	}
	if err := s.who.ChownTree(s.DataDir); err != nil {
		t.Fatalf("pgtest: chown data dir: %v", err)
	}
	s.writeTLSFiles(t, opts.ServerCert, opts.ServerKey, opts.CA, opts.CRL)
	s.writeHBA(t)

	// A port picked by the kernel can be taken by another process before
	// postgres binds it; try a few.
	for attempt := 1; ; attempt++ {
		s.Port = freePort(t)
		s.writeConf(t)
		err := s.start()
		if err == nil {
			break
		}
		if attempt < 5 && strings.Contains(s.Log(), "could not bind") {
			continue
		}
		t.Fatalf("pgtest: start PostgreSQL %d: %v\n--- server log ---\n%s", opts.Version, err, s.Log())
	}
	for _, sql := range opts.Setup {
		s.Exec(t, sql)
	}
	return s
}

// Names in the server directory.
const (
	dirPrefix = "pgtrust-pgtest-"
	ownerFile = "owner.pid" // pid of the test process that owns the dir
)

// DSN returns "host=127.0.0.1 port=N user=postgres dbname=postgres " + extra.
func (s *Server) DSN(extra string) string {
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres %s", s.Host, s.Port, extra)
}

// Addr returns "127.0.0.1:port".
func (s *Server) Addr() string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

// Log returns the server log so far (all starts).
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.logPath)
	return string(b)
}

// Exec runs sql as superuser over the Unix socket with psql -X -q -At and
// ON_ERROR_STOP, and returns its output without the trailing newline. A
// failing statement fails the test.
func (s *Server) Exec(t testing.TB, sql string) string {
	t.Helper()
	out, err := s.exec(sql)
	if err != nil {
		t.Fatalf("pgtest: Exec %q: %v", sql, err)
	}
	return out
}

func (s *Server) exec(sql string) (string, error) {
	home := filepath.Join(s.Dir, "psql-home")
	if err := os.MkdirAll(home, 0o700); err != nil {
		return "", err
	}
	cmd := exec.Command(PsqlPath(), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
		"-h", s.SocketDir, "-p", strconv.Itoa(s.Port), "-U", "postgres", "-d", "postgres", "-f", "-")
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C", "HOME=" + home, "PGCONNECT_TIMEOUT=10"}
	cmd.Stdin = strings.NewReader(sql)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%v: %s", err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimRight(stdout.String(), "\n"), nil
}

// Stop stops the server (immediate shutdown). Stopping a stopped server does nothing.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	if err := s.stop(); err != nil {
		t.Fatalf("pgtest: stop: %v", err)
	}
}

// Restart stops the server and starts it again on the same port with the
// current configuration files.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop(t)
	if err := s.start(); err != nil {
		t.Fatalf("pgtest: restart: %v\n--- server log ---\n%s", err, s.Log())
	}
}

// Reload makes the server re-read postgresql.conf, pg_hba.conf and its TLS
// files (SIGHUP), and returns once new connections see the new configuration.
// Check Log for "was not reloaded" when a test changes files to bad ones.
func (s *Server) Reload(t testing.TB) {
	t.Helper()
	const q = "SELECT pg_conf_load_time()"
	before := s.Exec(t, q)
	s.mu.Lock()
	run := s.run
	s.mu.Unlock()
	if run == nil {
		t.Fatal("pgtest: Reload of a stopped server")
	}
	if err := run.proc.Signal(syscall.SIGHUP); err != nil {
		t.Fatalf("pgtest: reload: %v", err)
	}
	// pg_conf_load_time moves when the postmaster has re-read its files, and
	// each backend inherits the postmaster's value, so a fresh connection
	// showing a new value proves the reload is visible to new connections.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if now := s.Exec(t, q); now != before {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pgtest: reload not applied after 30s (bad postgresql.conf?)\n--- server log ---\n%s", s.Log())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// SetHBA rewrites pg_hba.conf (apply with Reload or Restart).
func (s *Server) SetHBA(t testing.TB, lines ...string) {
	t.Helper()
	s.opts.HBA = append([]string{}, lines...)
	s.writeHBA(t)
}

// SetConf merges settings into the extra postgresql.conf settings and
// rewrites the file (apply with Reload or Restart).
func (s *Server) SetConf(t testing.TB, conf map[string]string) {
	t.Helper()
	merged := map[string]string{}
	for k, v := range s.opts.Conf {
		merged[k] = v
	}
	for k, v := range conf {
		merged[k] = v
	}
	s.opts.Conf = merged
	s.writeConf(t)
}

// SetServerCert replaces the server certificate and key files (apply with
// Reload or Restart). The server must have been started with SSL or with a
// ServerCert.
func (s *Server) SetServerCert(t testing.TB, certPEM, keyPEM []byte) {
	t.Helper()
	s.opts.ServerCert, s.opts.ServerKey = certPEM, keyPEM
	s.writeTLSFiles(t, certPEM, keyPEM, nil, nil)
	s.writeConf(t)
}

func (s *Server) writeTLSFiles(t testing.TB, cert, key, ca, crl []byte) {
	t.Helper()
	write := func(name string, data []byte, mode os.FileMode) string {
		if len(data) == 0 {
			return ""
		}
		return s.writeFile(t, name, data, mode)
	}
	if p := write("server.crt", cert, 0o644); p != "" {
		s.CertFile = p
	}
	// PostgreSQL refuses a key readable by group/other unless root owns it.
	if p := write("server.key", key, 0o600); p != "" {
		s.KeyFile = p
	}
	if p := write("root.crt", ca, 0o644); p != "" {
		s.CAFile = p
	}
	if p := write("root.crl", crl, 0o644); p != "" {
		s.CRLFile = p
	}
}

// writeFile writes a file in the server dir, owned by the server identity.
func (s *Server) writeFile(t testing.TB, name string, data []byte, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(s.Dir, name)
	// Write to a new file and rename, so a reload never sees half a file.
	tmp := p + ".new"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		t.Fatalf("pgtest: write %s: %v", p, err)
	}
	if err := os.Chmod(tmp, mode); err != nil {
		t.Fatalf("pgtest: chmod %s: %v", p, err)
	}
	if err := s.who.Chown(tmp); err != nil {
		t.Fatalf("pgtest: chown %s: %v", p, err)
	}
	if err := os.Rename(tmp, p); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return p
}

func (s *Server) writeHBA(t testing.TB) {
	t.Helper()
	lines := s.opts.HBA
	if len(lines) == 0 {
		lines = DefaultHBA
	}
	var b strings.Builder
	b.WriteString("# written by pgtest\nlocal all postgres trust\n")
	for _, l := range lines {
		b.WriteString(l + "\n")
	}
	s.writeFile(t, "data/pg_hba.conf", []byte(b.String()), 0o600)
}

func (s *Server) writeConf(t testing.TB) {
	t.Helper()
	var b strings.Builder
	set := func(k, v string) { fmt.Fprintf(&b, "%s = '%s'\n", k, strings.ReplaceAll(v, "'", "''")) }
	b.WriteString("# written by pgtest\n")
	set("listen_addresses", s.Host)
	set("port", strconv.Itoa(s.Port))
	set("unix_socket_directories", s.SocketDir)
	set("max_connections", "50")
	set("shared_buffers", "16MB")
	set("fsync", "off")
	set("synchronous_commit", "off")
	set("full_page_writes", "off")
	set("autovacuum", "off")
	set("log_connections", "on")
	set("log_line_prefix", "%m [%p] ")
	set("lc_messages", "C")
	set("timezone", "UTC")
	set("ssl", map[bool]string{true: "on", false: "off"}[s.opts.SSL])
	if s.CertFile != "" {
		set("ssl_cert_file", s.CertFile)
	}
	if s.KeyFile != "" {
		set("ssl_key_file", s.KeyFile)
	}
	if s.CAFile != "" {
		set("ssl_ca_file", s.CAFile)
	}
	if s.CRLFile != "" {
		set("ssl_crl_file", s.CRLFile)
	}
	keys := make([]string, 0, len(s.opts.Conf))
	for k := range s.opts.Conf {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		set(k, s.opts.Conf[k])
	}
	s.writeFile(t, "data/postgresql.conf", []byte(b.String()), 0o600)
}

// start launches postgres as a direct child and waits until it accepts
// connections.
func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.run != nil {
		return errors.New("already running")
	}
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own copy of the descriptor
	cmd := s.who.Command(false, filepath.Join(s.bin, "postgres"), "-D", s.DataDir)
	cmd.Dir = s.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := pgproc.Start(cmd); err != nil {
		return fmt.Errorf("exec postgres: %w", err)
	}
	run := &procRun{proc: cmd.Process, exited: make(chan struct{})}
	go func() {
		run.waitErr = cmd.Wait()
		close(run.exited)
	}()

	pid := strconv.Itoa(cmd.Process.Pid)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if pgproc.Ready(filepath.Join(s.DataDir, "postmaster.pid"), pid) {
			s.run = run
			return nil
		}
		select {
		case <-run.exited:
			return fmt.Errorf("postgres exited during startup: %v", run.waitErr)
		default:
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-run.exited
			return errors.New("postgres not ready after 60s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stop shuts the server down with pg_ctl stop -m immediate, falling back to
// SIGKILL, reaps it and waits for its backends to be gone.
func (s *Server) stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	run := s.run
	if run == nil {
		return nil
	}
	s.run = nil
	var errs []error
	cmd := s.who.Command(false, filepath.Join(s.bin, "pg_ctl"), "stop", "-D", s.DataDir, "-m", "immediate", "-w", "-t", "30")
	cmd.Dir = s.Dir
	if out, err := cmd.CombinedOutput(); err != nil {
		errs = append(errs, fmt.Errorf("pg_ctl stop: %v: %s", err, strings.TrimSpace(string(out))))
	}
	select {
	case <-run.exited:
	case <-time.After(30 * time.Second):
		errs = append(errs, errors.New("postgres still running 30s after pg_ctl stop; killed"))
		_ = run.proc.Kill()
		<-run.exited
	}
	// The postmaster is gone; its backends notice and exit on their own.
	// Wait for them (every backend's working directory is the data dir) so
	// callers can rely on nothing being left.
	deadline := time.Now().Add(10 * time.Second)
	for len(ProcessesIn(s.DataDir)) > 0 {
		if time.Now().After(deadline) {
			errs = append(errs, fmt.Errorf("processes still running in %s: %v", s.DataDir, ProcessesIn(s.DataDir)))
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return errors.Join(errs...)
}

// ProcessesIn returns the pids of live processes whose working directory
// is dir: for a data dir, the postmaster and its children. Tests use it to
// prove a server left nothing behind.
func ProcessesIn(dir string) []int { return pgproc.ProcessesIn(dir) }

// freePort asks the kernel for a free 127.0.0.1 TCP port.
func freePort(t testing.TB) int {
	t.Helper()
	port, err := pgproc.FreePort()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return port
}

var sweepOnce sync.Once

// sweepStaleDirs removes server dirs left by test processes that died
// without running their cleanups (SIGKILL, go test -timeout). Their servers
// already died with them (parent-death signal).
func sweepStaleDirs() {
	sweepOnce.Do(func() {
		dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
		for _, d := range dirs {
			b, err := os.ReadFile(filepath.Join(d, ownerFile))
			if err != nil {
				continue
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil || pid <= 0 {
				continue
			}
			if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) && len(ProcessesIn(filepath.Join(d, "data"))) == 0 {
				_ = os.RemoveAll(d)
			}
		}
	})
}
