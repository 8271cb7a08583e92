package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgwire"
	"github.com/pgtrust/pgtrust/internal/pooling"
	"github.com/pgtrust/pgtrust/internal/relay"
	"github.com/pgtrust/pgtrust/pgtls"
)

// copyBufferSize is the size of the pooled buffers a direction borrows
// while data streams (a large result, COPY).
const copyBufferSize = 32 << 10

// idleBufferSize is the buffer a direction owns and reads into while it
// waits: most sessions sit idle most of the time, and an idle direction
// blocked in Read must not pin 32 KiB (the benchmark measured 89 KiB per
// idle session with two pooled buffers held).
const idleBufferSize = 2 << 10

// upstreamCloseGrace is how long the upstream may stay silent after the
// client's EOF was passed on before the session is closed anyway.
const upstreamCloseGrace = 10 * time.Second

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, copyBufferSize); return &b }}

// session is one client connection: negotiation, startup, upstream dial,
// the authentication relay, then a byte pipe.
type session struct {
	p     *Proxy
	up    *upstream
	set   *upstreamSettings // settings snapshot: a reload affects new sessions only
	ln    *listener
	id    uint64
	start time.Time

	raw    net.Conn // the accepted socket
	client net.Conn // raw, or TLS over raw

	// pending: a TCP connection counted in up.pending until its startup
	// packet is in; overPending: it arrived above the cap and is refused.
	pending, overPending bool

	mu       sync.Mutex
	upConn   net.Conn // the upstream transport, once dialed
	closed   bool
	facts    *pgtls.Facts
	counted  bool // holds one of the upstream's connection slots
	authHeld bool // holds an authentication-phase slot (TCP sessions until ReadyForQuery)

	source   string // client IP address ("" for the Unix socket)
	pid      uint32 // BackendKeyData, for cancel routing
	secret   []byte
	clientTL string // client-side TLS version, "" when plaintext

	// upPID and upSecret are the upstream's real key when the gateway
	// authenticated the session (pid/secret are then the gateway's own).
	upPID    uint32
	upSecret []byte
	// serverCert is the certificate this client's handshake presented
	// (for SCRAM channel binding); peer is the client's verified leaf.
	serverCert *tls.Certificate
	peer       *x509.Certificate
	// identity is who the client authenticated as (user name, certificate
	// identity), for the session's log line; mode its authentication.
	identity string
	mode     AuthMode
	// matchedOwner is the user whose secret (or mapped name) let the client
	// in: its backoff entry is the one a success clears.
	matchedOwner  string
	startupParams map[string]string
	protoMinor    uint16

	// authDeadline ends the client's part of authentication; each upstream
	// answer gets at least upWait, so that a client that used up the
	// budget never makes the upstream look slow.
	authDeadline time.Time
	upWait       time.Duration

	user, database, application string

	// pooled, when the front pools server connections, runs the session
	// after login in place of the byte pipe.
	pooled   *pooling.Session
	poolDone func() // ends the session's count in its pool's key

	// relayed is set once an event loop owns the session's sockets (under
	// mu): closeAll then asks the loop to close them.
	relayed *relay.Session

	bytesIn, bytesOut atomic.Int64
}

// rejection is a refusal before the session reaches the upstream.
type rejection struct {
	reason string
	msg    []byte // ErrorResponse to send, nil for a silent close
	err    error
}

func (r *rejection) Error() string { return r.reason + ": " + r.err.Error() }

func (s *session) logger() *slog.Logger { return s.p.log }

