package proxy

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Client rejection reasons (label values of pgtrust_client_rejections_total).
const (
	rejectTooMany           = "too_many_connections"
	rejectTooManyAuth       = "too_many_authenticating"
	rejectTooManyAuthSource = "too_many_authenticating_per_source"
	rejectTooManyPending    = "too_many_pending" // TCP connections not yet through their startup packet
	rejectStartupTimeout    = "startup_timeout"  // the client's phase: never an upstream failure
	rejectAuthTimeout       = "auth_timeout"     // the client did not finish authenticating in time
	rejectNoUser            = "no_user"
	rejectTooLarge          = "startup_too_large"
	rejectInjection         = "injection"
	rejectTLSRequired       = "tls_required"
	rejectProtocol          = "protocol"
	rejectShuttingDown      = "shutting_down"
)

// Certificate kinds (label values of pgtrust_certificate_expiry_timestamp_seconds).
const (
	certUpstreamClient = "upstream_client"
	certClientTLS      = "client_tls_server"
)

// metrics are the proxy's Prometheus collectors. Per-upstream children are
// resolved once per upstream (upstreamMetrics) so that the data path only
// touches atomics.
type metrics struct {
	active      *prometheus.GaugeVec
	total       *prometheus.CounterVec
	bytesIn     *prometheus.CounterVec // client → upstream
	bytesOut    *prometheus.CounterVec // upstream → client
	dial        *prometheus.HistogramVec
	failures    *prometheus.CounterVec
	rejections  *prometheus.CounterVec
	certExpiry  *prometheus.GaugeVec
	reloads     *prometheus.CounterVec
	cancels     *prometheus.CounterVec
	probeResult *prometheus.GaugeVec
	auth        *prometheus.CounterVec // gateway authentications by mode, result and reason
	downgrades  *prometheus.CounterVec
	clientTLS   *prometheus.CounterVec
	authDelayed *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgtrust_connections_active", Help: "Client sessions currently open, per upstream.",
		}, []string{"upstream"}),
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgtrust_connections_total", Help: "Client sessions accepted (startup packet received), per upstream.",
		}, []string{"upstream"}),
		bytesIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgtrust_bytes_client_to_upstream_total", Help: "Bytes copied from clients to the upstream.",
		}, []string{"upstream"}),
		bytesOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgtrust_bytes_upstream_to_client_total", Help: "Bytes copied from the upstream to clients.",
		}, []string{"upstream"}),
		dial: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pgtrust_upstream_dial_seconds",
			Help:    "Time to open a trusted upstream transport (TCP, TLS negotiation, verification).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"upstream"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgtrust_upstream_failures_total", Help: "Failed upstream connections (sessions and probes), by failure class.",
		}, []string{"upstream", "class"}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgtrust_client_rejections_total", Help: "Client connections refused by the proxy, by reason.",
		}, []string{"upstream", "reason"}),
		certExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgtrust_certificate_expiry_timestamp_seconds", Help: "NotAfter of the certificate in use, as a Unix timestamp.",
		}, []string{"upstream", "certificate"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgtrust_reloads_total", Help: "Reload attempts of certificates (file changes, SIGHUP) and configuration, by result.",
		}, []string{"kind", "result"}),
		cancels: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgtrust_cancel_requests_total", Help: "CancelRequests received, by result (forwarded, unknown, failed).",
		}, []string{"result"}),
		probeResult: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgtrust_upstream_up", Help: "1 when the latest upstream handshake or probe succeeded, 0 when it failed.",
		}, []string{"upstream"}),
		auth: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgtrust_gateway_auth_total", Help: "Client authentications done by the gateway, by mode, result (success, failure) and reason.",
		}, []string{"upstream", "mode", "result", "reason"}),
		downgrades: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgtrust_gateway_downgrades_total", Help: "cluster_secret logins with another user's (stronger) secret, by the user name logged in as.",
		}, []string{"upstream", "user"}),
		clientTLS: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgtrust_gateway_client_tls_total", Help: "Gateway client sessions by negotiated TLS version.",
		}, []string{"upstream", "version"}),
		authDelayed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgtrust_gateway_auth_delayed_total", Help: "Gateway authentication attempts delayed by the per-source failure backoff.",
		}, []string{"upstream"}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	register(reg, &m.active, &err)
	register(reg, &m.total, &err)
	register(reg, &m.bytesIn, &err)
	register(reg, &m.bytesOut, &err)
	register(reg, &m.dial, &err)
	register(reg, &m.failures, &err)
	register(reg, &m.rejections, &err)
	register(reg, &m.certExpiry, &err)
	register(reg, &m.reloads, &err)
	register(reg, &m.cancels, &err)
	register(reg, &m.probeResult, &err)
	register(reg, &m.auth, &err)
	register(reg, &m.downgrades, &err)
	register(reg, &m.clientTLS, &err)
	register(reg, &m.authDelayed, &err)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// register adds *c to reg. A registry that already holds an identical
// collector (a second proxy in one process) keeps counting into the same
// series, so the existing one is adopted.
func register[T prometheus.Collector](reg prometheus.Registerer, c *T, errp *error) {
	if *errp != nil {
		return
	}
	if err := reg.Register(*c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(T); ok {
				*c = existing
				return
			}
		}
		*errp = err
	}
}

// upstreamMetrics are the children of one upstream, resolved once.
type upstreamMetrics struct {
	active   prometheus.Gauge
	total    prometheus.Counter
	bytesIn  prometheus.Counter
	bytesOut prometheus.Counter
	dial     prometheus.Observer
	up       prometheus.Gauge
	m        *metrics
	name     string
}

func (m *metrics) forUpstream(name string) *upstreamMetrics {
	return &upstreamMetrics{
		active:   m.active.WithLabelValues(name),
		total:    m.total.WithLabelValues(name),
		bytesIn:  m.bytesIn.WithLabelValues(name),
		bytesOut: m.bytesOut.WithLabelValues(name),
		dial:     m.dial.WithLabelValues(name),
		up:       m.probeResult.WithLabelValues(name),
		m:        m,
		name:     name,
	}
}

func (u *upstreamMetrics) reject(reason string) {
	u.m.rejections.WithLabelValues(u.name, reason).Inc()
}

func (u *upstreamMetrics) failure(class string) {
	u.m.failures.WithLabelValues(u.name, class).Inc()
}
