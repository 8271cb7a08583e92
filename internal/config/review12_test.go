package config

import (
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/secretscan"
)

// A ${VAR} inside a connection string cannot add libpq keywords or URI
// parts: DBUSER="app sslmode=disable host=evil" would otherwise turn
// verify-full into disable and point the proxy at another host. The error
// names the key and the variable, never the value; values in settings
// tables (not parsed) and a dsn that is one whole variable stay as they are.
func TestExpandRefusesDSNInjection(t *testing.T) {
	const evilKV = "app sslmode=disable host=evil.example"
	const evilURI = "app@evil.example:5432/app?sslmode=disable&x="
	env := map[string]string{"DBUSER": evilKV, "DBURIUSER": evilURI, "PLAIN": "app_user-1.x",
		"WHOLE": "host=db.example.com user=app sslmode=verify-full sslrootcert=/etc/ca.crt"}
	getenv := func(k string) string { return env[k] }
	parse := func(dsn string) (*File, error) {
		return ParseEnv([]byte("[upstreams.main]\nlisten = \"127.0.0.1:6432\"\ndsn = \""+dsn+"\"\n"), getenv)
	}
	for _, c := range []struct{ dsn, variable string }{
		{"host=db.example.com user=${DBUSER} dbname=app sslmode=verify-full sslrootcert=/etc/ca.crt", "DBUSER"},
		{"host=db.example.com dbname=app sslmode=verify-full sslrootcert=/etc/ca.crt user=${DBUSER}", "DBUSER"},
		{"host=db.example.com user='${DBUSER}' sslmode=verify-full", "DBUSER"},
		{"postgresql://${DBURIUSER}@db.example.com/app?sslmode=verify-full&sslrootcert=/etc/ca.crt", "DBURIUSER"},
	} {
		f, err := parse(c.dsn)
		if err == nil {
			kw, perr := connstring.ParseKeywords(f.Upstreams["main"].DSN)
			t.Fatalf("%s accepted: keywords %v (%v)", c.dsn, kw, perr)
		}
		fe := wantInvalid(t, err, "upstreams.main.dsn", c.variable, "[upstreams.NAME.settings]", "percent-encode")
		text := fe.Error() + fe.Evidence + fe.Fix + failure.Text(err)
		secretscan.Record(t, "dsn injection error", text)
		for _, v := range []string{"evil.example", "sslmode=disable"} {
			if strings.Contains(text, v) {
				t.Fatalf("the error shows the value (%q): %s", v, text)
			}
		}
	}
	// '/' is only syntax in a URI; a URI value with '%' or '#' is refused too.
	env["DBUSER"] = "a/b"
	if _, err := parse("host=db user=${DBUSER} sslmode=verify-full"); err != nil {
		t.Fatalf("a / in a key/value dsn: %v", err)
	}
	for _, v := range []string{"a/b", "a%40b", "a#b", "a?b", "a&b"} {
		env["DBUSER"] = v
		if _, err := parse("postgres://${DBUSER}@db/app"); failure.ClassOf(err) != failure.ConfigInvalid {
			t.Fatalf("URI user %q: %v", v, err)
		}
	}
	// Harmless values, a whole-variable dsn and settings tables pass.
	f, err := parse("host=db.example.com user=${PLAIN} sslmode=verify-full sslrootcert=/etc/ca.crt")
	if err != nil || !strings.Contains(f.Upstreams["main"].DSN, "user=app_user-1.x ") {
		t.Fatalf("plain value: %v", err)
	}
	if f, err = parse("${WHOLE}"); err != nil || f.Upstreams["main"].DSN != env["WHOLE"] {
		t.Fatalf("whole-variable dsn: %v", err)
	}
	f, err = ParseEnv([]byte("[upstreams.main]\nlisten = \"127.0.0.1:6432\"\n[upstreams.main.settings]\nhost = \"db\"\nuser = \"${DBUSER}\"\npassword = \"${DBUSER}\"\n"),
		func(string) string { return evilKV })
	if err != nil || f.Upstreams["main"].Settings["user"] != evilKV {
		t.Fatalf("settings table value: %v %v", err, f.Upstreams["main"].Settings)
	}
}

// An invalid ${…} reference names the key and where it is, not the text
// between the braces: in a password it is part of the secret.
func TestExpandInvalidReferenceHidesText(t *testing.T) {
	doc := "[storage.postgres.p]\nhost = \"db\"\nssl_key_password = \"Zx9${p@ss word}q\"\n"
	_, err := ParseEnv([]byte(doc), func(string) string { return "" })
	fe := wantInvalid(t, err, "ssl_key_password", "byte 3")
	text := fe.Error() + fe.Evidence + fe.Fix + failure.Text(err)
	secretscan.Record(t, "invalid reference error", text)
	for _, s := range []string{"p@ss", "s word", "Zx9"} {
		if strings.Contains(text, s) {
			t.Fatalf("the error shows %q: %s", s, text)
		}
	}
}

// http:// to Vault is for a Vault on this host only; config validate
// reports a remote one on the table, https:// and loopback pass.
func TestVaultPlainHTTPRemoteRefused(t *testing.T) {
	for _, addr := range []string{"http://vault.example.com:8200", "http://192.0.2.7:8200"} {
		v := VaultTable{Addr: addr, PKIRole: "pki/issue/epoch-client"}
		_, _, err := v.Options("upstreams.main.vault", "app")
		wantInvalid(t, err, "upstreams.main.vault.addr", "https://", "127.0.0.1")

		f := Empty()
		f.Upstreams["v"] = &Upstream{Listen: "127.0.0.1:6432", DSN: "host=db user=app sslmode=verify-full sslrootcert=system",
			Vault: &VaultTable{Addr: addr, PKIRole: "pki/issue/epoch-client", Token: "hvs.x"}}
		got := findingsFor(t, f)
		if !has(got["upstreams.v.vault"], StatusFail, failure.ConfigInvalid) {
			t.Fatalf("validate of %s: %+v", addr, got["upstreams.v.vault"])
		}
	}
	for _, addr := range []string{"http://127.0.0.1:8200", "http://localhost:8200", "http://[::1]:8200", "https://vault.example.com:8200"} {
		v := VaultTable{Addr: addr, PKIRole: "pki/issue/epoch-client"}
		if _, _, err := v.Options("upstreams.main.vault", "app"); err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
	}
}
