package connstring

import (
	"maps"
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/failure"
)

// FuzzParse checks that no input panics, that a successful parse's Redacted
// output never shows the password, and that it parses back to the same
// (redacted) settings.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		"",
		"host=db port=5432 dbname=app user=alice password=s3cr3t-pw",
		`host='a b\'c' password='p w\\x' sslmode=verify-full`,
		`password=a\ b host=x`,
		"host = x\tport =\n1",
		"channel_binding= host=/x",
		"host='unterminated",
		"requiressl=1 sslmode=require",
		"postgresql://u:p%40ss@h1:5432,[::1]:5433/db?sslmode=verify-full&application_name=a%26b",
		"postgres://%2Fvar%2Frun%2Fpostgresql/db",
		"postgresql://[::1",
		"postgresql://[]/",
		"postgresql://[fe80::1%25eth0]:5432/db",
		"postgresql://h/db?ssl=true&password=x%zz",
		"postgresql://u:pw@/db?host=/tmp&port=1,2",
		"postgresql://h/d%00b",
		"postgresql:///?sslrootcert=system",
		"host=a,b,c hostaddr=1.1.1.1,,::1 port=1,2,3",
		"dbname='postgresql://x:pw-in-db@y/z' sslnegotiation=direct sslmode=require",
		"require_auth=!password,!md5 sslrootcert=system",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, dsn string) {
		if _, err := ParseKeywords(dsn); err != nil && isPasswordPosition(dsn, "s3cr3t-pw") {
			if fe, ok := failure.As(err); !ok || strings.Contains(fe.Detail(), "s3cr3t-pw") {
				t.Fatalf("syntax error shows the password: %v", err)
			}
		}
		c, err := ParseWithEnv(dsn, nil, "/home/fuzz")
		if err != nil {
			return
		}
		red := c.Redacted()
		if pw := c.Password; len(pw) >= 4 && !strings.Contains(Mask, pw) && !appearsElsewhere(c, pw) && strings.Contains(red, pw) {
			// A substring test alone flags text that spans keywords and the
			// mask ("ord=" in "password=********"): it is a leak only if the
			// output changes with the password.
			other := c
			other.Settings = maps.Clone(c.Settings)
			if _, ok := other.Settings["password"]; ok {
				other.Settings["password"] = pw + "\x01other"
			}
			other.Password = pw + "\x01other"
			if other.Redacted() != red {
				t.Fatalf("Redacted() %q contains the password %q", red, pw)
			}
		}
		back, err := ParseKeywords(red)
		if err != nil {
			t.Fatalf("Redacted() %q does not parse: %v", red, err)
		}
		if want := c.RedactedSettings(); !maps.Equal(back, want) {
			t.Fatalf("Redacted() %q parses to %v, want %v", red, back, want)
		}
	})
}

// isPasswordPosition reports whether pw occurs exactly once in dsn, as the
// value of password= or as the password of a URI's user info.
func isPasswordPosition(dsn, pw string) bool {
	i := strings.Index(dsn, pw)
	if i < 0 || strings.Count(dsn, pw) != 1 {
		return false
	}
	before, after := dsn[:i], dsn[i+len(pw):]
	if strings.HasSuffix(before, "password=") || strings.HasSuffix(before, "password='") {
		return true
	}
	n := uriPrefixLen(dsn)
	return n > 0 && strings.HasSuffix(before, ":") && strings.HasPrefix(after, "@") && !strings.ContainsAny(before[n:], "/@")
}

// appearsElsewhere reports whether s is part of a non-secret setting, where
// showing it is not a leak.
func appearsElsewhere(c *Config, s string) bool {
	for k, v := range c.RedactedSettings() {
		if strings.Contains(k, s) || strings.Contains(v, s) || strings.Contains(QuoteValue(v), s) {
			return true
		}
	}
	return false
}
