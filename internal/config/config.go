// Package config reads the proxy's TOML configuration file, applies the
// PGTRUST_* and DB_SSL_* environment variables and command-line flags on top
// of it (file < environment < flags), and turns the result into a
// proxy.Config. Validate checks everything a running proxy would need
// (files, key permissions, certificate expiry, addresses) without starting
// anything.
//
// Every error is a *failure.Error of class failure.ConfigInvalid that names
// the file (or variable, or flag), the key and the fix. Connection strings
// may hold passwords: no error or log line contains one.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
)

// maxEventLoops bounds proxy.event_loops: more loops than cores only add
// wake-ups.
const maxEventLoops = 256

// Defaults applied when the file, environment and flags leave a key unset.
const (
	DefaultHealthListen   = "127.0.0.1:9090"
	DefaultProbeInterval  = 30 * time.Second
	DefaultDrainTimeout   = 30 * time.Second
	DefaultStartupTimeout = 5 * time.Second
	DefaultConnectTimeout = 5 * time.Second
	DefaultAuthTimeout    = 10 * time.Second
	DefaultRefusalLog     = 10 * time.Second
	DefaultMaxConnections = 100
	DefaultLogFormat      = "text"
	DefaultLogLevel       = "info"
	// DefaultUpstreamName is the name of the upstream that PGTRUST_UPSTREAM
	// or --upstream creates when the file defines none.
	DefaultUpstreamName = "default"
)

// File is a parsed configuration, with defaults, environment and flags
// applied as far as the caller asked.
type File struct {
	// Path is the file the configuration came from ("" when built from the
	// environment and flags alone). Errors name it.
	Path string `toml:"-"`

	Log       Log                  `toml:"log"`
	Health    Health               `toml:"health"`
	Proxy     Proxy                `toml:"proxy"`
	Upstreams map[string]*Upstream `toml:"upstreams"`
	// Storage holds seed 001's [storage.postgres.NAME] tables (epoch.toml),
	// each turned into an upstream NAME at parse (storage.go).
	Storage *Storage `toml:"storage"`

	// sslRequired is DB_SSL_REQUIRED=true: every upstream's sslmode must
	// refuse plaintext.
	sslRequired       bool
	sslRequiredOrigin string
}

// Log is the [log] table.
type Log struct {
	Format string `toml:"format"` // "text" or "json"
	Level  string `toml:"level"`  // debug, info, warn, error
	// RefusalInterval aggregates repeated refusals of one kind into one
	// summary line per interval.
	RefusalInterval Duration `toml:"refusal_interval"`
}

// Health is the [health] table.
type Health struct {
	// Listen is the HTTP address of /livez, /readyz, /health/database/ssl
	// and /metrics; nil means the default, "" disables the server.
	Listen        *string  `toml:"listen"`
	ProbeInterval Duration `toml:"probe_interval"`
}

// Proxy is the [proxy] table.
type Proxy struct {
	DrainTimeout     Duration `toml:"drain_timeout"`
	DrainDelay       Duration `toml:"drain_delay"` // /readyz 503 this long before the listeners close
	StartupTimeout   Duration `toml:"startup_timeout"`
	ConnectTimeout   Duration `toml:"connect_timeout"`
	AuthTimeout      Duration `toml:"auth_timeout"`
	MaxStartupPacket int      `toml:"max_startup_packet"` // 0: the proxy's default
	// EventLoops relay established sessions: 0 means one per GOMAXPROCS,
	// -1 none (two goroutines per session).
	EventLoops int `toml:"event_loops"`
	// AllowWeakerEnvSSLMode lets DB_SSL_MODE (or PGSSLMODE) weaken an
	// sslmode the configuration writes; otherwise that is config_invalid.
	AllowWeakerEnvSSLMode bool `toml:"allow_weaker_env_sslmode"`
}

