package failure

import (
	"regexp"
	"strings"
)

// Mask replaces a secret in rendered failures; connstring.Mask is the same.
const Mask = "********"

// secretSetting matches a secret libpq keyword (or its environment
// variable, or a TOML or JSON key of that name, in any case) followed by
// its value: 'single' or "double" quoted with backslash escapes, or bare up
// to white space, a quote, a comma, a brace or the next URI query
// parameter.
var secretSetting = regexp.MustCompile(`(?i)(^|[^A-Za-z0-9_])(password|sslpassword|scram_client_key|scram_server_key|oauth_client_secret|PGPASSWORD)(\s*=\s*|"\s*:\s*)('(?:[^'\\]|\\.)*'?|"(?:[^"\\]|\\.)*"?|[^\s&'",}]+)`)

// uriPassword matches the password of a URI's user information.
var uriPassword = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):([^@/\s]*)@`)

// Redact masks what looks like a secret in s: the value of a password,
// sslpassword, SCRAM key or OAuth client secret setting in key/value or URI
// query form, PGPASSWORD=..., and the password of a URI's user information.
// Errors wrap causes pgtrust did not write (a driver's message may quote a
// connection string), so everything a failure shows goes through it.
func Redact(s string) string {
	if !strings.ContainsAny(s, "=@:") {
		return s
	}
	s = secretSetting.ReplaceAllStringFunc(s, func(m string) string {
		g := secretSetting.FindStringSubmatch(m)
		if g[4] == Mask || g[4] == "'"+Mask+"'" || g[4] == `"`+Mask+`"` {
			return m
		}
		return g[1] + g[2] + g[3] + Mask
	})
	return uriPassword.ReplaceAllString(s, "${1}:"+Mask+"@")
}
