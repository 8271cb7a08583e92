package proxy

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/authlimit"
	"github.com/pgtrust/pgtrust/internal/chain"
	"github.com/pgtrust/pgtrust/internal/identmap"
	"github.com/pgtrust/pgtrust/internal/scram"
	"github.com/pgtrust/pgtrust/internal/userlist"
	"github.com/pgtrust/pgtrust/pgtls"
	"github.com/pgtrust/pgtrust/ratls"
)

// AuthMode is how a listener authenticates its clients.
type AuthMode string

// Authentication modes of a gateway listener.
const (
	// AuthPassthrough relays the client's own authentication to the
	// upstream, as the local proxy does.
	AuthPassthrough AuthMode = "passthrough"
	// AuthClusterSecret runs the server side of SCRAM-SHA-256(-PLUS) in the
	// gateway against configured verifiers; the upstream is opened as the
	// mapped role with the gateway's own credentials.
	AuthClusterSecret AuthMode = "cluster_secret"
	// AuthCert maps the verified client certificate's identity to the
	// requested role through a pg_ident-style map.
	AuthCert AuthMode = "cert"
	// AuthScram runs SCRAM-SHA-256(-PLUS) in the gateway against the
	// client's own verifier from a userlist file and/or an auth_query; the
	// upstream is opened as the client's user name with the gateway's own
	// credentials (UpstreamPassword or the dsn's client certificate).
	AuthScram AuthMode = "scram"
	// authUpstream is the local proxy's UpstreamAuth: no client
	// authentication (the listener is local), the upstream opened as a
	// configured role.
	authUpstream AuthMode = "upstream_auth"
)

// DefaultGatewayListen is a gateway listener's default address (TeeSQL's port).
const DefaultGatewayListen = ":5433"

// DefaultRATLSLifetime is the validity of an RA-TLS server certificate the
// gateway issues; it is re-issued after two thirds of it.
const DefaultRATLSLifetime = 24 * time.Hour

// GatewayConfig is one remote listener of an upstream: TLS is mandatory on
// it, and its clients authenticate by Auth.
type GatewayConfig struct {
	Listen string   // default ":5433"
	Auth   AuthMode // default passthrough
	// CertFile and KeyFile are the server certificate (hot-reloaded); or
	// RATLS issues one from the attestation provider.
	CertFile, KeyFile string
	RATLS             *RATLSCertificate
	// Renewal, instead, issues the server certificate from a CA (Vault
	// PKI, step-ca) and renews it.
	Renewal *Renewal
	// ClientCAFile, when set, makes the listener request a client
	// certificate and verify it (with ClientCRLFile / ClientCRLDir) when
	// one is sent; cert mode requires one.
	ClientCAFile, ClientCRLFile, ClientCRLDir string
	// Roles is the cluster_secret role table (client user name → verifier
	// and upstream role).
	Roles []GatewayRole
	// RequireChannelBinding refuses SCRAM-SHA-256 without
	// tls-server-end-point binding (cluster_secret).
	RequireChannelBinding bool
	// IdentitySources orders the certificate identities tried in cert
	// mode; default uri, dns, cn.
	IdentitySources []identmap.Source
	// IdentityMap maps certificate identities to roles (cert mode).
	IdentityMap *identmap.Map
	// UpstreamPassword is the gateway's password toward the upstream in
	// cert mode (cluster_secret has one per role); "" = the dsn's, or a
	// client certificate / trust over a Unix socket.
	UpstreamPassword string
	// Backoff shapes the per-source failure backoff (zero: 100 ms doubling
	// to 5 s, forgotten after 10 min).
	Backoff authlimit.Options
	// PoolMode overrides the upstream's pool mode for this listener:
	// PoolInherit (""), PoolNone, "session" or "transaction".
	PoolMode string

	// scram mode: AuthFile is a userlist file (PgBouncer syntax, SCRAM
	// verifiers only; watched and re-read on reload), AuthQuery a lookup
	// through a dedicated role; with both, the file is asked first.
	AuthFile  string
	AuthQuery *AuthQueryConfig
	// ScramIterations is the iteration count advertised for unknown users
	// (default 4096, PostgreSQL's scram_iterations): it must be that of the
	// real verifiers, or the count tells unknown names apart.
	ScramIterations int
	// FakeSaltKey keys unknown users' salts (at least 16 bytes); give the
	// same on every replica. Empty: derived from the gateway's secrets
	// (UpstreamPassword, the auth_query password), or random per process
	// when it has none.
	FakeSaltKey []byte
}

