package pooling

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/serverpool"
)

// exec runs one simple-protocol query of the pool's own (parameter replay,
// reset, checks) on an idle server connection, unseen by any client. It
// keeps the server's parameter map current from the ParameterStatus
// messages it reads and returns the rows of the last result. A server
// error comes back as a *pgconn.PgError; a broken or silent connection as
// a classified error, after which the connection must not be reused.
func exec(ctx context.Context, srv *serverpool.Server, sql string, timeout time.Duration) ([][][]byte, error) {
	return execBatch(ctx, srv, []pgproto3.FrontendMessage{&pgproto3.Query{String: sql}}, 1, timeout)
}

// execBatch sends msgs in one write and reads until the rfqs-th
// ReadyForQuery (one per Query or Sync in msgs).
func execBatch(ctx context.Context, srv *serverpool.Server, msgs []pgproto3.FrontendMessage, rfqs int, timeout time.Duration) ([][][]byte, error) {
	pg := srv.PgConn()
	if pg == nil {
		return nil, errors.New("pooling: server handle already released")
	}
	conn := pg.Conn()
	dl := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	_ = conn.SetDeadline(dl)
	defer conn.SetDeadline(time.Time{})
	var buf []byte
	for _, m := range msgs {
		buf, _ = m.Encode(buf)
	}
	if _, err := conn.Write(buf); err != nil {
		return nil, serverIOError(err)
	}
	fe := pg.Frontend()
	var rows [][][]byte
	var pgErr *pgconn.PgError
	for {
		msg, err := fe.Receive()
		if err != nil {
			return nil, serverIOError(err)
		}
		switch m := msg.(type) {
		case *pgproto3.RowDescription:
			rows = rows[:0]
		case *pgproto3.DataRow:
			row := make([][]byte, len(m.Values))
			for i, v := range m.Values {
				if v != nil {
					row[i] = append([]byte{}, v...)
				}
			}
			rows = append(rows, row)
		case *pgproto3.ParameterStatus:
			srv.SetParam(m.Name, m.Value)
		case *pgproto3.ErrorResponse:
			if pgErr == nil {
				pgErr = pgconn.ErrorResponseToPgError(m)
			}
		case *pgproto3.ReadyForQuery:
			if m.TxStatus != 'I' {
				return nil, failure.New(failure.ProtocolError, "the server connection is not idle after the pool's own query").
					WithEvidence("ReadyForQuery status %q after %d message(s) of the pool", m.TxStatus, len(msgs)).
					WithFix("report this: the pool's queries never open a transaction")
			}
			if rfqs--; rfqs > 0 {
				continue
			}
			if pgErr != nil {
				return nil, pgErr
			}
			return rows, nil
		}
	}
}

// serverIOError classifies a read or write failure on a server connection.
func serverIOError(err error) error {
	if _, ok := failure.As(err); ok {
		return err
	}
	return failure.Wrap(failure.ProtocolError, err, "server connection lost").CauseInMessage().
		WithEvidence("%v", err).
		WithFix("check the PostgreSQL server's log; the pool replaces the connection")
}

// errorMessage renders a classified failure as the ErrorResponse a client
// gets, at severity sev ("FATAL" when the session ends, "ERROR" otherwise).
func errorMessage(sev, code string, err error) *pgproto3.ErrorResponse {
	r := failure.ReportOf(err)
	msg := "pgtrust: " + err.Error()
	detail, hint := "", ""
	if r != nil {
		msg = fmt.Sprintf("pgtrust: %s: %s", r.Class, r.Message)
		detail, hint = r.Evidence, r.Fix
	}
	return &pgproto3.ErrorResponse{Severity: sev, SeverityUnlocalized: sev, Code: code, Message: msg, Detail: detail, Hint: hint}
}
