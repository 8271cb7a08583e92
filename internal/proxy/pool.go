package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/parking"
	"github.com/pgtrust/pgtrust/internal/pooling"
	"github.com/pgtrust/pgtrust/internal/serverpool"
	"github.com/pgtrust/pgtrust/pgtls"
)

// PoolConfig pools the server connections of the sessions pgtrust
// authenticates itself (UpstreamConfig.Auth on the local listeners,
// gateway listeners other than passthrough). Zero values take
// serverpool's and pooling's defaults.
type PoolConfig struct {
	Mode         pooling.Mode // "session" or "transaction"
	Size         int          // server connections per (database, role); default 20
	MinIdle      int
	Reserve      int
	ReserveAfter time.Duration
	WaitTimeout  time.Duration // a client waiting longer for a server connection gets an error; default 30s
	IdleTimeout  time.Duration
	Lifetime     time.Duration
	Jitter       float64
	CheckAfter   time.Duration
	MaxKeys      int
	// ResetQuery runs before a session-mode server connection passes to the
	// next client; default DISCARD ALL, pooling.NoReset for none.
	ResetQuery string
	// StatementCache bounds the protocol-level prepared statements kept
	// per server connection in transaction mode (default 100).
	StatementCache int
	// IgnoreStartupParameters are dropped instead of refused in
	// transaction mode (e.g. extra_float_digits, sent by pgJDBC).
	IgnoreStartupParameters []string
	// ClientParkAfter: a transaction-mode client on a plain socket that
	// has been idle between transactions this long (up to twice) gives
	// its goroutine back until its next message (pooling.Parker). Default
	// pooling.DefaultIdleAfter; negative: never.
	ClientParkAfter time.Duration
	// IdleTransactionTimeout ends a client's session when it leaves a
	// transaction open and silent this long (FATAL 25P03); 0: never.
	IdleTransactionTimeout time.Duration
}

// Gateway pool modes besides pooling's: inherit the upstream's, or none.
const (
	PoolInherit = ""
	PoolNone    = "none"
)

// poolFront identifies the pool of one front: the local listeners
// (gateway -1) or one gateway listener.
func poolIndex(gw int) int { return gw + 1 }

// frontPoolMode is the effective pool mode of a front ("" = not pooled).
func frontPoolMode(u UpstreamConfig, gw int) pooling.Mode {
	if u.Pool == nil {
		return ""
	}
	if gw < 0 {
		if u.Auth == nil {
			return ""
		}
		return u.Pool.Mode
	}
	g := u.Gateways[gw]
	if g.Auth == AuthPassthrough {
		return ""
	}
	switch g.PoolMode {
	case PoolInherit:
		return u.Pool.Mode
	case PoolNone:
		return ""
	}
	return pooling.Mode(g.PoolMode)
}

// ValidatePool checks the pool settings of u as New does: the mode and
// values, each gateway's pool_mode, and that some front can use the pool
// (config validate).
func ValidatePool(u UpstreamConfig) error {
	for i := range u.Gateways {
		if u.Gateways[i].Auth == "" {
			u.Gateways[i].Auth = AuthPassthrough
		}
	}
	return validatePool(u)
}

