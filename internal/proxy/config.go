package proxy

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/leader"
	"github.com/pgtrust/pgtrust/ratls"
)

// Defaults applied by New to zero-valued settings.
const (
	DefaultDrainTimeout     = 30 * time.Second
	DefaultStartupTimeout   = 5 * time.Second
	DefaultConnectTimeout   = 5 * time.Second
	DefaultAuthTimeout      = 10 * time.Second
	DefaultRefusalLogEvery  = 10 * time.Second
	DefaultMaxStartupPacket = 10000 // PostgreSQL's MAX_STARTUP_PACKET_LENGTH
	DefaultMaxConnections   = 100
	DefaultListen           = "127.0.0.1:6432"
	defaultSocketPort       = 5432
	// DefaultReservedConnections is reserved_connections when the upstream
	// has a Unix-socket listener (the operator's way in), as PostgreSQL's
	// superuser_reserved_connections; without one nobody could use them.
	DefaultReservedConnections = 3
)

// Config configures a Proxy.
type Config struct {
	Upstreams      []UpstreamConfig
	DrainTimeout   time.Duration // default 30s: max time to drain sessions on Shutdown
	StartupTimeout time.Duration // default 5s: the client's phase (TLS negotiation + startup packet); the client's clock only
	ConnectTimeout time.Duration // default 5s: opening the upstream transport (TCP + TLS), counted from the dial's start
	// AuthTimeout (default 10s) bounds the authentication exchange, from the
	// forwarded startup packet to ReadyForQuery. A client that has not
	// answered by then is refused and its upstream backend released; it is
	// well under PostgreSQL's 60 s authentication_timeout because every
	// half-authenticated client holds a slot and a backend.
	AuthTimeout time.Duration
	// DrainDelay is how long Shutdown keeps the listeners open after Ready
	// turns false, so that load balancers stop sending first. Default 0.
	DrainDelay       time.Duration
	MaxStartupPacket int           // default 10000 bytes (PostgreSQL's own limit)
	ProbeInterval    time.Duration // 0 = no periodic probe; else dial each upstream (pgtls.Dial, no startup) at this interval
	// RefusalLogInterval aggregates repeated refusals: the first of a kind
	// (upstream, reason) is logged, later ones within the interval are
	// counted and reported in one summary line. Default 10s. Metrics count
	// every refusal.
	RefusalLogInterval time.Duration
	// EventLoops is how many event loops relay established sessions
	// (internal/relay): 0 means one per GOMAXPROCS, a negative number none
	// (two goroutines per session, as on systems without the loops).
	// Pooled sessions keep their own goroutines either way.
	EventLoops int
	Logger     *slog.Logger
	Registerer prometheus.Registerer // where metrics are registered (nil = none)
}