// AuthQueryConfig is the scram mode's lookup of verifiers in PostgreSQL.
type AuthQueryConfig struct {
	User     string        // the lookup role (NOSUPERUSER; see userlist.FunctionSQL)
	Password string        // its password; "" = the dsn's client certificate (or trust)
	DBName   string        // the database it connects to; "" = the dsn's
	Query    string        // "" = userlist.DefaultQuery
	TTL      time.Duration // cache age of an answer, known and unknown users alike (default 15 s)
}

// GatewayRole is one client user name of a cluster_secret listener.
type GatewayRole struct {
	User     string          // the name clients log in with (teesql_read)
	Role     string          // the upstream role opened for them
	Verifier *scram.Verifier // the user's own secret
	// DowngradeFrom names other users whose secret may also open this one
	// (teesql_read accepts the teesql_readwrite secret); their verifiers
	// must share this one's salt and iterations.
	DowngradeFrom []string
	// Password is the gateway's SCRAM password for Role upstream; "" =
	// the dsn's password, or a client certificate, or trust/peer.
	Password string
}

// RATLSCertificate issues the listener's certificate from an attestation
// provider (configfs-tsm, or the simulator in development).
type RATLSCertificate struct {
	Provider ratls.QuoteProvider
	Kind     string // "configfs" or "simulator", reported by /health
	Options  ratls.CertificateOptions
	Lifetime time.Duration // default 24h; re-issued after two thirds
}

// String never shows a verifier or password (%v, %+v, %s).
func (g GatewayConfig) String() string {
	return fmt.Sprintf("GatewayConfig{Listen: %q, Auth: %s, Roles: %d, AuthFile: %q, AuthQuery: %t}", g.Listen, g.Auth, len(g.Roles), g.AuthFile, g.AuthQuery != nil)
}

// GoString never shows a verifier or password (%#v).
func (g GatewayConfig) GoString() string { return g.String() }

// LogValue never shows a verifier or password: without it slog's JSON
// handler would marshal every exported field.
func (g GatewayConfig) LogValue() slog.Value {
	users := make([]string, len(g.Roles))
	for i, r := range g.Roles {
		users[i] = r.User
	}
	return slog.GroupValue(slog.String("listen", g.Listen), slog.String("auth", string(g.Auth)), slog.Any("users", users))
}

// String never shows the verifier or the password (%v, %+v, %s).
func (r GatewayRole) String() string {
	return fmt.Sprintf("GatewayRole{User: %q, Role: %q, DowngradeFrom: %q}", r.User, r.Role, r.DowngradeFrom)
}

// GoString never shows the verifier or the password (%#v).
func (r GatewayRole) GoString() string { return r.String() }

// LogValue never shows the verifier or the password.
func (r GatewayRole) LogValue() slog.Value {
	return slog.GroupValue(slog.String("user", r.User), slog.String("role", r.Role), slog.Any("downgrade_from", r.DowngradeFrom))
}

// Validate checks g as New would (verifiers present, downgrade pairs with
// one salt, the certificate source, the mode's settings), for `pgtrust
// config validate`.
func (g GatewayConfig) Validate(upstream string, i int) error { return g.withDefaults(upstream, i) }

