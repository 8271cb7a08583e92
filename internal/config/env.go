package config

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pgtrust/pgtrust/failure"
)

// Override is one setting that the environment and flags can change. The
// same table drives ApplyEnv, ApplyFlags and the documentation, so the
// three never disagree.
type Override struct {
	Env  string // environment variable
	Flag string // flag name without "--" ("" when there is no flag)
	Key  string // what it sets, as written in docs
	Help string

	apply func(f *File, value, origin string) error
}

// DefaultListen is the local address of an upstream created from
// PGTRUST_UPSTREAM or --upstream without a listen address.
const DefaultListen = "127.0.0.1:6432"

// Overrides lists every environment variable and flag, in the order they
// are applied (the upstream is created before its listener is set).
var Overrides = []Override{
	{Env: "PGTRUST_LOG_FORMAT", Flag: "log-format", Key: "log.format", Help: `log format: "text" or "json"`,
		apply: func(f *File, v, _ string) error { f.Log.Format = v; return nil }},
	{Env: "PGTRUST_LOG_LEVEL", Flag: "log-level", Key: "log.level", Help: "log level: debug, info, warn, error",
		apply: func(f *File, v, _ string) error { f.Log.Level = v; return nil }},
	{Env: "PGTRUST_HEALTH_LISTEN", Flag: "health-listen", Key: "health.listen", Help: `health/metrics HTTP address ("" disables)`,
		apply: func(f *File, v, _ string) error { f.Health.Listen = &v; return nil }},
	{Env: "PGTRUST_PROBE_INTERVAL", Flag: "probe-interval", Key: "health.probe_interval", Help: "how often each upstream is probed",
		apply: durationSetter(func(f *File) *Duration { return &f.Health.ProbeInterval })},
	{Env: "PGTRUST_DRAIN_TIMEOUT", Flag: "drain-timeout", Key: "proxy.drain_timeout", Help: "how long a shutdown waits for sessions to end",
		apply: durationSetter(func(f *File) *Duration { return &f.Proxy.DrainTimeout })},
	{Env: "PGTRUST_STARTUP_TIMEOUT", Flag: "startup-timeout", Key: "proxy.startup_timeout", Help: "limit on a client's own startup phase (TLS + startup packet)",
		apply: durationSetter(func(f *File) *Duration { return &f.Proxy.StartupTimeout })},
	{Env: "PGTRUST_CONNECT_TIMEOUT", Flag: "connect-timeout", Key: "proxy.connect_timeout", Help: "limit on opening the upstream connection (TCP + TLS)",
		apply: durationSetter(func(f *File) *Duration { return &f.Proxy.ConnectTimeout })},
	{Env: "PGTRUST_AUTH_TIMEOUT", Flag: "auth-timeout", Key: "proxy.auth_timeout", Help: "limit on a client's authentication exchange",
		apply: durationSetter(func(f *File) *Duration { return &f.Proxy.AuthTimeout })},
	{Env: "PGTRUST_DRAIN_DELAY", Flag: "drain-delay", Key: "proxy.drain_delay", Help: "how long /readyz is 503 before the listeners close on shutdown",
		apply: durationSetter(func(f *File) *Duration { return &f.Proxy.DrainDelay })},
	{Env: "PGTRUST_EVENT_LOOPS", Flag: "event-loops", Key: "proxy.event_loops", Help: "event loops relaying established sessions (0: one per GOMAXPROCS, -1: none)",
		apply: func(f *File, v, origin string) error {
			n, err := strconv.Atoi(v)
			if err != nil {
				return overrideError(origin, v, "a number of event loops (0: one per GOMAXPROCS, -1: none)")
			}
			f.Proxy.EventLoops = n
			return nil
		}},
	{Env: "PGTRUST_ALLOW_WEAKER_ENV_SSLMODE", Flag: "allow-weaker-env-sslmode", Key: "proxy.allow_weaker_env_sslmode", Help: "let DB_SSL_MODE weaken an sslmode the configuration writes (true/false)",
		apply: func(f *File, v, origin string) error {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return overrideError(origin, v, "true or false")
			}
			f.Proxy.AllowWeakerEnvSSLMode = b
			return nil
		}},
	{Env: "PGTRUST_UPSTREAM", Flag: "upstream", Key: "upstreams.<single>.dsn", Help: `libpq DSN of the single upstream (named "default" when the file has none)`,
		apply: func(f *File, v, origin string) error {
			u, err := f.single(origin, true)
			if err != nil {
				return err
			}
			u.DSN, u.Settings, u.origin = v, nil, origin
			return nil
		}},
	{Env: "PGTRUST_LISTEN", Flag: "listen", Key: "upstreams.<single>.listen", Help: "local address of the single upstream",
		apply: func(f *File, v, origin string) error {
			u, err := f.single(origin, true)
			if err == nil {
				u.Listen = v
			}
			return err
		}},
	{Env: "PGTRUST_UNIX_SOCKET_DIR", Flag: "unix-socket-dir", Key: "upstreams.<single>.unix_socket_dir", Help: "directory for the single upstream's Unix socket",
		apply: func(f *File, v, origin string) error {
			u, err := f.single(origin, true)
			if err == nil {
				u.UnixSocketDir = v
			}
			return err
		}},
	{Env: "PGTRUST_MAX_CONNECTIONS", Flag: "max-connections", Key: "upstreams.*.max_connections", Help: "client connection limit of every upstream",
		apply: func(f *File, v, origin string) error {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return overrideError(origin, v, "a positive number of connections")
			}
			return f.each(origin, func(u *Upstream) { u.MaxConnections = n })
		}},
	{Env: "PGTRUST_CLIENT_TLS_CERT", Flag: "client-tls-cert", Key: "upstreams.*.client_tls.cert_file", Help: "certificate the proxy shows local clients",
		apply: clientTLSSetter(func(t *ClientTLS, v string) { t.CertFile = v })},
	{Env: "PGTRUST_CLIENT_TLS_KEY", Flag: "client-tls-key", Key: "upstreams.*.client_tls.key_file", Help: "its private key",
		apply: clientTLSSetter(func(t *ClientTLS, v string) { t.KeyFile = v })},
	{Env: "PGTRUST_CLIENT_TLS_AUTO_DIR", Flag: "client-tls-auto-dir", Key: "upstreams.*.client_tls.auto_cert_dir", Help: "generate (or reuse) the local TLS certificates in this directory",
		apply: clientTLSSetter(func(t *ClientTLS, v string) { t.AutoCertDir = v })},
	{Env: "DB_SSL_AUTO_CERT_DIR", Key: "upstreams.*.client_tls.auto_cert_dir", Help: "alias of PGTRUST_CLIENT_TLS_AUTO_DIR (seed name)",
		apply: clientTLSSetter(func(t *ClientTLS, v string) { t.AutoCertDir = v })},
	{Env: "PGTRUST_CLIENT_TLS_REQUIRE", Flag: "client-tls-require", Key: "upstreams.*.client_tls.require", Help: "refuse local clients that do not use TLS (true/false)",
		apply: func(f *File, v, origin string) error {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return overrideError(origin, v, "true or false")
			}
			return f.each(origin, func(u *Upstream) {
				if u.ClientTLS == nil {
					u.ClientTLS = &ClientTLS{}
				}
				u.ClientTLS.Require = b
			})
		}},
	{Env: "DB_SSL_MODE", Key: "sslmode of every upstream", Help: "libpq sslmode for the upstream connections (seed name)",
		apply: keywordSetter("sslmode")},
	{Env: "DB_SSL_CA_CERT", Key: "sslrootcert of every upstream", Help: "CA file that verifies the database server (seed name)",
		apply: keywordSetter("sslrootcert")},
	{Env: "DB_SSL_CA", Key: "sslrootcert of every upstream", Help: "alias of DB_SSL_CA_CERT (seed name)",
		apply: keywordSetter("sslrootcert")},
	{Env: "DB_SSL_CLIENT_CERT", Key: "sslcert of every upstream", Help: "client certificate the proxy presents to the database (seed name)",
		apply: keywordSetter("sslcert")},
	{Env: "DB_SSL_CLIENT_KEY", Key: "sslkey of every upstream", Help: "its private key (seed name)",
		apply: keywordSetter("sslkey")},
	{Env: "DB_SSL_REQUIRED", Key: "(check)", Help: "true: refuse an upstream whose sslmode allows a plaintext connection (disable, allow, prefer) (seed name)",
		apply: func(f *File, v, origin string) error {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return overrideError(origin, v, "true or false")
			}
			f.sslRequired, f.sslRequiredOrigin = b, origin
			return nil
		}},
}