// run handles the connection to its end. It owns raw and the upstream.
//
// Three phases have three clocks: the client's negotiation and startup
// packet (StartupTimeout, the client's time only), the upstream dial
// (ConnectTimeout, from the dial's start) and the authentication exchange
// (AuthTimeout). Only a failure of the upstream's own phase or answers
// counts against the upstream; a slow or silent client is a client refusal.
func (s *session) run() {
	handedOff := false // a pooled session ends on whichever goroutine it is on then
	finish := func() {
		s.closeAll()
		s.p.sessionDone(s)
	}
	defer func() {
		if !handedOff {
			finish()
		}
	}()

	tune := s.p.tuning()
	_ = s.raw.SetDeadline(s.start.Add(tune.StartupTimeout))
	s.setClient(s.raw)

	if s.overPending {
		s.endPending()
		s.refuse(&rejection{reason: rejectTooManyPending,
			msg: errorResponse(sqlstateTooManyClients, "sorry, too many clients already", "", "retry shortly"),
			err: errors.New("too many connections still negotiating")})
		return
	}
	startup, err := s.negotiate()
	s.endPending()
	if err != nil {
		s.refuse(err)
		return
	}
	if startup == nil {
		return // a CancelRequest, handled
	}
	if gw := s.front(); gw != nil && s.clientTL == "" {
		s.refuse(&rejection{reason: rejectTLSRequired,
			msg: errorResponse(sqlstateInvalidAuthSpec,
				"pgtrust: TLS is required: connect with sslmode=require or stronger",
				"this gateway listener accepts only TLS connections (SSLRequest, or direct TLS with ALPN \"postgresql\")",
				"connect with sslmode=require, or verify-ca / verify-full with the gateway's CA"),
			err: errors.New("plaintext client on a gateway listener")})
		return
	}
	if s.set.serverTLS != nil && s.set.requireTLS && !s.ln.unix && s.clientTL == "" {
		s.refuse(&rejection{reason: rejectTLSRequired,
			msg: errorResponse(sqlstateInvalidAuthSpec,
				"pgtrust: TLS is required on this listener",
				"this listener refuses plaintext clients (client_tls.require)",
				"connect with sslmode=require (or verify-ca / verify-full with the proxy's CA)"),
			err: errors.New("plaintext client on a TLS-only listener")})
		return
	}
	if s.p.refusing.Load() {
		s.refuse(&rejection{reason: rejectShuttingDown,
			msg: errorResponse(sqlstateCannotConnectNow, "pgtrust: the proxy is shutting down", "", "retry against another instance"),
			err: errors.New("draining")})
		return
	}
	if reason := s.up.admit(s.set, s.ln.unix, s.source); reason != "" {
		s.refuse(s.slotRejection(reason))
		return
	}
	s.counted, s.authHeld = true, !s.ln.unix
	s.up.metrics.total.Inc()
	s.up.metrics.active.Inc()

	s.mode = s.authMode()
	if s.mode != AuthPassthrough {
		// The gateway authenticates the client itself and opens the
		// upstream with its own credentials; then the same pipe.
		if !s.gatewayAuth(startup) {
			return
		}
	} else {
		if err := s.dialUpstream(tune.ConnectTimeout); err != nil {
			if s.p.ctx.Err() != nil {
				return // the proxy is closing: not the upstream's failure
			}
			s.upstreamFailed("connect", err)
			return
		}

		s.authDeadline = time.Now().Add(tune.AuthTimeout)
		s.upWait = tune.ConnectTimeout
		_ = s.raw.SetDeadline(s.authDeadline)
		_ = s.upConn.SetDeadline(s.authDeadline)
		if _, err := s.upConn.Write(startup); err != nil {
			s.upstreamFailed("forward startup packet", upstreamIOError(err, "sending the startup packet"))
			return
		}
		if err := s.relayAuth(); err != nil {
			s.authFailed(err)
			return
		}
		s.identity = s.user
	}
	s.endAuth()
	_ = s.raw.SetDeadline(time.Time{})
	s.p.registerCancel(s)
	if s.pooled != nil {
		handedOff = true
		s.runPooled(finish)
		return
	}
	_ = s.upConn.SetDeadline(time.Time{})

	s.logger().Info("session opened", s.baseAttrs(
		slog.String("user", s.user), slog.String("database", s.database), slog.String("application_name", s.application),
		slog.String("auth", string(s.mode)), slog.String("client_identity", s.identity),
		slog.String("client_tls", orNone(s.clientTL)),
		slog.String("upstream_address", s.facts.Address),
		slog.String("upstream_tls", orNone(s.facts.TLSVersionName())),
		slog.String("upstream_cipher", s.facts.CipherName()),
	)...)
	if s.relay(finish) {
		handedOff = true
		return
	}
	reason, upstreamDropped := s.pipe()
	s.piped(reason, upstreamDropped)
}