// UpstreamConfig is one named upstream server and its local listeners.
type UpstreamConfig struct {
	Name string
	// Listen is a TCP address; default "127.0.0.1:6432" when both Listen and
	// UnixSocketDir are empty; "" = no TCP listener.
	Listen string
	// UnixSocketDir, if set: the directory is created (0700) and the proxy
	// listens on DIR/.s.PGSQL.<UnixSocketPort>, so `psql -h DIR -p PORT` works.
	UnixSocketDir string
	// UnixSocketPort defaults to the port of Listen, else 5432.
	UnixSocketPort int
	// Conn holds the upstream settings. The proxy keeps the sslmode given;
	// configuration loaders default it to verify-full.
	Conn *connstring.Config
	// MaxConnections bounds the sessions of this upstream over all its
	// listeners, authenticating or established; 0 = 100.
	MaxConnections int
	// ReservedConnections of MaxConnections are kept for the operator:
	// sessions arriving on the Unix-socket listener, which file permissions
	// protect. Default 3 with a Unix socket, 0 without; -1 = none.
	ReservedConnections int
	// MaxAuthenticating bounds the TCP sessions still authenticating (startup
	// packet forwarded, no ReadyForQuery yet), each of which holds an
	// upstream backend; 0 = MaxConnections/4 (at least 1).
	MaxAuthenticating int
	// MaxAuthenticatingPerSource bounds them per client IP address (an
	// IPv6 /64); 0 = MaxAuthenticating (no further limit: on loopback every
	// client has the same address), or DefaultGatewayPerSource when the
	// upstream has gateway listeners, whose clients are remote.
	MaxAuthenticatingPerSource int
	// MaxPending bounds the TCP connections that have not yet sent their
	// StartupMessage (negotiating, in the TLS handshake), each holding a
	// file descriptor until StartupTimeout; 0 = 16 × MaxConnections. Above
	// it a connection is refused at once ("too many clients").
	MaxPending int
	// ClientRenewal, when set, is where the upstream client certificate
	// comes from (a CA, renewed) in place of Conn's sslcert/sslkey, which
	// must then be unset. With Options.TrustIssuedCA the CAs it names
	// verify the server in place of sslrootcert.
	ClientRenewal *Renewal
	// PlaintextIntended declares that an upstream sslmode that may connect
	// without TLS is on purpose: health then reports such a connection
	// "healthy" rather than "insecure".
	PlaintextIntended bool
	// ClientTLS, when set, offers TLS to local clients; nil = plaintext only.
	ClientTLS *ClientTLS
	// Attestation, when set, is the RA-TLS policy the upstream's
	// certificate must pass on every dial (sessions, probes and cancel
	// requests alike), through pgtls.Options.Attestation. It needs
	// sslmode=require or stronger.
	Attestation *ratls.Policy
	// AttestationTimeout bounds the upstream TLS handshake plus the
	// attestation; 0 = pgtls.DefaultAttestationTimeout (5000 ms).
	AttestationTimeout time.Duration
	// Leader, when set, replaces Conn's host and port on every dial by the
	// endpoint of the cluster's current leader manifest (see
	// leader.Follower for when it is fetched and what a refused manifest
	// does). A failed dial or handshake fetches the manifest again and, if
	// it names another leader, dials that once.
	Leader *leader.Follower
	// Auth, when set, makes the proxy authenticate to the upstream itself
	// on the local listeners (refused on a non-loopback Listen): the client is not asked for credentials (the
	// listener is local, protected by its address or socket permissions)
	// and the upstream is opened as Auth.Role with the gateway's own
	// credentials (the dsn's client certificate, Auth.Password, or
	// trust/peer over a Unix socket).
	Auth *UpstreamAuth
	// Gateways are remote listeners of this upstream (TLS mandatory), each
	// with its own authentication mode: the same session engine with a
	// different front.
	Gateways []GatewayConfig
	// Pool, when set, pools server connections for the fronts where
	// pgtrust authenticates the client itself (Auth, gateways other than
	// passthrough): session or transaction mode. Nil: every session opens
	// its own upstream connection.
	Pool *PoolConfig
}

// ClientTLS is the TLS the proxy offers to local clients.
type ClientTLS struct {
	// CertFile and KeyFile are the server certificate shown to local
	// clients, hot-reloaded through a certs.FileSource.
	CertFile, KeyFile string
	// AutoCertDir is used when CertFile is empty: certs.EnsureDevPKI(dir)
	// and its server certificate.
	AutoCertDir string
	// Require refuses plaintext clients on the TCP listener (a plain
	// StartupMessage gets an ErrorResponse saying TLS is required). The Unix
	// socket is protected by file permissions and never carries TLS, as
	// libpq does not use TLS over Unix sockets.
	Require bool
}

// UpstreamAuth makes the proxy authenticate to the upstream itself and
// present AuthenticationOk to the client.
type UpstreamAuth struct {
	Role     string // upstream role; "" = the dsn's user
	Password string // SCRAM password for Role; "" = the dsn's, or certificate / trust
}

// String never shows the password.
func (a UpstreamAuth) String() string { return "UpstreamAuth{Password: " + connstring.Mask + "}" }

