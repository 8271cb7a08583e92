package pgtest

import (
	"crypto/tls"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/internal/testpki"
)

// tlsFixture is a CA, a server cert for localhost/127.0.0.1 and a client
// cert for the postgres role, written to files a client can use.
type tlsFixture struct {
	ca                            *testpki.CA
	server, client                *testpki.Leaf
	caFile, clientCert, clientKey string
}

func newTLSFixture(t *testing.T) tlsFixture {
	t.Helper()
	ca := testpki.NewRootCA(t, "pgtest CA")
	f := tlsFixture{ca: ca, server: ca.Server(t), client: ca.Client(t, "postgres")}
	dir := t.TempDir()
	f.caFile = testpki.WriteFile(t, dir, "root.crt", ca.CertPEM, 0o644)
	f.clientCert = testpki.WriteFile(t, dir, "client.crt", f.client.CertPEM, 0o644)
	f.clientKey = testpki.WriteFile(t, dir, "client.key", f.client.KeyPEM, 0o600)
	return f
}

func (f tlsFixture) options() Options {
	return Options{SSL: true, ServerCert: f.server.ChainPEM, ServerKey: f.server.KeyPEM, CA: f.ca.CertPEM}
}

func wantOK(t *testing.T, r PsqlResult) {
	t.Helper()
	if !r.OK || strings.TrimSpace(r.Stdout) != "1" {
		t.Fatalf("psql failed (exit %d): stdout %q stderr %q", r.ExitCode, r.Stdout, r.Stderr)
	}
}

func wantFail(t *testing.T, r PsqlResult, stderrPart string) {
	t.Helper()
	if r.OK || r.ExitCode != 2 || !strings.Contains(r.Stderr, stderrPart) {
		t.Fatalf("psql: want connection failure containing %q, got ok=%v exit %d stderr %q", stderrPart, r.OK, r.ExitCode, r.Stderr)
	}
}

func TestPlainServer(t *testing.T) {
	s := Start(t, Options{Setup: []string{"CREATE ROLE alice LOGIN", "CREATE DATABASE app OWNER alice"}})
	if s.Host != "127.0.0.1" || s.Port == 0 || s.Version != 15 {
		t.Fatalf("server %+v", s)
	}
	if got, want := s.DSN("sslmode=disable"), "host=127.0.0.1 port="+strconv.Itoa(s.Port)+" user=postgres dbname=postgres sslmode=disable"; got != want {
		t.Errorf("DSN = %q, want %q", got, want)
	}
	if got := s.Exec(t, "SHOW server_version_num"); !strings.HasPrefix(got, "15") {
		t.Errorf("server_version_num = %q", got)
	}
	if got := s.Exec(t, "SELECT 1; SELECT 2"); got != "1\n2" {
		t.Errorf("Exec multi-statement = %q", got)
	}
	if got := s.Exec(t, "SELECT datname FROM pg_database WHERE datname = 'app'"); got != "app" {
		t.Errorf("Setup did not create database: %q", got)
	}
	if got := s.Exec(t, "SHOW ssl"); got != "off" {
		t.Errorf("ssl = %q", got)
	}
	wantOK(t, Psql(t, s.DSN("sslmode=disable"), nil))
	wantOK(t, Psql(t, "host=127.0.0.1 port="+strconv.Itoa(s.Port)+" user=alice dbname=app", nil))
	wantFail(t, Psql(t, s.DSN("sslmode=require"), nil), "server does not support SSL, but SSL was required")
	r := PsqlQuery(t, s.DSN(""), "SELECT current_user || ':' || current_database()", nil)
	if !r.OK || strings.TrimSpace(r.Stdout) != "postgres:postgres" {
		t.Errorf("PsqlQuery: %+v", r)
	}
	if !strings.Contains(s.Log(), "database system is ready to accept connections") {
		t.Errorf("log lacks the ready line:\n%s", s.Log())
	}
	// Server files: key owner/mode as PostgreSQL wants, socket in the server dir.
	if _, err := os.Stat(filepath.Join(s.SocketDir, ".s.PGSQL."+strconv.Itoa(s.Port))); err != nil {
		t.Errorf("socket: %v", err)
	}
}