// relay hands the session to an event loop; finish runs when it ends
// there. It reports false, with nothing changed, when the proxy has no
// loops or a side is not a socket the loop can own (the caller pipes).
func (s *session) relay(finish func()) bool {
	if s.p.relays == nil {
		return false
	}
	m := s.up.metrics
	h := relay.Hooks{
		ClientBytes:   func(n int) { s.bytesIn.Add(int64(n)); m.bytesIn.Add(float64(n)) },
		UpstreamBytes: func(n int) { s.bytesOut.Add(int64(n)); m.bytesOut.Add(float64(n)) },
		Grace:         upstreamCloseGrace,
		Done: func(r relay.Result) {
			if r.UpstreamSilent {
				s.warnUpstreamSilent()
			}
			reason, dropped := s.endReason(r.First, r.ClientErr, r.UpstreamErr, r.Terminated)
			s.piped(reason, dropped)
			finish()
		},
	}
	// Under mu: closeAll, from another goroutine, either comes first (and
	// nothing is handed over) or finds the relayed session to close.
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	rs, err := s.p.relays.Start(s.client, s.upConn, h)
	if err != nil {
		if !errors.Is(err, relay.ErrNotDetachable) {
			s.logger().Debug("session stays on goroutines", s.baseAttrs(slog.String("error", err.Error()))...)
		}
		return false
	}
	s.relayed = rs
	return true
}

// warnUpstreamSilent logs a session closed because the upstream stayed
// silent for upstreamCloseGrace after the client's end was passed on.
func (s *session) warnUpstreamSilent() {
	s.logger().Warn("upstream silent after the client closed; closing the session", s.baseAttrs(slog.Duration("grace", upstreamCloseGrace))...)
}

// piped logs the end of a session's data phase and, when the upstream
// ended it, asks for a probe.
func (s *session) piped(reason string, upstreamDropped bool) {
	if upstreamDropped {
		// The server may be gone: find out now rather than at the next
		// probe interval or the next client.
		s.p.kickProbe(s.up, true)
	}
	s.logger().Info("session closed", s.baseAttrs(
		slog.String("client_tls", orNone(s.clientTL)),
		slog.String("upstream_tls", orNone(s.facts.TLSVersionName())),
		slog.String("upstream_cipher", s.facts.CipherName()),
		slog.Int64("bytes_client_to_upstream", s.bytesIn.Load()),
		slog.Int64("bytes_upstream_to_client", s.bytesOut.Load()),
		slog.Duration("duration", time.Since(s.start)),
		slog.String("reason", reason),
	)...)
}

// endPending ends the pre-startup phase of a TCP connection.
func (s *session) endPending() {
	if s.pending {
		s.pending = false
		s.up.pending.Add(-1)
	}
}

// endAuth releases the authentication-phase slot (not the connection slot).
func (s *session) endAuth() {
	if s.authHeld {
		s.authHeld = false
		s.up.authDone(s.source)
	}
}

// slotRejection is the answer to a client refused for lack of a slot. On a
// public listener the limits stay in the log: an unauthenticated client
// learns only that the proxy is full.
func (s *session) slotRejection(reason string) *rejection {
	r := &rejection{reason: reason}
	var detail, hint string
	switch reason {
	case rejectTooManyAuth:
		detail = fmt.Sprintf("pgtrust: upstream %s has max_authenticating=%d sessions still authenticating", s.up.name, s.set.maxAuth)
		hint = "retry shortly; raise max_authenticating if legitimate clients authenticate slowly"
		r.err = errors.New("authenticating-session limit reached")
	case rejectTooManyAuthSource:
		detail = fmt.Sprintf("pgtrust: upstream %s has max_authenticating_per_source=%d sessions from this address still authenticating", s.up.name, s.set.maxAuthSrc)
		hint = "retry shortly; raise max_authenticating_per_source if this address hosts many clients"
		r.err = errors.New("authenticating-session limit per source address reached")
	default:
		detail = fmt.Sprintf("pgtrust: upstream %s has max_connections=%d sessions open (%d reserved for the Unix-socket listener)", s.up.name, s.set.maxConns, s.set.reserved)
		hint = "raise max_connections for this upstream, or use a connection pool in the application"
		r.err = errors.New("connection limit reached")
	}
	if s.ln.public {
		detail, hint = "", "retry shortly"
	}
	r.msg = errorResponse(sqlstateTooManyClients, "sorry, too many clients already", detail, hint)
	return r
}

// clientSideError and upstreamSideError say which peer broke the
// authentication exchange: only the upstream's breakage is its failure.
type clientSideError struct{ err error }

func (e *clientSideError) Error() string { return "client: " + e.err.Error() }
func (e *clientSideError) Unwrap() error { return e.err }

type upstreamSideError struct{ err error }

func (e *upstreamSideError) Error() string { return "upstream: " + e.err.Error() }
func (e *upstreamSideError) Unwrap() error { return e.err }

// answeredError is an authentication end the client has already been told
// about (the upstream's own ErrorResponse, or the proxy's).
type answeredError struct{ err error }

func (e *answeredError) Error() string { return e.err.Error() }

