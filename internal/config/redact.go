package config

import (
	"fmt"
	"log/slog"
	"sort"
	"strings"

	"github.com/pgtrust/pgtrust/connstring"
)

// A dsn or [settings] table may hold a password: every type that carries
// one prints and logs it masked, by value and through a pointer.

// redactKeywords renders libpq keywords sorted, secrets masked.
func redactKeywords(kw map[string]string) string {
	keys := make([]string, 0, len(kw))
	for k := range kw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		v := kw[k]
		if connstring.IsSecret(k) {
			v = connstring.Mask
		} else if strings.Contains(v, "=") || connstring.IsURI(v) {
			v = connstring.Mask // a nested connection string may hold one too
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(k + "=" + connstring.QuoteValue(v))
	}
	return b.String()
}

// redactDSN masks the secrets of a dsn; one that does not parse is hidden
// whole.
func redactDSN(dsn string) string {
	if dsn == "" {
		return ""
	}
	kw, err := connstring.ParseKeywords(dsn)
	if err != nil {
		return connstring.Mask
	}
	return redactKeywords(kw)
}

// String shows the upstream without secrets.
func (u Upstream) String() string {
	settings := map[string]string{}
	for k, v := range u.Settings {
		s, _ := settingString(v)
		settings[k] = s
	}
	tls := "none"
	if u.ClientTLS != nil {
		tls = fmt.Sprintf("%+v", *u.ClientTLS)
	}
	return fmt.Sprintf("Upstream{Listen: %q, UnixSocketDir: %q, MaxConnections: %d, DSN: %q, Settings: %q, ClientTLS: %s}",
		u.Listen, u.UnixSocketDir, u.MaxConnections, redactDSN(u.DSN), redactKeywords(settings), tls)
}

// GoString is String, so that %#v shows no secret.
func (u Upstream) GoString() string { return "config." + u.String() }

// LogValue logs the upstream without secrets.
func (u Upstream) LogValue() slog.Value { return slog.StringValue(u.String()) }

// String shows the configuration without secrets.
func (f File) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "File{Path: %q, Log: %+v, Proxy: %+v, Upstreams: {", f.Path, f.Log, f.Proxy)
	for i, name := range f.UpstreamNames() {
		if i > 0 {
			b.WriteString(", ")
		}
		if u := f.Upstreams[name]; u != nil {
			fmt.Fprintf(&b, "%s: %s", name, u.String())
		}
	}
	b.WriteString("}}")
	return b.String()
}

// GoString is String, so that %#v shows no secret.
func (f File) GoString() string { return "config." + f.String() }

// LogValue logs the configuration without secrets.
func (f File) LogValue() slog.Value { return slog.StringValue(f.String()) }
