package connstring

import (
	"encoding/json"
	"log/slog"
	"sort"
	"strings"
)

// Redacted returns the explicitly set settings in key/value form, in libpq's
// keyword order, with every secret (password, sslpassword, SCRAM keys, OAuth
// client secret) shown as Mask, also inside values that are themselves
// connection strings or URIs. The result parses back with ParseKeywords to
// RedactedSettings.
//
// Value receivers (here and on String, GoString, LogValue) make a Config
// printed by value as safe as one printed through a pointer.
func (c Config) Redacted() string {
	rs := c.RedactedSettings()
	var b strings.Builder
	for _, k := range keywords {
		v, ok := rs[k.name]
		if !ok {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(k.name)
		b.WriteByte('=')
		b.WriteString(QuoteValue(v))
	}
	return b.String()
}

// String returns Redacted, so that %v and %s never show a secret.
func (c Config) String() string { return c.Redacted() }

// GoString returns Redacted, so that %#v never shows a secret either.
func (c Config) GoString() string { return "connstring.Config{" + c.Redacted() + "}" }

// LogValue makes slog log the redacted settings.
func (c Config) LogValue() slog.Value { return slog.StringValue(c.Redacted()) }

// MarshalJSON encodes c without secrets: the secret fields carry json:"-"
// and a dbname that is itself a connection string is redacted.
func (c Config) MarshalJSON() ([]byte, error) {
	type plain Config // drops the methods, so no recursion
	p := plain(c)
	p.Database = redactValue("dbname", c.Database)
	return json.Marshal(p)
}

// RedactedSettings returns a copy of Settings with secrets masked (see Redacted).
func (c Config) RedactedSettings() map[string]string {
	out := make(map[string]string, len(c.Settings))
	for k, v := range c.Settings {
		out[k] = redactValue(k, v)
	}
	return out
}

// redactValue masks the value of a secret keyword, and secrets inside a
// value that is itself a connection string (e.g. a dbname holding a URI).
func redactValue(k, v string) string {
	if IsSecret(k) {
		return Mask
	}
	if IsURI(v) || strings.IndexByte(v, '=') >= 0 {
		m, err := ParseKeywords(v)
		if err != nil {
			if IsURI(v) {
				return RedactURI(v)
			}
			for _, kw := range keywords {
				if kw.secret && strings.Contains(v, kw.name) {
					return Mask // unparsable and mentions a secret keyword: show nothing
				}
			}
			return v
		}
		hasSecret := false
		for kw := range m {
			hasSecret = hasSecret || IsSecret(kw)
		}
		if !hasSecret {
			return v
		}
		if IsURI(v) {
			return RedactURI(v)
		}
		return Config{Settings: m}.Redacted()
	}
	return v
}

// KeyValueString renders settings as a key/value connection string, keys
// in sorted order and values quoted by QuoteValue, so that Parse reads the
// same settings back.
func KeyValueString(settings map[string]string) string {
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(k + "=" + QuoteValue(settings[k]))
	}
	return b.String()
}

// QuoteValue renders v for a key/value connection string: bare when that
// parses back unchanged, else single-quoted with \ and ' escaped.
func QuoteValue(v string) string {
	needs := v == ""
	for i := 0; i < len(v) && !needs; i++ {
		needs = isSpace(v[i]) || v[i] == '\'' || v[i] == '\\'
	}
	if !needs {
		return v
	}
	var b strings.Builder
	b.WriteByte('\'')
	for i := 0; i < len(v); i++ {
		if v[i] == '\'' || v[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(v[i])
	}
	b.WriteByte('\'')
	return b.String()
}
