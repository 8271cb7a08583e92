package config

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/proxy"
	"github.com/pgtrust/pgtrust/internal/scram"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

// gatewayFile writes the TeeSQL-style configuration: verifiers in a file
// and an environment variable, the upstream passwords likewise.
func gatewayFile(t *testing.T, readSalt []byte) (string, map[string]string) {
	t.Helper()
	dir := t.TempDir()
	ca := testpki.NewRootCA(t, "gw config CA")
	leaf := ca.Server(t)
	cert := testpki.WriteFile(t, dir, "gw.crt", leaf.ChainPEM, 0o644)
	key := testpki.WriteFile(t, dir, "gw.key", leaf.KeyPEM, 0o600)
	rw, err := scram.NewVerifier([]byte("s3cr3t-pw"), 4096, nil)
	if err != nil {
		t.Fatal(err)
	}
	if readSalt == nil {
		readSalt = rw.Salt
	}
	read, err := scram.NewVerifier([]byte("hunter2"), 4096, readSalt)
	if err != nil {
		t.Fatal(err)
	}
	rwFile := testpki.WriteFile(t, dir, "rw.verifier", []byte(rw.String()+"\n"), 0o600)
	pwFile := testpki.WriteFile(t, dir, "rw.password", []byte("clear-pw\n"), 0o600)
	doc := fmt.Sprintf(`
[upstreams.db]
dsn = "host=/var/run/postgresql dbname=app sslmode=disable"

[[upstreams.db.gateway]]
listen = ":5433"
auth = "cluster_secret"
cert_file = %q
key_file = %q

[upstreams.db.gateway.roles.teesql_readwrite]
role = "app_rw"
verifier_file = %q
password_file = %q

[upstreams.db.gateway.roles.teesql_read]
role = "app_read"
verifier_env = "TEESQL_READ_VERIFIER"
password_env = "APP_READ_PASSWORD"
`, cert, key, rwFile, pwFile)
	return doc, map[string]string{"TEESQL_READ_VERIFIER": read.String(), "APP_READ_PASSWORD": "scram-pw"}
}

func TestGatewayConfig(t *testing.T) {
	doc, env := gatewayFile(t, nil)
	f, err := Parse([]byte(doc))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	gws, err := f.gatewayConfigs("upstreams.db", f.Upstreams["db"], env)
	if err != nil {
		t.Fatalf("gatewayConfigs: %v", err)
	}
	if len(gws) != 1 || gws[0].Auth != proxy.AuthClusterSecret || len(gws[0].Roles) != 2 {
		t.Fatalf("gateways %v", gws)
	}
	byUser := map[string]proxy.GatewayRole{}
	for _, r := range gws[0].Roles {
		byUser[r.User] = r
	}
	read, rw := byUser["teesql_read"], byUser["teesql_readwrite"]
	if read.Role != "app_read" || rw.Role != "app_rw" || read.Password != "scram-pw" || rw.Password != "clear-pw" {
		t.Fatalf("roles: read %s/%s rw %s/%s", read.User, read.Role, rw.User, rw.Role)
	}
	// The TeeSQL default: the readwrite secret may log in as read, never the reverse.
	if len(read.DowngradeFrom) != 1 || read.DowngradeFrom[0] != "teesql_readwrite" || len(rw.DowngradeFrom) != 0 {
		t.Fatalf("downgrades: read %v, readwrite %v", read.DowngradeFrom, rw.DowngradeFrom)
	}
	if err := gws[0].Validate("db", 0); err != nil {
		t.Fatalf("validate: %v", err)
	}
	for _, fd := range validate(f, env, time.Now()) {
		if fd.Status == StatusFail {
			t.Fatalf("finding %+v", fd)
		}
	}
}

