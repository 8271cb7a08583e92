package pgtls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"time"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/ratls"
)

// Options adjust how connections are opened, beyond the connection settings.
type Options struct {
	// GetClientCertificate, when set, supplies the client certificate in
	// place of sslcert/sslkey (e.g. a reloadable certs.Source), so that new
	// connections pick up rotated material without rebuilding anything.
	GetClientCertificate func(*tls.CertificateRequestInfo) (*tls.Certificate, error)
	// RootCAs, when set, supplies the trust anchors in place of sslrootcert;
	// sslcrl and sslcrldir still apply, as they do to a root file.
	RootCAs func() *x509.CertPool
	// DialContext opens the TCP or Unix connection (default net.Dialer).
	DialContext func(ctx context.Context, network, address string) (net.Conn, error)
	// WrapTransport, when set, wraps each socket just before its TLS
	// handshake; the TLS connection reads and writes through what it
	// returns. The proxy uses it to take established sessions off their
	// goroutines (internal/relay). The wrapper must pass everything through
	// until its owner says otherwise. Plaintext connections are not wrapped.
	WrapTransport func(net.Conn) net.Conn
	// LookupHost resolves host names (default net.DefaultResolver).
	LookupHost func(ctx context.Context, host string) ([]string, error)
	// Trace receives the events of each stage (doctor, metrics).
	Trace *Trace
	// Now is the clock for certificate validity and attestation (default time.Now).
	Now func() time.Time
	// Attestation, when set, is the RA-TLS policy every server certificate
	// must pass, after the sslmode's own checks, on the leaf of the very
	// handshake that carries the connection. It needs sslmode=require or
	// stronger and TCP hosts (refused otherwise before anything is dialled);
	// docs/tls-semantics.md has the table of checks per sslmode.
	Attestation *ratls.Policy
	// AttestationTimeout bounds the TLS handshake plus the attestation when
	// Attestation is set (default DefaultAttestationTimeout, 5000 ms).
	AttestationTimeout time.Duration
}

// Trace hooks are called synchronously as a connection is opened; any may
// be nil. They never receive secrets.
type Trace struct {
	DNSDone          func(host string, addrs []string, err error, d time.Duration)
	ConnectDone      func(network, address string, err error, d time.Duration)
	SSLResponse      func(address string, response byte)
	TLSHandshakeDone func(address string, state *tls.ConnectionState, err error, d time.Duration)
	// ServerCertificates is called with the chain the server presented,
	// before it is verified, whether or not the sslmode verifies it.
	ServerCertificates func(address string, chain []*x509.Certificate)
	// ClientCertificateRequested is called when the server sends a
	// CertificateRequest; sent says whether a certificate was offered.
	ClientCertificateRequested func(address string, sent bool)
	// AuthRequest is called for each authentication request of the server:
	// "ok", "cleartext", "md5", "sasl" (with mechanisms), "sasl-continue", "sasl-final", "gss", "sspi".
	AuthRequest func(method string, mechanisms []string)
	// AttemptDone is called when one connection attempt ends.
	AttemptDone func(a Attempt)
	// Warning is called with each of libpq's non-fatal warnings (e.g. an
	// sslkeylogfile that cannot be written), as libpq prints them on stderr.
	Warning func(msg string)
	// Attestation is called with the report of every attestation run
	// (Options.Attestation set), passed or failed, so that every check can
	// be shown.
	Attestation func(address string, r *ratls.Report)
}

// Method is the encryption a connection attempt uses.
type Method string

// Encryption methods, in libpq's terms.
const (
	MethodPlaintext Method = "plaintext"
	MethodSSL       Method = "ssl"
)

// Attempt records one try at one address with one encryption method.
type Attempt struct {
	Host    connstring.Host
	Address string // "ip:port" or the Unix socket path
	Method  Method
	Err     error // nil when this attempt produced the connection
}

