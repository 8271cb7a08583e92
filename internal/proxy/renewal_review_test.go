package proxy

import (
	"context"
	"crypto/tls"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/vaulttest"
)

// newVaultDouble is the Vault double alone (no PostgreSQL): the upstream
// these tests configure is never dialled.
func newVaultDouble(t *testing.T, role vaulttest.Role) *vaulttest.Server {
	t.Helper()
	v, err := vaulttest.New(vaulttest.Options{Roles: []vaulttest.Role{role}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	return v
}

// A renewable Vault token that lives 3 seconds, a certificate that lives
// an hour: no issue happens for a long while, and the proxy keeps the
// token alive meanwhile (renew-self), so a renewal after several token
// lifetimes still succeeds.
func TestRenewalVaultTokenKeptAlive(t *testing.T) {
	v := newVaultDouble(t, vaulttest.Role{Name: "epoch-client", MaxTTL: 24 * time.Hour})
	v.AddToken(vaultRootToken, 3*time.Second, true)
	vo := certs.VaultOptions{Address: v.URL, Mount: "pki", Role: "epoch-client", CommonName: "app", TTL: time.Hour,
		Token: vaultRootToken, RequestTimeout: 2 * time.Second}
	ren := &Renewal{Key: "k", NewIssuer: func(log *slog.Logger) (certs.Issuer, error) {
		o := vo
		o.Logger = log
		return certs.NewVaultIssuer(o)
	}}
	r := startProxy(t, Config{Upstreams: []UpstreamConfig{{Name: "x", Listen: "127.0.0.1:0",
		Conn: mustParse(t, "host=127.0.0.1 port=1 user=app dbname=appdb sslmode=require"), ClientRenewal: ren}}})
	h := r.renewHandle(t, "upstream x client certificate")
	first := h.src.Status().Serial

	// Five renewals of a 3-second token span more than three of its lifetimes.
	waitFor(t, "the token to be renewed 5 times", 30*time.Second, func() bool {
		tok, _ := v.TokenInfo(vaultRootToken)
		return tok.Renewals >= 5
	})
	if n := v.CountPath("pki/issue/epoch-client"); n != 1 {
		t.Fatalf("%d issue requests while the token was kept alive, want 1 (a token renewed only by issues)", n)
	}
	tok, _ := v.TokenInfo(vaultRootToken)
	if life := tok.Expires.Sub(tok.Issued); life < 3*time.Second*3 {
		t.Fatalf("token issued %s, expires %s: it was not kept alive past its first lifetimes", tok.Issued, tok.Expires)
	}
	if !tok.Expires.After(v.Now()) {
		t.Fatalf("the token expired at %s (now %s)", tok.Expires, v.Now())
	}
	if err := h.src.Reload(); err != nil {
		t.Fatalf("forced renewal after %d token renewals: %s", tok.Renewals, failure.Text(err))
	}
	if s := h.src.Status().Serial; s == first {
		t.Fatal("the forced renewal kept the old certificate")
	}
	// Closing the proxy stops the token's upkeep with the source: Close
	// waits for both, so it would hang on a loop left running.
	r.Close()
}

// stripCA returns the first issue as Vault sent it and later ones without
// the CA certificates, as a CA that stopped naming its chain would.
type stripCA struct {
	certs.Issuer
	strip atomic.Bool
}

func (s *stripCA) Issue(ctx context.Context, cur *tls.Certificate) (*certs.Issued, error) {
	iss, err := s.Issuer.Issue(ctx, cur)
	if err == nil && s.strip.Load() {
		iss.CAs = nil
	}
	return iss, err
}

// trust_issued_ca with a CA that names no certificates: there is nothing
// to verify the server with, so sslmode=require would check nothing while
// health said "enabled". The proxy refuses to start; a renewal that later
// drops the CA shows as disabled in health.
func TestRenewalTrustIssuedCAWithoutCA(t *testing.T) {
	conn := "host=127.0.0.1 port=1 user=app dbname=appdb sslmode=require"
	bare := newVaultDouble(t, vaulttest.Role{Name: "epoch-client", MaxTTL: 24 * time.Hour, OmitIssuingCA: true})
	bare.AddToken(vaultRootToken, 0, false)
	vo := certs.VaultOptions{Address: bare.URL, Mount: "pki", Role: "epoch-client", CommonName: "app", TTL: time.Hour,
		Token: vaultRootToken, RequestTimeout: 2 * time.Second}
	ren := &Renewal{Key: "k", Options: certs.RenewOptions{TrustIssuedCA: true},
		NewIssuer: func(*slog.Logger) (certs.Issuer, error) { return certs.NewVaultIssuer(vo) }}
	_, err := New(Config{Upstreams: []UpstreamConfig{{Name: "x", Listen: "127.0.0.1:0", Conn: mustParse(t, conn), ClientRenewal: ren}}})
	fe, ok := failure.As(err)
	if !ok || fe.Class != failure.RootCertMissing || !strings.Contains(fe.Message, "trust_issued_ca") ||
		!strings.Contains(fe.Fix, "sslrootcert") || !strings.Contains(fe.Fix, "ca_chain") {
		t.Fatalf("trust_issued_ca with a CA that named no certificates: %v", err)
	}

	full := newVaultDouble(t, vaulttest.Role{Name: "epoch-client", MaxTTL: 24 * time.Hour})
	full.AddToken(vaultRootToken, 0, false)
	vo.Address = full.URL
	var wrapped *stripCA
	ren = &Renewal{Key: "k", Options: certs.RenewOptions{TrustIssuedCA: true}, NewIssuer: func(*slog.Logger) (certs.Issuer, error) {
		vi, err := certs.NewVaultIssuer(vo)
		wrapped = &stripCA{Issuer: vi}
		return wrapped, err
	}}
	r := startProxy(t, Config{Upstreams: []UpstreamConfig{{Name: "x", Listen: "127.0.0.1:0", Conn: mustParse(t, conn), ClientRenewal: ren}}})
	if got := r.HealthStatus().Upstreams[0].CertificateValidation; got != "enabled" {
		t.Fatalf("validation with the issuing CA: %q", got)
	}
	wrapped.strip.Store(true)
	if err := r.renewHandle(t, "upstream x client certificate").src.Reload(); err != nil {
		t.Fatalf("renewal: %s", failure.Text(err))
	}
	if got := r.HealthStatus().Upstreams[0].CertificateValidation; got != "disabled (the CA named no certificates)" {
		t.Fatalf("validation after a renewal without CA certificates: %q", got)
	}
}
