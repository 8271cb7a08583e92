package config

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

// testEnv is a clean environment: no PG* variable of the machine leaks in.
func testEnv(home string) map[string]string { return map[string]string{"HOME": home, "PGUSER": "app"} }

const full = `
[log]
format = "json"
level = "debug"

[health]
listen = "127.0.0.1:9191"
probe_interval = "10s"

[proxy]
drain_timeout = "45s"
startup_timeout = "3s"

[upstreams.main]
listen = "127.0.0.1:6432"
unix_socket_dir = "/run/pgtrust"
max_connections = 20
dsn = "host=db.internal sslmode=verify-ca sslrootcert=/etc/ca.crt password=hunter2"

[upstreams.main.client_tls]
auto_cert_dir = "/var/lib/pgtrust/certs"
require = true

[upstreams.reports]
listen = "127.0.0.1:6433"
[upstreams.reports.settings]
host = "reports.internal"
port = 6543
sslsni = false
`

func TestParseFull(t *testing.T) {
	f, err := Parse([]byte(full))
	if err != nil {
		t.Fatal(err)
	}
	if f.Log.Format != "json" || f.Log.Level != "debug" || f.HealthListen() != "127.0.0.1:9191" ||
		f.Health.ProbeInterval.D() != 10*time.Second || f.Proxy.DrainTimeout.D() != 45*time.Second || f.Proxy.StartupTimeout.D() != 3*time.Second {
		t.Fatalf("top-level tables: %+v", f)
	}
	if got := f.UpstreamNames(); fmt.Sprint(got) != "[main reports]" {
		t.Fatalf("names %v", got)
	}
	m := f.Upstreams["main"]
	if m.MaxConnections != 20 || m.UnixSocketDir != "/run/pgtrust" || m.ClientTLS == nil || !m.ClientTLS.Require || m.ClientTLS.AutoCertDir != "/var/lib/pgtrust/certs" {
		t.Fatalf("main: %+v", m)
	}
	if r := f.Upstreams["reports"]; r.MaxConnections != DefaultMaxConnections {
		t.Fatalf("default max_connections: %d", r.MaxConnections)
	}

	cfg, err := f.upstream("main", testEnv(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.SSLMode != connstring.SSLVerifyCA || cfg.SSLRootCert != "/etc/ca.crt" || cfg.Hosts[0].Host != "db.internal" || cfg.Password != "hunter2" {
		t.Fatalf("main conn: %s", cfg.Redacted())
	}
	cfg, err = f.upstream("reports", testEnv(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	// Integers and booleans in [settings] become libpq's text; no sslmode
	// anywhere means verify-full.
	if cfg.Hosts[0].Port != 6543 || cfg.SSLSNI || cfg.SSLMode != connstring.SSLVerifyFull || cfg.SSLModeExplicit != true {
		t.Fatalf("reports conn: %s sni=%v", cfg.Redacted(), cfg.SSLSNI)
	}
}

func TestDefaults(t *testing.T) {
	f, err := Parse([]byte("[upstreams.a]\nlisten = \"127.0.0.1:7000\"\ndsn = \"host=h\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if f.Log.Format != "text" || f.Log.Level != "info" || f.HealthListen() != DefaultHealthListen ||
		f.Health.ProbeInterval.D() != DefaultProbeInterval || f.Proxy.DrainTimeout.D() != DefaultDrainTimeout ||
		f.Proxy.StartupTimeout.D() != DefaultStartupTimeout {
		t.Fatalf("defaults: %+v", f)
	}
	// health.listen = "" disables, and is not replaced by the default.
	f, err = Parse([]byte("[health]\nlisten = \"\"\n"))
	if err != nil || f.HealthListen() != "" {
		t.Fatalf("disabled health: %v %q", err, f.HealthListen())
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ name, doc, want string }{
		{"unknown top-level key", "[logs]\nformat = \"json\"\n", "unknown key logs"},
		{"unknown nested key", "[upstreams.main]\nlisten = \"x:1\"\nsslmode = \"verify-full\"\n", "unknown key upstreams.main.sslmode (line 3)"},
		{"misspelt client_tls key", "[upstreams.m]\nlisten = \"x:1\"\n[upstreams.m.client_tls]\ncert = \"a\"\n", "unknown key upstreams.m.client_tls.cert"},
		{"bad duration", "[proxy]\ndrain_timeout = \"30\"\n", "drain_timeout"},
		{"wrong type", "[health]\nlisten = 9090\n", "health.listen"},
		{"dsn and settings", "[upstreams.m]\nlisten = \"x:1\"\ndsn = \"host=a\"\n[upstreams.m.settings]\nhost = \"b\"\n", "both dsn and [upstreams.m.settings]"},
		{"no listener", "[upstreams.m]\ndsn = \"host=a\"\n", "upstreams.m.listen"},
		{"cert without key", "[upstreams.m]\nlisten = \"x:1\"\n[upstreams.m.client_tls]\ncert_file = \"a\"\n", "cert_file and key_file go together"},
		{"log format", "[log]\nformat = \"xml\"\n", "log.format"},
		{"bad toml", "[upstreams.m\n", "line 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			if err == nil {
				t.Fatal("no error")
			}
			fe, ok := failure.As(err)
			if !ok || fe.Class != failure.ConfigInvalid || fe.Fix == "" {
				t.Fatalf("want a config_invalid error with a fix, got %#v", err)
			}
			if !strings.Contains(err.Error()+" "+fe.Evidence, tc.want) {
				t.Fatalf("error %q (evidence %q) does not mention %q", err, fe.Evidence, tc.want)
			}
		})
	}
}

func TestSettingsUnknownKeyword(t *testing.T) {
	f, err := Parse([]byte("[upstreams.m]\nlisten = \"x:1\"\n[upstreams.m.settings]\nhots = \"a\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.upstream("m", testEnv(t.TempDir()))
	if failure.ClassOf(err) != failure.ConfigInvalid || !strings.Contains(err.Error(), "upstreams.m.settings.hots") {
		t.Fatalf("got %v", err)
	}
}

func TestDSNErrorNamesKeyAndHidesPassword(t *testing.T) {
	f, err := Parse([]byte("[upstreams.m]\nlisten = \"x:1\"\ndsn = \"host=a password=s3cret sslmode=bogus\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	f.Path = "/etc/pgtrust.toml"
	_, err = f.upstream("m", testEnv(t.TempDir()))
	fe, ok := failure.As(err)
	if !ok || fe.Class != failure.ConfigInvalid || !strings.Contains(err.Error(), "/etc/pgtrust.toml: upstreams.m.dsn") || !strings.Contains(err.Error(), "sslmode") {
		t.Fatalf("got %v", err)
	}
	if strings.Contains(fe.Detail(), "s3cret") {
		t.Fatalf("password leaked: %s", fe.Detail())
	}
}

func TestSSLModeDefault(t *testing.T) {
	home := t.TempDir()
	for _, tc := range []struct {
		dsn  string
		env  map[string]string
		want connstring.SSLMode
	}{
		{"host=a", nil, connstring.SSLVerifyFull},
		{"postgres://a/db", nil, connstring.SSLVerifyFull},
		{"host=a sslmode=require", nil, connstring.SSLRequire},
		{"postgres://a/db?sslmode=disable", nil, connstring.SSLDisable},
		{"host=a requiressl=1", nil, connstring.SSLRequire},
		{"host=a", map[string]string{"PGSSLMODE": "verify-ca"}, connstring.SSLVerifyCA},
	} {
		f := Empty()
		f.Upstreams["u"] = &Upstream{Listen: "127.0.0.1:1", DSN: tc.dsn}
		env := testEnv(home)
		for k, v := range tc.env {
			env[k] = v
		}
		cfg, err := f.upstream("u", env)
		if err != nil {
			t.Fatalf("%s: %v", tc.dsn, err)
		}
		if cfg.SSLMode != tc.want {
			t.Errorf("%s %v: sslmode %s, want %s", tc.dsn, tc.env, cfg.SSLMode, tc.want)
		}
	}
}

func TestEnvAndFlagPrecedence(t *testing.T) {
	doc := "[health]\nlisten = \"127.0.0.1:1\"\n[proxy]\ndrain_timeout = \"10s\"\n[upstreams.only]\nlisten = \"127.0.0.1:2\"\ndsn = \"host=file\"\n"
	f, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"PGTRUST_HEALTH_LISTEN": "127.0.0.1:3",
		"PGTRUST_DRAIN_TIMEOUT": "20s",
		"PGTRUST_UPSTREAM":      "host=env",
		"PGTRUST_LOG_FORMAT":    "json",
		"DB_SSL_MODE":           "verify-ca",
		"DB_SSL_CA_CERT":        "/env/ca.crt",
		"DB_SSL_CLIENT_CERT":    "/env/client.crt",
		"DB_SSL_CLIENT_KEY":     "/env/client.key",
		"DB_SSL_AUTO_CERT_DIR":  "/env/auto",
		"UNRELATED":             "x",
	}
	if err := f.ApplyEnv(env); err != nil {
		t.Fatal(err)
	}
	if f.HealthListen() != "127.0.0.1:3" || f.Proxy.DrainTimeout.D() != 20*time.Second || f.Log.Format != "json" {
		t.Fatalf("env did not override the file: %+v", f)
	}
	if err := f.ApplyFlags(map[string]string{"health-listen": "", "drain-timeout": "1m", "listen": "127.0.0.1:4"}); err != nil {
		t.Fatal(err)
	}
	if f.HealthListen() != "" || f.Proxy.DrainTimeout.D() != time.Minute {
		t.Fatalf("flags did not override the environment: %q %v", f.HealthListen(), f.Proxy.DrainTimeout)
	}
	u := f.Upstreams["only"]
	if len(f.Upstreams) != 1 || u.Listen != "127.0.0.1:4" || u.ClientTLS == nil || u.ClientTLS.AutoCertDir != "/env/auto" {
		t.Fatalf("single upstream: %+v", u)
	}
	cfg, err := f.upstream("only", testEnv(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Hosts[0].Host != "env" || cfg.SSLMode != connstring.SSLVerifyCA || cfg.SSLRootCert != "/env/ca.crt" ||
		cfg.SSLCert != "/env/client.crt" || cfg.SSLKey != "/env/client.key" {
		t.Fatalf("PGTRUST_UPSTREAM + DB_SSL_*: %s", cfg.Redacted())
	}
	// An empty variable is unset, except the health address.
	g := Empty()
	if err := g.ApplyEnv(map[string]string{"PGTRUST_LOG_FORMAT": ""}); err != nil || g.Log.Format != "text" {
		t.Fatalf("empty variable: %v %q", err, g.Log.Format)
	}
}

func TestOverrideErrors(t *testing.T) {
	two, err := Parse([]byte("[upstreams.a]\nlisten = \"x:1\"\n[upstreams.b]\nlisten = \"x:2\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	err = two.ApplyEnv(map[string]string{"PGTRUST_UPSTREAM": "host=x"})
	if failure.ClassOf(err) != failure.ConfigInvalid || !strings.Contains(err.Error(), "PGTRUST_UPSTREAM applies to a single upstream") {
		t.Fatalf("ambiguous PGTRUST_UPSTREAM: %v", err)
	}
	err = Empty().ApplyFlags(map[string]string{"drain-timeout": "soon"})
	if failure.ClassOf(err) != failure.ConfigInvalid || !strings.Contains(err.Error(), "flag --drain-timeout") {
		t.Fatalf("bad flag: %v", err)
	}
	err = Empty().ApplyEnv(map[string]string{"PGTRUST_LOG_LEVEL": "loud"})
	if failure.ClassOf(err) != failure.ConfigInvalid || !strings.Contains(err.Error(), "log.level") {
		t.Fatalf("bad level: %v", err)
	}
}

func TestNoFileUpstreamFromFlags(t *testing.T) {
	f := Empty()
	if err := f.ApplyFlags(map[string]string{"upstream": "host=db sslmode=require"}); err != nil {
		t.Fatal(err)
	}
	u := f.Upstreams[DefaultUpstreamName]
	if u == nil || u.Listen != DefaultListen {
		t.Fatalf("default upstream: %+v", f.Upstreams)
	}
	pc, err := f.ProxyConfig(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(pc.Upstreams) != 1 || pc.Upstreams[0].Name != "default" || pc.Upstreams[0].Conn.SSLMode != connstring.SSLRequire ||
		pc.DrainTimeout != DefaultDrainTimeout || pc.StartupTimeout != DefaultStartupTimeout || pc.ProbeInterval != DefaultProbeInterval {
		t.Fatalf("proxy config: %+v", pc)
	}
	if _, err := Empty().ProxyConfig(nil, nil); failure.ClassOf(err) != failure.ConfigInvalid {
		t.Fatalf("no upstream: %v", err)
	}
}

func TestDBSSLRequired(t *testing.T) {
	f := Empty()
	if err := f.ApplyEnv(map[string]string{"PGTRUST_UPSTREAM": "host=a sslmode=prefer", "DB_SSL_REQUIRED": "true"}); err != nil {
		t.Fatal(err)
	}
	_, err := f.upstream("default", testEnv(t.TempDir()))
	if failure.ClassOf(err) != failure.ConfigInvalid || !strings.Contains(err.Error(), "DB_SSL_REQUIRED") {
		t.Fatalf("got %v", err)
	}
	f.Upstreams["default"].DSN = "host=a sslmode=require"
	if _, err := f.upstream("default", testEnv(t.TempDir())); err != nil {
		t.Fatal(err)
	}
}

// Validation against real files.

type pkiFiles struct{ ca, cert, key, otherKey string }

func writePKI(t *testing.T, dir string, leafOpts ...testpki.Option) (pkiFiles, *testpki.CA) {
	long := testpki.WithValidity(time.Now().Add(-time.Hour), time.Now().Add(400*24*time.Hour))
	ca := testpki.NewRootCA(t, "test CA", long)
	leaf := ca.Client(t, "app", append([]testpki.Option{long}, leafOpts...)...)
	other := ca.Client(t, "other", long)
	return pkiFiles{
		ca:       testpki.WriteFile(t, dir, "ca.crt", ca.CertPEM, 0o644),
		cert:     testpki.WriteFile(t, dir, "client.crt", leaf.ChainPEM, 0o644),
		key:      testpki.WriteFile(t, dir, "client.key", leaf.KeyPEM, 0o600),
		otherKey: testpki.WriteFile(t, dir, "other.key", other.KeyPEM, 0o600),
	}, ca
}

func findingsFor(t *testing.T, f *File) map[string][]Finding {
	t.Helper()
	out := map[string][]Finding{}
	for _, fd := range validate(f, testEnv(t.TempDir()), time.Now()) {
		out[fd.Check] = append(out[fd.Check], fd)
	}
	return out
}

func has(fs []Finding, status string, class failure.Class) bool {
	for _, f := range fs {
		if f.Status == status && f.Class == class {
			return true
		}
	}
	return false
}

func TestValidateGood(t *testing.T) {
	dir := t.TempDir()
	p, _ := writePKI(t, dir)
	f := Empty()
	f.Upstreams["m"] = &Upstream{Listen: "127.0.0.1:6432", UnixSocketDir: dir,
		DSN:       fmt.Sprintf("host=db sslrootcert=%s sslcert=%s sslkey=%s", p.ca, p.cert, p.key),
		ClientTLS: &ClientTLS{CertFile: p.cert, KeyFile: p.key}}
	fs := validate(f, testEnv(t.TempDir()), time.Now())
	if Failed(fs) {
		t.Fatalf("failures: %+v", fs)
	}
	for _, fd := range fs {
		if fd.Status != StatusOK {
			t.Errorf("unexpected %s: %+v", fd.Status, fd)
		}
	}
	if len(fs) < 6 {
		t.Fatalf("too few checks ran: %+v", fs)
	}
}

func TestValidateProblems(t *testing.T) {
	dir := t.TempDir()
	p, ca := writePKI(t, dir)
	loose := testpki.WriteFile(t, dir, "loose.key", ca.Client(t, "x").KeyPEM, 0o644)
	expired := ca.Client(t, "old", testpki.Expired())
	expiredCert := testpki.WriteFile(t, dir, "expired.crt", expired.ChainPEM, 0o644)
	expiredKey := testpki.WriteFile(t, dir, "expired.key", expired.KeyPEM, 0o600)
	soon := ca.Client(t, "soon", testpki.WithValidity(time.Now().Add(-time.Hour), time.Now().Add(10*24*time.Hour)))
	soonCert := testpki.WriteFile(t, dir, "soon.crt", soon.ChainPEM, 0o644)
	soonKey := testpki.WriteFile(t, dir, "soon.key", soon.KeyPEM, 0o600)
	notDir := testpki.WriteFile(t, dir, "file", []byte("x"), 0o644)

	f := Empty()
	f.Health.Listen = ptr("localhost:http-ish:1")
	f.Upstreams["noroot"] = &Upstream{Listen: "127.0.0.1:1", DSN: "host=db"}
	f.Upstreams["perm"] = &Upstream{Listen: "nope", DSN: fmt.Sprintf("host=db sslrootcert=%s sslcert=%s sslkey=%s", p.ca, p.cert, loose)}
	f.Upstreams["mismatch"] = &Upstream{Listen: "127.0.0.1:3", DSN: fmt.Sprintf("host=db sslrootcert=%s sslcert=%s sslkey=%s", p.ca, p.cert, p.otherKey)}
	f.Upstreams["expired"] = &Upstream{Listen: "127.0.0.1:4", DSN: fmt.Sprintf("host=db sslmode=prefer sslcert=%s sslkey=%s", expiredCert, expiredKey)}
	f.Upstreams["soon"] = &Upstream{Listen: "127.0.0.1:5", UnixSocketDir: notDir,
		DSN: fmt.Sprintf("host=db sslrootcert=%s sslcert=%s/missing.crt", p.ca, dir), ClientTLS: &ClientTLS{CertFile: soonCert, KeyFile: soonKey}}
	got := findingsFor(t, f)

	for _, want := range []struct {
		check  string
		status string
		class  failure.Class
	}{
		{"health.listen", StatusFail, failure.ConfigInvalid},
		{"upstreams.noroot.sslrootcert", StatusFail, failure.RootCertMissing},
		{"upstreams.perm.listen", StatusFail, failure.ConfigInvalid},
		{"upstreams.perm.sslcert.key", StatusFail, failure.KeyPermissions},
		{"upstreams.mismatch.sslcert.key", StatusFail, failure.KeyMismatch},
		{"upstreams.expired.sslcert", StatusFail, failure.CertExpired},
		{"upstreams.expired.sslmode", StatusWarn, failure.ConfigInvalid},
		{"upstreams.soon.client_tls", StatusWarn, failure.CertExpiring}, // still valid: expiring, not expired
		{"upstreams.soon.sslcert", StatusWarn, failure.ClientCertRequired},
		{"upstreams.soon.unix_socket_dir", StatusFail, failure.ConfigInvalid},
	} {
		if !has(got[want.check], want.status, want.class) {
			t.Errorf("%s: want %s %s, got %+v", want.check, want.status, want.class, got[want.check])
		}
	}
	// libpq's wording for the missing root file under the default verify-full.
	if fs := got["upstreams.noroot.sslrootcert"]; len(fs) == 0 || !strings.HasPrefix(fs[0].Message, "root certificate file \"") || !strings.Contains(fs[0].Evidence, "verify-full") {
		t.Errorf("root_cert_missing wording: %+v", fs)
	}
	for _, fs := range got {
		for _, fd := range fs {
			if fd.Status == StatusFail && fd.Fix == "" {
				t.Errorf("failure without a fix: %+v", fd)
			}
		}
	}
}

func ptr(s string) *string { return &s }

// TestEnvCannotReplacePinnedRoot: DB_SSL_CA may not replace the sslrootcert
// an upstream's DSN writes (DB_SSL_CA=system would widen a private CA to
// every public one), unless allow_weaker_env_sslmode; it may fill one in.
func TestEnvCannotReplacePinnedRoot(t *testing.T) {
	for _, c := range []struct {
		dsn, ca, want string
		allow         bool
	}{
		{dsn: "host=db sslrootcert=/etc/pinned.crt", ca: "system", want: "would replace it"},
		{dsn: "host=db sslrootcert=/etc/pinned.crt", ca: "/env/ca.crt", want: "would replace it"},
		{dsn: "host=db sslrootcert=/etc/pinned.crt", ca: "/etc/pinned.crt"},
		{dsn: "host=db sslrootcert=/etc/pinned.crt", ca: "system", allow: true},
		{dsn: "host=db", ca: "system"},
	} {
		doc := fmt.Sprintf("[proxy]\nallow_weaker_env_sslmode = %v\n[upstreams.only]\nlisten = \"127.0.0.1:2\"\ndsn = %q\n", c.allow, c.dsn)
		f, err := Parse([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		if err := f.ApplyEnv(map[string]string{"DB_SSL_CA": c.ca}); err != nil {
			t.Fatal(err)
		}
		cfg, err := f.upstream("only", testEnv(t.TempDir()))
		switch {
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want) || failure.ClassOf(err) != failure.ConfigInvalid):
			t.Errorf("%s + DB_SSL_CA=%s: %v, want %q", c.dsn, c.ca, err, c.want)
		case c.want == "" && err != nil:
			t.Errorf("%s + DB_SSL_CA=%s (allow %v): %v", c.dsn, c.ca, c.allow, err)
		case c.want == "" && cfg.SSLRootCert != c.ca:
			t.Errorf("%s + DB_SSL_CA=%s: sslrootcert %s", c.dsn, c.ca, cfg.SSLRootCert)
		}
	}
}

// TestEventLoops: proxy.event_loops reaches the proxy's configuration,
// from the file, the environment and a flag; out-of-range values are
// config_invalid with the key named.
func TestEventLoops(t *testing.T) {
	f, err := Parse([]byte("[proxy]\nevent_loops = 3\n[upstreams.a]\nlisten = \"127.0.0.1:1\"\ndsn = \"host=db sslmode=disable\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if f.Proxy.EventLoops != 3 {
		t.Fatalf("file: %d", f.Proxy.EventLoops)
	}
	if err := f.ApplyEnv(map[string]string{"PGTRUST_EVENT_LOOPS": "-1"}); err != nil || f.Proxy.EventLoops != -1 {
		t.Fatalf("env: %v %d", err, f.Proxy.EventLoops)
	}
	if err := f.ApplyFlags(map[string]string{"event-loops": "2"}); err != nil || f.Proxy.EventLoops != 2 {
		t.Fatalf("flag: %v %d", err, f.Proxy.EventLoops)
	}
	pc, err := f.ProxyConfig(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if pc.EventLoops != 2 {
		t.Fatalf("proxy config: %d", pc.EventLoops)
	}
	if err := f.ApplyEnv(map[string]string{"PGTRUST_EVENT_LOOPS": "many"}); err == nil {
		t.Fatal("a word for event_loops was accepted")
	}
	for _, bad := range []string{"-2", "257"} {
		_, err := Parse([]byte("[proxy]\nevent_loops = " + bad + "\n"))
		if failure.ClassOf(err) != failure.ConfigInvalid || !strings.Contains(err.Error(), "proxy.event_loops") {
			t.Fatalf("event_loops = %s: %v", bad, err)
		}
	}
}
