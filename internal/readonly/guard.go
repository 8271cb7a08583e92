package readonly

import (
	"context"
	"strconv"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/failure"
)

// Guard runs fn on conn inside BEGIN ISOLATION LEVEL REPEATABLE READ READ
// ONLY with the limits' SET LOCAL statement_timeout and
// idle_in_transaction_session_timeout, then ROLLBACK and DISCARD ALL, like
// Query. It is meant for the server's own catalog statements (several
// statements, one snapshot): fn must send only statements pgtrust wrote,
// never agent text (use Query for that).
//
// fn's context ends at StatementTimeout + Grace, a client-side bound in
// case the server does not answer. Guard returns fn's error (a
// *pgconn.PgError stays reachable with errors.As); a connection that cannot
// be brought back to idle is closed and the error says so, as Query does.
func Guard(ctx context.Context, conn *pgconn.PgConn, l Limits, fn func(ctx context.Context, conn *pgconn.PgConn) error) error {
	l = l.withDefaults()
	if err := ctx.Err(); err != nil {
		return err
	}
	if conn == nil || conn.IsClosed() {
		return failure.New(failure.ProtocolError, "readonly: the connection is closed").
			WithEvidence("Guard was given a nil or closed connection").WithFix("open a new connection")
	}
	if st := conn.TxStatus(); st != 'I' {
		return failure.New(failure.ProtocolError, "readonly: the connection is not idle (transaction status %q)", st).
			WithEvidence("ReadyForQuery status %q, want 'I'", st).
			WithFix("give Guard an idle connection; end or discard the open transaction first")
	}
	stepCtx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.WithoutCancel(ctx), Grace)
	}
	sctx, cancel := stepCtx()
	// REPEATABLE READ: every statement of fn sees the snapshot the
	// trailing SELECT 1 takes, so a multi-statement description is consistent.
	begin := "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL statement_timeout = " + strconv.FormatInt(ms(l.StatementTimeout), 10) +
		"; SET LOCAL idle_in_transaction_session_timeout = " + strconv.FormatInt(ms(l.IdleInTransactionTimeout), 10) +
		checkInterval(conn) + "; SELECT 1"
	_, err := conn.Exec(sctx, begin).ReadAll()
	cancel()
	if err != nil || conn.TxStatus() != 'T' {
		err = finish(ctx, conn, stepCtx, wrapSetup(err, conn))
		if checkIntervalRefused(err, conn) {
			return Guard(ctx, conn, l, fn)
		}
		return err
	}
	fctx, fcancel := context.WithTimeout(ctx, l.StatementTimeout+Grace)
	err = fn(fctx, conn)
	fcancel()
	return finish(ctx, conn, stepCtx, err)
}
