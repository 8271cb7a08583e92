// Package prepared carries protocol-level prepared statements across server
// connections in transaction-mode pooling, as PgBouncer 1.21+ does: a client
// Parses a named statement once, and whichever server connection it gets for a
// later transaction has that statement, under a name no other client can
// collide with.
//
// The package is a message-level engine: pgproto3 messages in, pgproto3
// messages out, no I/O. A session keeps one Client; each server connection
// keeps one ServerCache. While a client holds a server connection, every
// message the client sends goes through Client.Rewrite (its first result
// goes to the server, then its second to the client; Translate plus
// TakeImmediate is the same in two calls) and every message the server sends
// goes through Client.Filter (its result goes to the client).
//
// # Model
//
//   - A statement is identified by its content: the client's scope (SetScope:
//     the values of every setting that changes what a Parse means, listed
//     by ScopeSettings), the parameter type OIDs and the query text. Its server name is
//     "pgtrust_" + 32 hex digits of SHA-256 over that content, so two
//     clients' "s1" with different queries get different server names, and
//     identical statements are shared. Server connections are per (database,
//     role), so statements are never shared across roles.
//   - A statement used after the client's scope changed, on a server
//     connection that lacks it, is injected under its name for the current
//     scope (the server has the client's current settings, so that is what
//     the Parse means there); where the server has the old statement, it is
//     used as is. So a DateStyle change after preparing can change what a
//     statement's literals mean on some server connections, where
//     PostgreSQL keeps the old meaning (for search_path PostgreSQL re-parses
//     too); a server's cache never holds a statement under another scope's
//     name.
//   - Client: the client's named statements (client name → content). The
//     unnamed statement and portals pass through unchanged and are not
//     carried to another server connection: a client that relies on the
//     unnamed statement after its transaction ended may find it gone (as with
//     PgBouncer).
//   - ServerCache: the statements prepared on one server connection, an LRU
//     bounded by its capacity (default 100), plus the queue of requests the
//     server has not yet answered.
//
// # Rewriting
//
//   - Parse(name): recorded in the Client. Sent as Parse(serverName) only when
//     the server lacks the statement; otherwise swallowed and answered by a
//     synthesized ParseComplete at the exact place in the response stream
//     where the server's would have been.
//   - Bind, Describe('S'): the name is rewritten. If the server lacks the
//     statement (the client Parsed it on another server connection), a Parse
//     is injected just before; its ParseComplete is dropped.
//   - Close('S', name): removed from the Client only; answered by a
//     synthesized CloseComplete. The server copy stays cached for others.
//   - Eviction: a ServerCache over capacity sends Close('S') for its least
//     recently used statements, whose CloseComplete is dropped. Evictions are
//     deferred until the server is idle (ReadyForQuery 'I') with nothing
//     outstanding, because closing a statement closes the portals built from
//     it; a cache that reaches twice its capacity inside one transaction
//     evicts at once.
//   - Parse of a name the client already has: a probe goes first,
//     Parse(old server name, "SELECT 1") then Close of it. PostgreSQL answers
//     the probe 42P05 exactly when the old statement exists (the error is
//     reworded with the client's name, and skips the client's Parse with the
//     rest of its segment), as PostgreSQL answers a direct client; PgBouncer
//     closes the client here. Should the old statement be gone from the
//     server after all, the probe succeeds unseen and the new statement is
//     prepared.
//   - Parse of a statement the server has, while the transaction block is or
//     may be failed by then (last ReadyForQuery 'E', or a Sync, Query or
//     FunctionCall still outstanding): sent as Parse("pgtrust_probe", same
//     query) then Close of it, so that PostgreSQL answers as it would have:
//     25P02, or ParseComplete for ROLLBACK/COMMIT and in a healthy block. It
//     costs the server what the client's own Parse costs without a pooler.
//   - DEALLOCATE ALL and DISCARD ALL (seen by their CommandComplete) empty the
//     ServerCache and the Client, as they did on the server; statements
//     Parsed behind them in the same pipeline stay. Other clients'
//     statements are prepared again at their next use. The pool's own
//     DISCARD ALL between sessions is followed by ServerCache.Reset. A
//     message naming a statement, pipelined behind a simple Query or a
//     segment whose text contains "deallocate" or "discard", waits
//     (ErrWait) for that Query's or segment's ReadyForQuery, so that it is
//     answered as PostgreSQL answers it (26000 once the statement is gone).
//   - SQL-level PREPARE and DEALLOCATE name (their CommandComplete) mark the
//     ServerCache Broken: the engine cannot see the name, and SQL-level
//     statements must not reach another client. The session closes a broken
//     server connection at release.
//   - Hidden changes (DEALLOCATE or PREPARE of a "pgtrust_" name inside DO
//     $$ EXECUTE $$): a rewritten Bind or Describe answered 26000, or an
//     engine Parse answered 42P05, marks the cache Broken and the client gets
//     that error reworded to say its statement is out of step with the
//     server connection and will be prepared again on retry.
//   - A named Parse pipelined behind a simple Query, or behind a segment
//     that bound a statement, whose text contains "set" (SET, RESET,
//     set_config) waits (ErrWait) until that Query's or segment's
//     ReadyForQuery: PostgreSQL reports setting changes just before it, and
//     the session updates the scope from that report.
//   - COPY FROM STDIN: a Sync pipelined behind the COPY's Execute is ignored
//     by the server (it is in copy-in mode) and gets no ReadyForQuery; it is
//     dropped from the queue at CopyInResponse.
//   - Errors that answer a rewritten request (Bind, Describe, the probe) name
//     the client's statement, never the server name.
//
// # Invariants
//
//  1. Every request sent to the server has one queue entry, in send order;
//     each server response pops the entry it answers. Synthesized answers sit
//     in the queue behind a real request and are released right after that
//     request's response, so the client sees responses in exactly the order
//     it sent its requests. The head of the queue is never a synthesized
//     answer: when nothing is outstanding, a synthesized answer is due at
//     once (TakeImmediate).
//  2. An ErrorResponse is never dropped. PostgreSQL skips everything up to the
//     next Sync after an error, so when an injected Parse fails, the client
//     receives that error in place of the answer to its own Bind or Describe,
//     the request that caused the injection.
//  3. What a skipped request would have changed is undone at the
//     ReadyForQuery that ends the failed pipeline: a failed Parse leaves
//     neither the ServerCache nor the Client (as on PostgreSQL, the name does
//     not exist afterwards), a skipped eviction Close puts the statement back
//     in the cache, a skipped client Close restores the client's name, and
//     synthesized answers behind the error are not sent (PostgreSQL would not
//     have answered them).
//  4. A pipeline segment is the requests up to a Sync. A message is never
//     translated against state that an earlier, unanswered segment changed
//     (a name it Parsed or Closed, a statement it prepared or evicted):
//     Translate returns ErrWait instead, and the session retries after
//     ServerCache.Settled. Within one segment, translation is exact by
//     invariant 3; across segments, it is exact by waiting. Pipelines whose
//     segments do not reuse each other's names are not slowed.
//  5. A server connection may be given to another client only when
//     ServerCache.Outstanding() is 0 and ServerCache.Broken() is false (a
//     broken one is closed); the cache itself stays with the server
//     connection for its whole life and is discarded with it.
//
// # Limits
//
// A client holds at most DefaultMaxStatements named statements
// (Client.SetMaxStatements): a Parse of a new name beyond it is replaced by
// an unnamed DO block that raises SQLSTATE 54000 with a message and a hint,
// so the server itself fails the segment and any transaction block, as
// after its own errors. It replaces the unnamed statement and portal, which
// PostgreSQL would have kept.
//
// # Refusals
//
// Translate refuses (a *failure.Error, class protocol_error; the session sends
// the client an ErrorResponse and closes it) any use of a name with the
// reserved "pgtrust_" prefix. Filter refuses a response that answers no
// outstanding request (a desynchronised stream: the server connection must be
// closed, never reused). A Bind or Describe of a name the client never
// Parsed is sent unchanged, so PostgreSQL answers it with its own 26000
// error; Close of such a name is answered CloseComplete, as PostgreSQL does.
//
// # Not supported
//
//   - SQL-level PREPARE, EXECUTE and DEALLOCATE are not carried across server
//     connections (see Rewriting for how they break the cache). Inside DO,
//     a DEALLOCATE of a "pgtrust_" name followed by a PREPARE of the same
//     name with another query cannot be detected: the next Bind runs the
//     other query.
//   - COPY BOTH (replication) and the unnamed statement or portals across
//     transactions (see Model).
//   - A named Parse in the same extended-protocol segment as a SET of a
//     scope setting (before its Sync) is scoped by the old value: PostgreSQL
//     reports the change only before the segment's ReadyForQuery, which
//     cannot come before the client sends that Sync. A SET inside a
//     function whose call text has no "set" is not seen either.
//   - Terminate and cancel requests are the session's business: Translate
//     passes Terminate through like any message it does not track.
//
// # Messages the engine must see
//
// A session may copy other messages raw, in order with the rest:
//   - from the client, Rewrite (or Translate) must see Parse, Bind,
//     Describe, Close, Execute, Sync, Query, FunctionCall, CopyDone and
//     CopyFail (the end of COPY FROM STDIN: Syncs count again). Flush,
//     CopyData and Terminate need not be seen.
//   - from the server, Filter must see ParseComplete, BindComplete,
//     CloseComplete, NoData, RowDescription, CommandComplete,
//     EmptyQueryResponse, PortalSuspended, ErrorResponse, ReadyForQuery and
//     CopyInResponse. The final answer to every request is one of these, so
//     synthesized answers released behind it keep their place. Others
//     (ParameterDescription, DataRow, CopyOutResponse, CopyData, CopyDone,
//     FunctionCallResponse, NoticeResponse, NotificationResponse,
//     ParameterStatus) need not be seen.
//
// # Concurrency
//
// Rewrite (Translate) and Filter may run on different goroutines (client→server and
// server→client pumps); Client and ServerCache lock themselves, always Client
// first. A session waiting after ErrWait must not block the goroutine that
// feeds Filter. Returned messages may share memory with the message passed in (a
// rewritten Bind keeps the parameter bytes): send them before receiving the
// next message from the same pgproto3 reader.
package prepared

