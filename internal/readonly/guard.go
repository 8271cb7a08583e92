package readonly

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5/pgconn"
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
	// REPEATABLE READ: every statement of fn sees the snapshot the
	// trailing SELECT 1 takes, so a multi-statement description is consistent.
	stepCtx, err := open(ctx, conn, "Guard", "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", "", l)
	if errors.Is(err, errRetryWithoutCheckInterval) {
		return Guard(ctx, conn, l, fn)
	}
	if err != nil {
		return err
	}
	fctx, fcancel := context.WithTimeout(ctx, l.StatementTimeout+Grace)
	err = fn(fctx, conn)
	fcancel()
	return finish(ctx, conn, stepCtx, err)
}
