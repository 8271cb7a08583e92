// Package dbenv resolves the database settings of `pgtrust mcp` from its
// command line and environment, the way desktop agent configurations give
// them (Claude Desktop, Cline: seed 002):
//
//	"args": ["--connection-string", "${SUPABASE_CONNECTION}"],
//	"env":  {"POSTGRES_CONNECTION": "...", "PGSSLMODE": "verify-full", "PGSSLROOTCERT": "/abs/ca.crt"}
//
// plus the seed's connection-pool variables DB_SSL_ENABLED, DB_SSL_MODE,
// DB_SSL_REJECT_UNAUTHORIZED and DB_SSL_CA, which come from node-postgres's
// `ssl` option (ssl: false → no TLS; rejectUnauthorized: false → TLS
// without any check of the server; ca → the trusted roots), and the other
// DB_SSL_* names the proxy reads (internal/config/env.go), with the same
// meanings so both commands agree.
//
// The connection string is the first of --connection-string,
// POSTGRES_CONNECTION and DATABASE_URL that is set and not empty; without
// one, only the PG* variables (and libpq's defaults) give the settings.
// Either way the PG* variables fill only what the string leaves out, as in
// libpq (connstring.ParseWithEnv).
//
// sslmode defaults to verify-full, not libpq's prefer, when neither the
// string (or its service file), PGSSLMODE/PGREQUIRESSL nor a DB_SSL_*
// variable sets it: prefer falls back to plaintext and never checks the
// server, so an attacker on the path would read the agent's password and
// every query result without either side noticing. An agent configuration
// copied from a README rarely states sslmode; pgtrust fails closed instead
// (without a root certificate the connection is then refused with
// root_cert_missing and its fix).
//
// Contradictions between the variables, and an environment variable that
// weakens an sslmode or replaces an sslrootcert the connection string writes
// (unless PGTRUST_ALLOW_WEAKER_ENV_SSLMODE=true, as for the proxy), are refused with
// failure.ConfigInvalid. No error or warning contains a password: the
// connection string itself is never quoted, only variable names, sslmode
// values and file paths.
package dbenv

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
)

// Settings is the resolved database connection of `pgtrust mcp`.
type Settings struct {
	Config   *connstring.Config // libpq-parsed; sslmode verify-full when nothing set it
	Source   string             // where the DSN came from: "--connection-string", "POSTGRES_CONNECTION", "DATABASE_URL", "PG* variables"
	Warnings []string           // e.g. DB_SSL_REJECT_UNAUTHORIZED=false → require: "encrypted but the server is not verified…"
}

// The values of Settings.Source.
const (
	SourceFlag               = "--connection-string"
	SourcePostgresConnection = "POSTGRES_CONNECTION"
	SourceDatabaseURL        = "DATABASE_URL"
	SourcePGEnv              = "PG* variables"
)

// Variables is every environment variable Resolve reads besides libpq's
// PG* ones, in the order of the documentation.
var Variables = []string{
	"POSTGRES_CONNECTION", "DATABASE_URL",
	"DB_SSL_ENABLED", "DB_SSL_MODE", "DB_SSL_REJECT_UNAUTHORIZED", "DB_SSL_REQUIRED",
	"DB_SSL_CA", "DB_SSL_CA_CERT", "DB_SSL_CLIENT_CERT", "DB_SSL_CLIENT_KEY",
	"DB_SSL_AUTO_CERT_DIR", "PGTRUST_ALLOW_WEAKER_ENV_SSLMODE",
}

// mayBePlaintext: the modes with which libpq can end up without TLS.
func mayBePlaintext(m connstring.SSLMode) bool {
	return m.Strength() < connstring.SSLRequire.Strength()
}

// verifies: the modes that always check the server's certificate chain.
func verifies(m connstring.SSLMode) bool { return m.Strength() >= connstring.SSLVerifyCA.Strength() }

var validModes = map[string]bool{"disable": true, "allow": true, "prefer": true, "require": true, "verify-ca": true, "verify-full": true}