func (g *GatewayConfig) withDefaults(upName string, i int) error {
	if g.Listen == "" {
		g.Listen = DefaultGatewayListen
	}
	if g.Auth == "" {
		g.Auth = AuthPassthrough
	}
	where := fmt.Sprintf("upstream %q gateway #%d (%s)", upName, i+1, g.Listen)
	if _, _, err := net.SplitHostPort(g.Listen); err != nil {
		return configError("%s: invalid listen address: %v", where, err).WithFix("use host:port, e.g. :5433")
	}
	n := 0
	for _, set := range []bool{g.CertFile != "", g.RATLS != nil, g.Renewal != nil} {
		if set {
			n++
		}
	}
	if (g.CertFile == "") != (g.KeyFile == "") || n != 1 {
		return configError("%s: TLS is mandatory: give cert_file and key_file, an RA-TLS provider or a renewing CA source (exactly one)", where).
			WithFix("set cert_file and key_file, a [vault] or [step] table, or ratls = \"configfs\" (\"simulator\" in development)")
	}
	switch g.Auth {
	case AuthPassthrough:
	case AuthClusterSecret:
		if len(g.Roles) == 0 {
			return configError("%s: cluster_secret needs a role table", where).
				WithFix("add roles, e.g. teesql_read and teesql_readwrite, each with a verifier (pgtrust gateway hash-secret) and an upstream role")
		}
		byUser := map[string]*GatewayRole{}
		for j := range g.Roles {
			r := &g.Roles[j]
			if r.User == "" || r.Role == "" || r.Verifier == nil {
				return configError("%s: role #%d needs a user name, an upstream role and a verifier", where, j+1).
					WithFix("set the role's user, role and verifier_file (or verifier_env)")
			}
			if byUser[r.User] != nil {
				return configError("%s: user %q appears twice in the role table", where, r.User).WithFix("keep one entry per user name")
			}
			byUser[r.User] = r
		}
		// One iteration count per table: an unknown user is answered with
		// it, so a table of mixed counts would tell unknown users apart.
		for _, r := range g.Roles[1:] {
			if first := g.Roles[0]; r.Verifier.Iterations != first.Verifier.Iterations {
				return configError("%s: users %q and %q have verifiers of %d and %d iterations; a role table needs one iteration count", where, first.User, r.User, first.Verifier.Iterations, r.Verifier.Iterations).
					WithEvidence("an unknown user is answered with the table's iteration count: with several, the count a name gets tells whether it exists").
					WithFix("re-hash the %s secret with the same salt and iterations: pgtrust gateway hash-secret --like %s's verifier file", r.User, first.User)
			}
		}
		for _, r := range g.Roles {
			for _, from := range r.DowngradeFrom {
				o := byUser[from]
				if o == nil || from == r.User {
					return configError("%s: user %q: downgrade_from names %q, which is not another user of the table", where, r.User, from).
						WithFix("list only other users of the role table")
				}
				if !scram.SameSalt(r.Verifier, o.Verifier) {
					return configError("%s: user %q accepts the secret of %q, but their verifiers have different salts or iterations", where, r.User, from).
						WithEvidence("one SCRAM exchange advertises one salt: both verifiers must share it to be tried against one exchange").
						WithFix("re-hash the %s secret with the same salt: pgtrust gateway hash-secret --like %s's verifier file", r.User, from)
				}
			}
		}
	case AuthScram:
		if g.AuthFile == "" && g.AuthQuery == nil {
			return configError("%s: scram mode needs auth_file or auth_query", where).
				WithFix("set auth_file to a userlist of SCRAM verifiers, or auth_user (and auth_query) for a lookup through a NOSUPERUSER role; see docs/gateway.md")
		}
		if q := g.AuthQuery; q != nil && q.User == "" {
			return configError("%s: auth_query needs auth_user", where).
				WithFix("set auth_user to the lookup role that may run %s.%s (userlist.FunctionSQL)", userlist.FunctionSchema, userlist.FunctionName)
		}
		if g.ScramIterations == 0 {
			g.ScramIterations = scram.DefaultIterations
		}
		if g.ScramIterations < 1 || g.ScramIterations > scram.MaxIterations {
			return configError("%s: scram_iterations %d out of range", where, g.ScramIterations).
				WithFix("use PostgreSQL's scram_iterations (default %d)", scram.DefaultIterations)
		}
		if len(g.FakeSaltKey) > 0 && len(g.FakeSaltKey) < scram.MinFakeSaltKeyLen {
			return configError("%s: fake_salt_key of %d bytes", where, len(g.FakeSaltKey)).
				WithEvidence("unknown users' salts need a key of at least %d bytes to be unpredictable", scram.MinFakeSaltKeyLen).
				WithFix("store at least 32 random bytes, e.g. openssl rand -base64 32")
		}
	case AuthCert:
		if g.ClientCAFile == "" {
			return configError("%s: cert mode needs client_ca_file", where).WithFix("set client_ca_file to the CA that issues the clients' certificates")
		}
		if g.IdentityMap == nil {
			return configError("%s: cert mode needs an identity map", where).
				WithFix("set identity_map_file: lines of \"IDENTITY ROLE\" (exact, or /regex with \\1)")
		}
		if len(g.IdentitySources) == 0 {
			g.IdentitySources = []identmap.Source{"uri", "dns", "cn"}
		}
	default:
		return configError("%s: unknown auth mode %q", where, g.Auth).WithFix("use passthrough, cluster_secret, scram or cert (password and md5 are not offered: see docs/gateway.md)")
	}
	if g.Backoff.Base <= 0 {
		g.Backoff.Base = 100 * time.Millisecond
	}
	if g.Backoff.Max <= 0 {
		g.Backoff.Max = 5 * time.Second
	}
	if g.Backoff.Forget <= 0 {
		g.Backoff.Forget = 10 * time.Minute
	}
	if g.Backoff.MaxSources <= 0 {
		g.Backoff.MaxSources = 100000
	}
	return nil
}

