package config

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/proxy"
	"github.com/pgtrust/pgtrust/internal/scram"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

// scramGatewayDoc is a gateway in scram mode with every key of the mode;
// extra is appended to the gateway table.
func scramGatewayDoc(t *testing.T, userlist, extra string) (doc string, env map[string]string) {
	t.Helper()
	dir := t.TempDir()
	ca := testpki.NewRootCA(t, "gw scram config CA")
	leaf := ca.Server(t)
	cert := testpki.WriteFile(t, dir, "gw.crt", leaf.ChainPEM, 0o644)
	key := testpki.WriteFile(t, dir, "gw.key", leaf.KeyPEM, 0o600)
	list := testpki.WriteFile(t, dir, "userlist.txt", []byte(userlist), 0o600)
	upw := testpki.WriteFile(t, dir, "upstream.password", []byte("clear-pw\n"), 0o600)
	salt := testpki.WriteFile(t, dir, "fake-salt.key", []byte("0123456789abcdef0123456789abcdef\n"), 0o600)
	doc = fmt.Sprintf(`
[upstreams.db]
dsn = "host=/var/run/postgresql dbname=app sslmode=disable"

[upstreams.db.pool]
mode = "transaction"

[[upstreams.db.gateway]]
listen = ":5433"
auth = "scram"
cert_file = %q
key_file = %q
auth_file = %q
auth_user = "pgtrust_lookup"
auth_password_env = "PGTRUST_LOOKUP_PASSWORD"
auth_dbname = "postgres"
auth_query_ttl = "30s"
scram_iterations = 4096
fake_salt_key_file = %q
upstream_password_file = %q
require_channel_binding = true
%s
`, cert, key, list, salt, upw, extra)
	return doc, map[string]string{"PGTRUST_LOOKUP_PASSWORD": "hunter2"}
}

func TestGatewayScramConfig(t *testing.T) {
	v, err := scram.NewVerifier([]byte("s3cr3t-pw"), 4096, nil)
	if err != nil {
		t.Fatal(err)
	}
	doc, env := scramGatewayDoc(t, `"alice" "`+v.String()+`"`+"\n", "")
	f, err := Parse([]byte(doc))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	gws, err := f.gatewayConfigs("upstreams.db", f.Upstreams["db"], env)
	if err != nil {
		t.Fatalf("gatewayConfigs: %v", err)
	}
	g := gws[0]
	if g.Auth != proxy.AuthScram || !strings.HasSuffix(g.AuthFile, "userlist.txt") || g.ScramIterations != 4096 || !g.RequireChannelBinding {
		t.Fatalf("gateway %v", g)
	}
	if q := g.AuthQuery; q == nil || q.User != "pgtrust_lookup" || q.Password != "hunter2" || q.DBName != "postgres" || q.TTL != 30*time.Second || q.Query != "" {
		t.Fatalf("auth_query %+v", g.AuthQuery)
	}
	if string(g.FakeSaltKey) != "0123456789abcdef0123456789abcdef" || g.UpstreamPassword != "clear-pw" {
		t.Fatal("fake_salt_key_file or upstream_password_file not read")
	}
	if err := g.Validate("db", 0); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	for _, s := range []string{"hunter2", "clear-pw", "0123456789abcdef"} {
		if strings.Contains(fmt.Sprintf("%v %+v %#v", g, g, g), s) {
			t.Fatalf("a secret in the printed gateway config")
		}
	}
	for _, fd := range validate(f, env, time.Now()) {
		if fd.Status == StatusFail {
			t.Fatalf("validate: %+v", fd)
		}
	}
}

