// Package pooling runs a client session over shared server connections:
// session mode (a server connection for the client's whole session, reset
// before the next client) and transaction mode (a server connection per
// transaction, released at ReadyForQuery with status idle).
//
// The client has already been authenticated by pgtrust and greeted; the
// package relays its messages. In transaction mode it carries what a
// client expects to keep across transactions although each may run on
// another server connection: protocol-level prepared statements
// (internal/prepared) and the reported session parameters
// (internal/paramsync), and it refuses with a clear error what cannot be
// carried (paramsync's hazards).
//
// # Concurrency
//
// A session-mode session runs on an event loop when the proxy has them
// (Options.Loops, serveOnLoop): no goroutine of its own, and only the
// message boundaries and a few message types followed (relay.Framing);
// the loop gives the server connection back at the end for its reset.
// Otherwise, and always in transaction mode, there are two goroutines per
// session while it holds a server connection: the
// client's (reads the client, translates, writes to the server) and a pump
// (reads the server, filters, writes to the client). Only the pump gives a
// server connection back in transaction mode, at a ReadyForQuery 'I' with
// nothing outstanding and nothing being written to it; mu makes that
// decision exclusive with the client goroutine's use of the connection.
// The client goroutine takes a new server connection only after the
// previous pump has written its last message, so the client sees answers
// in order. A transaction-mode client idle between transactions may have
// no goroutine at all: Serve parks it (Parker) and its next message starts
// one.
package pooling

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/paramsync"
	"github.com/pgtrust/pgtrust/internal/prepared"
	"github.com/pgtrust/pgtrust/internal/relay"
	"github.com/pgtrust/pgtrust/internal/serverpool"
)

// Mode is how long a client keeps a server connection.
type Mode string

// Pool modes.
const (
	ModeSession     Mode = "session"
	ModeTransaction Mode = "transaction"
)

// Defaults.
const (
	DefaultResetQuery   = "DISCARD ALL"
	DefaultQueryTimeout = 5 * time.Second
	// maxMessage bounds one client message, as PostgreSQL's PQ_LARGE_MESSAGE_LIMIT (1 GB).
	maxMessage = 1 << 30
	// flushAt: a batch bigger than this goes out before more is read.
	flushAt = 32 << 10
)

// Options configure one client session.
type Options struct {
	Mode Mode
	Pool *serverpool.Pool
	Key  serverpool.Key
	// Identity is who the client authenticated as. A server connection
	// passing between sessions of different identities is checked for
	// planted state first (transaction mode).
	Identity string
	// ResetQuery runs on a session-mode server connection before the next
	// client gets it (default DISCARD ALL); NoReset for none.
	ResetQuery string
	// StatementCache bounds the prepared statements per server connection
	// in transaction mode (default prepared.DefaultCapacity).
	StatementCache int
	// IgnoreStartup names startup parameters dropped instead of refused in
	// transaction mode (extra_float_digits for pgJDBC).
	IgnoreStartup []string
	// QueryTimeout bounds each of the pool's own queries (parameter
	// replay, reset, checks). Default 5s.
	QueryTimeout time.Duration
	// IdleTransactionTimeout, if positive, ends a session whose client
	// leaves a transaction open (ReadyForQuery 'T' or 'E') without sending
	// anything for this long: the server connection is closed (the
	// transaction rolls back) and the client gets FATAL 25P03, as from
	// PostgreSQL's idle_in_transaction_session_timeout. PgBouncer's
	// idle_transaction_timeout.
	IdleTransactionTimeout time.Duration
	// Parker, if set, parks the client between transactions in
	// transaction mode (Serve), when its connection is a plain socket.
	Parker *Parker
	// Loops, if set, relay session-mode sessions on event loops
	// (serveOnLoop) instead of two goroutines each.
	Loops *relay.Loops
	// In and Out count bytes from and to the client (optional).
	In, Out func(n int)
	// Log returns the session's logger; called only when the session
	// logs, so that an idle session keeps no logger of its own. Optional.
	Log func() *slog.Logger
}

func discardLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

// NoReset disables the session-mode reset query.
const NoReset = "-"

// serverState rides on a pooled server connection (Server.State).
type serverState struct {
	cache *prepared.ServerCache
	watch *paramsync.Watch
	owner string // identity of the last session that used it; "" before the first
}

// Session is one client's pooled session.
type Session struct {
	o      Options
	client net.Conn
	rd     *msgReader
	params *paramsync.Client
	stmts  *prepared.Client // transaction mode

	cw sync.Mutex // client writes

	mu       sync.Mutex
	written  *sync.Cond // signalled (under mu) when inflight drops to 0
	srv      *serverpool.Server
	st       *serverState
	inflight int                // translated batches not yet written to srv
	pumpDone chan struct{}      // closed when the latest pump wrote its last byte to the client
	pumpOf   *serverpool.Server // the latest pump's server connection
	ending   bool               // the client goroutine is ending the session
	endErr   string             // why a pump ended the session

	// Session mode: sync points written and ReadyForQuery received, and
	// whether extended-protocol messages follow the last sync point.
	syncs, rfqs atomic.Int64
	unsynced    atomic.Bool
	lastTx      atomic.Uint32
	resetting   atomic.Bool
	resetFailed atomic.Bool
	resetOK     chan bool

	hazard *paramsync.Hazard // reported by the watch during the transaction (under mu)

	loopEnd       atomic.Pointer[string]     // on an event loop: why the server ended the session (its FATAL)
	idleTx        atomic.Pointer[time.Timer] // armed at a ReadyForQuery 'T' or 'E' (IdleTransactionTimeout)
	idleTxExpired atomic.Bool
	clientMsgs    atomic.Uint64 // messages read from the client (with IdleTransactionTimeout)

	parkState
}

// Start begins a pooled session for an authenticated client whose startup
// parameters are startup. It returns the ParameterStatus messages of the
// client's greeting. A server connection is taken at once in session mode
// (kept for the session), and in transaction mode when the key has no
// recorded defaults yet or the client asks for parameters other than the
// defaults (so that the server judges them at login, as it would
// directly), except an application_name PostgreSQL would take as it is
// (paramsync.Client.NeedsServer): that is set at the first transaction.
// Errors are classified; a *pgconn.PgError is the server's verdict on the
// client's request.
func Start(ctx context.Context, client net.Conn, startup map[string]string, o Options) (*Session, []*pgproto3.ParameterStatus, error) {
	if o.ResetQuery == "" {
		o.ResetQuery = DefaultResetQuery
	}
	if o.QueryTimeout <= 0 {
		o.QueryTimeout = DefaultQueryTimeout
	}
	if o.Log == nil {
		o.Log = discardLog
	}
	s := &Session{o: o, client: client, rd: newMsgReader(client, maxMessage)}
	s.written = sync.NewCond(&s.mu)
	s.lastTx.Store('I')
	if o.Mode == ModeTransaction {
		s.stmts = prepared.NewClient()
	}
	defaults := o.Pool.Defaults(o.Key)
	var srv *serverpool.Server
	if defaults == nil || o.Mode == ModeSession {
		var err error
		if srv, err = o.Pool.Acquire(ctx, o.Key); err != nil {
			return nil, nil, err
		}
		defaults = o.Pool.Defaults(o.Key)
	}
	ignore := o.IgnoreStartup
	var sessionSets [][2]string
	if o.Mode == ModeSession {
		// The client keeps this server connection: parameters the server
		// does not report are set on it at login (and undone by the reset
		// query), as the startup packet would have set them.
		var err error
		if sessionSets, err = unreportedStartup(startup); err != nil {
			if srv != nil {
				srv.Release(true)
			}
			return nil, nil, clientRequest(err)
		}
		ignore = ignore[:len(ignore):len(ignore)]
		for _, kv := range sessionSets {
			ignore = append(ignore, kv[0])
		}
	}
	pc, err := paramsync.NewClient(startup, defaults, ignore...)
	if err != nil {
		if srv != nil {
			srv.Release(true)
		}
		return nil, nil, clientRequest(err)
	}
	s.params = pc
	if srv == nil && pc.NeedsServer(defaults) {
		if srv, err = o.Pool.Acquire(ctx, o.Key); err != nil {
			return nil, nil, err
		}
	}
	var greet []*pgproto3.ParameterStatus
	if srv != nil {
		if err := s.handover(ctx, srv, s.state(srv)); err != nil {
			return nil, nil, err
		}
		if err := s.applyParams(ctx, srv); err != nil {
			srv.Release(isPgError(err))
			return nil, nil, err
		}
		for _, kv := range sessionSets {
			q := "SELECT pg_catalog.set_config(" + paramsync.QuoteLiteral(kv[0]) + ", " + paramsync.QuoteLiteral(kv[1]) + ", false)"
			if _, err := exec(ctx, srv, q, s.o.QueryTimeout); err != nil {
				// The server's verdict on the client's parameter, as it
				// would have refused the startup packet; the reset query
				// has not run, so the connection is not reused.
				srv.Release(false)
				return nil, nil, err
			}
		}
		greet = pc.Reconcile(srv.Params())
		if o.Mode == ModeSession {
			s.attach(srv, false) // Serve relays it: on a loop, or with a pump
		} else {
			srv.Release(true)
		}
	} else {
		greet = pc.Greeting(defaults)
	}
	s.setScope()
	return s, greet, nil
}