// roleEntry is one user name of the table, ready for an exchange.
type roleEntry struct {
	role       string
	password   string
	candidates []*scram.Verifier // [0] the user's own, then downgrades
	owners     []string          // the user whose secret each candidate is
}

// gatewayFront is the runtime of one gateway listener in a settings
// snapshot.
type gatewayFront struct {
	cfg        GatewayConfig
	tls        *tls.Config
	certSrc    *certs.FileSource // nil with RA-TLS or a renewing source
	renew      *renewHandle      // the certificate comes from a CA (proxy-owned, kept across reloads)
	ra         *ratlsHolder      // nil with files
	roles      map[string]*roleEntry
	iterations int    // advertised for unknown users: the table's one count
	fakeSalt   []byte // key of unknown users' salts, derived from the table
	roots      *chain.Roots
	crls       []*x509.RevocationList
	users      *userlist.File      // scram: the userlist file, nil without
	aq         *userlist.AuthQuery // scram: the auth_query, nil without
	stopWatch  context.CancelFunc  // ends the userlist file's watch
}

func (f *gatewayFront) close() {
	if f.stopWatch != nil {
		f.stopWatch()
	}
	if f.aq != nil {
		// Idle lookup connections close; a session of this snapshot still
		// authenticating gets a refusal, as during a database outage.
		f.aq.Close()
	}
	if f.certSrc != nil {
		f.certSrc.Close()
	}
	if f.ra != nil {
		f.ra.close()
	}
}

// certificate is the server certificate in use.
func (f *gatewayFront) certificate() *tls.Certificate {
	if f.ra != nil {
		return f.ra.cur.Load()
	}
	if f.renew != nil {
		c, _ := f.renew.src.GetCertificate(nil)
		return c
	}
	c, _ := f.certSrc.GetCertificate(nil)
	return c
}

// notAfter of the server certificate in use.
func (f *gatewayFront) notAfter() time.Time {
	if f.certSrc != nil {
		return f.certSrc.Status().NotAfter
	}
	if f.renew != nil {
		return f.renew.src.Status().NotAfter
	}
	if c := f.certificate(); c != nil && c.Leaf != nil {
		return c.Leaf.NotAfter
	}
	return time.Time{}
}

