package pgterminate_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgterminate"
	"github.com/pgtrust/pgtrust/internal/pgtest"
)

func TestRetryDelay(t *testing.T) {
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}
	for i, w := range want {
		if got := pgterminate.RetryDelay(i + 1); got != w {
			t.Fatalf("RetryDelay(%d) = %s, want %s", i+1, got, w)
		}
	}
	if got := pgterminate.RetryDelay(1000); got != pgterminate.RetryMax {
		t.Fatalf("RetryDelay(1000) = %s", got)
	}
}

// A backend is ended only when both its PID and its backend_start match,
// also while it runs a statement that swallows cancels; a second attempt
// reports it gone.
func TestIdentifyAndOn(t *testing.T) {
	for _, v := range []int{15, 18} {
		t.Run(fmt.Sprintf("PG%d", v), func(t *testing.T) {
			s := pgtest.Start(t, pgtest.Options{Version: v, Setup: []string{"CREATE ROLE app LOGIN"}})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			connect := func() *pgconn.PgConn {
				pg, err := pgconn.Connect(ctx, s.DSN("user=app dbname=postgres"))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = pg.Close(context.Background()) })
				return pg
			}
			victim, side := connect(), connect()
			b, err := pgterminate.Identify(ctx, victim)
			if err != nil {
				t.Fatal(err)
			}
			want := s.Exec(t, "SELECT (extract(epoch FROM backend_start) * 1000000)::int8 FROM pg_stat_activity WHERE pid = "+strconv.Itoa(int(victim.PID())))
			if b.PID != victim.PID() || strconv.FormatInt(b.Start, 10) != strings.TrimSpace(want) {
				t.Fatalf("identified %+v, server says pid %d start %s", b, victim.PID(), want)
			}
			if pgterminate.ServerMajor(side) != v {
				t.Fatalf("ServerMajor %d", pgterminate.ServerMajor(side))
			}
			// The backend runs a statement that catches query_canceled.
			victim.Exec(ctx, "DO $$ BEGIN LOOP BEGIN PERFORM pg_sleep(600); EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END $$")
			count := func() string {
				return strings.TrimSpace(s.Exec(t, "SELECT count(*) FROM pg_stat_get_activity("+strconv.Itoa(int(b.PID))+")"))
			}
			for range 200 {
				if strings.TrimSpace(s.Exec(t, "SELECT state FROM pg_stat_activity WHERE pid = "+strconv.Itoa(int(b.PID)))) == "active" {
					break
				}
				time.Sleep(25 * time.Millisecond)
			}
			// Another backend start under the same PID (PID reuse) is not hit.
			if ended, err := pgterminate.On(ctx, side, pgterminate.Backend{PID: b.PID, Start: b.Start + 1}); ended || err != nil {
				t.Fatalf("wrong backend_start: ended %v err %v", ended, err)
			}
			if count() != "1" {
				t.Fatal("a backend with another backend_start was ended")
			}
			if ended, err := pgterminate.On(ctx, side, b); !ended || err != nil {
				t.Fatalf("ended %v err %v", ended, err)
			}
			// PostgreSQL 14+ waits for the exit: gone as On returns.
			if count() != "0" {
				t.Fatal("the backend is still listed after On")
			}
			if ended, err := pgterminate.On(ctx, side, b); ended || err != nil {
				t.Fatalf("second attempt: ended %v err %v", ended, err)
			}
			// A connection the server does not list cannot be identified:
			// a closed one fails with a classified error.
			_ = victim.Close(ctx)
			if _, err := pgterminate.Identify(ctx, victim); failure.ClassOf(err) != failure.ProtocolError {
				t.Fatalf("Identify on a closed connection: %v", err)
			}
		})
	}
}

// A backend that cannot act on the signal within Timeout (here it is
// stopped, as a starved process on a loaded server would be) makes On fail
// with a Timeout error that Signalled recognises; once it runs again it
// exits, and the next attempt finds it gone.
func TestOnSignalledBackendExitsLate(t *testing.T) {
	s := pgtest.Start(t, pgtest.Options{Setup: []string{"CREATE ROLE app LOGIN"}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	victim, err := pgconn.Connect(ctx, s.DSN("user=app dbname=postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = victim.Close(context.Background()) }()
	side, err := pgconn.Connect(ctx, s.DSN("user=app dbname=postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = side.Close(context.Background()) }()
	b, err := pgterminate.Identify(ctx, victim)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(int(b.PID), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			_ = syscall.Kill(int(b.PID), syscall.SIGCONT)
		}
	}
	defer resume()
	ended, err := pgterminate.On(ctx, side, b)
	if ended || failure.ClassOf(err) != failure.Timeout || !pgterminate.Signalled(err) {
		t.Fatalf("stopped backend: ended %v err %v, want a Timeout that Signalled recognises", ended, err)
	}
	resume()
	for range 200 {
		if strings.TrimSpace(s.Exec(t, "SELECT count(*) FROM pg_stat_get_activity("+strconv.Itoa(int(b.PID))+")")) == "0" {
			break
		}
		time.Sleep(25 * time.Millisecond)
	}
	if ended, err := pgterminate.On(ctx, side, b); ended || err != nil || pgterminate.Signalled(err) {
		t.Fatalf("after the late exit: ended %v err %v", ended, err)
	}
	// Other failures are not a sent signal.
	_ = side.Close(ctx)
	if _, err := pgterminate.On(ctx, side, b); err == nil || pgterminate.Signalled(err) {
		t.Fatalf("closed side connection: %v", err)
	}
}
