// Package connstring turns libpq connection settings into a Config, with
// libpq 18's exact rules: key/value and URI syntax (conninfo_parse,
// conninfo_uri_parse), service files (pg_service.conf, parseServiceInfo),
// the PG* environment, the compiled-in defaults of
// libpq 15+ on Debian (Unix socket directory /var/run/postgresql, port 5432,
// ~/.postgresql/{root.crt,postgresql.crt,postgresql.key,root.crl}), value
// validation with libpq's error texts, and .pgpass lookup.
//
// Every error is a *failure.Error of class failure.ConfigInvalid whose
// message is libpq's wording; no error, String or Redacted output contains a
// password or other secret.
//
// Validation that libpq performs only while connecting (port numbers,
// hostaddr, connect_timeout, keepalives) is done here at parse time, so a bad
// setting is reported before any network step.
package connstring

import (
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net/netip"
	"os"
	"os/user"
	"strconv"
	"strings"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/hostmatch"
)

// SSLMode is libpq's sslmode.
type SSLMode string

// The sslmode values libpq accepts.
const (
	SSLDisable    SSLMode = "disable"
	SSLAllow      SSLMode = "allow"
	SSLPrefer     SSLMode = "prefer"
	SSLRequire    SSLMode = "require"
	SSLVerifyCA   SSLMode = "verify-ca"
	SSLVerifyFull SSLMode = "verify-full"
)

// Strength orders sslmodes by what they guarantee, from disable (0) to
// verify-full (5), so that a setting can be refused for weakening another.
func (m SSLMode) Strength() int {
	switch m {
	case SSLDisable:
		return 0
	case SSLAllow:
		return 1
	case SSLPrefer:
		return 2
	case SSLRequire:
		return 3
	case SSLVerifyCA:
		return 4
	}
	return 5
}

// Defaults of libpq as packaged by Debian.
const (
	// DefaultSocketDir is libpq's DEFAULT_PGSOCKET_DIR on Debian: the host
	// used when neither host nor hostaddr is given.
	DefaultSocketDir = "/var/run/postgresql"
	// DefaultPort is libpq's DEF_PGPORT.
	DefaultPort uint16 = 5432
	// defaultHostName is what a Unix-socket host is called in .pgpass.
	defaultHostName = "localhost"
)

// Host is one entry of the host/hostaddr/port lists.
type Host struct {
	Host     string // host name, IP literal, or Unix-socket directory (starts with "/" or "@"); "" when only hostaddr was given
	HostAddr string // numeric address to connect to instead of resolving Host ("" when unset)
	Port     uint16
}

// isUnixSockPath is libpq's is_unixsock_path on Unix: an absolute path, or
// "@" for a Linux abstract socket.
func isUnixSockPath(s string) bool {
	return strings.HasPrefix(s, "/") || strings.HasPrefix(s, "@")
}

// IsUnixSocket reports whether h is reached through a Unix-domain socket.
func (h Host) IsUnixSocket() bool { return h.HostAddr == "" && isUnixSockPath(h.Host) }

// SocketPath returns the socket file libpq connects to: DIR/.s.PGSQL.PORT.
func (h Host) SocketPath() string {
	return h.Host + "/.s.PGSQL." + strconv.Itoa(int(h.Port))
}

// Display returns how libpq names the target in errors: the socket path for
// a Unix socket, hostaddr when one was given, else the host name.
func (h Host) Display() string {
	switch {
	case h.IsUnixSocket():
		return h.SocketPath()
	case h.HostAddr != "":
		return h.HostAddr
	}
	return h.Host
}

