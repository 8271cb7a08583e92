package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
)

// wantInvalid asserts a config_invalid error whose text (message,
// evidence, fix) contains every want.
func wantInvalid(t *testing.T, err error, want ...string) *failure.Error {
	t.Helper()
	fe, ok := failure.As(err)
	if !ok || fe.Class != failure.ConfigInvalid {
		t.Fatalf("want config_invalid, got %v", err)
	}
	text := fe.Error() + "\n" + fe.Evidence + "\n" + fe.Fix
	for _, w := range want {
		if !strings.Contains(text, w) {
			t.Fatalf("error lacks %q:\n%s", w, text)
		}
	}
	if fe.Fix == "" {
		t.Fatalf("no fix: %s", text)
	}
	return fe
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestVaultTableOptions(t *testing.T) {
	v := VaultTable{Addr: "https://vault.example:8200", PKIRole: "pki/issue/epoch-client", Token: "hvs.secret-token", TTL: Duration(time.Hour),
		IPSANs: []string{"127.0.0.1"}, AltNames: []string{"db.example"}, Namespace: "ns1", TrustIssuedCA: true}
	vo, ro, err := v.Options("upstreams.main.vault", "epoch_user")
	if err != nil {
		t.Fatal(err)
	}
	if vo.Mount != "pki" || vo.Role != "epoch-client" || vo.CommonName != "epoch_user" || vo.TTL != time.Hour || vo.Token != "hvs.secret-token" ||
		vo.Namespace != "ns1" || len(vo.IPSANs) != 1 || vo.AltNames[0] != "db.example" {
		t.Fatalf("vault options: %v", vo)
	}
	if ro.Threshold != 0.7 || ro.Jitter != 0.05 || !ro.TrustIssuedCA {
		t.Fatalf("renew options: %+v", ro)
	}
	if strings.Contains(v.String(), "hvs.secret-token") {
		t.Fatalf("String shows the token: %s", v.String())
	}
	v.CommonName = "explicit"
	if vo, _, _ := v.Options("w", "epoch_user"); vo.CommonName != "explicit" {
		t.Fatalf("common_name %q", vo.CommonName)
	}
}

func TestVaultTableRefusals(t *testing.T) {
	dir := t.TempDir()
	tokenFile := writeFile(t, dir, "token", "hvs.x\n")
	base := func() VaultTable {
		return VaultTable{Addr: "https://vault.example:8200", PKIRole: "pki/issue/epoch-client"}
	}
	cases := []struct {
		name string
		edit func(*VaultTable)
		cn   string
		want []string
	}{
		{"pki_role shape", func(v *VaultTable) { v.PKIRole = "epoch-client" }, "u",
			[]string{"upstreams.main.vault.pki_role", `"epoch-client"`, "<mount>/issue/<role>", "pki/issue/epoch-client"}},
		{"pki_role two segments", func(v *VaultTable) { v.PKIRole = "pki/epoch-client" }, "u", []string{"pki_role", "<mount>/issue/<role>"}},
		{"no pki_role", func(v *VaultTable) { v.PKIRole = "" }, "u", []string{"upstreams.main.vault.pki_role", "not set"}},
		{"no addr", func(v *VaultTable) { v.Addr = "" }, "u", []string{"upstreams.main.vault.addr"}},
		{"addr not a URL", func(v *VaultTable) { v.Addr = "vault:8200" }, "u", []string{"addr", "not an http(s) URL"}},
		{"no common name", func(*VaultTable) {}, "", []string{"upstreams.main.vault.common_name"}},
		{"threshold 1", func(v *VaultTable) { v.RenewalThreshold = 1 }, "u", []string{"renewal_threshold", "between 0 and 1", "0.7"}},
		{"threshold negative", func(v *VaultTable) { v.RenewalThreshold = -0.5 }, "u", []string{"renewal_threshold"}},
		{"jitter above threshold", func(v *VaultTable) { v.RenewalThreshold = 0.5; v.RenewalJitter = 0.6 }, "u", []string{"renewal_jitter", "threshold 0.5"}},
		{"token and approle", func(v *VaultTable) {
			v.Token = "hvs.secret-token"
			v.AppRole = &struct {
				Mount        string `toml:"mount"`
				RoleIDFile   string `toml:"role_id_file"`
				SecretIDFile string `toml:"secret_id_file"`
			}{RoleIDFile: tokenFile, SecretIDFile: tokenFile}
		}, "u", []string{"several ways to log in", "upstreams.main.vault.approle", "upstreams.main.vault.token"}},
		{"token and token_file", func(v *VaultTable) { v.Token = "hvs.secret-token"; v.TokenFile = tokenFile }, "u", []string{"token_file"}},
		{"token_file missing", func(v *VaultTable) { v.TokenFile = filepath.Join(dir, "absent") }, "u", []string{"upstreams.main.vault.token_file", "absent"}},
		{"approle incomplete", func(v *VaultTable) {
			v.AppRole = &struct {
				Mount        string `toml:"mount"`
				RoleIDFile   string `toml:"role_id_file"`
				SecretIDFile string `toml:"secret_id_file"`
			}{RoleIDFile: tokenFile}
		}, "u", []string{"approle", "secret_id_file"}},
		{"kubernetes without role", func(v *VaultTable) {
			v.Kubernetes = &struct {
				Mount   string `toml:"mount"`
				Role    string `toml:"role"`
				JWTFile string `toml:"jwt_file"`
			}{}
		}, "u", []string{"kubernetes.role"}},
		{"ip_sans not an IP", func(v *VaultTable) { v.IPSANs = []string{"db.example"} }, "u", []string{"ip_sans[0]", "alt_names"}},
		{"ca_cert missing", func(v *VaultTable) { v.CACert = filepath.Join(dir, "nope.crt") }, "u", []string{"ca_cert"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := base()
			c.edit(&v)
			_, _, err := v.Options("upstreams.main.vault", c.cn)
			fe := wantInvalid(t, err, c.want...)
			if strings.Contains(fe.Error()+fe.Evidence+fe.Fix, "hvs.secret-token") {
				t.Fatalf("the token is in the error: %v", fe)
			}
		})
	}
}

func TestStepTableOptions(t *testing.T) {
	dir := t.TempDir()
	root := writeFile(t, dir, "root.crt", "x")
	key := writeFile(t, dir, "prov.json", "{}")
	pw := writeFile(t, dir, "pw", "x")
	tok := writeFile(t, dir, "token", "x")
	ok := StepTable{CAURL: "https://127.0.0.1:9000", Root: root, Provisioner: "admin", ProvisionerKeyFile: key, ProvisionerPasswordFile: pw,
		SANs: []string{"db.example"}, Duration: Duration(5 * time.Minute), RenewalThreshold: 0.6}
	so, ro, err := ok.Options("upstreams.main.step", "app")
	if err != nil {
		t.Fatal(err)
	}
	if so.CommonName != "app" || so.RootFile != root || so.Duration != 5*time.Minute || ro.Threshold != 0.6 || ro.Jitter != 0.05 {
		t.Fatalf("%+v %+v", so, ro)
	}
	withToken := StepTable{CAURL: "https://127.0.0.1:9000", Root: root, TokenFile: tok}
	if _, _, err := withToken.Options("s", "app"); err != nil {
		t.Fatalf("token file: %v", err)
	}
	cases := []struct {
		name string
		edit func(*StepTable)
		want []string
	}{
		{"key and token", func(s *StepTable) { s.TokenFile = tok }, []string{"both provisioner_key_file and token_file"}},
		{"neither", func(s *StepTable) { s.ProvisionerKeyFile, s.ProvisionerPasswordFile = "", "" }, []string{"neither provisioner_key_file nor token_file"}},
		{"key without password", func(s *StepTable) { s.ProvisionerPasswordFile = "" }, []string{"provisioner_password_file"}},
		{"key without provisioner", func(s *StepTable) { s.Provisioner = "" }, []string{"upstreams.main.step.provisioner"}},
		{"key file missing", func(s *StepTable) { s.ProvisionerKeyFile = filepath.Join(dir, "absent.json") }, []string{"provisioner_key_file", "absent.json"}},
		{"root missing", func(s *StepTable) { s.Root = filepath.Join(dir, "absent.crt") }, []string{"upstreams.main.step.root"}},
		{"http URL", func(s *StepTable) { s.CAURL = "http://127.0.0.1:9000" }, []string{"ca_url", "https"}},
		{"jitter", func(s *StepTable) { s.RenewalJitter = 0.9 }, []string{"renewal_jitter"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := ok
			c.edit(&s)
			_, _, err := s.Options("upstreams.main.step", "app")
			wantInvalid(t, err, c.want...)
		})
	}
}

func TestExpandEnv(t *testing.T) {
	type inner struct {
		Token string   `toml:"token"`
		List  []string `toml:"list"`
	}
	type doc struct {
		Path     string         `toml:"-"`
		DSN      string         `toml:"dsn"`
		Inner    *inner         `toml:"inner"`
		Settings map[string]any `toml:"settings"`
		Tables   map[string]*inner
		Count    int `toml:"count"`
	}
	env := map[string]string{"PW": "s3cret-pw", "HOST": "db.internal", "TOK": "hvs.tok"}
	getenv := func(k string) string { return env[k] }
	d := &doc{Path: "${NOT_EXPANDED}", DSN: "host=${HOST} password=${PW} note=$${literal} $HOME",
		Inner:    &inner{Token: "${TOK}", List: []string{"a-${HOST}", "b"}},
		Settings: map[string]any{"host": "${HOST}", "nested": map[string]any{"x": []any{"${PW}", int64(3)}}, "port": int64(5432)},
		Tables:   map[string]*inner{"t": {Token: "${TOK}"}}}
	if err := ExpandEnv(d, "", getenv); err != nil {
		t.Fatal(err)
	}
	if d.DSN != "host=db.internal password=s3cret-pw note=${literal} $HOME" || d.Inner.Token != "hvs.tok" || d.Inner.List[0] != "a-db.internal" ||
		d.Settings["host"] != "db.internal" || d.Tables["t"].Token != "hvs.tok" || d.Path != "${NOT_EXPANDED}" || d.Settings["port"] != int64(5432) {
		t.Fatalf("expanded: %+v %+v %+v", d, d.Inner, d.Settings)
	}
	if x := d.Settings["nested"].(map[string]any)["x"].([]any); x[0] != "s3cret-pw" || x[1] != int64(3) {
		t.Fatalf("nested: %v", x)
	}

	missing := &doc{DSN: "password=${PW}", Settings: map[string]any{"sslpassword": "${MISSING_VAR}"}}
	err := ExpandEnv(missing, "storage", getenv)
	fe := wantInvalid(t, err, "storage.settings.sslpassword", "MISSING_VAR")
	if strings.Contains(fe.Error()+fe.Evidence+fe.Fix, "s3cret-pw") {
		t.Fatalf("a value is in the error: %v", fe)
	}
	for _, bad := range []string{"${UNTERMINATED", "${1BAD}", "${}"} {
		wantInvalid(t, ExpandEnv(&doc{DSN: bad}, "", getenv), "dsn")
	}
	if err := ExpandEnv(&doc{DSN: "${EMPTY}"}, "", func(string) string { return "" }); err == nil {
		t.Fatal("an empty variable was accepted")
	}
}

func TestLoadExpandsEnv(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("PGTRUST_TEST_HOST", "db.internal")
	p := writeFile(t, dir, "proxy.toml", `
[upstreams.main]
listen = "127.0.0.1:6432"
[upstreams.main.settings]
host = "${PGTRUST_TEST_HOST}"
sslmode = "disable"
`)
	f, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if f.Upstreams["main"].Settings["host"] != "db.internal" {
		t.Fatalf("settings: %v", f.Upstreams["main"].Settings)
	}
	p2 := writeFile(t, dir, "missing.toml", `
[upstreams.main]
listen = "127.0.0.1:6432"
dsn = "host=db password=${PGTRUST_TEST_UNSET_VAR}"
`)
	_, err = Load(p2)
	wantInvalid(t, err, p2, "upstreams.main.dsn", "PGTRUST_TEST_UNSET_VAR")
}

// Seed 001's epoch.toml, as the seed writes it.
const seedEpoch = `# epoch.toml
[storage.postgres.production]
host = "db.example.com"
database = "production"
username = "epoch_user"
sslmode = "verify-full"
ssl_cert = "/etc/epoch/certs/client.crt"
ssl_key = "/etc/epoch/certs/client.key"
ssl_rootcert = "/etc/epoch/certs/ca.crt"
`

func TestStorageTables(t *testing.T) {
	f, err := Parse([]byte(seedEpoch))
	if err != nil {
		t.Fatal(err)
	}
	u := f.Upstreams["production"]
	if u == nil || u.Listen != DefaultListen || u.Vault != nil {
		t.Fatalf("upstream: %v", u)
	}
	for k, want := range map[string]string{"host": "db.example.com", "dbname": "production", "user": "epoch_user", "sslmode": "verify-full",
		"sslcert": "/etc/epoch/certs/client.crt", "sslkey": "/etc/epoch/certs/client.key", "sslrootcert": "/etc/epoch/certs/ca.crt"} {
		if u.Settings[k] != want {
			t.Fatalf("settings[%s] = %v, want %s", k, u.Settings[k], want)
		}
	}
	cfg, err := f.upstream("production", map[string]string{"HOME": t.TempDir()})
	if err != nil || cfg.User != "epoch_user" || cfg.SSLCert != "/etc/epoch/certs/client.crt" {
		t.Fatalf("resolved: %v %v", cfg, err)
	}
	// --listen / PGTRUST_LISTEN address the single upstream.
	if err := f.ApplyFlags(map[string]string{"listen": "127.0.0.1:7000"}); err != nil || u.Listen != "127.0.0.1:7000" {
		t.Fatalf("--listen: %v %q", err, u.Listen)
	}

	vaultSeed := `
[storage.postgres.production]
host = "db.example.com"
port = 5433
database = "production"
username = "epoch_user"
sslmode = "verify-full"
vault_addr = "https://vault.example.com:8200"
vault_token = "${VAULT_TOKEN}"
vault_pki_role = "pki/issue/epoch-client"
cert_renewal_threshold = 0.7
ssl_rootcert = "/etc/epoch/certs/ca.crt"
`
	f, err = ParseEnv([]byte(vaultSeed), func(k string) string {
		if k == "VAULT_TOKEN" {
			return "hvs.seed-token"
		}
		return ""
	})
	if err != nil {
		t.Fatal(err)
	}
	u = f.Upstreams["production"]
	if u.Vault == nil || u.Vault.Token != "hvs.seed-token" || u.Settings["port"] != "5433" {
		t.Fatalf("vault seed: %+v", u)
	}
	r, err := f.clientRenewal("production", u, "epoch_user")
	if err != nil || r == nil || r.Options.Threshold != 0.7 {
		t.Fatalf("renewal: %+v %v", r, err)
	}
	_, err = ParseEnv([]byte(vaultSeed), func(string) string { return "" })
	wantInvalid(t, err, "storage.postgres.production.vault_token", "VAULT_TOKEN")

	bad := strings.Replace(vaultSeed, `"pki/issue/epoch-client"`, `"epoch-client"`, 1)
	f, err = ParseEnv([]byte(bad), func(string) string { return "hvs.seed-token" })
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.clientRenewal("production", f.Upstreams["production"], "epoch_user")
	wantInvalid(t, err, "storage.postgres.production.vault_pki_role", `"epoch-client"`, "<mount>/issue/<role>")

	refusals := []struct {
		name, doc string
		want      []string
	}{
		{"name used twice", seedEpoch + "\n[upstreams.production]\nlisten = \"127.0.0.1:6433\"\ndsn = \"host=x\"\n", []string{"[upstreams.production]", "[storage.postgres.production]"}},
		{"several without listen", seedEpoch + strings.ReplaceAll(seedEpoch, "production", "staging"), []string{"storage.postgres.", ".listen", "listen ="}},
		{"unknown key", seedEpoch + "bogus_key = 1\n", []string{"unknown key", "bogus_key"}},
		{"vault and ssl_cert", seedEpoch + "vault_pki_role = \"pki/issue/x\"\n", []string{"vault_pki_role", "ssl_cert"}},
		{"vault keys without role", strings.Replace(vaultSeed, "vault_pki_role = \"pki/issue/epoch-client\"\n", "", 1), []string{"vault_pki_role", "not"}},
		{"no host", "[storage.postgres.p]\ndatabase = \"d\"\n", []string{"storage.postgres.p.host"}},
	}
	for _, c := range refusals {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseEnv([]byte(c.doc), func(string) string { return "hvs.seed-token" })
			wantInvalid(t, err, c.want...)
		})
	}
	// Several tables, each with its listen, are several upstreams.
	two := strings.Replace(seedEpoch, "[storage.postgres.production]", "[storage.postgres.production]\nlisten = \"127.0.0.1:6432\"", 1) +
		strings.Replace(strings.ReplaceAll(seedEpoch, "production", "staging"), "[storage.postgres.staging]", "[storage.postgres.staging]\nlisten = \"127.0.0.1:6433\"", 1)
	f, err = Parse([]byte(two))
	if err != nil || len(f.Upstreams) != 2 {
		t.Fatalf("two tables: %v %v", err, f)
	}
}

