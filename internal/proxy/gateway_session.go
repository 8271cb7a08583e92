package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/authlimit"
	"github.com/pgtrust/pgtrust/internal/identmap"
	"github.com/pgtrust/pgtrust/internal/paramsync"
	"github.com/pgtrust/pgtrust/internal/pooling"
	"github.com/pgtrust/pgtrust/internal/scram"
	"github.com/pgtrust/pgtrust/internal/serverpool"
	"github.com/pgtrust/pgtrust/pgtls"
)

// Authentication failure classes of the gateway.
const (
	// ClassAuthSecret: SCRAM against the role table (cluster_secret) or the
	// client's own verifier (scram) failed (wrong secret, unknown user or a
	// secret of another role: one class, one answer).
	ClassAuthSecret failure.Class = "auth_secret_failed"
	// ClassAuthCertIdentity: the verified client certificate maps to no
	// line of the identity map for the requested role.
	ClassAuthCertIdentity failure.Class = "auth_cert_identity_unmapped"
	// ClassAuthCertMissing: cert mode without a client certificate.
	ClassAuthCertMissing failure.Class = "auth_cert_missing"
	// ClassAuthClientCert: the client certificate failed verification in
	// the TLS handshake (other CA, expired, revoked).
	ClassAuthClientCert failure.Class = "auth_client_cert_rejected"
	// ClassAuthProtocol: the client broke the authentication exchange.
	ClassAuthProtocol failure.Class = "auth_protocol"
)

const sqlstateInvalidPassword = "28P01"

// Reasons of pgtrust_gateway_auth_total.
const (
	authReasonOK = "ok"
	// authReasonBadSecret is every cluster_secret failure, unknown users
	// included: /metrics may be public, so it must not count which names
	// exist. The server log keeps the distinction.
	authReasonBadSecret    = "bad_secret"
	authReasonNoCert       = "no_certificate"
	authReasonUnmapped     = "unmapped_identity"
	authReasonProtocol     = "protocol"
	authReasonTimeout      = "timeout"
	authReasonClientCert   = "client_certificate"
	authReasonClientGone   = "client_closed"
	authReasonReplication  = "replication"
	authReasonUpstreamFail = "upstream"
	// A pooled login the pool could not serve: no server connection came
	// free in time, or the client asked for what the pool cannot keep.
	authReasonPoolExhausted = "pool_exhausted"
	authReasonPoolRefused   = "pool_refused"
)

// front is the gateway listener's runtime, nil on a local listener.
func (s *session) front() *gatewayFront {
	if s.ln == nil || s.ln.gw < 0 || s.ln.gw >= len(s.set.gateways) {
		return nil
	}
	return s.set.gateways[s.ln.gw]
}

// limiter is the gateway listener's failure backoff, nil on a local one.
func (s *session) limiter() *authlimit.Limiter {
	if s.ln == nil || s.ln.gw < 0 || s.ln.gw >= len(s.up.limiters) {
		return nil
	}
	return s.up.limiters[s.ln.gw]
}

// serverTLS is the TLS this listener offers clients; nil for none.
func (s *session) serverTLS() *tls.Config {
	if gw := s.front(); gw != nil {
		return gw.tls
	}
	if s.ln != nil && s.ln.unix {
		return nil
	}
	return s.set.serverTLS
}

// authMode is how this session's client authenticates.
func (s *session) authMode() AuthMode {
	if gw := s.front(); gw != nil {
		return gw.cfg.Auth
	}
	if s.set.auth != nil {
		return authUpstream
	}
	return AuthPassthrough
}

// handshakeRejection classifies a failed client TLS handshake; on a
// gateway a refused client certificate is an authentication failure.
func (s *session) handshakeRejection(err error) error {
	if gw := s.front(); gw != nil {
		if fe, ok := failure.As(err); ok || strings.Contains(err.Error(), "didn't provide a certificate") {
			reason := authReasonClientCert
			class := ClassAuthClientCert
			if !ok {
				reason, class = authReasonNoCert, ClassAuthCertMissing
			} else {
				err = fmt.Errorf("%s: %s (%s)", fe.Class, fe.Message, fe.Evidence)
			}
			s.p.metrics.auth.WithLabelValues(s.up.name, string(gw.cfg.Auth), "failure", reason).Inc()
			if l := s.limiter(); l != nil {
				l.Failed(s.source)
			}
			return &rejection{reason: string(class), err: fmt.Errorf("client certificate refused in the TLS handshake: %w", err)}
		}
	}
	return &rejection{reason: rejectProtocol, err: fmt.Errorf("client TLS handshake: %w", err)}
}

