// Package health is the HTTP server operators and probes talk to:
//
//	/livez                 200 "ok" while the process serves
//	/readyz                200, or 503 with the reason (draining, a listener
//	                       or certificate unusable, an upstream saturated);
//	                       never opens a database connection, and stays 200
//	                       while an upstream is down (the proxy still answers
//	                       every client with the class and fix; a database
//	                       outage must not empty the load balancer)
//	/health/database/ssl   the TLS state of the upstream connections, in the
//	                       shape existing health checks expect
//	                       (ssl_enabled, ssl_mode, ssl_version, ssl_cipher,
//	                       certificate_validation, status), per upstream;
//	                       status "insecure" (503) for a plaintext upstream
//	                       not declared intended
//	/metrics               Prometheus metrics
//	/health                the gateway's JSON: upstreams reachable, each
//	                       gateway listener's auth mode, certificate expiry
//	                       and attestation status (503 when unhealthy)
//	/health/pools          every connection pool per (database, role):
//	                       clients active and waiting, server connections
//	                       active, idle, opening, longest wait (503 when a
//	                       key's dials fail with no connection open)
//	/attestation           with an RA-TLS gateway certificate: its quote,
//	                       event log and chain (internal/attestation)
//
// Every handler answers from state the proxy already holds (its last
// handshake and probe), so a flood of probes costs no database work.
package health

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgtrust/pgtrust/internal/attestation"
	"github.com/pgtrust/pgtrust/internal/proxy"
)

// StatusHealthy is the upstream status that counts as healthy.
const StatusHealthy = "healthy"

// Source is what the server reports on; *proxy.Proxy implements it.
type Source interface {
	// Ready reports whether new connections should be sent here, and why not.
	Ready() (bool, string)
	// HealthStatus is the proxy's current view of its upstreams.
	HealthStatus() proxy.HealthStatus
}

// attestationSource is a Source whose gateway may serve an RA-TLS
// certificate (*proxy.Proxy).
type attestationSource interface {
	AttestationCertificate() func() *tls.Certificate
}

// Server is the health and metrics HTTP server.
type Server struct {
	addr     string
	src      Source
	log      *slog.Logger
	srv      *http.Server
	handler  http.Handler
	notReady atomic.Pointer[string] // set by SetNotReady: overrides Source.Ready

	mu sync.Mutex
	ln net.Listener
}

// New returns a server for addr ("127.0.0.1:9090") reporting on src, with
// /metrics served from gatherer (prometheus.DefaultGatherer when nil).
func New(addr string, src Source, gatherer prometheus.Gatherer, logger *slog.Logger) *Server {
	if gatherer == nil {
		gatherer = prometheus.DefaultGatherer
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{addr: addr, src: src, log: logger}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /livez", s.livez)
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.HandleFunc("GET /health/database/ssl", s.databaseSSL)
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{ErrorLog: slogAdapter{logger}}))
	mux.HandleFunc("GET /health", s.gatewayHealth)
	mux.HandleFunc("GET /health/pools", s.pools)
	if a, ok := src.(attestationSource); ok {
		if get := a.AttestationCertificate(); get != nil {
			// The evidence of the gateway's own RA-TLS certificate, read
			// on every request so that a re-issued one is served at once.
			mux.Handle("/attestation", attestation.NewHandler(attestation.CertificateSource(get), attestation.HandlerOptions{}))
		}
	}
	s.handler = mux
	s.srv = &http.Server{
		Handler: mux,
		// Probes are tiny requests: tight limits keep a slow or hostile
		// client from holding connections open.
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second, // /metrics can be large
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	return s
}

// Handler returns the server's routes (tests; embedding in another server).
func (s *Server) Handler() http.Handler { return s.handler }

// Start listens on the address and serves in the background until
// Shutdown. ctx bounds only the listen step.
func (s *Server) Start(ctx context.Context) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.addr)
	if err != nil {
		return fmt.Errorf("health server: listen on %s: %w", s.addr, err)
	}
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("health server stopped", "err", err)
		}
	}()
	s.log.Info("health server listening", "addr", ln.Addr().String())
	return nil
}

