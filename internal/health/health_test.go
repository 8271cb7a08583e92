package health

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgtrust/pgtrust/internal/proxy"
)

// fakeSource is a Source with settable answers.
type fakeSource struct {
	mu     sync.Mutex
	ready  bool
	reason string
	status proxy.HealthStatus
}

func (f *fakeSource) Ready() (bool, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ready, f.reason
}

func (f *fakeSource) HealthStatus() proxy.HealthStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status
}

func healthy(name string) proxy.UpstreamStatus {
	return proxy.UpstreamStatus{Name: name, Listen: []string{"127.0.0.1:6432"}, SSLEnabled: true, SSLMode: "verify-full",
		SSLVersion: "TLSv1.3", SSLCipher: "TLS_AES_256_GCM_SHA384", CertificateValidation: "enabled", Status: "healthy"}
}

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.String()
}

func TestLivezReadyz(t *testing.T) {
	src := &fakeSource{ready: true}
	s := New("127.0.0.1:0", src, prometheus.NewRegistry(), nil)
	h := s.Handler()
	if code, body := get(t, h, "/livez"); code != 200 || body != "ok\n" {
		t.Fatalf("livez: %d %q", code, body)
	}
	if code, body := get(t, h, "/readyz"); code != 200 || body != "ok\n" {
		t.Fatalf("readyz ready: %d %q", code, body)
	}
	src.mu.Lock()
	src.ready, src.reason = false, "upstream main: client certificate unusable"
	src.mu.Unlock()
	if code, body := get(t, h, "/readyz"); code != 503 || !strings.Contains(body, "client certificate unusable") {
		t.Fatalf("readyz not ready: %d %q", code, body)
	}
	src.mu.Lock()
	src.ready = true
	src.mu.Unlock()
	s.SetNotReady("draining")
	if code, body := get(t, h, "/readyz"); code != 503 || body != "not ready: draining\n" {
		t.Fatalf("readyz after SetNotReady: %d %q", code, body)
	}
	// Liveness does not depend on readiness.
	if code, _ := get(t, h, "/livez"); code != 200 {
		t.Fatalf("livez while draining: %d", code)
	}
}

func TestDatabaseSSLSingleUpstream(t *testing.T) {
	notAfter := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	u := healthy("main")
	u.ClientCertNotAfter = &notAfter
	src := &fakeSource{ready: true, status: proxy.HealthStatus{Upstreams: []proxy.UpstreamStatus{u}}}
	code, body := get(t, New("", src, prometheus.NewRegistry(), nil).Handler(), "/health/database/ssl")
	if code != 200 {
		t.Fatalf("code %d: %s", code, body)
	}
	// The seed's shape at the top level, exactly these values.
	var top map[string]any
	if err := json.Unmarshal([]byte(body), &top); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"ssl_enabled": true, "ssl_mode": "verify-full", "ssl_version": "TLSv1.3",
		"ssl_cipher": "TLS_AES_256_GCM_SHA384", "certificate_validation": "enabled", "status": "healthy",
		"certificate_expiry": "2030-01-02T03:04:05Z", "draining": false}
	for k, v := range want {
		if top[k] != v {
			t.Errorf("%s = %v, want %v", k, top[k], v)
		}
	}
	ups, _ := top["upstreams"].([]any)
	if len(ups) != 1 || ups[0].(map[string]any)["name"] != "main" || ups[0].(map[string]any)["ssl_mode"] != "verify-full" {
		t.Fatalf("upstreams: %v", top["upstreams"])
	}
}

func TestDatabaseSSLSeveralUpstreams(t *testing.T) {
	a, b := healthy("a"), healthy("b")
	b.SSLMode, b.SSLVersion, b.CertificateValidation = "require", "TLSv1.2", "disabled"
	src := &fakeSource{status: proxy.HealthStatus{Upstreams: []proxy.UpstreamStatus{a, b}}}
	h := New("", src, prometheus.NewRegistry(), nil).Handler()
	code, body := get(t, h, "/health/database/ssl")
	var r SSLReport
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatal(err)
	}
	if code != 200 || r.SSLMode != "mixed" || r.SSLVersion != "mixed" || r.SSLCipher != a.SSLCipher ||
		r.CertificateValidation != "disabled" || !r.SSLEnabled || r.Status != "healthy" || len(r.Upstreams) != 2 {
		t.Fatalf("summary: %d %+v", code, r)
	}

	// One unhealthy upstream makes the whole answer 503 with its status.
	b.Status, b.SSLEnabled = "unhealthy", false
	src.mu.Lock()
	src.status.Upstreams = []proxy.UpstreamStatus{a, b}
	src.mu.Unlock()
	code, body = get(t, h, "/health/database/ssl")
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatal(err)
	}
	if code != 503 || r.Status != "unhealthy" || r.SSLEnabled {
		t.Fatalf("unhealthy: %d %+v", code, r)
	}

	// No upstream at all is not healthy.
	src.mu.Lock()
	src.status.Upstreams = nil
	src.mu.Unlock()
	if code, body := get(t, h, "/health/database/ssl"); code != 503 || !strings.Contains(body, `"upstreams": []`) {
		t.Fatalf("empty: %d %s", code, body)
	}
}

func TestMetricsAndServer(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "pgtrust_test_total", Help: "test"})
	reg.MustRegister(c)
	c.Add(3)
	s := New("127.0.0.1:0", &fakeSource{ready: true}, reg, nil)
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	resp, err := http.Get("http://" + s.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "pgtrust_test_total 3") {
		t.Fatalf("metrics: %d %s", resp.StatusCode, body)
	}
	// Only GET is served.
	resp, err = http.Post("http://"+s.Addr().String()+"/livez", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST /livez: %d", resp.StatusCode)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get("http://" + s.Addr().String() + "/livez"); err == nil {
		t.Fatal("still serving after Shutdown")
	}
}