import (
	"container/list"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/failure"
)

// ScopeSettings are the settings whose values the scope (Client.SetScope)
// must include: each changes what a Parse of the same text means.
func ScopeSettings() []string {
	return []string{"client_encoding", "DateStyle", "IntervalStyle", "TimeZone", "standard_conforming_strings", "search_path"}
}

// Prefix starts every server-side statement name; client names with it are
// refused so that no client can address another client's statements by name.
const Prefix = "pgtrust_"

// probeName is the throwaway statement of the failed-transaction probe; it
// never outlives the pipeline segment that makes it.
const probeName = Prefix + "probe"

// DefaultCapacity is the ServerCache capacity when NewServerCache gets ≤ 0.
const DefaultCapacity = 100

// DefaultMaxStatements bounds the named statements one client may hold
// (Client.SetMaxStatements): the client decides how many it Parses, and
// each costs the session memory for as long as the client keeps it.
const DefaultMaxStatements = 10000

// statement is one prepared statement's content and server name. Immutable.
type statement struct {
	serverName string
	scope      string
	query      string
	oids       []uint32
	holds      hold // holdsOf(query), computed once
}

func newStatement(p *pgproto3.Parse, scope string) *statement {
	h := sha256.New()
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(scope)))
	h.Write(n[:])
	h.Write([]byte(scope))
	binary.BigEndian.PutUint32(n[:], uint32(len(p.ParameterOIDs)))
	h.Write(n[:])
	for _, o := range p.ParameterOIDs {
		binary.BigEndian.PutUint32(n[:], o)
		h.Write(n[:])
	}
	h.Write([]byte(p.Query))
	sum := h.Sum(nil)
	return &statement{
		serverName: Prefix + hex.EncodeToString(sum[:16]),
		scope:      scope,
		query:      p.Query,
		holds:      holdsOf(p.Query),
		oids:       append([]uint32(nil), p.ParameterOIDs...),
	}
}