// Config is a fully resolved set of libpq connection settings.
type Config struct {
	Hosts          []Host
	User, Database string
	Password       string        `json:"-"` // from the DSN or PGPASSWORD ("" if none); .pgpass is consulted via PasswordFor
	PassFile       string        // resolved passfile path (passfile / PGPASSFILE / ~/.pgpass); "" without a home directory
	ConnectTimeout time.Duration // 0 = none; like libpq, 1 s is raised to 2 s and negative means none

	ApplicationName, FallbackApplicationName, Options, ClientEncoding string

	SSLMode         SSLMode
	SSLModeExplicit bool   // set by keyword, URI param, PGSSLMODE, requiressl/PGREQUIRESSL
	SSLNegotiation  string // "postgres" (default) or "direct"

	// SSLRootCert is the path as given, the literal "system", or the default
	// $HOME/.postgresql/root.crt. It is "" (with SSLRootCertDefault) when the
	// default applies but there is no home directory; libpq then reports
	// "could not get home directory to locate root certificate file".
	SSLRootCert        string
	SSLRootCertDefault bool // true when SSLRootCert is the default (not given)

	SSLCert, SSLKey               string // given, or defaults $HOME/.postgresql/postgresql.crt / .key ("" without a home directory)
	SSLCertDefault, SSLKeyDefault bool
	SSLPassword                   string `json:"-"`
	SSLCRL                        string // given, or default $HOME/.postgresql/root.crl only when neither sslcrl nor sslcrldir is set
	SSLCRLDefault                 bool   // true when SSLCRL is the default path
	SSLCRLDir                     string
	SSLCertMode                   string // disable / allow (default) / require
	SSLSNI                        bool   // default true; like libpq, only a value starting with "1" enables it
	SSLCompression                bool   // accepted for compatibility; servers since PG 14 refuse compression
	SSLMinProtocolVersion         uint16 // tls.VersionTLS10..13; default tls.VersionTLS12; 0 = no minimum (given as "")
	SSLMaxProtocolVersion         uint16 // 0 = no maximum
	SSLKeyLogFile                 string

	GSSEncMode         string // disable / prefer (default) / require; pgtrust has no GSSAPI, so require is an error
	ChannelBinding     string // disable / prefer (default) / require
	RequireAuth        string // validated as libpq 16+ does, stored raw
	TargetSessionAttrs string // any (default) / read-write / read-only / primary / standby / prefer-standby
	LoadBalanceHosts   string // disable (default) / random; Hosts is NOT shuffled here
	RequirePeer        string

	// MinProtocolVersion and MaxProtocolVersion are libpq 18's protocol
	// version bounds, as given ("3.0", "3.2" or "latest"; "" when unset).
	MinProtocolVersion, MaxProtocolVersion string

	// TCP keepalive settings, applied by pgtls as libpq applies them.
	// Unset durations/counts are 0 (OS default); whether one was given at
	// all (an explicit 0 is refused by the kernel, as in libpq) is in Settings.
	Keepalives         bool // default true; libpq's keepalives=0 turns them off
	KeepalivesIdle     time.Duration
	KeepalivesInterval time.Duration
	KeepalivesCount    int
	TCPUserTimeout     time.Duration

	Replication string

	// SCRAM keys (libpq 18, base64 in the settings), decoded; nil when unset.
	// pgtls refuses them: pgconn cannot authenticate from keys.
	ScramClientKey []byte `json:"-"`
	ScramServerKey []byte `json:"-"`

	OAuthIssuer, OAuthClientID, OAuthScope string
	OAuthClientSecret                      string `json:"-"`

	// RuntimeParams are the startup parameters to send: application_name
	// (or the fallback), options, client_encoding ("auto" resolved from the
	// locale), replication, and datestyle/timezone/geqo from PGDATESTYLE,
	// PGTZ and PGGEQO, as libpq sends them.
	RuntimeParams map[string]string

	// Settings holds every keyword that was set explicitly (DSN, then the
	// service file, then the environment), keyword form, raw values. It contains secrets: never log
	// it; use Redacted or RedactedSettings.
	Settings map[string]string `json:"-"`

	// Warnings are libpq's non-fatal warnings, e.g. a password file with
	// group or world access (libpq prints them on stderr and goes on).
	Warnings []string

	home            string // home directory the defaults were built from
	usesDefaultHost bool
}

// Parse parses a DSN (libpq key/value string, or postgres:// / postgresql://
// URI; "" = environment only) and applies PG* environment variables (and
// DATABASE_URL when dsn == "") and libpq defaults.
func Parse(dsn string) (*Config, error) {
	env := make(map[string]string)
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	return ParseWithEnv(dsn, env, homeDir(env))
}

