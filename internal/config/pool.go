package config

import (
	"time"

	"github.com/pgtrust/pgtrust/internal/pooling"
	"github.com/pgtrust/pgtrust/internal/proxy"
)

// Pool is an [upstreams.NAME.pool] table. Names follow PgBouncer's where
// one exists (default_pool_size → size, min_pool_size → min_idle,
// reserve_pool_size → reserve, query_wait_timeout → wait_timeout,
// server_idle_timeout → idle_timeout, server_lifetime → lifetime,
// server_check_delay → check_after, server_reset_query → reset_query).
// The proxy validates the values (proxy.PoolConfig).
type Pool struct {
	Mode                    string   `toml:"mode"` // "session" or "transaction"
	Size                    int      `toml:"size"`
	MinIdle                 int      `toml:"min_idle"`
	Reserve                 int      `toml:"reserve"`
	ReserveTimeout          Duration `toml:"reserve_timeout"`
	WaitTimeout             Duration `toml:"wait_timeout"`
	IdleTimeout             Duration `toml:"idle_timeout"`
	Lifetime                Duration `toml:"lifetime"`
	LifetimeJitter          float64  `toml:"lifetime_jitter"`
	CheckAfter              Duration `toml:"check_after"`
	MaxKeys                 int      `toml:"max_keys"`
	ResetQuery              string   `toml:"reset_query"` // "-" for none
	StatementCache          int      `toml:"statement_cache"`
	IgnoreStartupParameters []string `toml:"ignore_startup_parameters"`
	ClientParkAfter         Duration `toml:"client_park_after"`
	ParkIdleClients         *bool    `toml:"park_idle_clients"` // default true
	IdleTransactionTimeout  Duration `toml:"idle_transaction_timeout"`
}

func (p *Pool) proxyConfig() *proxy.PoolConfig {
	if p == nil {
		return nil
	}
	return &proxy.PoolConfig{
		Mode: pooling.Mode(p.Mode), Size: p.Size, MinIdle: p.MinIdle, Reserve: p.Reserve,
		ReserveAfter: p.ReserveTimeout.D(), WaitTimeout: p.WaitTimeout.D(), IdleTimeout: p.IdleTimeout.D(),
		Lifetime: p.Lifetime.D(), Jitter: p.LifetimeJitter, CheckAfter: p.CheckAfter.D(), MaxKeys: p.MaxKeys,
		ResetQuery: p.ResetQuery, StatementCache: p.StatementCache, IgnoreStartupParameters: p.IgnoreStartupParameters,
		ClientParkAfter: p.clientParkAfter(), IdleTransactionTimeout: p.IdleTransactionTimeout.D(),
	}
}

// clientParkAfter is PoolConfig's ClientParkAfter: negative when parking
// is off.
func (p *Pool) clientParkAfter() time.Duration {
	if p.ParkIdleClients != nil && !*p.ParkIdleClients {
		return -1
	}
	return p.ClientParkAfter.D()
}