func (s *statement) parse() *pgproto3.Parse {
	return &pgproto3.Parse{Name: s.serverName, Query: s.query, ParameterOIDs: s.oids}
}

// Client is one client session's named statements. Create with NewClient.
type Client struct {
	mu        sync.Mutex
	max       int // named statements at most (DefaultMaxStatements)
	stmts     map[string]*statement
	marks     map[string]mark // which pipeline segment last changed a name
	unnamed   hold            // what running the unnamed statement may do (holdsOf)
	scope     string
	immediate []pgproto3.BackendMessage
}

// SetScope sets what, besides the query text and parameter types, decides
// the meaning of the statements the client Parses from now on: statements
// are shared only between clients of the same scope. The scope is opaque
// here; the session builds it (paramsync's Client.ParseScope) from the
// client's values of every setting in ScopeSettings, and calls SetScope
// again whenever one of them changes (a ParameterStatus it passes to the
// client). Why each matters:
//   - search_path: PostgreSQL re-analyses a statement when the search_path
//     differs from its Parse's and refuses it (0A000 "cached plan must not
//     change result type") when its result columns change.
//   - DateStyle, IntervalStyle, TimeZone: literals such as
//     '01/02/2024'::date, '1 2'::interval or 'now'::timestamptz are
//     converted once, at Parse, and never re-analysed: a shared statement
//     would give one client another's date, or a frozen time.
//   - standard_conforming_strings: decides what a backslash in '...' means.
//   - client_encoding: the query text is converted from it at Parse, so the
//     same bytes mean different text in different encodings.
//
// Statements already Parsed keep their scope where the server has them
// (see Model in the package doc).
func (c *Client) SetScope(scope string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.scope = scope
}

// mark records that a request of segment seq on server sc changed a name.
type mark struct {
	sc  *ServerCache
	seq uint64
}

// NewClient returns a Client with no statements.
func NewClient() *Client {
	return &Client{max: DefaultMaxStatements, stmts: map[string]*statement{}, marks: map[string]mark{}}
}

// SetMaxStatements bounds the client's named statements (DefaultMaxStatements
// when n ≤ 0). A Parse of a new name beyond it fails in band with SQLSTATE
// 54000, as PostgreSQL's own errors do: the server skips the rest of the
// pipeline segment and fails a transaction block; the client's session goes
// on and may Parse again once it has Closed statements.
func (c *Client) SetMaxStatements(n int) {
	if n <= 0 {
		n = DefaultMaxStatements
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.max = n
}

// limitQuery raises the over-limit error on the server itself, so that
// PostgreSQL skips the rest of the segment and fails a transaction block
// exactly as it does after its own errors. Constant text: no client data.
func limitQuery(max int) string {
	return fmt.Sprintf("DO $pgtrust$BEGIN RAISE EXCEPTION USING ERRCODE = '54000', "+
		"MESSAGE = 'pgtrust: too many prepared statements: this client session already holds %d, the limit', "+
		"HINT = 'Close (DEALLOCATE) prepared statements the application no longer uses, or raise the pooler''s per-client statement limit.'; END$pgtrust$", max)
}

// ErrWait is returned by Rewrite and Translate when the message depends on
// the outcome of an earlier pipeline segment (up to a Sync) that the server
// has not answered yet: if that segment fails, PostgreSQL skips the rest of
// it, so a statement it Parses or Closes may or may not exist. Nothing was
// recorded; the session waits for ServerCache.Settled and calls Rewrite again
// with the same message (on whatever server connection the client then holds).
var ErrWait = errors.New("prepared: the message depends on an unanswered pipeline segment")

// Statements returns how many named statements the client has.
func (c *Client) Statements() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.stmts)
}

// TakeImmediate returns (and forgets) the synthesized answers that were due at
// once during the last Translate calls, because nothing was outstanding on the
// server before them. The session sends them to the client after sending the
// Translate result to the server, before the next Translate (see Rewrite,
// which returns them itself).
func (c *Client) TakeImmediate() []pgproto3.BackendMessage {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.immediate
	c.immediate = nil
	return out
}

// request kinds: the frontend message type byte, plus markers.
const (
	kParse    = 'P'
	kBind     = 'B'
	kDescribe = 'D'
	kClose    = 'C'
	kExecute  = 'E'
	kSync     = 'S'
	kQuery    = 'Q'
	kFunction = 'F'
)

type action uint8

const (
	forward action = iota // the server's answer goes to the client
	skip                  // the server's answer is dropped (engine's own request)
	fake                  // not sent; the synthesized answer goes to the client
)

// request is one entry of a ServerCache's queue.
type request struct {
	kind   byte
	action action
	answer pgproto3.BackendMessage // for fake

	// Undo, applied when PostgreSQL skipped this request after an error.
	added     *statement // Parse sent to the server: remove from the cache
	evicted   *statement // eviction Close: put back in the cache
	client    *Client    // client-map undo target
	name      string     // client name to restore or remove
	installed *statement // what this request made name mean (nil: it removed name)
	prev      *statement // what name meant before (nil: nothing)

	// A probe re-Parses the statement a client name already means, so that
	// PostgreSQL itself answers a duplicate Parse (42P05) in-band.
	probe *statement
	readd *statement // put back in the cache when this Parse succeeds

	// serverName is the server name a rewritten request used; an error
	// answering it is reworded with the client's name.
	serverName string
	dropped    bool // a DEALLOCATE ALL or DISCARD ALL ahead of it removed serverName
	limit      bool // the over-limit error in place of a client Parse
	holds      hold // a Query or segment's Sync that may change a scope setting or drop statements
}

// hold is what a simple Query, or a statement a segment runs, may do that
// messages pipelined behind it must wait for (its ReadyForQuery), because
// the engine learns the effect only from the answer.
type hold uint8