func TestExecErrorFailsTest(t *testing.T) {
	s := Start(t, Options{})
	if _, err := s.exec("SELECT * FROM no_such_table"); err == nil || !strings.Contains(err.Error(), "no_such_table") {
		t.Fatalf("exec of bad SQL: %v", err)
	}
}

func TestPsqlDoesNotInheritEnvironment(t *testing.T) {
	s := Start(t, Options{})
	// A PG* variable in the test's environment must not reach psql ...
	t.Setenv("PGSSLMODE", "require")
	wantOK(t, Psql(t, s.DSN(""), nil))
	// ... but one passed explicitly does.
	wantFail(t, Psql(t, s.DSN(""), map[string]string{"PGSSLMODE": "require"}), "server does not support SSL")
	// (TestSSLServer shows an explicit HOME is honoured.)
	home := EmptyHome(t)
	if entries, _ := os.ReadDir(home); len(entries) != 0 {
		t.Fatalf("EmptyHome not empty: %v", entries)
	}
}

func TestSSLServer(t *testing.T) {
	f := newTLSFixture(t)
	s := Start(t, f.options())
	if got := s.Exec(t, "SHOW ssl"); got != "on" {
		t.Fatalf("ssl = %q", got)
	}
	fi, err := os.Stat(s.KeyFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("server key mode: %v %v", fi.Mode(), err)
	}
	wantOK(t, Psql(t, s.DSN("sslmode=verify-full sslrootcert="+f.caFile), nil))
	r := PsqlQuery(t, s.DSN("sslmode=verify-full sslrootcert="+f.caFile), "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", nil)
	if !r.OK || strings.TrimSpace(r.Stdout) != "t" {
		t.Fatalf("connection not over TLS: %+v", r)
	}
	// The same CA in HOME/.postgresql/root.crt is libpq's default root.
	home := EmptyHome(t)
	if err := os.Mkdir(filepath.Join(home, ".postgresql"), 0o700); err != nil {
		t.Fatal(err)
	}
	testpki.WriteFile(t, filepath.Join(home, ".postgresql"), "root.crt", f.ca.CertPEM, 0o644)
	wantOK(t, Psql(t, s.DSN("sslmode=verify-full"), map[string]string{"HOME": home}))
	// No root cert in the empty default HOME.
	wantFail(t, Psql(t, s.DSN("sslmode=verify-full"), nil), "root certificate file")

	other := testpki.NewRootCA(t, "other CA")
	otherFile := testpki.WriteFile(t, t.TempDir(), "other.crt", other.CertPEM, 0o644)
	wantFail(t, Psql(t, s.DSN("sslmode=verify-full sslrootcert="+otherFile), nil), "certificate verify failed")
	// The cert names localhost and 127.0.0.1 but not 127.0.0.2.
	wantFail(t, Psql(t, "host=127.0.0.2 hostaddr=127.0.0.1 port="+strconv.Itoa(s.Port)+" user=postgres sslmode=verify-full sslrootcert="+f.caFile, nil),
		`does not match host name "127.0.0.2"`)
}

func TestHBAVariants(t *testing.T) {
	f := newTLSFixture(t)
	opts := f.options()
	opts.HBA = []string{"hostssl all all 127.0.0.1/32 trust"}
	s := Start(t, opts)
	wantOK(t, Psql(t, s.DSN("sslmode=require"), nil))
	wantFail(t, Psql(t, s.DSN("sslmode=disable"), nil), "no encryption")
	// The harness's own access survives any HBA.
	if got := s.Exec(t, "SELECT 1"); got != "1" {
		t.Fatalf("Exec = %q", got)
	}

	s.SetHBA(t, "hostnossl all all 127.0.0.1/32 trust")
	s.Reload(t)
	wantOK(t, Psql(t, s.DSN("sslmode=disable"), nil))
	wantOK(t, Psql(t, s.DSN("sslmode=prefer"), nil)) // falls back to plaintext after the SSL attempt is rejected
	wantFail(t, Psql(t, s.DSN("sslmode=require"), nil), "SSL encryption")

	s.SetHBA(t, "hostssl all all 127.0.0.1/32 cert")
	s.Reload(t)
	certs := " sslcert=" + f.clientCert + " sslkey=" + f.clientKey
	wantOK(t, Psql(t, s.DSN("sslmode=verify-full sslrootcert="+f.caFile+certs), nil))
	wantFail(t, Psql(t, s.DSN("sslmode=verify-full sslrootcert="+f.caFile), nil), "connection requires a valid client certificate")
}

