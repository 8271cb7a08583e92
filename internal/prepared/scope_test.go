package prepared

import (
	"context"
	"fmt"
	"net"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/internal/pgtest"
)

// A date literal is converted when the statement is Parsed, under the
// DateStyle of that moment, and a prepared statement keeps the converted
// value: PostgreSQL does not re-analyse it when DateStyle changes (unlike
// search_path). So a DMY client and an MDY client sharing one server
// statement would read the same date. With their DateStyles in the scope
// they get two server statements and each its own date; given the same
// scope, the second client silently reads the first one's date, which shows
// that the scope is what separates them.
func TestScopeSeparatesDateStyles(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	const q = "SELECT '01/02/2024'::date::text"
	for _, tc := range []struct {
		name    string
		scopeOf func(map[string]string) string
		mdy     string // what the MDY client reads
		parses  uint64
	}{
		{"scoped", func(p map[string]string) string { return "DateStyle=" + p["datestyle"] }, "2024-01-02", 2},
		{"same scope", func(map[string]string) string { return "" }, "2024-02-01", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startRelayWith(t, pg, 1, 0, relayOptions{scopeOf: tc.scopeOf})
			host, port, _ := net.SplitHostPort(r.addr())
			run := func(label, style string) (got string, onServer string) {
				t.Helper()
				c, err := pgconn.Connect(ctx(t), fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres sslmode=disable application_name=%s datestyle=%s", host, port, label, style))
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close(context.Background())
				// The relay does not carry settings to the server; the
				// transaction sets the client's DateStyle itself.
				execText(t, c, "BEGIN; SET LOCAL DateStyle = 'ISO, "+style+"'")
				if _, err := c.Prepare(ctx(t), "d", q, nil); err != nil {
					t.Fatal(err)
				}
				if got, err = prepared1(t, c, "d"); err != nil {
					t.Fatal(err)
				}
				onServer = execText(t, c, "SELECT count(*) FROM pg_prepared_statements WHERE statement = $$"+q+"$$")[0]
				execText(t, c, "COMMIT")
				return got, onServer
			}
			if got, _ := run("DMY", "DMY"); got != "2024-02-01" {
				t.Fatalf("DMY client read %s, want 2024-02-01", got)
			}
			got, onServer := run("MDY", "MDY")
			if got != tc.mdy {
				t.Errorf("MDY client read %s, want %s", got, tc.mdy)
			}
			// Same text in scope A then scope B on one server connection:
			// two server statements (one when the scopes are equal).
			cache := r.servers[0].cache
			if p, _ := cache.Counters(); p != tc.parses || cache.Len() != int(tc.parses) || onServer != fmt.Sprint(tc.parses) {
				t.Errorf("Parses sent %d, cached %d, pg_prepared_statements %s; want %d each", p, cache.Len(), onServer, tc.parses)
			}
		})
	}
}

// A client Parses under DMY, its settings return to MDY, and it uses the
// statement on a server connection that lacks it: the injected Parse runs
// under MDY, so it must be cached under the MDY name. Under the DMY name it
// would poison that server's cache: a DMY client preparing the same text
// there would get the MDY statement and read the wrong date.
func TestInjectedParseUsesCurrentScope(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	const q = "SELECT '01/02/2024'::date::text"
	r := startRelayWith(t, pg, 2, 0, relayOptions{dateStyleScope: true})
	x := connectRelay(t, r, "X")
	dmyTx := func(c *pgconn.PgConn, prepare bool) string {
		t.Helper()
		execText(t, c, "BEGIN; SET LOCAL DateStyle = 'ISO, DMY'")
		if prepare {
			if _, err := c.Prepare(ctx(t), "d", q, nil); err != nil {
				t.Fatal(err)
			}
		}
		got, err := prepared1(t, c, "d")
		if err != nil {
			t.Fatal(err)
		}
		execText(t, c, "COMMIT")
		return got
	}
	if got := dmyTx(x, true); got != "2024-02-01" {
		t.Fatalf("X under DMY read %s", got)
	}
	// The COMMIT brought X back to MDY; this transaction runs on the
	// other server, which lacks the statement.
	// Re-prepared there under X's current settings (documented: a direct
	// connection would keep the DMY meaning; the server that has the DMY
	// statement still gives it).
	if got, err := prepared1(t, x, "d"); err != nil || got != "2024-01-02" {
		t.Fatalf("X on the other server: %q %v", got, err)
	}
	ux := r.usesOf("X")
	// Y, a DMY client, prepares the same text on that server.
	y := connectRelay(t, r, "Y")
	execText(t, y, "SELECT 1") // moves Y to the server X used last
	got := dmyTx(y, true)
	uy := r.usesOf("Y")
	if ux[len(ux)-1] == ux[0] || uy[len(uy)-1] != ux[len(ux)-1] {
		t.Fatalf("test setup: X used servers %v, Y %v", ux, uy)
	}
	if got != "2024-02-01" {
		t.Errorf("DMY client Y read %s on a server where X's statement was injected under MDY, want 2024-02-01", got)
	}
	dmy := newStatement(parseOf(q), "DateStyle=ISO, DMY").serverName
	mdy := newStatement(parseOf(q), "DateStyle=ISO, MDY").serverName
	names := r.servers[ux[len(ux)-1]].cache.Names()
	if !slices.Contains(names, mdy) || !slices.Contains(names, dmy) {
		t.Errorf("server cache %v, want both the MDY and the DMY statement", names)
	}
}

// A Parse pipelined right behind a SET of a scope setting (a simple Query,
// or an earlier extended-protocol segment): PostgreSQL reports the new value
// just before that Query's or segment's ReadyForQuery, so the Parse waits
// for it and is scoped by the new value. Otherwise it
// would be swallowed as the statement an MDY client prepared, and read the
// MDY date (the oracle reads the DMY one).
func TestParsePipelinedBehindSet(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{Setup: oracleSetup("")})
	const q = "SELECT '01/02/2024'::date::text AS d"
	r := startRelayWith(t, pg, 1, 0, relayOptions{dateStyleScope: true})
	m := dialRawRelay(t, r, "M")
	if got := m.batch(t, parse("d", q), bind("", "d"), exec(""), syncMsg()); !slicesEq(got, "ParseComplete", "BindComplete", "D 2024-01-02", "C SELECT 1", "Z I") {
		t.Fatalf("MDY client: %q", got)
	}
	compare(t, pg, r, "P", [][]pgproto3.FrontendMessage{
		// pg_sleep keeps the SET's answer from arriving before the Parse
		// is translated, which the test relies on to exercise the wait.
		{query("SET DateStyle = 'ISO, DMY'; SELECT pg_sleep(0.2)"), parse("d", q), bind("", "d"), exec(""), syncMsg()},
		{query("RESET DateStyle; SELECT pg_sleep(0.2)"), parse("d2", q), bind("", "d2"), exec(""), bind("", "d"), exec(""), syncMsg()},
		// The same in the extended protocol: the report comes before the
		// segment's ReadyForQuery, so a Parse in the next segment waits.
		{
			parse("", "SET DateStyle = 'ISO, DMY'"), bind("", ""), exec(""),
			parse("", "SELECT pg_sleep(0.2)"), bind("", ""), exec(""), syncMsg(),
			parse("d3", q), bind("", "d3"), exec(""), syncMsg(),
		},
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.waits < 3 {
		t.Errorf("Translate waits %d, want the 3 Parses held", r.waits)
	}
}
