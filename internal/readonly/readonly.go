// Package readonly runs one agent-supplied SQL statement so that PostgreSQL,
// not a SQL parser, enforces the safety:
//
//   - BEGIN READ ONLY, with SET LOCAL statement_timeout and
//     idle_in_transaction_session_timeout (integers in ms, never user text);
//   - the statement goes through the extended protocol (Parse, Bind,
//     Describe, Execute, Sync), so a string with two statements is refused
//     by the server (42601) and nothing of it runs;
//   - rows stream one DataRow at a time and Execute carries a row limit, so
//     the server stops after MaxRows+1 rows (PortalSuspended) and the rest
//     of the result is never produced, let alone read;
//   - ROLLBACK ends every call, whatever happened; a connection that cannot
//     be brought back to idle is closed and the error says so.
//
// Closing is not the end of the backend: PL/pgSQL can catch query_canceled
// (57014), so a statement may outlive both statement_timeout and the
// CancelRequest, and a backend busy in it does not read the socket. Every
// call that gives up on a connection (the read deadline at StatementTimeout
// + Grace, a message over the byte limit, a failed ROLLBACK/DISCARD ALL, a
// broken stream) leaves it closed and, when it returns an error, one that
// errors.Is ErrAbandoned: the caller must end the backend by PID from
// another connection (dbpool does so on Release for every closed
// connection). As a second line, each call sets client_connection_check_interval
// (PostgreSQL 14+) so that a backend notices the closed socket by itself;
// the statement can override that setting, so it is not relied on.
//
// See /work/contract/docs13-readonly.md for what PostgreSQL does in each case.
package readonly

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/failure"
)

// Limits bound one call. Zero values take the defaults.
type Limits struct {
	StatementTimeout         time.Duration // default 10s; SET LOCAL statement_timeout
	IdleInTransactionTimeout time.Duration // default 15s; SET LOCAL idle_in_transaction_session_timeout
	MaxRows                  int           // default 1000
	MaxBytes                 int           // default 1 MiB, counted over the row data as received
}

// Defaults of Limits.
const (
	DefaultStatementTimeout         = 10 * time.Second
	DefaultIdleInTransactionTimeout = 15 * time.Second
	DefaultMaxRows                  = 1000
	DefaultMaxBytes                 = 1 << 20
)

// ErrAbandoned marks an error after which the connection is closed while
// its backend may still be running: end it by PID from another connection
// (pg_terminate_backend), as dbpool's Release does. A call that returns a
// truncated result with a nil error can also leave the connection closed
// (a message over the byte limit): check conn.IsClosed() as well.
var ErrAbandoned = errors.New("readonly: the connection was abandoned; its backend may still be running")

// abandoned carries ErrAbandoned in an error chain without changing the
// cause's message.
type abandoned struct{ err error }

func (a abandoned) Error() string        { return a.err.Error() }
func (a abandoned) Unwrap() error        { return a.err }
func (a abandoned) Is(target error) bool { return target == ErrAbandoned }

// CheckInterval is the client_connection_check_interval each call sets
// (PostgreSQL 14+): how soon a running statement notices a closed socket.
const CheckInterval = time.Second

// Grace is how long past the statement timeout the client waits for the
// server before it gives up on the connection; the server's own timeout
// normally ends the statement first.
const Grace = 5 * time.Second

// Truncation reasons of Result.TruncatedBy.
const (
	TruncatedByRows  = "max_rows"
	TruncatedByBytes = "max_bytes"
)

// Column describes one result column.
type Column struct {
	Name    string `json:"name"`
	Type    string `json:"type"` // format_type name, e.g. "integer", "text", "timestamp with time zone"
	TypeOID uint32 `json:"type_oid"`
}

// Result is one statement's result.
type Result struct {
	Columns     []Column      `json:"columns"`
	Rows        [][]any       `json:"rows"` // JSON-ready values: text format decoded to string/number/bool/null
	RowCount    int           `json:"row_count"`
	Truncated   bool          `json:"truncated"`              // a limit cut the result
	TruncatedBy string        `json:"truncated_by,omitempty"` // "max_rows" | "max_bytes"
	CommandTag  string        `json:"command_tag"`            // "" when a limit suspended the portal
	Elapsed     time.Duration `json:"-"`
}

