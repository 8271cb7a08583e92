package connstring

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"testing"
)

func TestRedactedHidesSecrets(t *testing.T) {
	const secret = "hunter2"
	dsns := []string{
		"host=db user=u password=hunter2 sslpassword=hunter2 sslmode=require",
		"postgresql://u:hunter2@db/app?sslpassword=hunter2&oauth_client_secret=hunter2",
		"host=db dbname='postgresql://x:hunter2@y/z'",
		"host=db dbname='host=y password=hunter2'",
		"host=db dbname='password=hunter2 bad'",
		"host=db scram_client_key=aHVudGVyMmh1bnRlcjJodW50ZXIyaHVudGVyMmh1bnQ= scram_server_key=aHVudGVyMmh1bnRlcjJodW50ZXIyaHVudGVyMmh1bnQ=",
	}
	for _, dsn := range dsns {
		c := mustParse(t, dsn, map[string]string{"PGPASSWORD": "hunter2"})
		js, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		var logged bytes.Buffer
		slog.New(slog.NewTextHandler(&logged, nil)).Info("connecting", "config", c, "byvalue", *c)
		outputs := map[string]string{
			"Redacted":  c.Redacted(),
			"String":    c.String(),
			"%v":        fmt.Sprintf("%v", c),
			"%+v value": fmt.Sprintf("%+v", *c),
			"%#v":       fmt.Sprintf("%#v", c),
			"%s value":  fmt.Sprintf("%s", *c),
			"json":      string(js),
			"slog":      logged.String(),
		}
		for name, out := range outputs {
			if strings.Contains(out, secret) || strings.Contains(out, "aHVudGVy") {
				t.Errorf("%q: %s leaks the secret: %s", dsn, name, out)
			}
		}
		if !strings.Contains(c.Redacted(), Mask) {
			t.Errorf("%q: Redacted %q shows no mask", dsn, c.Redacted())
		}
	}
}

func TestRedactedFormat(t *testing.T) {
	c := mustParse(t, `sslmode=verify-full password=pw host=db application_name='my app' options='-c a=\'b\''`, nil)
	want := `password=******** host=db options='-c a=\'b\'' application_name='my app' sslmode=verify-full`
	if got := c.Redacted(); got != want {
		t.Errorf("Redacted = %s\nwant       %s", got, want)
	}
	back, err := ParseKeywords(c.Redacted())
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(back, c.RedactedSettings()) {
		t.Errorf("Redacted does not parse back: %v vs %v", back, c.RedactedSettings())
	}
	if c.Settings["password"] != "pw" {
		t.Error("RedactedSettings must not modify Settings")
	}
}

func TestQuoteValue(t *testing.T) {
	for _, v := range []string{"", "plain", "a b", `it's`, `back\slash`, "tab\there", "=", "'", `\`, "x=y z", "\v"} {
		q := QuoteValue(v)
		m, err := ParseKeywords("dbname=" + q)
		if err != nil || m["dbname"] != v {
			t.Errorf("QuoteValue(%q) = %s parses back as %q, %v", v, q, m["dbname"], err)
		}
	}
	if QuoteValue("plain") != "plain" || QuoteValue("") != "''" {
		t.Error("QuoteValue should leave plain values bare and quote empty ones")
	}
}

func TestKeyValueStringRoundTrips(t *testing.T) {
	in := map[string]string{"host": "db", "application_name": "it's a b\\c", "sslmode": "verify-full", "options": ""}
	s := KeyValueString(in)
	if s != `application_name='it\'s a b\\c' host=db options='' sslmode=verify-full` {
		t.Fatalf("KeyValueString = %s", s)
	}
	cfg, err := ParseWithEnv(s, map[string]string{}, "")
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range in {
		if got := cfg.Settings[k]; got != v && !(k == "options" && got == "") {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
}
