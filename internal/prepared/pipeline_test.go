package prepared

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/internal/pgtest"
)

// rawConn is a protocol-level client: it sends a batch of messages in one
// write and returns a transcript of the answers up to the batch's last
// ReadyForQuery.
type rawConn struct {
	conn net.Conn
	fe   *pgproto3.Frontend
}

func dialRaw(t *testing.T, dsn string) *rawConn {
	t.Helper()
	cx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pc, err := pgconn.Connect(cx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	h, err := pc.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.Frontend.Send(&pgproto3.Terminate{})
		_ = h.Frontend.Flush()
		h.Conn.Close()
	})
	return &rawConn{conn: h.Conn, fe: h.Frontend}
}

func (c *rawConn) batch(t *testing.T, msgs ...pgproto3.FrontendMessage) []string {
	t.Helper()
	syncs := 0
	for i, m := range msgs {
		switch m.(type) {
		case *pgproto3.Sync, *pgproto3.Query:
			syncs++
		case *pgproto3.CopyData:
			// A Sync right before the copy data was read by the server in
			// copy-in mode, which ignores it: no ReadyForQuery for it.
			if _, ok := msgs[i-1].(*pgproto3.Sync); ok {
				syncs--
			}
		}
		c.fe.Send(m)
	}
	if err := c.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := c.conn.SetReadDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	var out []string
	for syncs > 0 {
		msg, err := c.fe.Receive()
		if err != nil {
			t.Fatalf("after %v: %v", out, err)
		}
		var line string
		switch m := msg.(type) {
		case *pgproto3.ParameterStatus, *pgproto3.NoticeResponse:
			continue
		case *pgproto3.ReadyForQuery:
			syncs--
			line = "Z " + string(m.TxStatus)
		case *pgproto3.ErrorResponse:
			// Code and text: errors about statements must name the client's
			// statement, never a server name.
			line = "E " + m.Code + " " + m.Message
		case *pgproto3.ParameterDescription:
			line = fmt.Sprint("t ", m.ParameterOIDs)
		case *pgproto3.RowDescription:
			var f []string
			for _, fd := range m.Fields {
				f = append(f, fmt.Sprintf("%s:%d:%d", fd.Name, fd.DataTypeOID, fd.Format))
			}
			line = "T " + strings.Join(f, ",")
		case *pgproto3.DataRow:
			var v []string
			for _, x := range m.Values {
				v = append(v, string(x))
			}
			line = "D " + strings.Join(v, ",")
		case *pgproto3.CommandComplete:
			line = "C " + string(m.CommandTag)
		default:
			line = fmt.Sprintf("%T", msg)
			line = strings.TrimPrefix(line, "*pgproto3.")
		}
		out = append(out, line)
	}
	return out
}

// oracleSetup creates the oracle's database and runs sql in both databases.
func oracleSetup(sql string) []string {
	return []string{"CREATE DATABASE oracle", sql + "\n\\c oracle\n" + sql}
}

func parse(name, q string, oids ...uint32) *pgproto3.Parse {
	return &pgproto3.Parse{Name: name, Query: q, ParameterOIDs: oids}
}

func bind(portal, stmt string, args ...string) *pgproto3.Bind {
	b := &pgproto3.Bind{DestinationPortal: portal, PreparedStatement: stmt}
	for _, a := range args {
		b.Parameters = append(b.Parameters, []byte(a))
	}
	return b
}

func exec(portal string) *pgproto3.Execute { return &pgproto3.Execute{Portal: portal} }
func descS(name string) *pgproto3.Describe { return &pgproto3.Describe{ObjectType: 'S', Name: name} }
func descP(name string) *pgproto3.Describe { return &pgproto3.Describe{ObjectType: 'P', Name: name} }
func closeS(name string) *pgproto3.Close   { return &pgproto3.Close{ObjectType: 'S', Name: name} }
func syncMsg() *pgproto3.Sync              { return &pgproto3.Sync{} }
func query(q string) *pgproto3.Query       { return &pgproto3.Query{String: q} }