// placeholder is an unexpanded ${NAME} or $NAME: some MCP clients do not
// expand variables in their JSON configuration (seed 002 writes
// "${SUPABASE_CONNECTION}").
// The whole connection string is checked only in the anchored form, so a
// password that happens to contain "${" is never quoted in an error.
var (
	placeholderDSN  = regexp.MustCompile(`^\$\{?[A-Za-z_][A-Za-z0-9_]*\}?$`)
	placeholderFile = regexp.MustCompile(`\$\{[A-Za-z_][A-Za-z0-9_]*\}|^\$[A-Za-z_][A-Za-z0-9_]*`)
)

// Resolve picks the DSN (flag, then POSTGRES_CONNECTION, then DATABASE_URL, else PG* variables only), parses it
// libpq's way with env (PG* fill what the DSN leaves out), and applies DB_SSL_ENABLED / DB_SSL_MODE /
// DB_SSL_REJECT_UNAUTHORIZED / DB_SSL_CA (+ the proxy's other DB_SSL_* names if they make sense) with
// node-postgres meaning. sslmode defaults to verify-full when neither the DSN, PGSSLMODE nor DB_SSL_* set it.
// Contradictions (DB_SSL_ENABLED=false with a DSN sslmode=verify-full; REJECT_UNAUTHORIZED=false with
// DB_SSL_MODE=verify-full; env weakening an sslmode the DSN writes) are refused: failure.ConfigInvalid with
// evidence and fix. Bad values (DB_SSL_ENABLED=maybe) are refused. No password in any error or warning.
func Resolve(flagDSN string, env map[string]string, home string) (*Settings, error) {
	s := &Settings{Source: SourcePGEnv}
	dsn := ""
	switch {
	case flagDSN != "":
		dsn, s.Source = flagDSN, SourceFlag
	case env["POSTGRES_CONNECTION"] != "":
		dsn, s.Source = env["POSTGRES_CONNECTION"], SourcePostgresConnection
	case env["DATABASE_URL"] != "":
		dsn, s.Source = env["DATABASE_URL"], SourceDatabaseURL
	}
	for _, name := range []string{SourcePostgresConnection, SourceDatabaseURL} {
		if v := env[name]; v != "" && s.Source != name && v != dsn {
			s.Warnings = append(s.Warnings, fmt.Sprintf("%s is set but not used: the connection string comes from %s, which takes precedence", name, s.Source))
		}
	}
	if m := placeholderDSN.FindString(strings.TrimSpace(dsn)); m != "" {
		return nil, failure.New(failure.ConfigInvalid, "%s holds %s, a variable reference nobody expanded", s.Source, m).
			WithEvidence("the connection string from %s contains the text %s", s.Source, m).
			WithFix("this MCP client does not expand ${...} in its configuration: write the connection string itself in \"args\" or \"env\" (POSTGRES_CONNECTION), or set the variable in the environment the client starts pgtrust with")
	}

	settings, err := connstring.ParseKeywords(dsn)
	if err != nil {
		return nil, wrapConn(err, s.Source)
	}
	dsnKW := make(map[string]string, len(settings))
	for k, v := range settings {
		dsnKW[k] = v
	}
	// DATABASE_URL is a connection string only when it is the source:
	// connstring would otherwise read it for an empty string.
	penv := make(map[string]string, len(env))
	for k, v := range env {
		if k != "DATABASE_URL" {
			penv[k] = v
		}
	}

	v, err := readVars(env)
	if err != nil {
		return nil, err
	}

	// What sslmode would be without the DB_SSL_* variables, and who said so.
	base, err := connstring.ParseWithEnv(connstring.KeyValueString(settings), penv, home)
	if err != nil {
		return nil, wrapConn(err, s.Source)
	}
	baseMode, baseFrom, written := connstring.SSLVerifyFull, "pgtrust's default sslmode=verify-full", false
	if base.SSLModeExplicit {
		baseMode = base.SSLMode
		_, inDSN := settings["sslmode"]
		_, reqInDSN := settings["requiressl"]
		_, envMode := env["PGSSLMODE"]
		switch {
		case inDSN || reqInDSN:
			baseFrom, written = fmt.Sprintf("sslmode=%s in %s", baseMode, sourceName(s.Source)), true
		case fromServiceFile(settings, penv, home):
			// A service file is configuration the user wrote, like the DSN
			// (and, as in libpq, it wins over PGSSLMODE).
			baseFrom, written = fmt.Sprintf("sslmode=%s in the service file of service=%s", baseMode, base.Settings["service"]), true
		case envMode:
			baseFrom = fmt.Sprintf("PGSSLMODE=%s", env["PGSSLMODE"])
		default:
			baseFrom = "PGREQUIRESSL=" + env["PGREQUIRESSL"]
		}
	}

	if err := v.consistent(); err != nil {
		return nil, err
	}
	envMode, envFrom := v.sslmode()
	final, finalFrom := baseMode, baseFrom
	if envMode != "" {
		final, finalFrom = envMode, envFrom
		if written && envMode.Strength() < baseMode.Strength() {
			if !v.allowWeaker {
				// The environment of an agent is easy to change and hard to
				// see: it must not undo what the connection string states.
				return nil, failure.New(failure.ConfigInvalid, "%s, but %s would weaken it to sslmode=%s", baseFrom, envFrom, envMode).
					WithEvidence("%s; the environment variable %s", baseFrom, envFrom).
					WithFix("unset %s, or change sslmode in the connection string itself; to let the environment weaken it on purpose, set PGTRUST_ALLOW_WEAKER_ENV_SSLMODE=true", varName(envFrom))
			}
			s.Warnings = append(s.Warnings, fmt.Sprintf("%s weakens %s to sslmode=%s (allowed by PGTRUST_ALLOW_WEAKER_ENV_SSLMODE=true)", envFrom, baseFrom, envMode))
		}
	}
	if err := v.agrees(final, finalFrom); err != nil {
		return nil, err
	}

	if envMode != "" {
		settings["sslmode"] = string(envMode)
	} else if !base.SSLModeExplicit {
		settings["sslmode"] = string(connstring.SSLVerifyFull)
	}
	for _, f := range v.files {
		_, pinned := dsnKW[f.keyword]
		if old := base.Settings[f.keyword]; f.keyword == "sslrootcert" && pinned && s.Source != SourcePGEnv && old != f.value && !v.allowWeaker {
			// The trust anchor the connection string pins: an environment
			// variable replacing it (say with "system", every public CA)
			// can widen whom the agent trusts as the database.
			return nil, failure.New(failure.ConfigInvalid, "the connection string in %s pins sslrootcert=%s, but %s=%s would replace it", sourceName(s.Source), old, f.variable, f.value).
				WithEvidence("sslrootcert=%s in %s; the environment variable %s=%s", old, sourceName(s.Source), f.variable, f.value).
				WithFix("unset %s, or change sslrootcert in the connection string itself; to let the environment replace it on purpose, set PGTRUST_ALLOW_WEAKER_ENV_SSLMODE=true", f.variable)
		}
		if old, ok := base.Settings[f.keyword]; ok && old != f.value {
			s.Warnings = append(s.Warnings, fmt.Sprintf("%s=%s replaces %s=%s (from %s)", f.variable, f.value, f.keyword, old, keywordOrigin(f.keyword, dsnKW, s.Source)))
		}
		settings[f.keyword] = f.value
	}
	if final == connstring.SSLDisable && len(v.files) > 0 {
		s.Warnings = append(s.Warnings, fmt.Sprintf("%s is ignored: %s turns TLS off", v.files[0].variable, finalFrom))
	}
	if v.autoCertDir {
		s.Warnings = append(s.Warnings, "DB_SSL_AUTO_CERT_DIR is ignored by pgtrust mcp: it names the proxy's certificates for its local listener, and pgtrust mcp has none")
	}

	cfg, err := connstring.ParseWithEnv(connstring.KeyValueString(settings), penv, home)
	if err != nil {
		return nil, wrapConn(err, s.Source)
	}
	for _, kw := range []string{"sslrootcert", "sslcert", "sslkey", "sslcrl", "passfile"} {
		if m := placeholderFile.FindString(cfg.Settings[kw]); m != "" {
			return nil, failure.New(failure.ConfigInvalid, "%s=%s: the variable reference was never expanded", kw, cfg.Settings[kw]).
				WithEvidence("%s is %q (from %s)", kw, cfg.Settings[kw], keywordOrigin(kw, dsnKW, s.Source)).
				WithFix("write the file's absolute path instead of %s: this MCP client (or .env loader) does not expand variables inside values", m)
		}
	}
	s.Config = cfg
	s.Warnings = append(s.Warnings, modeWarning(cfg, finalFrom)...)
	return s, nil
}

