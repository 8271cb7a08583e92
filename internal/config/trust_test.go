package config

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/proxy"
)

// TestEnvironmentCannotWeakenWrittenSSLMode: DB_SSL_MODE=disable over a
// DSN that says verify-full used to start the proxy with one WARN line;
// now it is config_invalid with a fix, unless allow_weaker_env_sslmode says
// it is on purpose (then a warning). PGSSLMODE never overrides a written
// sslmode (libpq's rule); over an unwritten one it draws a warning.
func TestEnvironmentCannotWeakenWrittenSSLMode(t *testing.T) {
	home := t.TempDir()
	load := func(doc string, vars map[string]string) (*File, map[string]string, error) {
		t.Helper()
		f, err := Parse([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		env := testEnv(home)
		for k, v := range vars {
			env[k] = v
		}
		return f, env, f.ApplyEnv(env)
	}
	const written = "[upstreams.m]\nlisten = \"127.0.0.1:1\"\ndsn = \"host=db sslmode=verify-full sslrootcert=/etc/pgtrust-test/ca.crt\"\n"
	const unwritten = "[upstreams.m]\nlisten = \"127.0.0.1:1\"\ndsn = \"host=db sslrootcert=/etc/pgtrust-test/ca.crt\"\n"

	// Refused.
	for _, vars := range []map[string]string{
		{"DB_SSL_MODE": "disable"},
		{"DB_SSL_MODE": "require"},
	} {
		f, env, err := load(written, vars)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.upstream("m", env)
		fe, ok := failure.As(err)
		if !ok || fe.Class != failure.ConfigInvalid || !strings.Contains(fe.Fix, "unset DB_SSL_MODE") || !strings.Contains(err.Error(), "weaken") {
			t.Fatalf("%v over sslmode=verify-full: %v", vars, err)
		}
		if fs := findings(f, env)["upstreams.m.dsn"]; !has(fs, StatusFail, failure.ConfigInvalid) {
			t.Errorf("%v: Validate does not fail the dsn: %+v", vars, fs)
		}
		t.Logf("%v: %s\n  fix: %s", vars, fe.Error(), fe.Fix)
	}
	// A stronger or equal DB_SSL_MODE is fine; PGSSLMODE does not override
	// the DSN at all.
	for _, vars := range []map[string]string{
		{"DB_SSL_MODE": "verify-full"},
		{"PGSSLMODE": "disable"},
	} {
		f, env, _ := load(written, vars)
		cfg, err := f.upstream("m", env)
		if err != nil || cfg.SSLMode != connstring.SSLVerifyFull {
			t.Errorf("%v: %v %v", vars, cfg, err)
		}
	}
	// Allowed explicitly: resolves, with a warning at start and in validate.
	f, env, _ := load("[proxy]\nallow_weaker_env_sslmode = true\n"+written, map[string]string{"DB_SSL_MODE": "disable"})
	cfg, err := f.upstream("m", env)
	if err != nil || cfg.SSLMode != connstring.SSLDisable {
		t.Fatalf("allowed weakening: %v %v", cfg, err)
	}
	if fs := findings(f, env)["upstreams.m.sslmode"]; !has(fs, StatusWarn, failure.ConfigInvalid) || !strings.Contains(fs[0].Message, "DB_SSL_MODE") {
		t.Errorf("allowed weakening without a warning: %+v", fs)
	}
	// The environment variable form of the switch.
	f, env, _ = load(written, map[string]string{"DB_SSL_MODE": "disable", "PGTRUST_ALLOW_WEAKER_ENV_SSLMODE": "true"})
	if _, err := f.upstream("m", env); err != nil {
		t.Errorf("PGTRUST_ALLOW_WEAKER_ENV_SSLMODE=true: %v", err)
	}
	// Nothing written: PG* variables weaker than the verify-full default
	// are a warning.
	for _, vars := range []map[string]string{{"PGSSLMODE": "prefer"}, {"PGREQUIRESSL": "0"}, {"DB_SSL_MODE": "allow"}} {
		f, env, _ := load(unwritten, vars)
		fs := findings(f, env)["upstreams.m.sslmode"]
		var msg string
		for _, fd := range fs {
			if strings.Contains(fd.Message, "environment variable") {
				msg = fd.Message
			}
		}
		if msg == "" || Failed(fs) {
			t.Errorf("%v over no written sslmode: %+v", vars, fs)
		}
		t.Logf("%v: WARN %s", vars, msg)
	}
}

func findings(f *File, env map[string]string) map[string][]Finding {
	out := map[string][]Finding{}
	for _, fd := range validate(f, env, time.Now()) {
		out[fd.Check] = append(out[fd.Check], fd)
	}
	return out
}

// TestUnixSocketDirTrust: an existing socket directory writable by group or
// others fails validation with a fix (the proxy refuses it at Start too).
func TestUnixSocketDirTrust(t *testing.T) {
	for _, mode := range []os.FileMode{0o777, 0o770, 0o1777} {
		dir := t.TempDir()
		if err := os.Chmod(dir, mode); err != nil {
			t.Fatal(err)
		}
		f := Empty()
		f.Upstreams["m"] = &Upstream{Listen: "127.0.0.1:1", UnixSocketDir: dir, DSN: "host=db sslmode=disable"}
		fs := findingsFor(t, f)["upstreams.m.unix_socket_dir"]
		if !has(fs, StatusFail, failure.ConfigInvalid) || !strings.Contains(fs[len(fs)-1].Fix, "chmod 0700") {
			t.Errorf("mode %o: %+v", mode, fs)
		}
	}
	dir := t.TempDir()
	f := Empty()
	f.Upstreams["m"] = &Upstream{Listen: "127.0.0.1:1", UnixSocketDir: dir, DSN: "host=db sslmode=disable"}
	if fs := findingsFor(t, f)["upstreams.m.unix_socket_dir"]; Failed(fs) {
		t.Errorf("a private directory fails: %+v", fs)
	}
}

// TestSecretsMasked: every config type that can carry a password prints
// and logs it masked, by value and through a pointer, with %v, %+v, %#v,
// %s and slog's text and JSON handlers.
func TestSecretsMasked(t *testing.T) {
	const secret = "hunter2-Secret"
	u := &Upstream{Listen: "127.0.0.1:1", DSN: "host=db password=" + secret + " sslpassword=" + secret,
		Settings: map[string]any{"password": secret, "host": "db"}}
	uri := &Upstream{DSN: "postgres://app:" + secret + "@db/x"}
	f := &File{Path: "x.toml", Upstreams: map[string]*Upstream{"m": u, "uri": uri}}
	conn, err := connstring.ParseWithEnv("host=db password="+secret, map[string]string{}, "")
	if err != nil {
		t.Fatal(err)
	}
	uc := proxy.UpstreamConfig{Name: "m", Conn: conn, Auth: &proxy.UpstreamAuth{Password: secret}}
	pc := &proxy.Config{Upstreams: []proxy.UpstreamConfig{uc}}
	for _, v := range []any{u, *u, uri, f, *f, uc, &uc, pc, *pc, *uc.Auth} {
		var buf bytes.Buffer
		fmt.Fprintf(&buf, "%v %+v %#v %s\n", v, v, v, v)
		slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "v", v)
		slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "v", v)
		if strings.Contains(buf.String(), secret) {
			t.Errorf("%T shows the secret:\n%s", v, buf.String())
		}
		if !strings.Contains(buf.String(), connstring.Mask) && v != any(uri) {
			t.Errorf("%T: no mask shown:\n%s", v, buf.String())
		}
	}
}