// Upstream is one [upstreams.NAME] table: a local listener and the
// PostgreSQL server it forwards to.
type Upstream struct {
	Listen         string `toml:"listen"`           // host:port for local clients
	UnixSocketDir  string `toml:"unix_socket_dir"`  // optional directory for .s.PGSQL.PORT
	UnixSocketPort int    `toml:"unix_socket_port"` // port in the socket name; default the listen port, else 5432
	MaxConnections int    `toml:"max_connections"`
	// ReservedConnections: slots of max_connections only the Unix-socket
	// listener may use (default 3 with unix_socket_dir; -1 = none).
	ReservedConnections        int  `toml:"reserved_connections"`
	MaxAuthenticating          int  `toml:"max_authenticating"`            // default max_connections/4
	MaxAuthenticatingPerSource int  `toml:"max_authenticating_per_source"` // default max_authenticating
	MaxPending                 int  `toml:"max_pending"`                   // default 16 × max_connections: connections before their startup packet
	PlaintextIntended          bool `toml:"plaintext_intended"`            // health reports a plaintext upstream "healthy", not "insecure"

	// DSN is a libpq key/value string or postgres:// URI. Settings is the
	// alternative: a table of libpq keywords. Exactly one may be given.
	DSN      string         `toml:"dsn"`
	Settings map[string]any `toml:"settings"`

	ClientTLS *ClientTLS `toml:"client_tls"`
	// Gateway lists remote listeners ([[upstreams.NAME.gateway]],
	// gateway.go); Auth makes the local listeners open the upstream as a
	// configured role.
	Gateway []*Gateway    `toml:"gateway,omitempty"`
	Auth    *UpstreamAuth `toml:"auth,omitempty"`
	// Pool pools server connections for the listeners where pgtrust
	// authenticates clients itself (pool.go).
	Pool *Pool `toml:"pool,omitempty"`
	// Attestation, when set, is the RA-TLS policy the upstream's
	// certificate must pass (attestation.go).
	Attestation *Attestation `toml:"attestation"`

	// Manifest, when set, makes the upstream follow a signed leader
	// manifest (follow.go): "dns:<cluster domain>" or "https://...". The
	// dsn then gives everything but host and port.
	Manifest                string   `toml:"manifest"`
	ManifestSignerAddress   string   `toml:"manifest_signer_address"`
	Cluster                 string   `toml:"cluster"`
	EpochFile               string   `toml:"epoch_file"`
	ManifestRefreshInterval Duration `toml:"manifest_refresh_interval"`
	ManifestDNSServer       string   `toml:"manifest_dns_server"` // host:port of the DNS server to ask (default: the system's)
	ManifestTimeout         Duration `toml:"manifest_timeout"`    // one fetch (default 5s)

	// Vault or Step, when set, is where the upstream's client certificate
	// comes from (a certs.RenewingSource) instead of sslcert/sslkey.
	Vault *VaultTable `toml:"vault"`
	Step  *StepTable  `toml:"step"`

	// settingsOrigin names where Settings came from when it was not an
	// [upstreams.NAME.settings] table (seed 001's [storage.postgres.NAME]).
	settingsOrigin string
	// storage marks an upstream made from a [storage.postgres.NAME] table.
	storage bool

	// overrides are libpq keywords set by DB_SSL_* variables; they win over
	// DSN and Settings.
	overrides map[string]string
	// origin says where DSN came from, for error messages.
	origin string
}

// ClientTLS is the [upstreams.NAME.client_tls] table: TLS between local
// clients and the proxy.
type ClientTLS struct {
	CertFile    string `toml:"cert_file"`
	KeyFile     string `toml:"key_file"`
	AutoCertDir string `toml:"auto_cert_dir"` // generate (or reuse) a development PKI here
	Require     bool   `toml:"require"`       // refuse local clients that do not use TLS
}

// Duration is a time.Duration written as a Go duration string ("30s").
type Duration time.Duration

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration (write it like \"30s\", \"1m30s\" or \"500ms\")", b)
	}
	if v < 0 {
		return fmt.Errorf("%q is negative", b)
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes the duration as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Load reads and parses the file at path, expands ${VAR} references in
// every string of it from the process environment (ExpandEnv), then
// applies the process environment (PGTRUST_*, DB_SSL_*). Flags are applied
// by the caller with ApplyFlags.
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, failure.Wrap(failure.ConfigInvalid, err, "cannot read configuration file %s", path).
			WithEvidence("%v", err).
			WithFix("check the path given to --config and that the file is readable by uid %d", os.Getuid())
	}
	f, err := parse(data, path, os.Getenv)
	if err != nil {
		return nil, err
	}
	if err := f.ApplyEnv(Environ()); err != nil {
		return nil, err
	}
	return f, nil
}

