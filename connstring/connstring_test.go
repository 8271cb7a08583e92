package connstring

import (
	"crypto/tls"
	"errors"
	"maps"
	"os/user"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
)

const testHome = "/home/alice"

func mustParse(t *testing.T, dsn string, env map[string]string) *Config {
	t.Helper()
	c, err := ParseWithEnv(dsn, env, testHome)
	if err != nil {
		t.Fatalf("ParseWithEnv(%q, %v): %v", dsn, env, err)
	}
	return c
}

func osUser(t *testing.T) string {
	t.Helper()
	u, err := user.Current()
	if err != nil {
		t.Fatalf("user.Current: %v", err)
	}
	return u.Username
}

func TestDefaults(t *testing.T) {
	c := mustParse(t, "", nil)
	want := []Host{{Host: "/var/run/postgresql", Port: 5432}}
	if !reflect.DeepEqual(c.Hosts, want) {
		t.Errorf("Hosts = %+v, want %+v", c.Hosts, want)
	}
	h := c.Hosts[0]
	if !h.IsUnixSocket() || h.SocketPath() != "/var/run/postgresql/.s.PGSQL.5432" || h.Display() != h.SocketPath() {
		t.Errorf("default host: unix=%v path=%q display=%q", h.IsUnixSocket(), h.SocketPath(), h.Display())
	}
	if !c.UsesDefaultHost() {
		t.Error("UsesDefaultHost = false for an empty DSN")
	}
	me := osUser(t)
	checks := []struct {
		name      string
		got, want any
	}{
		{"User", c.User, me},
		{"Database", c.Database, me},
		{"Password", c.Password, ""},
		{"PassFile", c.PassFile, "/home/alice/.pgpass"},
		{"SSLMode", c.SSLMode, SSLPrefer},
		{"SSLModeExplicit", c.SSLModeExplicit, false},
		{"SSLNegotiation", c.SSLNegotiation, "postgres"},
		{"SSLRootCert", c.SSLRootCert, "/home/alice/.postgresql/root.crt"},
		{"SSLRootCertDefault", c.SSLRootCertDefault, true},
		{"SSLCert", c.SSLCert, "/home/alice/.postgresql/postgresql.crt"},
		{"SSLCertDefault", c.SSLCertDefault, true},
		{"SSLKey", c.SSLKey, "/home/alice/.postgresql/postgresql.key"},
		{"SSLKeyDefault", c.SSLKeyDefault, true},
		{"SSLCRL", c.SSLCRL, "/home/alice/.postgresql/root.crl"},
		{"SSLCRLDefault", c.SSLCRLDefault, true},
		{"SSLCertMode", c.SSLCertMode, "allow"},
		{"SSLSNI", c.SSLSNI, true},
		{"SSLMinProtocolVersion", c.SSLMinProtocolVersion, uint16(tls.VersionTLS12)},
		{"SSLMaxProtocolVersion", c.SSLMaxProtocolVersion, uint16(0)},
		{"ChannelBinding", c.ChannelBinding, "prefer"},
		{"GSSEncMode", c.GSSEncMode, "prefer"},
		{"TargetSessionAttrs", c.TargetSessionAttrs, "any"},
		{"LoadBalanceHosts", c.LoadBalanceHosts, "disable"},
		{"Keepalives", c.Keepalives, true},
		{"ConnectTimeout", c.ConnectTimeout, time.Duration(0)},
		{"len(Settings)", len(c.Settings), 0},
		{"len(RuntimeParams)", len(c.RuntimeParams), 0},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
}

func TestNoHomeDirectory(t *testing.T) {
	c, err := ParseWithEnv("host=db", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if c.SSLRootCert != "" || !c.SSLRootCertDefault || c.SSLCert != "" || c.SSLKey != "" || c.SSLCRL != "" || c.PassFile != "" {
		t.Errorf("without a home directory the default files must be empty: %+v", c)
	}
	// Given paths are kept.
	c, err = ParseWithEnv("host=db sslrootcert=/ca.pem passfile=/pw", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if c.SSLRootCert != "/ca.pem" || c.SSLRootCertDefault || c.PassFile != "/pw" {
		t.Errorf("given paths: rootcert=%q default=%v passfile=%q", c.SSLRootCert, c.SSLRootCertDefault, c.PassFile)
	}
}

func TestEnvironment(t *testing.T) {
	env := map[string]string{
		"PGHOST": "envhost", "PGPORT": "6000", "PGUSER": "envuser", "PGDATABASE": "envdb",
		"PGPASSWORD": "envpw", "PGSSLMODE": "verify-ca", "PGSSLROOTCERT": "/env/ca.crt",
		"PGSSLCERT": "/env/c.crt", "PGSSLKEY": "/env/c.key", "PGSSLCRL": "/env/crl", "PGSSLCRLDIR": "/env/crls",
		"PGAPPNAME": "envapp", "PGCONNECT_TIMEOUT": "9", "PGTARGETSESSIONATTRS": "read-write",
		"PGSSLPASSWORD": "must-not-be-read", "PGSSLSNI": "0", "PGSSLCERTMODE": "require",
		"PGCHANNELBINDING": "require", "PGSSLMINPROTOCOLVERSION": "TLSv1.3", "PGLOADBALANCEHOSTS": "random",
		"PGOPTIONS": "-c x=y", "PGCLIENTENCODING": "LATIN1", "PGKRBSRVNAME": "krb",
	}
	c := mustParse(t, "", env)
	if c.Hosts[0].Host != "envhost" || c.Hosts[0].Port != 6000 || c.User != "envuser" || c.Database != "envdb" || c.Password != "envpw" {
		t.Errorf("env not applied: hosts=%+v user=%q db=%q", c.Hosts, c.User, c.Database)
	}
	if c.SSLMode != SSLVerifyCA || !c.SSLModeExplicit || c.SSLRootCert != "/env/ca.crt" || c.SSLRootCertDefault {
		t.Errorf("sslmode=%s explicit=%v rootcert=%q", c.SSLMode, c.SSLModeExplicit, c.SSLRootCert)
	}
	if c.SSLCert != "/env/c.crt" || c.SSLKey != "/env/c.key" || c.SSLCRL != "/env/crl" || c.SSLCRLDir != "/env/crls" || c.SSLCRLDefault {
		t.Errorf("ssl files from env: %q %q %q %q", c.SSLCert, c.SSLKey, c.SSLCRL, c.SSLCRLDir)
	}
	if c.SSLPassword != "" {
		t.Error("PGSSLPASSWORD was read; libpq has no such variable")
	}
	if c.SSLSNI || c.SSLCertMode != "require" || c.ChannelBinding != "require" || c.SSLMinProtocolVersion != tls.VersionTLS13 ||
		c.LoadBalanceHosts != "random" || c.TargetSessionAttrs != "read-write" || c.ConnectTimeout != 9*time.Second {
		t.Errorf("env values: %+v", c)
	}
	wantRP := map[string]string{"application_name": "envapp", "options": "-c x=y", "client_encoding": "LATIN1"}
	if !maps.Equal(c.RuntimeParams, wantRP) {
		t.Errorf("RuntimeParams = %v, want %v", c.RuntimeParams, wantRP)
	}
	if c.Settings["krbsrvname"] != "krb" || c.Settings["sslmode"] != "verify-ca" {
		t.Errorf("Settings should hold env-supplied keywords: %v", c.RedactedSettings())
	}

	// The DSN wins over the environment.
	c = mustParse(t, "host=dsnhost sslmode=disable user=dsnuser", env)
	if c.Hosts[0].Host != "dsnhost" || c.SSLMode != SSLDisable || c.User != "dsnuser" || c.Database != "envdb" {
		t.Errorf("DSN precedence: host=%q sslmode=%s user=%q db=%q", c.Hosts[0].Host, c.SSLMode, c.User, c.Database)
	}
	// An empty keyword in the DSN still counts as given (libpq does not fall back to the env).
	c = mustParse(t, "host=''", env)
	if c.Hosts[0].Host != DefaultSocketDir {
		t.Errorf("host='' should use the default socket, got %+v", c.Hosts)
	}
}

func TestRequireSSLEnv(t *testing.T) {
	c := mustParse(t, "", map[string]string{"PGREQUIRESSL": "1x"})
	if c.SSLMode != SSLRequire || !c.SSLModeExplicit {
		t.Errorf("PGREQUIRESSL=1x: sslmode=%s explicit=%v", c.SSLMode, c.SSLModeExplicit)
	}
	c = mustParse(t, "", map[string]string{"PGREQUIRESSL": "0"})
	if c.SSLMode != SSLPrefer || c.SSLModeExplicit {
		t.Errorf("PGREQUIRESSL=0: sslmode=%s explicit=%v", c.SSLMode, c.SSLModeExplicit)
	}
	c = mustParse(t, "", map[string]string{"PGREQUIRESSL": "1", "PGSSLMODE": "disable"})
	if c.SSLMode != SSLDisable {
		t.Errorf("PGSSLMODE must beat PGREQUIRESSL, got %s", c.SSLMode)
	}
	c = mustParse(t, "sslmode=allow", map[string]string{"PGREQUIRESSL": "1"})
	if c.SSLMode != SSLAllow {
		t.Errorf("sslmode keyword must beat PGREQUIRESSL, got %s", c.SSLMode)
	}
	c = mustParse(t, "requiressl=1", nil)
	if c.SSLMode != SSLRequire || !c.SSLModeExplicit {
		t.Errorf("requiressl=1: sslmode=%s explicit=%v", c.SSLMode, c.SSLModeExplicit)
	}
}

func TestDatabaseURL(t *testing.T) {
	env := map[string]string{"DATABASE_URL": "postgresql://dbu@urlhost/urldb", "PGSSLMODE": "require", "PGHOST": "envhost"}
	c := mustParse(t, "", env)
	if c.Hosts[0].Host != "urlhost" || c.User != "dbu" || c.Database != "urldb" || c.SSLMode != SSLRequire {
		t.Errorf("DATABASE_URL with PG* gaps: hosts=%+v user=%q db=%q sslmode=%s", c.Hosts, c.User, c.Database, c.SSLMode)
	}
	c = mustParse(t, "dbname=x", env)
	if c.Hosts[0].Host != "envhost" || c.Database != "x" {
		t.Errorf("DATABASE_URL must be ignored when a DSN is given: %+v", c.Hosts)
	}
	_, err := ParseWithEnv("", map[string]string{"DATABASE_URL": "postgresql://u:hunter2@[::1"}, testHome)
	fe, ok := failure.As(err)
	if !ok || !strings.Contains(fe.Evidence, "DATABASE_URL") || strings.Contains(fe.Detail(), "hunter2") {
		t.Errorf("bad DATABASE_URL error: %v", err)
	}
}

func TestHosts(t *testing.T) {
	tests := []struct {
		dsn  string
		want []Host
	}{
		{"host=a,b port=5433", []Host{{"a", "", 5433}, {"b", "", 5433}}},
		{"host=a,b port=1,2", []Host{{"a", "", 1}, {"b", "", 2}}},
		{"host=a,,b port=1,,3", []Host{{"a", "", 1}, {DefaultSocketDir, "", 5432}, {"b", "", 3}}},
		{"hostaddr=127.0.0.1", []Host{{"", "127.0.0.1", 5432}}},
		{"host=db.example hostaddr=10.0.0.1", []Host{{"db.example", "10.0.0.1", 5432}}},
		{"host=a,b hostaddr=10.0.0.1,", []Host{{"a", "10.0.0.1", 5432}, {"b", "", 5432}}},
		{"host=/tmp,@abstract port=' 7 '", []Host{{"/tmp", "", 7}, {"@abstract", "", 7}}},
		{"postgresql://h1:1,[::1]:2/db", []Host{{"h1", "", 1}, {"::1", "", 2}}},
		{"postgresql://%2Ftmp:5444/db", []Host{{"/tmp", "", 5444}}},
		{"postgresql:///db", []Host{{DefaultSocketDir, "", 5432}}},
	}
	for _, tt := range tests {
		c := mustParse(t, tt.dsn, nil)
		if !reflect.DeepEqual(c.Hosts, tt.want) {
			t.Errorf("%q: Hosts = %+v, want %+v", tt.dsn, c.Hosts, tt.want)
		}
	}
	c := mustParse(t, "host=db.example hostaddr=10.0.0.1 port=6", nil)
	if h := c.Hosts[0]; h.IsUnixSocket() || h.Display() != "10.0.0.1" || c.UsesDefaultHost() {
		t.Errorf("hostaddr display = %q", h.Display())
	}
	c = mustParse(t, "host=/tmp hostaddr=10.0.0.1", nil)
	if c.Hosts[0].IsUnixSocket() {
		t.Error("hostaddr wins over a socket directory in host")
	}
	c = mustParse(t, "host=@abs port=9", nil)
	if p := c.Hosts[0].SocketPath(); p != "@abs/.s.PGSQL.9" {
		t.Errorf("abstract socket path = %q", p)
	}
}

// Errors as libpq words them (checked against psql 15.18 where it has them).
func TestValidationErrors(t *testing.T) {
	tests := []struct {
		dsn     string
		env     map[string]string
		wantErr string
	}{
		{dsn: "sslmode=", wantErr: `invalid sslmode value: ""`},
		{dsn: "sslmode=bogus", wantErr: `invalid sslmode value: "bogus"`},
		{dsn: "postgresql://h/db?sslmode=Require", wantErr: `invalid sslmode value: "Require"`},
		{env: map[string]string{"PGSSLMODE": ""}, wantErr: `invalid sslmode value: ""`},
		{dsn: "sslnegotiation=fast", wantErr: `invalid sslnegotiation value: "fast"`},
		{dsn: "sslcertmode=x", wantErr: `invalid sslcertmode value: "x"`},
		{dsn: "channel_binding=''", wantErr: `invalid channel_binding value: ""`},
		{dsn: "gssencmode=maybe", wantErr: `invalid gssencmode value: "maybe"`},
		{dsn: "gssencmode=require", wantErr: `gssencmode value "require" invalid when GSSAPI support is not compiled in`},
		{dsn: "target_session_attrs=master", wantErr: `invalid target_session_attrs value: "master"`},
		{dsn: "load_balance_hosts=yes", wantErr: `invalid load_balance_hosts value: "yes"`},
		{dsn: "ssl_min_protocol_version=tls", wantErr: `invalid ssl_min_protocol_version value: "tls"`},
		{dsn: "ssl_max_protocol_version=SSLv3", wantErr: `invalid ssl_max_protocol_version value: "SSLv3"`},
		{dsn: "ssl_min_protocol_version=tlsv1.3 ssl_max_protocol_version=TLSv1.2", wantErr: `invalid SSL protocol version range`},
		{dsn: "min_protocol_version=3.1", wantErr: `invalid min_protocol_version value: "3.1"`},
		{dsn: "min_protocol_version=latest max_protocol_version=3.0", wantErr: `"min_protocol_version" is greater than "max_protocol_version"`},
		{dsn: "port=abc", wantErr: `invalid integer value "abc" for connection option "port"`},
		{dsn: "port=1x", wantErr: `invalid integer value "1x" for connection option "port"`},
		{dsn: "port=99999999999", wantErr: `invalid integer value "99999999999" for connection option "port"`},
		{dsn: "port=70000", wantErr: `invalid port number: "70000"`},
		{dsn: "port=0", wantErr: `invalid port number: "0"`},
		{dsn: "postgres://h:abc/", wantErr: `invalid integer value "abc" for connection option "port"`},
		{dsn: "host=a,b port=1,2,3", wantErr: `could not match 3 port numbers to 2 hosts`},
		{dsn: "host=/x port=1,", wantErr: `could not match 2 port numbers to 1 hosts`},
		{dsn: "host=a,b hostaddr=127.0.0.1", wantErr: `could not match 2 host names to 1 hostaddr values`},
		{dsn: "hostaddr=127.0.0.1,, host=/x", wantErr: `could not match 1 host names to 3 hostaddr values`},
		{dsn: "host=a,,b port=1,2 hostaddr=1.1.1.1,2.2.2.2,3.3.3.3", wantErr: `could not match 2 port numbers to 3 hosts`},
		{dsn: "hostaddr=foo", wantErr: `could not parse network address "foo": Name or service not known`},
		{dsn: "connect_timeout=abc", wantErr: `invalid integer value "abc" for connection option "connect_timeout"`},
		{dsn: "connect_timeout=''", wantErr: `invalid integer value "" for connection option "connect_timeout"`},
		{dsn: "keepalives=abc", wantErr: `invalid integer value "abc" for connection option "keepalives"`},
		{dsn: "keepalives_idle=x", wantErr: `invalid integer value "x" for connection option "keepalives_idle"`},
		{dsn: "keepalives_interval=1.5", wantErr: `invalid integer value "1.5" for connection option "keepalives_interval"`},
		{dsn: "keepalives_count=", wantErr: `invalid integer value "" for connection option "keepalives_count"`},
		{dsn: "tcp_user_timeout=x", wantErr: `invalid integer value "x" for connection option "tcp_user_timeout"`},
		{dsn: "require_auth=password,password", wantErr: `require_auth method "password" is specified more than once`},
		{dsn: "require_auth=kerberos", wantErr: `invalid require_auth value: "kerberos"`},
		{dsn: "require_auth=password,!md5", wantErr: `negative require_auth method "!md5" cannot be mixed with non-negative methods`},
		{dsn: "require_auth=!password,md5", wantErr: `require_auth method "md5" cannot be mixed with negative methods`},
		{dsn: "require_auth=none,none", wantErr: `require_auth method "none" is specified more than once`},
		{dsn: "require_auth=!none,!none", wantErr: `require_auth method "!none" is specified more than once`},
		{dsn: "scram_client_key=hunter2", wantErr: `invalid SCRAM client key`},
		{dsn: "service=prod", env: map[string]string{"PGSYSCONFDIR": "/nonexistent"}, wantErr: `definition of service "prod" not found`},
		{env: map[string]string{"PGSERVICE": "prod", "PGSYSCONFDIR": "/nonexistent"}, wantErr: `definition of service "prod" not found`},
		// Cross-field rules.
		{dsn: "sslrootcert=system sslmode=require", wantErr: `weak sslmode "require" may not be used with sslrootcert=system (use "verify-full")`},
		{dsn: "sslrootcert=system", env: map[string]string{"PGSSLMODE": "verify-ca"}, wantErr: `weak sslmode "verify-ca" may not be used with sslrootcert=system (use "verify-full")`},
		{dsn: "sslnegotiation=direct", wantErr: `weak sslmode "prefer" may not be used with sslnegotiation=direct (use "require", "verify-ca", or "verify-full")`},
		{dsn: "sslnegotiation=direct sslmode=allow", wantErr: `weak sslmode "allow" may not be used with sslnegotiation=direct (use "require", "verify-ca", or "verify-full")`},
		{dsn: "sslmode=disable", env: map[string]string{"PGSSLNEGOTIATION": "direct"}, wantErr: `weak sslmode "disable" may not be used with sslnegotiation=direct (use "require", "verify-ca", or "verify-full")`},
	}
	for _, tt := range tests {
		c, err := ParseWithEnv(tt.dsn, tt.env, testHome)
		if err == nil {
			t.Errorf("ParseWithEnv(%q, %v) = %v, want error %q", tt.dsn, tt.env, c, tt.wantErr)
			continue
		}
		if err.Error() != tt.wantErr {
			t.Errorf("ParseWithEnv(%q, %v) error = %q, want %q", tt.dsn, tt.env, err.Error(), tt.wantErr)
		}
		fe, ok := failure.As(err)
		if !ok || fe.Class != failure.ConfigInvalid || fe.Evidence == "" || fe.Fix == "" {
			t.Errorf("ParseWithEnv(%q): error %#v is not a ConfigInvalid failure with evidence and fix", tt.dsn, err)
			continue
		}
		if strings.Contains(fe.Detail(), "hunter2") {
			t.Errorf("ParseWithEnv(%q): error leaks a secret: %s", tt.dsn, fe.Detail())
		}
	}
}

func TestCrossFieldRulesAccepted(t *testing.T) {
	c := mustParse(t, "host=db sslrootcert=system", nil)
	if c.SSLMode != SSLVerifyFull || c.SSLModeExplicit || c.SSLRootCert != "system" || c.SSLRootCertDefault {
		t.Errorf("sslrootcert=system: sslmode=%s explicit=%v root=%q", c.SSLMode, c.SSLModeExplicit, c.SSLRootCert)
	}
	c = mustParse(t, "host=db", map[string]string{"PGSSLROOTCERT": "system"})
	if c.SSLMode != SSLVerifyFull {
		t.Errorf("PGSSLROOTCERT=system: sslmode=%s", c.SSLMode)
	}
	c = mustParse(t, "host=db sslrootcert=./system", nil)
	if c.SSLMode != SSLPrefer {
		t.Errorf("./system is a file, not the system store: sslmode=%s", c.SSLMode)
	}
	for _, mode := range []string{"require", "verify-ca", "verify-full"} {
		c = mustParse(t, "host=db sslnegotiation=direct sslmode="+mode, nil)
		if c.SSLNegotiation != "direct" || string(c.SSLMode) != mode {
			t.Errorf("direct with %s: %s/%s", mode, c.SSLNegotiation, c.SSLMode)
		}
	}
	c = mustParse(t, "host=db sslnegotiation=direct sslrootcert=system", nil)
	if c.SSLMode != SSLVerifyFull {
		t.Errorf("direct + system: sslmode=%s", c.SSLMode)
	}
	c = mustParse(t, "require_auth=!password,!md5,!none gssencmode=disable", nil)
	if c.RequireAuth != "!password,!md5,!none" || c.GSSEncMode != "disable" {
		t.Errorf("require_auth=%q gssencmode=%q", c.RequireAuth, c.GSSEncMode)
	}
	mustParse(t, "require_auth=scram-sha-256,none,gss,sspi,oauth", nil)
}

func TestValueDetails(t *testing.T) {
	tests := []struct {
		dsn   string
		check func(c *Config) bool
	}{
		{"connect_timeout=1", func(c *Config) bool { return c.ConnectTimeout == 2*time.Second }},
		{"connect_timeout=' 10 '", func(c *Config) bool { return c.ConnectTimeout == 10*time.Second }},
		{"connect_timeout=-5", func(c *Config) bool { return c.ConnectTimeout == 0 }},
		{"connect_timeout=0", func(c *Config) bool { return c.ConnectTimeout == 0 }},
		{"sslsni=0", func(c *Config) bool { return !c.SSLSNI }},
		{"sslsni=1", func(c *Config) bool { return c.SSLSNI }},
		{"sslsni=yes", func(c *Config) bool { return !c.SSLSNI }}, // libpq: only a leading "1" enables SNI
		{"ssl_min_protocol_version=tlsv1", func(c *Config) bool { return c.SSLMinProtocolVersion == tls.VersionTLS10 }},
		{"ssl_min_protocol_version=''", func(c *Config) bool { return c.SSLMinProtocolVersion == 0 }},
		{"ssl_min_protocol_version=TLSv1.1 ssl_max_protocol_version=tlsv1.2", func(c *Config) bool {
			return c.SSLMinProtocolVersion == tls.VersionTLS11 && c.SSLMaxProtocolVersion == tls.VersionTLS12
		}},
		{"keepalives=0", func(c *Config) bool { return !c.Keepalives }},
		{"keepalives=''", func(c *Config) bool { return !c.Keepalives }}, // libpq's strtol reads "" as 0
		{"keepalives=' 1'", func(c *Config) bool { return c.Keepalives }},
		{"keepalives_idle=30 keepalives_interval=-3 keepalives_count=4 tcp_user_timeout=1500", func(c *Config) bool {
			return c.KeepalivesIdle == 30*time.Second && c.KeepalivesInterval == 0 && c.KeepalivesCount == 4 && c.TCPUserTimeout == 1500*time.Millisecond
		}},
		{"sslcrldir=/crls", func(c *Config) bool { return c.SSLCRL == "" && !c.SSLCRLDefault && c.SSLCRLDir == "/crls" }},
		{"sslcrl=/a.crl", func(c *Config) bool { return c.SSLCRL == "/a.crl" && !c.SSLCRLDefault }},
		{"sslcert=/c sslkey=/k sslpassword=pw sslkeylogfile=/log", func(c *Config) bool {
			return c.SSLCert == "/c" && !c.SSLCertDefault && c.SSLKey == "/k" && !c.SSLKeyDefault && c.SSLPassword == "pw" && c.SSLKeyLogFile == "/log"
		}},
		{"min_protocol_version=3.0 max_protocol_version=latest", func(c *Config) bool {
			return c.MinProtocolVersion == "3.0" && c.MaxProtocolVersion == "latest"
		}},
		{"scram_client_key=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", func(c *Config) bool { return len(c.ScramClientKey) == 32 }},
		{"fallback_application_name=fb", func(c *Config) bool { return c.RuntimeParams["application_name"] == "fb" }},
		{"fallback_application_name=fb application_name=app", func(c *Config) bool { return c.RuntimeParams["application_name"] == "app" }},
		{"replication=database", func(c *Config) bool { return c.RuntimeParams["replication"] == "database" }},
		{"user=bob", func(c *Config) bool { return c.User == "bob" && c.Database == "bob" }},
	}
	for _, tt := range tests {
		if c := mustParse(t, tt.dsn, nil); !tt.check(c) {
			t.Errorf("%q: unexpected config %+v", tt.dsn, *c)
		}
	}
}

func TestClientEncodingAuto(t *testing.T) {
	tests := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"LANG": "en_US.UTF-8"}, "UTF8"},
		{map[string]string{"LC_ALL": "de_DE.utf8", "LANG": "C"}, "UTF8"},
		{map[string]string{"LC_CTYPE": "C", "LANG": "en_US.UTF-8"}, "SQL_ASCII"},
		{map[string]string{"LANG": "fr_FR.ISO-8859-1"}, "LATIN1"},
		{nil, "SQL_ASCII"},
	}
	for _, tt := range tests {
		c := mustParse(t, "client_encoding=auto", tt.env)
		if c.ClientEncoding != tt.want || c.RuntimeParams["client_encoding"] != tt.want {
			t.Errorf("client_encoding=auto with %v = %q, want %q", tt.env, c.ClientEncoding, tt.want)
		}
	}
}