// validatePool checks the pool settings of u (withDefaults, after the
// gateways' defaults).
func validatePool(u UpstreamConfig) error {
	for j, g := range u.Gateways {
		switch g.PoolMode {
		case PoolInherit, PoolNone:
		case string(pooling.ModeSession), string(pooling.ModeTransaction):
			if u.Pool == nil {
				return configError("upstream %q gateway #%d (%s): pool_mode %q needs the upstream's pool settings", u.Name, j+1, g.Listen, g.PoolMode).
					WithFix("add a [upstreams.%s.pool] table (its mode is the default of every listener)", u.Name)
			}
			if g.Auth == AuthPassthrough {
				return configError("upstream %q gateway #%d (%s): pool_mode %q with auth = passthrough", u.Name, j+1, g.Listen, g.PoolMode).
					WithEvidence("a pooled server connection is opened with pgtrust's own credentials, so pgtrust must authenticate the client itself").
					WithFix("use auth = \"scram\", \"cluster_secret\" or \"cert\" on this listener, or pool_mode = \"none\"")
			}
		default:
			return configError("upstream %q gateway #%d (%s): unknown pool_mode %q", u.Name, j+1, g.Listen, g.PoolMode).
				WithFix("use \"session\", \"transaction\" or \"none\" (or leave it unset for the upstream's mode)")
		}
	}
	p := u.Pool
	if p == nil {
		return nil
	}
	switch p.Mode {
	case pooling.ModeSession, pooling.ModeTransaction:
	default:
		return configError("upstream %q: unknown pool mode %q", u.Name, p.Mode).
			WithFix("use mode = \"session\" or \"transaction\"")
	}
	pooled := false
	for gw := -1; gw < len(u.Gateways); gw++ {
		if frontPoolMode(u, gw) != "" {
			pooled = true
		}
	}
	if !pooled {
		return configError("upstream %q: a pool is configured but no listener can use it", u.Name).
			WithEvidence("pooling needs pgtrust to authenticate the clients itself; this upstream has no auth table for its local listeners and no gateway with scram, cluster_secret or cert").
			WithFix("add [upstreams.%s.auth] (local listeners) or a gateway with auth = \"scram\", \"cluster_secret\" or \"cert\", or remove the pool table", u.Name)
	}
	if p.ResetQuery != "" && p.ResetQuery != pooling.NoReset && strings.ContainsRune(p.ResetQuery, 0) {
		return configError("upstream %q: pool reset_query contains a NUL byte", u.Name).WithFix("use a plain SQL statement such as DISCARD ALL")
	}
	noDial := func(context.Context, serverpool.Key) (*pgconn.PgConn, error) { return nil, nil }
	check, err := serverpool.New(noDial, p.serverOptions())
	if err != nil {
		return wrapUpstream(u.Name, "pool", err)
	}
	check.Close()
	return nil
}

func (p *PoolConfig) serverOptions() serverpool.Options {
	return serverpool.Options{Size: p.Size, MinIdle: p.MinIdle, Reserve: p.Reserve, ReserveAfter: p.ReserveAfter,
		WaitTimeout: p.WaitTimeout, IdleTimeout: p.IdleTimeout, Lifetime: p.Lifetime, Jitter: p.Jitter,
		CheckAfter: p.CheckAfter, MaxKeys: p.MaxKeys}
}

// samePool reports whether a reload keeps the pool settings, which are
// fixed while the proxy runs.
func samePool(a, b UpstreamConfig) bool {
	if (a.Pool == nil) != (b.Pool == nil) {
		return false
	}
	if a.Pool != nil && fmt.Sprint(*a.Pool) != fmt.Sprint(*b.Pool) {
		return false
	}
	for gw := -1; gw < len(a.Gateways) && gw < len(b.Gateways); gw++ {
		if frontPoolMode(a, gw) != frontPoolMode(b, gw) {
			return false
		}
	}
	return true
}

// startPools creates the server pools of u's pooled fronts.
func (p *Proxy) startPools(u *upstream) error {
	u.pools = make([]*serverpool.Pool, len(u.cfg.Gateways)+1)
	for gw := -1; gw < len(u.cfg.Gateways); gw++ {
		if frontPoolMode(u.cfg, gw) == "" {
			continue
		}
		o := u.cfg.Pool.serverOptions()
		o.Logger = p.log.With("upstream", u.name, "pool", frontName(gw))
		pool, err := serverpool.New(p.poolDialer(u, gw), o)
		if err != nil {
			return wrapUpstream(u.name, "pool", err)
		}
		u.pools[poolIndex(gw)] = pool
		if frontPoolMode(u.cfg, gw) == pooling.ModeTransaction && u.parker == nil && u.cfg.Pool.ClientParkAfter >= 0 {
			parker, err := pooling.NewParker(u.cfg.Pool.ClientParkAfter)
			switch {
			case errors.Is(err, parking.ErrUnsupported):
				// Clients keep their goroutines on this system.
			case err != nil:
				return wrapUpstream(u.name, "pool", failure.Wrap(failure.ConfigInvalid, err, "start the parking of idle clients").
					WithEvidence("the epoll set or eventfd that parks idle transaction-mode clients could not be created").
					WithFix("raise the process's open-file limit (ulimit -n), or set park_idle_clients = false in [upstreams.%s.pool]", u.name))
			default:
				u.parker = parker
			}
		}
	}
	return nil
}