// Parse parses a configuration document and fills in the defaults. It does
// not read the environment (${VAR} references stay as written).
func Parse(data []byte) (*File, error) { return parse(data, "", nil) }

// ParseEnv is Parse with ${VAR} references expanded from getenv, as Load
// expands them from the process environment.
func ParseEnv(data []byte, getenv func(string) string) (*File, error) { return parse(data, "", getenv) }

// Empty returns a configuration with only the defaults, for running from the
// environment and flags without a file.
func Empty() *File {
	f := &File{}
	f.fillDefaults()
	return f
}

func parse(data []byte, path string, getenv func(string) string) (*File, error) {
	f := &File{Path: path}
	dec := toml.NewDecoder(bytes.NewReader(data)).DisallowUnknownFields()
	if err := dec.Decode(f); err != nil && !errors.Is(err, io.EOF) {
		return nil, decodeError(path, err)
	}
	if getenv != nil {
		if err := ExpandEnv(f, "", getenv); err != nil {
			return nil, f.inFile(err)
		}
	}
	for name, u := range f.Upstreams {
		if u == nil {
			f.Upstreams[name] = &Upstream{}
		}
	}
	if err := f.storageUpstreams(); err != nil {
		return nil, err
	}
	f.fillDefaults()
	if err := f.check(); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *File) fillDefaults() {
	if f.Log.Format == "" {
		f.Log.Format = DefaultLogFormat
	}
	if f.Log.Level == "" {
		f.Log.Level = DefaultLogLevel
	}
	if f.Health.Listen == nil {
		s := DefaultHealthListen
		f.Health.Listen = &s
	}
	if f.Health.ProbeInterval == 0 {
		f.Health.ProbeInterval = Duration(DefaultProbeInterval)
	}
	if f.Proxy.DrainTimeout == 0 {
		f.Proxy.DrainTimeout = Duration(DefaultDrainTimeout)
	}
	if f.Proxy.StartupTimeout == 0 {
		f.Proxy.StartupTimeout = Duration(DefaultStartupTimeout)
	}
	if f.Proxy.ConnectTimeout == 0 {
		f.Proxy.ConnectTimeout = Duration(DefaultConnectTimeout)
	}
	if f.Proxy.AuthTimeout == 0 {
		f.Proxy.AuthTimeout = Duration(DefaultAuthTimeout)
	}
	if f.Log.RefusalInterval == 0 {
		f.Log.RefusalInterval = Duration(DefaultRefusalLog)
	}
	if f.Upstreams == nil {
		f.Upstreams = map[string]*Upstream{}
	}
	for _, u := range f.Upstreams {
		if u.MaxConnections == 0 {
			u.MaxConnections = DefaultMaxConnections
		}
	}
}

// where names the configuration for messages: the file, or "the configuration".
func (f *File) where() string {
	if f.Path == "" {
		return "the configuration"
	}
	return f.Path
}

// invalid is a config_invalid error naming the file and the key.
func (f *File) invalid(key, format string, args ...any) *failure.Error {
	msg := fmt.Sprintf(format, args...)
	return failure.New(failure.ConfigInvalid, "%s: %s: %s", f.where(), key, msg).
		WithEvidence("key %s in %s", key, f.where())
}

// inFile prefixes a config_invalid error built without the file (ExpandEnv,
// VaultTable.Options) with the file's name, keeping evidence and fix.
func (f *File) inFile(err error) error {
	fe, ok := failure.As(err)
	if !ok || f.Path == "" {
		return err
	}
	e := *fe
	e.Message = f.Path + ": " + fe.Message
	return &e
}