func (l Limits) withDefaults() Limits {
	if l.StatementTimeout <= 0 {
		l.StatementTimeout = DefaultStatementTimeout
	}
	if l.IdleInTransactionTimeout <= 0 {
		l.IdleInTransactionTimeout = DefaultIdleInTransactionTimeout
	}
	if l.MaxRows <= 0 {
		l.MaxRows = DefaultMaxRows
	}
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultMaxBytes
	}
	// Execute's row count is a uint32 and one message cannot exceed the
	// server's 1 GiB: larger limits mean "as large as possible".
	l.MaxRows = min(l.MaxRows, math.MaxInt32-1)
	l.MaxBytes = min(l.MaxBytes, pgprotoDefaultMaxBodyLen-messageSlack)
	return l
}

// Query runs sql with params on conn inside BEGIN READ ONLY … ROLLBACK, through the extended protocol
// (Parse/Bind/Execute: a second statement is refused by PostgreSQL with 42601 and never runs).
// Rows stream; once a limit is reached the remaining rows are not read into memory (the portal is
// closed / the query cancelled) and Truncated is set. A PostgreSQL error is returned as *pgconn.PgError
// (SQLSTATE, message, detail, hint kept). The connection is left idle (ROLLBACK) whatever happens, or
// closed if it cannot be.
func Query(ctx context.Context, conn *pgconn.PgConn, sql string, params []any, l Limits) (*Result, error) {
	return run(ctx, conn, sql, params, l.withDefaults())
}

// Explain runs EXPLAIN (FORMAT JSON[, ANALYZE]) for sql inside the same guard; analyze only when asked.
func Explain(ctx context.Context, conn *pgconn.PgConn, sql string, params []any, analyze bool, l Limits) (json.RawMessage, error) {
	l = l.withDefaults()
	// The user text follows a fixed prefix; whatever it holds is still one
	// statement for the extended protocol, or refused.
	prefix := "EXPLAIN (FORMAT JSON) "
	if analyze {
		prefix = "EXPLAIN (FORMAT JSON, ANALYZE true) "
	}
	res, err := run(ctx, conn, prefix+sql, params, l)
	if err != nil {
		return nil, err
	}
	if res.Truncated {
		return nil, failure.New(failure.ConfigInvalid, "readonly: the plan is larger than the %s limit", res.TruncatedBy).
			WithEvidence("EXPLAIN output cut at %d rows / %d bytes", l.MaxRows, l.MaxBytes).
			WithFix("raise the limit or explain a smaller statement")
	}
	if len(res.Rows) != 1 || len(res.Rows[0]) != 1 {
		return nil, failure.New(failure.ProtocolError, "readonly: EXPLAIN returned %d rows, want 1", len(res.Rows)).
			WithEvidence("command tag %q", res.CommandTag).
			WithFix("pass a statement PostgreSQL can explain (SELECT, INSERT, UPDATE, DELETE, VALUES, …)")
	}
	switch v := res.Rows[0][0].(type) {
	case json.RawMessage:
		return v, nil
	case string:
		return json.RawMessage(v), nil
	}
	return nil, failure.New(failure.ProtocolError, "readonly: EXPLAIN returned a %T", res.Rows[0][0]).
		WithEvidence("column type %s", res.Columns[0].Type).
		WithFix("report this as a bug")
}

// run is the guard: BEGIN READ ONLY, the statement, ROLLBACK.
func run(ctx context.Context, conn *pgconn.PgConn, sql string, params []any, l Limits) (*Result, error) {
	start := time.Now()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	values, err := encodeParams(params)
	if err != nil {
		return nil, err
	}
	// A query takes the transaction's first snapshot, after which SET
	// TRANSACTION READ WRITE is refused (25001) instead of lifting the
	// guard for the user statement.
	stepCtx, err := open(ctx, conn, "Query", "BEGIN READ ONLY", "; SET LOCAL bytea_output = 'hex'", l)
	if errors.Is(err, errRetryWithoutCheckInterval) {
		return run(ctx, conn, sql, params, l)
	}
	if err != nil {
		return nil, err
	}

	res, runErr := execute(ctx, conn, sql, values, l)
	if errors.Is(runErr, errMessageTooLarge) {
		// pgconn has closed the connection (its stream was mid-message);
		// the server rolls the transaction back on disconnect.
		res.Elapsed = time.Since(start)
		return res, nil
	}
	if runErr == nil && conn.TxStatus() == 'T' {
		runErr = typeNames(stepCtx, conn, res.Columns)
	}
	if err := finish(ctx, conn, stepCtx, runErr); err != nil {
		return nil, err
	}
	res.Elapsed = time.Since(start)
	return res, nil
}