// TestNewDefaults: the timeouts of the client, the dial and the
// authentication phase default separately, auth well under PostgreSQL's 60 s.
func TestNewDefaults(t *testing.T) {
	f := Empty()
	f.Upstreams["m"] = &Upstream{Listen: "127.0.0.1:1", DSN: "host=db sslmode=disable"}
	pc, err := f.ProxyConfig(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if pc.StartupTimeout != 5*time.Second || pc.ConnectTimeout != 5*time.Second || pc.AuthTimeout != 10*time.Second || pc.DrainDelay != 0 {
		t.Errorf("defaults: %v", pc)
	}
	doc := "[proxy]\nauth_timeout = \"3s\"\nconnect_timeout = \"2s\"\ndrain_delay = \"7s\"\n[upstreams.m]\nlisten = \"127.0.0.1:1\"\nunix_socket_dir = \"/run/x\"\nreserved_connections = 2\nmax_authenticating = 9\nmax_authenticating_per_source = 3\nplaintext_intended = true\ndsn = \"host=db sslmode=disable\"\n"
	f, err = Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	pc, err = f.ProxyConfig(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	u := pc.Upstreams[0]
	if pc.AuthTimeout != 3*time.Second || pc.ConnectTimeout != 2*time.Second || pc.DrainDelay != 7*time.Second ||
		u.ReservedConnections != 2 || u.MaxAuthenticating != 9 || u.MaxAuthenticatingPerSource != 3 || !u.PlaintextIntended {
		t.Errorf("parsed: %v", pc)
	}
	if _, err := Parse([]byte("[upstreams.m]\nlisten = \"127.0.0.1:1\"\nreserved_connections = 2\n")); failure.ClassOf(err) != failure.ConfigInvalid {
		t.Errorf("reserved_connections without a Unix socket: %v", err)
	}
}