// authFailed ends a session whose authentication exchange broke.
func (s *session) authFailed(err error) {
	var ce *clientSideError
	var ue *upstreamSideError
	var ae *answeredError
	switch {
	case errors.As(err, &ae):
		s.closeReason("authentication", err)
	case errors.As(err, &ue):
		s.upstreamFailed("authentication", upstreamIOError(ue.err, "the authentication exchange"))
	case errors.As(err, &ce) && errors.Is(err, os.ErrDeadlineExceeded):
		s.refuse(&rejection{reason: rejectAuthTimeout,
			msg: errorResponse(sqlstateQueryCanceled, "canceling authentication due to timeout",
				fmt.Sprintf("pgtrust: the client did not complete authentication within auth_timeout (%s)", s.p.tuning().AuthTimeout), ""),
			err: errors.New("the client did not complete authentication within auth_timeout")})
	default:
		s.closeReason("authentication", err)
	}
}

// upstreamIOError classifies a read or write failure on an open upstream
// connection in libpq's terms.
func upstreamIOError(err error, during string) error {
	if _, ok := failure.As(err); ok {
		return err
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return failure.Wrap(failure.Timeout, err, "timeout expired").CauseInMessage().
			WithEvidence("the upstream server did not answer during %s", during).
			WithFix("check the server's load and its authentication methods (an LDAP/RADIUS backend may hang); raise proxy.auth_timeout only if the server is merely slow")
	}
	if errors.Is(err, pgwire.ErrProtocol) {
		return failure.Wrap(failure.ProtocolError, err, "invalid message from server").CauseInMessage().
			WithEvidence("%v during %s", err, during).
			WithFix("make sure the upstream address is a PostgreSQL server")
	}
	return failure.Wrap(failure.ProtocolError, err, "server closed the connection unexpectedly\n\tThis probably means the server terminated abnormally\n\tbefore or while processing the request.").CauseInMessage().
		WithEvidence("%v during %s", err, during).
		WithFix("check the server's log and that it is running")
}

// upstreamFailed reports an upstream failure to the client as an
// ErrorResponse and to the log, counts it, and asks for an immediate probe.
func (s *session) upstreamFailed(stage string, err error) {
	class := failure.ClassOf(err)
	s.up.metrics.failure(string(class))
	ref := s.ref()
	s.sendToClient(upstreamErrorResponse(s.up.name, err, s.ln.public, ref))
	s.logger().Warn("upstream connection failed", s.baseAttrs(slog.String("stage", stage), slog.String("class", string(class)),
		slog.String("ref", ref), slog.String("error", err.Error()))...)
	s.p.kickProbe(s.up, false)
}

// sendToClient writes a last message with a write deadline of its own: the
// phase's deadline may already have passed, and the answer must still go.
func (s *session) sendToClient(msg []byte) {
	_ = s.raw.SetWriteDeadline(time.Now().Add(errorWriteTimeout))
	_, _ = s.client.Write(msg)
}

// ref is the correlation id a client sees in place of upstream evidence.
func (s *session) ref() string { return fmt.Sprintf("%s-%d", s.p.nonce, s.id) }

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func (s *session) baseAttrs(extra ...any) []any {
	return append([]any{slog.Uint64("id", s.id), slog.String("client", s.raw.RemoteAddr().String()), slog.String("upstream", s.up.name)}, extra...)
}

// closeReason logs the end of a session that never reached the pipe.
func (s *session) closeReason(stage string, err error) {
	s.logger().Info("session closed", s.baseAttrs(
		slog.Int64("bytes_client_to_upstream", s.bytesIn.Load()),
		slog.Int64("bytes_upstream_to_client", s.bytesOut.Load()),
		slog.Duration("duration", time.Since(s.start)),
		slog.String("reason", stage+": "+err.Error()))...)
}

// refuse answers a rejected client and counts it.
func (s *session) refuse(err error) {
	var r *rejection
	if !errors.As(err, &r) {
		r = classifyClientError(err)
	}
	if r == nil {
		s.logger().Debug("client closed before its startup packet", s.baseAttrs()...)
		return
	}
	// Counted before the client hears of it: whoever sees the refusal
	// finds it in the metrics.
	s.up.metrics.reject(r.reason)
	if r.msg != nil {
		s.sendToClient(r.msg)
	}
	s.p.refusals.Log(slog.LevelWarn, "client refused", []any{"upstream", s.up.name, "reason", r.reason},
		slog.Uint64("id", s.id), slog.String("client", s.raw.RemoteAddr().String()), slog.String("error", r.err.Error()))
}

