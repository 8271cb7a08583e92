package paramsync

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/failure"
)

// Kind is a kind of session state a transaction-mode pool cannot carry.
type Kind int

const (
	StartupParameter Kind = iota + 1 // an unreported parameter in the startup packet
	Listen                           // LISTEN: notifications would go to whoever holds the server connection
	HoldCursor                       // DECLARE ... WITH HOLD left open after the transaction
	SQLPrepare                       // SQL PREPARE (protocol-level Parse is handled by internal/prepared)
	SessionSetting                   // SET (not LOCAL) of a parameter the server does not report
	RoleChange                       // SET ROLE / SET SESSION AUTHORIZATION outliving the transaction
	TempObject                       // a temporary table, view or sequence outliving the transaction
	AdvisoryLock                     // a session-level advisory lock held after the transaction
	LoadLibrary                      // LOAD: a shared library stays loaded in the server process
)

var kindNames = map[Kind]string{
	StartupParameter: "startup_parameter", Listen: "listen", HoldCursor: "hold_cursor",
	SQLPrepare: "sql_prepare", SessionSetting: "session_setting", RoleChange: "role_change",
	TempObject: "temp_object", AdvisoryLock: "advisory_lock", LoadLibrary: "load",
}

func (k Kind) String() string {
	if n, ok := kindNames[k]; ok {
		return n
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// SQLState is the code of every hazard's ErrorResponse: feature_not_supported.
const SQLState = "0A000"

// Hazard is session state found on (or asked of) a server connection that a
// transaction-mode pool cannot carry to the client's next transaction.
type Hazard struct {
	Kind   Kind
	Name   string // the parameter, cursor, statement or role concerned ("" when several or unknown)
	Detail string // what was found, for the client and the log
}

// Delivery says how the client session learns of a hazard.
type Delivery int

const (
	// BeforeRun: found before anything of the client's ran (its startup
	// packet, or a startup value Plan cannot carry): send ErrorResponse
	// (FATAL) instead of running it, and close the client connection, as
	// the server does for an unknown startup parameter.
	BeforeRun Delivery = iota + 1
	// AfterReadyForQuery: found when the transaction had ended. It
	// committed if it succeeded, so the client must not get an error for
	// it: a driver would report the COMMIT as failed and may retry work
	// that is done. Forward the transaction's ReadyForQuery first, then send
	// ErrorResponse (FATAL) and close the client connection and the server
	// connection (Release(false)), which undoes the state. It is what the
	// server itself does to an idle session (idle_session_timeout,
	// pg_terminate_backend: FATAL, then close), which drivers already
	// handle: the error surfaces at the client's next use as a lost
	// connection, that next statement never ran, and a driver or client
	// pool reconnects. Continuing the session instead would hide that its
	// LISTEN, SET, cursor or temporary table is gone.
	AfterReadyForQuery
)

func (d Delivery) String() string {
	switch d {
	case BeforeRun:
		return "before_run"
	case AfterReadyForQuery:
		return "after_ready_for_query"
	}
	return fmt.Sprintf("delivery(%d)", int(d))
}

// Delivery says how the session delivers h (see the constants).
func (h *Hazard) Delivery() Delivery {
	if h.Kind == StartupParameter {
		return BeforeRun
	}
	return AfterReadyForQuery
}

func (h *Hazard) what() (msg, hint string) {
	n := clip(h.Name)
	switch h.Kind {
	case StartupParameter:
		return fmt.Sprintf("startup parameter %s cannot be kept in transaction pooling mode", n),
			"Set it with ALTER ROLE ... SET or ALTER DATABASE ... SET, have the pool ignore it (ignore list), or connect through a session-mode pool."
	case Listen:
		return "LISTEN is not supported in transaction pooling mode",
			"Connect through a session-mode pool (pool_mode = \"session\") for LISTEN/NOTIFY, or poll a table."
	case HoldCursor:
		return fmt.Sprintf("cursor %s declared WITH HOLD is not supported in transaction pooling mode", n),
			"Close the cursor before the transaction ends, declare it without HOLD inside the transaction, or use a session-mode pool."
	case SQLPrepare:
		return fmt.Sprintf("SQL PREPARE (%s) is not supported in transaction pooling mode", n),
			"Use protocol-level prepared statements (the driver's Parse/Bind, which the pool carries), DEALLOCATE within the transaction, or use a session-mode pool."
	case SessionSetting:
		return fmt.Sprintf("SET %s outside SET LOCAL is not supported in transaction pooling mode", n),
			"Use SET LOCAL inside a transaction, ALTER ROLE ... SET, or a session-mode pool; only reported parameters (DateStyle, TimeZone, search_path on PostgreSQL 18, ...) are kept per client."
	case RoleChange:
		return fmt.Sprintf("a role change (%s) outliving the transaction is not supported in transaction pooling mode", n),
			"Use SET LOCAL ROLE inside a transaction, or connect as that role."
	case TempObject:
		return "temporary objects outliving the transaction are not supported in transaction pooling mode",
			"Create them with ON COMMIT DROP, drop them before COMMIT, or use a session-mode pool."
	case AdvisoryLock:
		return "session-level advisory locks are not supported in transaction pooling mode",
			"Use transaction-level locks (pg_advisory_xact_lock), or a session-mode pool."
	case LoadLibrary:
		return "LOAD is not supported in transaction pooling mode",
			"Load the library for every session with session_preload_libraries (ALTER ROLE/DATABASE ... SET), or use a session-mode pool."
	}
	return "session state not supported in transaction pooling mode", "Use a session-mode pool."
}

func (h *Hazard) Error() string {
	msg, _ := h.what()
	return msg
}

// ErrorResponse is what the client receives, as Delivery says: severity
// FATAL (the session ends), SQLSTATE 0A000, the message, what was found and
// done (Detail), and the fix (Hint).
func (h *Hazard) ErrorResponse() *pgproto3.ErrorResponse {
	msg, hint := h.what()
	detail := h.Detail
	if h.Delivery() == AfterReadyForQuery {
		detail = strings.TrimSpace(detail + " The transaction had already ended and its result was reported (committed if it succeeded); the pool ended this session and closed its server connection, which undid this state.")
	}
	return &pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: SQLState,
		Message: msg, Detail: detail, Hint: hint}
}

// Failure is the hazard as a classified error for the pool's log and
// metrics: the client's session needs what only session pooling gives, a
// mismatch between the application and the configured pool mode.
func (h *Hazard) Failure() *failure.Error {
	msg, hint := h.what()
	return failure.New(failure.ConfigInvalid, "%s", msg).
		WithEvidence("kind %s; %s", h.Kind, clip(h.Detail)).
		WithFix("%s", hint)
}

// Unwrap makes a Hazard a classified error too: failure.ClassOf and
// failure.As see its Failure.
func (h *Hazard) Unwrap() error { return h.Failure() }

// clip bounds client-chosen names in messages.
func clip(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return s
}

// pending flags: what the server has said since the last check, and so
// which parts of the check are due.
const (
	needListen uint8 = 1 << iota
	needCursors
	needPrepared
	needSettings
	needRole
	needTemp
	needAdvisory
	needAll = needListen | needCursors | needPrepared | needSettings | needRole | needTemp | needAdvisory
)

// Watch follows the messages of one server connection and says when a
// check is due. It reads only command tags, ReadyForQuery and
// ParameterStatus: what the server tells, never the client's SQL, which can
// hide state changes in functions. One Watch per server connection; not safe
// for concurrent use.
type Watch struct {
	every   bool
	pending uint8  // since the last idle ReadyForQuery
	due     uint8  // the parts of the check asked for at that ReadyForQuery
	auth    string // session_authorization as first reported
}

// NewWatch returns a Watch. everyTransaction makes every return to idle call
// for the whole check, advisory locks included: that also catches what no
// tag shows (set_config(), pg_advisory_lock(), SET inside a function), at a
// price measured in the docs (milliseconds per transaction, mostly
// pg_settings). Otherwise a check runs only after a tag that calls for it,
// and only the parts that tag calls for.
func NewWatch(everyTransaction bool) *Watch { return &Watch{every: everyTransaction} }

// Server takes one message the server sent. check is true at a ReadyForQuery
// with status idle when Query must run before the server connection goes
// back to the pool (the client's ReadyForQuery waits for it; a hazard is
// then delivered as Hazard.Delivery says: after that ReadyForQuery).
// h is set at once for what needs no check: session_authorization changing
// (SET SESSION AUTHORIZATION, reported) and LOAD (not transactional, and no
// catalog shows it). The pool delivers h at the end of the transaction, like
// the check's hazards (Delivery AfterReadyForQuery).
func (w *Watch) Server(msg pgproto3.BackendMessage) (check bool, h *Hazard) {
	switch m := msg.(type) {
	case *pgproto3.CommandComplete:
		if string(m.CommandTag) == "LOAD" {
			return false, &Hazard{Kind: LoadLibrary, Detail: "The session ran LOAD."}
		}
		w.pending |= tagNeeds(m.CommandTag)
	case *pgproto3.ParameterStatus:
		if m.Name == "session_authorization" {
			if w.auth == "" {
				w.auth = m.Value
			} else if m.Value != w.auth {
				return false, &Hazard{Kind: RoleChange, Name: "SET SESSION AUTHORIZATION " + m.Value,
					Detail: "session_authorization changed from " + w.auth + " to " + m.Value + "."}
			}
		}
	case *pgproto3.ReadyForQuery:
		if m.TxStatus != 'I' {
			return false, nil
		}
		// Every SET tag costs the pg_settings scan, even one a report
		// explains: counting reports against SETs is unsound (RESET ALL,
		// set_config() and SET LOCAL reverting at COMMIT report too, and
		// would cover for a SET of an unreported parameter).
		//
		// due accumulates until the pool says the check ran: a pipelining
		// client (Query, Query sent together) makes an idle ReadyForQuery
		// while its next query is already on the wire, where the pool
		// cannot run the check; the next idle ReadyForQuery must still ask.
		// The check reads state, so running it later still finds what is
		// left.
		w.due |= w.pending
		if w.every {
			w.due = needAll
		}
		w.pending = 0
		return w.due != 0, nil
	}
	return false, nil
}

// Query returns the check due: CheckQuery's columns, with the parts not due
// replaced by NULL.
func (w *Watch) Query() string { return checkQuery(w.due) }

// Checked tells the Watch that Query ran and its answer was inspected: the
// check is no longer due. Until then every idle ReadyForQuery reports
// check=true, so a pool that could not run it at one (another query of the
// client still outstanding) runs it at the next one, before the server
// connection goes back to the pool. Watch.Check calls it itself.
func (w *Watch) Checked() { w.due = 0 }

// Due reports whether a check is due (asked for and not yet Checked): a
// pool must not release the server connection to another client while it
// is.
func (w *Watch) Due() bool { return w.due != 0 }

// Check runs Query on conn (idle, between transactions), inspects the
// answer and, when that worked, marks the check done (Checked). It is the
// one place this package does I/O for the Watch; ctx bounds it.
func (w *Watch) Check(ctx context.Context, conn *pgconn.PgConn) ([]*Hazard, error) {
	hs, err := runCheck(ctx, conn, w.Query())
	if err == nil {
		w.Checked()
	}
	return hs, err
}

// SetAuthorization tells the Watch the server connection's
// session_authorization from its startup (serverpool's Params).
func (w *Watch) SetAuthorization(role string) { w.auth = role }

// tagNeeds maps a command tag to the parts of the check it calls for.
func tagNeeds(tag []byte) uint8 {
	switch string(tag) {
	case "LISTEN":
		return needListen
	case "DECLARE CURSOR":
		return needCursors
	case "PREPARE":
		return needPrepared
	case "SET": // also SET ROLE, SET SESSION AUTHORIZATION; not "SET CONSTRAINTS"
		return needSettings | needRole
	case "CREATE TABLE", "CREATE TABLE AS", "CREATE VIEW", "CREATE SEQUENCE", "CREATE TYPE", "CREATE DOMAIN", "CREATE FUNCTION":
		// Temporary types shadow like relations. CREATE TEMP TABLE ... AS
		// and SELECT INTO answer "SELECT n": only everyTransaction sees
		// those (a pool resets the session when it passes to another
		// identity).
		return needTemp
	case "DO", "CALL":
		// Code run by the server can EXECUTE anything (PREPARE, SET,
		// set_config, LISTEN, CREATE TEMP ...) under a tag that says
		// nothing. Advisory locks only with everyTransaction, as always.
		return needAll &^ needAdvisory
	}
	return 0
}

// CheckQuery returns the whole state query: one row of seven text columns
// (NULL where nothing was found) reading only this session's state:
// pg_listening_channels, pg_cursors, pg_prepared_statements, pg_settings
// with source 'session' minus the replayed parameters and the per-transaction
// transaction_* ones, current_user against
// session_user, the temporary schema, and, with advisory, pg_locks for
// session advisory locks (it copies the whole lock table under every
// lock-manager partition lock; only a pool that checks every transaction
// gains from it, since no tag announces pg_advisory_lock()).
func CheckQuery(advisory bool) string {
	if advisory {
		return checkQuery(needAll)
	}
	return checkQuery(needAll &^ needAdvisory)
}

func checkQuery(due uint8) string {
	var rep []string
	for _, n := range Replayed {
		if n != "search_path" {
			rep = append(rep, QuoteLiteral(strings.ToLower(n)))
		}
	}
	// SET TRANSACTION leaves these with source 'session', yet every
	// transaction starts them afresh from default_transaction_*.
	for _, n := range []string{"transaction_isolation", "transaction_read_only", "transaction_deferrable"} {
		rep = append(rep, QuoteLiteral(n))
	}
	// Operators are written OPERATOR(pg_catalog.x): an operator is looked up
	// along search_path, and a client that put its own schema before
	// pg_catalog (SET search_path = mine, pg_catalog) with its own <> on
	// name could make current_user <> session_user false.
	cols := []struct {
		f   uint8
		sql string
	}{
		{needListen, "(SELECT pg_catalog.string_agg(c, ',') FROM pg_catalog.pg_listening_channels() c)"},
		{needCursors, "(SELECT pg_catalog.string_agg(name, ',') FROM pg_catalog.pg_cursors WHERE is_holdable)"},
		{needPrepared, "(SELECT pg_catalog.string_agg(name, ',') FROM pg_catalog.pg_prepared_statements WHERE from_sql)"},
		// search_path is carried only where the server reports it (18+);
		// before, a session search_path stays on the server connection.
		{needSettings, "(SELECT pg_catalog.string_agg(name, ',') FROM pg_catalog.pg_settings WHERE source OPERATOR(pg_catalog.=) 'session'" +
			" AND pg_catalog.lower(name) OPERATOR(pg_catalog.<>) ALL (ARRAY[" + strings.Join(rep, ", ") + "])" +
			" AND NOT (name OPERATOR(pg_catalog.=) 'search_path' AND pg_catalog.current_setting('server_version_num')::pg_catalog.int4 OPERATOR(pg_catalog.>=) 180000))"},
		{needRole, "CASE WHEN current_user OPERATOR(pg_catalog.<>) session_user THEN current_user::pg_catalog.text END"},
		{needTemp, tempObjects},
		{needAdvisory, "(SELECT pg_catalog.string_agg(l.objid::pg_catalog.text, ',') FROM pg_catalog.pg_locks l WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory' AND l.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid())"},
	}
	parts := make([]string, len(cols))
	for i, c := range cols {
		parts[i] = "NULL::pg_catalog.text"
		if due&c.f != 0 {
			parts[i] = c.sql
		}
	}
	return "SELECT " + strings.Join(parts, ", ")
}

// Inspect turns CheckQuery's row (nil for NULL) into hazards, in column
// order; none means the server connection can go back to the pool.
func Inspect(row [][]byte) ([]*Hazard, error) {
	if len(row) != 7 {
		return nil, failure.New(failure.ProtocolError, "the session check answered %d columns, want 7", len(row)).
			WithEvidence("paramsync.CheckQuery row").
			WithFix("run CheckQuery unchanged; a server that rewrites queries (another pooler, an extension) is not supported")
	}
	var out []*Hazard
	add := func(i int, k Kind, detail string) {
		if row[i] != nil {
			v := string(row[i])
			out = append(out, &Hazard{Kind: k, Name: v, Detail: fmt.Sprintf(detail, clip(v))})
		}
	}
	add(0, Listen, "The session was listening on channel(s) %s.")
	add(1, HoldCursor, "Cursor(s) %s were still open after the transaction.")
	add(2, SQLPrepare, "Prepared statement(s) %s were still defined after the transaction.")
	add(3, SessionSetting, "Parameter(s) %s had session values after the transaction.")
	add(4, RoleChange, "current_user was %s after the transaction.")
	add(5, TempObject, "Temporary object(s) %s existed after the transaction.")
	add(6, AdvisoryLock, "Session advisory lock(s) on %s were held after the transaction.")
	return out, nil
}

// Check runs CheckQuery(advisory) on conn (idle, between transactions) and
// inspects the answer.
func Check(ctx context.Context, conn *pgconn.PgConn, advisory bool) ([]*Hazard, error) {
	return runCheck(ctx, conn, CheckQuery(advisory))
}

func runCheck(ctx context.Context, conn *pgconn.PgConn, query string) ([]*Hazard, error) {
	res := conn.ExecParams(ctx, query, nil, nil, nil, nil).Read()
	if res.Err != nil {
		return nil, failure.Wrap(failure.ProtocolError, res.Err, "the session check failed").
			WithEvidence("paramsync.CheckQuery on the server connection").
			WithFix("close this server connection (Release(false)); it is in an unknown state")
	}
	if len(res.Rows) != 1 {
		return nil, failure.New(failure.ProtocolError, "the session check answered %d rows, want 1", len(res.Rows)).
			WithEvidence("paramsync.CheckQuery").WithFix("close this server connection (Release(false))")
	}
	return Inspect(res.Rows[0])
}

// tempObjects lists what the temporary schema holds: relations (tables,
// views, sequences), types and functions, each of which depends on its
// schema in pg_depend (an index scan; scanning pg_class, pg_type and pg_proc
// for the schema costs several times more). Relations and types there
// shadow same-named ones for unqualified names. Every type name in these
// queries is schema-qualified for the same reason (a temporary type named
// text would otherwise capture ::text), and every operator is
// OPERATOR(pg_catalog.x) (operators follow search_path, which a client can
// set to put its own schema before pg_catalog).
const tempObjects = "(SELECT pg_catalog.string_agg((pg_catalog.pg_identify_object(classid, objid, 0)).identity, ',' ORDER BY objid)" +
	" FROM pg_catalog.pg_depend WHERE refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass AND refobjid OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema())"