// homeDir is libpq's pqGetHomeDirectory: $HOME, else the passwd entry.
func homeDir(env map[string]string) string {
	if h := env["HOME"]; h != "" {
		return h
	}
	if u, err := user.Current(); err == nil {
		return u.HomeDir
	}
	return ""
}

// currentUser returns the OS user name, libpq's default user. A variable so
// that tests can force the failure path.
var currentUser = func() (string, error) {
	u, err := user.Current()
	if err != nil {
		return "", err
	}
	return u.Username, nil
}

// ParseWithEnv is Parse with an injected environment and home directory
// (tests; doctor). home "" means there is no home directory: the default
// file paths are then left empty, as libpq treats them as absent.
func ParseWithEnv(dsn string, env map[string]string, home string) (*Config, error) {
	fromDatabaseURL := false
	if dsn == "" && env["DATABASE_URL"] != "" {
		dsn, fromDatabaseURL = env["DATABASE_URL"], true
	}
	settings, err := ParseKeywords(dsn)
	if err != nil {
		if fromDatabaseURL {
			if fe, ok := failure.As(err); ok {
				fe.Evidence = "in DATABASE_URL: " + fe.Evidence
			}
		}
		return nil, err
	}

	// Service file settings fill what the string did not give, before the
	// environment (libpq's conninfo_add_defaults).
	if err := applyService(settings, env, home); err != nil {
		return nil, err
	}

	// Environment fallbacks, for keywords not given (an empty variable counts, as in libpq).
	for _, k := range keywords {
		if k.env == "" {
			continue
		}
		if _, given := settings[k.name]; given {
			continue
		}
		if v, ok := env[k.env]; ok {
			settings[k.name] = v
		}
	}
	// The deprecated PGREQUIRESSL: a value starting with "1" means require,
	// and only when sslmode is not otherwise set.
	if _, given := settings["sslmode"]; !given && strings.HasPrefix(env["PGREQUIRESSL"], "1") {
		settings["sslmode"] = string(SSLRequire)
	}

	c := &Config{Settings: settings, home: home}
	if err := c.resolve(env); err != nil {
		return nil, err
	}
	return c, nil
}

