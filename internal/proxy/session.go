package proxy

import (
	"context"
	"crypto/tls"
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

	mu       sync.Mutex
	upConn   net.Conn // the upstream transport, once dialed
	closed   bool
	facts    *pgtls.Facts
	counted  bool   // holds one of the upstream's connection slots
	pid      uint32 // BackendKeyData, for cancel routing
	secret   []byte
	clientTL string // client-side TLS version, "" when plaintext

	user, database, application string

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
func (s *session) run() {
	defer s.p.sessionDone(s)
	defer s.closeAll()

	deadline := s.start.Add(s.p.tuning().StartupTimeout)
	_ = s.raw.SetDeadline(deadline)
	s.client = s.raw

	startup, err := s.negotiate()
	if err != nil {
		s.refuse(err)
		return
	}
	if startup == nil {
		return // a CancelRequest, handled
	}
	if s.set.serverTLS != nil && s.set.requireTLS && !s.ln.unix && s.clientTL == "" {
		s.refuse(&rejection{reason: rejectTLSRequired,
			msg: errorResponse(sqlstateInvalidAuthSpec,
				fmt.Sprintf("pgtrust: upstream %s: TLS is required on this listener", s.up.name),
				fmt.Sprintf("listener %s refuses plaintext clients (client_tls.require)", s.ln.addr),
				"connect with sslmode=require (or verify-ca / verify-full with the proxy's CA)"),
			err: errors.New("plaintext client on a TLS-only listener")})
		return
	}
	if s.p.draining.Load() {
		s.refuse(&rejection{reason: rejectShuttingDown,
			msg: errorResponse(sqlstateCannotConnectNow, "pgtrust: the proxy is shutting down", "", "retry against another instance"),
			err: errors.New("draining")})
		return
	}
	if !s.up.acquire(s.set.maxConns) {
		s.refuse(&rejection{reason: rejectTooMany,
			msg: errorResponse(sqlstateTooManyClients, "sorry, too many clients already",
				fmt.Sprintf("pgtrust: upstream %s has max_connections=%d sessions open", s.up.name, s.set.maxConns),
				"raise max_connections for this upstream, or use a connection pool in the application"),
			err: errors.New("connection limit reached")})
		return
	}
	s.counted = true
	s.up.metrics.total.Inc()
	s.up.metrics.active.Inc()

	if err := s.dialUpstream(deadline); err != nil {
		s.up.metrics.failure(string(failure.ClassOf(err)))
		_, _ = s.client.Write(upstreamErrorResponse(s.up.name, err))
		s.logger().Warn("upstream connection failed", s.baseAttrs(slog.String("class", string(failure.ClassOf(err))), slog.String("error", err.Error()))...)
		return
	}

	authDeadline := time.Now().Add(authTimeout)
	_ = s.raw.SetDeadline(authDeadline)
	_ = s.upConn.SetDeadline(authDeadline)
	if _, err := s.upConn.Write(startup); err != nil {
		s.closeReason("forward startup packet", err)
		return
	}
	if err := s.relayAuth(); err != nil {
		s.closeReason("authentication", err)
		return
	}
	_ = s.raw.SetDeadline(time.Time{})
	_ = s.upConn.SetDeadline(time.Time{})
	s.p.registerCancel(s)

	s.logger().Info("session opened", s.baseAttrs(
		slog.String("user", s.user), slog.String("database", s.database), slog.String("application_name", s.application),
		slog.String("client_tls", orNone(s.clientTL)),
		slog.String("upstream_address", s.facts.Address),
		slog.String("upstream_tls", orNone(s.facts.TLSVersionName())),
		slog.String("upstream_cipher", s.facts.CipherName()),
	)...)
	reason := s.pipe()
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
	if r.msg != nil {
		_, _ = s.client.Write(r.msg)
	}
	s.up.metrics.reject(r.reason)
	s.logger().Warn("client refused", s.baseAttrs(slog.String("reason", r.reason), slog.String("error", r.err.Error()))...)
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
	var hdr [4]byte
	for first := true; ; first = false {
		if err := pgwire.ReadExact(s.client, hdr[:]); err != nil {
			if !first && errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if hdr[0] == pgwire.TLSHandshakeRecord && s.clientTL == "" {
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
		switch code {
		case pgwire.SSLRequestCode:
			var req pgproto3.SSLRequest
			if err := req.Decode(body); err != nil || s.clientTL != "" {
				return nil, protocolRejection("SSLRequest on an encrypted connection or malformed")
			}
			if s.set.serverTLS == nil || s.ln.unix {
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
		case pgwire.GSSEncRequestCode:
			var req pgproto3.GSSEncRequest
			if err := req.Decode(body); err != nil || s.clientTL != "" {
				return nil, protocolRejection("GSSENCRequest on an encrypted connection or malformed")
			}
			if _, err := s.client.Write([]byte{'N'}); err != nil {
				return nil, err
			}
		case pgwire.CancelRequestCode:
			var req pgproto3.CancelRequest
			if err := req.Decode(body); err != nil {
				return nil, protocolRejection("malformed CancelRequest")
			}
			s.p.forwardCancel(&req, s)
			return nil, nil
		default:
			if code>>16 != 3 {
				return nil, &rejection{reason: rejectProtocol,
					msg: errorResponse(sqlstateProtocolViolation,
						fmt.Sprintf("unsupported frontend protocol %d.%d: server supports 3.0 to 3.2", code>>16, code&0xffff), "", ""),
					err: fmt.Errorf("unsupported frontend protocol %d.%d", code>>16, code&0xffff)}
			}
			// Any 3.x passes through: the upstream negotiates minor versions
			// (NegotiateProtocolVersion), and its answer reaches the client.
			var msg pgproto3.StartupMessage
			if msg.Decode(body) == nil {
				s.user, s.database, s.application = msg.Parameters["user"], msg.Parameters["database"], msg.Parameters["application_name"]
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
	if s.set.serverTLS == nil || s.ln.unix {
		return &rejection{reason: rejectProtocol, err: errors.New("direct TLS connection, but this listener offers no TLS")}
	}
	tc := tls.Server(c, s.set.serverTLS)
	if err := tc.Handshake(); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return err
		}
		return &rejection{reason: rejectProtocol, err: fmt.Errorf("client TLS handshake: %w", err)}
	}
	st := tc.ConnectionState()
	if direct && st.NegotiatedProtocol != pgtls.ALPNProtocol {
		return &rejection{reason: rejectProtocol, err: errors.New("received direct SSL connection request without ALPN protocol negotiation extension")}
	}
	s.client = tc
	s.clientTL = pgtls.VersionName(st.Version)
	return nil
}

// dialUpstream opens the upstream transport with libpq's semantics.
func (s *session) dialUpstream(deadline time.Time) error {
	ctx, cancel := context.WithDeadline(s.p.ctx, deadline)
	defer cancel()
	t0 := time.Now()
	conn, facts, err := pgtls.Dial(ctx, s.set.conn, s.set.opts)
	if err == nil {
		s.up.metrics.dial.Observe(time.Since(t0).Seconds())
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
		msg, err := pgwire.ReadMessage(s.upConn, buf, maxBackendMessage)
		buf = msg[:0]
		if err != nil {
			return fmt.Errorf("read from upstream: %w", err)
		}
		needsReply := false
		switch msg[0] {
		case 'R':
			if len(msg) < 9 {
				return fmt.Errorf("%w: short authentication request", pgwire.ErrProtocol)
			}
			switch binary.BigEndian.Uint32(msg[5:9]) {
			case 10: // AuthenticationSASL
				var sasl pgproto3.AuthenticationSASL
				if err := sasl.Decode(msg[5:]); err != nil {
					return fmt.Errorf("%w: %v", pgwire.ErrProtocol, err)
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
			return fmt.Errorf("upstream refused: %s %s", e.Code, e.Message)
		}
		if _, err := s.client.Write(msg); err != nil {
			return fmt.Errorf("write to client: %w", err)
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
		return fmt.Errorf("read from client: %w", err)
	}
	if msg[0] != 'p' {
		return fmt.Errorf("%w: client sent %q during authentication", pgwire.ErrProtocol, msg[0])
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
			return errors.New("client asked for channel binding, which cannot cross the proxy")
		}
	}
	if _, err := s.upConn.Write(msg); err != nil {
		return fmt.Errorf("write to upstream: %w", err)
	}
	return nil
}

// pipe copies both ways until both end, and says why the session closed.
func (s *session) pipe() string {
	var first atomic.Int32 // 1: client ended first, 2: upstream ended first
	clientDone := make(chan error, 1)
	go func() {
		err := copyCounted(s.upConn, s.client, &s.bytesIn, s.up.metrics.bytesIn)
		first.CompareAndSwap(0, 1)
		if err == nil {
			// The client finished: let the upstream see EOF and end the
			// backend, while its last bytes still flow back.
			_ = pgwire.CloseWrite(s.upConn)
		} else {
			s.closeAll()
		}
		clientDone <- err
	}()
	upErr := copyCounted(s.client, s.upConn, &s.bytesOut, s.up.metrics.bytesOut)
	first.CompareAndSwap(0, 2)
	// Nothing can flow once the upstream is gone.
	s.closeAll()
	clientErr := <-clientDone
	switch {
	case s.p.forced.Load():
		return "proxy shutdown"
	case first.Load() == 1 && clientErr == nil:
		return "client closed"
	case first.Load() == 1:
		return "client error: " + clientErr.Error()
	case upErr == nil:
		return "upstream closed"
	}
	return "upstream error: " + upErr.Error()
}

// copyCounted copies src to dst, counting bytes with atomics: no
// allocation per message. It reads into a small buffer of its own while
// traffic is light, borrows a pooled 32 KiB buffer as soon as a read fills
// the small one (streaming), and gives it back after a short read, so an
// idle session holds 2 KiB per direction instead of 32. A clean EOF
// returns nil.
func copyCounted(dst, src net.Conn, n *atomic.Int64, total interface{ Add(float64) }) error {
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

// closeAll closes both sides; safe to call many times and concurrently.
func (s *session) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	// TLS first, so that its close_notify goes out before the socket closes.
	if s.client != nil && s.client != s.raw {
		s.client.Close()
	}
	s.raw.Close()
	if s.upConn != nil {
		s.upConn.Close()
	}
}
