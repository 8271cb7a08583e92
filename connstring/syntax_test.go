package connstring

import (
	"maps"
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/failure"
)

// The error texts below were checked against psql 15.18 (libpq 15) where
// noted "psql"; the others follow libpq's source.
func TestParseKeywordsKeyValue(t *testing.T) {
	tests := []struct {
		in      string
		want    map[string]string
		wantErr string
	}{
		{in: "", want: map[string]string{}},
		{in: "   \t\n", want: map[string]string{}},
		{in: "host=db port=5433", want: map[string]string{"host": "db", "port": "5433"}},
		{in: "host = db\tport =\n5433 ", want: map[string]string{"host": "db", "port": "5433"}},
		{in: `host='a b\'c' dbname='x\\y'`, want: map[string]string{"host": "a b'c", "dbname": `x\y`}},
		{in: `host=a\ b port=1\`, want: map[string]string{"host": "a b", "port": "1"}}, // psql: host "a b"
		{in: `dbname=it's`, want: map[string]string{"dbname": "it's"}},
		{in: `options='-c a=b'`, want: map[string]string{"options": "-c a=b"}},
		{in: `password=''`, want: map[string]string{"password": ""}},
		{in: `host='a'port=1`, want: map[string]string{"host": "a", "port": "1"}},
		{in: "host=a host=b", want: map[string]string{"host": "b"}},
		// libpq skips blanks after '=' even across to the next word (psql: invalid channel_binding value: "host=/x").
		{in: "channel_binding= host=/x", want: map[string]string{"channel_binding": "host=/x"}},
		{in: "sslmode=", want: map[string]string{"sslmode": ""}},
		{in: "requiressl=1", want: map[string]string{"sslmode": "require"}},
		{in: "requiressl=0", want: map[string]string{"sslmode": "prefer"}},
		{in: "requiressl=1 sslmode=bogus", want: map[string]string{"sslmode": "bogus"}},
		{in: "sslmode=bogus requiressl=1", want: map[string]string{"sslmode": "require"}},
		{in: "host=x foo=bar", wantErr: `invalid connection option "foo"`},                   // psql
		{in: "=x", wantErr: `invalid connection option ""`},                                  // psql
		{in: "host=a 'port'=1", wantErr: `invalid connection option "'port'"`},               // psql
		{in: "x=1 y", wantErr: `invalid connection option "x"`},                              // psql
		{in: "host=a y", wantErr: `missing "=" after "y" in connection info string`},         // libpq
		{in: "abc", wantErr: `missing "=" after "abc" in connection info string`},            // libpq
		{in: "host x=1", wantErr: `missing "=" after "host" in connection info string`},      // libpq
		{in: "host='abc", wantErr: `unterminated quoted string in connection info string`},   // psql
		{in: `host='abc\'`, wantErr: `unterminated quoted string in connection info string`}, // libpq
		{in: "Host=x", wantErr: `invalid connection option "Host"`},                          // keywords are case-sensitive
		{in: "host=a\x00b", wantErr: `connection string contains a NUL byte`},                // fail closed
		{in: "sslkeylogfile=/k scram_client_key=x oauth_scope=s", want: map[string]string{"sslkeylogfile": "/k", "scram_client_key": "x", "oauth_scope": "s"}},
	}
	for _, tt := range tests {
		got, err := ParseKeywords(tt.in)
		checkParse(t, tt.in, got, err, tt.want, tt.wantErr)
	}
}

func TestParseKeywordsURI(t *testing.T) {
	tests := []struct {
		in      string
		want    map[string]string
		wantErr string
	}{
		{in: "postgresql://", want: map[string]string{}},
		{in: "postgres://", want: map[string]string{}},
		{in: "postgresql://localhost", want: map[string]string{"host": "localhost"}},
		{in: "postgresql://localhost:5433/mydb", want: map[string]string{"host": "localhost", "port": "5433", "dbname": "mydb"}},
		{in: "postgresql://u:p%40ss@h/db", want: map[string]string{"user": "u", "password": "p@ss", "host": "h", "dbname": "db"}},
		{in: "postgresql://u:a:b@h", want: map[string]string{"user": "u", "password": "a:b", "host": "h"}},
		{in: "postgresql://u@h", want: map[string]string{"user": "u", "host": "h"}},
		{in: "postgresql://:@h", want: map[string]string{"host": "h"}},
		{in: "postgresql://@h", want: map[string]string{"host": "h"}},
		{in: "postgresql://h1:5432,h2:5433/db", want: map[string]string{"host": "h1,h2", "port": "5432,5433", "dbname": "db"}},
		{in: "postgresql://h1,h2:5433", want: map[string]string{"host": "h1,h2", "port": ",5433"}},
		{in: "postgresql://h1,h2", want: map[string]string{"host": "h1,h2", "port": ","}},
		{in: "postgresql://[::1]:5432/db", want: map[string]string{"host": "::1", "port": "5432", "dbname": "db"}},
		{in: "postgresql://[2001:db8::1],[::1]:7/db", want: map[string]string{"host": "2001:db8::1,::1", "port": ",7", "dbname": "db"}},
		{in: "postgresql://%2Fvar%2Frun%2Fpostgresql/db", want: map[string]string{"host": "/var/run/postgresql", "dbname": "db"}},
		{in: "postgresql:///db?host=/tmp", want: map[string]string{"dbname": "db", "host": "/tmp"}},
		{in: "postgresql:///", want: map[string]string{}},
		{in: "postgresql://h/", want: map[string]string{"host": "h"}},
		{in: "postgresql://h?", want: map[string]string{"host": "h"}},
		{in: "postgresql://h/d%20b?application_name=a%26b&sslmode=verify-full", want: map[string]string{"host": "h", "dbname": "d b", "application_name": "a&b", "sslmode": "verify-full"}},
		{in: "postgresql://h/db?ssl=true", want: map[string]string{"host": "h", "dbname": "db", "sslmode": "require"}},
		{in: "postgresql://h/db?requiressl=1", want: map[string]string{"host": "h", "dbname": "db", "sslmode": "require"}},
		{in: "postgresql://h/db?ssl=false", wantErr: `invalid URI query parameter: "ssl"`},                              // psql
		{in: "postgresql://h/db?foo=bar", wantErr: `invalid URI query parameter: "foo"`},                                // psql
		{in: "postgresql://h/db?=x", wantErr: `invalid URI query parameter: ""`},                                        // psql
		{in: "postgresql://h/db?sslmode", wantErr: `missing key/value separator "=" in URI query parameter: "sslmode"`}, // psql
		{in: "postgresql://h/db?&", wantErr: `missing key/value separator "=" in URI query parameter: ""`},              // psql
		{in: "postgresql://h/db?a=b=c", wantErr: `extra key/value separator "=" in URI query parameter: "a"`},           // psql
		{in: "postgresql://h:%zz/db", wantErr: `invalid percent-encoded token: "%zz"`},                                  // psql
		{in: "postgresql://h/db%", wantErr: `invalid percent-encoded token: "db%"`},
		{in: "postgresql://h/d%00b", wantErr: `forbidden value %00 in percent-encoded value: "d%00b"`}, // psql
		{in: "postgresql://[::1", wantErr: `end of string reached when looking for matching "]" in IPv6 host address in URI: "postgresql://[::1"`},
		{in: "postgresql://[]/", wantErr: `IPv6 host address may not be empty in URI: "postgresql://[]/"`},
		{in: "postgresql://[::1]x", wantErr: `unexpected character "x" at position 19 in URI (expected ":" or "/"): "postgresql://[::1]x"`},
		// The password never appears in URI errors.
		{in: "postgresql://u:topsecret@[::1", wantErr: `end of string reached when looking for matching "]" in IPv6 host address in URI: "postgresql://u:********@[::1"`},
		{in: "postgresql://u:top%zzsecret@h", wantErr: `invalid percent-encoded token: "********"`},
		{in: "postgresql://h/db?password=top%zzsecret", wantErr: `invalid percent-encoded token: "********"`},
		// Not a URI designator (case-sensitive): parsed as key/value.
		{in: "POSTGRESQL://h", wantErr: `missing "=" after "POSTGRESQL://h" in connection info string`},
	}
	for _, tt := range tests {
		got, err := ParseKeywords(tt.in)
		checkParse(t, tt.in, got, err, tt.want, tt.wantErr)
	}
}

func checkParse(t *testing.T, in string, got map[string]string, err error, want map[string]string, wantErr string) {
	t.Helper()
	if wantErr != "" {
		if err == nil {
			t.Errorf("ParseKeywords(%q) = %v, want error %q", in, got, wantErr)
			return
		}
		if err.Error() != wantErr {
			t.Errorf("ParseKeywords(%q) error = %q, want %q", in, err.Error(), wantErr)
		}
		fe, ok := failure.As(err)
		if !ok || fe.Class != failure.ConfigInvalid || fe.Evidence == "" || fe.Fix == "" {
			t.Errorf("ParseKeywords(%q) error = %#v, want a ConfigInvalid *failure.Error with evidence and fix", in, err)
		}
		if ok && strings.Contains(fe.Detail(), "topsecret") {
			t.Errorf("ParseKeywords(%q) error leaks the secret: %s", in, fe.Detail())
		}
		return
	}
	if err != nil {
		t.Errorf("ParseKeywords(%q) error: %v", in, err)
		return
	}
	if !maps.Equal(got, want) {
		t.Errorf("ParseKeywords(%q) = %v, want %v", in, got, want)
	}
}

func TestUnquotedSecretFollowedByWordIsMasked(t *testing.T) {
	for _, in := range []string{
		"password=my hunter2 host=x",
		"host=x password=my hunter2=y",
		"sslpassword=my hunter2",
	} {
		_, err := ParseKeywords(in)
		if err == nil {
			t.Fatalf("ParseKeywords(%q) succeeded", in)
		}
		fe, _ := failure.As(err)
		if strings.Contains(fe.Detail(), "hunter2") || !strings.Contains(err.Error(), Mask) {
			t.Errorf("ParseKeywords(%q) error %q should mask the word after the secret", in, fe.Detail())
		}
	}
}

func TestRedactURI(t *testing.T) {
	tests := map[string]string{
		"postgresql://u:pw@h/db":                      "postgresql://u:********@h/db",
		"postgres://u@h/db":                           "postgres://u@h/db",
		"postgresql://h/db?password=x&sslmode=req":    "postgresql://h/db?password=********&sslmode=req",
		"postgresql://h/db?sslpassword=x":             "postgresql://h/db?sslpassword=********",
		"postgresql://h/db?pass%77ord=x":              "postgresql://h/db?pass%77ord=********",
		"postgresql://u:p/w@h":                        "postgresql://u:p/w@h", // '/' before '@': no user info for libpq either
		"host=x password=y":                           "host=x password=y",    // not a URI
		"postgresql://u:pw@h/db?oauth_client_secret=": "postgresql://u:********@h/db?oauth_client_secret=********",
	}
	for in, want := range tests {
		if got := RedactURI(in); got != want {
			t.Errorf("RedactURI(%q) = %q, want %q", in, got, want)
		}
	}
}