const (
	// holdScope: it may change a scope setting (SET, RESET, set_config all
	// contain "set"). PostgreSQL reports the change just before
	// ReadyForQuery, and the session updates the scope then; named Parses
	// wait.
	holdScope hold = 1 << iota
	// holdDrop: it may drop statements (DEALLOCATE, DISCARD). The engine
	// sees that in its CommandComplete; messages naming a statement wait,
	// so that they are answered as PostgreSQL answers them (26000 when the
	// statement is gone).
	holdDrop
)

// holdsOf says what running q may do. A false positive only delays the
// messages pipelined behind q by q's answer. One pass over q: a Query's
// text can be large, and every simple Query goes through here.
func holdsOf(q string) hold {
	var h hold
	for i := 0; i < len(q) && h != holdScope|holdDrop; i++ {
		switch q[i] | 0x20 {
		case 's':
			if hasFoldAt(q, i, "set") {
				h |= holdScope
			}
		case 'd':
			if hasFoldAt(q, i, "deallocate") || hasFoldAt(q, i, "discard") {
				h |= holdDrop
			}
		}
	}
	return h
}

// hasFoldAt reports whether s holds the lower-case ASCII word w at i, in
// any case.
func hasFoldAt(s string, i int, w string) bool {
	if len(s)-i < len(w) {
		return false
	}
	for j := 0; j < len(w); j++ {
		if s[i+j]|0x20 != w[j] {
			return false
		}
	}
	return true
}

func (sc *ServerCache) hold(h hold) {
	if h&holdScope != 0 {
		sc.setting++
	}
	if h&holdDrop != 0 {
		sc.dropping++
	}
}

func (sc *ServerCache) unhold(h hold) {
	if h&holdScope != 0 {
		sc.setting--
	}
	if h&holdDrop != 0 {
		sc.dropping--
	}
}

// undo reverts the client map only if nothing later changed the name again:
// a later request in another segment may have been translated before this
// one's failure was known.
func (r *request) undo(sc *ServerCache) {
	if r.added != nil {
		sc.remove(r.added.serverName)
	}
	if r.evicted != nil {
		sc.add(r.evicted)
	}
	if r.client != nil && r.client.stmts[r.name] == r.installed {
		if r.prev == nil {
			delete(r.client.stmts, r.name)
		} else {
			r.client.stmts[r.name] = r.prev
		}
	}
}

// ServerCache is one server connection's prepared statements and its queue of
// unanswered requests. Create with NewServerCache; discard it with the
// connection.
type ServerCache struct {
	mu       sync.Mutex
	capacity int
	lru      *list.List // of *statement, most recently used at the back
	byName   map[string]*list.Element
	queue    []*request
	idle     bool // the last ReadyForQuery said 'I' (true for a new connection)
	aborted  bool // the last ReadyForQuery said 'E': a failed transaction block
	failed   bool // an ErrorResponse arrived since the last ReadyForQuery
	copyIn   bool // CopyInResponse seen; Syncs are ignored by the server until the client's CopyDone/CopyFail
	broken   bool // the server's statements may differ from the cache's: close the connection at release
	setting  int  // outstanding Queries and Syncs that may change a scope setting (holdScope)
	dropping int  // outstanding Queries and Syncs that may drop statements (holdDrop)
	segHolds hold // what the statements the current segment binds may do

	parses, evictions uint64

	// Pipeline segments: sent counts the Syncs queued, done the ones
	// answered. wrote maps a server name to the segment that last added or
	// removed it.
	sent, done uint64
	wrote      map[string]uint64
	settle     chan struct{}
}

// uncertain says whether a change made in segment seq may still be undone:
// a Sync followed it and has not been answered.
func (sc *ServerCache) uncertain(seq uint64) bool { return seq < sc.sent && seq >= sc.done }

// Settled returns a channel closed when the server answers its next Sync (at
// once when none is outstanding): the moment a Translate that returned
// ErrWait may be retried.
func (sc *ServerCache) Settled() <-chan struct{} {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	// In COPY FROM STDIN nothing waits (waits says so): a session that
	// asked before the CopyInResponse arrived must not sleep on a Sync the
	// server will not answer until the copy data it no longer reads.
	if sc.copyIn || sc.done == sc.sent && sc.setting == 0 && sc.dropping == 0 {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	if sc.settle == nil {
		sc.settle = make(chan struct{})
	}
	return sc.settle
}

func (sc *ServerCache) syncDone() {
	sc.done++
	if sc.done == sc.sent {
		clear(sc.wrote)
	}
	sc.wake()
}

// wake releases the sessions waiting on Settled.
func (sc *ServerCache) wake() {
	if sc.settle != nil {
		close(sc.settle)
		sc.settle = nil
	}
}

// NewServerCache returns an empty cache holding at most capacity statements
// between transactions (DefaultCapacity when capacity ≤ 0).
func NewServerCache(capacity int) *ServerCache {
	if capacity <= 0 {
		capacity = DefaultCapacity
	}
	return &ServerCache{capacity: capacity, lru: list.New(), byName: map[string]*list.Element{}, idle: true, wrote: map[string]uint64{}}
}

// Len returns how many statements the engine believes are prepared on the
// server (including ones whose Parse is still outstanding).
func (sc *ServerCache) Len() int {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return sc.lru.Len()
}

// Names returns the server names in the cache, least recently used first.
func (sc *ServerCache) Names() []string {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	var out []string
	for e := sc.lru.Front(); e != nil; e = e.Next() {
		out = append(out, e.Value.(*statement).serverName)
	}
	return out
}

// Outstanding returns how many requests the server has not answered yet. The
// session may hand the connection to another client only when it is 0 (and
// the server said ReadyForQuery 'I').
func (sc *ServerCache) Outstanding() int {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return len(sc.queue)
}

// Counters returns how many Parses the engine sent to this server (client
// Parses it could not swallow, injected ones and probes) and how many
// statements it evicted.
func (sc *ServerCache) Counters() (parses, evictions uint64) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return sc.parses, sc.evictions
}

// Broken says whether the server's prepared statements may no longer be
// what the cache believes (an SQL-level DEALLOCATE or PREPARE, a statement
// missing or unexpectedly present). The session must close such a server
// connection when the client releases it, never reuse it.
func (sc *ServerCache) Broken() bool {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return sc.broken
}

