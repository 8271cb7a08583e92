package pgtls

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
)

// classifyDial turns a DNS or connect failure into a classified error with
// libpq's wording.
func classifyDial(ctx context.Context, err error, network, address string) *failure.Error {
	if isTimeout(ctx, err) {
		return failure.Wrap(failure.Timeout, err, "timeout expired").
			WithEvidence("no answer from %s within connect_timeout", address).
			WithFix("check that the server is up and that no firewall drops packets to %s; raise connect_timeout if the network is slow", address)
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.ECONNREFUSED:
			if network == "unix" {
				return failure.Wrap(failure.ConnectionRefused, err, "Connection refused\n\tIs the server running locally and accepting connections on that socket?").
					WithEvidence("nothing listens on the socket %s", address).
					WithFix("start PostgreSQL, or point host at the directory that holds its socket (SHOW unix_socket_directories)")
			}
			return failure.Wrap(failure.ConnectionRefused, err, "Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?").
				WithEvidence("%s refused the TCP connection: nothing listens on that port", address).
				WithFix("start PostgreSQL, check port=, and check listen_addresses in postgresql.conf")
		case syscall.ENOENT:
			return failure.Wrap(failure.ConnectionRefused, err, "No such file or directory\n\tIs the server running locally and accepting connections on that socket?").
				WithEvidence("the socket %s does not exist", address).
				WithFix("start PostgreSQL, or set host to the directory of its socket (SHOW unix_socket_directories), or use host=127.0.0.1 for TCP")
		case syscall.EHOSTUNREACH, syscall.ENETUNREACH:
			return failure.Wrap(failure.ConnectionRefused, err, "%s", errno.Error()).
				WithEvidence("%s is unreachable: no route", address).
				WithFix("check the address and the network route to it")
		}
	}
	return failure.Wrap(failure.ConnectionRefused, err, "could not connect to server: %v", unwrapOp(err)).
		WithFix("check host, port and the network path")
}

func dnsError(host string, err error) *failure.Error {
	reason := err.Error()
	var de *net.DNSError
	if errors.As(err, &de) {
		reason = de.Err
		if de.IsNotFound {
			reason = "Name or service not known"
		}
	}
	return failure.Wrap(failure.DNSFailure, err, "could not translate host name \"%s\" to address: %s", host, reason).
		WithEvidence("DNS lookup of %q failed: %v", host, err).
		WithFix("check the spelling of host=, /etc/hosts and /etc/resolv.conf; or give the address directly with hostaddr=")
}