func TestRuntimeParamsFromEnvironmentOptions(t *testing.T) {
	c := mustParse(t, "", map[string]string{"PGTZ": "UTC", "PGDATESTYLE": "default", "PGGEQO": "off"})
	want := map[string]string{"timezone": "UTC", "geqo": "off"}
	if !maps.Equal(c.RuntimeParams, want) {
		t.Errorf("RuntimeParams = %v, want %v", c.RuntimeParams, want)
	}
}

func TestUserLookupFailure(t *testing.T) {
	old := currentUser
	t.Cleanup(func() { currentUser = old })
	currentUser = func() (string, error) { return "", errors.New("no passwd entry") }
	_, err := ParseWithEnv("host=db", nil, testHome)
	if failure.ClassOf(err) != failure.ConfigInvalid || !strings.Contains(err.Error(), "could not look up local user ID") {
		t.Errorf("err = %v", err)
	}
	// A given user needs no lookup.
	if _, err := ParseWithEnv("host=db user=x", nil, testHome); err != nil {
		t.Errorf("with user given: %v", err)
	}
}

func TestClone(t *testing.T) {
	c := mustParse(t, "host=a,b password=pw application_name=x scram_client_key=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", nil)
	d := c.Clone()
	if !reflect.DeepEqual(c, d) {
		t.Fatalf("clone differs:\n%#v\n%#v", *c, *d)
	}
	d.Hosts[0].Host = "changed"
	d.Settings["host"] = "changed"
	d.RuntimeParams["application_name"] = "changed"
	d.ScramClientKey[0] = 1
	if c.Hosts[0].Host != "a" || c.Settings["host"] != "a,b" || c.RuntimeParams["application_name"] != "x" || c.ScramClientKey[0] != 0 {
		t.Error("Clone shares memory with the original")
	}
	if (*Config)(nil).Clone() != nil {
		t.Error("nil.Clone() != nil")
	}
}

func TestSSLModeStrength(t *testing.T) {
	order := []SSLMode{SSLDisable, SSLAllow, SSLPrefer, SSLRequire, SSLVerifyCA, SSLVerifyFull}
	for i, m := range order {
		if m.Strength() != i {
			t.Errorf("%s.Strength() = %d, want %d", m, m.Strength(), i)
		}
	}
}