// Reset empties the cache after the pool ran DISCARD ALL (or DEALLOCATE
// ALL) on the idle server connection itself, outside any client's session.
// Call it with nothing outstanding; with requests outstanding, the cache
// cannot know what the server holds and is marked Broken instead.
func (sc *ServerCache) Reset() {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if len(sc.queue) > 0 {
		sc.broken = true
		return
	}
	sc.clear()
	clear(sc.wrote)
	sc.idle, sc.aborted, sc.failed, sc.copyIn = true, false, false, false
	sc.segHolds, sc.setting, sc.dropping = 0, 0, 0
}

// droppedAll brings the cache and the client's names in line with a server
// that has just run DEALLOCATE ALL or DISCARD ALL: no statement Parsed before
// it exists. Requests still queued behind it were translated as if they had
// not; replaying them in order rebuilds what the server will hold and the
// names the client will have once they run.
func (sc *ServerCache) droppedAll(c *Client) {
	sc.clear()
	clear(c.stmts)
	readded := map[string]bool{}
	for _, r := range sc.queue {
		if r.added != nil {
			sc.add(r.added)
			readded[r.added.serverName] = true
		}
		if r.evicted != nil {
			sc.remove(r.evicted.serverName)
			if !readded[r.evicted.serverName] {
				r.evicted = nil // skipped or not, the statement is gone
			}
		}
		if (r.kind == kBind || r.kind == kDescribe) && r.serverName != "" && !readded[r.serverName] {
			// Translated before the command's answer: PostgreSQL's 26000
			// for it is the answer a direct client gets, not a lost cache.
			r.dropped = true
		}
		if r.client == c {
			if r.installed != nil {
				c.stmts[r.name] = r.installed
			} else {
				delete(c.stmts, r.name)
			}
			r.prev = nil // what the name meant before is deallocated
		}
	}
}

// lost rewrites an error that shows the server's statements differ from the
// cache's, and marks the cache broken: the client is told what happened
// rather than given a server name it never used.
func (sc *ServerCache) lost(e *pgproto3.ErrorResponse, name string) *pgproto3.ErrorResponse {
	sc.broken = true
	x := *e
	x.Message = fmt.Sprintf("pgtrust: prepared statement %q is out of step with the pooled server connection (%s); that server connection will be closed", name, e.Code)
	x.Detail = "An SQL-level DEALLOCATE, DISCARD or PREPARE of a pgtrust_ name, possibly inside a DO block, changed the server's statements without the pooler seeing it."
	x.Hint = "Run the statement again (it is prepared again where needed); do not DEALLOCATE or PREPARE names starting with pgtrust_."
	x.Where, x.File, x.Line, x.Routine = "", "", 0, ""
	return &x
}

func (sc *ServerCache) has(name string) bool {
	e, ok := sc.byName[name]
	if ok {
		sc.lru.MoveToBack(e)
	}
	return ok
}

func (sc *ServerCache) add(s *statement) {
	if e, ok := sc.byName[s.serverName]; ok {
		sc.lru.MoveToBack(e)
		return
	}
	sc.byName[s.serverName] = sc.lru.PushBack(s)
}

func (sc *ServerCache) remove(name string) {
	if e, ok := sc.byName[name]; ok {
		sc.lru.Remove(e)
		delete(sc.byName, name)
	}
}

func (sc *ServerCache) clear() {
	sc.lru.Init()
	sc.byName = map[string]*list.Element{}
}

// evict closes least recently used statements while over the limit: the
// capacity when the server is between transactions, twice it otherwise.
func (sc *ServerCache) evict(out []pgproto3.FrontendMessage) []pgproto3.FrontendMessage {
	limit := sc.capacity
	if !sc.idle || len(sc.queue) > 0 {
		limit = 2 * sc.capacity
	}
	for sc.lru.Len() > limit {
		s := sc.lru.Remove(sc.lru.Front()).(*statement)
		delete(sc.byName, s.serverName)
		sc.wrote[s.serverName] = sc.sent
		sc.evictions++
		out = append(out, &pgproto3.Close{ObjectType: 'S', Name: s.serverName})
		sc.queue = append(sc.queue, &request{kind: kClose, action: skip, evicted: s})
	}
	return out
}

// boundaryPending says whether a request that may leave a failed transaction
// block behind it (the end of an extended-protocol segment, a simple Query,
// a FunctionCall) is still outstanding.
func (sc *ServerCache) boundaryPending() bool {
	for _, r := range sc.queue {
		switch r.kind {
		case kSync, kQuery, kFunction:
			return true
		}
	}
	return false
}

// ensure returns out with an injected Parse when the server lacks s.
func (sc *ServerCache) ensure(s *statement, out []pgproto3.FrontendMessage) []pgproto3.FrontendMessage {
	if sc.has(s.serverName) {
		return out
	}
	sc.parses++
	sc.add(s)
	sc.wrote[s.serverName] = sc.sent
	sc.queue = append(sc.queue, &request{kind: kParse, action: skip, added: s})
	return append(out, s.parse())
}

func (c *Client) answer(sc *ServerCache, r *request) {
	if len(sc.queue) == 0 {
		c.immediate = append(c.immediate, r.answer)
		return
	}
	sc.queue = append(sc.queue, r)
}

func reserved(name string) *failure.Error {
	return failure.New(failure.ProtocolError, "statement name %q uses the prefix %q that pgtrust reserves for pooled prepared statements", name, Prefix).
		WithEvidence("client statement name %q", name).
		WithFix("name prepared statements without the %q prefix", Prefix)
}

// rescope returns the statement a use of st must name on sc. A server
// connection has the settings of the client's current scope; a Parse there
// means the statement under those settings, so a statement Parsed under an
// earlier scope is injected under its name for the current one: under its
// old name, the cache (shared with clients of the old scope) would hold a
// statement whose meaning differs from its name. Where the server already
// has the old statement, it is used as is, as PostgreSQL keeps a statement's
// meaning.
func (c *Client) rescope(st *statement, sc *ServerCache) *statement {
	if st == nil || st.scope == c.scope {
		return st
	}
	if _, ok := sc.byName[st.serverName]; ok {
		return st
	}
	return newStatement(&pgproto3.Parse{Query: st.query, ParameterOIDs: st.oids}, c.scope)
}

