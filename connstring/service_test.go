package connstring

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgtest"
)

// TestServiceFileLibpq18 compares service-file handling with libpq 18 (psql
// over PostgreSQL 18's libpq.so.5), with the same HOME, the same service
// files and the same environment: what the connection ends up with
// (user|database|application_name), or the error message.
func TestServiceFileLibpq18(t *testing.T) {
	s := pgtest.Start(t, pgtest.Options{})
	port := strconv.Itoa(s.Port)
	base := "host=127.0.0.1\nport=" + port + "\nuser=postgres\ndbname=postgres\nsslmode=disable\n"
	long := "[svc]\n" + base + "application_name=" + strings.Repeat("x", 1022-len("application_name=")) + "\n"
	const query = `SELECT current_user || '|' || current_database() || '|' || current_setting('application_name')`

	tests := []struct {
		name       string
		dsn        string
		user, sys  string // ~/.pg_service.conf and PGSYSCONFDIR/pg_service.conf ("" = absent)
		env        map[string]string
		want       string // user|db|app, or the error message
		wantErr    bool
		serviceSet bool
	}{
		{name: "user file", dsn: "service=svc", user: "[svc]\n" + base + "application_name=fromsvc\n", want: "postgres|postgres|fromsvc"},
		{name: "explicit wins", dsn: "service=svc application_name=explicit", user: "[svc]\n" + base + "application_name=fromsvc\n", want: "postgres|postgres|explicit"},
		{name: "service beats env", dsn: "service=svc", user: "[svc]\n" + base + "application_name=fromsvc\n", env: map[string]string{"PGAPPNAME": "env"}, want: "postgres|postgres|fromsvc"},
		{name: "env fills the rest", dsn: "service=svc", user: "[svc]\n" + base, env: map[string]string{"PGAPPNAME": "env"}, want: "postgres|postgres|env"},
		{name: "PGSERVICE", dsn: "", user: "[svc]\n" + base + "application_name=viaenv\n", env: map[string]string{"PGSERVICE": "svc"}, want: "postgres|postgres|viaenv"},
		{name: "keyword beats PGSERVICE", dsn: "service=b", user: "[a]\n" + base + "application_name=a\n[b]\n" + base + "application_name=b\n", env: map[string]string{"PGSERVICE": "a"}, want: "postgres|postgres|b"},
		{name: "URI param", dsn: "postgresql:///?service=svc", user: "[svc]\n" + base + "application_name=uri\n", want: "postgres|postgres|uri"},
		{name: "sysconf fallback", dsn: "service=svc", user: "[other]\nhost=nowhere\n", sys: "[svc]\n" + base + "application_name=sys\n", want: "postgres|postgres|sys"},
		{name: "user file hides sysconf", dsn: "service=svc", user: "[svc]\n" + base, sys: "[svc]\napplication_name=sys\n", want: "postgres|postgres|psql"},
		{name: "first value wins", dsn: "service=svc", user: "[svc]\n" + base + "application_name=a\napplication_name=b\n", want: "postgres|postgres|a"},
		{name: "section ends", dsn: "service=svc", user: "[svc]\n" + base + "[next]\napplication_name=n\n", want: "postgres|postgres|psql"},
		{name: "comments and blanks", dsn: "service=svc", user: "# c\n\n  [svc] trailing words\n\t" + base + "  # indented comment\n   application_name=a b c  \n", want: "postgres|postgres|a b c"},
		{name: "PGSERVICEFILE", dsn: "service=svc", env: map[string]string{"PGSERVICEFILE": "@custom"}, want: "postgres|postgres|custom"},
		{name: "missing", dsn: "service=nosuch", user: "[svc]\n" + base, want: `definition of service "nosuch" not found`, wantErr: true},
		{name: "missing no files", dsn: "service=nosuch", want: `definition of service "nosuch" not found`, wantErr: true},
		{name: "nested", dsn: "service=svc", user: "[svc]\nhost=x\nservice=other\n", want: `nested service specifications not supported in service file "@home/.pg_service.conf", line 3`, wantErr: true},
		{name: "spaces around =", dsn: "service=svc", user: "[svc]\nhost = x\n", want: `syntax error in service file "@home/.pg_service.conf", line 2`, wantErr: true},
		{name: "no =", dsn: "service=svc", user: "[svc]\nhost\n", want: `syntax error in service file "@home/.pg_service.conf", line 2`, wantErr: true},
		{name: "requiressl", dsn: "service=svc", user: "[svc]\n" + base + "requiressl=1\n", want: `syntax error in service file "@home/.pg_service.conf", line 7`, wantErr: true},
		{name: "bad line in other section", dsn: "service=svc", user: "[x]\nnonsense\n[svc]\n" + base, want: "postgres|postgres|psql"},
		{name: "too long", dsn: "service=svc", user: long, want: `line 7 too long in service file "@home/.pg_service.conf"`, wantErr: true},
		{name: "PGSERVICEFILE missing", dsn: "service=svc", env: map[string]string{"PGSERVICEFILE": "/nonexistent/pg_service.conf"}, want: `service file "/nonexistent/pg_service.conf" not found`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			home, sysdir := t.TempDir(), t.TempDir()
			if tt.user != "" {
				write(t, filepath.Join(home, ".pg_service.conf"), tt.user)
			}
			if tt.sys != "" {
				write(t, filepath.Join(sysdir, "pg_service.conf"), tt.sys)
			}
			env := map[string]string{"HOME": home, "PGSYSCONFDIR": sysdir}
			for k, v := range tt.env {
				if v == "@custom" {
					v = filepath.Join(t.TempDir(), "custom.conf")
					write(t, v, "[svc]\n"+base+"application_name=custom\n")
				}
				env[k] = v
			}
			want := strings.ReplaceAll(tt.want, "@home", home)
			lib := pgtest.Psql18Query(t, tt.dsn, query, env)
			libGot := strings.TrimRight(lib.Stdout, "\n")
			if !lib.OK {
				libGot = strings.TrimPrefix(strings.TrimSpace(lib.Stderr), "psql: error: ")
			}
			if libGot != want || lib.OK == tt.wantErr {
				t.Errorf("libpq 18: ok=%v %q, want %q (the test's expectation is wrong)", lib.OK, libGot, want)
			}
			c, err := ParseWithEnv(tt.dsn, env, home)
			var got string
			if err != nil {
				fe, _ := failure.As(err)
				if fe == nil || fe.Class != failure.ConfigInvalid || fe.Fix == "" {
					t.Fatalf("error %#v is not config_invalid with a fix", err)
				}
				got = fe.Message
			} else {
				app := c.RuntimeParams["application_name"]
				if app == "" {
					app = "psql" // psql's fallback_application_name
				}
				got = c.User + "|" + c.Database + "|" + app
				if c.Hosts[0].Host != "127.0.0.1" || c.Hosts[0].Port != uint16(s.Port) || c.SSLMode != SSLDisable {
					t.Errorf("host/port/sslmode from the service not applied: %+v %s", c.Hosts, c.SSLMode)
				}
			}
			if got != libGot || (err != nil) == lib.OK {
				t.Errorf("\n pgtrust %q (err %v)\n libpq18 %q", got, err, libGot)
			}
		})
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