// resolve fills c from c.Settings and the defaults, validating in libpq's
// order (pqConnectOptions2, then the checks libpq makes while connecting).
func (c *Config) resolve(env map[string]string) error {
	s := c.Settings
	get := func(k string) string { return s[k] }
	has := func(k string) bool { _, ok := s[k]; return ok }

	if err := c.resolveHosts(get("host"), get("hostaddr"), get("port")); err != nil {
		return err
	}

	c.User = get("user")
	if c.User == "" {
		name, err := currentUser()
		if err != nil || name == "" {
			return failure.Wrap(failure.ConfigInvalid, err, "could not look up local user ID %d", os.Geteuid()).
				WithEvidence("no user given and the OS user name could not be found").
				WithFix("set user=NAME in the connection string or PGUSER")
		}
		c.User = name
	}
	c.Database = get("dbname")
	if c.Database == "" {
		c.Database = c.User
	}
	c.Password = get("password")
	c.PassFile = get("passfile")
	if c.PassFile == "" && c.home != "" {
		c.PassFile = c.home + "/.pgpass"
	}
	if c.Password == "" && c.PassFile != "" {
		if w := passFileWarning(c.PassFile); w != "" {
			c.Warnings = append(c.Warnings, w)
		}
	}

	if err := validateRequireAuth(get("require_auth")); err != nil {
		return err
	}
	c.RequireAuth = get("require_auth")

	var err error
	if c.ChannelBinding, err = oneOf(s, "channel_binding", "prefer", "disable", "prefer", "require"); err != nil {
		return err
	}

	// sslmode; sslrootcert=system makes verify-full the default.
	c.SSLModeExplicit = has("sslmode")
	c.SSLRootCert = get("sslrootcert")
	mode, err := oneOf(s, "sslmode", string(SSLPrefer), "disable", "allow", "prefer", "require", "verify-ca", "verify-full")
	if err != nil {
		return err
	}
	if !c.SSLModeExplicit && c.SSLRootCert == "system" {
		mode = string(SSLVerifyFull)
	}
	c.SSLMode = SSLMode(mode)
	if c.SSLNegotiation, err = oneOf(s, "sslnegotiation", "postgres", "postgres", "direct"); err != nil {
		return err
	}
	if c.SSLRootCert == "system" && c.SSLMode != SSLVerifyFull {
		return invalid("weak sslmode \"%s\" may not be used with sslrootcert=system (use \"verify-full\")", c.SSLMode).
			WithEvidence("sslrootcert=system with sslmode=%s", c.SSLMode).
			WithFix("set sslmode=verify-full (or leave sslmode unset), or name a CA file in sslrootcert")
	}
	if c.SSLNegotiation == "direct" && c.SSLMode != SSLRequire && c.SSLMode != SSLVerifyCA && c.SSLMode != SSLVerifyFull {
		how := "default"
		if c.SSLModeExplicit {
			how = "set"
		}
		return invalid("weak sslmode \"%s\" may not be used with sslnegotiation=direct (use \"require\", \"verify-ca\", or \"verify-full\")", c.SSLMode).
			WithEvidence("sslnegotiation=direct with sslmode=%s (%s)", c.SSLMode, how).
			WithFix("set sslmode=verify-full (or require/verify-ca) together with sslnegotiation=direct")
	}

	if c.SSLMinProtocolVersion, err = tlsVersion(s, "ssl_min_protocol_version", tls.VersionTLS12); err != nil {
		return err
	}
	if c.SSLMaxProtocolVersion, err = tlsVersion(s, "ssl_max_protocol_version", 0); err != nil {
		return err
	}
	if c.SSLMinProtocolVersion != 0 && c.SSLMaxProtocolVersion != 0 && c.SSLMinProtocolVersion > c.SSLMaxProtocolVersion {
		return invalid("invalid SSL protocol version range").
			WithEvidence("ssl_min_protocol_version=%s is above ssl_max_protocol_version=%s",
				TLSVersionName(c.SSLMinProtocolVersion), TLSVersionName(c.SSLMaxProtocolVersion)).
			WithFix("make ssl_min_protocol_version lower than or equal to ssl_max_protocol_version")
	}
	if c.SSLCertMode, err = oneOf(s, "sslcertmode", "allow", "disable", "allow", "require"); err != nil {
		return err
	}
	if c.GSSEncMode, err = oneOf(s, "gssencmode", "prefer", "disable", "prefer", "require"); err != nil {
		return err
	}
	if c.GSSEncMode == "require" {
		return invalid("gssencmode value \"%s\" invalid when GSSAPI support is not compiled in", c.GSSEncMode).
			WithEvidence("gssencmode=require, but pgtrust has no GSSAPI support").
			WithFix("use TLS instead: gssencmode=disable (or prefer) with sslmode=verify-full")
	}
	if c.TargetSessionAttrs, err = oneOf(s, "target_session_attrs", "any", "any", "read-write", "read-only", "primary", "standby", "prefer-standby"); err != nil {
		return err
	}
	if c.LoadBalanceHosts, err = oneOf(s, "load_balance_hosts", "disable", "disable", "random"); err != nil {
		return err
	}
	if err := c.resolveProtocolVersions(); err != nil {
		return err
	}
	if c.ScramClientKey, err = scramKey(get("scram_client_key"), "client"); err != nil {
		return err
	}
	if c.ScramServerKey, err = scramKey(get("scram_server_key"), "server"); err != nil {
		return err
	}

	// Settings libpq checks only while connecting.
	if has("connect_timeout") {
		n, err := intParam(s, "connect_timeout")
		if err != nil {
			return err
		}
		switch {
		case n <= 0:
			c.ConnectTimeout = 0
		case n < 2: // libpq insists on two seconds so that rounding cannot make it instant
			c.ConnectTimeout = 2 * time.Second
		default:
			c.ConnectTimeout = time.Duration(n) * time.Second
		}
	}
	c.Keepalives = true
	if has("keepalives") {
		on, ok := keepalivesValue(get("keepalives"))
		if !ok {
			return intError("keepalives", get("keepalives"))
		}
		c.Keepalives = on
	}
	for _, kp := range []struct {
		name string
		unit time.Duration
		dst  *time.Duration
	}{
		{"keepalives_idle", time.Second, &c.KeepalivesIdle},
		{"keepalives_interval", time.Second, &c.KeepalivesInterval},
		{"tcp_user_timeout", time.Millisecond, &c.TCPUserTimeout},
	} {
		if has(kp.name) {
			n, err := intParam(s, kp.name)
			if err != nil {
				return err
			}
			*kp.dst = time.Duration(max(n, 0)) * kp.unit
		}
	}
	if has("keepalives_count") {
		n, err := intParam(s, "keepalives_count")
		if err != nil {
			return err
		}
		c.KeepalivesCount = max(n, 0)
	}

	// Files, with libpq's defaults under $HOME/.postgresql.
	c.SSLRootCert, c.SSLRootCertDefault = c.fileOrDefault(c.SSLRootCert, "root.crt")
	c.SSLCert, c.SSLCertDefault = c.fileOrDefault(get("sslcert"), "postgresql.crt")
	c.SSLKey, c.SSLKeyDefault = c.fileOrDefault(get("sslkey"), "postgresql.key")
	c.SSLCRLDir = get("sslcrldir")
	c.SSLCRL = get("sslcrl")
	if c.SSLCRL == "" && c.SSLCRLDir == "" {
		c.SSLCRL, c.SSLCRLDefault = c.fileOrDefault("", "root.crl")
	}
	c.SSLPassword = get("sslpassword")
	c.SSLKeyLogFile = get("sslkeylogfile")
	c.SSLSNI = !has("sslsni") || strings.HasPrefix(get("sslsni"), "1")
	c.SSLCompression = strings.HasPrefix(get("sslcompression"), "1")
	c.RequirePeer = get("requirepeer")
	c.Replication = get("replication")
	c.OAuthIssuer = get("oauth_issuer")
	c.OAuthClientID = get("oauth_client_id")
	c.OAuthClientSecret = get("oauth_client_secret")
	c.OAuthScope = get("oauth_scope")

	c.ApplicationName = get("application_name")
	c.FallbackApplicationName = get("fallback_application_name")
	c.Options = get("options")
	c.ClientEncoding = get("client_encoding")
	if c.ClientEncoding == "auto" {
		c.ClientEncoding = encodingFromLocale(env)
	}
	c.RuntimeParams = c.runtimeParams(env)
	return nil
}