// errRetryWithoutCheckInterval: the server refused
// client_connection_check_interval and the transaction was rolled back;
// the caller starts again (checkInterval now leaves it out).
var errRetryWithoutCheckInterval = errors.New("readonly: retry without client_connection_check_interval")

// open checks that conn is idle and starts the guarded transaction: begin
// (BEGIN READ ONLY, with or without an isolation level), the SET LOCAL
// timeouts, extra settings and the check interval, then SELECT 1, which
// takes the first snapshot. It returns the bounded context maker for the
// later steps. who names the caller in errors.
func open(ctx context.Context, conn *pgconn.PgConn, who, begin, extra string, l Limits) (func() (context.Context, context.CancelFunc), error) {
	if conn == nil || conn.IsClosed() {
		return nil, failure.New(failure.ProtocolError, "readonly: the connection is closed").
			WithEvidence("%s was given a nil or closed connection", who).WithFix("open a new connection")
	}
	// BEGIN inside an open transaction is only a warning, and the statement
	// would then run without the read-only guard: refuse instead.
	if st := conn.TxStatus(); st != 'I' {
		return nil, failure.New(failure.ProtocolError, "readonly: the connection is not idle (transaction status %q)", st).
			WithEvidence("ReadyForQuery status %q, want 'I'", st).
			WithFix("give %s an idle connection; end or discard the open transaction first", who)
	}
	// Setup and ROLLBACK must run even when ctx is cancelled, so they get
	// their own bounded context.
	stepCtx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.WithoutCancel(ctx), Grace)
	}
	sctx, cancel := stepCtx()
	sql := begin + "; SET LOCAL statement_timeout = " + strconv.FormatInt(ms(l.StatementTimeout), 10) +
		"; SET LOCAL idle_in_transaction_session_timeout = " + strconv.FormatInt(ms(l.IdleInTransactionTimeout), 10) +
		extra + checkInterval(conn) + "; SELECT 1"
	_, err := conn.Exec(sctx, sql).ReadAll()
	cancel()
	if err != nil || conn.TxStatus() != 'T' {
		err = finish(ctx, conn, stepCtx, wrapSetup(err, conn))
		if checkIntervalRefused(err, conn) {
			return nil, errRetryWithoutCheckInterval
		}
		return nil, err
	}
	return stepCtx, nil
}

func ms(d time.Duration) int64 {
	v := d.Milliseconds()
	if v < 1 {
		v = 1
	}
	if v > math.MaxInt32 {
		v = math.MaxInt32
	}
	return v
}

func wrapSetup(err error, conn *pgconn.PgConn) error {
	if err == nil {
		return failure.New(failure.ProtocolError, "readonly: BEGIN READ ONLY did not open a transaction").
			WithEvidence("transaction status %q after BEGIN", conn.TxStatus()).
			WithFix("check that the server is PostgreSQL and not a pooler in statement mode")
	}
	return err
}

