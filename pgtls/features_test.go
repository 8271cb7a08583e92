package pgtls_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/testpki"
	"github.com/pgtrust/pgtrust/pgtls"
)

// check compares pgtrust with psql for one connection string, and the class.
func check(t *testing.T, dsn, home string, env map[string]string, want failure.Class) outcome {
	t.Helper()
	penv := map[string]string{"HOME": home}
	for k, v := range env {
		penv[k] = v
	}
	cfg, err := connstring.ParseWithEnv(dsn, penv, home)
	got := outcome{err: err}
	if err == nil {
		got = connectWith(t, cfg, nil)
	}
	lib := pgtest.Psql(t, dsn, penv)
	if (got.err == nil) != lib.OK {
		t.Fatalf("pgtrust connected=%v (%v), libpq connected=%v (%s)\n  dsn: %s", got.err == nil, got.err, lib.OK, strings.TrimSpace(lib.Stderr), dsn)
	}
	if c := failure.ClassOf(got.err); c != want {
		t.Fatalf("class %s, want %s: %v\n  libpq: %s", c, want, got.err, strings.TrimSpace(lib.Stderr))
	}
	return got
}

func connectWith(t *testing.T, cfg *connstring.Config, opts *pgtls.Options) outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pg, facts, err := pgtls.Connect(ctx, cfg, opts)
	if err != nil {
		return outcome{facts: facts, err: err}
	}
	defer pg.Close(context.Background())
	_, err = pg.Exec(ctx, "SELECT 1").ReadAll()
	return outcome{facts: facts, err: err}
}