// Facts describe how a connection was made.
type Facts struct {
	Host        connstring.Host
	Address     string // "ip:port" or socket path actually connected to
	Encrypted   bool
	Negotiation string // "postgres" (SSLRequest) or "direct"; "" when plaintext
	SSLResponse byte   // 'S' or 'N' when an SSLRequest was sent, else 0

	TLSVersion          uint16
	CipherSuite         uint16
	ALPN                string
	PeerCertificates    []*x509.Certificate
	ServerChainVerified bool // the chain was verified against sslrootcert
	HostnameVerified    bool // the host name was checked (verify-full)
	RootSource          string

	// Attestation is the report on the server certificate when
	// Options.Attestation is set; Attested is true when it passed.
	Attestation *ratls.Report
	Attested    bool

	ClientCertRequested bool
	ClientCertSent      bool
	ClientCertificate   *x509.Certificate

	// AuthRequests lists the server's authentication requests in order.
	AuthRequests []string
	// SASLMechanisms are the mechanisms the server offered, if any.
	SASLMechanisms []string
	// ChannelBound is true when SCRAM-SHA-256-PLUS was used.
	ChannelBound bool

	Attempts []Attempt

	// Warnings are the non-fatal problems libpq would print on stderr while
	// connecting, e.g. "could not open SSL key logging file ...".
	Warnings []string
}

// TLSVersionName returns the version as libpq and pg_stat_ssl print it.
func (f *Facts) TLSVersionName() string { return VersionName(f.TLSVersion) }

// CipherName returns the cipher suite under OpenSSL's name, as libpq and
// pg_stat_ssl print it.
func (f *Facts) CipherName() string { return CipherName(f.CipherSuite) }

// AuthMethod summarises the authentication that took place:
// trust, password, md5, scram-sha-256, scram-sha-256-plus, or cert (trust
// after a client certificate was sent).
func (f *Facts) AuthMethod() string {
	method := ""
	for _, r := range f.AuthRequests {
		switch r {
		case "cleartext":
			method = "password"
		case "md5":
			method = "md5"
		case "sasl":
			method = "scram-sha-256"
			if f.ChannelBound {
				method = "scram-sha-256-plus"
			}
		case "gss", "sspi":
			method = r
		}
	}
	if method == "" {
		if f.ClientCertSent {
			return "cert"
		}
		return "trust"
	}
	return method
}

// VersionName maps a TLS version to OpenSSL's name ("TLSv1.3"), "" for 0.
func VersionName(v uint16) string {
	if v == 0 {
		return ""
	}
	return connstring.TLSVersionName(v)
}

// opensslCipherNames maps Go's suite IDs to the names OpenSSL (and so the
// server's pg_stat_ssl) uses, so the two sides of a connection agree.
var opensslCipherNames = map[uint16]string{
	tls.TLS_AES_128_GCM_SHA256:                        "TLS_AES_128_GCM_SHA256",
	tls.TLS_AES_256_GCM_SHA384:                        "TLS_AES_256_GCM_SHA384",
	tls.TLS_CHACHA20_POLY1305_SHA256:                  "TLS_CHACHA20_POLY1305_SHA256",
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256:       "ECDHE-ECDSA-AES128-GCM-SHA256",
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384:       "ECDHE-ECDSA-AES256-GCM-SHA384",
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256:         "ECDHE-RSA-AES128-GCM-SHA256",
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384:         "ECDHE-RSA-AES256-GCM-SHA384",
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256: "ECDHE-ECDSA-CHACHA20-POLY1305",
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256:   "ECDHE-RSA-CHACHA20-POLY1305",
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA:          "ECDHE-ECDSA-AES128-SHA",
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA:          "ECDHE-ECDSA-AES256-SHA",
	tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA:            "ECDHE-RSA-AES128-SHA",
	tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA:            "ECDHE-RSA-AES256-SHA",
	tls.TLS_RSA_WITH_AES_128_GCM_SHA256:               "AES128-GCM-SHA256",
	tls.TLS_RSA_WITH_AES_256_GCM_SHA384:               "AES256-GCM-SHA384",
	tls.TLS_RSA_WITH_AES_128_CBC_SHA:                  "AES128-SHA",
	tls.TLS_RSA_WITH_AES_256_CBC_SHA:                  "AES256-SHA",
}

// CipherName maps a cipher suite to OpenSSL's name.
func CipherName(id uint16) string {
	if id == 0 {
		return ""
	}
	if n, ok := opensslCipherNames[id]; ok {
		return n
	}
	return tls.CipherSuiteName(id)
}
