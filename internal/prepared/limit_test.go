package prepared

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/internal/pgtest"
)

// A client cannot grow its session's statement map without bound: the Parse
// of a new name beyond the limit gets 54000 in band, with a message and a
// fix, and PostgreSQL treats it as its own error (the transaction block
// fails, the rest of the segment is skipped); once the client Closes a
// statement it may Parse again.
func TestClientStatementLimit(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	const max = 3
	r := startRelayWith(t, pg, 1, 0, relayOptions{maxStatements: max})
	c := connectRelay(t, r, "L")
	for i := range max {
		if _, err := c.Prepare(ctx(t), fmt.Sprint("s", i), fmt.Sprintf("SELECT %d", i), nil); err != nil {
			t.Fatal(err)
		}
	}
	limited := func(err error) {
		t.Helper()
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "54000" || !strings.Contains(pe.Message, "too many prepared statements") ||
			!strings.Contains(pe.Message, fmt.Sprint(max)) || pe.Hint == "" || pe.Where != "" {
			t.Fatalf("Parse beyond the limit: %#v, want 54000 with a hint", err)
		}
	}
	_, err := c.Prepare(ctx(t), "s3", "SELECT 3", nil)
	limited(err)
	// Re-Parsing an existing name does not grow the map: PostgreSQL's 42P05.
	if _, err := c.Prepare(ctx(t), "s0", "SELECT 0", nil); !isCode(err, "42P05") {
		t.Fatalf("duplicate at the limit: %v", err)
	}
	// In a transaction block the error fails the block, as PostgreSQL's own.
	execText(t, c, "BEGIN")
	_, err = c.Prepare(ctx(t), "s3", "SELECT 3", nil)
	limited(err)
	if _, err := c.Exec(ctx(t), "SELECT 1").ReadAll(); !isCode(err, "25P02") {
		t.Fatalf("after the limit error in a block: %v, want 25P02", err)
	}
	execText(t, c, "ROLLBACK")
	// The rest of the segment is skipped: a pipelined Bind of the refused
	// name gets nothing, and the Sync ends it.
	raw := dialRawRelay(t, r, "L2")
	got := raw.batch(t, parse("a", "SELECT 'a'"), parse("b", "SELECT 'b'"), parse("c", "SELECT 'c'"), syncMsg(),
		parse("d", "SELECT 'd'"), bind("", "d"), exec(""), syncMsg(),
		bind("", "a"), exec(""), syncMsg())
	if len(got) != 10 || !strings.HasPrefix(got[4], "E 54000 pgtrust: too many prepared statements") ||
		!slicesEq(got[5:], "Z I", "BindComplete", "D a", "C SELECT 1", "Z I") {
		t.Fatalf("pipeline at the limit: %q", got)
	}
	// Closing frees room.
	if err := c.Deallocate(ctx(t), "s0"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Prepare(ctx(t), "s3", "SELECT 3", nil); err != nil {
		t.Fatalf("after Close: %v", err)
	}
	if got, err := prepared1(t, c, "s3"); err != nil || got != "3" {
		t.Fatalf("s3 = %q %v", got, err)
	}
}

// The engine never grows a client's map past the limit, whatever the
// server answers.
func TestClientStatementLimitEngine(t *testing.T) {
	c, sc := NewClient(), NewServerCache(0)
	c.SetMaxStatements(2)
	for i := range 5 {
		out, err := c.Translate(parse(fmt.Sprint("n", i), fmt.Sprint("SELECT ", i)), sc)
		if err != nil {
			t.Fatal(err)
		}
		if i >= 2 {
			if len(out) != 3 || out[0].(*pgproto3.Parse).Name != "" || !strings.Contains(out[0].(*pgproto3.Parse).Query, "'54000'") {
				t.Fatalf("Parse %d beyond the limit sent %#v", i, out)
			}
		}
	}
	if c.Statements() != 2 {
		t.Fatalf("client holds %d statements, limit 2", c.Statements())
	}
}

func dialRawRelay(t *testing.T, r *relay, label string) *rawConn {
	t.Helper()
	host, port, _ := strings.Cut(r.addr(), ":")
	return dialRaw(t, fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres sslmode=disable application_name=%s", host, port, label))
}
