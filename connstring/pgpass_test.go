package connstring

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writePassFile(t *testing.T, content string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pgpass")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

const passFile = `# comment line: db.example:5432:app:alice:commented
db.example:5432:app:alice:first
db.example:5432:app:alice:second-match-ignored
db.example:*:*:bob:bobpw
localhost:5432:app:alice:socketpw
10.0.0.1:5432:app:alice:addrpw
c\:olon:5432:app:alice:escaped\:pw\\x
*:6000:*:*:wild
`

func TestPasswordFor(t *testing.T) {
	path := writePassFile(t, passFile+"other:5432:app:alice:crlf\r\n", 0o600)
	tests := []struct {
		dsn  string
		host int
		want string
	}{
		{"host=db.example dbname=app user=alice", 0, "first"},
		{"host=db.example port=7 dbname=anything user=bob", 0, "bobpw"},
		{"host=db.example dbname=app user=carol", 0, ""},
		{"dbname=app user=alice", 0, "socketpw"},                                // default socket dir is "localhost"
		{"host=/var/run/postgresql dbname=app user=alice", 0, "socketpw"},       // so is the same dir given explicitly
		{"host=/tmp dbname=app user=alice", 0, ""},                              // another dir is not
		{"hostaddr=10.0.0.1 dbname=app user=alice", 0, "addrpw"},                // hostaddr when no host
		{"host=db.example hostaddr=10.0.0.1 dbname=app user=alice", 0, "first"}, // host wins over hostaddr
		{`host=c:olon dbname=app user=alice`, 0, `escaped:pw\x`},
		{"host=a,db.example port=6000,5432 dbname=app user=alice", 0, "wild"},
		{"host=a,db.example port=6000,5432 dbname=app user=alice", 1, "first"},
		{"host=other dbname=app user=alice", 0, "crlf"},
		{"host=db.example dbname=app user=alice password=given", 0, "given"},
	}
	for _, tt := range tests {
		c := mustParse(t, tt.dsn+" passfile="+path, nil)
		got, err := c.PasswordFor(c.Hosts[tt.host])
		if err != nil || got != tt.want {
			t.Errorf("%q host %d: PasswordFor = %q, %v; want %q", tt.dsn, tt.host, got, err, tt.want)
		}
	}
}

func TestPassFileEnvAndDefault(t *testing.T) {
	path := writePassFile(t, "*:*:*:*:fromenv\n", 0o600)
	c := mustParse(t, "host=h", map[string]string{"PGPASSFILE": path})
	if got, _ := c.PasswordFor(c.Hosts[0]); got != "fromenv" || c.PassFile != path {
		t.Errorf("PGPASSFILE: %q from %q", got, c.PassFile)
	}
	home := t.TempDir()
	if err := os.WriteFile(filepath.Join(home, ".pgpass"), []byte("*:*:*:*:fromhome\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := ParseWithEnv("host=h", nil, home)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := c.PasswordFor(c.Hosts[0]); got != "fromhome" {
		t.Errorf("~/.pgpass: %q", got)
	}
	// PGPASSWORD beats the file.
	c = mustParse(t, "host=h", map[string]string{"PGPASSFILE": path, "PGPASSWORD": "envpw"})
	if got, _ := c.PasswordFor(c.Hosts[0]); got != "envpw" {
		t.Errorf("PGPASSWORD: %q", got)
	}
}

func TestPassFileInsecureIsIgnored(t *testing.T) {
	for _, mode := range []os.FileMode{0o640, 0o604, 0o660, 0o700 | 0o010} {
		path := writePassFile(t, "*:*:*:*:leaky\n", mode)
		c := mustParse(t, "host=h passfile="+path, nil)
		got, warning, err := c.LookupPassword(c.Hosts[0])
		want := `WARNING: password file "` + path + `" has group or world access; permissions should be u=rw (0600) or less`
		if got != "" || err != nil || warning != want {
			t.Errorf("mode %o: got %q, %q, %v; want ignored with %q", mode, got, warning, err, want)
		}
		if len(c.Warnings) != 1 || c.Warnings[0] != want {
			t.Errorf("mode %o: Config.Warnings = %q", mode, c.Warnings)
		}
		if pw, _ := c.PasswordFor(c.Hosts[0]); pw != "" {
			t.Errorf("mode %o: PasswordFor = %q", mode, pw)
		}
	}
	// User bits are not checked, as in libpq.
	path := writePassFile(t, "*:*:*:*:ok\n", 0o700)
	c := mustParse(t, "host=h passfile="+path, nil)
	if got, _ := c.PasswordFor(c.Hosts[0]); got != "ok" || len(c.Warnings) != 0 {
		t.Errorf("mode 0700: %q, warnings %q", got, c.Warnings)
	}
}

func TestPassFileNotPlainOrMissing(t *testing.T) {
	dir := t.TempDir()
	c := mustParse(t, "host=h passfile="+dir, nil)
	got, warning, err := c.LookupPassword(c.Hosts[0])
	if got != "" || err != nil || !strings.Contains(warning, "is not a plain file") {
		t.Errorf("directory as passfile: %q, %q, %v", got, warning, err)
	}
	c = mustParse(t, "host=h passfile="+filepath.Join(dir, "absent"), nil)
	got, warning, err = c.LookupPassword(c.Hosts[0])
	if got != "" || warning != "" || err != nil || len(c.Warnings) != 0 {
		t.Errorf("missing passfile: %q, %q, %v, %q", got, warning, err, c.Warnings)
	}
}

func TestMatchPassField(t *testing.T) {
	tests := []struct {
		buf, tok, rest string
		ok             bool
	}{
		{"host:rest", "host", "rest", true},
		{"*:rest", "anything", "rest", true},
		{"*x:rest", "*x", "rest", true},
		{"ho\\:st:rest", "ho:st", "rest", true},
		{"ho\\\\st:rest", "ho\\st", "rest", true},
		{"host:rest", "hos", "", false},
		{"hos:rest", "host", "", false},
		{"host", "host", "", false}, // no separator: not a complete line
		{"host\\", "host", "", false},
		{":rest", "", "rest", true},
	}
	for _, tt := range tests {
		rest, ok := matchPassField(tt.buf, tt.tok)
		if rest != tt.rest || ok != tt.ok {
			t.Errorf("matchPassField(%q, %q) = %q, %v; want %q, %v", tt.buf, tt.tok, rest, ok, tt.rest, tt.ok)
		}
	}
}
