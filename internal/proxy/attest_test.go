package proxy

import (
	"fmt"
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/ratls"
)

func attestPolicy() *ratls.Policy {
	return &ratls.Policy{MRTD: []string{strings.Repeat("ab", 48)}, SkipTCB: true}
}

// TestAttestationUpstream: an upstream with an attestation policy in front
// of a real PostgreSQL whose certificate is an ordinary one. The proxy
// refuses the upstream (the chain of verify-full passes, the attestation
// does not); psql through the proxy gets an error naming the upstream and
// the attestation_* class, and the upstream's health records it. The same
// server without a policy serves the same client.
func TestAttestationUpstream(t *testing.T) {
	e := newEnv(t)
	p := startProxy(t, Config{Upstreams: []UpstreamConfig{
		{Name: "tee", Listen: "127.0.0.1:0", Conn: e.upstream(t), Attestation: attestPolicy()},
		{Name: "plain", Listen: "127.0.0.1:0", Conn: e.upstream(t)},
	}})

	r := pgtest.Psql(t, fmt.Sprintf("host=127.0.0.1 port=%d user=app dbname=appdb sslmode=disable", p.port(t, "tee")), nil)
	if r.OK || !strings.Contains(r.Stderr, "pgtrust: upstream tee: attestation_") {
		t.Fatalf("psql through the attested upstream: %+v", r)
	}
	t.Logf("psql: %s", strings.TrimSpace(r.Stderr))
	var st *UpstreamStatus
	for _, u := range p.HealthStatus().Upstreams {
		if u.Name == "tee" {
			st = &u
		}
	}
	if st == nil || st.CertificateValidation != "enabled" || st.Status != StatusUnhealthy || st.LastError == nil || !strings.HasPrefix(string(st.LastError.Class), "attestation_") {
		t.Fatalf("health: %+v", st)
	}
	if n := p.metric(t, "pgtrust_upstream_failures_total", map[string]string{"upstream": "tee", "class": string(st.LastError.Class)}); n < 1 {
		t.Fatalf("failure metric for class %s: %v", st.LastError.Class, n)
	}

	r = pgtest.Psql(t, fmt.Sprintf("host=127.0.0.1 port=%d user=app dbname=appdb sslmode=disable", p.port(t, "plain")), nil)
	if !r.OK || strings.TrimSpace(r.Stdout) != "1" {
		t.Fatalf("psql through the plain upstream: %+v", r)
	}
}

// TestAttestationUpstreamConfig: a policy with an sslmode that may connect
// in plaintext is refused when the proxy is built.
func TestAttestationUpstreamConfig(t *testing.T) {
	for _, mode := range []string{"disable", "allow", "prefer"} {
		_, err := New(Config{Upstreams: []UpstreamConfig{
			{Name: "tee", Listen: "127.0.0.1:0", Conn: mustParse(t, "host=127.0.0.1 port=1 sslmode="+mode), Attestation: attestPolicy()},
		}})
		e, ok := failure.As(err)
		if !ok || e.Class != failure.ConfigInvalid || !strings.Contains(e.Fix, "sslmode=require") {
			t.Fatalf("%s: %v", mode, err)
		}
	}
}