// Environ returns the process environment as a map.
func Environ() map[string]string {
	env := map[string]string{}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	return env
}

// ApplyEnv applies the PGTRUST_* and DB_SSL_* variables of env. A variable
// that is set but empty counts only for PGTRUST_HEALTH_LISTEN (where ""
// disables the health server).
func (f *File) ApplyEnv(env map[string]string) error {
	for _, o := range Overrides {
		v, ok := env[o.Env]
		if !ok || (v == "" && o.Env != "PGTRUST_HEALTH_LISTEN") {
			continue
		}
		if err := o.apply(f, v, "environment variable "+o.Env); err != nil {
			return err
		}
	}
	return f.check()
}

// ApplyFlags applies flags given on the command line, keyed by flag name
// without "--" (only the flags the user set). They win over the file and
// the environment.
func (f *File) ApplyFlags(flags map[string]string) error {
	known := map[string]bool{}
	for _, o := range Overrides {
		if o.Flag == "" {
			continue
		}
		known[o.Flag] = true
		v, ok := flags[o.Flag]
		if !ok {
			continue
		}
		if err := o.apply(f, v, "flag --"+o.Flag); err != nil {
			return err
		}
	}
	for name := range flags {
		if !known[name] {
			return fmt.Errorf("config: unknown override flag %q", name)
		}
	}
	return f.check()
}