// buildGateway loads what gateway listener i of u needs.
func (p *Proxy) buildGateway(u UpstreamConfig, i int, b *renewBuild) (_ *gatewayFront, err error) {
	g := u.Gateways[i]
	f := &gatewayFront{cfg: g}
	defer func() {
		if err != nil {
			f.close()
		}
	}()
	kind := fmt.Sprintf("gateway_server_%d", i)
	var getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	if g.RATLS != nil {
		ra, err := newRATLSHolder(p.ctx, g.RATLS, p.log.With("upstream", u.Name, "gateway", g.Listen), func(na time.Time) {
			p.metrics.certExpiry.WithLabelValues(u.Name, kind).Set(float64(na.Unix()))
		})
		if err != nil {
			return nil, wrapUpstream(u.Name, "gateway RA-TLS certificate", err)
		}
		f.ra = ra
		getCert = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return ra.cur.Load(), nil }
	} else if g.Renewal != nil {
		h, err := p.renewSource(b, gatewayRenewalName(u.Name, g.Listen), g.Renewal, p.log.With("upstream", u.Name, "gateway", g.Listen, "certificate", kind), u.Name, kind)
		if err != nil {
			return nil, wrapUpstream(u.Name, "gateway server certificate", err)
		}
		f.renew = h
		getCert = h.src.GetCertificate
	} else {
		src, err := certs.NewFileSource(p.ctx, certs.FileSourceOptions{
			CertFile: g.CertFile, KeyFile: g.KeyFile,
			Logger:   p.log.With("upstream", u.Name, "certificate", kind),
			OnReload: p.onCertReload(u.Name, kind),
		})
		if err != nil {
			return nil, wrapUpstream(u.Name, "gateway server certificate", err)
		}
		f.certSrc = src
		getCert = src.GetCertificate
		p.setExpiry(u.Name, kind, src.Status())
	}
	f.tls = &tls.Config{
		GetCertificate: getCert,
		NextProtos:     []string{pgtls.ALPNProtocol},
		MinVersion:     tls.VersionTLS12,
		// As PostgreSQL (SSL_OP_NO_TICKET): a resumed session presents no
		// certificate, and SCRAM-SHA-256-PLUS binds to the one presented.
		SessionTicketsDisabled: true,
	}
	if g.ClientCAFile != "" {
		roots, err := chain.LoadRoots(g.ClientCAFile)
		if err != nil {
			return nil, failure.Wrap(failure.ConfigInvalid, err, "upstream %s: gateway %s: cannot load client_ca_file", u.Name, g.Listen).
				WithFix("make %s a readable PEM file of the CA that issues client certificates", g.ClientCAFile)
		}
		f.roots = roots
		if g.ClientCRLFile != "" {
			if f.crls, err = chain.LoadCRLs(g.ClientCRLFile); err != nil {
				return nil, failure.Wrap(failure.ConfigInvalid, err, "upstream %s: gateway %s: cannot load client_crl_file", u.Name, g.Listen).
					WithFix("make %s a readable PEM or DER CRL of the client CA", g.ClientCRLFile)
			}
		}
		f.tls.ClientAuth = tls.RequestClientCert
		if g.Auth == AuthCert {
			f.tls.ClientAuth = tls.RequireAnyClientCert
		}
		f.tls.VerifyPeerCertificate = f.verifyClient
	}
	if g.Auth == AuthClusterSecret {
		f.roles = map[string]*roleEntry{}
		byUser := map[string]GatewayRole{}
		for _, r := range g.Roles {
			byUser[r.User] = r
		}
		for _, r := range g.Roles {
			e := &roleEntry{role: r.Role, password: r.Password, candidates: []*scram.Verifier{r.Verifier}, owners: []string{r.User}}
			for _, from := range r.DowngradeFrom {
				e.candidates = append(e.candidates, byUser[from].Verifier)
				e.owners = append(e.owners, from)
			}
			f.roles[r.User] = e
			f.iterations = max(f.iterations, r.Verifier.Iterations)
		}
		f.fakeSalt = fakeSaltKey(g.Roles)
	}
	if g.Auth == AuthScram {
		if err := p.buildScram(u, g, f); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// buildScram loads the scram mode's verifier sources: the userlist file
// (validated whole; a bad file refuses the start or the reload) and its
// watch, and the auth_query.
func (p *Proxy) buildScram(u UpstreamConfig, g GatewayConfig, f *gatewayFront) error {
	log := p.log.With("upstream", u.Name, "gateway", g.Listen)
	f.iterations = g.ScramIterations
	if f.iterations == 0 {
		f.iterations = scram.DefaultIterations
	}
	f.fakeSalt = g.FakeSaltKey
	if len(f.fakeSalt) == 0 {
		f.fakeSalt = scramFakeSaltKey(u.Name, g)
		if f.fakeSalt == nil {
			// Stable keys need a secret: without one an unknown name's salt
			// changes on each restart (a real user's never), which says which
			// names exist to a client that watches across restarts.
			f.fakeSalt = make([]byte, 32)
			_, _ = rand.Read(f.fakeSalt)
			log.Warn("scram gateway: unknown users' salts are keyed per process",
				"fix", "set fake_salt_key_file (the same on every replica), or an upstream_password / auth_password the key is derived from")
		}
	}
	if g.AuthFile != "" {
		users, err := userlist.LoadFile(g.AuthFile)
		if err != nil {
			return wrapUpstream(u.Name, "gateway "+g.Listen+" auth_file", err)
		}
		f.users = users
		iterations := f.iterations
		checkIterations := func() {
			if other := users.OtherIterations(iterations); len(other) > 0 {
				log.Warn("auth_file: verifiers of another iteration count than scram_iterations; the count tells these users apart from unknown names",
					"file", g.AuthFile, "users", other, "scram_iterations", iterations,
					"fix", "set scram_iterations to PostgreSQL's scram_iterations, and set these users' passwords again so all verifiers share it")
			}
		}
		checkIterations()
		ctx, cancel := context.WithCancel(p.ctx)
		f.stopWatch = cancel
		report := func(err error) {
			result := "success"
			if err != nil {
				result = "failure"
				log.Warn("auth_file reload rejected; keeping the previous users", "file", g.AuthFile, "class", failure.ClassOf(err), "error", err.Error())
			} else {
				log.Info("auth_file reloaded", "file", g.AuthFile, "users", users.Len())
				checkIterations()
			}
			p.metrics.reloads.WithLabelValues("auth_file", result).Inc()
		}
		if err := users.Watch(ctx, report); err != nil {
			// SIGHUP still re-reads the file: a watch is a convenience.
			log.Warn("auth_file is not watched; reload with SIGHUP", "file", g.AuthFile, "class", failure.ClassOf(err), "error", err.Error())
		}
	}
	if q := g.AuthQuery; q != nil {
		f.aq = userlist.NewAuthQuery(p.lookupDialer(u.Name, *q), userlist.AuthQueryOptions{
			Query: q.Query, FakeSaltKey: f.fakeSalt, Iterations: f.iterations, TTL: q.TTL,
			Logger: log.With("auth_user", q.User),
		})
	}
	return nil
}

// scramFakeSaltKey derives the key of unknown users' salts from the
// gateway's own secrets, so that it is stable across restarts and the same
// on replicas configured alike; nil when there is none.
func scramFakeSaltKey(upstream string, g GatewayConfig) []byte {
	var secrets []string
	if g.UpstreamPassword != "" {
		secrets = append(secrets, g.UpstreamPassword)
	}
	if g.AuthQuery != nil && g.AuthQuery.Password != "" {
		secrets = append(secrets, g.AuthQuery.Password)
	}
	if len(secrets) == 0 {
		return nil
	}
	m := hmac.New(sha256.New, []byte("pgtrust gateway scram fake salt v1"))
	for _, s := range append([]string{upstream}, secrets...) {
		fmt.Fprintf(m, "%d:%s", len(s), s)
	}
	return m.Sum(nil)
}

// lookupDialer opens auth_query connections: the upstream's current target
// (leader following included) and TLS settings, as the lookup role.
func (p *Proxy) lookupDialer(upstream string, q AuthQueryConfig) func(ctx context.Context) (*pgconn.PgConn, error) {
	return func(ctx context.Context) (*pgconn.PgConn, error) {
		var set *upstreamSettings
		for _, u := range p.upstreams {
			if u.name == upstream {
				set = u.settings.Load()
			}
		}
		if set == nil {
			return nil, failure.New(failure.ConfigInvalid, "auth_query: upstream %q is not running", upstream).WithFix("restart the proxy")
		}
		base, _, err := set.target(ctx)
		if err != nil {
			return nil, err
		}
		cfg := base.Clone()
		cfg.User = q.User
		if q.Password != "" {
			cfg.Password = q.Password
		}
		if q.DBName != "" {
			cfg.Database = q.DBName
		}
		if cfg.Database == "" {
			cfg.Database = q.User
		}
		// The lookup role's session parameters are its own: none of the
		// dsn's (a search_path there would reach the query).
		cfg.RuntimeParams = map[string]string{"application_name": "pgtrust auth_query"}
		pg, _, err := pgtls.Connect(ctx, cfg, set.opts)
		if err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) {
				return nil, failure.New(failure.ConfigInvalid, "auth_query: the lookup role %q cannot log in: %s (SQLSTATE %s)", q.User, pe.Message, pe.Code).
					WithFix("check auth_user, auth_password_file and auth_dbname, and pg_hba.conf for the lookup role")
			}
			return nil, err
		}
		return pg, nil
	}
}

