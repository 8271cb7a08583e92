package pooling

import (
	"bytes"
	"cmp"
	"context"
	"errors"

	"github.com/pgtrust/pgtrust/internal/relay"
	"github.com/pgtrust/pgtrust/internal/serverpool"
)

// serveOnLoop hands a session-mode client and its server connection to an
// event loop (Options.Loops): no goroutine and no message decoding while
// the session runs, only the message boundaries and the few messages the
// pool follows (relay.Framing). When the client leaves, the loop gives the
// server connection back and endRelayed resets it for the next client, as
// end does for the goroutine path. It reports false, with nothing changed,
// when the session stays on goroutines: no loops, a plaintext server
// connection, a client socket a loop cannot own, or bytes pgconn already
// buffered.
func (s *Session) serveOnLoop() bool {
	if s.o.Loops == nil || s.o.Mode != ModeSession {
		return false
	}
	s.mu.Lock()
	srv := s.srv
	s.mu.Unlock()
	if srv == nil {
		return false
	}
	pg := srv.PgConn()
	if pg == nil || pg.Frontend().ReadBufferLen() > 0 {
		return false
	}
	h := relay.Hooks{
		ClientBytes:   s.o.In,
		UpstreamBytes: s.o.Out,
		Framing: &relay.Framing{
			Client: s.clientMessage,
			Server: func(msg []byte) { s.serverMessage(srv, msg) },
			Lost:   s.lost,
		},
		Done: func(r relay.Result) { s.done(s.endRelayed(r)) },
	}
	// Under parkState.mu: Wake, from another goroutine, either comes first
	// (and the session stays here, to find its client closed) or finds the
	// relayed session to close.
	s.parkState.mu.Lock()
	defer s.parkState.mu.Unlock()
	if s.closing.Load() {
		return false
	}
	rs, err := s.o.Loops.Start(s.client, pg.Conn(), h)
	if err != nil {
		if !errors.Is(err, relay.ErrNotDetachable) {
			// As the proxy's unpooled sessions say it.
			s.o.Log().Debug("session stays on goroutines", "error", err.Error())
		}
		return false
	}
	s.relayed = rs
	s.rd.release() // the loop reads the client now
	return true
}

// clientMessage follows a relayed client's sync points, as countSession,
// and stops the idle-in-transaction clock, as run does.
func (s *Session) clientMessage(typ byte) {
	if s.o.IdleTransactionTimeout > 0 {
		s.clientMsgs.Add(1)
		s.disarmIdleTx()
	}
	s.countSync(typ)
}

// serverMessage follows what the pool needs of a relayed server's
// messages: reported parameters, ReadyForQuery, and an error that ends the
// backend.
func (s *Session) serverMessage(srv *serverpool.Server, msg []byte) {
	body := msg[5:]
	switch msg[0] {
	case 'S':
		name, rest, ok := bytes.Cut(body, []byte{0})
		value, _, ok2 := bytes.Cut(rest, []byte{0})
		if ok && ok2 {
			srv.SetParam(string(name), string(value))
		}
	case 'Z':
		if len(body) == 1 {
			s.lastTx.Store(uint32(body[0]))
			s.rfqs.Add(1)
			s.armIdleTxOnLoop(srv, body[0])
		}
	case 'E':
		// The message may be cut (relay gives the first 4 KiB): its fields
		// are read one by one, as far as they go.
		var sev, code, text string
		for f := body; len(f) > 1; {
			v, rest, ok := bytes.Cut(f[1:], []byte{0})
			if !ok {
				break
			}
			switch f[0] {
			case 'V':
				sev = string(v)
			case 'S':
				if sev == "" {
					sev = string(v)
				}
			case 'C':
				code = string(v)
			case 'M':
				text = string(v)
			}
			f = rest
		}
		if sev == "FATAL" || sev == "PANIC" {
			why := "server ended the connection: " + code + " " + text
			s.loopEnd.Store(&why) // not setEnd: the loop never waits for mu
		}
	}
}

// lost is what a relayed client is told when its server connection ends
// first: nothing more after the server's own FATAL, else 08006, as the
// goroutine path's serverLost.
func (s *Session) lost(err error) []byte {
	if s.loopEnd.Load() != nil {
		return nil
	}
	b, _ := errorMessage("FATAL", sqlstateConnectionFailure, serverIOError(err)).Encode(nil)
	return b
}

// endRelayed ends a session the loop relayed: the server connection goes
// back to the pool after the reset query when the loop kept it and the
// client left it idle, and is closed otherwise. It returns the reason.
func (s *Session) endRelayed(r relay.Result) string {
	s.disarmIdleTx()
	s.mu.Lock()
	s.ending = true
	srv, st := s.srv, s.st
	s.srv, s.st = nil, nil
	s.mu.Unlock()
	reason := s.relayedReason(r)
	if srv == nil {
		return reason
	}
	if r.KeepErr != nil {
		s.o.Log().Warn("server connection closed: it could not be taken back from the event loop", "key", s.o.Key.String(), "error", r.KeepErr.Error())
	}
	// A server that sent FATAL is ending, even if its close is not read yet.
	clean := r.UpstreamKept && s.loopEnd.Load() == nil &&
		s.sessionIdle()
	if clean && s.o.ResetQuery != NoReset {
		ctx := s.ctx
		if ctx == nil {
			ctx = context.Background()
		}
		if _, err := exec(ctx, srv, s.o.ResetQuery, s.o.QueryTimeout); err != nil {
			clean = false
			s.o.Log().Warn("server connection closed: the reset query failed", "key", s.o.Key.String(), "error", err.Error())
		} else if resetsAll(s.o.ResetQuery) {
			st.owner = "" // nothing of this client is left (see end)
		}
	}
	srv.Release(clean)
	return reason
}

// loopSession is the session's event-loop session, nil on goroutines.
func (s *Session) loopSession() *relay.Session {
	s.parkState.mu.Lock()
	defer s.parkState.mu.Unlock()
	return s.relayed
}

// relayedReason words how a relayed session ended, as the goroutine path
// does.
func (s *Session) relayedReason(r relay.Result) string {
	switch {
	case s.idleTxExpired.Load():
		return "idle transaction timeout"
	case r.Terminated:
		return "client terminated"
	case r.UpstreamEnded:
		if why := s.loopEnd.Load(); why != nil {
			return *why
		}
		if err := cmp.Or(r.UpstreamErr, r.ClientErr); err != nil {
			return "server connection lost: " + err.Error()
		}
		return "server connection lost: the server closed it"
	case r.First == relay.Client && r.ClientErr == nil:
		return "client closed"
	case r.First == relay.Client:
		return "client error: " + r.ClientErr.Error()
	case r.First == relay.Upstream:
		return "client write: " + r.UpstreamErr.Error()
	}
	return "closed by the proxy"
}