func TestReloadAppliesConfAndCertRotation(t *testing.T) {
	f := newTLSFixture(t)
	s := Start(t, f.options())
	tls12 := s.DSN("sslmode=require ssl_max_protocol_version=TLSv1.2")
	wantOK(t, Psql(t, tls12, nil))
	s.SetConf(t, map[string]string{"ssl_min_protocol_version": "TLSv1.3"})
	s.Reload(t)
	if got := s.Exec(t, "SHOW ssl_min_protocol_version"); got != "TLSv1.3" {
		t.Fatalf("ssl_min_protocol_version = %q", got)
	}
	wantFail(t, Psql(t, tls12, nil), "SSL")

	ca2 := testpki.NewRootCA(t, "rotated CA")
	srv2 := ca2.Server(t)
	ca2File := testpki.WriteFile(t, t.TempDir(), "ca2.crt", ca2.CertPEM, 0o644)
	wantFail(t, Psql(t, s.DSN("sslmode=verify-full sslrootcert="+ca2File), nil), "certificate verify failed")
	s.SetServerCert(t, srv2.ChainPEM, srv2.KeyPEM)
	s.Reload(t)
	wantOK(t, Psql(t, s.DSN("sslmode=verify-full sslrootcert="+ca2File), nil))
	wantFail(t, Psql(t, s.DSN("sslmode=verify-full sslrootcert="+f.caFile), nil), "certificate verify failed")
}

func TestIntermediateChainAndCRL(t *testing.T) {
	root := testpki.NewRootCA(t, "root")
	inter := root.NewIntermediate(t, "inter")
	srv := inter.Server(t)
	good, revoked := root.Client(t, "postgres"), root.Client(t, "postgres")
	s := Start(t, Options{
		SSL: true, ServerCert: srv.ChainPEM, ServerKey: srv.KeyPEM,
		CA: root.CertPEM, CRL: root.CRL(t, revoked.Cert),
		HBA: []string{"hostssl all all 127.0.0.1/32 cert"},
	})
	dir := t.TempDir()
	rootFile := testpki.WriteFile(t, dir, "root.crt", root.CertPEM, 0o644)
	client := func(l *testpki.Leaf, name string) string {
		return " sslcert=" + testpki.WriteFile(t, dir, name+".crt", l.CertPEM, 0o644) +
			" sslkey=" + testpki.WriteFile(t, dir, name+".key", l.KeyPEM, 0o600)
	}
	wantOK(t, Psql(t, s.DSN("sslmode=verify-full sslrootcert="+rootFile+client(good, "good")), nil))
	wantFail(t, Psql(t, s.DSN("sslmode=verify-full sslrootcert="+rootFile+client(revoked, "revoked")), nil), "revoked")
}

func TestRestartStopAndNoLeftovers(t *testing.T) {
	before := postgresPIDs(t)
	var dir string
	var serverPIDs []int
	t.Run("server", func(t *testing.T) {
		s := Start(t, Options{})
		dir = s.Dir
		pids1 := ProcessesIn(s.DataDir)
		if len(pids1) == 0 {
			t.Fatal("no server processes found")
		}
		s.Restart(t)
		pids2 := ProcessesIn(s.DataDir)
		if len(pids2) == 0 || pids2[0] == pids1[0] && len(pids1) == 1 {
			t.Fatalf("restart: processes %v -> %v", pids1, pids2)
		}
		wantOK(t, Psql(t, s.DSN(""), nil))
		if n := strings.Count(s.Log(), "ready to accept connections"); n != 2 {
			t.Errorf("log shows %d starts, want 2", n)
		}
		s.Stop(t)
		if left := ProcessesIn(s.DataDir); len(left) != 0 {
			t.Fatalf("processes left after Stop: %v", left)
		}
		wantFail(t, Psql(t, s.DSN(""), nil), "Connection refused")
		s.Stop(t) // idempotent
		s.Restart(t)
		wantOK(t, Psql(t, s.DSN(""), nil))
		serverPIDs = ProcessesIn(s.DataDir)
		// Left running: the cleanup must stop it.
	})
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("server dir %s still exists after cleanup (err %v)", dir, err)
	}
	after := postgresPIDs(t)
	for _, pid := range serverPIDs {
		if after[pid] {
			t.Errorf("server process %d still running after cleanup", pid)
		}
	}
	for pid := range after {
		if !before[pid] && ownedByDir(pid, dir) {
			t.Errorf("new postgres process %d belongs to the removed server", pid)
		}
	}
}