func frontName(gw int) string {
	if gw < 0 {
		return "local"
	}
	return fmt.Sprintf("gateway%d", gw+1)
}

// retirePools makes every server connection of u close after its current
// transaction (session mode: session): new ones carry the current
// certificate and credentials.
func (u *upstream) retirePools() {
	for _, pool := range u.pools {
		if pool != nil {
			pool.Retire()
		}
	}
}

func (u *upstream) closePools() {
	for _, pool := range u.pools {
		if pool != nil {
			pool.Close()
		}
	}
	if u.parker != nil {
		_ = u.parker.Close()
	}
}

// poolDialer opens server connections for one front: pgtls with the
// upstream's current settings, as the key's role with the front's
// credentials for it, and no session parameters (a fresh connection's
// reported parameters are the defaults of its database and role).
func (p *Proxy) poolDialer(u *upstream, gw int) serverpool.Dialer {
	return func(ctx context.Context, key serverpool.Key) (*pgconn.PgConn, error) {
		set := u.settings.Load()
		base, _, err := set.target(ctx)
		if err != nil {
			return nil, err
		}
		cfg := base.Clone()
		cfg.User, cfg.Database = key.Role, key.Database
		if pw := set.poolPassword(gw, key.Role); pw != "" {
			cfg.Password = pw
		}
		t0 := time.Now()
		pg, facts, err := pgtls.Connect(ctx, cfg, set.opts)
		if !clientCausedUpstreamError(err) {
			u.recordHandshake(facts, err)
		}
		if err == nil {
			u.metrics.dial.Observe(time.Since(t0).Seconds())
		}
		return pg, err
	}
}

// poolPassword is the front's upstream password for role ("" = the dsn's,
// a client certificate, or trust).
func (s *upstreamSettings) poolPassword(gw int, role string) string {
	if gw < 0 {
		if s.auth != nil {
			return s.auth.Password
		}
		return ""
	}
	if gw >= len(s.gateways) {
		return ""
	}
	g := s.gateways[gw]
	if g.cfg.Auth == AuthCert || g.cfg.Auth == AuthScram {
		// Both open the client's own role with the gateway's one password.
		return g.cfg.UpstreamPassword
	}
	users := make([]string, 0, len(g.roles))
	for u := range g.roles {
		users = append(users, u)
	}
	sort.Strings(users) // one answer when two users share a role
	for _, u := range users {
		if e := g.roles[u]; e.role == role {
			return e.password
		}
	}
	return ""
}

// frontIndex is the session's gateway index, -1 for a local listener.
func (s *session) frontIndex() int {
	if s.ln == nil {
		return -1
	}
	return s.ln.gw
}

// pool is the server pool of this session's front, nil when not pooled.
func (s *session) pool() (*serverpool.Pool, pooling.Mode) {
	gw := s.frontIndex()
	i := poolIndex(gw)
	if i < 0 || i >= len(s.up.pools) || s.up.pools[i] == nil {
		return nil, ""
	}
	return s.up.pools[i], frontPoolMode(s.up.cfg, gw)
}

// poolIdentity is who the client is for the handover guard: server
// connections passing between sessions of one identity are not checked.
// Local clients with an auth table are one identity (nobody authenticates
// them); gateway clients are their user name, or their certificate's
// mapped identity.
func (s *session) poolIdentity() string {
	switch s.mode {
	case authUpstream:
		return "local"
	case AuthCert:
		return "cert:" + s.identity
	}
	return string(s.mode) + ":" + s.user
}

