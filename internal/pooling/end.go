package pooling

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/serverpool"
)

// SQLSTATEs of the pool's own errors.
const (
	sqlstateTooManyConnections = "53300" // no server connection became free in time
	sqlstateConnectionFailure  = "08006" // the server connection was lost
	sqlstateProtocolViolation  = "08P01"
	// idle_in_transaction_session_timeout
	sqlstateIdleInTransactionTimeout = "25P03"
)

// tryDetach gives srv back to the pool at a ReadyForQuery 'I' (the last
// message in wbuf) when the client has nothing outstanding on it and
// nothing being written to it. A hazard found by the watch or its check
// reaches the client before that ReadyForQuery, and the connection is
// closed instead of reused. It reports whether the pump is done with srv.
func (s *Session) tryDetach(srv *serverpool.Server, st *serverState, check bool, wbuf *[]byte) bool {
	s.mu.Lock()
	// A batch still being written whose every request is answered (the
	// server read it all) ends in a moment: wait for it rather than keep
	// the connection for a client that may now stay idle.
	for s.srv == srv && s.inflight > 0 && st.cache.Outstanding() == 0 {
		s.written.Wait()
	}
	if s.srv != srv || s.inflight > 0 || st.cache.Outstanding() > 0 {
		s.mu.Unlock()
		return false
	}
	hz := s.hazard
	s.hazard = nil
	s.srv, s.st = nil, nil
	s.mu.Unlock()

	clean := !st.cache.Broken()
	// The check runs even when the connection will be closed anyway: SQL
	// PREPARE both breaks the statement cache and is a hazard, and the
	// client must learn that its statement is gone rather than meet 26000
	// on its next transaction.
	if hz == nil && (check || st.watch.Due()) {
		ctx, cancel := context.WithTimeout(context.Background(), s.o.QueryTimeout)
		hs, err := st.watch.Check(ctx, srv.PgConn())
		cancel()
		switch {
		case err != nil:
			clean = false
			s.o.Log().Warn("pool check of a server connection failed; closing it", "key", s.o.Key.String(), "error", err.Error())
		case len(hs) > 0:
			hz = hs[0]
		}
	}
	if hz != nil {
		// The transaction ended (committed, if it succeeded): its
		// ReadyForQuery goes first, then FATAL, as the server itself ends
		// an idle session; the state dies with the server connection.
		clean = false
		*wbuf, _ = hz.ErrorResponse().Encode(*wbuf)
		s.o.Log().Warn("session state that transaction mode cannot carry; ending the session", "key", s.o.Key.String(),
			"identity", s.o.Identity, "hazard", hz.Error())
		s.setEnd("transaction mode cannot carry: " + hz.Error())
	}
	// Back to the pool before the last write: a client slow to read must
	// not keep a server connection it no longer uses. Its next server
	// connection waits for this pump's end, so it still reads this
	// ReadyForQuery first.
	srv.Release(clean)
	err := s.writeClientRaw(*wbuf)
	*wbuf = shrink(*wbuf)
	if err != nil {
		s.setEnd("client write: " + err.Error())
	}
	if err != nil || hz != nil {
		s.client.Close()
	}
	return true
}

// resetDone follows the answer to the session-mode reset query; at its
// ReadyForQuery it reports the verdict to end and says the pump is done.
func (s *Session) resetDone(srv *serverpool.Server, msg pgproto3.BackendMessage) bool {
	switch m := msg.(type) {
	case *pgproto3.ErrorResponse:
		s.resetFailed.Store(true)
	case *pgproto3.ParameterStatus:
		srv.SetParam(m.Name, m.Value)
	case *pgproto3.ReadyForQuery:
		s.resetOK <- !s.resetFailed.Load() && m.TxStatus == 'I'
		return true
	}
	return false
}

// end finishes the session from the client goroutine: the server
// connection goes back (session mode, after the reset query, when the
// client left it idle) or is closed (mid-transaction, or anything
// outstanding). It returns reason.
func (s *Session) end(reason string) string {
	s.disarmIdleTx()
	s.mu.Lock()
	s.ending = true
	srv, st, done := s.srv, s.st, s.pumpDone
	s.srv, s.st = nil, nil // whoever takes srv out of the session releases it
	s.mu.Unlock()
	if srv != nil {
		clean := false
		if s.o.Mode == ModeSession && s.sessionIdle() {
			q := s.o.ResetQuery
			if q == NoReset {
				// An empty statement still makes the server answer, which
				// stops the pump at a message boundary.
				q = ";"
			}
			clean = s.reset(srv, done, q)
			if clean && resetsAll(q) {
				// Nothing of this client is left: the next one, whoever
				// it is, needs no reset of its own (handover).
				st.owner = ""
			}
		}
		if !clean {
			// Stop the pump before the pool touches the connection:
			// pgconn is not safe for concurrent use.
			s.stopPump(srv, done)
		}
		srv.Release(clean)
	}
	if done != nil {
		<-done
	}
	return reason
}