// lookup returns what the client's name means on sc (rescope), recording a
// rescoped statement so later uses share it.
func (c *Client) lookup(name string, sc *ServerCache) (*statement, bool) {
	st, ok := c.stmts[name]
	if !ok {
		return nil, false
	}
	if r := c.rescope(st, sc); r != st {
		c.stmts[name] = r
		st = r
	}
	return st, true
}

// waits says whether translating msg reads a name or a cached statement that
// a request in an unanswered earlier segment changed.
func (c *Client) waits(msg pgproto3.FrontendMessage, sc *ServerCache) bool {
	if sc.copyIn {
		// The server reads only COPY data now; anything else is its error
		// to give, and waiting would stop the session reading that data.
		return false
	}
	if p, ok := msg.(*pgproto3.Parse); ok && p.Name != "" && sc.setting > 0 {
		// The Query ahead may change a scope setting; PostgreSQL reports
		// it (ParameterStatus) just before that Query's ReadyForQuery,
		// and the session updates the scope then.
		return true
	}
	name := statementName(msg)
	if name == "" {
		return false
	}
	if sc.dropping > 0 {
		// The Query or segment ahead may drop statements (holdDrop).
		return true
	}
	if sc.done == sc.sent {
		return false
	}
	var content *statement
	if p, ok := msg.(*pgproto3.Parse); ok {
		content = newStatement(p, c.scope)
	}
	if mk, ok := c.marks[name]; ok && mk.sc == sc && sc.uncertain(mk.seq) {
		return true
	}
	for _, st := range []*statement{c.stmts[name], c.rescope(c.stmts[name], sc), content} {
		if st == nil {
			continue
		}
		if seq, ok := sc.wrote[st.serverName]; ok && sc.uncertain(seq) {
			return true
		}
	}
	return false
}

// statementName is the named statement msg refers to, or "".
func statementName(msg pgproto3.FrontendMessage) string {
	switch m := msg.(type) {
	case *pgproto3.Parse:
		return m.Name
	case *pgproto3.Bind:
		return m.PreparedStatement
	case *pgproto3.Describe:
		if m.ObjectType == 'S' {
			return m.Name
		}
	case *pgproto3.Close:
		if m.ObjectType == 'S' {
			return m.Name
		}
	}
	return ""
}

func (c *Client) mark(name string, sc *ServerCache) {
	if len(c.marks) > 2*len(c.stmts)+64 {
		for n, mk := range c.marks {
			if mk.sc != sc || !sc.uncertain(mk.seq) {
				delete(c.marks, n)
			}
		}
	}
	c.marks[name] = mark{sc: sc, seq: sc.sent}
}

// Rewrite turns one client message into the messages to send to the server
// (toServer) and the synthesized answers due to the client at once
// (toClient: nothing was outstanding before the message, so no server answer
// can come before them), and records what responses to synthesize or drop.
// The session sends toServer to the server, then toClient to the client,
// before it rewrites the next message. This is the form to use: its answers
// cannot be delivered out of order. Errors are Translate's.
func (c *Client) Rewrite(msg pgproto3.FrontendMessage, sc *ServerCache) (toServer []pgproto3.FrontendMessage, toClient []pgproto3.BackendMessage, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	sc.mu.Lock()
	defer sc.mu.Unlock()
	toServer, err = c.translate(msg, sc)
	toClient, c.immediate = c.immediate, nil
	return toServer, toClient, err
}

// Translate is Rewrite with the answers due at once kept for TakeImmediate
// (the contract's form). The caller must call TakeImmediate after each
// Translate, before translating the next message, and send its result to
// the client after sending Translate's to the server. Should it not, Filter
// still delivers pending answers ahead of any later server response, so
// order is kept; only an answer with no server message behind it waits.
func (c *Client) Translate(msg pgproto3.FrontendMessage, sc *ServerCache) ([]pgproto3.FrontendMessage, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return c.translate(msg, sc)
}