// check applies the structural rules that need no file system or network.
func (f *File) check() error {
	switch f.Log.Format {
	case "text", "json":
	default:
		return f.invalid("log.format", "unknown log format %q", f.Log.Format).WithFix(`set log.format to "text" or "json"`)
	}
	if _, err := ParseLevel(f.Log.Level); err != nil {
		return f.invalid("log.level", "unknown log level %q", f.Log.Level).WithFix(`set log.level to "debug", "info", "warn" or "error"`)
	}
	if f.Proxy.EventLoops < -1 || f.Proxy.EventLoops > maxEventLoops {
		return f.invalid("proxy.event_loops", "is %d; it must be -1 (no event loops), 0 (one per GOMAXPROCS) or up to %d", f.Proxy.EventLoops, maxEventLoops).
			WithFix("remove the key to use one loop per GOMAXPROCS, or set -1 to relay with two goroutines per session")
	}
	if f.Proxy.MaxStartupPacket < 0 {
		return f.invalid("proxy.max_startup_packet", "must not be negative").WithFix("remove the key to use the default, or give a size in bytes")
	}
	for _, name := range f.UpstreamNames() {
		u := f.Upstreams[name]
		key := f.upstreamKey(name)
		if u.DSN != "" && len(u.Settings) > 0 {
			return f.invalid(key, "both dsn and [%s.settings] are given", key).
				WithFix("keep one: either dsn = \"...\" or a [%s.settings] table of libpq keywords", key)
		}
		if u.Listen == "" && u.UnixSocketDir == "" && len(u.Gateway) == 0 {
			return f.invalid(key+".listen", "upstream %q has no listener", name).
				WithFix("set %s.listen = \"127.0.0.1:6432\" (or unix_socket_dir, or a [[%s.gateway]] table)", key, key)
		}
		if err := f.checkGateways(key, u); err != nil {
			return err
		}
		if u.MaxConnections < 0 {
			return f.invalid(key+".max_connections", "must not be negative").WithFix("set a positive limit, or remove the key for the default %d", DefaultMaxConnections)
		}
		if u.MaxPending < 0 {
			return f.invalid(key+".max_pending", "must not be negative").WithFix("set a positive limit, or remove the key for the default")
		}
		if u.MaxAuthenticating < 0 || u.MaxAuthenticatingPerSource < 0 {
			return f.invalid(key+".max_authenticating", "must not be negative").WithFix("set a positive limit, or remove the key for the default")
		}
		if u.ReservedConnections >= max(u.MaxConnections, 1) {
			return f.invalid(key+".reserved_connections", "%d leaves no slot of max_connections %d for TCP clients", u.ReservedConnections, u.MaxConnections).
				WithFix("make reserved_connections smaller than max_connections")
		}
		if u.ReservedConnections > 0 && u.UnixSocketDir == "" {
			return f.invalid(key+".reserved_connections", "only the Unix-socket listener may use reserved slots, and %s has no unix_socket_dir", key).
				WithFix("set %s.unix_socket_dir (the operator's way in), or remove reserved_connections", key)
		}
		if u.UnixSocketPort < 0 || u.UnixSocketPort > 65535 {
			return f.invalid(key+".unix_socket_port", "%d is not a port number", u.UnixSocketPort).WithFix("use a port number between 1 and 65535")
		}
		if t := u.ClientTLS; t != nil {
			if (t.CertFile == "") != (t.KeyFile == "") {
				return f.invalid(key+".client_tls", "cert_file and key_file go together").
					WithFix("set both %[1]s.client_tls.cert_file and %[1]s.client_tls.key_file, or use auto_cert_dir", key)
			}
			if t.CertFile != "" && t.AutoCertDir != "" {
				return f.invalid(key+".client_tls", "both cert_file and auto_cert_dir are given").
					WithFix("keep one: a certificate and key of your own, or auto_cert_dir for generated ones")
			}
			if t.CertFile == "" && t.AutoCertDir == "" {
				return f.invalid(key+".client_tls", "no certificate: neither cert_file/key_file nor auto_cert_dir is set").
					WithFix("set cert_file and key_file, or auto_cert_dir, or remove the [%s.client_tls] table", key)
			}
		}
		if u.Attestation != nil {
			if err := f.checkAttestation(key+".attestation", u.Attestation); err != nil {
				return err
			}
		}
		if err := f.checkFollow(key, u); err != nil {
			return err
		}
		for k, v := range u.Settings {
			if _, err := settingString(v); err != nil {
				return f.invalid(key+".settings."+k, "%v", err).WithFix("write the value as a string, e.g. %s = \"...\"", k)
			}
		}
		if err := f.checkRenewal(key, u); err != nil {
			return err
		}
	}
	return nil
}