// resolveHosts builds Hosts from the comma-separated host, hostaddr and
// port lists, like pqConnectOptions2 (list counts) and PQconnectPoll (port
// numbers, numeric addresses).
func (c *Config) resolveHosts(host, hostaddr, port string) error {
	c.usesDefaultHost = host == "" && hostaddr == ""
	n := 1
	var hosts, addrs []string
	if hostaddr != "" {
		addrs = strings.Split(hostaddr, ",")
		n = len(addrs)
	}
	if host != "" {
		hosts = strings.Split(host, ",")
		if addrs == nil {
			n = len(hosts)
		} else if len(hosts) != n {
			return invalid("could not match %d host names to %d hostaddr values", len(hosts), n).
				WithEvidence("host=%q has %d entries, hostaddr=%q has %d", host, len(hosts), hostaddr, n).
				WithFix("give host and hostaddr the same number of comma-separated entries (an entry may be empty)")
		}
	}
	var ports []string
	if port != "" {
		ports = strings.Split(port, ",")
		if len(ports) == 1 {
			for len(ports) < n {
				ports = append(ports, ports[0])
			}
		} else if len(ports) != n {
			return invalid("could not match %d port numbers to %d hosts", len(ports), n).
				WithEvidence("port=%q has %d entries for %d hosts", port, len(ports), n).
				WithFix("give one port for all hosts, or exactly one port per host")
		}
	}
	c.Hosts = make([]Host, n)
	for i := range c.Hosts {
		h := &c.Hosts[i]
		if hosts != nil {
			h.Host = hosts[i]
		}
		if addrs != nil {
			h.HostAddr = addrs[i]
		}
		if h.HostAddr == "" && h.Host == "" {
			h.Host = DefaultSocketDir
		}
		h.Port = DefaultPort
		if ports != nil && ports[i] != "" {
			v, ok := parseIntParam(ports[i])
			if !ok {
				return intError("port", ports[i])
			}
			if v < 1 || v > 65535 {
				return invalid("invalid port number: \"%s\"", ports[i]).
					WithEvidence("port %d is outside 1..65535", v).
					WithFix("use a TCP port number between 1 and 65535 (PostgreSQL's default is 5432)")
			}
			h.Port = uint16(v)
		}
	}
	// libpq parses hostaddr with getaddrinfo(AI_NUMERICHOST) when connecting.
	for i, h := range c.Hosts {
		if h.HostAddr == "" {
			continue
		}
		// getaddrinfo accepts inet_aton's short IPv4 forms (127.1); dial
		// needs the canonical one.
		if !strings.Contains(h.HostAddr, ":") {
			if ip := hostmatch.ParseIP(h.HostAddr); ip != nil {
				c.Hosts[i].HostAddr = ip.String()
				continue
			}
		}
		if _, err := netip.ParseAddr(h.HostAddr); err != nil {
			return invalid("could not parse network address \"%s\": Name or service not known", h.HostAddr).
				WithEvidence("hostaddr=%q is not a numeric IPv4 or IPv6 address", h.HostAddr).
				WithFix("put the IP address in hostaddr and the name in host (host is used for verify-full and SNI)")
		}
	}
	return nil
}