// authFailedResponse is the one answer to every cluster_secret failure:
// byte-identical for a wrong secret, an unknown user and another role's
// secret, as PostgreSQL answers.
func authFailedResponse(user string) []byte {
	return errorResponse(sqlstateInvalidPassword, fmt.Sprintf("password authentication failed for user %q", user), "", "")
}

// gatewayAuth authenticates the client in the gateway (cluster_secret,
// cert, or the local proxy's UpstreamAuth), opens the upstream as the
// mapped role with the gateway's own credentials, and greets the client
// as PostgreSQL would. It reports whether the session may enter the pipe;
// on false the client has been answered and the refusal logged.
func (s *session) gatewayAuth(startup []byte) bool {
	tune := s.p.tuning()
	s.authDeadline = time.Now().Add(tune.AuthTimeout)
	_ = s.raw.SetDeadline(s.authDeadline)
	gw := s.front()
	mode := s.mode
	if s.clientTL != "" {
		s.p.metrics.clientTLS.WithLabelValues(s.up.name, s.clientTL).Inc()
	}
	logReason := "" // the server log's reason when finer than the metric's
	fail := func(reason string, msg []byte, err error) bool {
		s.p.metrics.auth.WithLabelValues(s.up.name, string(mode), "failure", reason).Inc()
		if msg != nil {
			s.sendToClient(msg)
		}
		if logReason == "" {
			logReason = reason
		}
		s.p.refusals.Log(slog.LevelWarn, "client authentication failed", []any{"upstream", s.up.name, "auth", string(mode), "reason", logReason},
			slog.Uint64("id", s.id), slog.String("client", s.raw.RemoteAddr().String()), slog.String("user", s.user), slog.String("error", err.Error()))
		return false
	}
	if _, ok := s.startupParams["replication"]; ok {
		return fail(authReasonReplication, errorResponse(sqlstateFeatureNotSupported, "pgtrust: replication connections are not supported here", "",
			"connect to the server directly for replication"), errors.New("replication connection refused"))
	}
	if s.protoMinor > 0 || hasProtocolOptions(s.startupParams) {
		// The gateway speaks 3.0 to the client, as PostgreSQL answers a
		// newer minor or unknown _pq_ options before authentication.
		var unknown []string
		for k := range s.startupParams {
			if strings.HasPrefix(k, "_pq_.") {
				unknown = append(unknown, k)
			}
		}
		sort.Strings(unknown)
		b, _ := (&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: unknown}).Encode(nil)
		if _, err := s.client.Write(b); err != nil {
			return fail(authReasonClientGone, nil, err)
		}
	}

	lim := s.limiter()
	keys := s.limiterKeys()
	if lim != nil {
		var d time.Duration
		for _, k := range keys {
			d = max(d, lim.Delay(k))
		}
		if d > 0 {
			// Back off this source only: the wait holds one of its
			// authenticating slots, never another address's.
			s.p.metrics.authDelayed.WithLabelValues(s.up.name).Inc()
			if dl := time.Until(s.authDeadline); d > dl {
				d = dl
			}
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-s.p.ctx.Done():
				t.Stop()
				return false
			}
		}
	}

	// scramFailed ends a failed SCRAM exchange (cluster_secret, scram): one
	// 28P01 for every wrong secret and unknown user, whose difference only
	// the server log keeps.
	scramFailed := func(err error, unknown bool, unknownWhy string) bool {
		switch {
		case errors.Is(err, scram.ErrAuthFailed):
			failedAll(lim, keys)
			why := failure.New(ClassAuthSecret, "SCRAM authentication failed for user %q", s.user)
			if unknown {
				// Operators read the log; /metrics may be public.
				logReason = "unknown_user"
				why = failure.New(ClassAuthSecret, "SCRAM authentication failed for user %q: %s", s.user, unknownWhy)
			}
			return fail(authReasonBadSecret, authFailedResponse(s.user), why)
		case errors.Is(err, os.ErrDeadlineExceeded):
			return fail(authReasonTimeout, errorResponse(sqlstateQueryCanceled, "canceling authentication due to timeout",
				fmt.Sprintf("pgtrust: the client did not complete authentication within auth_timeout (%s)", tune.AuthTimeout), ""), err)
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			return fail(authReasonClientGone, nil, err)
		}
		failedAll(lim, keys)
		msg := "pgtrust: malformed SCRAM message"
		if fe, ok := failure.As(err); ok {
			msg = "pgtrust: " + fe.Message
		}
		return fail(authReasonProtocol, errorResponse(sqlstateProtocolViolation, msg, "", ""), err)
	}

	var role, password string
	switch mode {
	case AuthClusterSecret:
		entry := gw.roles[s.user]
		opts := scram.ServerOptions{FakeSaltKey: gw.fakeSalt, Iterations: gw.iterations, RequirePlus: gw.cfg.RequireChannelBinding}
		if entry != nil {
			opts.Candidates = entry.candidates
		}
		opts.EndpointHash = s.endpointHash()
		be := pgproto3.NewBackend(s.client, s.client)
		res, err := scram.Authenticate(be, s.user, opts)
		if err != nil {
			return scramFailed(err, entry == nil, "no such user in the role table")
		}
		role, password = entry.role, entry.password
		s.matchedOwner = entry.owners[res.Matched]
		s.identity = s.user
		if res.Matched > 0 {
			s.identity = s.user + " (downgrade from " + entry.owners[res.Matched] + ")"
			s.p.metrics.downgrades.WithLabelValues(s.up.name, s.user).Inc()
		}
		s.identity += " " + res.Mechanism
	case AuthScram:
		var v *scram.Verifier
		found := false
		if gw.users != nil {
			v, found = gw.users.Lookup(s.user)
		}
		fromQuery := false
		if !found && gw.aq != nil {
			// The query's own timeout bounds the fetch; the client's
			// authentication deadline bounds this wait.
			ctx, cancel := context.WithDeadline(s.p.ctx, s.authDeadline)
			qv, err := gw.aq.Lookup(ctx, s.user)
			cancel()
			if err != nil {
				// The same answer for every user: the lookup failed before
				// anything about the name was learned.
				logReason = "auth_query_failed"
				if lim != nil {
					// Still the source's doing as far as it can tell: a flood
					// that makes lookups time out is slowed down as well.
					lim.Failed(lookupKey(s.source))
				}
				return fail(authReasonUpstreamFail, errorResponse(sqlstateCannotConnectNow, "pgtrust: the gateway cannot check passwords right now", "",
					"try again later"), err)
			}
			v, fromQuery = qv, true
		}
		opts := scram.ServerOptions{FakeSaltKey: gw.fakeSalt, Iterations: gw.iterations, RequirePlus: gw.cfg.RequireChannelBinding,
			EndpointHash: s.endpointHash()}
		if v != nil {
			opts.Candidates = []*scram.Verifier{v}
		}
		res, err := scram.Authenticate(pgproto3.NewBackend(s.client, s.client), s.user, opts)
		if err != nil {
			return scramFailed(err, v == nil || (fromQuery && gw.aq.IsDecoy(v)), "no such user in auth_file or auth_query")
		}
		role, password = s.user, gw.cfg.UpstreamPassword
		s.matchedOwner = s.user
		s.identity = s.user + " " + res.Mechanism
	case AuthCert:
		if s.peer == nil {
			failedAll(lim, keys)
			return fail(authReasonNoCert, errorResponse(sqlstateInvalidAuthSpec, "connection requires a valid client certificate", "",
				"connect with sslcert and sslkey of a certificate issued by the gateway's client CA"),
				failure.New(ClassAuthCertMissing, "no client certificate"))
		}
		ids := identmap.Identities(s.peer, gw.cfg.IdentitySources)
		ident, ok := gw.cfg.IdentityMap.Allowed(ids, s.user)
		if !ok {
			failedAll(lim, keys)
			return fail(authReasonUnmapped, errorResponse(sqlstateInvalidAuthSpec, fmt.Sprintf("certificate authentication failed for user %q", s.user), "", ""),
				failure.New(ClassAuthCertIdentity, "no identity map line lets the certificate log in as %q", s.user).
					WithEvidence("certificate identities %q (subject %s)", ids, s.peer.Subject))
		}
		role, password = s.user, gw.cfg.UpstreamPassword
		s.matchedOwner = s.user
		s.identity = ident
	case authUpstream:
		role, password = s.set.auth.Role, s.set.auth.Password
		s.identity = "local:" + s.user
	}
	if lim != nil {
		// Only this user's own entry (and the source's handshake failures,
		// which guess nothing): a success as one user must not clear the
		// guesses at another user's secret.
		lim.Succeeded(limiterKey(s.source, s.matchedOwner))
		lim.Succeeded(s.source)
		if gw != nil && gw.aq != nil {
			lim.Succeeded(lookupKey(s.source))
		}
	}
	var err error
	if pool, pmode := s.pool(); pool != nil {
		err = s.poolLogin(pool, pmode, role)
	} else {
		err = s.openAsRole(role, password)
	}
	if err != nil {
		var ce *clientSideError
		if s.p.ctx.Err() != nil || errors.As(err, &ce) {
			s.closeReason("greeting", err)
			return false
		}
		if errors.Is(err, serverpool.ErrExhausted) {
			// The pool has no room now: the client's answer, as PostgreSQL
			// answers a full server; the upstream is fine.
			s.p.metrics.auth.WithLabelValues(s.up.name, string(mode), "failure", authReasonPoolExhausted).Inc()
			r := failure.ReportOf(err)
			s.sendToClient(errorResponse(sqlstateTooManyClients, "pgtrust: "+r.Message, r.Evidence, r.Fix))
			s.closeReason("pool login", err)
			return false
		}
		if errors.Is(err, pooling.ErrClientRequest) {
			s.p.metrics.auth.WithLabelValues(s.up.name, string(mode), "failure", authReasonPoolRefused).Inc()
			r := failure.ReportOf(err)
			s.sendToClient(errorResponse(sqlstateInvalidParameterValue, "pgtrust: "+r.Message, r.Evidence, r.Fix))
			s.closeReason("pool login", err)
			return false
		}
		var hz *paramsync.Hazard
		if errors.As(err, &hz) {
			s.p.metrics.auth.WithLabelValues(s.up.name, string(mode), "failure", authReasonPoolRefused).Inc()
			// What the client asked for cannot be pooled: its own answer.
			e := hz.ErrorResponse()
			e.Severity, e.SeverityUnlocalized = "FATAL", "FATAL"
			b, _ := e.Encode(nil)
			s.sendToClient(b)
			s.closeReason("pool login", err)
			return false
		}
		s.p.metrics.auth.WithLabelValues(s.up.name, string(mode), "failure", authReasonUpstreamFail).Inc()
		var pe *pgconn.PgError
		if clientCausedUpstreamError(err) && errors.As(err, &pe) {
			// The client's own request: answer as PostgreSQL would have,
			// without counting it against the upstream.
			s.sendToClient(errorResponse(pe.Code, pe.Message, pe.Detail, pe.Hint))
			s.logger().Info("the upstream refused the client's request", s.baseAttrs(slog.String("user", s.user),
				slog.String("role", role), slog.String("sqlstate", pe.Code), slog.String("error", pe.Message))...)
			return false
		}
		s.upstreamFailed("connect as role", err)
		return false
	}
	s.p.metrics.auth.WithLabelValues(s.up.name, string(mode), "success", authReasonOK).Inc()
	return true
}