// classifyClientError turns a read error of the pre-auth phase into a
// rejection; nil means the client simply went away before sending anything.
func classifyClientError(err error) *rejection {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return &rejection{reason: rejectStartupTimeout, err: errors.New("no complete startup packet within the startup timeout")}
	case errors.Is(err, io.EOF):
		return nil
	}
	return &rejection{reason: rejectProtocol, err: err}
}

// negotiate runs the pre-startup exchange: SSLRequest, GSSENCRequest,
// direct TLS, CancelRequest, then the StartupMessage, whose raw bytes it
// returns for forwarding. It reads exactly each packet and nothing more.
func (s *session) negotiate() ([]byte, error) {
	maxPacket := s.p.tuning().MaxStartupPacket
	// As PostgreSQL's ProcessStartupPacket: one SSLRequest and one
	// GSSENCRequest at most; a repeated one falls through to the protocol
	// version check and is refused as an unsupported protocol.
	sslDone, gssDone := false, false
	var hdr [4]byte
	for first := true; ; first = false {
		if err := pgwire.ReadExact(s.client, hdr[:]); err != nil {
			// A close at a packet boundary is not worth a line, also after
			// an 'N' (pgx then retries on a new connection), as PostgreSQL
			// logs nothing either.
			return nil, err
		}
		if first && hdr[0] == pgwire.TLSHandshakeRecord {
			if err := s.handshake(&pgwire.PrefixConn{Conn: s.raw, Prefix: append([]byte(nil), hdr[:]...)}, true); err != nil {
				return nil, err
			}
			continue
		}
		n := int(int32(binary.BigEndian.Uint32(hdr[:])))
		if n > maxPacket {
			return nil, &rejection{reason: rejectTooLarge,
				msg: errorResponse(sqlstateProtocolViolation, "invalid length of startup packet",
					fmt.Sprintf("the client announced a startup packet of %d bytes; the limit is %d", n, maxPacket), ""),
				err: fmt.Errorf("startup packet of %d bytes exceeds the limit of %d", n, maxPacket)}
		}
		if n < 8 {
			return nil, &rejection{reason: rejectProtocol,
				msg: errorResponse(sqlstateProtocolViolation, "invalid length of startup packet", "", ""),
				err: fmt.Errorf("startup packet length %d", n)}
		}
		pkt := make([]byte, n)
		copy(pkt, hdr[:])
		if err := pgwire.ReadExact(s.client, pkt[4:]); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		body := pkt[4:]
		code := binary.BigEndian.Uint32(body)
		switch {
		case code == pgwire.SSLRequestCode && !sslDone:
			var req pgproto3.SSLRequest
			if err := req.Decode(body); err != nil {
				return nil, protocolRejection("malformed SSLRequest")
			}
			sslDone = true
			if s.serverTLS() == nil || s.clientTL != "" {
				if _, err := s.client.Write([]byte{'N'}); err != nil {
					return nil, err
				}
				continue
			}
			// Checked before answering 'S': a legitimate client waits for the
			// answer, so bytes already here were injected (CVE-2021-23214).
			if pgwire.PendingBytes(s.raw) > 0 {
				return nil, &rejection{reason: rejectInjection,
					msg: errorResponse(sqlstateProtocolViolation, "received unencrypted data after SSL request",
						"This could be either a client-software bug or evidence of an attempted man-in-the-middle attack.", ""),
					err: errors.New("received unencrypted data after SSL request")}
			}
			if _, err := s.client.Write([]byte{'S'}); err != nil {
				return nil, err
			}
			if err := s.handshake(s.raw, false); err != nil {
				return nil, err
			}
			gssDone = true
		case code == pgwire.GSSEncRequestCode && !gssDone:
			var req pgproto3.GSSEncRequest
			if err := req.Decode(body); err != nil {
				return nil, protocolRejection("malformed GSSENCRequest")
			}
			gssDone = true
			if _, err := s.client.Write([]byte{'N'}); err != nil {
				return nil, err
			}
		case code == pgwire.CancelRequestCode:
			var req pgproto3.CancelRequest
			if err := req.Decode(body); err != nil {
				return nil, protocolRejection("malformed CancelRequest")
			}
			s.p.forwardCancel(&req, s)
			return nil, nil
		case code>>16 != 3:
			// Also a second SSLRequest (1234.5679) or GSSENCRequest, as in
			// PostgreSQL.
			return nil, &rejection{reason: rejectProtocol,
				msg: errorResponse(sqlstateFeatureNotSupported,
					fmt.Sprintf("unsupported frontend protocol %d.%d: server supports 3.0 to 3.2", code>>16, code&0xffff), "", ""),
				err: fmt.Errorf("unsupported frontend protocol %d.%d", code>>16, code&0xffff)}
		default:
			// Any 3.x passes through: the upstream negotiates minor versions
			// (NegotiateProtocolVersion), and its answer reaches the client.
			var msg pgproto3.StartupMessage
			if msg.Decode(body) == nil {
				s.user, s.database, s.application = msg.Parameters["user"], msg.Parameters["database"], msg.Parameters["application_name"]
				s.startupParams, s.protoMinor = msg.Parameters, uint16(msg.ProtocolVersion&0xffff)
			}
			if s.user == "" {
				// PostgreSQL's own answer, given here: forwarding would cost
				// a TLS dial and a backend fork for a certain refusal.
				return nil, &rejection{reason: rejectNoUser,
					msg: errorResponse(sqlstateInvalidAuthSpec, "no PostgreSQL user name specified in startup packet", "", ""),
					err: errors.New("no PostgreSQL user name specified in startup packet")}
			}
			return pkt, nil
		}
	}
}

