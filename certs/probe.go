package certs

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/pgtls"
)

// ProbeOptions configure ProbeServer.
type ProbeOptions struct {
	Addr       string        // host:port
	Direct     bool          // direct TLS with ALPN "postgresql" (PostgreSQL 17+) instead of SSLRequest
	ServerName string        // SNI; default the host of Addr unless it is an IP literal
	Timeout    time.Duration // whole probe; default 10s
}

// Probe is what a server presents during the TLS handshake.
type Probe struct {
	Addr                     string   `json:"addr"`
	Negotiation              string   `json:"negotiation"` // "postgres" (SSLRequest) or "direct"
	Version                  string   `json:"tls_version"`
	Cipher                   string   `json:"cipher"`
	ALPN                     string   `json:"alpn,omitempty"`
	ClientCertRequested      bool     `json:"client_cert_requested"`
	AcceptableCAs            []string `json:"acceptable_cas,omitempty"`
	Chain                    []Info   `json:"chain"`
	VerificationNotPerformed bool     `json:"verification_not_performed"` // always true: the chain is shown, not trusted
}

// ProbeServer connects to a PostgreSQL server, negotiates TLS through
// pgtls (the one connection path: SSLRequest with its injected-byte guard,
// or direct TLS with ALPN) and reports the chain the server presents. It
// deliberately verifies nothing (sslmode=require without a root file) so
// that it can show any chain, trusted or not; use Verify to judge it. It
// sends no client certificate and notes whether the server asked for one.
func ProbeServer(ctx context.Context, opts ProbeOptions) (*Probe, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	host, port, err := net.SplitHostPort(opts.Addr)
	portNum, perr := strconv.ParseUint(port, 10, 16)
	if err != nil || perr != nil {
		return nil, failure.New(failure.ConfigInvalid, "invalid server address %q", opts.Addr).
			WithFix("use HOST:PORT, e.g. db.example.com:5432 or [::1]:5432")
	}
	dsn := "sslmode=require"
	if opts.Direct {
		dsn += " sslnegotiation=direct"
	}
	// No environment and no home directory: nothing of the user's
	// (~/.postgresql/root.crt, PGSSLMODE) may turn the probe into a check.
	cfg, err := connstring.ParseWithEnv(dsn, map[string]string{}, "")
	if err != nil {
		return nil, err
	}
	cfg.SSLMinProtocolVersion = tls.VersionTLS10 // show old servers too
	sni := opts.ServerName
	if sni == "" {
		sni = host
	}
	p := &Probe{Addr: opts.Addr, Negotiation: "postgres", VerificationNotPerformed: true}
	if opts.Direct {
		p.Negotiation = "direct"
	}
	conn, facts, err := pgtls.DialAddress(ctx, cfg, connstring.Host{Host: sni, Port: uint16(portNum)}, opts.Addr, pgtls.MethodSSL,
		&pgtls.Options{GetClientCertificate: func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			for _, dn := range cri.AcceptableCAs {
				p.AcceptableCAs = append(p.AcceptableCAs, rdnString(dn))
			}
			return &tls.Certificate{}, nil
		}})
	if err != nil {
		return nil, err
	}
	conn.Close()
	// TLS 1.3 servers send CertificateRequest after the server Finished; the
	// client reads it within the handshake, so the request is recorded.
	p.ClientCertRequested = facts.ClientCertRequested
	p.Version, p.Cipher, p.ALPN = facts.TLSVersionName(), facts.CipherName(), facts.ALPN
	p.Chain = DescribeChain(facts.PeerCertificates, "", time.Now())
	return p, nil
}

// rdnString renders a DER distinguished name from a CertificateRequest.
func rdnString(der []byte) string {
	name, err := parseDN(der)
	if err != nil {
		return fmt.Sprintf("(unparsable name, %d bytes)", len(der))
	}
	return name
}