func TestGatewayConfigRefusals(t *testing.T) {
	t.Run("downgrade pair with different salts", func(t *testing.T) {
		doc, env := gatewayFile(t, []byte("0123456789abcdef"))
		f, err := Parse([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		var found *Finding
		for _, fd := range validate(f, env, time.Now()) {
			if fd.Status == StatusFail {
				found = &fd
			}
		}
		if found == nil || !strings.Contains(found.Fix, "hash-secret --like") {
			t.Fatalf("want a failure with the --like fix, got %+v", found)
		}
	})
	t.Run("verifier that does not parse, never echoed", func(t *testing.T) {
		doc, env := gatewayFile(t, nil)
		env["TEESQL_READ_VERIFIER"] = "SCRAM-SHA-256$4096:hunter2"
		f, err := Parse([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.gatewayConfigs("upstreams.db", f.Upstreams["db"], env)
		if failure.ClassOf(err) != failure.ConfigInvalid || strings.Contains(failure.Text(err), "hunter2") {
			t.Fatalf("got %v", failure.Text(err))
		}
	})
	t.Run("missing environment variable", func(t *testing.T) {
		doc, env := gatewayFile(t, nil)
		delete(env, "APP_READ_PASSWORD")
		f, _ := Parse([]byte(doc))
		if _, err := f.gatewayConfigs("upstreams.db", f.Upstreams["db"], env); err == nil || !strings.Contains(err.Error(), "APP_READ_PASSWORD") {
			t.Fatalf("got %v", err)
		}
	})
	for _, c := range []struct{ name, table, want string }{
		{"password mode not offered", "auth = \"password\"\ncert_file = \"a\"\nkey_file = \"b\"", "not offered"},
		{"md5 mode not offered", "auth = \"md5\"\ncert_file = \"a\"\nkey_file = \"b\"", "not offered"},
		{"no certificate", "auth = \"passthrough\"", "TLS is mandatory"},
		{"auth is required", "cert_file = \"a\"\nkey_file = \"b\"", "auth is required"},
		{"unknown RA-TLS provider", "auth = \"cert\"\nratls = \"sgx\"", "unknown provider"},
		{"both cert and RA-TLS", "auth = \"cert\"\nratls = \"simulator\"\ncert_file = \"a\"\nkey_file = \"b\"", "both cert_file and ratls"},
		{"verifier from two places", "auth = \"cluster_secret\"\ncert_file = \"a\"\nkey_file = \"b\"\n[upstreams.db.gateway.roles.x]\nverifier_file = \"f\"\nverifier_env = \"E\"", "exactly one"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte("[upstreams.db]\ndsn = \"host=/tmp\"\n[[upstreams.db.gateway]]\n" + c.table + "\n"))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want %q", err, c.want)
			}
		})
	}
}

func TestUpstreamAuthConfig(t *testing.T) {
	f, err := Parse([]byte("[upstreams.db]\nlisten = \"127.0.0.1:6432\"\ndsn = \"host=/tmp sslmode=disable\"\n[upstreams.db.auth]\nrole = \"app\"\npassword_env = \"APP_PW\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := f.upstreamAuth("upstreams.db", f.Upstreams["db"], map[string]string{"APP_PW": "pw-secret"})
	if err != nil || a == nil || a.Role != "app" || a.Password != "pw-secret" {
		t.Fatalf("auth %v, %v", a, err)
	}
	if _, err := f.upstreamAuth("upstreams.db", f.Upstreams["db"], map[string]string{}); err == nil || !strings.Contains(err.Error(), "APP_PW") {
		t.Fatalf("missing variable: %v", err)
	}
	if s := fmt.Sprintf("%v %+v", *a, *a); strings.Contains(s, "pw-secret") {
		t.Fatalf("UpstreamAuth prints its password: %s", s)
	}
}

// TestCheckGatewayRolesAttests: the role check connects with the gateway's
// own upstream passwords, so it applies the upstream's attestation policy
// as the running gateway does: a TLS server with an ordinary certificate
// that asks for a cleartext password never receives it, and the check
// fails with the attestation class.
func TestCheckGatewayRolesAttests(t *testing.T) {
	leaf := testpki.NewRootCA(t, "not attested").Server(t)
	cert, err := tls.X509KeyPair(leaf.ChainPEM, leaf.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		hdr := make([]byte, 8)
		if _, err := io.ReadFull(c, hdr); err != nil {
			return
		}
		c.Write([]byte{'S'})
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
		be := pgproto3.NewBackend(tc, tc)
		if _, err := be.ReceiveStartupMessage(); err != nil {
			return
		}
		be.Send(&pgproto3.AuthenticationCleartextPassword{})
		if be.Flush() != nil {
			return
		}
		be.SetAuthType(pgproto3.AuthTypeCleartextPassword)
		if m, err := be.Receive(); err == nil {
			if pw, ok := m.(*pgproto3.PasswordMessage); ok {
				got <- pw.Password
			}
		}
	}()
	dir := t.TempDir()
	v, err := scram.NewVerifier([]byte("s3cr3t-pw"), 4096, nil)
	if err != nil {
		t.Fatal(err)
	}
	testpki.WriteFile(t, dir, "rw.verifier", []byte(v.String()), 0o600)
	testpki.WriteFile(t, dir, "rw.pw", []byte("clear-pw\n"), 0o600)
	gw := testpki.NewRootCA(t, "gateway").Server(t)
	toml := fmt.Sprintf(`
[upstreams.db]
dsn = "host=127.0.0.1 port=%d dbname=app sslmode=require"
[upstreams.db.attestation]
allowed_mrtds = ["%s"]
skip_tcb = true
[[upstreams.db.gateway]]
auth = "cluster_secret"
cert_file = "%s"
key_file = "%s"
[upstreams.db.gateway.roles.teesql_readwrite]
role = "app_rw"
verifier_file = "%s"
password_file = "%s"
`, ln.Addr().(*net.TCPAddr).Port, strings.Repeat("ab", 48),
		testpki.WriteFile(t, dir, "gw.crt", gw.ChainPEM, 0o644), testpki.WriteFile(t, dir, "gw.key", gw.KeyPEM, 0o600),
		filepath.Join(dir, "rw.verifier"), filepath.Join(dir, "rw.pw"))
	f, err := Parse([]byte(toml))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	findings := CheckGatewayRoles(ctx, f)
	select {
	case pw := <-got:
		t.Fatalf("an unattested upstream received the gateway's password (%d bytes)", len(pw))
	default:
	}
	if len(findings) != 1 || findings[0].Status != StatusFail || !strings.HasPrefix(string(findings[0].Class), "attestation_") {
		t.Fatalf("findings %+v, want one attestation failure", findings)
	}
}

// TestValidateUpstreamRules: pgtrust config validate reports the
// upstream-level refusals the proxy makes at start — a passthrough gateway
// whose upstream is a Unix socket (it would lend the gateway's own peer or
// trust login to remote clients) and an auth table on a public listener.
func TestValidateUpstreamRules(t *testing.T) {
	dir := t.TempDir()
	leaf := testpki.NewRootCA(t, "gw validate CA").Server(t)
	cert := testpki.WriteFile(t, dir, "gw.crt", leaf.ChainPEM, 0o644)
	key := testpki.WriteFile(t, dir, "gw.key", leaf.KeyPEM, 0o600)
	t.Setenv("APP_PW", "pw-secret")
	for _, c := range []struct{ name, doc, upstream, want string }{
		{"passthrough over a Unix socket", fmt.Sprintf(`
[upstreams.db]
dsn = "host=/var/run/postgresql dbname=app sslmode=disable"
[[upstreams.db.gateway]]
auth = "passthrough"
cert_file = %q
key_file = %q
`, cert, key), "upstreams.db", "Unix"},
		{"auth on a public listener", `
[upstreams.lo]
listen = "0.0.0.0:6432"
dsn = "host=/tmp sslmode=disable"
[upstreams.lo.auth]
role = "app"
password_env = "APP_PW"
`, "upstreams.lo", "loopback"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f, err := Parse([]byte(c.doc))
			if err != nil {
				t.Fatal(err)
			}
			var found *Finding
			for _, fd := range Validate(f) {
				if fd.Check == c.upstream && fd.Status == StatusFail {
					found = &fd
				}
			}
			if found == nil || found.Class != failure.ConfigInvalid || !strings.Contains(found.Message+found.Evidence+found.Fix, c.want) {
				t.Fatalf("no %s failure mentioning %q in %+v", c.upstream, c.want, Validate(f))
			}
			if strings.Contains(fmt.Sprintf("%+v", found), "pw-secret") {
				t.Fatal("the finding shows the password")
			}
		})
	}
}