// finish rolls back and returns err (or the ROLLBACK failure). A
// connection that is not idle afterwards is closed: it cannot be trusted
// to carry the next call.
func finish(ctx context.Context, conn *pgconn.PgConn, stepCtx func() (context.Context, context.CancelFunc), err error) error {
	if !conn.IsClosed() {
		rctx, cancel := stepCtx()
		// ROLLBACK undoes every write and SET; DISCARD ALL then drops the
		// session state ROLLBACK keeps (session advisory locks, PREPAREd
		// statements), so nothing of one call reaches the next.
		_, rbErr := conn.Exec(rctx, "ROLLBACK").ReadAll()
		if rbErr == nil {
			_, rbErr = conn.Exec(rctx, "DISCARD ALL").ReadAll()
		}
		cancel()
		if rbErr == nil && conn.TxStatus() == 'I' {
			return err
		}
		cctx, cancel := stepCtx()
		_ = conn.Close(cctx)
		cancel()
		cause := err
		if cause == nil {
			cause = rbErr
		}
		return closedError(cause, fmt.Sprintf("ROLLBACK/DISCARD ALL failed (%v), transaction status %q", rbErr, conn.TxStatus()))
	}
	if errors.Is(err, ErrAbandoned) {
		return err // closeOnError has said it already
	}
	return closedError(err, "the connection broke during the call")
}

// closedError is the error of every path that leaves the connection
// closed; it errors.Is ErrAbandoned.
func closedError(cause error, evidence string) error {
	e := failure.Wrap(failure.ProtocolError, abandoned{cause}, "readonly: the connection was closed")
	if cause == nil {
		e = failure.Wrap(failure.ProtocolError, ErrAbandoned, "readonly: the connection was closed")
	}
	return e.WithEvidence("%s", evidence).
		WithFix("discard this connection and end its backend by PID from another connection (dbpool's Release does); the call's read-only transaction committed no write")
}

// noCheckInterval is set once a server refused a non-zero
// client_connection_check_interval (platforms without the kernel support,
// e.g. Windows): the setting is then left out for this process.
var noCheckInterval atomic.Bool

// checkInterval is the SET LOCAL client_connection_check_interval clause
// for servers that have the setting (14+).
func checkInterval(conn *pgconn.PgConn) string {
	if noCheckInterval.Load() || serverMajor(conn) < 14 {
		return ""
	}
	return "; SET LOCAL client_connection_check_interval = " + strconv.FormatInt(ms(CheckInterval), 10)
}

// checkIntervalRefused says whether a failed setup was the server refusing
// client_connection_check_interval on a connection that is still idle; the
// setting is then disabled and the call may be retried once without it.
func checkIntervalRefused(err error, conn *pgconn.PgConn) bool {
	var pe *pgconn.PgError
	if noCheckInterval.Load() || !errors.As(err, &pe) || !strings.Contains(pe.Message, "client_connection_check_interval") ||
		conn.IsClosed() || conn.TxStatus() != 'I' {
		return false
	}
	noCheckInterval.Store(true)
	return true
}

// serverMajor is the major version from server_version ("15.4", "18beta1").
func serverMajor(conn *pgconn.PgConn) int {
	v := conn.ParameterStatus("server_version")
	if end := strings.IndexFunc(v, func(r rune) bool { return r < '0' || r > '9' }); end >= 0 {
		v = v[:end]
	}
	n, _ := strconv.Atoi(v)
	return n
}