// reset runs the reset query through the pump and reports whether the
// connection came back idle without error.
func (s *Session) reset(srv *serverpool.Server, done <-chan struct{}, query string) bool {
	s.resetOK = make(chan bool, 1)
	s.resetting.Store(true)
	b, _ := (&pgproto3.Query{String: query}).Encode(nil)
	conn := srv.PgConn().Conn()
	_ = conn.SetWriteDeadline(time.Now().Add(s.o.QueryTimeout))
	_, err := conn.Write(b)
	_ = conn.SetWriteDeadline(time.Time{})
	if err != nil {
		return false
	}
	t := time.NewTimer(s.o.QueryTimeout)
	defer t.Stop()
	select {
	case ok := <-s.resetOK:
		<-done
		return ok
	case <-done:
		// The pump sends its verdict before it ends, so both cases may be
		// ready when this select runs, and select picks at random: a
		// clean reset must not be taken for a failed one, which closed the
		// server connection (2 of ~80 sequential sessions under -race).
		select {
		case ok := <-s.resetOK:
			return ok
		default:
			return false
		}
	case <-t.C:
		return false
	}
}

// stopPump closes srv's socket, which ends its pump's read, and waits for
// the pump to finish.
func (s *Session) stopPump(srv *serverpool.Server, done <-chan struct{}) {
	if pg := srv.PgConn(); pg != nil {
		_ = pg.Conn().Close()
	}
	if done != nil {
		<-done
	}
}

// serverLost ends the session after a read failure on srv, unless the
// session already let srv go (its end, a release).
func (s *Session) serverLost(srv *serverpool.Server, err error) {
	s.mu.Lock()
	mine := s.srv == srv
	s.mu.Unlock()
	if !mine {
		return
	}
	if s.idleTxExpired.Load() {
		_ = s.writeClient([]pgproto3.BackendMessage{s.idleTxError()})
		s.abort(srv, "idle transaction timeout", nil)
		return
	}
	_ = s.writeClient([]pgproto3.BackendMessage{errorMessage("FATAL", sqlstateConnectionFailure, serverIOError(err))})
	s.abort(srv, "server connection lost: "+err.Error(), nil)
}

// armIdleTx starts the idle-in-transaction clock at a ReadyForQuery that
// leaves a transaction open and the server waiting for the client (nothing
// the client sent is unanswered or unwritten), as PostgreSQL starts
// idle_in_transaction_session_timeout; a ReadyForQuery 'I' stops it, and
// so does the client's next message. The clock fires only if no message
// came and the server still waits for the client.
func (s *Session) armIdleTx(srv *serverpool.Server, status byte) {
	if s.o.IdleTransactionTimeout <= 0 {
		return
	}
	if status == 'I' {
		s.disarmIdleTx()
		return
	}
	s.mu.Lock()
	waiting := s.srv == srv && s.awaitsClientLocked()
	s.mu.Unlock()
	if waiting {
		s.startIdleTxClock(srv)
	}
}

// armIdleTxOnLoop is armIdleTx for a session on an event loop, called by
// the loop: without mu, which a goroutine may hold across a network round
// trip (Cancel), so that the loop never waits for it. The server
// connection stays attached for the whole loop session, and in session
// mode the check reads atomics only.
func (s *Session) armIdleTxOnLoop(srv *serverpool.Server, status byte) {
	if s.o.IdleTransactionTimeout <= 0 {
		return
	}
	if status == 'I' {
		s.disarmIdleTx()
		return
	}
	if s.sessionAwaitsClient() {
		s.startIdleTxClock(srv)
	}
}

// startIdleTxClock starts the idle-in-transaction clock: it fires only if
// no client message came meanwhile and the server still waits for the
// client.
func (s *Session) startIdleTxClock(srv *serverpool.Server) {
	d := s.o.IdleTransactionTimeout
	seen := s.clientMsgs.Load()
	t := time.AfterFunc(d, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.srv != srv || s.clientMsgs.Load() != seen || !s.awaitsClientLocked() {
			return
		}
		if rs := s.loopSession(); rs != nil {
			// The loop asks again where the session's messages are seen
			// (one may have come since), then closes the server connection
			// (mid-transaction, it is not reused) and tells the client.
			b, _ := s.idleTxError().Encode(nil)
			rs.CloseWith(b, func() bool {
				if s.clientMsgs.Load() != seen || !s.sessionAwaitsClient() || s.loopEnd.Load() != nil {
					return false
				}
				s.idleTxExpired.Store(true)
				return true
			})
			return
		}
		// Closing the socket ends the pump's read; serverLost then tells
		// the client why. Under mu, so srv cannot pass to another client
		// meanwhile.
		s.idleTxExpired.Store(true)
		if pg := srv.PgConn(); pg != nil {
			_ = pg.Conn().Close()
		}
	})
	if old := s.idleTx.Swap(t); old != nil {
		old.Stop()
	}
}

