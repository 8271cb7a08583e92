package connstring

import (
	"strconv"
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgtest"
)

// TestURISpacesLibpq18 compares URI whitespace handling with libpq 18
// (psql over PostgreSQL 18's libpq.so.5): spaces around every URI part are
// dropped, a space inside one is refused with libpq's message.
func TestURISpacesLibpq18(t *testing.T) {
	s := pgtest.Start(t, pgtest.Options{})
	hp := "127.0.0.1:" + strconv.Itoa(s.Port)
	const query = `SELECT current_user || '|' || current_database() || '|' || current_setting('application_name')`
	tests := []struct {
		uri     string
		want    string // user|dbname|application_name, or the error
		wantErr bool
	}{
		{uri: "postgresql://postgres@" + hp + "/postgres?application_name=app ", want: "postgres|postgres|app"},
		{uri: "postgresql://" + hp + "/postgres?application_name= app &user= postgres", want: "postgres|postgres|app"},
		{uri: "postgresql://" + hp + "/postgres? application_name =app&user=postgres", want: "postgres|postgres|app"},
		{uri: "postgresql:// postgres @" + hp + "/ postgres ?application_name=x", want: "postgres|postgres|x"},
		{uri: "postgresql://127.0.0.1 :" + strconv.Itoa(s.Port) + " /postgres?user=postgres&application_name=h", want: "postgres|postgres|h"},
		{uri: "postgresql://" + hp + "/postgres?user=postgres&application_name=a%20b", want: "postgres|postgres|a b"},
		{uri: "postgresql://" + hp + "/postgres?user=postgres&application_name=%20a%20", want: "postgres|postgres| a "},
		{uri: "postgresql://" + hp + "/postgres?user=postgres&application_name=a b", want: `unexpected spaces found in "a b", use percent-encoded spaces (%20) instead`, wantErr: true},
		{uri: "postgresql://" + hp + "/d b?user=postgres", want: `unexpected spaces found in "d b", use percent-encoded spaces (%20) instead`, wantErr: true},
		{uri: "postgresql://po stgres@" + hp + "/postgres", want: `unexpected spaces found in "po stgres", use percent-encoded spaces (%20) instead`, wantErr: true},
		{uri: "postgresql://" + hp + "/postgres?user=postgres&appli cation_name=x", want: `unexpected spaces found in "appli cation_name", use percent-encoded spaces (%20) instead`, wantErr: true},
		{uri: "postgresql://127.0.0.1 ,localhost:" + strconv.Itoa(s.Port) + "/postgres?user=postgres", want: `unexpected spaces found in "127.0.0.1 ,localhost", use percent-encoded spaces (%20) instead`, wantErr: true},
		{uri: "postgresql://" + hp + "/postgres?user=postgres&application_name=a %zz", want: `unexpected spaces found in "a %zz", use percent-encoded spaces (%20) instead`, wantErr: true},
		{uri: "postgresql://" + hp + "/postgres?user=postgres&application_name=%zz b", want: `invalid percent-encoded token: "%zz b"`, wantErr: true},
	}
	for _, tt := range tests {
		home := t.TempDir()
		env := map[string]string{"HOME": home}
		lib := pgtest.Psql18Query(t, tt.uri, query, env)
		libGot := strings.TrimRight(lib.Stdout, "\n")
		if !lib.OK {
			libGot = strings.TrimPrefix(strings.TrimSpace(lib.Stderr), "psql: error: ")
		}
		if libGot != tt.want || lib.OK == tt.wantErr {
			t.Errorf("libpq 18 for %q: ok=%v %q, want %q (the test's expectation is wrong)", tt.uri, lib.OK, libGot, tt.want)
		}
		c, err := ParseWithEnv(tt.uri, env, home)
		var got string
		if err != nil {
			fe, _ := failure.As(err)
			if fe == nil || fe.Class != failure.ConfigInvalid {
				t.Errorf("%q: error %v is not config_invalid", tt.uri, err)
				continue
			}
			got = fe.Message
		} else {
			got = c.User + "|" + c.Database + "|" + c.RuntimeParams["application_name"]
		}
		if got != libGot || (err != nil) != !lib.OK {
			t.Errorf("%q:\n pgtrust %q\n libpq18 %q", tt.uri, got, libGot)
		}
	}
}

// A password with a space is refused like any other part, but the error
// never shows it.
func TestURISpacesSecretMasked(t *testing.T) {
	_, err := ParseKeywords("postgresql://u:pa ss@h/db")
	if err == nil || strings.Contains(err.Error(), "pa ss") || !strings.Contains(err.Error(), `unexpected spaces found in "`+Mask+`"`) {
		t.Fatalf("err = %v", err)
	}
	_, err = ParseKeywords("postgresql://h/db?password=se cret")
	if err == nil || strings.Contains(err.Error(), "se cret") {
		t.Fatalf("err = %v", err)
	}
	m, err := ParseKeywords("postgresql://h/db?password= secret ")
	if err != nil || m["password"] != "secret" {
		t.Fatalf("m = %v, err = %v", m["password"], err)
	}
}
