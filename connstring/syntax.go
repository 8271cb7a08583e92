package connstring

import (
	"strings"

	"github.com/pgtrust/pgtrust/failure"
)

// The URI designators libpq recognises (case-sensitive, like libpq).
const (
	uriDesignator      = "postgresql://"
	shortURIDesignator = "postgres://"
)

// uriPrefixLen returns the length of the URI designator dsn starts with, or 0.
func uriPrefixLen(dsn string) int {
	switch {
	case strings.HasPrefix(dsn, uriDesignator):
		return len(uriDesignator)
	case strings.HasPrefix(dsn, shortURIDesignator):
		return len(shortURIDesignator)
	}
	return 0
}

// IsURI reports whether dsn is a postgres:// or postgresql:// URI.
func IsURI(dsn string) bool { return uriPrefixLen(dsn) > 0 }

// ParseKeywords parses only the syntax of dsn (a libpq key/value string or a
// postgres:// / postgresql:// URI) into keyword→value, the way libpq's
// conninfo_parse and conninfo_uri_parse do: no environment, no defaults, no
// value validation. requiressl is turned into sslmode and the URI parameter
// ssl=true into sslmode=require, as libpq does. A later keyword overrides an
// earlier one. "" gives an empty map. Errors are *failure.Error of class
// ConfigInvalid and never contain a secret.
func ParseKeywords(dsn string) (map[string]string, error) {
	if strings.IndexByte(dsn, 0) >= 0 {
		// C's libpq cannot see past a NUL; refuse rather than guess which part was meant.
		return nil, invalid("connection string contains a NUL byte").
			WithEvidence("a NUL (0x00) byte is part of the connection string").
			WithFix("remove the NUL byte; in a URI a NUL cannot be percent-encoded either")
	}
	if uriPrefixLen(dsn) > 0 {
		return parseURI(dsn)
	}
	return parseKeyValue(dsn)
}

// invalid returns a ConfigInvalid error with a libpq-worded message.
func invalid(format string, args ...any) *failure.Error {
	return failure.New(failure.ConfigInvalid, format, args...)
}

// isSpace is C's isspace in the C locale, which is what conninfo_parse uses.
func isSpace(c byte) bool {
	switch c {
	case ' ', '\t', '\n', '\v', '\f', '\r':
		return true
	}
	return false
}

// storeValue records keyword=value like libpq's conninfo_storeval: requiressl
// becomes sslmode; an unknown keyword is reported as unknown (ok=false).
func storeValue(m map[string]string, kw, val string) (ok bool) {
	if kw == "requiressl" {
		kw = "sslmode"
		if strings.HasPrefix(val, "1") {
			val = "require"
		} else {
			val = "prefer"
		}
	}
	if _, known := keywordIndex[kw]; !known {
		return false
	}
	m[kw] = val
	return true
}

// parseKeyValue is libpq's conninfo_parse: whitespace-separated keyword =
// value pairs; values are either unquoted (ending at whitespace, backslash
// escapes the next byte) or single-quoted (backslash escapes the next byte).
// As in libpq, whitespace after "=" is skipped, so "a= b=c" sets a to "b=c".
func parseKeyValue(s string) (map[string]string, error) {
	m := make(map[string]string)
	// afterSecret is true when the previous value was an unquoted secret: a
	// stray word that follows is most likely the rest of that secret (a space
	// in an unquoted password), so errors must not quote it.
	afterSecret := false
	i := 0
	for i < len(s) {
		if isSpace(s[i]) {
			i++
			continue
		}
		start := i
		for i < len(s) && s[i] != '=' && !isSpace(s[i]) {
			i++
		}
		name := s[start:i]
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		shown := name
		if afterSecret {
			shown = Mask
		}
		if i >= len(s) || s[i] != '=' {
			e := invalid("missing \"=\" after \"%s\" in connection info string", shown).
				WithFix(`write every setting as keyword=value; quote values that contain spaces: application_name='my app'`)
			if afterSecret {
				e.WithEvidence("the word follows an unquoted secret value, so it may be part of that secret")
			} else {
				e.WithEvidence("%q is not followed by \"=\"", name)
			}
			return nil, e
		}
		i++ // past '='
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		var val strings.Builder
		quoted := i < len(s) && s[i] == '\''
		if quoted {
			i++
			for {
				if i >= len(s) {
					return nil, invalid("unterminated quoted string in connection info string").
						WithEvidence("the value of %q opens a single quote that is never closed", shown).
						WithFix(`close the quote; write a quote inside a value as \' and a backslash as \\`)
				}
				c := s[i]
				i++
				if c == '\\' {
					if i < len(s) {
						val.WriteByte(s[i])
						i++
					}
					continue
				}
				if c == '\'' {
					break
				}
				val.WriteByte(c)
			}
		} else {
			for i < len(s) {
				c := s[i]
				i++
				if isSpace(c) {
					break
				}
				if c == '\\' {
					if i < len(s) {
						val.WriteByte(s[i])
						i++
					}
					continue
				}
				val.WriteByte(c)
			}
		}
		if !storeValue(m, name, val.String()) {
			e := invalid("invalid connection option \"%s\"", shown).
				WithFix("use a libpq connection keyword (host, port, dbname, user, sslmode, sslrootcert, ...); keywords are lower case")
			if afterSecret {
				e.WithEvidence("the word follows an unquoted secret value, so it may be part of that secret; quote values that contain spaces")
			} else {
				e.WithEvidence("%q is not a keyword libpq accepts", name)
			}
			return nil, e
		}
		afterSecret = !quoted && IsSecret(name)
	}
	return m, nil
}