func overrideError(origin, value, want string) error {
	return failure.New(failure.ConfigInvalid, "%s: invalid value %q", origin, value).
		WithEvidence("%s is set to %q", origin, value).
		WithFix("give %s", want)
}

func durationSetter(field func(*File) *Duration) func(*File, string, string) error {
	return func(f *File, v, origin string) error {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return overrideError(origin, v, `a duration such as "30s" or "1m"`)
		}
		*field(f) = Duration(d)
		return nil
	}
}

func clientTLSSetter(set func(*ClientTLS, string)) func(*File, string, string) error {
	return func(f *File, v, origin string) error {
		return f.each(origin, func(u *Upstream) {
			if u.ClientTLS == nil {
				u.ClientTLS = &ClientTLS{}
			}
			set(u.ClientTLS, v)
		})
	}
}

func keywordSetter(keyword string) func(*File, string, string) error {
	return func(f *File, v, origin string) error {
		return f.each(origin, func(u *Upstream) {
			if u.overrides == nil {
				u.overrides = map[string]string{}
			}
			u.overrides[keyword] = v
		})
	}
}

// single returns the one upstream an override addresses, creating
// "default" when there is none (and create is set).
func (f *File) single(origin string, create bool) (*Upstream, error) {
	switch len(f.Upstreams) {
	case 0:
		if !create {
			return nil, nil
		}
		u := &Upstream{Listen: DefaultListen, MaxConnections: DefaultMaxConnections}
		if f.Upstreams == nil {
			f.Upstreams = map[string]*Upstream{}
		}
		f.Upstreams[DefaultUpstreamName] = u
		return u, nil
	case 1:
		for _, u := range f.Upstreams {
			return u, nil
		}
	}
	return nil, failure.New(failure.ConfigInvalid, "%s applies to a single upstream, but %s defines %d (%s)",
		origin, f.where(), len(f.Upstreams), strings.Join(f.UpstreamNames(), ", ")).
		WithEvidence("%s is set and %s has several [upstreams.*] tables", origin, f.where()).
		WithFix("set the value in the file's [upstreams.NAME] table instead, or unset %s", origin)
}

// each applies set to every upstream; with none yet, to a new "default".
func (f *File) each(origin string, set func(*Upstream)) error {
	if len(f.Upstreams) == 0 {
		u, err := f.single(origin, true)
		if err != nil {
			return err
		}
		set(u)
		return nil
	}
	for _, u := range f.Upstreams {
		set(u)
	}
	return nil
}
