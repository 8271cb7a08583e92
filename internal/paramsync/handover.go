package paramsync

import (
	"context"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/failure"
)

// The handover guard. The Watch arms its check from command tags, and no tag
// shows everything: a DO block or function can EXECUTE 'PREPARE ...',
// set_config('role', ...) answers "SELECT 1", CREATE TEMP TABLE ... AS
// answers "SELECT n", pg_advisory_lock() is a SELECT. Within one client's
// session that is the client's own business; across clients it is planted
// state: a temporary table shadows a public one (the temporary schema is
// searched first for relations and types), a role change or a search_path
// runs the next client's SQL elsewhere, a held cursor or LISTEN hands over
// data. So the pool runs one query whenever a server connection passes from
// one client session to a different one (not between transactions of the
// same client), which reads every known channel at once, whatever planted it.
//
// It is not a sandbox: clients mapped to one pooled (database, role) share
// server connections and must trust each other (see the package doc).

// handoverColumns names HandoverQuery's columns, in order.
var handoverColumns = []string{"listen", "cursors", "prepared", "search_path", "current_user", "session_user", "temp", "advisory"}

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

// HandoverQuery returns the handover guard: one query, one row of eight text
// columns (NULL where nothing was found), reading only this session's state:
// LISTEN channels, open cursors, SQL-level prepared statements, a
// search_path (only on servers that do not report it, before PostgreSQL 18;
// from 18 Plan sets every client's own), current_user when it differs from session_user,
// session_user, temporary objects, and session advisory locks of this
// backend. Run it on an idle server connection before a different client
// session gets it; Guard.Inspect reads the row.
func HandoverQuery() string {
	return "SELECT " + strings.Join([]string{
		"(SELECT pg_catalog.string_agg(c, ',') FROM pg_catalog.pg_listening_channels() c)",
		"(SELECT pg_catalog.string_agg(name, ',') FROM pg_catalog.pg_cursors WHERE is_holdable)", // the running query's own portal is listed too
		"(SELECT pg_catalog.string_agg(name, ',') FROM pg_catalog.pg_prepared_statements WHERE from_sql)",
		"CASE WHEN pg_catalog.current_setting('server_version_num')::pg_catalog.int4 OPERATOR(pg_catalog.<) 180000 THEN pg_catalog.current_setting('search_path') END",
		"CASE WHEN current_user OPERATOR(pg_catalog.<>) session_user THEN current_user::pg_catalog.text END",
		"session_user::pg_catalog.text",
		tempObjects,
		"(SELECT pg_catalog.string_agg(l.objid::pg_catalog.text, ',') FROM pg_catalog.pg_locks l WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory' AND l.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid())",
	}, ", ")
}

// Guard is the handover guard of one server connection. Not safe for
// concurrent use.
type Guard struct {
	role   string
	primed bool
	path   []byte // search_path at the first run, where the server does not report it
}

// NewGuard returns the guard of a server connection logged in as role (the
// pool key's role). Run it once on the fresh server connection, before any
// client has used it: that run records the connection's own search_path
// (before PostgreSQL 18 the server does not report it, and only
// pg_settings, which builds every setting's row at several times the cost
// of the rest of the guard, knows its source), then before each handover.
func NewGuard(role string) (*Guard, error) {
	if role == "" {
		return nil, failure.New(failure.ConfigInvalid, "paramsync.NewGuard needs the pool key's role").
			WithEvidence("role is empty").
			WithFix("pass the role the server connection logged in as (the pool key's role)")
	}
	return &Guard{role: role}, nil
}

// Inspect turns HandoverQuery's row (nil for NULL) into hazards. None means
// the server connection may go to the next client. Any hazard means it must
// not: close it (Release(false)) and give the client another. The hazards
// are for the pool's log (Hazard.Failure), not for the next client, which
// did nothing wrong, nor for the previous one, which has gone.
func (g *Guard) Inspect(row [][]byte) ([]*Hazard, error) {
	if len(row) != len(handoverColumns) {
		return nil, failure.New(failure.ProtocolError, "the handover guard answered %d columns, want %d", len(row), len(handoverColumns)).
			WithEvidence("paramsync.HandoverQuery row").
			WithFix("run HandoverQuery unchanged; a server that rewrites queries (another pooler, an extension) is not supported")
	}
	if !g.primed {
		g.primed = true
		g.path = append([]byte(nil), row[3]...)
	}
	var out []*Hazard
	add := func(k Kind, name, detail string) {
		out = append(out, &Hazard{Kind: k, Name: name, Detail: detail, handover: true})
	}
	if v := row[0]; v != nil {
		add(Listen, string(v), "The session was listening on channel(s) "+clip(string(v))+" at handover.")
	}
	if v := row[1]; v != nil {
		add(HoldCursor, string(v), "Cursor(s) "+clip(string(v))+" were open at handover.")
	}
	if v := row[2]; v != nil {
		add(SQLPrepare, string(v), "Prepared statement(s) "+clip(string(v))+" were defined at handover.")
	}
	if v := row[3]; string(v) != string(g.path) {
		add(SessionSetting, "search_path", "search_path was "+clip(string(v))+" at handover, not "+clip(string(g.path))+" as when the server connection was opened; this server does not report it.")
	}
	if v := row[4]; v != nil {
		add(RoleChange, string(v), "current_user was "+clip(string(v))+" at handover.")
	}
	if v := row[5]; string(v) != g.role {
		add(RoleChange, "SET SESSION AUTHORIZATION "+string(v), "session_user was "+clip(string(v))+" at handover, not "+clip(g.role)+".")
	}
	if v := row[6]; v != nil {
		add(TempObject, string(v), "Temporary object(s) "+clip(string(v))+" existed at handover.")
	}
	if v := row[7]; v != nil {
		add(AdvisoryLock, string(v), "Session advisory lock(s) on "+clip(string(v))+" were held at handover.")
	}
	return out, nil
}

// Run runs HandoverQuery on conn (idle) and inspects the answer; ctx bounds
// it. A failed query is an error: close the server connection.
func (g *Guard) Run(ctx context.Context, conn *pgconn.PgConn) ([]*Hazard, error) {
	res := conn.ExecParams(ctx, HandoverQuery(), nil, nil, nil, nil).Read()
	if res.Err != nil {
		return nil, failure.Wrap(failure.ProtocolError, res.Err, "the handover guard failed").
			WithEvidence("paramsync.HandoverQuery on the server connection").
			WithFix("close this server connection (Release(false)); it is in an unknown state")
	}
	if len(res.Rows) != 1 {
		return nil, failure.New(failure.ProtocolError, "the handover guard answered %d rows, want 1", len(res.Rows)).
			WithEvidence("paramsync.HandoverQuery").WithFix("close this server connection (Release(false))")
	}
	return g.Inspect(res.Rows[0])
}