// fakeSaltKey derives the key of unknown users' salts from the role
// table's ServerKeys, secrets an attacker does not have: the same on every
// replica and across restarts (a per-process key would give an unknown
// name a new salt on each, and a real user never), unpredictable without
// the verifiers.
func fakeSaltKey(roles []GatewayRole) []byte {
	rs := append([]GatewayRole(nil), roles...)
	sort.Slice(rs, func(i, j int) bool { return rs[i].User < rs[j].User })
	m := hmac.New(sha256.New, []byte("pgtrust gateway fake SCRAM salt v1"))
	for _, r := range rs {
		m.Write(r.Verifier.ServerKey[:])
	}
	return m.Sum(nil)
}

// verifyClient checks a client certificate chain against the client CA
// and CRLs with package chain (OpenSSL's rules, as pgtls uses them).
func (f *gatewayFront) verifyClient(raw [][]byte, _ [][]*x509.Certificate) error {
	if len(raw) == 0 {
		return nil // cert mode requires one through ClientAuth; others may omit it
	}
	presented := make([]*x509.Certificate, 0, len(raw))
	for _, der := range raw {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return failure.Wrap(failure.ClientCertRejected, err, "the client certificate does not parse")
		}
		presented = append(presented, c)
	}
	_, err := chain.Verify(presented, chain.Options{
		Roots: f.roots.Pool, RootFile: f.roots.File, Intermediates: f.roots.Intermediates,
		CRLs: f.crls, CRLDir: f.cfg.ClientCRLDir,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, Role: "client",
	})
	return err
}