// endpointHash is the tls-server-end-point binding data of the
// certificate this session's client saw (nil: no -PLUS offered).
func (s *session) endpointHash() []byte {
	if s.serverCert == nil || len(s.serverCert.Certificate) == 0 {
		return nil
	}
	leaf := s.serverCert.Leaf
	if leaf == nil {
		leaf, _ = x509.ParseCertificate(s.serverCert.Certificate[0])
	}
	if leaf == nil {
		return nil
	}
	h, err := scram.EndpointHash(leaf)
	if err != nil {
		return nil
	}
	return h
}

// lookupKey is the backoff entry of a source's failures at an auth_query
// front: every failure charges it, wrong secrets and unknown names alike
// (so it tells them apart no better than the answer does), and it is
// waited on before the lookup, so that one source flooding random names
// is slowed down before its names reach the lookup role's few connections.
// A user name cannot hold NUL, so it is no user's key.
func lookupKey(source string) string { return limiterKey(source, "\x00auth_query") }

// limiterKey is the backoff key of guesses at user's secret from source.
// Keyed by user so that a success (a read-only secret, say) clears its own
// entry only; an attacker gains nothing by spreading guesses over names,
// since each secret belongs to one user and every guess at it lands on
// that user's entry (see limiterKeys for downgrades). NUL cannot occur in
// a source key.
func limiterKey(source, user string) string { return source + "\x00" + user }