// vars holds the DB_SSL_* variables, parsed.
type vars struct {
	enabled, reject *bool
	mode            connstring.SSLMode
	required        bool
	allowWeaker     bool
	autoCertDir     bool
	files           []fileVar
}

// fileVar is a DB_SSL_* variable naming a file, and the libpq keyword it sets.
type fileVar struct{ variable, keyword, value string }

func readVars(env map[string]string) (*vars, error) {
	v := &vars{}
	for _, b := range []struct {
		name string
		dst  **bool
	}{{"DB_SSL_ENABLED", &v.enabled}, {"DB_SSL_REJECT_UNAUTHORIZED", &v.reject}} {
		val, ok, err := boolVar(env, b.name)
		if err != nil {
			return nil, err
		}
		if ok {
			*b.dst = &val
		}
	}
	var err error
	if v.required, _, err = boolVar(env, "DB_SSL_REQUIRED"); err != nil {
		return nil, err
	}
	if v.allowWeaker, _, err = boolVar(env, "PGTRUST_ALLOW_WEAKER_ENV_SSLMODE"); err != nil {
		return nil, err
	}
	if m := env["DB_SSL_MODE"]; m != "" {
		if !validModes[m] {
			return nil, failure.New(failure.ConfigInvalid, "environment variable DB_SSL_MODE: invalid sslmode %q", m).
				WithEvidence("DB_SSL_MODE is set to %q", m).
				WithFix("give a libpq sslmode: verify-full (recommended), verify-ca, require, prefer, allow or disable")
		}
		v.mode = connstring.SSLMode(m)
	}
	v.autoCertDir = env["DB_SSL_AUTO_CERT_DIR"] != ""

	ca, caVar := env["DB_SSL_CA_CERT"], "DB_SSL_CA_CERT"
	if other := env["DB_SSL_CA"]; other != "" {
		if ca != "" && ca != other {
			return nil, failure.New(failure.ConfigInvalid, "DB_SSL_CA and DB_SSL_CA_CERT name different root certificate files").
				WithEvidence("DB_SSL_CA=%s, DB_SSL_CA_CERT=%s", short(other), short(ca)).
				WithFix("set only one of them (they are aliases): the CA file that signed the database server's certificate")
		}
		ca, caVar = other, "DB_SSL_CA"
	}
	for _, f := range []fileVar{
		{caVar, "sslrootcert", ca},
		{"DB_SSL_CLIENT_CERT", "sslcert", env["DB_SSL_CLIENT_CERT"]},
		{"DB_SSL_CLIENT_KEY", "sslkey", env["DB_SSL_CLIENT_KEY"]},
	} {
		if f.value == "" {
			continue
		}
		if strings.Contains(f.value, "-----BEGIN") {
			// node-postgres takes the PEM text itself (ssl.ca = fs.readFileSync(...));
			// libpq takes a file. The value is not quoted: it may be a key.
			return nil, failure.New(failure.ConfigInvalid, "%s holds PEM content, but pgtrust takes a file path", f.variable).
				WithEvidence("%s starts a PEM block (-----BEGIN ...); its content is not shown", f.variable).
				WithFix("write the PEM text to a file readable only by you and set %s to the file's absolute path", f.variable)
		}
		if f.keyword == "sslrootcert" && f.value != "system" && !placeholderFile.MatchString(f.value) {
			if _, err := os.Stat(f.value); errors.Is(err, fs.ErrNotExist) {
				// With sslmode=require libpq would skip verification
				// silently when the root file is missing: refuse instead.
				return nil, failure.New(failure.ConfigInvalid, "%s=%s: no such file", f.variable, f.value).
					WithEvidence("%s names the root certificate file %s, which does not exist", f.variable, f.value).
					WithFix("download the CA certificate that signed the database server's certificate and set %s to its absolute path (or to \"system\" for the operating system's public CAs)", f.variable)
			}
		}
		v.files = append(v.files, f)
	}
	return v, nil
}

