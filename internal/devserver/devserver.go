// Package devserver runs a throwaway PostgreSQL server with TLS and
// certificate authentication, for `pgtrust quickstart`. It is the
// standalone (non-test) sibling of internal/pgtest: a private directory, a
// free 127.0.0.1 port, initdb, postgres in its own process group (so a
// terminal's Ctrl-C reaches pgtrust, which then stops the server in order),
// and a Stop that leaves no process or file behind. When run as root the
// server runs as the OS user postgres, as initdb and postgres insist.
package devserver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgproc"
)

// DefaultBinDir is where Debian's postgresql-15 package puts the server
// binaries; PGTRUST_PG15_BIN overrides it.
const DefaultBinDir = "/usr/lib/postgresql/15/bin"

// Options configure a server.
type Options struct {
	BinDir string            // directory of initdb, postgres, pg_ctl; default DefaultBinDir or $PGTRUST_PG15_BIN
	PKI    *certs.DevPKI     // server certificate, key and the CA that signs client certificates (required)
	HBA    []string          // pg_hba.conf lines after "local all postgres trust"; default: certificate auth over TLS only
	Conf   map[string]string // extra postgresql.conf settings
}

// Server is a running throwaway server.
type Server struct {
	Host    string // "127.0.0.1"
	Port    int
	Dir     string // private directory (data, socket, TLS files, log); removed by Stop
	DataDir string
	LogFile string

	proc   *os.Process
	exited chan struct{}
	mu     sync.Mutex
}

// DefaultHBA accepts only TLS connections that present a client certificate
// signed by the CA whose CN is the user name (PostgreSQL's "cert" method).
var DefaultHBA = []string{
	"hostssl all all 127.0.0.1/32 cert clientcert=verify-full",
	"hostssl all all ::1/128 cert clientcert=verify-full",
}

// BinDir returns the binary directory to use, or a config_invalid error
// that says how to install PostgreSQL 15.
func BinDir(dir string) (string, error) {
	if dir == "" {
		dir = os.Getenv("PGTRUST_PG15_BIN")
	}
	if dir == "" {
		dir = DefaultBinDir
	}
	for _, b := range []string{"initdb", "postgres", "pg_ctl"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return "", failure.Wrap(failure.ConfigInvalid, err, "PostgreSQL 15 is not installed: %s is missing", filepath.Join(dir, b)).
				WithEvidence("quickstart runs a throwaway PostgreSQL 15 server from %s", dir).
				WithFix("apt-get install -y postgresql-15 (or set PGTRUST_PG15_BIN to the directory holding initdb, postgres and pg_ctl)")
		}
	}
	return dir, nil
}

// identity is who the server runs as (see pgproc).
type identity = pgproc.Identity

func serverIdentity() (identity, error) {
	id, err := pgproc.ServerIdentity()
	if err != nil {
		return id, failure.Wrap(failure.ConfigInvalid, err, "running as root needs the OS user postgres to run the server").
			WithFix("apt-get install -y postgresql-15 (it creates the postgres user), or run pgtrust as an ordinary user")
	}
	return id, nil
}