// GoString never shows the password.
func (a UpstreamAuth) GoString() string { return a.String() }

// withDefaults returns a copy of cfg with defaults applied and validated.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	if cfg.StartupTimeout <= 0 {
		cfg.StartupTimeout = DefaultStartupTimeout
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.AuthTimeout <= 0 {
		cfg.AuthTimeout = DefaultAuthTimeout
	}
	if cfg.DrainDelay < 0 {
		cfg.DrainDelay = 0
	}
	if cfg.RefusalLogInterval <= 0 {
		cfg.RefusalLogInterval = DefaultRefusalLogEvery
	}
	if cfg.MaxStartupPacket <= 0 {
		cfg.MaxStartupPacket = DefaultMaxStartupPacket
	}
	if cfg.MaxStartupPacket < 8 {
		return cfg, configError("max_startup_packet %d is below the 8 bytes of the smallest startup packet", cfg.MaxStartupPacket).
			WithFix("leave it unset (10000, PostgreSQL's limit) or raise it")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if len(cfg.Upstreams) == 0 {
		return cfg, configError("no upstream configured").WithFix("add at least one upstream (a libpq connection string)")
	}
	ups := make([]UpstreamConfig, len(cfg.Upstreams))
	seen := map[string]bool{}
	addrs := map[string]string{}
	for i, u := range cfg.Upstreams {
		if u.Name == "" {
			return cfg, configError("upstream #%d has no name", i+1).WithFix("give every upstream a unique name")
		}
		if seen[u.Name] {
			return cfg, configError("upstream %q is configured twice", u.Name).WithFix("give every upstream a unique name")
		}
		seen[u.Name] = true
		if u.Conn == nil {
			return cfg, configError("upstream %q has no connection settings", u.Name).
				WithFix("set the upstream's libpq connection string, e.g. host=db.internal sslmode=verify-full sslrootcert=/etc/pgtrust/ca.crt")
		}
		if len(u.Conn.Hosts) == 0 {
			return cfg, configError("upstream %q has no host", u.Name).WithFix("set host= in the upstream's connection string")
		}
		if u.Attestation != nil {
			switch u.Conn.SSLMode {
			case connstring.SSLDisable, connstring.SSLAllow, connstring.SSLPrefer:
				return cfg, configError("upstream %q: an attestation policy needs sslmode=require or stronger, not sslmode=%s", u.Name, u.Conn.SSLMode).
					WithEvidence("sslmode=%s may connect without TLS: a plaintext connection carries no certificate to attest", u.Conn.SSLMode).
					WithFix("use sslmode=require (attestation only), verify-ca (chain + attestation) or verify-full (chain + host name + attestation)")
			}
		}
		if u.ClientRenewal != nil && u.Conn.SSLCert != "" && !u.Conn.SSLCertDefault {
			return cfg, configError("upstream %q: the client certificate comes from a CA, and sslcert=%s names another", u.Name, u.Conn.SSLCert).
				WithFix("remove sslcert, sslkey and sslpassword from the upstream's settings, or remove the CA table to use files")
		}
		if u.Auth != nil && u.Auth.Role == "" && u.Conn.User == "" {
			return cfg, configError("upstream %q: auth needs the role to open upstream", u.Name).
				WithFix("set the auth role, or user= in the upstream's connection string")
		}
		if u.Auth != nil && u.Listen != "" && !loopbackListen(u.Listen) {
			// UpstreamAuth asks the client for nothing: on an address others
			// can reach it would open the upstream role to anyone.
			return cfg, configError("upstream %q: auth (the proxy logs in as role %q, clients are not authenticated) on the non-loopback listener %s", u.Name, u.Auth.Role, u.Listen).
				WithEvidence("listen %s is reachable from other hosts; [upstreams.%s.auth] lends the proxy's upstream credentials to every client that connects", u.Listen, u.Name).
				WithFix("bind listen to 127.0.0.1 (or ::1) or use unix_socket_dir only; remote clients belong on a [[upstreams.%s.gateway]] listener with auth = \"cluster_secret\" or \"cert\"", u.Name)
		}
		if len(u.Gateways) > 0 {
			gws := make([]GatewayConfig, len(u.Gateways))
			copy(gws, u.Gateways)
			for j := range gws {
				if err := gws[j].withDefaults(u.Name, j); err != nil {
					return cfg, err
				}
				if other, dup := addrs[gws[j].Listen]; dup && !hasPortZero(gws[j].Listen) {
					return cfg, configError("upstreams %q and %q both listen on %s", other, u.Name, gws[j].Listen).WithFix("give each listener its own address")
				}
				addrs[gws[j].Listen] = u.Name
				if gws[j].Auth == AuthPassthrough {
					why := lentCredentials(u.Conn)
					if u.ClientRenewal != nil {
						why = "the upstream client certificate is issued by a CA and sent to the upstream"
					}
					if why != "" {
						return cfg, configError("upstream %q gateway #%d (%s): auth = passthrough would let remote clients in on the gateway's own upstream credentials", u.Name, j+1, gws[j].Listen).
							WithEvidence("%s: passthrough relays the client's login over the gateway's transport, so the server sees the gateway's identity, not the client's", why).
							WithFix("use auth = \"cluster_secret\" or \"cert\" on this listener, or give passthrough a TCP upstream without sslcert/sslkey (sslcertmode=disable) whose pg_hba.conf authenticates every client itself")
					}
				}
			}
			u.Gateways = gws
		}
		if err := validatePool(u); err != nil {
			return cfg, err
		}
		if u.Listen == "" && u.UnixSocketDir == "" && len(u.Gateways) == 0 {
			u.Listen = DefaultListen
		}
		if u.Listen != "" {
			_, port, err := net.SplitHostPort(u.Listen)
			if err != nil {
				return cfg, configError("upstream %q: invalid listen address %q: %v", u.Name, u.Listen, err).
					WithFix("use host:port, e.g. 127.0.0.1:6432")
			}
			if u.UnixSocketPort == 0 {
				if p, err := strconv.Atoi(port); err == nil && p > 0 {
					u.UnixSocketPort = p
				}
			}
			if other, dup := addrs[u.Listen]; dup && port != "0" {
				return cfg, configError("upstreams %q and %q both listen on %s", other, u.Name, u.Listen).WithFix("give each upstream its own listen address")
			}
			addrs[u.Listen] = u.Name
		}
		if u.UnixSocketPort == 0 {
			u.UnixSocketPort = defaultSocketPort
		}
		if u.UnixSocketPort < 0 || u.UnixSocketPort > 65535 {
			return cfg, configError("upstream %q: invalid unix socket port %d", u.Name, u.UnixSocketPort).WithFix("use a port between 1 and 65535")
		}
		if u.UnixSocketDir != "" {
			key := socketPath(u.UnixSocketDir, u.UnixSocketPort)
			if other, dup := addrs[key]; dup {
				return cfg, configError("upstreams %q and %q both listen on %s", other, u.Name, key).WithFix("give each upstream its own socket directory or port")
			}
			addrs[key] = u.Name
		}
		if u.MaxConnections <= 0 {
			u.MaxConnections = DefaultMaxConnections
		}
		switch {
		case u.ReservedConnections < 0:
			u.ReservedConnections = 0
		case u.ReservedConnections == 0 && u.UnixSocketDir != "":
			u.ReservedConnections = min(DefaultReservedConnections, u.MaxConnections-1)
		}
		if u.ReservedConnections >= u.MaxConnections {
			return cfg, configError("upstream %q: reserved_connections %d leaves no slot of max_connections %d for TCP clients", u.Name, u.ReservedConnections, u.MaxConnections).
				WithFix("make reserved_connections smaller than max_connections")
		}
		if u.ReservedConnections > 0 && u.UnixSocketDir == "" {
			return cfg, configError("upstream %q: reserved_connections %d, but no unix_socket_dir: only the Unix-socket listener may use reserved slots", u.Name, u.ReservedConnections).
				WithFix("set unix_socket_dir for the operator's way in, or remove reserved_connections")
		}
		if u.MaxAuthenticating <= 0 {
			u.MaxAuthenticating = max(1, u.MaxConnections/4)
		}
		if u.MaxPending <= 0 {
			u.MaxPending = 16 * u.MaxConnections
		}
		switch {
		case u.MaxAuthenticatingPerSource <= 0 && len(u.Gateways) > 0:
			// Remote clients have distinct addresses: one of them (waiting
			// in its backoff, or simply slow) must not hold every slot.
			u.MaxAuthenticatingPerSource = DefaultGatewayPerSource(u.MaxAuthenticating)
		case u.MaxAuthenticatingPerSource <= 0 || u.MaxAuthenticatingPerSource > u.MaxAuthenticating:
			u.MaxAuthenticatingPerSource = u.MaxAuthenticating
		}
		if t := u.ClientTLS; t != nil {
			if (t.CertFile == "") != (t.KeyFile == "") {
				return cfg, configError("upstream %q: client TLS needs both cert_file and key_file", u.Name).
					WithEvidence("cert_file %q, key_file %q", t.CertFile, t.KeyFile).WithFix("set both, or neither and auto_cert_dir")
			}
			if t.CertFile == "" && t.AutoCertDir == "" {
				return cfg, configError("upstream %q: client TLS needs a certificate", u.Name).
					WithFix("set cert_file and key_file, or auto_cert_dir to generate a development certificate")
			}
		}
		ups[i] = u
	}
	cfg.Upstreams = ups
	return cfg, nil
}