func boolVar(env map[string]string, name string) (val, set bool, err error) {
	s := env[name]
	if s == "" {
		return false, false, nil
	}
	b, perr := strconv.ParseBool(s)
	if perr != nil {
		return false, false, failure.New(failure.ConfigInvalid, "environment variable %s: invalid value %q", name, s).
			WithEvidence("%s is set to %q", name, s).
			WithFix("set %s to true or false, or unset it", name)
	}
	return b, true, nil
}

// contradiction is the refusal of two settings that disagree.
func contradiction(a, b, fix string) error {
	return failure.New(failure.ConfigInvalid, "%s contradicts %s", a, b).
		WithEvidence("the environment sets %s and %s", a, b).
		WithFix("%s", fix)
}

// consistent checks the DB_SSL_* variables against each other.
func (v *vars) consistent() error {
	if v.enabled != nil && !*v.enabled && v.reject != nil && *v.reject {
		return contradiction("DB_SSL_ENABLED=false", "DB_SSL_REJECT_UNAUTHORIZED=true",
			"to verify the server (recommended), set DB_SSL_ENABLED=true; to turn TLS off, unset DB_SSL_REJECT_UNAUTHORIZED")
	}
	if v.mode == "" {
		return nil
	}
	mode := "DB_SSL_MODE=" + string(v.mode)
	if v.enabled != nil {
		if !*v.enabled && v.mode != connstring.SSLDisable {
			return contradiction("DB_SSL_ENABLED=false", mode,
				"unset DB_SSL_ENABLED to use "+mode+", or set DB_SSL_MODE=disable (or unset it) to turn TLS off")
		}
		if *v.enabled && mayBePlaintext(v.mode) {
			return contradiction("DB_SSL_ENABLED=true", mode,
				"set DB_SSL_MODE=verify-full (TLS with the server verified), or unset DB_SSL_ENABLED")
		}
	}
	if v.reject != nil {
		if !*v.reject && verifies(v.mode) {
			return contradiction("DB_SSL_REJECT_UNAUTHORIZED=false", mode,
				"unset DB_SSL_REJECT_UNAUTHORIZED (or set it to true) to verify the server as "+mode+" asks")
		}
		if *v.reject && !verifies(v.mode) {
			return contradiction("DB_SSL_REJECT_UNAUTHORIZED=true", mode,
				"set DB_SSL_MODE=verify-full (with DB_SSL_CA) to verify the server, or unset DB_SSL_REJECT_UNAUTHORIZED")
		}
	}
	return nil
}

