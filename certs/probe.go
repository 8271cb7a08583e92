package certs

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/pgtrust/pgtrust/failure"
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

// sslRequestCode is the SSLRequest "protocol version" 1234.5679.
const sslRequestCode = 80877103

// ProbeServer connects to a PostgreSQL server, negotiates TLS and reports
// the chain the server presents. It deliberately skips verification
// (InsecureSkipVerify) so that it can show any chain, trusted or not; use
// Verify to judge it. It sends no client certificate and notes whether the
// server asked for one.
func ProbeServer(ctx context.Context, opts ProbeOptions) (*Probe, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	host, _, err := net.SplitHostPort(opts.Addr)
	if err != nil {
		return nil, failure.Wrap(failure.ConfigInvalid, err, "invalid server address %q", opts.Addr).
			WithFix("use HOST:PORT, e.g. db.example.com:5432 or [::1]:5432")
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", opts.Addr)
	if err != nil {
		return nil, dialFailure(opts.Addr, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	p := &Probe{Addr: opts.Addr, Negotiation: "postgres", VerificationNotPerformed: true}
	if opts.Direct {
		p.Negotiation = "direct"
	} else if err := sslRequest(conn); err != nil {
		return nil, err
	}
	sni := opts.ServerName
	if sni == "" && net.ParseIP(host) == nil {
		sni = host
	}
	cfg := &tls.Config{
		ServerName:         sni,
		InsecureSkipVerify: true, // shown, not trusted: see VerificationNotPerformed
		MinVersion:         tls.VersionTLS10,
		GetClientCertificate: func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			p.ClientCertRequested = true
			for _, dn := range cri.AcceptableCAs {
				p.AcceptableCAs = append(p.AcceptableCAs, rdnString(dn))
			}
			return &tls.Certificate{}, nil
		},
	}
	if opts.Direct {
		cfg.NextProtos = []string{"postgresql"}
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, handshakeFailure(opts.Addr, err)
	}
	st := tc.ConnectionState()
	p.Version, p.Cipher, p.ALPN = tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite), st.NegotiatedProtocol
	if opts.Direct && st.NegotiatedProtocol != "postgresql" {
		return nil, failure.New(failure.ProtocolError, "direct SSL connection was established without ALPN protocol negotiation extension").
			WithEvidence("negotiated ALPN %q", st.NegotiatedProtocol).
			WithFix("direct TLS needs PostgreSQL 17 or later; drop --direct to use SSLRequest")
	}
	p.Chain = DescribeChain(st.PeerCertificates, "", time.Now())
	// TLS 1.3 servers send CertificateRequest after the server Finished; the
	// client reads it within the handshake, so ClientCertRequested is set.
	return p, nil
}

func sslRequest(conn net.Conn) error {
	var req [8]byte
	binary.BigEndian.PutUint32(req[0:4], 8)
	binary.BigEndian.PutUint32(req[4:8], sslRequestCode)
	if _, err := conn.Write(req[:]); err != nil {
		return failure.Wrap(failure.ProtocolError, err, "could not send SSL negotiation packet: %v", err)
	}
	// One unbuffered byte: anything after it must be TLS (CVE-2021-23222).
	var b [1]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		return failure.Wrap(failure.ProtocolError, err, "server closed the connection unexpectedly").
			WithEvidence("no reply to SSLRequest: %v", err).
			WithFix("check that %s is a PostgreSQL server", conn.RemoteAddr())
	}
	switch b[0] {
	case 'S':
		return nil
	case 'N':
		return failure.New(failure.NoSSLServer, "server does not support SSL, but SSL was required").
			WithEvidence("the server answered 'N' to SSLRequest").
			WithFix("set ssl = on in postgresql.conf with ssl_cert_file and ssl_key_file (pgtrust certs init prints the lines), then reload the server")
	case 'E':
		return failure.New(failure.ProtocolError, "server sent an error response during SSL exchange").
			WithEvidence("the server answered 'E' to SSLRequest (a very old server, or not PostgreSQL)")
	default:
		return failure.New(failure.ProtocolError, "received invalid response to SSL negotiation: %c", b[0]).
			WithEvidence("first reply byte 0x%02x", b[0]).
			WithFix("check that the address is a PostgreSQL server and not another service or a proxy")
	}
}

func dialFailure(addr string, err error) error {
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &dnsErr):
		return failure.Wrap(failure.DNSFailure, err, "could not translate host name %q to address: %v", dnsErr.Name, dnsErr.Err)
	case errors.Is(err, syscall.ECONNREFUSED):
		return failure.Wrap(failure.ConnectionRefused, err, "connection to server at %s failed: Connection refused", addr).
			WithFix("check that the server is running and accepting TCP/IP connections on that port")
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		return failure.Wrap(failure.Timeout, err, "connection to server at %s timed out", addr)
	}
	return failure.Wrap(failure.ConnectionRefused, err, "connection to server at %s failed: %v", addr, err)
}

func handshakeFailure(addr string, err error) error {
	var alert tls.AlertError
	switch {
	case isTimeout(err) || errors.Is(err, context.DeadlineExceeded):
		return failure.Wrap(failure.Timeout, err, "TLS handshake with %s timed out", addr)
	case errors.As(err, &alert) && alert == 70: // protocol_version
		return failure.Wrap(failure.TLSVersionMismatch, err, "SSL error: %v", err)
	}
	var rec tls.RecordHeaderError
	if errors.As(err, &rec) {
		return failure.Wrap(failure.ProtocolError, err, "SSL error: %v", err).
			WithFix("the server did not answer with TLS; without --direct, pgtrust sends PostgreSQL's SSLRequest first")
	}
	return failure.Wrap(failure.ProtocolError, err, "SSL error: %v", err)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// rdnString renders a DER distinguished name from a CertificateRequest.
func rdnString(der []byte) string {
	name, err := parseDN(der)
	if err != nil {
		return fmt.Sprintf("(unparsable name, %d bytes)", len(der))
	}
	return name
}
