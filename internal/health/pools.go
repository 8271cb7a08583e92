package health

import (
	"net/http"

	"github.com/pgtrust/pgtrust/internal/proxy"
)

// PoolsReport is the /health/pools document: every pool of every upstream,
// per (database, role), in the spirit of PgBouncer's SHOW POOLS.
type PoolsReport struct {
	// Status is "ok", "waiting" when some clients wait for a server
	// connection, or "failing" when a key's dials fail with no server
	// connection open (503).
	Status string             `json:"status"`
	Pools  []proxy.PoolStatus `json:"pools"`
}

// Pools builds the /health/pools document from a status.
func Pools(hs proxy.HealthStatus) PoolsReport {
	r := PoolsReport{Status: "ok", Pools: hs.Pools}
	if r.Pools == nil {
		r.Pools = []proxy.PoolStatus{}
	}
	for _, p := range r.Pools {
		for _, k := range p.Keys {
			switch {
			case k.Status == "failing":
				r.Status = "failing"
			case k.Status == "waiting" && r.Status == "ok":
				r.Status = "waiting"
			}
		}
	}
	return r
}

func (s *Server) pools(w http.ResponseWriter, _ *http.Request) {
	r := Pools(s.src.HealthStatus())
	s.writeReport(w, "/health/pools", r.Status != "failing", r)
}