// postgresPIDs lists postgres processes of the server user (pgrep -u postgres
// postgres when root). Other test binaries may run servers concurrently, so
// callers compare specific pids rather than counts.
func postgresPIDs(t *testing.T) map[int]bool {
	t.Helper()
	who, err := serverIdentity()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("pgrep", "-u", strconv.Itoa(who.UID), "postgres").Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 1 {
			return map[int]bool{} // none
		}
		t.Fatalf("pgrep: %v", err)
	}
	pids := map[int]bool{}
	for _, f := range strings.Fields(string(out)) {
		if n, err := strconv.Atoi(f); err == nil {
			pids[n] = true
		}
	}
	return pids
}

func ownedByDir(pid int, dir string) bool {
	cwd, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "cwd"))
	return err == nil && strings.HasPrefix(cwd, dir)
}

func TestPG18DirectTLS(t *testing.T) {
	f := newTLSFixture(t)
	opts := f.options()
	opts.Version = 18
	s := Start(t, opts)
	if got := s.Exec(t, "SHOW server_version_num"); !strings.HasPrefix(got, "18") {
		t.Fatalf("server_version_num = %q", got)
	}
	// The classic SSLRequest path, through libpq 15.
	wantOK(t, Psql(t, s.DSN("sslmode=verify-full sslrootcert="+f.caFile), nil))

	// Direct TLS (sslnegotiation=direct): the ClientHello comes first, with ALPN
	// "postgresql". psql 15 cannot do this, so a Go client does.
	conn, err := tls.Dial("tcp", s.Addr(), &tls.Config{
		RootCAs: f.ca.Pool(), ServerName: "localhost", NextProtos: []string{"postgresql"},
	})
	if err != nil {
		t.Fatalf("direct TLS: %v\n%s", err, s.Log())
	}
	defer conn.Close()
	if p := conn.ConnectionState().NegotiatedProtocol; p != "postgresql" {
		t.Fatalf("ALPN = %q", p)
	}
	fe := pgproto3.NewFrontend(conn, conn)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "postgres", "database": "postgres"}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	expectUntilReady(t, fe)
	fe.Send(&pgproto3.Query{String: "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()"})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	if rows := expectUntilReady(t, fe); len(rows) != 1 || rows[0] != "true" {
		t.Fatalf("rows = %v", rows)
	}

	// PostgreSQL 17+ refuses direct TLS without ALPN: it completes the
	// handshake, logs why and closes.
	c2, err := tls.Dial("tcp", s.Addr(), &tls.Config{RootCAs: f.ca.Pool(), ServerName: "localhost"})
	if err == nil {
		_, err = c2.Read(make([]byte, 1))
		c2.Close()
	}
	if err == nil {
		t.Error("direct TLS without ALPN: connection stayed open")
	}
	if !strings.Contains(s.Log(), "received direct SSL connection request without ALPN protocol negotiation extension") {
		t.Errorf("direct TLS without ALPN (err %v) not logged:\n%s", err, s.Log())
	}
}

// expectUntilReady reads backend messages until ReadyForQuery, failing on an
// ErrorResponse, and returns the text of the first column of each DataRow.
func expectUntilReady(t *testing.T, fe *pgproto3.Frontend) []string {
	t.Helper()
	var rows []string
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("receive: %v", err)
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			t.Fatalf("server error: %s", m.Message)
		case *pgproto3.DataRow:
			rows = append(rows, string(m.Values[0]))
		case *pgproto3.ReadyForQuery:
			return rows
		}
	}
}

func TestVersionUnsupported(t *testing.T) {
	if _, err := BinDir(14); err == nil {
		t.Error("BinDir(14) succeeded")
	}
	t.Setenv("PGTRUST_PG18_DIR", filepath.Join(t.TempDir(), "absent"))
	_, err := BinDir(18)
	if err == nil || !strings.Contains(err.Error(), ".ci/setup") {
		t.Errorf("missing PG18: error %v does not name the setup script", err)
	}
}
