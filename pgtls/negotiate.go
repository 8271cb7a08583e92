package pgtls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"time"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/hostmatch"
)

// serverRefusedSSL marks an 'N' answer: under allow/prefer libpq goes on
// in plaintext on the same socket.
type serverRefusedSSL struct{ err *failure.Error }

func (r serverRefusedSSL) Error() string { return r.err.Error() }
func (r serverRefusedSSL) Unwrap() error { return r.err }

// negotiateTLS turns a connected socket into a verified TLS connection:
// SSLRequest (or direct TLS), then libpq's material loading, the handshake,
// verification and the ALPN rule. On error the socket is left open for the
// caller to close or, after 'N', to reuse.
func negotiateTLS(ctx context.Context, raw net.Conn, cfg *connstring.Config, host connstring.Host, address string, opts *Options, facts *Facts) (*tls.Conn, error) {
	tr := opts.trace()
	// With an attestation policy, the TLS negotiation plus the attestation
	// have their own deadline (inside connect_timeout's, never beyond it).
	hctx, hcancel := attestationContext(ctx, opts)
	defer hcancel()
	if dl, ok := hctx.Deadline(); ok {
		_ = raw.SetDeadline(dl)
		defer raw.SetDeadline(time.Time{})
	}
	direct := cfg.SSLNegotiation == "direct"
	if direct {
		facts.Negotiation = "direct"
	} else {
		facts.Negotiation = "postgres"
		resp, err := requestSSL(raw)
		if resp != 0 {
			facts.SSLResponse = resp
			if tr.SSLResponse != nil {
				tr.SSLResponse(address, resp)
			}
		}
		if err != nil {
			if _, ok := failure.As(err); ok {
				return nil, err
			}
			if opts.attestation() != nil && handshakeTimedOut(ctx, hctx, err) {
				return nil, attestationTimeoutError("TLS handshake", address, opts, err)
			}
			return nil, classifyIO(ctx, err, "SSL negotiation")
		}
		if resp == 'N' {
			return nil, serverRefusedSSL{err: noSSLError(cfg)}
		}
	}

	trust, err := loadTrust(cfg, opts)
	if err != nil {
		return nil, err
	}
	cert, getCert, err := loadClientCert(cfg, opts)
	if err != nil {
		return nil, err
	}
	now := opts.now()
	tlsCfg := &tls.Config{
		// Verification is libpq's, done in VerifyConnection below: Go's
		// built-in checks differ (no CN fallback, intermediates as anchors,
		// no verification at all for require-with-root-file).
		InsecureSkipVerify: true,
		NextProtos:         []string{ALPNProtocol},
		MinVersion:         cfg.SSLMinProtocolVersion,
		MaxVersion:         cfg.SSLMaxProtocolVersion,
		Renegotiation:      tls.RenegotiateNever,
	}
	if cfg.SSLKeyLogFile != "" {
		tlsCfg.KeyLogWriter = &keyLogFile{path: cfg.SSLKeyLogFile, warn: func(w string) {
			facts.Warnings = append(facts.Warnings, w)
			if tr.Warning != nil {
				tr.Warning(w)
			}
		}}
	}
	if tlsCfg.MinVersion == 0 {
		tlsCfg.MinVersion = tls.VersionTLS12
	}
	if tlsCfg.MaxVersion == 0 {
		tlsCfg.MaxVersion = tls.VersionTLS13
	}
	if cfg.SSLSNI && host.Host != "" && !host.IsUnixSocket() && hostmatch.ParseIP(host.Host) == nil {
		tlsCfg.ServerName = host.Host
	}
	tlsCfg.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		facts.ClientCertRequested = true
		c := cert
		if getCert != nil {
			var err error
			if c, err = getCert(cri); err != nil {
				return nil, err
			}
		}
		sent := c != nil && len(c.Certificate) > 0
		facts.ClientCertSent = sent
		if sent {
			facts.ClientCertificate = c.Leaf
			if c.Leaf == nil {
				facts.ClientCertificate, _ = x509.ParseCertificate(c.Certificate[0])
			}
		}
		if tr.ClientCertificateRequested != nil {
			tr.ClientCertificateRequested(address, sent)
		}
		if !sent {
			return &tls.Certificate{}, nil
		}
		return c, nil
	}
	tlsCfg.VerifyConnection = func(cs tls.ConnectionState) error {
		facts.PeerCertificates = cs.PeerCertificates
		if tr.ServerCertificates != nil {
			tr.ServerCertificates(address, cs.PeerCertificates)
		}
		if !trust.verifyChain {
			return nil
		}
		facts.RootSource = trust.rootFile
		_, err := VerifyServer(cs.PeerCertificates, VerifyOptions{
			Roots:         trust.roots,
			RootFile:      trust.rootFile,
			Intermediates: trust.extraInterms,
			CRLs:          trust.crls,
			CRLDir:        trust.crlDir,
			CheckHost:     trust.verifyHost,
			Host:          host.Host,
			Now:           now,
		})
		if err != nil {
			if e, ok := failure.As(err); ok && e.Class != failure.HostnameMismatch {
				facts.ServerChainVerified = false
			} else {
				facts.ServerChainVerified = true
			}
			return err
		}
		facts.ServerChainVerified = true
		facts.HostnameVerified = trust.verifyHost
		return nil
	}

	under := raw
	if opts != nil && opts.WrapTransport != nil {
		under = opts.WrapTransport(raw)
	}
	fb := &firstByteConn{Conn: under}
	tconn := tls.Client(fb, tlsCfg)
	start := time.Now()
	err = tconn.HandshakeContext(hctx)
	var state *tls.ConnectionState
	if err == nil {
		cs := tconn.ConnectionState()
		state = &cs
	}
	if tr.TLSHandshakeDone != nil {
		tr.TLSHandshakeDone(address, state, err, time.Since(start))
	}
	if err != nil {
		if opts.attestation() != nil && handshakeTimedOut(ctx, hctx, err) {
			return nil, attestationTimeoutError("TLS handshake", address, opts, err)
		}
		return nil, classifyHandshake(ctx, err, fb, cfg, direct)
	}
	facts.Encrypted = true
	facts.TLSVersion = state.Version
	facts.CipherSuite = state.CipherSuite
	facts.ALPN = state.NegotiatedProtocol
	if direct && state.NegotiatedProtocol == "" {
		return nil, failure.New(failure.ProtocolError, "direct SSL connection was established without ALPN protocol negotiation extension").
			WithEvidence("the TLS server at %s did not select the ALPN protocol %q; it is probably not PostgreSQL 17+ but a generic TLS endpoint", address, ALPNProtocol).
			WithFix("use sslnegotiation=postgres, or point host/port at a PostgreSQL 17+ server")
	}
	if state.NegotiatedProtocol != "" && state.NegotiatedProtocol != ALPNProtocol {
		return nil, failure.New(failure.ProtocolError, "SSL connection was established with unexpected ALPN protocol").
			WithEvidence("the server selected ALPN %q instead of %q", state.NegotiatedProtocol, ALPNProtocol).
			WithFix("check that host and port point at PostgreSQL and not at another TLS service")
	}
	if p := opts.attestation(); p != nil {
		_, err := attestationLeaf(state.PeerCertificates, address)
		if err == nil {
			err = attest(hctx, p, state.PeerCertificates, address, opts, facts)
		}
		if err != nil {
			return nil, err
		}
	}
	return tconn, nil
}

func noSSLError(cfg *connstring.Config) *failure.Error {
	return failure.New(failure.NoSSLServer, "server does not support SSL, but SSL was required").
		WithEvidence("the server answered 'N' to the SSLRequest: it runs with ssl=off").
		WithFix("enable TLS on the server (ssl = on, ssl_cert_file, ssl_key_file in postgresql.conf, then SELECT pg_reload_conf()); create a development PKI with: pgtrust certs init --dir DIR")
}

func (o *Options) trace() *Trace {
	if o == nil || o.Trace == nil {
		return &Trace{}
	}
	return o.Trace
}

func (o *Options) now() time.Time {
	if o == nil || o.Now == nil {
		return time.Now()
	}
	return o.Now()
}
