package config

import (
	"fmt"
	"reflect"
	"sort"
	"strings"

	"github.com/pgtrust/pgtrust/failure"
)

// ExpandEnv replaces ${VAR} in every string (and string slice element) reachable from ptr (a pointer
// to a struct decoded from TOML, maps included); a variable that is not set is config_invalid naming
// the key path and the variable ("${NAME}" only; "$${" is a literal "${"). where prefixes key paths.
//
// A variable set to the empty string counts as not set: an empty token or
// password is never what a reference meant. Error messages name the
// variable, never a value.
func ExpandEnv(ptr any, where string, getenv func(string) string) error {
	v := reflect.ValueOf(ptr)
	if v.Kind() != reflect.Pointer || v.IsNil() {
		return failure.New(failure.ConfigInvalid, "ExpandEnv needs a non-nil pointer, not %T", ptr)
	}
	return expandValue(v.Elem(), where, getenv)
}

func joinKey(where, k string) string {
	if where == "" {
		return k
	}
	return where + "." + k
}

func expandValue(v reflect.Value, path string, getenv func(string) string) error {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return nil
		}
		if v.Kind() == reflect.Interface {
			// Values in map[string]any: expand a copy and store it back.
			inner := v.Elem()
			cp := reflect.New(inner.Type()).Elem()
			cp.Set(inner)
			if err := expandValue(cp, path, getenv); err != nil {
				return err
			}
			if v.CanSet() {
				v.Set(cp)
			}
			return nil
		}
		return expandValue(v.Elem(), path, getenv)
	case reflect.String:
		s, err := expandString(v.String(), path, getenv, false)
		if err != nil {
			return err
		}
		if v.CanSet() {
			v.SetString(s)
		}
	case reflect.Struct:
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if name == "-" {
				continue
			}
			if name == "" {
				name = f.Name
			}
			if fv := v.Field(i); fv.Kind() == reflect.String && isDSNKey(name) {
				// A connection string is parsed after expansion: a value
				// must not be able to add keywords to it.
				out, err := expandString(fv.String(), joinKey(path, name), getenv, true)
				if err != nil {
					return err
				}
				if fv.CanSet() {
					fv.SetString(out)
				}
				continue
			}
			if err := expandValue(v.Field(i), joinKey(path, name), getenv); err != nil {
				return err
			}
		}
	case reflect.Slice, reflect.Array:
		for i := 0; i < v.Len(); i++ {
			if err := expandValue(v.Index(i), fmt.Sprintf("%s[%d]", path, i), getenv); err != nil {
				return err
			}
		}
	case reflect.Map:
		if v.IsNil() || v.Type().Key().Kind() != reflect.String {
			return nil
		}
		keys := v.MapKeys()
		sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
		for _, k := range keys {
			// Map elements are not addressable: expand a copy, store it back.
			elem := v.MapIndex(k)
			cp := reflect.New(elem.Type()).Elem()
			cp.Set(elem)
			if err := expandValue(cp, joinKey(path, k.String()), getenv); err != nil {
				return err
			}
			v.SetMapIndex(k, cp)
		}
	}
	return nil
}

// isDSNKey reports whether a key holds a connection string (libpq
// key/value or postgres:// URI), which is parsed after expansion.
func isDSNKey(name string) bool { return name == "dsn" || strings.HasSuffix(name, "_dsn") }

// dsnSyntax is what a value expanded into a connection string may not
// contain, because the parser would read it as syntax (a new keyword, a
// quoted value, an escape) instead of as part of the value: for key/value
// strings whitespace, quotes, backslash and '='; in a URI also the
// delimiters of its user, host, path, query and fragment, and '%'.
func dsnSyntax(val string, uri bool) bool {
	bad := " \t\n\r\v\f'\"\\="
	if uri {
		bad += "@/?#&%"
	}
	return strings.ContainsAny(val, bad)
}

func isURI(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://")
}

// expandString replaces ${NAME}; "$${" stands for a literal "${". In a
// connection string (dsn), a value that would change its structure is
// refused rather than quoted: fail closed, and the settings table is the
// place for arbitrary values.
func expandString(s, path string, getenv func(string) string, dsn bool) (string, error) {
	if !strings.Contains(s, "${") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		if strings.HasPrefix(s[i:], "$${") {
			b.WriteString("${")
			i += 3
			continue
		}
		if !strings.HasPrefix(s[i:], "${") {
			b.WriteByte(s[i])
			i++
			continue
		}
		end := strings.IndexByte(s[i+2:], '}')
		if end < 0 {
			return "", failure.New(failure.ConfigInvalid, "%s: \"${\" without a closing \"}\"", path).
				WithEvidence("key %s has an unterminated ${ reference (the value is not shown: it may hold a secret)", path).
				WithFix("write ${NAME} to use an environment variable, or $${ for a literal ${")
		}
		name := s[i+2 : i+2+end]
		if !validVarName(name) {
			// The text between the braces is not shown: in a password or
			// token it may be part of the secret.
			return "", failure.New(failure.ConfigInvalid, "%s: the ${ at byte %d is not a valid variable reference", path, i).
				WithEvidence("key %s has a ${…} at byte offset %d whose name is not letters, digits and _ (not starting with a digit); the text is not shown, it may hold a secret", path, i).
				WithFix("write ${NAME} with a valid variable name, or $${ for a literal ${")
		}
		val := getenv(name)
		if val == "" {
			return "", failure.New(failure.ConfigInvalid, "%s: environment variable %s is not set", path, name).
				WithEvidence("key %s refers to ${%s}, and %s is not set (or empty) in the environment", path, name, name).
				WithFix("set %s in the environment of the process (e.g. export %s=...), or write the value in the file", name, name)
		}
		// dsn = "${DATABASE_URL}": the variable is the whole connection
		// string, there is no structure around it to change.
		whole := i == 0 && 2+end+1 == len(s)
		if dsn && !whole && dsnSyntax(val, isURI(s)) {
			what := "whitespace, a quote, a backslash or '='"
			if isURI(s) {
				what = "whitespace, a quote, a backslash, '=' or one of @ / ? # & %"
			}
			return "", failure.New(failure.ConfigInvalid, "%s: environment variable %s would change the connection string's structure", path, name).
				WithEvidence("key %s is a connection string and the value of ${%s} contains %s, which the connection string parser reads as syntax (the value is not shown)", path, name, what).
				WithFix("put the value in a [upstreams.NAME.settings] table, where values are not parsed, or percent-encode/quote it in the file")
		}
		b.WriteString(val)
		i += 2 + end + 1
	}
	return b.String(), nil
}

func validVarName(n string) bool {
	if n == "" {
		return false
	}
	for i, r := range n {
		switch {
		case r == '_', r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