func TestUpstreamRenewalTables(t *testing.T) {
	base := `
[upstreams.main]
listen = "127.0.0.1:6432"
dsn = "host=db user=app sslmode=verify-full sslrootcert=/etc/ca.crt"
[upstreams.main.vault]
addr = "https://vault.example:8200"
pki_role = "pki/issue/app"
token = "hvs.x"
`
	f, err := Parse([]byte(base))
	if err != nil {
		t.Fatal(err)
	}
	r, err := f.clientRenewal("main", f.Upstreams["main"], "app")
	if err != nil || r == nil {
		t.Fatalf("%v %v", r, err)
	}
	f2, _ := Parse([]byte(base))
	r2, _ := f2.clientRenewal("main", f2.Upstreams["main"], "app")
	f3, _ := Parse([]byte(strings.Replace(base, "pki/issue/app", "pki/issue/app2", 1)))
	r3, _ := f3.clientRenewal("main", f3.Upstreams["main"], "app")
	if r.Key != r2.Key || r.Key == r3.Key {
		t.Fatal("the table key does not follow the table's content")
	}
	for name, doc := range map[string]string{
		"sslcert in dsn": strings.Replace(base, "sslrootcert=/etc/ca.crt", "sslrootcert=/etc/ca.crt sslcert=/c.crt sslkey=/c.key", 1),
		"vault and step": base + "[upstreams.main.step]\nca_url = \"https://ca:9000\"\n",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse([]byte(doc))
			wantInvalid(t, err, "upstreams.main")
		})
	}
	// DB_SSL_CLIENT_CERT names a file certificate too.
	f, _ = Parse([]byte(base))
	wantInvalid(t, f.ApplyEnv(map[string]string{"DB_SSL_CLIENT_CERT": "/c.crt"}), "DB_SSL_CLIENT_CERT")

	gw := `
[upstreams.main]
dsn = "host=db user=app sslmode=verify-full sslrootcert=/etc/ca.crt"
[[upstreams.main.gateway]]
listen = "127.0.0.1:5433"
auth = "passthrough"
[upstreams.main.gateway.vault]
addr = "https://vault.example:8200"
pki_role = "pki/issue/server"
token = "hvs.x"
`
	f, err = Parse([]byte(gw + "common_name = \"db.example\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if g := f.Upstreams["main"].Gateway[0]; g.Vault == nil || g.Vault.CommonName != "db.example" {
		t.Fatalf("gateway vault table: %+v", g)
	}
	gws, err := f.gatewayConfigs("upstreams.main", f.Upstreams["main"], map[string]string{})
	if err != nil || gws[0].Renewal == nil {
		t.Fatalf("gateway renewal: %v %v", gws, err)
	}
	f, err = Parse([]byte(gw))
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.gatewayConfigs("upstreams.main", f.Upstreams["main"], map[string]string{})
	wantInvalid(t, err, "upstreams.main.gateway[0].vault.common_name")
	_, err = Parse([]byte(strings.Replace(gw, "auth = \"passthrough\"", "auth = \"passthrough\"\ncert_file = \"/a\"\nkey_file = \"/b\"", 1)))
	wantInvalid(t, err, "both cert_file and [upstreams.main.gateway[0].vault] are given", "keep one source")
}