func TestPasswordAuthentication(t *testing.T) {
	ca := testpki.NewRootCA(t, "auth root")
	srv := ca.Server(t)
	s := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: srv.ChainPEM, ServerKey: srv.KeyPEM,
		HBA: []string{
			"hostssl all scram 127.0.0.1/32 scram-sha-256",
			"host all scram 127.0.0.1/32 scram-sha-256",
			"host all md5user 127.0.0.1/32 md5",
			"host all clear 127.0.0.1/32 password",
			"host all all 127.0.0.1/32 trust",
		},
		Setup: []string{
			"SET password_encryption = 'scram-sha-256'; CREATE ROLE scram LOGIN PASSWORD 'scram-pw';",
			"SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD 'md5-pw';",
			"CREATE ROLE clear LOGIN PASSWORD 'clear-pw';",
			"CREATE ROLE trusted LOGIN;",
		}})
	dir := t.TempDir()
	root := filepath.Join(dir, "root.crt")
	if err := os.WriteFile(root, ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	home := pgtest.EmptyHome(t)
	base := fmt.Sprintf("host=localhost hostaddr=127.0.0.1 port=%d dbname=postgres connect_timeout=5 sslrootcert=%s ", s.Port, root)

	t.Run("SCRAM-SHA-256-PLUS with channel_binding=require", func(t *testing.T) {
		got := check(t, base+"user=scram password=scram-pw sslmode=verify-full channel_binding=require", home, nil, failure.OK)
		if m := got.facts.AuthMethod(); m != "scram-sha-256-plus" {
			t.Fatalf("auth method %q, want scram-sha-256-plus", m)
		}
	})
	t.Run("SCRAM without channel binding", func(t *testing.T) {
		got := check(t, base+"user=scram password=scram-pw sslmode=verify-full channel_binding=disable", home, nil, failure.OK)
		if m := got.facts.AuthMethod(); m != "scram-sha-256" {
			t.Fatalf("auth method %q, want scram-sha-256", m)
		}
	})
	t.Run("channel_binding=require over plaintext", func(t *testing.T) {
		got := check(t, base+"user=scram password=scram-pw sslmode=disable channel_binding=require", home, nil, failure.AuthFailed)
		if !strings.Contains(got.err.Error(), "channel binding required, but SSL not in use") {
			t.Fatalf("message %q", got.err)
		}
	})
	t.Run("channel_binding=require with md5", func(t *testing.T) {
		check(t, base+"user=md5user password=md5-pw sslmode=require channel_binding=require", home, nil, failure.AuthFailed)
	})
	t.Run("channel_binding=require with trust", func(t *testing.T) {
		check(t, base+"user=trusted sslmode=require channel_binding=require", home, nil, failure.AuthFailed)
	})
	t.Run("md5", func(t *testing.T) {
		got := check(t, base+"user=md5user password=md5-pw sslmode=require", home, nil, failure.OK)
		if m := got.facts.AuthMethod(); m != "md5" {
			t.Fatalf("auth method %q", m)
		}
	})
	t.Run("cleartext password", func(t *testing.T) {
		got := check(t, base+"user=clear password=clear-pw sslmode=require", home, nil, failure.OK)
		if m := got.facts.AuthMethod(); m != "password" {
			t.Fatalf("auth method %q", m)
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		check(t, base+"user=scram password=nope sslmode=prefer", home, nil, failure.AuthFailed)
	})
	t.Run("PGPASSWORD", func(t *testing.T) {
		check(t, base+"user=scram sslmode=require", home, map[string]string{"PGPASSWORD": "scram-pw"}, failure.OK)
	})
	t.Run(".pgpass 0600 is used", func(t *testing.T) {
		h := pgtest.EmptyHome(t)
		line := fmt.Sprintf("localhost:%d:postgres:scram:scram-pw\n", s.Port)
		if err := os.WriteFile(filepath.Join(h, ".pgpass"), []byte(line), 0o600); err != nil {
			t.Fatal(err)
		}
		check(t, base+"user=scram sslmode=require", h, nil, failure.OK)
	})
	t.Run(".pgpass 0644 is ignored", func(t *testing.T) {
		h := pgtest.EmptyHome(t)
		line := fmt.Sprintf("localhost:%d:postgres:scram:scram-pw\n", s.Port)
		p := filepath.Join(h, ".pgpass")
		if err := os.WriteFile(p, []byte(line), 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, 0o644)
		check(t, base+"user=scram sslmode=require", h, nil, failure.AuthFailed)
	})
	t.Run("default root.crt in HOME is verified under require", func(t *testing.T) {
		h := pgtest.EmptyHome(t)
		other := testpki.NewRootCA(t, "not the server's CA")
		os.MkdirAll(filepath.Join(h, ".postgresql"), 0o700)
		if err := os.WriteFile(filepath.Join(h, ".postgresql", "root.crt"), other.CertPEM, 0o644); err != nil {
			t.Fatal(err)
		}
		dsn := fmt.Sprintf("host=127.0.0.1 port=%d dbname=postgres user=trusted connect_timeout=5 sslmode=require", s.Port)
		got := check(t, dsn, h, nil, failure.UnknownCA)
		if !strings.Contains(got.err.Error(), "certificate verify failed") {
			t.Fatalf("message %q", got.err)
		}
	})
}

func TestMultipleHostsAndTargetSessionAttrs(t *testing.T) {
	ca := testpki.NewRootCA(t, "multi root")
	good := ca.Server(t)
	primary := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: good.ChainPEM, ServerKey: good.KeyPEM})
	readonly := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: good.ChainPEM, ServerKey: good.KeyPEM,
		Conf: map[string]string{"default_transaction_read_only": "on"}})
	untrusted := testpki.SelfSigned(t, testpki.WithCN("localhost"), testpki.WithDNS("localhost"))
	bad := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: untrusted.CertPEM, ServerKey: untrusted.KeyPEM})
	closed := freePort(t)
	dir := t.TempDir()
	root := filepath.Join(dir, "root.crt")
	os.WriteFile(root, ca.CertPEM, 0o644)
	home := pgtest.EmptyHome(t)
	dsn := func(ports []int, extra string) string {
		hosts := make([]string, len(ports))
		ps := make([]string, len(ports))
		for i, p := range ports {
			hosts[i], ps[i] = "127.0.0.1", fmt.Sprint(p)
		}
		return fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres connect_timeout=5 sslrootcert=%s %s",
			strings.Join(hosts, ","), strings.Join(ps, ","), root, extra)
	}
	t.Run("refused first host, next one used", func(t *testing.T) {
		got := check(t, dsn([]int{closed, primary.Port}, "sslmode=verify-full"), home, nil, failure.OK)
		if len(got.facts.Attempts) != 2 {
			t.Fatalf("attempts %+v", got.facts.Attempts)
		}
	})
	t.Run("TLS verification failure on the first host stops everything", func(t *testing.T) {
		check(t, dsn([]int{bad.Port, primary.Port}, "sslmode=verify-full"), home, nil, failure.UnknownCA)
	})
	t.Run("read-write skips a read-only server", func(t *testing.T) {
		got := check(t, dsn([]int{readonly.Port, primary.Port}, "sslmode=verify-full target_session_attrs=read-write"), home, nil, failure.OK)
		if !strings.HasSuffix(got.facts.Address, fmt.Sprint(primary.Port)) {
			t.Fatalf("connected to %s", got.facts.Address)
		}
	})
	t.Run("read-only finds the read-only server", func(t *testing.T) {
		got := check(t, dsn([]int{primary.Port, readonly.Port}, "sslmode=verify-full target_session_attrs=read-only"), home, nil, failure.OK)
		if !strings.HasSuffix(got.facts.Address, fmt.Sprint(readonly.Port)) {
			t.Fatalf("connected to %s", got.facts.Address)
		}
	})
	t.Run("standby wanted, none there", func(t *testing.T) {
		check(t, dsn([]int{primary.Port, readonly.Port}, "sslmode=verify-full target_session_attrs=standby"), home, nil, failure.ConfigInvalid)
	})
	t.Run("prefer-standby falls back to any", func(t *testing.T) {
		check(t, dsn([]int{primary.Port}, "sslmode=verify-full target_session_attrs=prefer-standby"), home, nil, failure.OK)
	})
	t.Run("hostaddr with a verify-full host name", func(t *testing.T) {
		d := fmt.Sprintf("host=localhost hostaddr=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=verify-full sslrootcert=%s", primary.Port, root)
		check(t, d, home, nil, failure.OK)
	})
	t.Run("verify-full with only hostaddr", func(t *testing.T) {
		d := fmt.Sprintf("hostaddr=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=verify-full sslrootcert=%s", primary.Port, root)
		got := check(t, d, home, nil, failure.HostnameMismatch)
		if !strings.Contains(got.err.Error(), "host name must be specified for a verified SSL connection") {
			t.Fatalf("message %q", got.err)
		}
	})
	t.Run("Unix socket ignores sslmode", func(t *testing.T) {
		d := fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=require", primary.SocketDir, primary.Port)
		got := check(t, d, home, nil, failure.OK)
		if got.facts.Encrypted {
			t.Fatal("Unix socket connection reported as encrypted")
		}
	})
	// sslrootcert=system is libpq 16+: psql 15 takes "system" for a file
	// name, so these follow the PostgreSQL 16-18 documentation instead.
	t.Run("sslrootcert=system with a weak explicit sslmode", func(t *testing.T) {
		_, err := connstring.ParseWithEnv(fmt.Sprintf("host=127.0.0.1 port=%d user=postgres sslmode=require sslrootcert=system", primary.Port), nil, home)
		if failure.ClassOf(err) != failure.ConfigInvalid || !strings.Contains(err.Error(), `weak sslmode "require" may not be used with sslrootcert=system (use "verify-full")`) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("sslrootcert=system makes verify-full the default and uses the system roots", func(t *testing.T) {
		cfg, err := connstring.ParseWithEnv(fmt.Sprintf("host=localhost hostaddr=127.0.0.1 port=%d user=postgres dbname=postgres sslrootcert=system", primary.Port), nil, home)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.SSLMode != connstring.SSLVerifyFull {
			t.Fatalf("sslmode %s", cfg.SSLMode)
		}
		got := connectWith(t, cfg, nil)
		if failure.ClassOf(got.err) != failure.UnknownCA {
			t.Fatalf("a private test CA verified against the system roots: %v", got.err)
		}
	})
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestDirectNegotiation runs sslnegotiation=direct against a real
// PostgreSQL 18 server (psql 15 has no sslnegotiation, so the expectations
// are libpq 17/18's documented behaviour).
func TestDirectNegotiation(t *testing.T) {
	ca := testpki.NewRootCA(t, "direct root")
	srv := ca.Server(t)
	pg18 := pgtest.Start(t, pgtest.Options{Version: 18, SSL: true, ServerCert: srv.ChainPEM, ServerKey: srv.KeyPEM})
	pg15 := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: srv.ChainPEM, ServerKey: srv.KeyPEM})
	dir := t.TempDir()
	root := filepath.Join(dir, "root.crt")
	os.WriteFile(root, ca.CertPEM, 0o644)
	home := pgtest.EmptyHome(t)
	parse := func(dsn string) (*connstring.Config, error) {
		return connstring.ParseWithEnv(dsn, map[string]string{"HOME": home}, home)
	}
	t.Run("direct TLS with ALPN against PostgreSQL 18", func(t *testing.T) {
		cfg, err := parse(fmt.Sprintf("host=localhost hostaddr=127.0.0.1 port=%d user=postgres dbname=postgres sslnegotiation=direct sslmode=verify-full sslrootcert=%s", pg18.Port, root))
		if err != nil {
			t.Fatal(err)
		}
		got := connectWith(t, cfg, nil)
		if got.err != nil {
			t.Fatal(got.err)
		}
		if got.facts.Negotiation != "direct" || got.facts.ALPN != "postgresql" || got.facts.SSLResponse != 0 {
			t.Fatalf("negotiation %q alpn %q response %q", got.facts.Negotiation, got.facts.ALPN, got.facts.SSLResponse)
		}
	})
	t.Run("SSLRequest against PostgreSQL 18 negotiates ALPN too", func(t *testing.T) {
		cfg, _ := parse(fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=verify-full sslrootcert=%s", pg18.Port, root))
		got := connectWith(t, cfg, nil)
		if got.err != nil || got.facts.Negotiation != "postgres" || got.facts.SSLResponse != 'S' {
			t.Fatalf("%v %+v", got.err, got.facts)
		}
	})
	t.Run("direct TLS against PostgreSQL 15 fails clearly", func(t *testing.T) {
		cfg, _ := parse(fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslnegotiation=direct sslmode=require", pg15.Port))
		got := connectWith(t, cfg, nil)
		if got.err == nil {
			t.Fatal("direct TLS to PostgreSQL 15 succeeded")
		}
		e, _ := failure.As(got.err)
		if e == nil || e.Class != failure.ProtocolError || !strings.Contains(e.Evidence+e.Fix, "sslnegotiation") {
			t.Fatalf("got %v (evidence %q)", got.err, e.Evidence)
		}
	})
	t.Run("direct with a weak sslmode is refused", func(t *testing.T) {
		for _, mode := range []string{"disable", "allow", "prefer"} {
			_, err := parse(fmt.Sprintf("host=127.0.0.1 port=%d sslnegotiation=direct sslmode=%s", pg18.Port, mode))
			if failure.ClassOf(err) != failure.ConfigInvalid || !strings.Contains(err.Error(), `weak sslmode "`+mode+`" may not be used with sslnegotiation=direct`) {
				t.Fatalf("sslmode=%s: %v", mode, err)
			}
		}
	})
	t.Run("direct TLS to a TLS server without ALPN", func(t *testing.T) {
		addr := tlsServerWithoutALPN(t, srv)
		host, port, _ := net.SplitHostPort(addr)
		cfg, _ := parse(fmt.Sprintf("host=%s port=%s user=postgres sslnegotiation=direct sslmode=require", host, port))
		got := connectWith(t, cfg, nil)
		if got.err == nil || !strings.Contains(got.err.Error(), "direct SSL connection was established without ALPN protocol negotiation extension") {
			t.Fatalf("got %v", got.err)
		}
	})
}