// Start creates, configures and starts a server. On error nothing is left
// behind.
func Start(opts Options) (_ *Server, err error) {
	if opts.PKI == nil {
		return nil, errors.New("devserver: Options.PKI is required")
	}
	bin, err := BinDir(opts.BinDir)
	if err != nil {
		return nil, err
	}
	id, err := serverIdentity()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "pgtrust-devserver-")
	if err != nil {
		return nil, fmt.Errorf("devserver: %w", err)
	}
	s := &Server{Host: "127.0.0.1", Dir: dir, DataDir: filepath.Join(dir, "data"), LogFile: filepath.Join(dir, "server.log")}
	defer func() {
		if err != nil {
			_ = s.Stop()
		}
	}()
	if err := id.Chown(dir); err != nil {
		return nil, fmt.Errorf("devserver: chown %s: %w", dir, err)
	}
	// The server reads its own copies, owned by its user: PostgreSQL refuses
	// a key it does not own (or that others can read).
	files := map[string]string{}
	for _, f := range []struct{ src, name string }{{opts.PKI.ServerCert, "server.crt"}, {opts.PKI.ServerKey, "server.key"}, {opts.PKI.CACert, "ca.crt"}} {
		data, err := os.ReadFile(f.src)
		if err != nil {
			return nil, fmt.Errorf("devserver: read %s: %w", f.src, err)
		}
		p := filepath.Join(dir, f.name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			return nil, fmt.Errorf("devserver: %w", err)
		}
		if err := id.Chown(p); err != nil {
			return nil, fmt.Errorf("devserver: chown %s: %w", p, err)
		}
		files[f.name] = p
	}

	initdb := id.Command(true, filepath.Join(bin, "initdb"), "-D", s.DataDir, "--no-sync", "-A", "trust", "-U", "postgres",
		"--no-locale", "-E", "UTF8", "--no-instructions")
	initdb.Dir = dir
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("devserver: initdb: %v\n%s", err, out)
	}
	hba := opts.HBA
	if len(hba) == 0 {
		hba = DefaultHBA
	}
	hbaPath := filepath.Join(s.DataDir, "pg_hba.conf")
	if err := os.WriteFile(hbaPath, []byte("# written by pgtrust quickstart\nlocal all postgres trust\n"+strings.Join(hba, "\n")+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("devserver: %w", err)
	}
	if err := id.Chown(hbaPath); err != nil {
		return nil, fmt.Errorf("devserver: %w", err)
	}

	conf := map[string]string{
		"listen_addresses":        s.Host,
		"unix_socket_directories": dir,
		"ssl":                     "on",
		"ssl_cert_file":           files["server.crt"],
		"ssl_key_file":            files["server.key"],
		"ssl_ca_file":             files["ca.crt"],
		"fsync":                   "off",
		"shared_buffers":          "16MB",
		"max_connections":         "20",
		"lc_messages":             "C",
	}
	for k, v := range opts.Conf {
		conf[k] = v
	}
	// A port chosen by the kernel can be taken before postgres binds it.
	for attempt := 1; ; attempt++ {
		if s.Port, err = pgproc.FreePort(); err != nil {
			return nil, err
		}
		conf["port"] = strconv.Itoa(s.Port)
		err = s.start(bin, id, conf)
		if err == nil {
			return s, nil
		}
		if attempt >= 5 || !strings.Contains(s.Log(), "could not bind") {
			return nil, fmt.Errorf("devserver: %w\n--- server log ---\n%s", err, s.Log())
		}
	}
}

func (s *Server) start(bin string, id identity, conf map[string]string) error {
	args := []string{"-D", s.DataDir}
	for k, v := range conf {
		args = append(args, "-c", k+"="+v)
	}
	logf, err := os.OpenFile(s.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := id.Command(true, filepath.Join(bin, "postgres"), args...)
	cmd.Dir = s.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := pgproc.Start(cmd); err != nil {
		return fmt.Errorf("exec postgres: %w", err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	s.mu.Lock()
	s.proc, s.exited = cmd.Process, exited
	s.mu.Unlock()

	pid := strconv.Itoa(cmd.Process.Pid)
	deadline := time.Now().Add(60 * time.Second)
	for !pgproc.Ready(filepath.Join(s.DataDir, "postmaster.pid"), pid) {
		select {
		case <-exited:
			s.mu.Lock()
			s.proc = nil
			s.mu.Unlock()
			return fmt.Errorf("postgres exited during startup: %v", waitErr)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errors.New("postgres not ready after 60s")
		}
	}
	return nil
}

// Log returns the server log.
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.LogFile)
	return string(b)
}

// Stop shuts the server down (fast shutdown: sessions are ended), waits
// until its processes are gone and removes its directory. Calling it twice
// is harmless.
func (s *Server) Stop() error {
	s.mu.Lock()
	proc, exited := s.proc, s.exited
	s.proc = nil
	s.mu.Unlock()
	var errs []error
	if proc != nil {
		_ = proc.Signal(syscall.SIGINT) // PostgreSQL's fast shutdown
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			errs = append(errs, errors.New("postgres still running 30s after SIGINT; killed"))
			_ = proc.Kill()
			<-exited
		}
		// Backends exit on their own once the postmaster is gone; wait so
		// that nothing outlives Stop.
		deadline := time.Now().Add(10 * time.Second)
		for len(pgproc.ProcessesIn(s.DataDir)) > 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if s.Dir != "" {
		if err := os.RemoveAll(s.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