// unreportedStartup returns the startup settings the server does not
// report (work_mem, statement_timeout...), given directly or in options,
// which only a session-mode connection can keep.
func unreportedStartup(startup map[string]string) ([][2]string, error) {
	var out [][2]string
	for k, v := range startup {
		switch {
		case k == "user" || k == "database" || k == "options" || k == "replication" || strings.HasPrefix(k, "_pq_."):
		case !paramsync.IsReplayed(k):
			out = append(out, [2]string{k, v})
		}
	}
	if opts, ok := startup["options"]; ok {
		settings, err := paramsync.ParseOptions(opts)
		if err != nil {
			return nil, err
		}
		for _, kv := range settings {
			if !paramsync.IsReplayed(kv[0]) {
				out = append(out, kv)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i][0] < out[j][0] })
	return out, nil
}

// ErrClientRequest is in the chain of errors about what the client asked
// for (its startup parameters, a value the pool cannot carry): the
// client's answer, nothing wrong with the server.
var ErrClientRequest = errors.New("pooling: the client's request cannot be served")

// clientRequest marks err as the client's (a Hazard keeps its own type).
func clientRequest(err error) error {
	var hz *paramsync.Hazard
	if errors.As(err, &hz) {
		return err
	}
	return &clientError{err}
}

type clientError struct{ err error }

func (e *clientError) Error() string   { return e.err.Error() }
func (e *clientError) Unwrap() []error { return []error{e.err, ErrClientRequest} }

func isPgError(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe)
}

// applyParams makes srv hold the client's replayed parameters.
func (s *Session) applyParams(ctx context.Context, srv *serverpool.Server) error {
	plan, err := s.params.Plan(srv.Params())
	if err != nil {
		return clientRequest(err)
	}
	for _, q := range plan {
		if _, err := exec(ctx, srv, q, s.o.QueryTimeout); err != nil {
			return err
		}
	}
	return nil
}

func (s *Session) setScope() {
	if s.stmts != nil {
		s.stmts.SetScope(s.params.ParseScope())
	}
}

// state returns the per-connection state of srv, creating it.
func (s *Session) state(srv *serverpool.Server) *serverState {
	if st, ok := srv.State().(*serverState); ok {
		return st
	}
	st := &serverState{cache: prepared.NewServerCache(s.o.StatementCache), watch: paramsync.NewWatch(false)}
	srv.SetState(st)
	return st
}