// execute runs the user statement: Parse, Bind, Describe portal,
// Execute(MaxRows+1), Sync in one flight, then reads one message at a time.
func execute(ctx context.Context, conn *pgconn.PgConn, sql string, values [][]byte, l Limits) (*Result, error) {
	res := &Result{Columns: []Column{}, Rows: [][]any{}}

	// The server's statement_timeout ends the statement; this deadline only
	// covers a server or network that stopped answering.
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), l.StatementTimeout+Grace)
	defer rcancel()

	// The caller's cancel becomes a CancelRequest, so the server ends the
	// statement with 57014 and the connection stays usable.
	cancelled, sent := make(chan struct{}), make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		close(cancelled)
		defer close(sent)
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), Grace)
		defer cancel()
		_ = conn.CancelRequest(cctx)
	})
	// A CancelRequest still in flight could hit the ROLLBACK or the next
	// call's statement: wait until it has been delivered.
	defer func() {
		if !stop() {
			<-sent
		}
	}()

	fe := conn.Frontend()
	// No message may exceed the byte limit plus room for a wide
	// RowDescription or a long ErrorResponse: a single huge value is never
	// read into memory. pgconn sets no other limit than pgproto3's default,
	// which is restored afterwards.
	fe.SetMaxBodyLen(l.MaxBytes + messageSlack)
	defer fe.SetMaxBodyLen(pgprotoDefaultMaxBodyLen)
	fe.Send(&pgproto3.Parse{Query: sql})
	fe.Send(&pgproto3.Bind{Parameters: values, ResultFormatCodes: []int16{0}})
	fe.Send(&pgproto3.Describe{ObjectType: 'P'})
	// One row more than the limit tells "exactly MaxRows" from "more".
	fe.Send(&pgproto3.Execute{MaxRows: uint32(l.MaxRows + 1)})
	fe.Send(&pgproto3.Sync{})
	if dl, ok := rctx.Deadline(); ok {
		_ = conn.Conn().SetWriteDeadline(dl)
	}
	err := fe.Flush()
	_ = conn.Conn().SetWriteDeadline(time.Time{})
	if err != nil {
		return nil, closeOnError(ctx, conn, err)
	}

	var (
		fields  []pgproto3.FieldDescription
		bytes   int
		pgErr   error
		other   error
		copyOut bool
	)
	for {
		msg, err := conn.ReceiveMessage(rctx)
		var tooLarge *pgproto3.ExceededMaxBodyLenErr
		if errors.As(err, &tooLarge) && ctx.Err() == nil {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), Grace)
			_ = conn.Close(cctx)
			cancel()
			res.Truncated, res.TruncatedBy, res.CommandTag = true, TruncatedByBytes, ""
			return res, errMessageTooLarge
		}
		if err != nil {
			return nil, closeOnError(ctx, conn, err)
		}
		switch m := msg.(type) {
		case *pgproto3.RowDescription:
			fields = make([]pgproto3.FieldDescription, len(m.Fields))
			copy(fields, m.Fields)
			for i := range fields {
				fields[i].Name = append([]byte(nil), m.Fields[i].Name...)
				res.Columns = append(res.Columns, Column{Name: string(fields[i].Name), TypeOID: fields[i].DataTypeOID})
			}
		case *pgproto3.DataRow:
			if res.Truncated {
				continue // at most the one extra row of Execute's limit
			}
			if res.RowCount >= l.MaxRows {
				res.Truncated, res.TruncatedBy = true, TruncatedByRows
				continue
			}
			n := 0
			for _, v := range m.Values {
				n += len(v)
			}
			if bytes+n > l.MaxBytes {
				res.Truncated, res.TruncatedBy = true, TruncatedByBytes
				continue
			}
			bytes += n
			row := make([]any, len(m.Values))
			for i, v := range m.Values {
				var oid uint32
				if i < len(fields) {
					oid = fields[i].DataTypeOID
				}
				row[i] = Decode(oid, v)
			}
			res.Rows = append(res.Rows, row)
			res.RowCount++
		case *pgproto3.CommandComplete:
			res.CommandTag = string(m.CommandTag)
		case *pgproto3.PortalSuspended:
			// The server has stopped producing rows; the portal dies with ROLLBACK.
			if !res.Truncated {
				res.Truncated, res.TruncatedBy = true, TruncatedByRows
			}
		case *pgproto3.ErrorResponse:
			if pgErr == nil {
				pgErr = pgconn.ErrorResponseToPgError(m)
			}
		case *pgproto3.CopyOutResponse:
			// COPY has no row limit in the protocol: stop it server-side.
			copyOut = true
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), Grace)
			_ = conn.CancelRequest(cctx)
			cancel()
		case *pgproto3.CopyInResponse:
			fe.Send(&pgproto3.CopyFail{Message: "readonly: COPY FROM STDIN is not supported"})
			if err := fe.Flush(); err != nil {
				return nil, closeOnError(ctx, conn, err)
			}
			other = failure.New(failure.ConfigInvalid, "readonly: COPY FROM STDIN is not supported").
				WithEvidence("the server asked for COPY data").WithFix("use SELECT")
		case *pgproto3.ReadyForQuery:
			select {
			case <-cancelled:
				// The server's own account (57014 "canceling statement due
				// to user request") stays reachable with errors.As.
				if pgErr != nil {
					return nil, errors.Join(ctx.Err(), pgErr)
				}
				return nil, ctx.Err()
			default:
			}
			if copyOut && other == nil {
				other = failure.New(failure.ConfigInvalid, "readonly: COPY … TO STDOUT is not supported").
					WithEvidence("the server started a COPY OUT; it was cancelled").
					WithFix("use SELECT, which is streamed and limited")
			}
			if other != nil {
				return nil, other
			}
			if pgErr != nil {
				return nil, pgErr
			}
			return res, nil
		}
	}
}

