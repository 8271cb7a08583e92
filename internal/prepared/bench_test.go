package prepared

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// roundTrip feeds one client round trip through Rewrite and the server's
// answers through Filter, as a session would.
func roundTrip(b *testing.B, c *Client, sc *ServerCache, req []pgproto3.FrontendMessage, resp []pgproto3.BackendMessage) {
	for _, m := range req {
		if _, _, err := c.Rewrite(m, sc); err != nil {
			b.Fatal(err)
		}
	}
	for _, m := range resp {
		if _, err := c.Filter(m, sc); err != nil {
			b.Fatal(err)
		}
	}
	if sc.Outstanding() != 0 {
		b.Fatalf("%d outstanding", sc.Outstanding())
	}
}

var (
	row  = &pgproto3.DataRow{Values: [][]byte{[]byte("1")}}
	cc   = &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}
	rfqI = &pgproto3.ReadyForQuery{TxStatus: 'I'}
)

// The steady state of a driver's statement cache (pgx's default mode):
// Bind of a statement the server has, Execute, Sync.
func BenchmarkRoundTripPrepared(b *testing.B) {
	c, sc := NewClient(), NewServerCache(0)
	roundTrip(b, c, sc, []pgproto3.FrontendMessage{parse("s", "SELECT $1::int"), syncMsg()},
		[]pgproto3.BackendMessage{&pgproto3.ParseComplete{}, rfqI})
	req := []pgproto3.FrontendMessage{bind("", "s", "1"), exec(""), syncMsg()}
	resp := []pgproto3.BackendMessage{&pgproto3.BindComplete{}, row, cc, rfqI}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		roundTrip(b, c, sc, req, resp)
	}
}

// A client preparing a statement another client already prepared on this
// server: the Parse is swallowed and answered in order, the Describe is
// rewritten; then Bind, Execute, Close, Sync.
func BenchmarkRoundTripSharedParse(b *testing.B) {
	c, sc := NewClient(), NewServerCache(0)
	roundTrip(b, NewClient(), sc, []pgproto3.FrontendMessage{parse("x", "SELECT $1::int"), syncMsg()},
		[]pgproto3.BackendMessage{&pgproto3.ParseComplete{}, rfqI})
	req := []pgproto3.FrontendMessage{parse("s", "SELECT $1::int"), descS("s"), bind("", "s", "1"), exec(""), closeS("s"), syncMsg()}
	resp := []pgproto3.BackendMessage{&pgproto3.ParameterDescription{ParameterOIDs: []uint32{23}},
		&pgproto3.RowDescription{}, &pgproto3.BindComplete{}, row, cc, rfqI}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		roundTrip(b, c, sc, req, resp)
	}
}

// Unnamed statement (pgx's exec mode, most ORMs' default): pass-through.
func BenchmarkRoundTripUnnamed(b *testing.B) {
	c, sc := NewClient(), NewServerCache(0)
	req := []pgproto3.FrontendMessage{parse("", "SELECT $1::int"), bind("", "", "1"), descP(""), exec(""), syncMsg()}
	resp := []pgproto3.BackendMessage{&pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, &pgproto3.RowDescription{}, row, cc, rfqI}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		roundTrip(b, c, sc, req, resp)
	}
}
