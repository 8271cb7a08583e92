package proxy

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/internal/pooling"
)

// reviewRaw connects pgconn through the pooled listener; its Frontend is used to
// send exact message sequences.
func reviewRaw(t *testing.T, port int, db string) (*pgconn.PgConn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	pc, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=app dbname=%s sslmode=disable connect_timeout=10", port, db))
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = pc.Close(context.Background()) })
	return pc, nil
}

func reviewConn(t *testing.T, port int) *pgconn.PgConn {
	t.Helper()
	pc, err := reviewRaw(t, port, "appdb")
	if err != nil {
		t.Fatal(err)
	}
	return pc
}

// reviewRecv reads one message (hang guard 15s, not a timing assertion).
func reviewRecv(t *testing.T, pc *pgconn.PgConn) (pgproto3.BackendMessage, error) {
	t.Helper()
	_ = pc.Conn().SetReadDeadline(time.Now().Add(15 * time.Second))
	return pc.Frontend().Receive()
}

// reviewUntilRFQ returns the message types up to and including ReadyForQuery.
func reviewUntilRFQ(t *testing.T, pc *pgconn.PgConn) []string {
	t.Helper()
	var got []string
	for {
		m, err := reviewRecv(t, pc)
		if err != nil {
			t.Fatalf("receive after %v: %v", got, err)
		}
		switch m := m.(type) {
		case *pgproto3.ParameterStatus, *pgproto3.NoticeResponse:
			continue
		case *pgproto3.DataRow:
			got = append(got, "DataRow:"+string(m.Values[0]))
		case *pgproto3.ErrorResponse:
			got = append(got, "Error:"+m.Code)
		default:
			got = append(got, fmt.Sprintf("%T", m)[len("*pgproto3."):])
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			return got
		}
	}
}

// TestPoolReviewCopyErrorSyncReachesNextClient: client A is in COPY FROM
// STDIN (simple protocol); it sends a bad row and a Sync in one write. The
// server fails the COPY (ErrorResponse, ReadyForQuery 'I') and then answers
// the Sync with a second ReadyForQuery. The ServerCache is still in copyIn
// (reset only by the client's CopyDone/CopyFail), so the Sync was not
// queued: at the first ReadyForQuery nothing is outstanding and the pump
// hands the server connection to the waiting client B, whose pump then
// relays A's stray ReadyForQuery as the answer to B's query (and releases
// the connection while B's query runs, so B's rows go to whoever is next).
func TestPoolReviewCopyErrorSyncReachesNextClient(t *testing.T) {
	env := newEnv(t)
	p := pooledProxy(t, env, pooling.ModeTransaction, 1, nil)
	port := p.port(t, "pooled")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	a := reviewConn(t, port)
	if _, err := a.Exec(ctx, "CREATE TABLE zz_copy (i int)").ReadAll(); err != nil {
		t.Fatal(err)
	}
	fa := a.Frontend()
	fa.Send(&pgproto3.Query{String: "COPY zz_copy FROM STDIN"})
	if err := fa.Flush(); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := reviewRecv(t, a)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := m.(*pgproto3.CopyInResponse); ok {
			break
		}
	}
	// B's query waits for the pool's only server connection.
	b := reviewConn(t, port)
	fb := b.Frontend()
	fb.Send(&pgproto3.Query{String: "SELECT 'b-answer'"})
	if err := fb.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "B waiting for a server connection", 15*time.Second, func() bool {
		return p.metric(t, "pgtrust_pool_clients_waiting", map[string]string{"upstream": "pooled"}) >= 1
	})
	fa.Send(&pgproto3.CopyData{Data: []byte("not-an-int\n")})
	fa.Send(&pgproto3.Sync{})
	if err := fa.Flush(); err != nil {
		t.Fatal(err)
	}
	got := reviewUntilRFQ(t, b)
	want := "RowDescription DataRow:b-answer CommandComplete ReadyForQuery"
	if strings.Join(got, " ") != want {
		t.Fatalf("client B got %v for its query, want %s: another client's ReadyForQuery reached it", got, want)
	}
}

// TestPoolReviewErrWaitServerLossHangsSession: a named Parse pipelined
// behind a Query whose text contains "set" waits (ErrWait) on the server
// cache's Settled channel. If the backend dies meanwhile, the pump aborts
// and closes the client, but nothing closes Settled and the wait also
// watches only the proxy's context: the client goroutine never returns,
// the session is never logged closed and its pool client count stays.
func TestPoolReviewErrWaitServerLossHangsSession(t *testing.T) {
	env := newEnv(t)
	p := pooledProxy(t, env, pooling.ModeTransaction, 1, nil)
	port := p.port(t, "pooled")
	a := reviewConn(t, port)
	fa := a.Frontend()
	fa.Send(&pgproto3.Query{String: "SELECT pg_sleep(120) /* reset */"})
	fa.Send(&pgproto3.Parse{Name: "s1", Query: "SELECT 1"})
	fa.Send(&pgproto3.Sync{})
	if err := fa.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the backend running pg_sleep", 15*time.Second, func() bool {
		return strings.Contains(env.srv.Exec(t, "SELECT 'n=' || count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(120)%'"), "n=1")
	})
	env.srv.Exec(t, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(120)%'")
	for {
		if _, err := reviewRecv(t, a); err != nil {
			break // FATAL then the proxy closed the client: expected
		}
	}
	waitFor(t, "the pooled session to end after its server connection died", 15*time.Second, func() bool {
		return strings.Contains(p.logs.String(), "msg=\"session closed\"")
	})
}

