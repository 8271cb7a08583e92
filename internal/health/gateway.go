package health

import (
	"net/http"
	"time"

	"github.com/pgtrust/pgtrust/internal/proxy"
)

// GatewayReport is the /health document of a gateway (TeeSQL's port 8080):
// whether each upstream is reachable (from the latest handshake or probe;
// /health never dials), each listener's authentication mode, the expiry of
// its TLS certificate and, with RA-TLS, the attestation status.
type GatewayReport struct {
	Status    string                `json:"status"` // "healthy", or "unhealthy" when an upstream is unreachable or a certificate expired
	Draining  bool                  `json:"draining"`
	Upstreams []UpstreamReach       `json:"upstreams"`
	Gateways  []proxy.GatewayStatus `json:"gateways"`
}

// UpstreamReach is one upstream in /health.
type UpstreamReach struct {
	Name      string `json:"name"`
	Reachable bool   `json:"reachable"`
	Status    string `json:"status"` // the upstream's status in /health/database/ssl
	TLS       string `json:"tls"`    // "TLSv1.3", or "" before a handshake or over a Unix socket
}

// GatewayHealth builds the /health document.
func GatewayHealth(hs proxy.HealthStatus, now time.Time) GatewayReport {
	r := GatewayReport{Status: StatusHealthy, Draining: hs.Draining, Upstreams: []UpstreamReach{}, Gateways: hs.Gateways}
	if r.Gateways == nil {
		r.Gateways = []proxy.GatewayStatus{}
	}
	for _, u := range hs.Upstreams {
		reach := u.Status == StatusHealthy || u.Status == proxy.StatusInsecure
		r.Upstreams = append(r.Upstreams, UpstreamReach{Name: u.Name, Reachable: reach, Status: u.Status, TLS: u.SSLVersion})
		if !reach {
			r.Status = "unhealthy"
		}
	}
	for _, g := range hs.Gateways {
		if g.CertificateNotAfter != nil && now.After(*g.CertificateNotAfter) {
			r.Status = "unhealthy"
		}
	}
	if len(hs.Upstreams) == 0 {
		r.Status = "unhealthy"
	}
	return r
}

func (s *Server) gatewayHealth(w http.ResponseWriter, _ *http.Request) {
	r := GatewayHealth(s.src.HealthStatus(), time.Now())
	s.writeReport(w, "/health", r.Status == StatusHealthy, r)
}