// sslmode is the sslmode the DB_SSL_* variables set ("" when they set
// none), and the variable that set it, as "NAME=value". DB_SSL_ENABLED=true
// and DB_SSL_REJECT_UNAUTHORIZED=true name no mode: they are checked by
// agrees.
func (v *vars) sslmode() (connstring.SSLMode, string) {
	switch {
	case v.mode != "":
		return v.mode, "DB_SSL_MODE=" + string(v.mode)
	case v.enabled != nil && !*v.enabled:
		return connstring.SSLDisable, "DB_SSL_ENABLED=false"
	case v.reject != nil && !*v.reject:
		// node-postgres: TLS, and no check of the server at all.
		return connstring.SSLRequire, "DB_SSL_REJECT_UNAUTHORIZED=false"
	}
	return "", ""
}

// agrees checks DB_SSL_ENABLED=true, DB_SSL_REJECT_UNAUTHORIZED=true and
// DB_SSL_REQUIRED=true against the sslmode that applies.
func (v *vars) agrees(final connstring.SSLMode, from string) error {
	if v.enabled != nil && *v.enabled && mayBePlaintext(final) {
		return contradiction("DB_SSL_ENABLED=true", from,
			"write sslmode=verify-full in the connection string (or set DB_SSL_MODE=verify-full), or unset DB_SSL_ENABLED")
	}
	if v.reject != nil && *v.reject && !verifies(final) {
		return contradiction("DB_SSL_REJECT_UNAUTHORIZED=true", from,
			"write sslmode=verify-full in the connection string (or set DB_SSL_MODE=verify-full) so the server is verified, or unset DB_SSL_REJECT_UNAUTHORIZED")
	}
	if v.required && mayBePlaintext(final) {
		return failure.New(failure.ConfigInvalid, "%s may connect without TLS, but DB_SSL_REQUIRED=true", from).
			WithEvidence("the sslmode that applies is %s (%s); DB_SSL_REQUIRED=true requires TLS", final, from).
			WithFix("use sslmode=verify-full (with DB_SSL_CA or sslrootcert), or unset DB_SSL_REQUIRED")
	}
	return nil
}

