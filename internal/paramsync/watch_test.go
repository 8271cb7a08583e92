package paramsync

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/internal/pgtest"
)

// TestWatchDueUntilChecked: the check stays due, and every idle
// ReadyForQuery asks for it, until the pool says it ran. A pipelining client
// makes an idle ReadyForQuery while its next query is outstanding; the pool
// cannot check there and must be asked again at the next one.
func TestWatchDueUntilChecked(t *testing.T) {
	w := NewWatch(false)
	w.Server(&pgproto3.CommandComplete{CommandTag: []byte("LISTEN")})
	if c, _ := w.Server(&pgproto3.ReadyForQuery{TxStatus: 'I'}); !c {
		t.Fatal("no check at the first idle ReadyForQuery")
	}
	// Not acted on: the next query was already on the wire.
	w.Server(&pgproto3.CommandComplete{CommandTag: []byte("DECLARE CURSOR")})
	w.Server(&pgproto3.ReadyForQuery{TxStatus: 'T'})
	w.Server(&pgproto3.CommandComplete{CommandTag: []byte("COMMIT")})
	if c, _ := w.Server(&pgproto3.ReadyForQuery{TxStatus: 'I'}); !c || !w.Due() {
		t.Fatal("check lost at the second idle ReadyForQuery")
	}
	q := w.Query()
	if !strings.Contains(q, "pg_listening_channels") || !strings.Contains(q, "pg_cursors") {
		t.Fatalf("parts not accumulated: %s", q)
	}
	w.Checked()
	if w.Due() {
		t.Fatal("still due after Checked")
	}
	w.Server(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")})
	if c, _ := w.Server(&pgproto3.ReadyForQuery{TxStatus: 'I'}); c {
		t.Fatal("check asked for again after Checked")
	}
}

// TestPipelinedHazardFound: on a real server, "LISTEN x" and "SELECT 1"
// sent as two Query messages at once; the pool runs the check only at the
// ReadyForQuery that answers its last outstanding query, and finds the
// LISTEN there. Watch.Check marks it done.
func TestPipelinedHazardFound(t *testing.T) {
	eachVersion(t, func(t *testing.T, s *pgtest.Server) {
		w := dialWire(t, s, nil)
		watch := NewWatch(false)
		w.fe.Send(&pgproto3.Query{String: "LISTEN x"})
		w.fe.Send(&pgproto3.Query{String: "SELECT 1"})
		if err := w.fe.Flush(); err != nil {
			t.Fatal(err)
		}
		outstanding := 2
		var found []*Hazard
		for outstanding > 0 {
			for _, m := range w.until() {
				check, _ := watch.Server(m)
				if _, ok := m.(*pgproto3.ReadyForQuery); ok {
					outstanding--
				}
				if check && outstanding == 0 {
					var row [][]byte
					for _, r := range w.mustQuery(watch.Query()) {
						if d, ok := r.(*pgproto3.DataRow); ok {
							row = d.Values
						}
					}
					hs, err := Inspect(row)
					if err != nil {
						t.Fatal(err)
					}
					watch.Checked()
					found = append(found, hs...)
				}
			}
		}
		if len(found) != 1 || found[0].Kind != Listen || found[0].Name != "x" {
			t.Fatalf("found %v", found)
		}
		if watch.Due() {
			t.Fatal("due after the check")
		}
	})
}