func TestVaultTableTOMLLogins(t *testing.T) {
	doc := `
[upstreams.main]
listen = "127.0.0.1:6432"
dsn = "host=db user=app sslmode=verify-full sslrootcert=/etc/ca.crt"
[upstreams.main.vault]
addr = "https://vault.example:8200"
pki_role = "pki/issue/app"
request_timeout = "3s"
ip_sans = ["127.0.0.1"]
[upstreams.main.vault.approle]
mount = "ar"
role_id_file = "/run/role_id"
secret_id_file = "/run/secret_id"
`
	f, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	v := f.Upstreams["main"].Vault
	if v.AppRole == nil || v.AppRole.Mount != "ar" || v.AppRole.RoleIDFile != "/run/role_id" || v.AppRole.SecretIDFile != "/run/secret_id" || v.RequestTimeout.D() != 3*time.Second {
		t.Fatalf("approle: %+v", v.AppRole)
	}
	k8s := strings.Replace(doc, "[upstreams.main.vault.approle]\nmount = \"ar\"\nrole_id_file = \"/run/role_id\"\nsecret_id_file = \"/run/secret_id\"",
		"[upstreams.main.vault.kubernetes]\nrole = \"pgtrust\"\njwt_file = \"/run/jwt\"", 1)
	f, err = Parse([]byte(k8s))
	if err != nil {
		t.Fatal(err)
	}
	if kc := f.Upstreams["main"].Vault.Kubernetes; kc == nil || kc.Role != "pgtrust" || kc.JWTFile != "/run/jwt" {
		t.Fatalf("kubernetes: %+v", kc)
	}
	_, err = Parse([]byte(doc + "role_idfile = \"x\"\n"))
	wantInvalid(t, err, "unknown key", "upstreams.main.vault.approle.role_idfile")
}

func TestStorageVaultCACert(t *testing.T) {
	doc := `
[storage.postgres.production]
host = "db.example.com"
username = "epoch_user"
vault_addr = "https://vault.example.com:8200"
vault_token = "hvs.x"
vault_pki_role = "pki/issue/epoch-client"
vault_ca_cert = "/nonexistent/vault-ca.crt"
`
	f, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	u := f.Upstreams["production"]
	if u.Vault.CACert != "/nonexistent/vault-ca.crt" {
		t.Fatalf("ca_cert %q", u.Vault.CACert)
	}
	_, err = f.clientRenewal("production", u, "epoch_user")
	wantInvalid(t, err, "storage.postgres.production.vault_ca_cert", "/nonexistent/vault-ca.crt")
}