// limiterKeys are the backoff entries an attempt by this session waits on
// and charges on failure: the source's own (handshake failures, which name
// no user) and one per secret the attempt tests — the user's, and in
// cluster_secret those of the users it accepts by downgrade, so that
// guessing teesql_readwrite's secret through teesql_read still lands on
// teesql_readwrite's entry.
func (s *session) limiterKeys() []string {
	keys := []string{s.source, limiterKey(s.source, s.user)}
	if gw := s.front(); gw != nil && gw.aq != nil {
		keys = append(keys, lookupKey(s.source))
	}
	if gw := s.front(); gw != nil && gw.roles != nil {
		if e := gw.roles[s.user]; e != nil {
			for _, o := range e.owners[1:] {
				keys = append(keys, limiterKey(s.source, o))
			}
		}
	}
	return keys
}

// failedAll charges a failure to every key except the source's own, which
// only handshake failures charge: otherwise one user's failures would slow
// every other user from the address.
func failedAll(lim *authlimit.Limiter, keys []string) {
	if lim == nil {
		return
	}
	for _, k := range keys[1:] {
		lim.Failed(k)
	}
}

// clientCausedUpstreamError reports whether the upstream refused the
// gateway's login because of what the authenticated client asked for
// (a bad or forbidden setting, a missing database, no CONNECT privilege):
// that says nothing about the upstream's health. Transport, TLS,
// attestation and the gateway's own authentication (SQLSTATE class 28),
// resources (53), operator intervention (57), system (58), connection (08)
// and internal errors (XX) do.
func clientCausedUpstreamError(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || len(pe.Code) != 5 {
		return false
	}
	switch pe.Code[:2] {
	case "08", "28", "53", "57", "58", "XX":
		return false
	}
	return true
}

