package health

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/proxy"
)

// TestPlaintextUpstreamReportedInsecure: a real PostgreSQL without TLS
// behind sslmode=prefer. /health/database/ssl used to answer "healthy"
// with ssl_enabled false; now it says "insecure" (503), unless the
// configuration declares plaintext intended.
func TestPlaintextUpstreamReportedInsecure(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{})
	conn, err := connstring.ParseWithEnv(fmt.Sprintf("host=127.0.0.1 port=%d user=postgres sslmode=prefer", srv.Port), map[string]string{}, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		intended bool
		code     int
		status   string
	}{{false, 503, proxy.StatusInsecure}, {true, 200, proxy.StatusHealthy}} {
		reg := prometheus.NewRegistry()
		p, err := proxy.New(proxy.Config{ProbeInterval: time.Hour, Registerer: reg,
			Upstreams: []proxy.UpstreamConfig{{Name: "main", Listen: "127.0.0.1:0", Conn: conn, PlaintextIntended: tc.intended}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		hs := New("127.0.0.1:0", p, reg, nil)
		if err := hs.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		url := fmt.Sprintf("http://%s/health/database/ssl", hs.Addr())
		var code int
		var doc map[string]any
		// The first probe runs at Start; wait for its verdict (hang guard).
		for end := time.Now().Add(15 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
			resp, err := http.Get(url)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			code = resp.StatusCode
			doc = nil
			_ = json.Unmarshal(body, &doc)
			if doc["status"] != proxy.StatusUnknown {
				break
			}
		}
		if code != tc.code || doc["status"] != tc.status || doc["ssl_enabled"] != false {
			t.Errorf("plaintext_intended=%v: %d status=%v ssl_enabled=%v, want %d %s", tc.intended, code, doc["status"], doc["ssl_enabled"], tc.code, tc.status)
		}
		_ = hs.Shutdown(context.Background())
		p.Close()
	}
}