// fileOrDefault returns v, or the default file name under ~/.postgresql
// (and true) when v is empty.
func (c *Config) fileOrDefault(v, name string) (string, bool) {
	if v != "" {
		return v, false
	}
	if c.home == "" {
		return "", true
	}
	// libpq builds it as "%s/.postgresql/%s"; keep its exact spelling for messages.
	return c.home + "/.postgresql/" + name, true
}

// oneOf validates an enumerated setting: unset gives def; anything set,
// including "", must be one of allowed (libpq rejects an empty value).
func oneOf(s map[string]string, kw, def string, allowed ...string) (string, error) {
	v, ok := s[kw]
	if !ok {
		return def, nil
	}
	for _, a := range allowed {
		if v == a {
			return v, nil
		}
	}
	return "", invalid("invalid %s value: \"%s\"", kw, v).
		WithEvidence("%s=%q", kw, v).
		WithFix("set %s to one of: %s", kw, strings.Join(allowed, ", "))
}

// tlsVersion parses ssl_min/max_protocol_version: TLSv1, TLSv1.1, TLSv1.2,
// TLSv1.3 in any case; "" means unset (0).
func tlsVersion(s map[string]string, kw string, def uint16) (uint16, error) {
	v, ok := s[kw]
	if !ok {
		return def, nil
	}
	switch strings.ToLower(v) {
	case "":
		return 0, nil
	case "tlsv1":
		return tls.VersionTLS10, nil
	case "tlsv1.1":
		return tls.VersionTLS11, nil
	case "tlsv1.2":
		return tls.VersionTLS12, nil
	case "tlsv1.3":
		return tls.VersionTLS13, nil
	}
	return 0, invalid("invalid %s value: \"%s\"", kw, v).
		WithEvidence("%s=%q", kw, v).
		WithFix("set %s to TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3", kw)
}

// TLSVersionName returns OpenSSL's (and libpq's, and pg_stat_ssl's) name
// of a TLS version: "TLSv1.3".
func TLSVersionName(v uint16) string {
	switch v {
	case tls.VersionTLS10:
		return "TLSv1"
	case tls.VersionTLS11:
		return "TLSv1.1"
	case tls.VersionTLS12:
		return "TLSv1.2"
	case tls.VersionTLS13:
		return "TLSv1.3"
	}
	return fmt.Sprintf("0x%04x", v)
}