func hasProtocolOptions(params map[string]string) bool {
	for k := range params {
		if strings.HasPrefix(k, "_pq_.") {
			return true
		}
	}
	return false
}

// openAsRole opens the upstream through pgtls.Connect as role with the
// gateway's credentials, takes the raw connection (pgconn's Hijack) and
// greets the client: AuthenticationOk, the upstream's ParameterStatus, a
// gateway-generated BackendKeyData, ReadyForQuery.
func (s *session) openAsRole(role, password string) error {
	tune := s.p.tuning()
	ctx, cancel := context.WithTimeout(s.p.ctx, tune.ConnectTimeout+tune.AuthTimeout)
	defer cancel()
	base, _, err := s.set.target(ctx)
	if err != nil {
		return err
	}
	cfg := base.Clone()
	if role != "" {
		cfg.User = role
	}
	if password != "" {
		cfg.Password = password
	}
	switch {
	case s.database != "":
		cfg.Database = s.database
	case cfg.Database == "":
		cfg.Database = cfg.User
	}
	params := map[string]string{}
	for k, v := range cfg.RuntimeParams {
		params[k] = v
	}
	for k, v := range s.startupParams {
		switch {
		case k == "user" || k == "database" || k == "replication" || strings.HasPrefix(k, "_pq_."):
		default:
			params[k] = v
		}
	}
	cfg.RuntimeParams = params
	t0 := time.Now()
	pg, facts, err := pgtls.Connect(ctx, cfg, s.set.opts)
	if !clientCausedUpstreamError(err) {
		// An authenticated client must not flip /health with its own
		// startup parameters or database name.
		s.up.recordHandshake(facts, err)
	}
	if err != nil {
		return err
	}
	s.up.metrics.dial.Observe(time.Since(t0).Seconds())
	// pgconn may still have a background reader blocked on the socket (it
	// starts one when a write during the login took over 15 ms, which load
	// makes happen): it would swallow the first answer the pipe is waiting
	// for. SyncConn stops it, with a ping only when one is running; pgconn
	// asks for it before Hijack.
	if err := pg.SyncConn(ctx); err != nil {
		pg.Close(context.Background())
		return failure.Wrap(failure.ProtocolError, err, "settle the upstream connection before taking it over")
	}
	hc, err := pg.Hijack()
	if err != nil {
		pg.Close(context.Background())
		return failure.Wrap(failure.ProtocolError, err, "take over the upstream connection")
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		hc.Conn.Close()
		return failure.New(failure.Timeout, "the proxy is closing")
	}
	s.upConn, s.facts = hc.Conn, facts
	s.mu.Unlock()
	s.upPID, s.upSecret = hc.PID, hc.SecretKey
	s.pid, s.secret = newCancelKey()

	var out []byte
	out, _ = (&pgproto3.AuthenticationOk{}).Encode(out)
	keys := make([]string, 0, len(hc.ParameterStatuses))
	for k := range hc.ParameterStatuses {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		out, _ = (&pgproto3.ParameterStatus{Name: k, Value: hc.ParameterStatuses[k]}).Encode(out)
	}
	out, _ = (&pgproto3.BackendKeyData{ProcessID: s.pid, SecretKey: s.secret}).Encode(out)
	tx := hc.TxStatus
	if tx == 0 {
		tx = 'I'
	}
	out, _ = (&pgproto3.ReadyForQuery{TxStatus: tx}).Encode(out)
	// The upstream login may have used the client's authentication budget
	// (it has its own clock): the greeting gets a write deadline of its own.
	_ = s.raw.SetWriteDeadline(time.Now().Add(errorWriteTimeout))
	if _, err := s.client.Write(out); err != nil {
		return &clientSideError{fmt.Errorf("write to client: %w", err)}
	}
	return nil
}