// checkRenewal refuses a client certificate named twice: a [vault] or
// [step] table and sslcert/sslkey (in the dsn, the settings or DB_SSL_*),
// or both tables.
func (f *File) checkRenewal(key string, u *Upstream) error {
	if u.Vault == nil && u.Step == nil {
		return nil
	}
	if u.Vault != nil && u.Step != nil {
		return f.invalid(key, "both [%[1]s.vault] and [%[1]s.step] are given", key).
			WithEvidence("keys %[1]s.vault and %[1]s.step both name where the client certificate comes from", key).
			WithFix("keep one of the two tables")
	}
	table := key + ".vault"
	if u.Step != nil {
		table = key + ".step"
	}
	if u.storage {
		table = "vault_pki_role"
	}
	kw := map[string]string{}
	if u.DSN != "" {
		kw, _ = connstring.ParseKeywords(u.DSN) // a DSN that does not parse is reported by resolve
	}
	for k := range u.Settings {
		kw[k] = ""
	}
	for k, v := range u.overrides {
		kw[k] = v
	}
	for _, k := range []string{"sslcert", "sslkey"} {
		if _, ok := kw[k]; ok {
			where := key + "'s connection settings"
			if u.overrides[k] != "" {
				where = "DB_SSL_CLIENT_CERT/DB_SSL_CLIENT_KEY"
			}
			return f.invalid(key, "%s is set in %s, and %s gives the client certificate too", k, where, table).
				WithEvidence("the client certificate comes from %s (issued and renewed); %s would name another one", table, k).
				WithFix("remove %s (and sslkey/sslpassword) from the upstream's settings, or remove %s to use certificate files", k, table)
		}
	}
	return nil
}

// UpstreamNames returns the upstream names, sorted.
func (f *File) UpstreamNames() []string {
	names := make([]string, 0, len(f.Upstreams))
	for n := range f.Upstreams {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// HealthListen returns the health server address ("" = disabled).
func (f *File) HealthListen() string {
	if f.Health.Listen == nil {
		return DefaultHealthListen
	}
	return *f.Health.Listen
}

// settingString turns a TOML value of a [settings] table into libpq's text.
func settingString(v any) (string, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case int64:
		return strconv.FormatInt(x, 10), nil
	case bool:
		// libpq's boolean-ish keywords (sslsni, keepalives) are "1"/"0".
		if x {
			return "1", nil
		}
		return "0", nil
	}
	return "", fmt.Errorf("unsupported value type %T", v)
}

// decodeError renders a TOML decoding error of the proxy's file.
func decodeError(path string, err error) error {
	where := path
	if where == "" {
		where = "configuration"
	}
	return TOMLError(where, "the configuration format", "docs/proxy.md", err)
}

// TOMLError renders a TOML decoding error of a configuration file (what
// names the format, doc where its keys are listed) as config_invalid that
// names the file, the line and the key. The evidence never quotes the
// source text: a misplaced password line would otherwise be printed back.
func TOMLError(where, what, doc string, err error) error {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) && len(strict.Errors) > 0 {
		var keys []string
		for _, e := range strict.Errors {
			row, _ := e.Position()
			keys = append(keys, fmt.Sprintf("%s (line %d)", strings.Join(e.Key(), "."), row))
		}
		return failure.New(failure.ConfigInvalid, "%s: unknown key %s", where, strings.Join(keys, ", ")).
			WithEvidence("%d key(s) that %s does not have: %s", len(keys), what, strings.Join(keys, ", ")).
			WithFix("remove or correct the key; the keys are listed in %s (a misspelt key is never ignored)", doc)
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, col := de.Position()
		key := strings.Join(de.Key(), ".")
		msg := fmt.Sprintf("%s: line %d, column %d", where, row, col)
		if key != "" {
			msg += ": key " + key
		}
		return failure.Wrap(failure.ConfigInvalid, err, "%s", msg).
			WithEvidence("the TOML parser stopped at line %d, column %d (the line's text is not shown: it may hold a secret)", row, col).
			WithFix("correct the TOML at line %d (see %s for each key's type)", row, doc)
	}
	// Errors from UnmarshalText and type mismatches carry no position.
	return failure.Wrap(failure.ConfigInvalid, err, "%s: invalid value", where).
		WithFix("correct the value (see %s for each key's type)", doc)
}

// ParseLevel parses a log level name.
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	err := l.UnmarshalText([]byte(s))
	return l, err
}

// NewLogger returns the logger the [log] table describes, writing to w.
func (f *File) NewLogger(w io.Writer) *slog.Logger {
	level, err := ParseLevel(f.Log.Level)
	if err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if f.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