func protocolRejection(what string) *rejection {
	return &rejection{reason: rejectProtocol, msg: errorResponse(sqlstateProtocolViolation, "pgtrust: "+what, "", ""), err: errors.New(what)}
}

// handshake runs the client-side TLS handshake; direct TLS requires ALPN
// "postgresql", as PostgreSQL 17 does.
func (s *session) handshake(c net.Conn, direct bool) error {
	cfg := s.serverTLS()
	if cfg == nil {
		return &rejection{reason: rejectProtocol, err: errors.New("direct TLS connection, but this listener offers no TLS")}
	}
	if gw := s.front(); gw != nil {
		// Record the certificate this handshake presents: SCRAM's
		// tls-server-end-point binds to it, and a rotation between the
		// handshake and the exchange must not break the binding.
		cfg = cfg.Clone()
		get := gw.tls.GetCertificate
		cfg.GetCertificate = func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
			c, err := get(h)
			s.serverCert = c
			return c, err
		}
	}
	if s.p.relays != nil {
		c = relay.Wrap(c) // an event loop may take the socket after authentication
	}
	tc := tls.Server(c, cfg)
	if err := tc.Handshake(); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return err
		}
		return s.handshakeRejection(err)
	}
	if st := tc.ConnectionState(); len(st.PeerCertificates) > 0 {
		s.peer = st.PeerCertificates[0]
	}
	st := tc.ConnectionState()
	if direct && st.NegotiatedProtocol != pgtls.ALPNProtocol {
		return &rejection{reason: rejectProtocol, err: errors.New("received direct SSL connection request without ALPN protocol negotiation extension")}
	}
	s.setClient(tc)
	s.clientTL = pgtls.VersionName(st.Version)
	return nil
}

// dialUpstream opens the upstream transport with libpq's semantics, within
// its own timeout (never what is left of the client's).
func (s *session) dialUpstream(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(s.p.ctx, timeout)
	defer cancel()
	t0 := time.Now()
	conn, facts, err := s.p.dialTarget(ctx, s.up, s.set)
	if err == nil {
		s.up.metrics.dial.Observe(time.Since(t0).Seconds())
	}
	if err != nil && s.p.ctx.Err() != nil {
		return err // the proxy is closing: no verdict on the upstream
	}
	s.up.recordHandshake(facts, err)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		conn.Close()
		return failure.New(failure.Timeout, "the proxy is closing")
	}
	s.upConn, s.facts = conn, facts
	return nil
}