// resolveProtocolVersions validates libpq 18's min/max_protocol_version.
func (c *Config) resolveProtocolVersions() error {
	rank := map[string]int{"3.0": 0, "3.2": 2, "latest": 2}
	lo, hi := 0, -1
	for _, kw := range []string{"min_protocol_version", "max_protocol_version"} {
		v, ok := c.Settings[kw]
		if !ok {
			continue
		}
		r, valid := rank[v]
		if !valid {
			return invalid("invalid %s value: \"%s\"", kw, v).
				WithEvidence("%s=%q", kw, v).
				WithFix("set %s to 3.0, 3.2 or latest", kw)
		}
		if kw == "min_protocol_version" {
			c.MinProtocolVersion, lo = v, r
		} else {
			c.MaxProtocolVersion, hi = v, r
		}
	}
	if hi >= 0 && lo > hi {
		return invalid("\"%s\" is greater than \"%s\"", "min_protocol_version", "max_protocol_version").
			WithEvidence("min_protocol_version=%s, max_protocol_version=%s", c.MinProtocolVersion, c.MaxProtocolVersion).
			WithFix("lower min_protocol_version or raise max_protocol_version")
	}
	return nil
}

// scramKey decodes a base64 SCRAM key, which must be 32 bytes (SHA-256).
func scramKey(v, which string) ([]byte, error) {
	if v == "" {
		return nil, nil
	}
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil || len(b) != 32 {
		// Never echo the value or the decoder's error (it quotes an offset into the secret).
		return nil, invalid("invalid SCRAM %s key", which).
			WithEvidence("scram_%s_key is not the base64 encoding of 32 bytes", which).
			WithFix("give the base64-encoded SCRAM-SHA-256 %s key, or remove scram_%s_key", which, which)
	}
	return b, nil
}

// validateRequireAuth checks require_auth as libpq 16+ (and 18's oauth) does.
func validateRequireAuth(v string) error {
	if v == "" {
		return nil
	}
	const gssCont = 1 << 8
	bits := map[string]uint32{
		"password":      1 << 0,
		"md5":           1 << 1,
		"gss":           1<<2 | gssCont,
		"sspi":          1<<3 | gssCont,
		"scram-sha-256": 1 << 4,
		"oauth":         1 << 5,
	}
	fix := "use a comma-separated list of password, md5, gss, sspi, scram-sha-256, oauth, none, either all plain or all negated with !"
	authRequired, negated := true, false
	var allowed uint32
	for i, part := range strings.Split(v, ",") {
		method := part
		if strings.HasPrefix(method, "!") {
			if i == 0 {
				authRequired, allowed = false, ^uint32(0)
			} else if !negated {
				return invalid("negative require_auth method \"%s\" cannot be mixed with non-negative methods", method).
					WithEvidence("require_auth=%q", v).WithFix("%s", fix)
			}
			negated = true
			method = method[1:]
		} else if negated {
			return invalid("require_auth method \"%s\" cannot be mixed with negative methods", method).
				WithEvidence("require_auth=%q", v).WithFix("%s", fix)
		}
		duplicate := false
		if method == "none" {
			// "none" allows (or with "!", forbids) servers that ask for no authentication.
			duplicate = negated == authRequired
			authRequired = negated
		} else {
			b, ok := bits[method]
			if !ok {
				return invalid("invalid %s value: \"%s\"", "require_auth", method).
					WithEvidence("require_auth=%q", v).WithFix("%s", fix)
			}
			if negated {
				duplicate = allowed&b == 0
				allowed &^= b
			} else {
				duplicate = allowed&b == b
				allowed |= b
			}
		}
		if duplicate {
			return invalid("require_auth method \"%s\" is specified more than once", part).
				WithEvidence("require_auth=%q", v).WithFix("list each method once")
		}
	}
	return nil
}

