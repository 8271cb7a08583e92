package paramsync

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/internal/pgtest"
)

// logical is one pooled client as the pool sees it: its tracker and the
// ParameterStatus it has been sent.
type logical struct {
	c    *Client
	sent map[string]string
}

// txn runs one client transaction on the shared server connection the way
// a transaction-mode pool does: Plan, Reconcile, relay, Observe.
func txn(t *testing.T, srv *wire, watch *Watch, l *logical, sql string) []pgproto3.BackendMessage {
	t.Helper()
	qs, err := l.c.Plan(srv.params)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qs {
		srv.mustQuery(q) // the pool swallows the answer; wire keeps srv.params current
	}
	for _, ps := range l.c.Reconcile(srv.params) {
		l.sent[ps.Name] = ps.Value
	}
	msgs := srv.mustQuery(sql)
	for _, m := range msgs {
		if _, h := watch.Server(m); h != nil {
			t.Fatalf("hazard %v", h)
		}
		if ps, ok := m.(*pgproto3.ParameterStatus); ok {
			l.c.Observe(ps.Name, ps.Value)
			l.sent[ps.Name] = ps.Value
		}
	}
	return msgs
}

// TestTwoClientsOneServer: two clients with different sessions take turns
// on one server connection; each always finds its own values, and what each
// was sent equals what the server reports while it runs.
func TestTwoClientsOneServer(t *testing.T) {
	eachVersion(t, func(t *testing.T, s *pgtest.Server) {
		srv := dialWire(t, s, nil)
		defaults := make(map[string]string) // the pool keeps them when it opens the key's first connection
		for n, v := range srv.params {
			defaults[n] = v
		}
		watch := NewWatch(false)
		watch.SetAuthorization(srv.params["session_authorization"])
		mk := func(startup map[string]string) *logical {
			c, err := NewClient(startup, defaults)
			if err != nil {
				t.Fatal(err)
			}
			return &logical{c: c, sent: map[string]string{}}
		}
		one := mk(map[string]string{"DateStyle": "German", "application_name": "one"})
		two := mk(map[string]string{"TimeZone": "Asia/Tokyo", "application_name": "two", "client_encoding": "LATIN1"})
		show := func(l *logical, name string) string {
			for _, m := range txn(t, srv, watch, l, "SHOW "+name) {
				if d, ok := m.(*pgproto3.DataRow); ok {
					return string(d.Values[0])
				}
			}
			t.Fatal("no row")
			return ""
		}
		for round := 0; round < 3; round++ {
			if got := show(one, "DateStyle"); got != "German, DMY" {
				t.Fatalf("round %d: one's DateStyle %q", round, got)
			}
			if got := show(two, "DateStyle"); got != "ISO, MDY" {
				t.Fatalf("round %d: two's DateStyle %q", round, got)
			}
			if got := show(two, "TimeZone"); got != "Asia/Tokyo" {
				t.Fatalf("round %d: two's TimeZone %q", round, got)
			}
			if got := show(one, "TimeZone"); got != "UTC" {
				t.Fatalf("round %d: one's TimeZone %q", round, got)
			}
			if got := show(one, "client_encoding"); got != "UTF8" {
				t.Fatalf("round %d: one's client_encoding %q", round, got)
			}
		}
		// A SET in one's transaction stays one's.
		txn(t, srv, watch, one, "SET IntervalStyle = sql_standard")
		if got := show(two, "IntervalStyle"); got != "postgres" {
			t.Fatalf("two's IntervalStyle %q", got)
		}
		if got := show(one, "IntervalStyle"); got != "sql_standard" {
			t.Fatalf("one's IntervalStyle %q", got)
		}
		if s.Version >= 18 {
			txn(t, srv, watch, two, `SET search_path = "MySchema", "we,ird"`)
			if got := show(one, "search_path"); got != `"$user", public` {
				t.Fatalf("one's search_path %q", got)
			}
			if got := show(two, "search_path"); got != `"MySchema", "we,ird"` {
				t.Fatalf("two's search_path %q", got)
			}
		}
		// While each runs, what it was sent is what the server reports.
		for _, l := range []*logical{one, two} {
			show(l, "DateStyle")
			for n, v := range srv.params {
				if l.sent[n] != v {
					t.Fatalf("%s: sent %q, server %q", n, l.sent[n], v)
				}
			}
		}
	})
}