// messageSlack is the room above MaxBytes for one backend message.
const messageSlack = 1 << 20

// pgprotoDefaultMaxBodyLen is pgproto3.NewFrontend's limit (~1 GiB, the
// server's own PQ_LARGE_MESSAGE_LIMIT).
const pgprotoDefaultMaxBodyLen = 0x3fffffff - 1

// errMessageTooLarge: a message larger than the byte limit arrived; the
// rows before it are the (truncated) result and the connection is closed.
var errMessageTooLarge = errors.New("readonly: message larger than the byte limit")

// closeOnError closes a connection whose message stream was interrupted:
// its state is unknown.
func closeOnError(ctx context.Context, conn *pgconn.PgConn, err error) error {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), Grace)
	_ = conn.Close(cctx)
	cancel()
	if ctx.Err() != nil {
		err = errors.Join(ctx.Err(), err)
	}
	return closedError(err, "reading the statement's result failed")
}

// typeNames fills Column.Type with format_type names in one round trip.
func typeNames(stepCtx func() (context.Context, context.CancelFunc), conn *pgconn.PgConn, cols []Column) error {
	if len(cols) == 0 {
		return nil
	}
	oids := []byte{'{'}
	for i, c := range cols {
		if i > 0 {
			oids = append(oids, ',')
		}
		oids = strconv.AppendUint(oids, uint64(c.TypeOID), 10)
	}
	oids = append(oids, '}')
	ctx, cancel := stepCtx()
	defer cancel()
	r := conn.ExecParams(ctx, "SELECT format_type(o, NULL) FROM unnest($1::oid[]) WITH ORDINALITY AS u(o, n) ORDER BY n",
		[][]byte{oids}, nil, nil, nil).Read()
	if r.Err != nil {
		return r.Err
	}
	for i := range cols {
		if i < len(r.Rows) && r.Rows[i][0] != nil {
			cols[i].Type = string(r.Rows[i][0])
		}
	}
	return nil
}

// encodeParams turns JSON-ish Go values into text-format parameters; the
// server infers their types from the statement.
func encodeParams(params []any) ([][]byte, error) {
	if len(params) > math.MaxUint16 {
		return nil, failure.New(failure.ConfigInvalid, "readonly: %d parameters, the protocol allows %d", len(params), math.MaxUint16).
			WithEvidence("len(params) = %d", len(params)).WithFix("pass fewer parameters")
	}
	out := make([][]byte, len(params))
	for i, p := range params {
		var s string
		switch v := p.(type) {
		case nil:
			continue
		case string:
			s = v
		case []byte:
			s = string(v)
		case bool:
			s = strconv.FormatBool(v)
		case json.Number:
			s = v.String()
		case float64:
			s = strconv.FormatFloat(v, 'g', -1, 64)
		case float32:
			s = strconv.FormatFloat(float64(v), 'g', -1, 32)
		case int:
			s = strconv.FormatInt(int64(v), 10)
		case int32:
			s = strconv.FormatInt(int64(v), 10)
		case int64:
			s = strconv.FormatInt(v, 10)
		case uint32:
			s = strconv.FormatUint(uint64(v), 10)
		case uint64:
			s = strconv.FormatUint(v, 10)
		case json.RawMessage:
			s = string(v)
		case map[string]any, []any:
			b, err := json.Marshal(v)
			if err != nil {
				return nil, failure.Wrap(failure.ConfigInvalid, err, "readonly: parameter $%d cannot be encoded", i+1).
					WithEvidence("type %T", p).WithFix("pass a string, number, boolean, null or JSON value")
			}
			s = string(b)
		default:
			return nil, failure.New(failure.ConfigInvalid, "readonly: parameter $%d has unsupported type %T", i+1, p).
				WithEvidence("type %T", p).WithFix("pass a string, number, boolean, null or JSON value")
		}
		out[i] = []byte(s)
	}
	return out, nil
}
