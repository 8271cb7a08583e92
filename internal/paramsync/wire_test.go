package paramsync

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/internal/pgtest"
)

// setupSQL creates the hostile schema names the search_path tests use and a
// non-superuser role, so is_superuser and role changes can be observed.
const setupSQL = `
CREATE ROLE app LOGIN;
CREATE ROLE other;
GRANT other TO app;
CREATE SCHEMA "MySchema";
CREATE SCHEMA "we,ird";
CREATE SCHEMA "quo""te";
CREATE SCHEMA "back\slash";
CREATE SCHEMA "Ünïcode ☃";
CREATE SCHEMA "sp ace";
CREATE SCHEMA "Über";
CREATE SCHEMA "表";
GRANT USAGE ON SCHEMA "MySchema", "we,ird", "quo""te", "back\slash", "Ünïcode ☃", "sp ace", "Über", "表" TO app;
CREATE SCHEMA evil AUTHORIZATION app;
CREATE TABLE public.accounts (id int);
GRANT SELECT ON public.accounts TO app;
CREATE PROCEDURE public.plant() LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_catalog.set_config('work_mem', '9MB', false); END $$;
`

// eachVersion runs f on PostgreSQL 15 and 18: what the server reports is the
// input of everything here, and the two majors differ (search_path).
func eachVersion(t *testing.T, f func(t *testing.T, s *pgtest.Server)) {
	for _, v := range []int{15, 18} {
		t.Run("PostgreSQL "+strconv.Itoa(v), func(t *testing.T) {
			f(t, pgtest.Start(t, pgtest.Options{Version: v, Setup: []string{setupSQL}}))
		})
	}
}

// wire is a raw protocol connection: the tests must see every
// ParameterStatus and CommandComplete exactly as a pooler would.
type wire struct {
	t      testing.TB
	c      net.Conn
	fe     *pgproto3.Frontend
	params map[string]string // ParameterStatus as last received
	status byte              // last ReadyForQuery status
}

func dialWire(t testing.TB, s *pgtest.Server, startup map[string]string) *wire {
	t.Helper()
	c, err := net.DialTimeout("tcp", s.Addr(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	w := &wire{t: t, c: c, fe: pgproto3.NewFrontend(c, c), params: map[string]string{}}
	p := map[string]string{"user": "app", "database": "postgres"}
	for k, v := range startup {
		p[k] = v
	}
	w.fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: p})
	if err := w.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	if msgs := w.until(); len(errorsIn(msgs)) > 0 {
		t.Fatalf("startup: %v", errorsIn(msgs)[0].Message)
	}
	return w
}

// until reads up to ReadyForQuery and returns the messages, copied.
func (w *wire) until() []pgproto3.BackendMessage {
	w.t.Helper()
	_ = w.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	var out []pgproto3.BackendMessage
	for {
		m, err := w.fe.Receive()
		if err != nil {
			w.t.Fatalf("receive: %v", err)
		}
		switch m := m.(type) {
		case *pgproto3.ParameterStatus:
			w.params[m.Name] = m.Value
			out = append(out, &pgproto3.ParameterStatus{Name: m.Name, Value: m.Value})
		case *pgproto3.CommandComplete:
			out = append(out, &pgproto3.CommandComplete{CommandTag: append([]byte(nil), m.CommandTag...)})
		case *pgproto3.ErrorResponse:
			e := *m
			out = append(out, &e)
			if e.Severity == "FATAL" {
				return out // the server closes the connection
			}
		case *pgproto3.DataRow:
			vals := make([][]byte, len(m.Values))
			for i, v := range m.Values {
				vals[i] = append([]byte(nil), v...)
			}
			out = append(out, &pgproto3.DataRow{Values: vals})
		case *pgproto3.ReadyForQuery:
			w.status = m.TxStatus
			out = append(out, &pgproto3.ReadyForQuery{TxStatus: m.TxStatus})
			return out
		default:
			// Auth, BackendKeyData, RowDescription, NoticeResponse: not needed.
		}
	}
}

// query sends one simple Query and returns the answer up to ReadyForQuery.
func (w *wire) query(sql string) []pgproto3.BackendMessage {
	w.t.Helper()
	w.fe.Send(&pgproto3.Query{String: sql})
	if err := w.fe.Flush(); err != nil {
		w.t.Fatal(err)
	}
	return w.until()
}

// mustQuery is query that fails the test on an ErrorResponse.
func (w *wire) mustQuery(sql string) []pgproto3.BackendMessage {
	w.t.Helper()
	msgs := w.query(sql)
	if errs := errorsIn(msgs); len(errs) > 0 {
		w.t.Fatalf("%q: %s %s", sql, errs[0].Code, errs[0].Message)
	}
	return msgs
}

// value runs a one-value query and returns the text.
func (w *wire) value(sql string) string {
	w.t.Helper()
	for _, m := range w.mustQuery(sql) {
		if d, ok := m.(*pgproto3.DataRow); ok {
			return string(d.Values[0])
		}
	}
	w.t.Fatalf("%q: no row", sql)
	return ""
}

func errorsIn(msgs []pgproto3.BackendMessage) []*pgproto3.ErrorResponse {
	var out []*pgproto3.ErrorResponse
	for _, m := range msgs {
		if e, ok := m.(*pgproto3.ErrorResponse); ok {
			out = append(out, e)
		}
	}
	return out
}

func statusOf(msgs []pgproto3.BackendMessage) map[string]string {
	out := map[string]string{}
	for _, m := range msgs {
		if p, ok := m.(*pgproto3.ParameterStatus); ok {
			out[p.Name] = p.Value
		}
	}
	return out
}