// parseURI is libpq's conninfo_uri_parse_options:
//
//	postgresql://[user[:password]@][netloc][:port][,...][/dbname][?param1=value1&...]
func parseURI(uri string) (map[string]string, error) {
	m := make(map[string]string)
	shown := RedactURI(uri)
	at := func(i int) byte {
		if i < len(uri) {
			return uri[i]
		}
		return 0
	}
	start := uriPrefixLen(uri)
	p := start

	// Look ahead for the user-info designator, as libpq does: an '@' before any '/'.
	for p < len(uri) && uri[p] != '@' && uri[p] != '/' {
		p++
	}
	if at(p) == '@' {
		q := start
		for uri[q] != ':' && uri[q] != '@' {
			q++
		}
		if user := uri[start:q]; user != "" {
			if err := storeDecoded(m, "user", user, false); err != nil {
				return nil, err
			}
		}
		if uri[q] == ':' {
			pwStart := q + 1
			for q = pwStart; uri[q] != '@'; q++ {
			}
			if pw := uri[pwStart:q]; pw != "" {
				if err := storeDecoded(m, "password", pw, true); err != nil {
					return nil, err
				}
			}
		}
		p = q + 1
	} else {
		p = start
	}

	var hosts, ports strings.Builder
	var prev byte
	for {
		var host string
		if at(p) == '[' {
			p++
			hs := p
			for p < len(uri) && uri[p] != ']' {
				p++
			}
			if p >= len(uri) {
				return nil, invalid("end of string reached when looking for matching \"]\" in IPv6 host address in URI: \"%s\"", shown).
					WithEvidence("an IPv6 address opened with \"[\" is not closed").
					WithFix("write IPv6 hosts as [addr], e.g. postgresql://[::1]:5432/db")
			}
			if p == hs {
				return nil, invalid("IPv6 host address may not be empty in URI: \"%s\"", shown).
					WithEvidence("the URI contains \"[]\"").
					WithFix("put an IPv6 address between the brackets, or leave the host out to use the default")
			}
			host = uri[hs:p]
			p++
			if c := at(p); c != 0 && c != ':' && c != '/' && c != '?' && c != ',' {
				return nil, invalid("unexpected character \"%c\" at position %d in URI (expected \":\" or \"/\"): \"%s\"", c, p+1, shown).
					WithEvidence("%q follows the closing \"]\" of an IPv6 address", string(c)).
					WithFix("after [addr] write :port, /dbname, ?params or a comma and the next host")
			}
		} else {
			hs := p
			for p < len(uri) && !strings.ContainsRune(":/?,", rune(uri[p])) {
				p++
			}
			host = uri[hs:p]
		}
		prev = at(p)
		hosts.WriteString(host)
		if prev == ':' {
			p++
			ps := p
			for p < len(uri) && !strings.ContainsRune("/?,", rune(uri[p])) {
				p++
			}
			ports.WriteString(uri[ps:p])
			prev = at(p)
		}
		if prev != ',' {
			break
		}
		p++
		hosts.WriteByte(',')
		ports.WriteByte(',')
	}
	if hosts.Len() > 0 {
		if err := storeDecoded(m, "host", hosts.String(), false); err != nil {
			return nil, err
		}
	}
	if ports.Len() > 0 {
		if err := storeDecoded(m, "port", ports.String(), false); err != nil {
			return nil, err
		}
	}
	if prev != 0 && prev != '?' {
		p++ // past '/'
		ds := p
		for p < len(uri) && uri[p] != '?' {
			p++
		}
		prev = at(p)
		// An empty path is not stored: it would force dbname=user and hide PGDATABASE.
		if db := uri[ds:p]; db != "" {
			if err := storeDecoded(m, "dbname", db, false); err != nil {
				return nil, err
			}
		}
	}
	if prev != 0 {
		if err := parseURIParams(uri[p+1:], m); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// storeDecoded percent-decodes raw and stores it under kw.
func storeDecoded(m map[string]string, kw, raw string, secret bool) error {
	v, err := uriDecode(raw, secret)
	if err != nil {
		return err
	}
	m[kw] = v
	return nil
}

// parseURIParams is libpq's conninfo_uri_parse_params.
func parseURIParams(params string, m map[string]string) error {
	for params != "" {
		i, eq := 0, -1
		for i < len(params) && params[i] != '&' {
			if params[i] == '=' {
				if eq >= 0 {
					return invalid("extra key/value separator \"=\" in URI query parameter: \"%s\"", params[:eq]).
						WithEvidence("the query parameter %q contains a second \"=\"", params[:eq]).
						WithFix("percent-encode \"=\" inside a value as %%3D")
				}
				eq = i
			}
			i++
		}
		seg := params[:i]
		if i < len(params) {
			params = params[i+1:]
		} else {
			params = ""
		}
		if eq < 0 {
			return invalid("missing key/value separator \"=\" in URI query parameter: \"%s\"", seg).
				WithEvidence("the query parameter %q has no \"=\"", seg).
				WithFix("write query parameters as keyword=value joined by &")
		}
		kw, err := uriDecode(seg[:eq], false)
		if err != nil {
			return err
		}
		val, err := uriDecode(seg[eq+1:], IsSecret(kw))
		if err != nil {
			return err
		}
		// JDBC compatibility, as in libpq.
		if kw == "ssl" && val == "true" {
			kw, val = "sslmode", "require"
		}
		if !storeValue(m, kw, val) {
			return invalid("invalid URI query parameter: \"%s\"", kw).
				WithEvidence("%q is not a keyword libpq accepts", kw).
				WithFix("use a libpq connection keyword as query parameter, e.g. ?sslmode=verify-full&sslrootcert=/path/ca.crt")
		}
	}
	return nil
}

// uriDecode is libpq 18's conninfo_uri_decode: spaces (only ' ') before
// and after the value are dropped, a space anywhere else is an error (it
// must be written %20), %XY becomes the byte 0xXY, and malformed tokens and
// %00 are errors. When secret is set the error shows Mask instead of the
// value.
func uriDecode(s string, secret bool) (string, error) {
	shown := s
	if secret {
		shown = Mask
	}
	i := 0
	for i < len(s) && s[i] == ' ' {
		i++
	}
	var b strings.Builder
	for ; i < len(s) && s[i] != ' '; i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		hi, ok1 := hexDigit(s, i+1)
		lo, ok2 := hexDigit(s, i+2)
		if !ok1 || !ok2 {
			return "", invalid("invalid percent-encoded token: \"%s\"", shown).
				WithEvidence("\"%%\" must be followed by two hexadecimal digits").
				WithFix("percent-encode a literal %% as %%25")
		}
		c := hi<<4 | lo
		if c == 0 {
			return "", invalid("forbidden value %%00 in percent-encoded value: \"%s\"", shown).
				WithEvidence("%%00 would put a NUL byte into a setting").
				WithFix("remove %%00 from the URI")
		}
		b.WriteByte(c)
		i += 2
	}
	for i < len(s) && s[i] == ' ' {
		i++
	}
	if i < len(s) {
		// libpq 18 refuses rather than guessing whether the space belongs to the value.
		return "", invalid("unexpected spaces found in \"%s\", use percent-encoded spaces (%%20) instead", shown).
			WithEvidence("a URI part contains an unencoded space between other characters").
			WithFix("write a space inside a URI value as %%20 (spaces before and after a value are dropped)")
	}
	return b.String(), nil
}

func hexDigit(s string, i int) (byte, bool) {
	if i >= len(s) {
		return 0, false
	}
	switch c := s[i]; {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// RedactURI returns uri with the password of its user-info part and the
// values of secret query parameters replaced by Mask. It finds the user info
// the way libpq's parser does, so it is safe on malformed URIs too (error
// messages use it). Strings that are not URIs are returned unchanged.
func RedactURI(uri string) string {
	start := uriPrefixLen(uri)
	if start == 0 {
		return uri
	}
	out := uri
	p := start
	for p < len(uri) && uri[p] != '@' && uri[p] != '/' {
		p++
	}
	if p < len(uri) && uri[p] == '@' {
		if c := strings.IndexByte(uri[start:p], ':'); c >= 0 {
			out = uri[:start+c+1] + Mask + uri[p:]
		}
	}
	q := strings.IndexByte(out, '?')
	if q < 0 {
		return out
	}
	parts := strings.Split(out[q+1:], "&")
	for i, part := range parts {
		kw, _, found := strings.Cut(part, "=")
		if !found {
			continue
		}
		// An undecodable keyword could be anything: mask its value too.
		if dk, err := uriDecode(kw, false); err != nil || IsSecret(dk) {
			parts[i] = kw + "=" + Mask
		}
	}
	return out[:q+1] + strings.Join(parts, "&")
}