// ratlsHolder keeps a current RA-TLS certificate, re-issued before expiry.
type ratlsHolder struct {
	cfg     *RATLSCertificate
	cur     atomic.Pointer[tls.Certificate]
	lastErr atomic.Pointer[failure.Report]
	stop    context.CancelFunc
	wg      sync.WaitGroup
}

func newRATLSHolder(ctx context.Context, cfg *RATLSCertificate, log *slog.Logger, onIssue func(time.Time)) (*ratlsHolder, error) {
	h := &ratlsHolder{cfg: cfg}
	life := cfg.Lifetime
	if life <= 0 {
		life = DefaultRATLSLifetime
	}
	issue := func() (time.Time, error) {
		o := cfg.Options
		o.NotBefore = time.Now().Add(-time.Minute)
		o.NotAfter = time.Now().Add(life)
		ictx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		c, err := ratls.NewCertificate(ictx, cfg.Provider, o)
		if err != nil {
			h.lastErr.Store(failure.ReportOf(err))
			return time.Time{}, err
		}
		if c.Leaf == nil {
			c.Leaf, _ = x509.ParseCertificate(c.Certificate[0])
		}
		h.cur.Store(c)
		h.lastErr.Store(nil)
		onIssue(o.NotAfter)
		return o.NotAfter, nil
	}
	notAfter, err := issue()
	if err != nil {
		return nil, err
	}
	ctx, h.stop = context.WithCancel(ctx)
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		for {
			// Re-issue after two thirds of the lifetime; after a failure
			// retry every minute while the current one is still valid.
			wait := time.Until(notAfter) / 3
			if h.lastErr.Load() != nil {
				wait = time.Minute
			}
			t := time.NewTimer(max(wait, time.Second))
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			if na, err := issue(); err != nil {
				log.Error("RA-TLS certificate re-issue failed; keeping the current one", "class", failure.ClassOf(err), "error", err.Error())
			} else {
				notAfter = na
				log.Info("RA-TLS certificate re-issued", "not_after", na)
			}
		}
	}()
	return h, nil
}

func (h *ratlsHolder) close() {
	if h.stop != nil {
		h.stop()
	}
	h.wg.Wait()
}

// newCancelKey makes a gateway-side BackendKeyData: the client never sees
// the upstream's real key.
func newCancelKey() (uint32, []byte) {
	var b [8]byte
	_, _ = rand.Read(b[:])
	pid := (uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])) & 0x7fffffff
	return max(pid, 1), b[4:8:8]
}