// handover makes a server connection fit for another identity: whatever
// the previous client left in the session (settings made with set_config,
// LISTEN, cursors, SQL prepared statements, temporary objects, advisory
// locks, a role, the unnamed statement) goes with DISCARD ALL and a Close
// of the unnamed statement, in one round trip. Between sessions of one
// identity nothing runs (the trust rule, docs/pooling.md). A failure means
// the connection is in an unknown state: it is closed.
func (s *Session) handover(ctx context.Context, srv *serverpool.Server, st *serverState) error {
	if st.owner == s.o.Identity {
		return nil
	}
	if st.owner != "" {
		msgs := []pgproto3.FrontendMessage{&pgproto3.Query{String: "DISCARD ALL"}, &pgproto3.Query{String: "RESET ROLE"},
			&pgproto3.Close{ObjectType: 'S'}, &pgproto3.Sync{}}
		if _, err := execBatch(ctx, srv, msgs, 3, s.o.QueryTimeout); err != nil {
			srv.Release(false)
			return err
		}
		// The server's statements are gone: the cache starts again.
		st.cache.Reset()
	}
	st.owner = s.o.Identity
	return nil
}

// attach makes srv the session's server connection and, with pump,
// starts its pump.
func (s *Session) attach(srv *serverpool.Server, pump bool) {
	s.mu.Lock()
	s.srv, s.st = srv, s.state(srv)
	s.mu.Unlock()
	if pump {
		s.startPump()
	}
}

// startPump starts the pump of the attached server connection, unless it
// runs already or there is none.
func (s *Session) startPump() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv == nil || s.pumpDone != nil && s.pumpOf == s.srv {
		return
	}
	done := make(chan struct{})
	s.pumpDone, s.pumpOf = done, s.srv
	go s.pump(s.srv, done)
}

// Cancel sends a CancelRequest to the server connection running the
// client's query, if any, and says whether there was one. It holds the
// session while it does, so the connection cannot pass to another client
// before the request is in.
func (s *Session) Cancel(ctx context.Context) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv == nil {
		return false, nil
	}
	pg := s.srv.PgConn()
	if pg == nil {
		return false, nil
	}
	return true, pg.CancelRequest(ctx)
}

