package proxy

import (
	"sort"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgtrust/pgtrust/internal/serverpool"
)

// PoolStatus is one pool (a front of an upstream) in /health/pools, in the
// spirit of PgBouncer's SHOW POOLS.
type PoolStatus struct {
	Upstream string        `json:"upstream"`
	Pool     string        `json:"pool"` // "local" or "gatewayN"
	Mode     string        `json:"mode"`
	Size     int           `json:"size"`
	Reserve  int           `json:"reserve"`
	Keys     []PoolKeyStat `json:"keys"`
}

// PoolKeyStat is one (database, role) of a pool.
type PoolKeyStat struct {
	// ClientsActive counts the client sessions of the key that are not
	// waiting for a server connection (PgBouncer's cl_active).
	ClientsActive int `json:"clients_active"`
	// Status is "ok", "waiting" (clients wait for a server connection) or
	// "failing" (dials fail and no server connection is open).
	Status string `json:"status"`
	serverpool.KeyStats
}

// poolClients counts the pooled client sessions per front and key.
type poolClients struct {
	mu sync.Mutex
	n  map[poolClientKey]int
}

type poolClientKey struct {
	gw  int
	key serverpool.Key
}

func (c *poolClients) add(gw int, k serverpool.Key, d int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[poolClientKey]int{}
	}
	ck := poolClientKey{gw, k}
	if c.n[ck] += d; c.n[ck] <= 0 {
		delete(c.n, ck)
	}
}

func (c *poolClients) get(gw int, k serverpool.Key) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[poolClientKey{gw, k}]
}

// poolStatus reports u's pools.
func (u *upstream) poolStatus() []PoolStatus {
	var out []PoolStatus
	for i, pool := range u.pools {
		if pool == nil {
			continue
		}
		gw := i - 1
		o := pool.Settings()
		ps := PoolStatus{Upstream: u.name, Pool: frontName(gw), Mode: string(frontPoolMode(u.cfg, gw)), Size: o.Size, Reserve: o.Reserve, Keys: []PoolKeyStat{}}
		seen := map[serverpool.Key]bool{}
		for _, ks := range pool.Stats() {
			seen[ks.Key] = true
			clients := u.poolClients.get(gw, ks.Key)
			st := "ok"
			switch {
			case ks.ConsecutiveFailures > 0 && ks.Active+ks.Idle == 0:
				st = "failing"
			case ks.Waiting > 0:
				st = "waiting"
			}
			ps.Keys = append(ps.Keys, PoolKeyStat{ClientsActive: max(clients-ks.Waiting, 0), Status: st, KeyStats: ks})
		}
		sort.Slice(ps.Keys, func(a, b int) bool { return ps.Keys[a].Key.String() < ps.Keys[b].Key.String() })
		out = append(out, ps)
	}
	return out
}

// poolCollector exports every pool's state at scrape time.
type poolCollector struct {
	p                                                    *Proxy
	clients, waiting, servers, maxWait                   *prometheus.Desc
	opened, closed, retired, terminated, dialFailuresNow *prometheus.Desc
	parked                                               *prometheus.Desc
}

func newPoolCollector(p *Proxy) *poolCollector {
	l := []string{"upstream", "pool", "database", "role"}
	return &poolCollector{p: p,
		clients:         prometheus.NewDesc("pgtrust_pool_clients_active", "Pooled client sessions not waiting for a server connection (SHOW POOLS cl_active).", l, nil),
		waiting:         prometheus.NewDesc("pgtrust_pool_clients_waiting", "Pooled client sessions waiting for a server connection (cl_waiting).", l, nil),
		servers:         prometheus.NewDesc("pgtrust_pool_servers", "Server connections by state: active (held by a client), idle, opening, terminating (released unclean, backend being ended).", append(l, "state"), nil),
		maxWait:         prometheus.NewDesc("pgtrust_pool_longest_wait_seconds", "Longest current wait for a server connection (maxwait).", l, nil),
		opened:          prometheus.NewDesc("pgtrust_pool_servers_opened_total", "Server connections opened.", l, nil),
		closed:          prometheus.NewDesc("pgtrust_pool_servers_closed_total", "Server connections closed, for any reason.", l, nil),
		retired:         prometheus.NewDesc("pgtrust_pool_servers_retired_total", "Server connections closed because a certificate rotation or reload retired their generation.", l, nil),
		terminated:      prometheus.NewDesc("pgtrust_pool_backends_terminated_total", "Backends ended with pg_terminate_backend after an unclean release.", l, nil),
		dialFailuresNow: prometheus.NewDesc("pgtrust_pool_dial_failures_consecutive", "Failed dials since the last successful one.", l, nil),
		parked:          prometheus.NewDesc("pgtrust_pool_clients_parked", "Idle transaction-mode clients parked without a goroutine until their next message (client_park_after).", []string{"upstream"}, nil),
	}
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.clients, c.waiting, c.servers, c.maxWait, c.opened, c.closed, c.retired, c.terminated, c.dialFailuresNow, c.parked} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	for _, u := range c.p.upstreams {
		if u.parker != nil {
			ch <- prometheus.MustNewConstMetric(c.parked, prometheus.GaugeValue, float64(u.parker.Parked()), u.name)
		}
		for _, ps := range u.poolStatus() {
			for _, k := range ps.Keys {
				l := []string{ps.Upstream, ps.Pool, k.Database, k.Role}
				g := func(d *prometheus.Desc, v float64, extra ...string) {
					ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append(l, extra...)...)
				}
				cn := func(d *prometheus.Desc, v uint64) {
					ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), l...)
				}
				g(c.clients, float64(k.ClientsActive))
				g(c.waiting, float64(k.Waiting))
				g(c.servers, float64(k.Active), "active")
				g(c.servers, float64(k.Idle), "idle")
				g(c.servers, float64(k.Opening), "opening")
				g(c.servers, float64(k.Terminating), "terminating")
				g(c.maxWait, k.LongestWait.Seconds())
				g(c.dialFailuresNow, float64(k.ConsecutiveFailures))
				cn(c.opened, k.Used)
				cn(c.closed, k.Closed)
				cn(c.retired, k.Retired)
				cn(c.terminated, k.Terminated)
			}
		}
	}
}
