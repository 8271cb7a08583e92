package dbenv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/secretscan"
)

// pw is a known test secret (internal/secretscan): no error or warning may hold it.
const pw = "hunter2"

type rule struct {
	name    string
	flag    string
	env     map[string]string
	service string // contents of pg_service.conf in a temp dir (PGSERVICEFILE)

	wantErr    string // substring of the error; "" = success
	wantFix    string // substring of the fix
	wantSource string
	wantMode   connstring.SSLMode
	wantHost   string
	wantRoot   string // sslrootcert; "{ca}" = the temp CA file
	wantCert   string
	wantKey    string
	wantWarn   []string // substrings, each in some warning
	noWarn     bool
}

func TestResolveRules(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(ca, []byte("-----BEGIN CERTIFICATE-----\nnot parsed here\n-----END CERTIFICATE-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.crt")
	url := "postgresql://app:" + pw + "@db.example.com:5432/app"
	kv := "host=db.example.com user=app password=" + pw + " dbname=app"

	rules := []rule{
		// --- where the connection string comes from ---
		{name: "flag wins over POSTGRES_CONNECTION and DATABASE_URL", flag: url + "?sslmode=require",
			env:        map[string]string{"POSTGRES_CONNECTION": "host=pc.example.com", "DATABASE_URL": "host=du.example.com"},
			wantSource: SourceFlag, wantHost: "db.example.com", wantMode: "require",
			wantWarn: []string{"POSTGRES_CONNECTION is set but not used", "DATABASE_URL is set but not used"}},
		{name: "same value in flag and POSTGRES_CONNECTION (seed 002) is quiet", flag: url, env: map[string]string{"POSTGRES_CONNECTION": url},
			wantSource: SourceFlag, wantMode: "verify-full", noWarn: true},
		{name: "POSTGRES_CONNECTION before DATABASE_URL", env: map[string]string{"POSTGRES_CONNECTION": kv, "DATABASE_URL": "host=du.example.com"},
			wantSource: SourcePostgresConnection, wantHost: "db.example.com", wantMode: "verify-full"},
		{name: "empty POSTGRES_CONNECTION is unset", env: map[string]string{"POSTGRES_CONNECTION": "", "DATABASE_URL": url},
			wantSource: SourceDatabaseURL, wantHost: "db.example.com", noWarn: true, wantMode: "verify-full"},
		{name: "PG* variables only", env: map[string]string{"PGHOST": "pg.example.com", "PGUSER": "u"},
			wantSource: SourcePGEnv, wantHost: "pg.example.com", wantMode: "verify-full", noWarn: true},
		{name: "PG* fill only what the string leaves out", env: map[string]string{"DATABASE_URL": url, "PGHOST": "pg.example.com", "PGSSLROOTCERT": ca},
			wantSource: SourceDatabaseURL, wantHost: "db.example.com", wantRoot: "{ca}", wantMode: "verify-full"},
		{name: "unexpanded ${VAR} (seed 002 args) refused", flag: "${SUPABASE_CONNECTION}",
			wantErr: "${SUPABASE_CONNECTION}, a variable reference nobody expanded", wantFix: "does not expand"},
		{name: "unexpanded ${VAR} in sslrootcert refused", env: map[string]string{"DATABASE_URL": url + "?sslmode=verify-full&sslrootcert=${SSL_CERT_PATH}"},
			wantErr: "sslrootcert=${SSL_CERT_PATH}: the variable reference was never expanded", wantFix: "absolute path"},
		{name: "bad DSN names its source", env: map[string]string{"POSTGRES_CONNECTION": "host=x sslmode=bogus"},
			wantErr: "POSTGRES_CONNECTION: invalid sslmode value"},

		// --- the verify-full default ---
		{name: "nothing sets sslmode: verify-full", env: map[string]string{"DATABASE_URL": url}, wantMode: "verify-full", noWarn: true},
		{name: "PGSSLMODE sets it (seed 002 env)", env: map[string]string{"POSTGRES_CONNECTION": url, "PGSSLMODE": "verify-ca", "PGSSLROOTCERT": ca},
			wantMode: "verify-ca", wantRoot: "{ca}", wantWarn: []string{"PGSSLMODE=verify-ca: the server's certificate chain is checked but not its host name"}},
		{name: "PGSSLMODE=prefer is obeyed, with a warning", env: map[string]string{"PGHOST": "h", "PGSSLMODE": "prefer"},
			wantMode: "prefer", wantWarn: []string{"PGSSLMODE=prefer: the connection may fall back to plaintext"}},
		{name: "PGREQUIRESSL=1 sets require", env: map[string]string{"PGHOST": "h", "PGREQUIRESSL": "1"},
			wantMode: "require", wantWarn: []string{"PGREQUIRESSL=1: encrypted but the server is not verified"}},
		{name: "DSN sslmode wins over PGSSLMODE (libpq)", env: map[string]string{"DATABASE_URL": url + "?sslmode=verify-full", "PGSSLMODE": "disable"},
			wantMode: "verify-full", noWarn: true},
		{name: "service file sslmode counts as written", env: map[string]string{"DATABASE_URL": "service=svc", "DB_SSL_MODE": "require"},
			service: "[svc]\nhost=svc.example.com\nsslmode=verify-full\n", wantErr: "sslmode=verify-full in the service file of service=svc, but DB_SSL_MODE=require would weaken it"},

		// --- DB_SSL_ENABLED ---
		{name: "ENABLED=false: disable", env: map[string]string{"DATABASE_URL": url, "DB_SSL_ENABLED": "false"},
			wantMode: "disable", wantWarn: []string{"DB_SSL_ENABLED=false: TLS is off: the password, every query and every result cross the network in plaintext"}},
		{name: "ENABLED=true alone: verify-full", env: map[string]string{"DATABASE_URL": url, "DB_SSL_ENABLED": "true"}, wantMode: "verify-full", noWarn: true},
		{name: "ENABLED=maybe refused", env: map[string]string{"DATABASE_URL": url, "DB_SSL_ENABLED": "maybe"},
			wantErr: `environment variable DB_SSL_ENABLED: invalid value "maybe"`, wantFix: "true or false"},
		{name: "ENABLED=false vs DSN verify-full refused", env: map[string]string{"DATABASE_URL": url + "?sslmode=verify-full", "DB_SSL_ENABLED": "false"},
			wantErr: "sslmode=verify-full in DATABASE_URL, but DB_SSL_ENABLED=false would weaken it to sslmode=disable", wantFix: "PGTRUST_ALLOW_WEAKER_ENV_SSLMODE=true"},
		{name: "ENABLED=false vs DSN verify-full allowed on purpose", env: map[string]string{"DATABASE_URL": url + "?sslmode=verify-full", "DB_SSL_ENABLED": "false", "PGTRUST_ALLOW_WEAKER_ENV_SSLMODE": "true"},
			wantMode: "disable", wantWarn: []string{"DB_SSL_ENABLED=false weakens sslmode=verify-full in DATABASE_URL to sslmode=disable (allowed by PGTRUST_ALLOW_WEAKER_ENV_SSLMODE=true)"}},
		{name: "ENABLED=false vs DB_SSL_MODE=require refused", env: map[string]string{"DATABASE_URL": url, "DB_SSL_ENABLED": "false", "DB_SSL_MODE": "require"},
			wantErr: "DB_SSL_ENABLED=false contradicts DB_SSL_MODE=require"},
		{name: "ENABLED=true vs DB_SSL_MODE=prefer refused", env: map[string]string{"DATABASE_URL": url, "DB_SSL_ENABLED": "true", "DB_SSL_MODE": "prefer"},
			wantErr: "DB_SSL_ENABLED=true contradicts DB_SSL_MODE=prefer"},
		{name: "ENABLED=true vs DSN sslmode=disable refused", env: map[string]string{"DATABASE_URL": url + "?sslmode=disable", "DB_SSL_ENABLED": "true"},
			wantErr: "DB_SSL_ENABLED=true contradicts sslmode=disable in DATABASE_URL"},
		{name: "ENABLED=true with DSN require keeps require", env: map[string]string{"DATABASE_URL": url + "?sslmode=require", "DB_SSL_ENABLED": "true"},
			wantMode: "require", wantWarn: []string{"sslmode=require in DATABASE_URL: encrypted but the server is not verified"}},
		{name: "ENABLED=false with DB_SSL_CA: CA ignored", env: map[string]string{"DATABASE_URL": url, "DB_SSL_ENABLED": "false", "DB_SSL_CA": ca},
			wantMode: "disable", wantRoot: "{ca}", wantWarn: []string{"DB_SSL_CA is ignored: DB_SSL_ENABLED=false turns TLS off"}},

		// --- DB_SSL_MODE ---
		{name: "DB_SSL_MODE sets sslmode", env: map[string]string{"DATABASE_URL": url, "DB_SSL_MODE": "verify-ca", "DB_SSL_CA": ca}, wantMode: "verify-ca", wantRoot: "{ca}"},
		{name: "DB_SSL_MODE beats PGSSLMODE", env: map[string]string{"PGHOST": "h", "PGSSLMODE": "disable", "DB_SSL_MODE": "verify-full"}, wantMode: "verify-full", noWarn: true},
		{name: "DB_SSL_MODE strengthens the DSN", env: map[string]string{"DATABASE_URL": url + "?sslmode=require", "DB_SSL_MODE": "verify-full"}, wantMode: "verify-full", noWarn: true},
		{name: "DB_SSL_MODE weaker than the DSN refused", env: map[string]string{"DATABASE_URL": url + "?sslmode=verify-full", "DB_SSL_MODE": "require"},
			wantErr: "sslmode=verify-full in DATABASE_URL, but DB_SSL_MODE=require would weaken it to sslmode=require", wantFix: "unset DB_SSL_MODE"},
		{name: "DB_SSL_MODE weaker than requiressl=1 refused", flag: kv + " requiressl=1", env: map[string]string{"DB_SSL_MODE": "prefer"},
			wantErr: "sslmode=require in the --connection-string flag, but DB_SSL_MODE=prefer would weaken it"},
		{name: "DB_SSL_MODE=bogus refused", env: map[string]string{"DATABASE_URL": url, "DB_SSL_MODE": "verify"},
			wantErr: `environment variable DB_SSL_MODE: invalid sslmode "verify"`, wantFix: "verify-full (recommended)"},

		// --- DB_SSL_REJECT_UNAUTHORIZED ---
		{name: "REJECT=false: require, unverified", env: map[string]string{"DATABASE_URL": url, "DB_SSL_REJECT_UNAUTHORIZED": "false"},
			wantMode: "require", wantWarn: []string{"DB_SSL_REJECT_UNAUTHORIZED=false: encrypted but the server is not verified: neither its certificate chain nor its host name is checked", "DB_SSL_CA=/path/to/ca.crt"}},
		{name: "REJECT=false with DB_SSL_CA: chain checked (libpq), host not", env: map[string]string{"DATABASE_URL": url, "DB_SSL_REJECT_UNAUTHORIZED": "false", "DB_SSL_CA": ca},
			wantMode: "require", wantRoot: "{ca}", wantWarn: []string{"the server's certificate must chain to " + ca + ", but its host name is not checked"}},
		{name: "REJECT=false vs DB_SSL_MODE=verify-full refused", env: map[string]string{"DATABASE_URL": url, "DB_SSL_REJECT_UNAUTHORIZED": "false", "DB_SSL_MODE": "verify-full"},
			wantErr: "DB_SSL_REJECT_UNAUTHORIZED=false contradicts DB_SSL_MODE=verify-full", wantFix: "unset DB_SSL_REJECT_UNAUTHORIZED"},
		{name: "REJECT=false vs DSN verify-full refused", env: map[string]string{"DATABASE_URL": url + "?sslmode=verify-full", "DB_SSL_REJECT_UNAUTHORIZED": "false"},
			wantErr: "sslmode=verify-full in DATABASE_URL, but DB_SSL_REJECT_UNAUTHORIZED=false would weaken it to sslmode=require"},
		{name: "REJECT=false with DB_SSL_MODE=prefer keeps prefer", env: map[string]string{"DATABASE_URL": url, "DB_SSL_REJECT_UNAUTHORIZED": "false", "DB_SSL_MODE": "prefer"},
			wantMode: "prefer"},
		{name: "REJECT=false and ENABLED=false: disable", env: map[string]string{"DATABASE_URL": url, "DB_SSL_REJECT_UNAUTHORIZED": "false", "DB_SSL_ENABLED": "false"},
			wantMode: "disable"},
		{name: "REJECT=true vs DB_SSL_MODE=require refused", env: map[string]string{"DATABASE_URL": url, "DB_SSL_REJECT_UNAUTHORIZED": "true", "DB_SSL_MODE": "require"},
			wantErr: "DB_SSL_REJECT_UNAUTHORIZED=true contradicts DB_SSL_MODE=require"},
		{name: "REJECT=true vs DSN require refused", env: map[string]string{"DATABASE_URL": url + "?sslmode=require", "DB_SSL_REJECT_UNAUTHORIZED": "true"},
			wantErr: "DB_SSL_REJECT_UNAUTHORIZED=true contradicts sslmode=require in DATABASE_URL"},
		{name: "REJECT=true vs ENABLED=false refused", env: map[string]string{"DATABASE_URL": url, "DB_SSL_REJECT_UNAUTHORIZED": "true", "DB_SSL_ENABLED": "false"},
			wantErr: "DB_SSL_ENABLED=false contradicts DB_SSL_REJECT_UNAUTHORIZED=true"},
		{name: "REJECT=yes refused", env: map[string]string{"DATABASE_URL": url, "DB_SSL_REJECT_UNAUTHORIZED": "yes"},
			wantErr: `DB_SSL_REJECT_UNAUTHORIZED: invalid value "yes"`},
		{name: "seed .env.example: all true + CA", env: map[string]string{"DATABASE_URL": url + "?sslmode=verify-full&sslrootcert=" + ca,
			"DB_SSL_ENABLED": "true", "DB_SSL_MODE": "verify-full", "DB_SSL_REJECT_UNAUTHORIZED": "true", "DB_SSL_CA": ca},
			wantMode: "verify-full", wantRoot: "{ca}", noWarn: true},

		// --- files ---
		{name: "DB_SSL_CA_CERT is DB_SSL_CA", env: map[string]string{"DATABASE_URL": url, "DB_SSL_CA_CERT": ca}, wantRoot: "{ca}", wantMode: "verify-full"},
		{name: "DB_SSL_CA and DB_SSL_CA_CERT differ: refused", env: map[string]string{"DATABASE_URL": url, "DB_SSL_CA": ca, "DB_SSL_CA_CERT": "/etc/other.crt"},
			wantErr: "DB_SSL_CA and DB_SSL_CA_CERT name different root certificate files"},
		{name: "DB_SSL_CA may not replace the root the DSN pins", env: map[string]string{"DATABASE_URL": url + "?sslrootcert=/etc/old.crt", "DB_SSL_CA": ca},
			wantErr: "the connection string in DATABASE_URL pins sslrootcert=/etc/old.crt, but DB_SSL_CA=", wantFix: "PGTRUST_ALLOW_WEAKER_ENV_SSLMODE=true"},
		{name: "DB_SSL_CA=system may not widen the DSN's private CA", env: map[string]string{"DATABASE_URL": url + "?sslrootcert=/etc/old.crt", "DB_SSL_CA": "system"},
			wantErr: "would replace it"},
		{name: "DB_SSL_CA replaces the DSN's sslrootcert when allowed, with a warning", env: map[string]string{"DATABASE_URL": url + "?sslrootcert=/etc/old.crt", "DB_SSL_CA": ca, "PGTRUST_ALLOW_WEAKER_ENV_SSLMODE": "true"},
			wantRoot: "{ca}", wantWarn: []string{"DB_SSL_CA=" + ca + " replaces sslrootcert=/etc/old.crt (from the connection string in DATABASE_URL)"}},
		{name: "DB_SSL_CA replaces PGSSLROOTCERT, with a warning", env: map[string]string{"DATABASE_URL": url, "PGSSLROOTCERT": "/etc/old.crt", "DB_SSL_CA": ca},
			wantRoot: "{ca}", wantWarn: []string{"DB_SSL_CA=" + ca + " replaces sslrootcert=/etc/old.crt (from PGSSLROOTCERT or a service file)"}},
		{name: "DB_SSL_CA missing file refused", env: map[string]string{"DATABASE_URL": url, "DB_SSL_CA": missing},
			wantErr: "DB_SSL_CA=" + missing + ": no such file", wantFix: "absolute path"},
		{name: "DB_SSL_CA=system passes to libpq", env: map[string]string{"DATABASE_URL": url, "DB_SSL_CA": "system"}, wantRoot: "system", wantMode: "verify-full"},
		{name: "DB_SSL_CA with PEM content refused", env: map[string]string{"DATABASE_URL": url, "DB_SSL_CA": "-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----"},
			wantErr: "DB_SSL_CA holds PEM content, but pgtrust takes a file path", wantFix: "write the PEM text to a file"},
		{name: "DB_SSL_CLIENT_KEY with PEM content refused, not quoted", env: map[string]string{"DATABASE_URL": url, "DB_SSL_CLIENT_KEY": "-----BEGIN PRIVATE KEY-----\nsecretkeybytes\n-----END PRIVATE KEY-----"},
			wantErr: "DB_SSL_CLIENT_KEY holds PEM content"},
		{name: "client cert and key", env: map[string]string{"DATABASE_URL": url, "DB_SSL_CLIENT_CERT": "/c/client.crt", "DB_SSL_CLIENT_KEY": "/c/client.key"},
			wantCert: "/c/client.crt", wantKey: "/c/client.key", wantMode: "verify-full"},
		{name: "DB_SSL_AUTO_CERT_DIR ignored with a warning", env: map[string]string{"DATABASE_URL": url, "DB_SSL_AUTO_CERT_DIR": "/x"},
			wantWarn: []string{"DB_SSL_AUTO_CERT_DIR is ignored by pgtrust mcp"}},

		// --- DB_SSL_REQUIRED and the weakening switch ---
		{name: "REQUIRED=true vs PGSSLMODE=prefer refused", env: map[string]string{"PGHOST": "h", "PGSSLMODE": "prefer", "DB_SSL_REQUIRED": "true"},
			wantErr: "PGSSLMODE=prefer may connect without TLS, but DB_SSL_REQUIRED=true"},
		{name: "REQUIRED=true with require", env: map[string]string{"PGHOST": "h", "DB_SSL_MODE": "require", "DB_SSL_REQUIRED": "true"}, wantMode: "require"},
		{name: "ALLOW_WEAKER=perhaps refused", env: map[string]string{"PGHOST": "h", "PGTRUST_ALLOW_WEAKER_ENV_SSLMODE": "perhaps"},
			wantErr: "PGTRUST_ALLOW_WEAKER_ENV_SSLMODE: invalid value"},
		{name: "weakening the default is a warning, not a refusal", env: map[string]string{"DATABASE_URL": url, "DB_SSL_MODE": "require"},
			wantMode: "require", wantWarn: []string{"DB_SSL_MODE=require: encrypted but the server is not verified"}},
	}

	for _, r := range rules {
		t.Run(r.name, func(t *testing.T) {
			home := t.TempDir()
			env := map[string]string{}
			for k, v := range r.env {
				env[k] = v
			}
			if r.service != "" {
				f := filepath.Join(t.TempDir(), "pg_service.conf")
				if err := os.WriteFile(f, []byte(r.service), 0o644); err != nil {
					t.Fatal(err)
				}
				env["PGSERVICEFILE"] = f
			}
			s, err := Resolve(r.flag, env, home)
			var text string
			if err != nil {
				text = failure.Text(err)
			} else {
				text = strings.Join(s.Warnings, "\n")
			}
			secretscan.Record(t, "dbenv output", text)
			for _, secret := range []string{pw, "secretkeybytes"} {
				if strings.Contains(text, secret) {
					t.Fatalf("output holds a secret:\n%s", text)
				}
			}
			if r.wantErr != "" {
				if err == nil {
					t.Fatalf("Resolve succeeded (sslmode=%s, warnings %q); want error %q", s.Config.SSLMode, s.Warnings, r.wantErr)
				}
				fe, ok := failure.As(err)
				if !ok || fe.Class != failure.ConfigInvalid {
					t.Fatalf("error %v: want a *failure.Error of class %s", err, failure.ConfigInvalid)
				}
				if !strings.Contains(err.Error(), r.wantErr) {
					t.Fatalf("error %q; want it to contain %q", err.Error(), r.wantErr)
				}
				if fe.Evidence == "" || fe.Fix == "" {
					t.Fatalf("error %q has no evidence or no fix:\n%s", err, text)
				}
				if r.wantFix != "" && !strings.Contains(fe.Fix, r.wantFix) {
					t.Fatalf("fix %q; want it to contain %q", fe.Fix, r.wantFix)
				}
				return
			}
			if err != nil {
				t.Fatalf("Resolve: %s", text)
			}
			if r.wantSource != "" && s.Source != r.wantSource {
				t.Errorf("Source = %q; want %q", s.Source, r.wantSource)
			}
			if r.wantMode != "" && s.Config.SSLMode != r.wantMode {
				t.Errorf("sslmode = %s; want %s", s.Config.SSLMode, r.wantMode)
			}
			if r.wantHost != "" && s.Config.Hosts[0].Host != r.wantHost {
				t.Errorf("host = %s; want %s", s.Config.Hosts[0].Host, r.wantHost)
			}
			want := strings.ReplaceAll(r.wantRoot, "{ca}", ca)
			if r.wantRoot != "" && s.Config.SSLRootCert != want {
				t.Errorf("sslrootcert = %q; want %q", s.Config.SSLRootCert, want)
			}
			if r.wantCert != "" && s.Config.SSLCert != r.wantCert {
				t.Errorf("sslcert = %q; want %q", s.Config.SSLCert, r.wantCert)
			}
			if r.wantKey != "" && s.Config.SSLKey != r.wantKey {
				t.Errorf("sslkey = %q; want %q", s.Config.SSLKey, r.wantKey)
			}
			if r.noWarn && len(s.Warnings) > 0 {
				t.Errorf("warnings %q; want none", s.Warnings)
			}
			for _, w := range r.wantWarn {
				found := false
				for _, got := range s.Warnings {
					found = found || strings.Contains(got, w)
				}
				if !found {
					t.Errorf("no warning contains %q; warnings:\n%s", w, strings.Join(s.Warnings, "\n"))
				}
			}
		})
	}
}