func isTimeout(ctx context.Context, err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	if ctx != nil && ctx.Err() == context.DeadlineExceeded {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func unwrapOp(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

// classifyIO classifies a read/write failure on an established socket.
func classifyIO(ctx context.Context, err error, during string) *failure.Error {
	if isTimeout(ctx, err) {
		return failure.Wrap(failure.Timeout, err, "timeout expired").
			WithEvidence("the server accepted the TCP connection but did not answer during %s within connect_timeout", during).
			WithFix("check that this port is PostgreSQL and not a silent service or a stalled proxy; raise connect_timeout if the server is overloaded")
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return failure.Wrap(failure.ProtocolError, err, "server closed the connection unexpectedly\n\tThis probably means the server terminated abnormally\n\tbefore or while processing the request.").
			WithEvidence("the peer closed the connection during %s", during).
			WithFix("check the server log; check that host/port is a PostgreSQL server (not a load balancer or another service)")
	}
	if e := classifyTLSAlert(err); e != nil {
		return e
	}
	return failure.Wrap(failure.ProtocolError, err, "%s failed: %v", during, unwrapOp(err))
}

// classifyHandshake classifies a failed TLS handshake.
func classifyHandshake(ctx context.Context, err error, fb *firstByteConn, cfg *connstring.Config, direct bool) error {
	if e, ok := failure.As(err); ok {
		return e
	}
	if isTimeout(ctx, err) {
		return classifyIO(ctx, err, "the TLS handshake")
	}
	if fb.haveByte && !looksLikeTLSRecord(fb.first) {
		if direct {
			return failure.Wrap(failure.ProtocolError, err, "SSL error: %s", tlsReason(err)).
				WithEvidence("the server answered the TLS ClientHello with non-TLS data (first byte 0x%02x): it does not accept direct TLS; only PostgreSQL 17 and later do", fb.first).
				WithFix("use sslnegotiation=postgres (the default) for this server")
		}
		return failure.Wrap(failure.InjectionDetected, err, "received unencrypted data after SSL response").
			WithEvidence("after answering 'S', the peer sent non-TLS data (first byte 0x%02x, %q) instead of a TLS ServerHello (CVE-2021-23222)", fb.first, printable(fb.first)).
			WithFix("treat the network path to this server as hostile; use sslmode=verify-full and investigate what sits between you and the server")
	}
	if e := classifyTLSAlert(err); e != nil {
		if e.Class == failure.TLSVersionMismatch {
			e.Message += fmt.Sprintf("\nThis may indicate that the server does not support any SSL protocol version between %s and %s.",
				versionOrUnset(cfg.SSLMinProtocolVersion, "TLSv1.2"), versionOrUnset(cfg.SSLMaxProtocolVersion, "TLSv1.3"))
		}
		return e
	}
	if (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)) && direct && !fb.haveByte {
		return failure.Wrap(failure.ProtocolError, err, "SSL SYSCALL error: EOF detected").
			WithEvidence("the server closed the connection as soon as it received the TLS ClientHello: it does not accept direct TLS (PostgreSQL before 17, or a proxy that expects an SSLRequest)").
			WithFix("use sslnegotiation=postgres (the default) for this server, or upgrade it to PostgreSQL 17+")
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return failure.Wrap(failure.ProtocolError, err, "SSL SYSCALL error: EOF detected").
			WithEvidence("the server closed the connection during the TLS handshake").
			WithFix("check the server log (could not accept SSL connection: ...); the server may reject this TLS version or cipher")
	}
	return failure.Wrap(failure.ProtocolError, err, "SSL error: %s", tlsReason(err)).
		WithFix("check the server log for the matching 'could not accept SSL connection' line")
}

func versionOrUnset(v uint16, def string) string {
	if v == 0 {
		return def
	}
	return VersionName(v)
}

// tlsReason is the TLS library's reason without its package prefixes:
// libpq says "SSL error: <reason>", and a certificate the TLS layer could
// not even parse ("tls: failed to parse certificate from server: x509:
// ...") is said without crypto/x509's prefix.
func tlsReason(err error) string {
	s := unwrapOp(err).Error()
	return strings.ReplaceAll(strings.TrimPrefix(s, "tls: "), "x509: ", "")
}

// classifyTLSAlert maps TLS alerts and version errors, sent by either side.
func classifyTLSAlert(err error) *failure.Error {
	s := err.Error()
	switch {
	case strings.Contains(s, "protocol version not supported"),
		strings.Contains(s, "server selected unsupported protocol version"),
		strings.Contains(s, "no supported versions"),
		strings.Contains(s, "unsupported protocol"):
		return failure.Wrap(failure.TLSVersionMismatch, err, "SSL error: unsupported protocol").
			WithEvidence("the client's allowed TLS versions and the server's do not overlap: %s", unwrapOp(err)).
			WithFix("align ssl_min_protocol_version/ssl_max_protocol_version on the client with the server's ssl_min_protocol_version/ssl_max_protocol_version (TLSv1.2 and TLSv1.3 are the safe choices)")
	case strings.Contains(s, "remote error: tls: certificate required"):
		return failure.Wrap(failure.ClientCertRequired, err, "SSL error: tlsv13 alert certificate required").
			WithEvidence("the server requires a client certificate and none was sent").
			WithFix("set sslcert=/path/to/client.crt and sslkey=/path/to/client.key (issue one with: pgtrust certs issue client --cn USER)")
	case strings.Contains(s, "remote error: tls: unknown certificate authority"):
		return failure.Wrap(failure.ClientCertRejected, err, "SSL error: tlsv1 alert unknown ca").
			WithEvidence("the server does not trust the CA that issued the client certificate (it is not in the server's ssl_ca_file)").
			WithFix("use a client certificate issued by the CA in the server's ssl_ca_file, or add your client CA to ssl_ca_file on the server")
	case strings.Contains(s, "remote error: tls: expired certificate"):
		return failure.Wrap(failure.ClientCertRejected, err, "SSL error: sslv3 alert certificate expired").
			WithEvidence("the server rejected the client certificate as expired (or not yet valid)").
			WithFix("renew the client certificate: pgtrust certs issue client ...; check it with: pgtrust certs inspect CLIENT.crt")
	case strings.Contains(s, "remote error: tls: revoked certificate"):
		return failure.Wrap(failure.ClientCertRejected, err, "SSL error: sslv3 alert certificate revoked").
			WithEvidence("the server's CRL lists the client certificate as revoked").
			WithFix("issue a new client certificate")
	case strings.Contains(s, "remote error: tls: bad certificate"),
		strings.Contains(s, "remote error: tls: unsupported certificate"),
		strings.Contains(s, "remote error: tls: certificate unknown"),
		strings.Contains(s, "remote error: tls: decrypt error"):
		return failure.Wrap(failure.ClientCertRejected, err, "SSL error: sslv3 alert bad certificate").
			WithEvidence("the server rejected the client certificate: %s", unwrapOp(err)).
			WithFix("check the client certificate with: pgtrust certs verify --ca SERVER_CA --cert CLIENT.crt --key CLIENT.key")
	}
	return nil
}

// classifyStartup classifies a failure of the startup/authentication
// exchange, which pgconn runs.
func classifyStartup(ctx context.Context, err error, cfg *connstring.Config, h connstring.Host, facts *Facts, user, database string) error {
	if e, ok := failure.As(err); ok {
		return e
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return classifyServerError(pgErr, cfg, facts, user, database)
	}
	s := err.Error()
	if strings.Contains(s, "channel binding") {
		return channelBindingError(err, facts)
	}
	e := classifyIO(ctx, err, "startup")
	if e.Class == failure.ProtocolError && facts.Encrypted && facts.ClientCertSent && len(facts.AuthRequests) == 0 &&
		(errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)) {
		// With TLS 1.3 the server checks the client certificate after the
		// client's handshake is done; a rejection is an alert followed by a
		// close, and the alert can be lost to the reset.
		e.Class = failure.ClientCertRejected
		e.Evidence = "the server closed the TLS connection right after the handshake, before answering the startup message: with TLS 1.3 that is how a server rejects a client certificate (unknown CA, expired or revoked)"
		e.Fix = "check the client certificate against the server's ssl_ca_file: pgtrust certs verify --ca SERVER_CLIENT_CA --cert CLIENT.crt --key CLIENT.key"
	}
	return e
}

func channelBindingError(err error, facts *Facts) error {
	msg := "channel binding required, but server authenticated client without channel binding"
	fix := "use an authentication method with channel binding on the server (scram-sha-256 in pg_hba.conf, with password_encryption=scram-sha-256), or set channel_binding=prefer"
	switch {
	case !facts.Encrypted:
		msg = "channel binding required, but SSL not in use"
		fix = "use sslmode=require or stronger with channel_binding=require"
	case containsAny(facts.AuthRequests, "cleartext", "md5"):
		msg = "channel binding required but not supported by server's authentication request"
	case containsAny(facts.AuthRequests, "sasl") && !containsAny(facts.SASLMechanisms, "SCRAM-SHA-256-PLUS"):
		msg = "channel binding is required, but server did not offer an authentication method that supports channel binding"
	}
	return failure.Wrap(failure.AuthFailed, err, "%s", msg).
		WithEvidence("channel_binding=require; server's authentication requests: %s", strings.Join(facts.AuthRequests, ", ")).
		WithFix("%s", fix)
}

func containsAny(list []string, want ...string) bool {
	for _, l := range list {
		for _, w := range want {
			if l == w {
				return true
			}
		}
	}
	return false
}

func classifyServerError(pgErr *pgconn.PgError, cfg *connstring.Config, facts *Facts, user, database string) error {
	msg := pgErr.Severity + ":  " + pgErr.Message
	e := failure.Wrap(failure.ProtocolError, pgErr, "%s", msg).CauseInMessage()
	e.Evidence = fmt.Sprintf("server error SQLSTATE %s", pgErr.Code)
	enc := "no encryption"
	if facts.Encrypted {
		enc = "SSL encryption"
	}
	switch {
	case strings.Contains(pgErr.Message, "no pg_hba.conf entry"), strings.Contains(pgErr.Message, "pg_hba.conf rejects connection"):
		e.Class = failure.PgHbaReject
		e.Evidence = fmt.Sprintf("no pg_hba.conf line admits user %q to database %q from this address over %s", user, database, enc)
		if facts.Encrypted {
			e.Fix = fmt.Sprintf("add to pg_hba.conf: hostssl %s %s <client-address>/32 scram-sha-256 (then SELECT pg_reload_conf())", hbaName(database), hbaName(user))
		} else {
			e.Fix = fmt.Sprintf("connect with sslmode=verify-full (the server may only accept TLS: hostssl lines), or add to pg_hba.conf: hostssl %s %s <client-address>/32 scram-sha-256", hbaName(database), hbaName(user))
		}
	case strings.Contains(pgErr.Message, "connection requires a valid client certificate"):
		e.Class = failure.ClientCertRequired
		e.Evidence = "the matching pg_hba.conf line has clientcert=verify-ca/verify-full (or the cert method) and no valid client certificate was sent"
		if cfg.SSLCert != "" && !facts.ClientCertSent {
			e.Evidence += fmt.Sprintf("; sslcert=%s does not exist or sslcertmode=disable", cfg.SSLCert)
		}
		e.Fix = "set sslcert=/path/to/client.crt and sslkey=/path/to/client.key with a certificate from the server's ssl_ca_file CA whose CN is the user name"
	case strings.Contains(pgErr.Message, "certificate authentication failed for user"):
		e.Class = failure.ClientCertRejected
		cn := ""
		if facts.ClientCertificate != nil {
			cn = facts.ClientCertificate.Subject.CommonName
		}
		e.Evidence = fmt.Sprintf("the client certificate's CN is %q but the user is %q (cert authentication compares them)", cn, user)
		e.Fix = fmt.Sprintf("connect as user=%s, issue a client certificate with CN=%s (pgtrust certs issue client --cn %s), or add a map= in pg_hba.conf with a pg_ident.conf mapping", cn, user, user)
	case strings.Contains(pgErr.Message, "authentication failed for user") && facts.ClientCertSent && facts.ClientCertificate != nil &&
		facts.ClientCertificate.Subject.CommonName != user:
		// clientcert=verify-full reports a CN mismatch as the line's
		// method failing ("trust" / password authentication failed).
		e.Class = failure.ClientCertRejected
		cn := facts.ClientCertificate.Subject.CommonName
		e.Evidence = fmt.Sprintf("the client certificate's CN is %q but the user is %q; a pg_hba.conf line with clientcert=verify-full (or the cert method) requires them to match", cn, user)
		e.Fix = fmt.Sprintf("connect as user=%s, issue a client certificate with CN=%s (pgtrust certs issue client --cn %s), or map the names with map= and pg_ident.conf", cn, user, user)
		if pgErr.Code == "28P01" {
			e.Evidence += " (or the password is wrong)"
		}
	case strings.Contains(pgErr.Message, "received unencrypted data after SSL request"):
		e.Class = failure.InjectionDetected
		e.Evidence = "the server received plaintext bytes right after the SSLRequest (CVE-2021-23214)"
		e.Fix = "something between client and server injects data; investigate the network path"
	case pgErr.Code == "28P01":
		e.Class = failure.AuthFailed
		e.Evidence = fmt.Sprintf("the server rejected the password for user %q (or, on a clientcert=verify-full line, the client certificate CN does not match the user)", user)
		e.Fix = "check the password (PGPASSWORD, password=, or ~/.pgpass with mode 0600); reset it with ALTER ROLE ... PASSWORD"
	case pgErr.Code == "3D000":
		e.Class = failure.ConfigInvalid
		e.Evidence = fmt.Sprintf("database %q does not exist on the server", database)
		e.Fix = "set dbname= to an existing database (psql -l lists them)"
	case pgErr.Code == "57P03", pgErr.Code == "53300":
		e.Class = failure.ConnectionRefused
		e.Fix = "the server cannot accept connections right now (starting up, shutting down or out of connection slots); retry, or raise max_connections"
	case strings.HasPrefix(pgErr.Code, "28"):
		e.Class = failure.AuthFailed
		e.Fix = "check the user name and the pg_hba.conf line that matches this connection (the server log names it)"
	}
	return e
}

func hbaName(s string) string {
	if s == "" {
		return "all"
	}
	return s
}

// Classify turns an error from a connection made with pgx over a pgtls
// transport into a classified one: transport errors already carry their
// class; server errors (pg_hba.conf, authentication) get theirs here.
func Classify(err error) error {
	if err == nil {
		return nil
	}
	if e, ok := failure.As(err); ok {
		return e
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return classifyServerError(pgErr, &connstring.Config{}, &Facts{}, "", "")
	}
	if strings.Contains(err.Error(), "channel binding") {
		return channelBindingError(err, &Facts{Encrypted: true})
	}
	return failure.Wrap(failure.ProtocolError, err, "%v", err)
}