func (c *Client) translate(msg pgproto3.FrontendMessage, sc *ServerCache) ([]pgproto3.FrontendMessage, error) {
	if c.waits(msg, sc) {
		return nil, ErrWait
	}
	var out []pgproto3.FrontendMessage
	// Deferred evictions go first: the server is between transactions, so
	// no portal can depend on the statements closed.
	if sc.idle && len(sc.queue) == 0 {
		out = sc.evict(out)
	}
	switch m := msg.(type) {
	case *pgproto3.Parse:
		if m.Name == "" {
			c.unnamed = holdsOf(m.Query)
			sc.queue = append(sc.queue, &request{kind: kParse, action: forward})
			return append(out, m), nil
		}
		if strings.HasPrefix(m.Name, Prefix) {
			return nil, reserved(m.Name)
		}
		s := newStatement(m, c.scope)
		prev, _ := c.lookup(m.Name, sc)
		if prev == nil && len(c.stmts) >= c.max {
			// Answered by the server's error in place of the Parse. Uses
			// the unnamed statement and portal, which the error's
			// segment would have left untouched on PostgreSQL.
			sc.queue = append(sc.queue,
				&request{kind: kParse, action: skip},
				&request{kind: kBind, action: skip},
				&request{kind: kExecute, action: skip, limit: true})
			return append(out, &pgproto3.Parse{Query: limitQuery(c.max)}, &pgproto3.Bind{}, &pgproto3.Execute{}), nil
		}
		if prev != nil {
			// The name may exist (PostgreSQL: 42P05) or may be about to
			// vanish because an earlier segment of the pipeline fails; only
			// the server knows. A Parse under the old statement's server
			// name fails with 42P05 exactly when it exists, and the error
			// skips the client's Parse with the rest of the segment. When
			// it succeeds, the Close right behind it removes what it made.
			out = sc.ensure(prev, out)
			sc.parses++
			sc.queue = append(sc.queue,
				&request{kind: kParse, action: skip, probe: prev, name: m.Name, serverName: prev.serverName},
				&request{kind: kClose, action: skip, probe: prev})
			out = append(out, &pgproto3.Parse{Name: prev.serverName, Query: "SELECT 1"},
				&pgproto3.Close{ObjectType: 'S', Name: prev.serverName})
		}
		c.stmts[m.Name] = s
		c.mark(m.Name, sc)
		r := &request{kind: kParse, client: c, name: m.Name, installed: s, prev: prev}
		cached := sc.has(s.serverName)
		if prev != nil && prev.serverName == s.serverName {
			// Same statement again: if the probe succeeds, its Close has
			// just removed it from the server, so it must be sent; if the
			// probe fails, this is skipped and the statement stays cached.
			sc.parses++
			r.action, r.readd = forward, s
			sc.queue = append(sc.queue, r)
			return append(out, s.parse()), nil
		}
		if cached && (sc.aborted || sc.boundaryPending()) {
			// In a failed transaction block PostgreSQL refuses a Parse
			// (25P02) unless it is ROLLBACK or COMMIT; a synthesized
			// ParseComplete would give the client a name PostgreSQL never
			// made. The block may be failed now (last ReadyForQuery 'E') or
			// by the time the Parse runs (an earlier Sync or Query still
			// outstanding). The same query under a throwaway name gets the
			// server's own answer; the Close behind it removes what it made.
			r.action = forward
			sc.parses++
			sc.queue = append(sc.queue, r, &request{kind: kClose, action: skip})
			return append(out, &pgproto3.Parse{Name: probeName, Query: s.query, ParameterOIDs: s.oids},
				&pgproto3.Close{ObjectType: 'S', Name: probeName}), nil
		}
		if cached {
			r.action, r.answer = fake, &pgproto3.ParseComplete{}
			c.answer(sc, r)
			return out, nil
		}
		sc.parses++
		sc.add(s)
		sc.wrote[s.serverName] = sc.sent
		r.action, r.added = forward, s
		sc.queue = append(sc.queue, r)
		out = append(out, s.parse())
		return sc.evict(out), nil

	case *pgproto3.Bind:
		name := m.PreparedStatement
		if name == "" {
			sc.segHolds |= c.unnamed
		}
		if name != "" {
			s, ok := c.lookup(name, sc)
			if ok {
				sc.segHolds |= s.holds
			}
			if !ok && strings.HasPrefix(name, Prefix) {
				return nil, reserved(name)
			}
			if ok {
				out = sc.ensure(s, out)
				b := *m
				b.PreparedStatement = s.serverName
				m = &b
				r := &request{kind: kBind, action: forward, name: name, serverName: s.serverName}
				sc.queue = append(sc.queue, r)
				return sc.evict(append(out, m)), nil
			}
		}
		sc.queue = append(sc.queue, &request{kind: kBind, action: forward})
		return sc.evict(append(out, m)), nil

	case *pgproto3.Describe:
		if m.ObjectType == 'S' && m.Name != "" {
			s, ok := c.lookup(m.Name, sc)
			if !ok && strings.HasPrefix(m.Name, Prefix) {
				return nil, reserved(m.Name)
			}
			if ok {
				out = sc.ensure(s, out)
				sc.queue = append(sc.queue, &request{kind: kDescribe, action: forward, name: m.Name, serverName: s.serverName})
				return sc.evict(append(out, &pgproto3.Describe{ObjectType: 'S', Name: s.serverName})), nil
			}
		}
		sc.queue = append(sc.queue, &request{kind: kDescribe, action: forward})
		return sc.evict(append(out, m)), nil

	case *pgproto3.Close:
		if m.ObjectType == 'S' && m.Name != "" {
			r := &request{kind: kClose, action: fake, answer: &pgproto3.CloseComplete{}}
			if s, ok := c.stmts[m.Name]; ok {
				delete(c.stmts, m.Name)
				c.mark(m.Name, sc)
				r.client, r.name, r.prev = c, m.Name, s // installed nil: it removed the name
			}
			c.answer(sc, r)
			return out, nil
		}
		sc.queue = append(sc.queue, &request{kind: kClose, action: forward})
		return append(out, m), nil

	case *pgproto3.Execute:
		sc.queue = append(sc.queue, &request{kind: kExecute, action: forward})
	case *pgproto3.Sync:
		// During COPY FROM STDIN the server ignores Sync: no answer to wait
		// for. Unless the COPY failed before the server read it: then it
		// answers. Which one happens depends on how far the server read
		// ahead, so the connection's stream can no longer be followed
		// exactly: it is closed, not reused, when the client gives it back
		// (a stray ReadyForQuery must never reach another client).
		if sc.copyIn {
			sc.broken = true
		} else {
			// A segment that ran a statement that may SET reports it just
			// before this Sync's ReadyForQuery.
			r := &request{kind: kSync, action: forward, holds: sc.segHolds}
			sc.hold(r.holds)
			sc.segHolds = 0
			sc.queue = append(sc.queue, r)
			sc.sent++
		}
	case *pgproto3.Query:
		if sc.copyIn {
			sc.broken = true // see Sync
		}
		r := &request{kind: kQuery, action: forward, holds: holdsOf(m.String)}
		sc.hold(r.holds)
		sc.queue = append(sc.queue, r)
	case *pgproto3.FunctionCall:
		if sc.copyIn {
			sc.broken = true // see Sync
		}
		sc.queue = append(sc.queue, &request{kind: kFunction, action: forward})
	case *pgproto3.CopyDone, *pgproto3.CopyFail:
		sc.copyIn = false
	}
	return append(out, msg), nil
}

func desync(msg pgproto3.BackendMessage, want byte, sc *ServerCache) *failure.Error {
	head := "nothing"
	if len(sc.queue) > 0 {
		head = string(sc.queue[0].kind)
	}
	return failure.New(failure.ProtocolError, "the server sent %T, which answers no outstanding request", msg).
		WithEvidence("expected an answer to %q; the oldest outstanding request is %s", string(want), head).
		WithFix("close this server connection; if it recurs, report it with the message sequence")
}