// modeWarning says what an sslmode below verify-full leaves unchecked.
func modeWarning(cfg *connstring.Config, from string) []string {
	root, rootExists := cfg.SSLRootCert, false
	if root != "" && root != "system" {
		_, err := os.Stat(root)
		rootExists = err == nil
	}
	fix := "to verify the server, give the CA that signed its certificate (DB_SSL_CA=/path/to/ca.crt, or sslrootcert in the connection string) and use sslmode=verify-full (DB_SSL_MODE=verify-full, or unset the variable that weakens it)"
	switch cfg.SSLMode {
	case connstring.SSLDisable:
		return []string{fmt.Sprintf("%s: TLS is off: the password, every query and every result cross the network in plaintext, and the server is not verified; %s", from, fix)}
	case connstring.SSLAllow, connstring.SSLPrefer:
		return []string{fmt.Sprintf("%s: the connection may fall back to plaintext, and even with TLS the server's certificate and host name are not checked; %s", from, fix)}
	case connstring.SSLRequire:
		if rootExists {
			// libpq's rule: require with a root certificate file acts as verify-ca.
			return []string{fmt.Sprintf("%s: encrypted, and (libpq's rule for require with a root certificate file) the server's certificate must chain to %s, but its host name is not checked: any server holding a certificate from that CA is accepted; to check the host name too, use sslmode=verify-full (DB_SSL_MODE=verify-full, or unset the variable that weakens it)", from, root)}
		}
		return []string{fmt.Sprintf("%s: encrypted but the server is not verified: neither its certificate chain nor its host name is checked, so anyone who can intercept the connection can pose as the database and read the password and every query; %s", from, fix)}
	case connstring.SSLVerifyCA:
		return []string{fmt.Sprintf("%s: the server's certificate chain is checked but not its host name: any server holding a certificate from the same CA is accepted; use sslmode=verify-full to check the host name too", from)}
	}
	return nil
}

// fromServiceFile reports whether a service file sets sslmode: parsed
// again without PGSSLMODE and PGREQUIRESSL, something still sets it.
func fromServiceFile(settings, env map[string]string, home string) bool {
	e := make(map[string]string, len(env))
	for k, v := range env {
		if k != "PGSSLMODE" && k != "PGREQUIRESSL" {
			e[k] = v
		}
	}
	c, err := connstring.ParseWithEnv(connstring.KeyValueString(settings), e, home)
	return err == nil && c.SSLModeExplicit
}

// sourceName is how errors name where the connection string came from.
func sourceName(source string) string {
	if source == SourceFlag {
		return "the --connection-string flag"
	}
	if source == SourcePGEnv {
		return "the PG* variables"
	}
	return source
}

// keywordOrigin names where a keyword's current value came from.
func keywordOrigin(kw string, dsnSettings map[string]string, source string) string {
	if _, ok := dsnSettings[kw]; ok && source != SourcePGEnv {
		return "the connection string in " + sourceName(source)
	}
	if ev := connstring.EnvVar(kw); ev != "" {
		return ev + " or a service file"
	}
	return "a service file"
}

// varName is the variable of a "NAME=value" description.
func varName(desc string) string {
	name, _, _ := strings.Cut(desc, "=")
	return name
}

// short bounds a value quoted in evidence.
func short(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

// wrapConn names where a connection string came from, keeping the class,
// evidence and fix of connstring's error (which never holds a secret).
func wrapConn(err error, source string) error {
	fe, ok := failure.As(err)
	if !ok {
		return failure.Wrap(failure.ConfigInvalid, err, "%s", sourceName(source))
	}
	out := failure.Wrap(fe.Class, err, "%s: %s", sourceName(source), fe.Error())
	out.Evidence, out.Fix = fe.Evidence, fe.Fix
	if out.Fix == "" {
		out.Fix = "correct the connection string (libpq key/value or postgres:// URI)"
	}
	return out.CauseInMessage()
}
