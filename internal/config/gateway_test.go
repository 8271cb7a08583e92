package config

import (
	"fmt"
	"strings"
	"testing"
	"time"

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
		{"unknown RA-TLS provider", "ratls = \"sgx\"", "unknown provider"},
		{"both cert and RA-TLS", "ratls = \"simulator\"\ncert_file = \"a\"\nkey_file = \"b\"", "both cert_file and ratls"},
		{"verifier from two places", "cert_file = \"a\"\nkey_file = \"b\"\n[upstreams.db.gateway.roles.x]\nverifier_file = \"f\"\nverifier_env = \"E\"", "exactly one"},
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
