package dbpool

import (
	"context"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/failure"
)

// ExpiryWarning is how close to its expiry a certificate earns a warning.
const ExpiryWarning = 7 * 24 * time.Hour

// healthTimeout bounds the SELECT 1 round trip when ctx has no deadline.
const healthTimeout = 5 * time.Second

// Health is the SSL status of seed 002 (connection_health), taken from one
// pooled connection: how it was negotiated (pgtls.Facts), the client
// certificate new connections present (the Source), and a SELECT 1 round trip.
type Health struct {
	SSL     bool   `json:"ssl"`
	Version string `json:"version,omitempty"` // as pg_stat_ssl prints it, e.g. "TLSv1.3"
	Cipher  string `json:"cipher,omitempty"`  // OpenSSL's name, as pg_stat_ssl prints it
	SSLMode string `json:"sslmode"`

	ServerCertVerified bool      `json:"server_cert_verified"` // chain checked against the root certificates
	HostnameVerified   bool      `json:"hostname_verified"`    // verify-full's host name check
	ServerCertSubject  string    `json:"server_cert_subject,omitempty"`
	ServerCertNotAfter time.Time `json:"server_cert_not_after,omitzero"`

	ClientCertSent     bool      `json:"client_cert_sent"` // this connection presented one
	ClientCertSubject  string    `json:"client_cert_subject,omitempty"`
	ClientCertNotAfter time.Time `json:"client_cert_not_after,omitzero"`

	BackendPID uint32  `json:"backend_pid"`
	LatencyMS  float64 `json:"latency_ms"` // SELECT 1, measured, never asserted
	Pool       Stats   `json:"pool"`

	Warnings []string `json:"warnings"`
}

// Health acquires a connection, times SELECT 1 on it and reports its TLS
// facts. A failure to connect is returned as pgtls's classified error.
func (p *Pool) Health(ctx context.Context) (*Health, error) {
	c, err := p.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Release()

	qctx := ctx
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		qctx, cancel = context.WithTimeout(ctx, healthTimeout)
		defer cancel()
	}
	start := time.Now()
	_, err = c.PgConn.Exec(qctx, "SELECT 1").ReadAll()
	rtt := time.Since(start)
	if err != nil {
		class := failure.ProtocolError
		if pgconn.Timeout(err) || qctx.Err() != nil {
			class = failure.Timeout
		}
		return nil, failure.Wrap(class, err, "the health check's SELECT 1 failed").
			WithEvidence("backend pid %d, after %s", c.PgConn.PID(), rtt.Round(time.Millisecond)).
			WithFix("check the server's log and the network; the pool replaces the connection on the next call")
	}

	f := c.Facts
	h := &Health{
		SSL:                f.Encrypted,
		Version:            f.TLSVersionName(),
		Cipher:             f.CipherName(),
		SSLMode:            string(p.cfg.SSLMode),
		ServerCertVerified: f.ServerChainVerified,
		HostnameVerified:   f.HostnameVerified,
		ClientCertSent:     f.ClientCertSent,
		BackendPID:         c.PgConn.PID(),
		LatencyMS:          float64(rtt.Microseconds()) / 1000,
		Pool:               p.Stats(),
		Warnings:           append([]string{}, p.o.Warnings...),
	}
	if len(f.PeerCertificates) > 0 {
		leaf := f.PeerCertificates[0]
		h.ServerCertSubject, h.ServerCertNotAfter = leaf.Subject.String(), leaf.NotAfter
	}
	// The source holds what the next connection presents; without one, the
	// certificate this connection sent is the best we know.
	var st certs.Status
	if p.o.Source != nil {
		st = p.o.Source.Status()
	}
	if st.Subject != "" || !st.NotAfter.IsZero() {
		h.ClientCertSubject, h.ClientCertNotAfter = st.Subject, st.NotAfter
	} else if f.ClientCertificate != nil {
		h.ClientCertSubject, h.ClientCertNotAfter = f.ClientCertificate.Subject.String(), f.ClientCertificate.NotAfter
	}
	h.Warnings = append(h.Warnings, p.warnings(h, f.PeerCertificates)...)
	if w := p.terminationWarning(); w != "" {
		h.Warnings = append(h.Warnings, w)
	}
	return h, nil
}

func (p *Pool) warnings(h *Health, chain []*x509.Certificate) []string {
	var w []string
	// From what the handshake did, not from the sslmode's name: libpq's
	// require verifies the chain when a root certificate is present.
	switch {
	case !h.SSL:
		w = append(w, fmt.Sprintf("the connection is not encrypted (sslmode=%s)", h.SSLMode))
	case !h.ServerCertVerified:
		w = append(w, fmt.Sprintf("the server certificate is not verified (sslmode=%s); use verify-full", h.SSLMode))
	case !h.HostnameVerified:
		w = append(w, fmt.Sprintf("the server host name is not verified (sslmode=%s); use verify-full", h.SSLMode))
	}
	now := p.o.Now()
	expiry := func(what string, notAfter time.Time) {
		if notAfter.IsZero() {
			return
		}
		switch left := notAfter.Sub(now); {
		case left <= 0:
			w = append(w, fmt.Sprintf("the %s expired at %s", what, notAfter.UTC().Format(time.RFC3339)))
		case left < ExpiryWarning:
			w = append(w, fmt.Sprintf("the %s expires in %s (at %s)", what, left.Round(time.Minute), notAfter.UTC().Format(time.RFC3339)))
		}
	}
	if len(chain) > 0 {
		expiry("server certificate", h.ServerCertNotAfter)
	}
	expiry("client certificate", h.ClientCertNotAfter)
	return w
}