// ValidateUpstream checks one upstream as New would, without loading any
// file: among others a passthrough gateway that would lend the gateway's
// credentials, or UpstreamAuth on a non-loopback listener (for `pgtrust
// config validate`).
func ValidateUpstream(u UpstreamConfig) error {
	_, err := Config{Upstreams: []UpstreamConfig{u}}.withDefaults()
	return err
}

// DefaultGatewayPerSource is max_authenticating_per_source of an upstream
// with gateway listeners when unset: a quarter of max_authenticating, at
// least 1.
func DefaultGatewayPerSource(maxAuthenticating int) int { return max(1, maxAuthenticating/4) }

// loopbackListen reports whether a listen address binds only loopback
// ("localhost", 127.0.0.0/8, ::1); an empty host binds every interface.
func loopbackListen(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// lentCredentials says why a passthrough gateway on conn would log remote
// clients in with the gateway's own transport identity ("" when it would
// not): a Unix socket (peer/trust in pg_hba.conf) or a client certificate
// that libpq's rules would send (the cert method, clientcert=).
func lentCredentials(conn *connstring.Config) string {
	for _, h := range conn.Hosts {
		if h.IsUnixSocket() {
			return fmt.Sprintf("the upstream is the Unix socket %s, where pg_hba.conf's local lines (peer, trust) see the gateway's process", h.Display())
		}
	}
	if conn.SSLMode == connstring.SSLDisable || conn.SSLCertMode == "disable" || conn.SSLCert == "" {
		return ""
	}
	if !conn.SSLCertDefault {
		return fmt.Sprintf("the dsn's sslcert=%s is sent to the upstream", conn.SSLCert)
	}
	if _, err := os.Stat(conn.SSLCert); err == nil {
		return fmt.Sprintf("libpq's default client certificate %s exists and is sent to the upstream", conn.SSLCert)
	}
	return ""
}

func hasPortZero(addr string) bool {
	_, port, _ := net.SplitHostPort(addr)
	return port == "0"
}

func configError(format string, args ...any) *failure.Error {
	return failure.New(failure.ConfigInvalid, format, args...)
}

func socketPath(dir string, port int) string {
	return fmt.Sprintf("%s/.s.PGSQL.%d", dir, port)
}