// relayAuth passes the authentication exchange through, message by
// message, until ReadyForQuery. It removes SCRAM-SHA-256-PLUS from the
// upstream's offer (channel binding cannot cross the proxy: the client's
// TLS session, if any, is not the upstream's) and records BackendKeyData.
func (s *session) relayAuth() error {
	buf := make([]byte, 0, 1024)
	strippedPlus := false
	for {
		if dl := time.Now().Add(s.upWait); dl.After(s.authDeadline) {
			_ = s.upConn.SetReadDeadline(dl)
		}
		msg, err := pgwire.ReadMessage(s.upConn, buf, maxBackendMessage)
		buf = msg[:0]
		if err != nil {
			return &upstreamSideError{fmt.Errorf("read from upstream: %w", err)}
		}
		needsReply := false
		switch msg[0] {
		case 'R':
			if len(msg) < 9 {
				return &upstreamSideError{fmt.Errorf("%w: short authentication request", pgwire.ErrProtocol)}
			}
			switch binary.BigEndian.Uint32(msg[5:9]) {
			case 10: // AuthenticationSASL
				var sasl pgproto3.AuthenticationSASL
				if err := sasl.Decode(msg[5:]); err != nil {
					return &upstreamSideError{fmt.Errorf("%w: %v", pgwire.ErrProtocol, err)}
				}
				kept := sasl.AuthMechanisms[:0]
				for _, m := range sasl.AuthMechanisms {
					if m == "SCRAM-SHA-256-PLUS" {
						strippedPlus = true
						continue
					}
					kept = append(kept, m)
				}
				sasl.AuthMechanisms = kept
				if msg, err = sasl.Encode(msg[:0]); err != nil {
					return err
				}
				needsReply = true
			case 3, 5, 7, 8, 9, 11: // cleartext, MD5, GSS, GSS continue, SSPI, SASL continue
				needsReply = true
			}
		case 'K':
			var kd pgproto3.BackendKeyData
			if err := kd.Decode(msg[5:]); err == nil {
				s.pid, s.secret = kd.ProcessID, kd.SecretKey
			}
		case 'E':
			_, _ = s.client.Write(msg)
			var e pgproto3.ErrorResponse
			_ = e.Decode(msg[5:])
			switch e.Code {
			case "28P01":
				s.up.metrics.failure(string(failure.AuthFailed))
			case "28000":
				s.up.metrics.failure(string(failure.PgHbaReject))
			}
			return &answeredError{fmt.Errorf("upstream refused: %s %s", e.Code, e.Message)}
		}
		if _, err := s.client.Write(msg); err != nil {
			return &clientSideError{fmt.Errorf("write to client: %w", err)}
		}
		if msg[0] == 'Z' {
			return nil
		}
		if needsReply {
			if err := s.relayClientAuth(strippedPlus); err != nil {
				return err
			}
		}
	}
}

// relayClientAuth forwards the client's one answer to an authentication
// request.
func (s *session) relayClientAuth(strippedPlus bool) error {
	msg, err := pgwire.ReadMessage(s.client, nil, maxAuthMessage)
	if err != nil {
		if strippedPlus && errors.Is(err, io.EOF) {
			// libpq with channel_binding=require closes here without a word:
			// say why in the log, the client cannot be told any more.
			return &clientSideError{fmt.Errorf("read from client: %w (the client left after an offer without SCRAM-SHA-256-PLUS: channel binding cannot cross passthrough; use auth = \"cluster_secret\" for channel_binding=require)", err)}
		}
		return &clientSideError{fmt.Errorf("read from client: %w", err)}
	}
	if msg[0] != 'p' {
		return &clientSideError{fmt.Errorf("%w: client sent %q during authentication", pgwire.ErrProtocol, msg[0])}
	}
	if strippedPlus {
		var ir pgproto3.SASLInitialResponse
		if ir.Decode(msg[5:]) == nil && len(ir.Data) > 0 && ir.Data[0] == 'y' {
			// The client supports channel binding and, seeing no -PLUS, says
			// so; the upstream would take that as a downgrade attack.
			_, _ = s.client.Write(errorResponse(sqlstateInvalidAuthSpec,
				fmt.Sprintf("pgtrust: upstream %s: %s: SCRAM channel binding cannot cross the proxy", s.up.name, failure.AuthFailed),
				"the client connected to the proxy over TLS and offered channel binding; the upstream's TLS session ends at the proxy",
				"connect to the proxy with channel_binding=disable, or over the Unix socket / plaintext local listener"))
			s.up.metrics.failure(string(failure.AuthFailed))
			return &answeredError{errors.New("client asked for channel binding, which cannot cross the proxy")}
		}
	}
	if _, err := s.upConn.Write(msg); err != nil {
		return &upstreamSideError{fmt.Errorf("write to upstream: %w", err)}
	}
	return nil
}