// pop removes the head if it is of one of kinds and says whether its answer
// is dropped.
func (sc *ServerCache) pop(kinds string) (popped, drop bool) {
	r := sc.popReq(kinds)
	if r == nil {
		return false, false
	}
	return true, r.action == skip
}

func (sc *ServerCache) popReq(kinds string) *request {
	if len(sc.queue) == 0 || !strings.ContainsRune(kinds, rune(sc.queue[0].kind)) {
		return nil
	}
	r := sc.queue[0]
	sc.queue[0] = nil
	sc.queue = sc.queue[1:]
	if r.probe != nil && r.kind == kClose {
		// The probe succeeded, so the old statement was not on the server
		// (its Parse failed in an earlier segment), and is not now either.
		sc.remove(r.probe.serverName)
	}
	if r.readd != nil {
		sc.add(r.readd)
	}
	if r.kind == kSync {
		sc.syncDone()
	}
	if r.holds != 0 {
		sc.unhold(r.holds)
		sc.wake()
	}
	return r
}

// Filter takes one server message and returns what the client must see:
// nothing (an answer to the engine's own request), the message, or the
// message followed by synthesized answers that were waiting behind it.
func (c *Client) Filter(msg pgproto3.BackendMessage, sc *ServerCache) ([]pgproto3.BackendMessage, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	sc.mu.Lock()
	defer sc.mu.Unlock()

	drop := false
	strict := func(kind byte) error {
		ok, d := sc.pop(string(kind))
		if !ok {
			return desync(msg, kind, sc)
		}
		drop = d
		return nil
	}
	switch m := msg.(type) {
	case *pgproto3.ParseComplete:
		if err := strict(kParse); err != nil {
			return nil, err
		}
	case *pgproto3.BindComplete:
		if err := strict(kBind); err != nil {
			return nil, err
		}
	case *pgproto3.CloseComplete:
		if err := strict(kClose); err != nil {
			return nil, err
		}
	case *pgproto3.RowDescription, *pgproto3.NoData:
		_, drop = sc.pop(string(kDescribe)) // a simple Query's RowDescription answers no Describe
	case *pgproto3.CommandComplete:
		switch string(m.CommandTag) {
		case "DEALLOCATE ALL", "DISCARD ALL":
			sc.droppedAll(c)
		case "DEALLOCATE", "PREPARE":
			// The engine cannot tell which name; SQL-level statements
			// must not reach another client anyway.
			sc.broken = true
		}
		_, drop = sc.pop(string(kExecute))
	case *pgproto3.EmptyQueryResponse, *pgproto3.PortalSuspended:
		_, drop = sc.pop(string(kExecute))
	case *pgproto3.ErrorResponse:
		sc.failed = true
		// An error ends COPY FROM STDIN on the server's side (it drops the
		// client's remaining copy messages).
		sc.copyIn = false
		var head *request
		if len(sc.queue) > 0 {
			head = sc.queue[0]
		}
		switch {
		case head != nil && m.Code == "26000" && (head.kind == kBind || head.kind == kDescribe) && head.serverName != "" && !head.dropped:
			// The cache said the server had it. Forget it, so a retry
			// in this transaction injects the Parse again.
			sc.remove(head.serverName)
			msg = sc.lost(m, head.name)
		case head != nil && m.Code == "42P05" && head.kind == kParse && head.probe == nil:
			// Only the duplicate-Parse probe expects 42P05: the server
			// has a statement the cache does not know.
			name := head.name
			if name == "" {
				name = "(injected)"
				if len(sc.queue) > 1 && sc.queue[1].name != "" {
					name = sc.queue[1].name // the request the Parse was injected for
				}
			}
			msg = sc.lost(m, name)
		case head != nil && head.limit:
			// The error is the answer to the client's Parse: not from a
			// PL/pgSQL function the client never called.
			e := *m
			e.Where, e.File, e.Line, e.Routine = "", "", 0, ""
			msg = &e
		case head != nil && head.serverName != "":
			// Name the client's statement, as PostgreSQL would have.
			e := *m
			e.Message = strings.Replace(e.Message, `"`+head.serverName+`"`, `"`+head.name+`"`, 1)
			msg = &e
		}
	case *pgproto3.CopyInResponse:
		// Syncs sent behind the Execute are ignored by the server while it
		// copies in, so they will get no ReadyForQuery.
		sc.copyIn = true
		// A session waiting (ErrWait) for this segment would otherwise
		// never see its ReadyForQuery: the server now waits for the
		// client's COPY data, which the session must read on.
		if sc.settle != nil {
			close(sc.settle)
			sc.settle = nil
		}
		kept := sc.queue[:0]
		for _, r := range sc.queue {
			if r.kind != kSync {
				kept = append(kept, r)
			} else {
				sc.sent--
				sc.unhold(r.holds)
			}
		}
		sc.queue = kept
	case *pgproto3.ReadyForQuery:
		sc.idle = m.TxStatus == 'I'
		sc.aborted = m.TxStatus == 'E'
		if ok, _ := sc.pop(string([]byte{kSync, kQuery, kFunction})); !ok && sc.failed {
			// The requests between the failed one and the Sync were skipped:
			// undo them, newest first, and end at the Sync.
			n := 0
			for n < len(sc.queue) && sc.queue[n].kind != kSync {
				n++
			}
			if n == len(sc.queue) {
				return nil, desync(msg, kSync, sc)
			}
			for i := n - 1; i >= 0; i-- {
				sc.queue[i].undo(sc)
				sc.unhold(sc.queue[i].holds)
			}
			sc.unhold(sc.queue[n].holds)
			sc.queue = sc.queue[n+1:]
			sc.syncDone()
		}
		sc.failed = false
	}
	// Answers due at once that the session has not taken yet precede
	// every later response.
	out := c.immediate
	c.immediate = nil
	if !drop {
		out = append(out, msg)
	}
	for len(sc.queue) > 0 && sc.queue[0].action == fake {
		out = append(out, sc.queue[0].answer)
		sc.queue = sc.queue[1:]
	}
	return out, nil
}