// TestPoolReviewBogusDatabasesExhaustKeys: every login names a database,
// and a failed dial still creates a pool key that lives for IdleTimeout
// (10 min by default). A client with the front's credentials fills
// MaxKeys with databases that do not exist; then the real database is
// refused for everyone.
func TestPoolReviewBogusDatabasesExhaustKeys(t *testing.T) {
	env := newEnv(t)
	p := pooledProxy(t, env, pooling.ModeTransaction, 2, func(c *PoolConfig) { c.MaxKeys = 3 })
	port := p.port(t, "pooled")
	for i := range 3 {
		if _, err := reviewRaw(t, port, fmt.Sprintf("nosuch%d", i)); err == nil {
			t.Fatalf("nosuch%d: login succeeded", i)
		}
	}
	if _, err := reviewRaw(t, port, "appdb"); err != nil {
		t.Fatalf("the real database after 3 failed logins to databases that do not exist: %v", err)
	}
}

// TestPoolReviewBatchBufferRetained (heap profile: the 64 MiB is
// Query.Encode in Session.translate, i.e. sbuf): the relay's batch buffer (Run's sbuf)
// keeps the capacity of the largest message a client ever sent, for the
// whole session: one 64 MiB Query, then an idle client, and 64 MiB stay
// allocated per such client (the buffer is truncated, never released).
func TestPoolReviewBatchBufferRetained(t *testing.T) {
	env := newEnv(t)
	p := pooledProxy(t, env, pooling.ModeTransaction, 1, nil)
	a := reviewConn(t, p.port(t, "pooled"))
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	send := func() {
		// Built here and dropped: the test itself keeps no copy.
		raw, _ := (&pgproto3.Query{String: "SELECT 1 /*" + strings.Repeat("x", 8<<20) + "*/"}).Encode(nil)
		if _, err := a.Conn().Write(raw); err != nil {
			t.Fatal(err)
		}
	}
	before := heap()
	send()
	if got := reviewUntilRFQ(t, a); strings.Join(got, " ") != "RowDescription DataRow:1 CommandComplete ReadyForQuery" {
		t.Fatalf("got %v", got)
	}
	if grew := int64(heap()) - int64(before); grew > 4<<20 {
		t.Fatalf("an idle pooled client still holds %d MiB after one 8 MiB query", grew>>20)
	}
}

// TestPoolReviewCopyBehindErrWait: a Query whose text contains "set" (here
// the table name) makes a named Parse pipelined behind it wait for that
// Query's ReadyForQuery. When the Query is COPY FROM STDIN, the session
// must not stop reading the client (it hung for good before). The client
// gets what a direct connection gives for this sequence, checked against
// PostgreSQL itself: the Parse during COPY is a protocol violation (08P01,
// twice) and the server ends the session.
func TestPoolReviewCopyBehindErrWait(t *testing.T) {
	env := newEnv(t)
	p := pooledProxy(t, env, pooling.ModeTransaction, 1, nil)
	run := func(pc *pgconn.PgConn) string {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := pc.Exec(ctx, "CREATE TABLE IF NOT EXISTS zz_settings (i int)").ReadAll(); err != nil {
			t.Fatal(err)
		}
		fa := pc.Frontend()
		fa.Send(&pgproto3.Query{String: "COPY zz_settings FROM STDIN"})
		fa.Send(&pgproto3.Parse{Name: "s1", Query: "SELECT 1"})
		if err := fa.Flush(); err != nil {
			t.Fatal(err)
		}
		var got []string
		for {
			m, err := reviewRecv(t, pc)
			if err != nil {
				return strings.Join(got, " ") + " EOF"
			}
			switch m := m.(type) {
			case *pgproto3.CopyInResponse:
				fa.Send(&pgproto3.CopyData{Data: []byte("1\n")})
				fa.Send(&pgproto3.CopyDone{})
				fa.Send(&pgproto3.Sync{})
				_ = fa.Flush()
				got = append(got, "CopyInResponse")
			case *pgproto3.ErrorResponse:
				got = append(got, "Error:"+m.Code)
			case *pgproto3.ParameterStatus, *pgproto3.NoticeResponse:
			default:
				got = append(got, fmt.Sprintf("%T", m)[len("*pgproto3."):])
			}
		}
	}
	direct, err := pgconn.Connect(context.Background(), fmt.Sprintf("host=127.0.0.1 port=%d user=app dbname=appdb sslmode=verify-full sslrootcert=%s sslcert=%s sslkey=%s",
		env.srv.Port, env.rootFile, env.certFile, env.keyFil))
	if err != nil {
		t.Fatal(err)
	}
	want := run(direct)
	if got := run(reviewConn(t, p.port(t, "pooled"))); got != want {
		t.Fatalf("through the pool: %s; directly: %s", got, want)
	}
	// The pool serves the next client.
	b := reviewConn(t, p.port(t, "pooled"))
	if _, err := b.Exec(context.Background(), "SELECT 1").ReadAll(); err != nil {
		t.Fatalf("the next client: %v", err)
	}
}