// pipe copies both ways until both end, and says why the session closed
// and whether the upstream ended it (its server may be gone).
func (s *session) pipe() (string, bool) {
	var first atomic.Int32     // the relay.Side that ended first
	var terminated atomic.Bool // the client's last bytes were a Terminate message
	clientDone := make(chan error, 1)
	upDone := make(chan struct{})
	go func() {
		err := copyCounted(s.upConn, s.client, &s.bytesIn, s.up.metrics.bytesIn, &terminated)
		first.CompareAndSwap(0, int32(relay.Client))
		if err == nil {
			// The client finished: let the upstream see EOF and end the
			// backend, while its last bytes still flow back.
			_ = pgwire.CloseWrite(s.upConn)
			s.awaitUpstreamEOF(upDone)
		} else {
			s.closeAll()
		}
		clientDone <- err
	}()
	upErr := copyCounted(s.client, s.upConn, &s.bytesOut, s.up.metrics.bytesOut, nil)
	close(upDone)
	first.CompareAndSwap(0, int32(relay.Upstream))
	// Nothing can flow once the upstream is gone.
	s.closeAll()
	clientErr := <-clientDone
	return s.endReason(relay.Side(first.Load()), clientErr, upErr, terminated.Load())
}

// endReason says why a session's data phase ended and whether the
// upstream ended it (its server may be gone). first is the side whose
// direction ended first.
func (s *session) endReason(first relay.Side, clientErr, upErr error, terminated bool) (string, bool) {
	switch {
	case s.p.forced.Load():
		return "proxy shutdown", false
	case first == relay.Client && clientErr == nil:
		return "client closed", false
	case first == relay.Client:
		return "client error: " + clientErr.Error(), false
	case upErr == nil && terminated:
		return "client terminated", false
	case upErr == nil:
		return "upstream closed", true
	}
	return "upstream error: " + upErr.Error(), true
}

// awaitUpstreamEOF waits for the upstream to end once the client's EOF was
// passed on. An upstream silent for upstreamCloseGrace (a hung server, a
// stuck middlebox: its kernel still acknowledges, so TCP never notices)
// would otherwise pin the session, its sockets and its connection slot
// forever; a result still streaming back keeps the session.
func (s *session) awaitUpstreamEOF(upDone <-chan struct{}) {
	tick := time.NewTicker(upstreamCloseGrace)
	defer tick.Stop()
	last := s.bytesOut.Load()
	for {
		select {
		case <-upDone:
			return
		case <-tick.C:
		}
		if n := s.bytesOut.Load(); n != last {
			last = n
			continue
		}
		s.warnUpstreamSilent()
		s.closeAll()
		return
	}
}

// copyCounted copies src to dst, counting bytes with atomics: no
// allocation per message. It reads into a small buffer of its own while
// traffic is light, borrows a pooled 32 KiB buffer as soon as a read fills
// the small one (streaming), and gives it back after a short read, so an
// idle session holds 2 KiB per direction instead of 32. A clean EOF
// returns nil.
//
// With terminated set, it records whether the latest chunk ended with a
// Terminate message, so that the server closing after the client's
// goodbye is not taken for a dropped upstream.
func copyCounted(dst, src net.Conn, n *atomic.Int64, total interface{ Add(float64) }, terminated *atomic.Bool) error {
	small := make([]byte, idleBufferSize)
	buf := small
	var pooled *[]byte
	defer func() {
		if pooled != nil {
			copyBuffers.Put(pooled)
		}
	}()
	for {
		r, err := src.Read(buf)
		if r > 0 {
			if _, werr := dst.Write(buf[:r]); werr != nil {
				return werr
			}
			n.Add(int64(r))
			total.Add(float64(r))
			if terminated != nil {
				terminated.Store(relay.EndsWithTerminate(buf[:r]))
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		switch {
		case pooled == nil && r == len(buf):
			pooled = copyBuffers.Get().(*[]byte)
			buf = *pooled
		case pooled != nil && r < idleBufferSize:
			copyBuffers.Put(pooled)
			pooled, buf = nil, small
		}
	}
}

// setClient replaces the client transport. It is written under mu because
// Proxy.Close may run closeAll from another goroutine at any time; the
// session's own goroutine reads it without the lock.
func (s *session) setClient(c net.Conn) {
	s.mu.Lock()
	s.client = c
	s.mu.Unlock()
}

// closeAll closes both sides; safe to call many times and concurrently.
func (s *session) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	if s.relayed != nil {
		// The event loop owns both sockets now: it closes them and then
		// runs the session's end.
		s.relayed.Close()
		return
	}
	if s.pooled != nil && s.pooled.Wake() {
		// A parked client must be woken to end: closing its socket alone
		// would drop it from the parking lot's watch. A session on an
		// event loop is closed by the loop, sockets included.
		return
	}
	// TLS first, so that its close_notify goes out before the socket closes.
	if s.client != nil && s.client != s.raw {
		s.client.Close()
	}
	s.raw.Close()
	if s.upConn != nil {
		s.upConn.Close()
	}
}