func TestGatewayScramConfigRefusals(t *testing.T) {
	v, err := scram.NewVerifier([]byte("s3cr3t-pw"), 4096, nil)
	if err != nil {
		t.Fatal(err)
	}
	good := `"alice" "` + v.String() + `"` + "\n"
	for _, c := range []struct{ name, table, want string }{
		{"scram without a source", "auth = \"scram\"\ncert_file = \"a\"\nkey_file = \"b\"", "needs auth_file or auth_user"},
		{"auth_query without auth_user", "auth = \"scram\"\ncert_file = \"a\"\nkey_file = \"b\"\nauth_file = \"u\"\nauth_query = \"SELECT 1, $1\"", "without auth_user"},
		{"auth_file on cluster_secret", "auth = \"cluster_secret\"\ncert_file = \"a\"\nkey_file = \"b\"\nauth_file = \"u\"", "auth_file is a key of auth = \"scram\""},
		{"auth_user on cert", "auth = \"cert\"\ncert_file = \"a\"\nkey_file = \"b\"\nauth_user = \"l\"", "auth_user is a key of auth = \"scram\""},
		{"two auth passwords", "auth = \"scram\"\ncert_file = \"a\"\nkey_file = \"b\"\nauth_user = \"l\"\nauth_password_file = \"p\"\nauth_password_env = \"E\"", "both auth_password_file and auth_password_env"},
		{"query without $1", "auth = \"scram\"\ncert_file = \"a\"\nkey_file = \"b\"\nauth_user = \"l\"\nauth_query = \"SELECT rolname, rolpassword FROM pg_authid\"", "does not use $1"},
		{"iterations out of range", "auth = \"scram\"\ncert_file = \"a\"\nkey_file = \"b\"\nauth_file = \"u\"\nscram_iterations = -1", "out of range"},
		{"role table in scram mode", "auth = \"scram\"\ncert_file = \"a\"\nkey_file = \"b\"\nauth_file = \"u\"\n[upstreams.db.gateway.roles.x]\nverifier_file = \"f\"", "cluster_secret's"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte("[upstreams.db]\ndsn = \"host=/tmp\"\n[[upstreams.db.gateway]]\n" + c.table + "\n"))
			if err == nil || !strings.Contains(err.Error(), c.want) || failure.ClassOf(err) != failure.ConfigInvalid {
				t.Fatalf("got %v, want %q", err, c.want)
			}
		})
	}
	t.Run("auth_file with an md5 hash: refused, never echoed", func(t *testing.T) {
		doc, env := scramGatewayDoc(t, good+`"bob" "md5`+strings.Repeat("ab", 16)+`"`+"\n", "")
		f, err := Parse([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.gatewayConfigs("upstreams.db", f.Upstreams["db"], env)
		if err == nil || !strings.Contains(err.Error(), "auth_file") || strings.Contains(failure.Text(err), strings.Repeat("ab", 16)) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("auth_file missing", func(t *testing.T) {
		doc, env := scramGatewayDoc(t, good, "")
		doc = strings.Replace(doc, "userlist.txt", filepath.Join("nope", "userlist.txt"), 1)
		f, err := Parse([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.gatewayConfigs("upstreams.db", f.Upstreams["db"], env); err == nil {
			t.Fatal("a missing auth_file accepted")
		}
	})
	t.Run("short fake_salt_key, never echoed", func(t *testing.T) {
		doc, env := scramGatewayDoc(t, good, "")
		doc = strings.Replace(doc, "fake_salt_key_file", "fake_salt_key_env = \"SALTKEY\"\n#", 1)
		env["SALTKEY"] = "hunter2"
		f, err := Parse([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.gatewayConfigs("upstreams.db", f.Upstreams["db"], env)
		if err == nil || !strings.Contains(err.Error(), "fewer than 16") || strings.Contains(failure.Text(err), "hunter2") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("auth password variable unset", func(t *testing.T) {
		doc, env := scramGatewayDoc(t, good, "")
		delete(env, "PGTRUST_LOOKUP_PASSWORD")
		f, _ := Parse([]byte(doc))
		if _, err := f.gatewayConfigs("upstreams.db", f.Upstreams["db"], env); err == nil || !strings.Contains(err.Error(), "PGTRUST_LOOKUP_PASSWORD") {
			t.Fatalf("got %v", err)
		}
	})
}