// idleTxError is what a client left idle in a transaction is told:
// PostgreSQL's own words for its idle_in_transaction_session_timeout.
func (s *Session) idleTxError() *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL",
		Code: sqlstateIdleInTransactionTimeout, Message: "terminating connection due to idle-in-transaction timeout",
		Detail: fmt.Sprintf("pgtrust pool: the transaction was idle for idle_transaction_timeout (%s)", s.o.IdleTransactionTimeout),
		Hint:   "commit or roll back promptly, or raise the pool's idle_transaction_timeout"}
}

// awaitsClientLocked reports whether the server connection has answered
// everything the client sent (its messages are counted when read, before
// they are written, so a batch still being written counts as unanswered);
// s.mu is held.
func (s *Session) awaitsClientLocked() bool {
	if s.o.Mode == ModeSession {
		return s.sessionAwaitsClient()
	}
	return s.st != nil && s.st.cache.Outstanding() == 0
}

// sessionAwaitsClient is awaitsClientLocked for session mode, which needs
// no lock: its counts are atomics.
func (s *Session) sessionAwaitsClient() bool {
	return s.syncs.Load() == s.rfqs.Load() && !s.unsynced.Load()
}

// sessionIdle reports whether a session-mode server connection stands
// idle, outside a transaction, with everything the client sent answered:
// fit for the reset query and the next client.
func (s *Session) sessionIdle() bool {
	return s.lastTx.Load() == 'I' && s.sessionAwaitsClient()
}

// resetsAll reports whether the reset query q leaves nothing of a client
// in the session.
func resetsAll(q string) bool {
	return strings.EqualFold(strings.TrimSpace(q), "DISCARD ALL")
}

func (s *Session) disarmIdleTx() {
	if t := s.idleTx.Swap(nil); t != nil {
		t.Stop()
	}
}

// abort ends the session from the pump: srv is closed, the client
// connection too (its goroutine then ends the session).
func (s *Session) abort(srv *serverpool.Server, reason string, err error) {
	s.mu.Lock()
	mine := s.srv == srv
	if mine {
		s.srv, s.st = nil, nil
	}
	if s.endErr == "" && !s.ending {
		s.endErr = reason
	}
	s.mu.Unlock()
	if !mine {
		return
	}
	if err != nil {
		_ = s.writeClient([]pgproto3.BackendMessage{errorMessage("FATAL", sqlstateProtocolViolation, err)})
	}
	srv.Release(false)
	s.client.Close()
}

func (s *Session) setEnd(reason string) {
	s.mu.Lock()
	if s.endErr == "" {
		s.endErr = reason
	}
	s.mu.Unlock()
}

func (s *Session) endReason() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.endErr
}

// fail tells the client why its session ends and ends it.
func (s *Session) fail(err error) string {
	code := sqlstateProtocolViolation
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &pe):
		_ = s.writeClient([]pgproto3.BackendMessage{&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL",
			Code: pe.Code, Message: pe.Message, Detail: pe.Detail, Hint: pe.Hint}})
		return s.end("server refused: " + pe.Code + " " + pe.Message)
	case errors.Is(err, serverpool.ErrExhausted):
		code = sqlstateTooManyConnections
	case failure.ClassOf(err) != failure.ProtocolError && failure.ClassOf(err) != failure.ConfigInvalid:
		code = sqlstateConnectionFailure
	}
	if r := s.endReason(); r != "" && err.Error() == r {
		return s.end(r)
	}
	if hz, ok := err.(interface {
		ErrorResponse() *pgproto3.ErrorResponse
	}); ok {
		e := hz.ErrorResponse()
		e.Severity, e.SeverityUnlocalized = "FATAL", "FATAL"
		_ = s.writeClient([]pgproto3.BackendMessage{e})
	} else {
		_ = s.writeClient([]pgproto3.BackendMessage{errorMessage("FATAL", code, err)})
	}
	return s.end(string(failure.ClassOf(err)) + ": " + err.Error())
}