// parseIntParam is libpq's pqParseIntParam: strtol in base 10 with leading
// and trailing whitespace allowed, nothing else, and the result in int range.
func parseIntParam(v string) (int, bool) {
	t := strings.TrimLeftFunc(v, func(r rune) bool { return r < 0x80 && isSpace(byte(r)) })
	t = strings.TrimRightFunc(t, func(r rune) bool { return r < 0x80 && isSpace(byte(r)) })
	digits := strings.TrimLeft(t, "+-")
	if len(t)-len(digits) > 1 || digits == "" || strings.TrimLeft(digits, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.ParseInt(t, 10, 32)
	if err != nil {
		return 0, false
	}
	return int(n), true
}

// intParam parses the integer setting kw with parseIntParam.
func intParam(s map[string]string, kw string) (int, error) {
	n, ok := parseIntParam(s[kw])
	if !ok {
		return 0, intError(kw, s[kw])
	}
	return n, nil
}

func intError(kw, v string) *failure.Error {
	return invalid("invalid integer value \"%s\" for connection option \"%s\"", v, kw).
		WithEvidence("%s=%q", kw, v).
		WithFix("set %s to a whole number", kw)
}

// keepalivesValue is libpq's useKeepalives: strtol with no trailing text;
// non-zero turns keepalives on. As in libpq, "" reads as 0.
func keepalivesValue(v string) (on bool, ok bool) {
	t := strings.TrimLeftFunc(v, func(r rune) bool { return r < 0x80 && isSpace(byte(r)) })
	digits := strings.TrimLeft(t, "+-")
	if len(t)-len(digits) > 1 || strings.TrimLeft(digits, "0123456789") != "" {
		return false, false
	}
	if digits == "" {
		// strtol converted nothing: libpq accepts only the empty string here.
		return false, v == ""
	}
	return strings.TrimLeft(digits, "0") != "", true
}

// encodingFromLocale resolves client_encoding=auto the way libpq does from
// the locale environment: UTF8 for a UTF-8 locale, else SQL_ASCII.
func encodingFromLocale(env map[string]string) string {
	loc := ""
	for _, k := range []string{"LC_ALL", "LC_CTYPE", "LANG"} {
		if env[k] != "" {
			loc = env[k]
			break
		}
	}
	_, codeset, _ := strings.Cut(loc, ".")
	codeset, _, _ = strings.Cut(codeset, "@")
	switch strings.ToLower(strings.ReplaceAll(codeset, "-", "")) {
	case "utf8":
		return "UTF8"
	case "iso88591", "latin1":
		return "LATIN1"
	case "iso885915", "latin9":
		return "LATIN9"
	}
	return "SQL_ASCII"
}

// runtimeParams lists the startup parameters libpq would send besides user
// and database (pqBuildStartupPacket3).
func (c *Config) runtimeParams(env map[string]string) map[string]string {
	p := make(map[string]string)
	if c.Replication != "" {
		p["replication"] = c.Replication
	}
	if c.Options != "" {
		p["options"] = c.Options
	}
	if c.ApplicationName != "" {
		p["application_name"] = c.ApplicationName
	} else if c.FallbackApplicationName != "" {
		p["application_name"] = c.FallbackApplicationName
	}
	if c.ClientEncoding != "" {
		p["client_encoding"] = c.ClientEncoding
	}
	for _, eo := range [][2]string{{"PGDATESTYLE", "datestyle"}, {"PGTZ", "timezone"}, {"PGGEQO", "geqo"}} {
		if v, ok := env[eo[0]]; ok && !strings.EqualFold(v, "default") {
			p[eo[1]] = v
		}
	}
	return p
}

// UsesDefaultHost reports whether neither host nor hostaddr was given, so
// the connection goes to the default Unix socket directory.
func (c *Config) UsesDefaultHost() bool { return c.usesDefaultHost }

// Home returns the home directory the default file paths were built from.
func (c *Config) Home() string { return c.home }

// Clone returns a deep copy of c.
func (c *Config) Clone() *Config {
	if c == nil {
		return nil
	}
	d := *c
	d.Hosts = append([]Host(nil), c.Hosts...)
	d.Warnings = append([]string(nil), c.Warnings...)
	d.ScramClientKey = append([]byte(nil), c.ScramClientKey...)
	d.ScramServerKey = append([]byte(nil), c.ScramServerKey...)
	if c.ScramClientKey == nil {
		d.ScramClientKey = nil
	}
	if c.ScramServerKey == nil {
		d.ScramServerKey = nil
	}
	d.RuntimeParams = cloneMap(c.RuntimeParams)
	d.Settings = cloneMap(c.Settings)
	return &d
}

func cloneMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	n := make(map[string]string, len(m))
	for k, v := range m {
		n[k] = v
	}
	return n
}