// run relays until the session ends (parked false, and why) or, when
// canPark, until the client is parked (parked true).
func (s *Session) run(ctx context.Context, canPark bool) (reason string, parked bool) {
	var sbuf []byte
	var target *serverpool.Server
	var targetConn net.Conn // target's socket, taken while it was attached
	started := false        // a batch for target is counted in s.inflight
	flush := func() error {
		if !started {
			return nil
		}
		started = false
		var err error
		if len(sbuf) > 0 {
			// If the pump gave target up meanwhile (the server failed), the
			// socket is closed and the write fails: never another client's.
			_, err = targetConn.Write(sbuf)
			sbuf = shrink(sbuf)
		}
		s.mu.Lock()
		if s.inflight--; s.inflight == 0 {
			s.written.Broadcast()
		}
		s.mu.Unlock()
		return err
	}
	for {
		if canPark && !started && !s.rd.Buffered() {
			// Waiting for the client between messages: the Parker may
			// interrupt the wait once it has lasted a sweep (park then
			// checks that no transaction holds a server connection).
			s.idleTick.Store(s.o.Parker.tick.Load())
		}
		raw, err := s.rd.Next()
		if canPark {
			s.idleTick.Store(0)
		}
		if s.o.IdleTransactionTimeout > 0 && err == nil {
			// A message came: the idle-in-transaction clock stops (a
			// parking interruption is not a message).
			s.clientMsgs.Add(1)
			s.disarmIdleTx()
		}
		if errors.Is(err, errPark) {
			if s.park() {
				return "", true
			}
			continue
		}
		if err != nil {
			_ = flush()
			if errors.Is(err, io.EOF) {
				return s.end("client closed"), false
			}
			if s.endReason() != "" {
				return s.end(s.endReason()), false
			}
			return s.end("client error: " + err.Error()), false
		}
		if s.o.In != nil {
			s.o.In(len(raw))
		}
		if raw[0] == 'X' {
			if err := flush(); err != nil {
				return s.end("server write: " + err.Error()), false
			}
			return s.end("client terminated"), false
		}
	retry:
		srv, st, err := s.server(ctx)
		if err != nil {
			_ = flush()
			return s.fail(err), false
		}
		if !started {
			s.mu.Lock()
			if srv != s.srv {
				s.mu.Unlock()
				goto retry
			}
			// Attached, so not released: PgConn is valid until mu is let go.
			targetConn = srv.PgConn().Conn()
			s.inflight++
			s.mu.Unlock()
			started, target = true, srv
		} else if srv != target {
			// Unreachable: a counted batch keeps its server attached.
			_ = flush()
			return s.fail(failure.New(failure.ProtocolError, "pooling: the server connection changed under an unwritten batch")), false
		}
		if s.o.Mode == ModeSession {
			sbuf = s.countSession(raw, sbuf)
		} else {
			sbuf, err = s.translate(raw, st, sbuf)
			if errors.Is(err, prepared.ErrWait) {
				if err := flush(); err != nil {
					return s.end("server write: " + err.Error()), false
				}
				s.mu.Lock()
				pumpDone := s.pumpDone
				s.mu.Unlock()
				select {
				case <-st.cache.Settled():
				case <-pumpDone:
					// The server connection failed (or was given up) while
					// the session waited: retry finds out and ends.
				case <-ctx.Done():
					return s.end("proxy shutdown"), false
				}
				goto retry
			}
			if err != nil {
				_ = flush()
				return s.fail(err), false
			}
		}
		if !s.rd.Buffered() || len(sbuf) >= flushAt {
			if err := flush(); err != nil {
				return s.end("server write: " + err.Error()), false
			}
		}
	}
}

// countSession records sync points of a session-mode client and appends
// the message unchanged.
func (s *Session) countSession(raw, sbuf []byte) []byte {
	s.countSync(raw[0])
	return append(sbuf, raw...)
}

// countSync records a session-mode client's message of type typ: a sync
// point (Sync, Query, FunctionCall) or extended-protocol messages after it.
func (s *Session) countSync(typ byte) {
	switch typ {
	case 'S', 'Q', 'F':
		s.unsynced.Store(false)
		s.syncs.Add(1)
	case 'P', 'B', 'D', 'C', 'E', 'H':
		s.unsynced.Store(true)
	}
}

// translate runs a transaction-mode client message through the prepared
// statement engine and appends what goes to the server.
func (s *Session) translate(raw []byte, st *serverState, sbuf []byte) ([]byte, error) {
	msg, err := decodeFrontend(raw)
	if err != nil {
		return sbuf, err
	}
	if msg == nil {
		return append(sbuf, raw...), nil
	}
	s.mu.Lock()
	out, imm, err := s.stmts.Rewrite(msg, st.cache)
	s.mu.Unlock()
	if err != nil {
		return sbuf, err
	}
	for _, m := range out {
		if sbuf, err = m.Encode(sbuf); err != nil {
			return sbuf, err
		}
	}
	if len(imm) > 0 {
		// Answers due at once: nothing was outstanding before them, so no
		// server answer can precede them.
		if err := s.writeClient(imm); err != nil {
			return sbuf, err
		}
	}
	return sbuf, nil
}