// poolLogin starts a pooled session as role and greets the client:
// AuthenticationOk, the parameters, a pgtrust BackendKeyData (cancels go
// to whichever server connection runs the client's query), ReadyForQuery.
func (s *session) poolLogin(pool *serverpool.Pool, mode pooling.Mode, role string) error {
	// The client has authenticated: a wait for a server connection (session
	// mode, a saturated pool) must not hold one of the slots that bound
	// clients still authenticating.
	s.endAuth()
	db := s.database
	if db == "" {
		db = s.set.conn.Database
	}
	if db == "" {
		db = role
	}
	cfg := s.up.cfg.Pool
	o := pooling.Options{
		Mode: mode, Pool: pool, Key: serverpool.Key{Database: db, Role: role}, Identity: s.poolIdentity(),
		ResetQuery: cfg.ResetQuery, StatementCache: cfg.StatementCache, IgnoreStartup: cfg.IgnoreStartupParameters,
		In: func(n int) {
			s.bytesIn.Add(int64(n))
			s.up.metrics.bytesIn.Add(float64(n))
		},
		Out: func(n int) {
			s.bytesOut.Add(int64(n))
			s.up.metrics.bytesOut.Add(float64(n))
		},
		Log:    func() *slog.Logger { return s.p.log.With("upstream", s.up.name, "id", s.id) },
		Parker: s.up.parker, IdleTransactionTimeout: cfg.IdleTransactionTimeout,
		Loops: s.p.relays,
	}
	ctx, cancel := context.WithCancel(s.p.ctx)
	defer cancel()
	sess, greet, err := pooling.Start(ctx, s.client, s.startupParams, o)
	if err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		sess.Discard()
		return &clientSideError{fmt.Errorf("the session closed during login")}
	}
	s.pooled = sess
	s.mu.Unlock()
	gw := s.frontIndex()
	s.up.poolClients.add(gw, o.Key, 1)
	s.poolDone = func() { s.up.poolClients.add(gw, o.Key, -1) }
	s.pid, s.secret = newCancelKey()
	var out []byte
	out, _ = (&pgproto3.AuthenticationOk{}).Encode(out)
	for _, ps := range greet {
		out, _ = ps.Encode(out)
	}
	out, _ = (&pgproto3.BackendKeyData{ProcessID: s.pid, SecretKey: s.secret}).Encode(out)
	out, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(out)
	_ = s.raw.SetWriteDeadline(time.Now().Add(errorWriteTimeout))
	if _, err := s.client.Write(out); err != nil {
		sess.Discard()
		s.poolDone()
		return &clientSideError{fmt.Errorf("write to client: %w", err)}
	}
	return nil
}

// runPooled relays a pooled session, with the same log lines as the pipe.
// The session may outlive the call: a parked client has no goroutine, and
// whichever goroutine ends the session closes it (finish).
func (s *session) runPooled(finish func()) {
	s.logger().Info("session opened", s.baseAttrs(
		slog.String("user", s.user), slog.String("database", s.database), slog.String("application_name", s.application),
		slog.String("auth", string(s.mode)), slog.String("client_identity", s.identity),
		slog.String("client_tls", orNone(s.clientTL)), slog.String("pool_mode", string(s.pooled.Mode())),
	)...)
	s.pooled.Serve(s.p.ctx, func(reason string) {
		s.poolDone()
		if s.p.forced.Load() {
			reason = "proxy shutdown"
		}
		s.logger().Info("session closed", s.baseAttrs(
			slog.String("client_tls", orNone(s.clientTL)),
			slog.Int64("bytes_client_to_upstream", s.bytesIn.Load()),
			slog.Int64("bytes_upstream_to_client", s.bytesOut.Load()),
			slog.Duration("duration", time.Since(s.start)),
			slog.String("reason", reason),
		)...)
		finish()
	})
}