// compare runs each batch on a direct PostgreSQL connection (the oracle) and
// through the relay, and requires identical transcripts. The server needs a
// database "oracle" (oracleSetup).
func compare(t *testing.T, pg *pgtest.Server, r *relay, label string, batches [][]pgproto3.FrontendMessage) [][]string {
	t.Helper()
	// The oracle has its own database, so that rows written by one side
	// are not seen by the other.
	direct := dialRaw(t, pg.DSN("sslmode=disable dbname=oracle"))
	host, port, _ := net.SplitHostPort(r.addr())
	pooled := dialRaw(t, fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres sslmode=disable application_name=%s", host, port, label))
	var all [][]string
	for i, b := range batches {
		want := direct.batch(t, b...)
		got := pooled.batch(t, b...)
		if !slices.Equal(got, want) {
			t.Fatalf("batch %d through the relay:\n  got  %q\n  want %q", i, got, want)
		}
		all = append(all, got)
	}
	return all
}

func TestPipelinedBatchesWithSync(t *testing.T) {
	for _, v := range []int{15, 18} {
		t.Run(fmt.Sprint("pg", v), func(t *testing.T) { pipelinedOn(t, v) })
	}
}

func pipelinedOn(t *testing.T, version int) {
	pg := pgtest.Start(t, pgtest.Options{Version: version, Setup: oracleSetup("")})
	r := startRelay(t, pg, 2, 0)
	tr := compare(t, pg, r, "P", [][]pgproto3.FrontendMessage{
		// Batch 0 lands on one server.
		{parse("s1", "SELECT $1::int + 1 AS n"), parse("s2", "SELECT $1::text AS t"), syncMsg()},
		// Batch 1 lands on the other one, which lacks s1 and s2: injected
		// Parses, then a client Parse whose content the server now has
		// (swallowed, ParseComplete synthesized mid-pipeline), a Close
		// answered in place, and several Syncs.
		{
			bind("", "s1", "5"), exec(""),
			bind("p2", "s2", "a"), exec("p2"),
			parse("s3", "SELECT $1::int + 1 AS n"), bind("", "s3", "41"), exec(""),
			closeS("s1"), syncMsg(),
			// A failing Parse: everything up to the Sync is skipped,
			// including a Parse the engine would have sent and a Close it
			// would have answered itself.
			parse("s4", "SELECT broken("), bind("", "s4"), exec(""),
			parse("s5", "SELECT 5 AS five"), closeS("s2"), syncMsg(),
			// Sent before the failure is known, these depend on it: the
			// engine holds them until the segment is answered (ErrWait).
			// s2 still exists (its Close was skipped), s1 does not, s5 does
			// not (its Parse was skipped).
			bind("", "s2", "again"), exec(""), syncMsg(),
			bind("", "s1", "1"), exec(""), syncMsg(),
			bind("", "s5"), exec(""), syncMsg(),
			// So s5 can be prepared now, and s4's name is free again.
			parse("s5", "SELECT 5 AS five"), parse("s4", "SELECT 4 AS four"),
			bind("", "s5"), exec(""), bind("", "s4"), exec(""), syncMsg(),
		},
		// Batch 2, sent once the failure is known: s2 still exists, its
		// Close was skipped; a duplicate Parse gets PostgreSQL's 42P05 and
		// skips its segment.
		{
			bind("", "s2", "again"), exec(""), syncMsg(),
			parse("s2", "SELECT 'other'"), bind("", "s2", "x"), exec(""), syncMsg(),
			parse("s2", "SELECT $1::text AS t"), syncMsg(), // the same statement again
			bind("", "s2", "still"), exec(""), syncMsg(),
		},
		// A failed transaction block: a Parse of a statement the server
		// already has gets 25P02 (not a synthesized ParseComplete), leaves
		// no name, and ROLLBACK can still be Parsed there.
		{query("BEGIN"), query("SELECT 1/0")},
		{parse("again", "SELECT $1::int + 1 AS n"), descS("again"), syncMsg()},
		{parse("rb", "ROLLBACK"), bind("", "rb"), exec(""), syncMsg()},
		// The same, when the block fails in a segment still in flight.
		{
			query("BEGIN"), bind("", "s3", "x"), exec(""), syncMsg(),
			parse("again", "SELECT $1::int + 1 AS n"), syncMsg(),
			query("ROLLBACK"),
		},
		{bind("", "again", "1"), exec(""), syncMsg()},
		// And in a healthy block, behind an outstanding Sync.
		{query("BEGIN"), bind("", "s3", "1"), exec(""), syncMsg(), parse("again", "SELECT $1::int + 1 AS n"), syncMsg(), query("COMMIT")},
		{bind("", "again", "1"), exec(""), closeS("again"), syncMsg()},
		{bind("", "again", "1"), exec(""), syncMsg()},
		{parse("again", "SELECT $1::int + 1 AS n"), bind("", "again", "2"), exec(""), syncMsg()},
		// Batch 3: a transaction spanning Syncs stays on one server; a
		// simple Query in the middle of a pipeline.
		{
			query("BEGIN"),
			bind("", "s3", "1"), exec(""), syncMsg(),
			query("SELECT 'mid'"),
			bind("", "s4"), exec(""), syncMsg(),
			query("COMMIT"),
			closeS("s3"), closeS("nosuch"), syncMsg(),
		},
	})
	t.Logf("batch 1 transcript: %q", tr[1])
	if uses := r.usesOf("P"); len(uses) < 2 || !slices.Contains(uses, 0) || !slices.Contains(uses, 1) {
		t.Errorf("batches used servers %v, want both", uses)
	}
	var parses uint64
	for _, s := range r.servers {
		p, _ := s.cache.Counters()
		parses += p
		if s.cache.Outstanding() != 0 {
			t.Errorf("server %d: %d outstanding", s.id, s.cache.Outstanding())
		}
	}
	r.mu.Lock()
	waits := r.waits
	r.mu.Unlock()
	t.Logf("Parses sent: %d, Translate waits: %d", parses, waits)
	if waits == 0 {
		t.Error("no message waited for an unanswered segment")
	}
	if parses < 4 {
		t.Errorf("Parses sent %d: the injection path was not exercised", parses)
	}
}

func TestDescribeStatementsAndPortals(t *testing.T) {
	for _, v := range []int{15, 18} {
		t.Run(fmt.Sprint("pg", v), func(t *testing.T) { describeOn(t, v) })
	}
}

func describeOn(t *testing.T, version int) {
	pg := pgtest.Start(t, pgtest.Options{Version: version, Setup: oracleSetup("")})
	r := startRelay(t, pg, 2, 0)
	compare(t, pg, r, "D", [][]pgproto3.FrontendMessage{
		{
			parse("sel", "SELECT $1::int AS a, $2::text AS b, now() AS c"),
			parse("typed", "SELECT $1 AS x", 20), // explicit int8 parameter type
			parse("util", "DO $$BEGIN END$$"),
			descS("sel"), syncMsg(),
		},
		// Other server: each Describe('S') needs an injected Parse first.
		{descS("sel"), descS("typed"), descS("util"), syncMsg()},
		// Portals from rewritten statements, named and unnamed.
		{
			bind("pp", "sel", "1", "x"), descP("pp"),
			bind("", "typed", "7"), descP(""), exec(""),
			bind("pu", "util"), descP("pu"), exec("pu"),
			descP("nosuch"), syncMsg(),
		},
		// Describe of unknown and closed statements answers like PostgreSQL.
		{closeS("typed"), descS("typed"), syncMsg(), descS("never"), syncMsg(), descS(""), syncMsg()},
		// DISCARD ALL and DEALLOCATE ALL drop every statement, as they do on
		// PostgreSQL; the names can be prepared again.
		{query("DISCARD ALL"), descS("sel"), syncMsg()},
		{parse("sel", "SELECT 1 AS one"), descS("sel"), syncMsg(), query("DEALLOCATE ALL"), descS("sel"), syncMsg()},
		{parse("sel", "SELECT 2 AS two"), bind("", "sel"), exec(""), syncMsg()},
	})
}

func TestCopyInExtendedPipeline(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{Setup: oracleSetup("CREATE TABLE c(v int);")})
	r := startRelay(t, pg, 2, 0)
	compare(t, pg, r, "Y", [][]pgproto3.FrontendMessage{
		{parse("cnt", "SELECT count(*) FROM c"), syncMsg()},
		// The Sync right behind the COPY's Execute is ignored by the server
		// (it is in copy-in mode by then); the engine must not wait for its
		// ReadyForQuery, or every later answer would be off by one.
		{
			parse("cp", "COPY c FROM STDIN"), bind("", "cp"), exec(""), syncMsg(),
			&pgproto3.CopyData{Data: []byte("1\n")}, &pgproto3.CopyData{Data: []byte("2\n")}, &pgproto3.CopyDone{}, syncMsg(),
		},
		{bind("", "cnt"), exec(""), closeS("cp"), syncMsg(), query("SELECT 1")},
		{query("COPY c FROM STDIN"), &pgproto3.CopyData{Data: []byte("3\n")}, &pgproto3.CopyDone{}, bind("", "cnt"), exec(""), syncMsg()},
	})
}
