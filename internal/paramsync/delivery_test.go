package paramsync

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// fakePool accepts one client and answers like a transaction-mode pool
// whose check found h at the idle ReadyForQuery after COMMIT. afterRFQ
// chooses the delivery: the hazard's (forward ReadyForQuery, then the
// ErrorResponse, then close) or the old one (ErrorResponse before
// ReadyForQuery).
func fakePool(t *testing.T, h *Hazard, afterRFQ bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		be := pgproto3.NewBackend(c, c)
		if _, err := be.ReceiveStartupMessage(); err != nil {
			return
		}
		be.Send(&pgproto3.AuthenticationOk{})
		be.Send(&pgproto3.ParameterStatus{Name: "client_encoding", Value: "UTF8"})
		be.Send(&pgproto3.BackendKeyData{ProcessID: 1, SecretKey: []byte{0, 0, 0, 1}})
		be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		if be.Flush() != nil {
			return
		}
		for {
			m, err := be.Receive()
			if err != nil {
				return
			}
			q, ok := m.(*pgproto3.Query)
			if !ok {
				return
			}
			be.Send(&pgproto3.CommandComplete{CommandTag: []byte(q.String)})
			if q.String != "COMMIT" {
				be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
				_ = be.Flush()
				continue
			}
			if afterRFQ {
				be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
				be.Send(h.ErrorResponse())
				_ = be.Flush()
				return // close, as the server does after FATAL
			}
			be.Send(h.ErrorResponse())
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
			_ = be.Flush()
		}
	}()
	return ln.Addr().String()
}

// TestHazardAfterCommit: a real driver (pgconn) sees the COMMIT whose
// transaction left a hazard succeed, and the FATAL at its next use, with
// the connection closed; the old delivery (an error before ReadyForQuery)
// made the driver report the committed transaction as failed.
func TestHazardAfterCommit(t *testing.T) {
	h := &Hazard{Kind: Listen, Name: "chan", Detail: "The session was listening on channel(s) chan."}
	if h.Delivery() != AfterReadyForQuery {
		t.Fatalf("delivery %v", h.Delivery())
	}
	connect := func(addr string) *pgconn.PgConn {
		host, port, _ := net.SplitHostPort(addr)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := pgconn.Connect(ctx, "host="+host+" port="+port+" user=app dbname=postgres sslmode=disable connect_timeout=10")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close(context.Background()) })
		return c
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	c := connect(fakePool(t, h, true))
	if _, err := c.Exec(ctx, "COMMIT").ReadAll(); err != nil {
		t.Fatalf("COMMIT reported as failed: %v", err)
	}
	_, err := c.Exec(ctx, "SELECT 1").ReadAll()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Severity != "FATAL" || pe.Code != SQLState {
		t.Fatalf("next use: %v", err)
	}
	if !c.IsClosed() {
		t.Fatal("connection still open after FATAL")
	}

	old := connect(fakePool(t, h, false))
	if _, err := old.Exec(ctx, "COMMIT").ReadAll(); err == nil {
		t.Fatal("the old delivery was expected to fail the COMMIT")
	}
}

func TestDelivery(t *testing.T) {
	if BeforeRun.String() != "before_run" || AfterReadyForQuery.String() != "after_ready_for_query" || Delivery(9).String() != "delivery(9)" {
		t.Fatal("Delivery names")
	}
	if d := (&Hazard{Kind: StartupParameter}).Delivery(); d != BeforeRun {
		t.Fatalf("startup %v", d)
	}
	if d := (&Hazard{Kind: Listen}).Delivery(); d != AfterReadyForQuery {
		t.Fatalf("listen %v", d)
	}
}