// Addr returns the address being listened on (nil before Start).
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Shutdown stops the server, letting in-flight requests finish until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

// SetNotReady makes /readyz answer 503 with reason from now on, whatever the
// source says: a shutdown calls it first, so load balancers stop sending
// traffic before the listeners close.
func (s *Server) SetNotReady(reason string) { s.notReady.Store(&reason) }

func (s *Server) livez(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "ok")
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if r := s.notReady.Load(); r != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready: %s\n", *r)
		return
	}
	ok, reason := s.src.Ready()
	if !ok {
		if reason == "" {
			reason = "not ready"
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready: %s\n", reason)
		return
	}
	fmt.Fprintln(w, "ok")
}

// SSLReport is the /health/database/ssl document. Its first six fields are
// the shape existing health checks read; with one upstream they are that
// upstream's, with several they summarise all (ssl_enabled and
// certificate_validation "enabled" only when true of every upstream, a
// shared ssl_mode/ssl_version/ssl_cipher or "mixed", status "healthy" only
// when every upstream is).
type SSLReport struct {
	SSLEnabled            bool   `json:"ssl_enabled"`
	SSLMode               string `json:"ssl_mode"`
	SSLVersion            string `json:"ssl_version"`
	SSLCipher             string `json:"ssl_cipher"`
	CertificateValidation string `json:"certificate_validation"`
	Status                string `json:"status"`

	// CertificateExpiry is the earliest notAfter of the client
	// certificates the proxy presents upstream (omitted when none).
	CertificateExpiry *time.Time             `json:"certificate_expiry,omitempty"`
	Draining          bool                   `json:"draining"`
	Upstreams         []proxy.UpstreamStatus `json:"upstreams"`
}

// Report builds the /health/database/ssl document from a status.
func Report(hs proxy.HealthStatus) SSLReport {
	r := SSLReport{Draining: hs.Draining, Upstreams: hs.Upstreams}
	if r.Upstreams == nil {
		r.Upstreams = []proxy.UpstreamStatus{}
	}
	if len(hs.Upstreams) == 0 {
		r.Status = "unhealthy"
		r.CertificateValidation = "disabled"
		return r
	}
	first := hs.Upstreams[0]
	r.SSLEnabled, r.SSLMode, r.SSLVersion, r.SSLCipher = true, first.SSLMode, first.SSLVersion, first.SSLCipher
	r.CertificateValidation, r.Status = first.CertificateValidation, StatusHealthy
	same := func(cur *string, v string) {
		if *cur != v {
			*cur = "mixed"
		}
	}
	for _, u := range hs.Upstreams {
		r.SSLEnabled = r.SSLEnabled && u.SSLEnabled
		same(&r.SSLMode, u.SSLMode)
		same(&r.SSLVersion, u.SSLVersion)
		same(&r.SSLCipher, u.SSLCipher)
		if u.CertificateValidation != first.CertificateValidation {
			// Any upstream without validation means validation is not
			// guaranteed: report the weaker value.
			if u.CertificateValidation != "enabled" {
				r.CertificateValidation = u.CertificateValidation
			}
		}
		if u.Status != StatusHealthy && r.Status == StatusHealthy {
			r.Status = u.Status
		}
		if u.ClientCertNotAfter != nil && (r.CertificateExpiry == nil || u.ClientCertNotAfter.Before(*r.CertificateExpiry)) {
			t := *u.ClientCertNotAfter
			r.CertificateExpiry = &t
		}
	}
	if r.Status == "" {
		r.Status = "unhealthy"
	}
	return r
}

func (s *Server) databaseSSL(w http.ResponseWriter, _ *http.Request) {
	r := Report(s.src.HealthStatus())
	s.writeReport(w, "/health/database/ssl", r.Status == StatusHealthy, r)
}

// writeReport writes a health document as indented JSON, never cached,
// with 503 when it is not healthy.
func (s *Server) writeReport(w http.ResponseWriter, path string, healthy bool, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if !healthy {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		s.log.Debug("write "+path, "err", err)
	}
}

// slogAdapter lets promhttp log through slog.
type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Println(v ...any) { a.l.Error(fmt.Sprint(v...)) }