// decodeFrontend decodes the client messages the prepared statement
// engine follows; nil for the rest, which pass unchanged.
func decodeFrontend(raw []byte) (pgproto3.FrontendMessage, error) {
	var m pgproto3.FrontendMessage
	switch raw[0] {
	case 'P':
		m = &pgproto3.Parse{}
	case 'B':
		m = &pgproto3.Bind{}
	case 'D':
		m = &pgproto3.Describe{}
	case 'C':
		m = &pgproto3.Close{}
	case 'E':
		m = &pgproto3.Execute{}
	case 'S':
		m = &pgproto3.Sync{}
	case 'Q':
		m = &pgproto3.Query{}
	case 'F':
		m = &pgproto3.FunctionCall{}
	case 'H':
		m = &pgproto3.Flush{}
	case 'c':
		m = &pgproto3.CopyDone{}
	case 'f':
		m = &pgproto3.CopyFail{}
	default:
		return nil, nil
	}
	if err := m.Decode(raw[5:]); err != nil {
		return nil, failure.Wrap(failure.ProtocolError, err, "malformed %q message from the client", raw[0])
	}
	return m, nil
}

// server returns the session's server connection, taking one from the pool
// (after the previous pump finished) when it has none.
func (s *Session) server(ctx context.Context) (*serverpool.Server, *serverState, error) {
	s.mu.Lock()
	srv, st, done := s.srv, s.st, s.pumpDone
	s.mu.Unlock()
	if srv != nil {
		return srv, st, nil
	}
	if s.o.Mode == ModeSession {
		if r := s.endReason(); r != "" {
			return nil, nil, errors.New(r)
		}
		return nil, nil, failure.New(failure.ProtocolError, "pooling: the session's server connection is gone")
	}
	if done != nil {
		select {
		case <-done:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
		if r := s.endReason(); r != "" {
			return nil, nil, errors.New(r)
		}
	}
	for attempt := 0; ; attempt++ {
		srv, err := s.o.Pool.Acquire(ctx, s.o.Key)
		if err != nil {
			return nil, nil, err
		}
		st := s.state(srv)
		if err := s.handover(ctx, srv, st); err != nil {
			s.o.Log().Warn("server connection closed: the reset for another client failed", "key", s.o.Key.String(), "error", err.Error())
			if attempt >= 3 {
				return nil, nil, err
			}
			continue
		}
		// The usual case is in sync: nothing to set, nothing to tell.
		var inSync bool
		srv.WithParams(func(p map[string]string) { inSync = s.params.InSync(p) })
		if !inSync {
			if err := s.syncParams(ctx, srv); err != nil {
				return nil, nil, err
			}
		}
		s.attach(srv, true)
		s.mu.Lock()
		srv, st = s.srv, s.st
		s.mu.Unlock()
		return srv, st, nil
	}
}

// syncParams makes srv hold the client's parameters and tells the client
// what differs from what it was last sent; on failure srv is released.
func (s *Session) syncParams(ctx context.Context, srv *serverpool.Server) error {
	if err := s.applyParams(ctx, srv); err != nil {
		srv.Release(isPgError(err))
		return err
	}
	if ps := s.params.Reconcile(srv.Params()); len(ps) > 0 {
		msgs := make([]pgproto3.BackendMessage, len(ps))
		for i, p := range ps {
			msgs[i] = p
		}
		if err := s.writeClient(msgs); err != nil {
			srv.Release(true)
			return err
		}
		s.setScope()
	}
	return nil
}

// writeClient encodes msgs and writes them to the client.
func (s *Session) writeClient(msgs []pgproto3.BackendMessage) error {
	var b []byte
	var err error
	for _, m := range msgs {
		if b, err = m.Encode(b); err != nil {
			return err
		}
	}
	return s.writeClientRaw(b)
}

func (s *Session) writeClientRaw(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	s.cw.Lock()
	defer s.cw.Unlock()
	_, err := s.client.Write(b)
	if err == nil && s.o.Out != nil {
		s.o.Out(len(b))
	}
	return err
}

// pump relays srv's messages to the client while srv is attached.
func (s *Session) pump(srv *serverpool.Server, done chan struct{}) {
	defer close(done)
	pg := srv.PgConn()
	fe := pg.Frontend()
	st := s.state(srv)
	var wbuf []byte
	flush := func() bool {
		if err := s.writeClientRaw(wbuf); err != nil {
			wbuf = wbuf[:0]
			s.abort(srv, fmt.Sprintf("client write: %v", err), nil)
			return false
		}
		wbuf = shrink(wbuf)
		return true
	}
	for {
		msg, err := fe.Receive()
		if err != nil {
			flush()
			s.serverLost(srv, err)
			return
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok && (e.Severity == "FATAL" || e.Severity == "PANIC") {
			// The backend is ending (pg_terminate_backend, a restart): the
			// client's transaction is gone with it.
			wbuf, _ = e.Encode(wbuf)
			flush()
			s.abort(srv, "server ended the connection: "+e.Code+" "+e.Message, nil)
			return
		}
		if s.o.Mode == ModeSession {
			if s.resetting.Load() {
				if s.resetDone(srv, msg) {
					return
				}
				continue
			}
			if ps, ok := msg.(*pgproto3.ParameterStatus); ok {
				srv.SetParam(ps.Name, ps.Value)
			}
			if wbuf, err = msg.Encode(wbuf); err != nil {
				s.abort(srv, "encode: "+err.Error(), nil)
				return
			}
			if rfq, ok := msg.(*pgproto3.ReadyForQuery); ok {
				s.lastTx.Store(uint32(rfq.TxStatus))
				s.rfqs.Add(1)
				s.armIdleTx(srv, rfq.TxStatus)
			}
			if fe.ReadBufferLen() == 0 || len(wbuf) >= flushAt {
				if !flush() {
					return
				}
			}
			continue
		}
		// Transaction mode. Rows, COPY data and notices answer no request
		// of their own and change nothing the engines follow: straight
		// through (most messages of a large result).
		switch msg.(type) {
		case *pgproto3.DataRow, *pgproto3.CopyData, *pgproto3.NoticeResponse, *pgproto3.NotificationResponse:
			wbuf, _ = msg.Encode(wbuf)
			if fe.ReadBufferLen() == 0 || len(wbuf) >= flushAt {
				if !flush() {
					return
				}
			}
			continue
		}
		check, hz := st.watch.Server(msg)
		if hz != nil {
			s.mu.Lock()
			s.hazard = hz
			s.mu.Unlock()
		}
		if ps, ok := msg.(*pgproto3.ParameterStatus); ok {
			srv.SetParam(ps.Name, ps.Value)
		}
		out, err := s.stmts.Filter(msg, st.cache)
		if err != nil {
			flush()
			s.abort(srv, "server stream out of step: "+err.Error(), err)
			return
		}
		scope := false
		for _, m := range out {
			if ps, ok := m.(*pgproto3.ParameterStatus); ok {
				s.params.Observe(ps.Name, ps.Value)
				scope = true
			}
			wbuf, _ = m.Encode(wbuf)
		}
		if scope {
			s.setScope()
		}
		rfq, isRFQ := msg.(*pgproto3.ReadyForQuery)
		if !isRFQ {
			if fe.ReadBufferLen() == 0 || len(wbuf) >= flushAt {
				if !flush() {
					return
				}
			}
			continue
		}
		if rfq.TxStatus != 'I' {
			s.armIdleTx(srv, rfq.TxStatus)
			if !flush() {
				return
			}
			continue
		}
		if s.tryDetach(srv, st, check, &wbuf) {
			return
		}
		if !flush() {
			return
		}
	}
}

// shrink empties a batch buffer, and lets it go when one large message grew
// it: an idle session must not keep a large result's or a large Bind's
// memory.
func shrink(b []byte) []byte {
	if cap(b) > 2*flushAt {
		return nil
	}
	return b[:0]
}

// Mode returns the session's pool mode.
func (s *Session) Mode() Mode { return s.o.Mode }

// Discard ends a session whose Serve never started (the greeting failed).
func (s *Session) Discard() {
	s.startPump() // a session-mode connection's reset reads through it
	s.end("discarded")
}
