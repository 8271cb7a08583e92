package pgtrust

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
)

// TestPlanStateDropped checks that the state a config's closures share is
// dropped when each connect ends, whatever path it took, so nothing grows
// with the number of connects: successful TLS connects under prefer, the
// prefer fallback to plaintext after a startup error, sslcertmode=require,
// and a wrong password (the one path pgconn does not report back, left to
// the sweep).
func TestPlanStateDropped(t *testing.T) {
	w := newFrontDoorWorld(t)
	base, crt, key := w.Base, w.Cert, w.Key
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	config := func(t *testing.T, dsn string) (*pgx.ConnConfig, *plan) {
		cfg, err := connstring.Parse(dsn)
		if err != nil {
			t.Fatal(err)
		}
		cc, p, err := connConfig(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		return cc, p
	}
	connect := func(t *testing.T, cc *pgx.ConnConfig, wantSSL bool) {
		conn, err := ConnectConfig(ctx, cc)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var ssl bool
		if err := conn.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil {
			t.Fatal(err)
		}
		if ssl != wantSSL {
			t.Fatalf("ssl=%v, want %v", ssl, wantSSL)
		}
	}
	empty := func(t *testing.T, p *plan, after string) {
		t.Helper()
		if pending, conns := p.size(); pending != 0 || conns != 0 {
			t.Fatalf("after %s: %d pending and %d connection states left", after, pending, conns)
		}
	}

	t.Run("prefer over TLS", func(t *testing.T) {
		cc, p := config(t, base+"user=pw password=pw-secret sslmode=prefer")
		for i := 0; i < 20; i++ {
			connect(t, cc, true)
			empty(t, p, fmt.Sprintf("connect %d", i+1))
		}
		if p.nextID != 20 {
			t.Fatalf("%d connects registered, want 20", p.nextID)
		}
	})
	t.Run("prefer falls back to plaintext", func(t *testing.T) {
		cc, p := config(t, base+"user=plain sslmode=prefer")
		for i := 0; i < 5; i++ {
			connect(t, cc, false)
			empty(t, p, fmt.Sprintf("fallback %d", i+1))
		}
	})
	t.Run("sslcertmode=require", func(t *testing.T) {
		cc, p := config(t, base+fmt.Sprintf("user=app sslmode=verify-full sslcertmode=require sslcert=%s sslkey=%s", crt, key))
		for i := 0; i < 5; i++ {
			connect(t, cc, true)
			empty(t, p, fmt.Sprintf("connect %d", i+1))
		}
	})
	t.Run("verify-full keeps no state", func(t *testing.T) {
		cc, p := config(t, base+"user=pw password=pw-secret sslmode=verify-full")
		for i := 0; i < 5; i++ {
			connect(t, cc, true)
		}
		empty(t, p, "verify-full connects")
		if p.nextID != 0 {
			t.Fatalf("verify-full registered %d connects", p.nextID)
		}
	})
	t.Run("wrong password leaves state to the sweep", func(t *testing.T) {
		cc, p := config(t, base+"user=pw password=wrong sslmode=prefer")
		clock := time.Now()
		p.now = func() time.Time { return clock }
		for i := 0; i < 3; i++ {
			_, err := ConnectConfig(ctx, cc)
			if failure.ClassOf(err) != failure.AuthFailed {
				t.Fatalf("class %s: %v", failure.ClassOf(err), err)
			}
		}
		if pending, conns := p.size(); pending != 3 || conns != 3 {
			t.Fatalf("%d pending, %d connection states; want 3 and 3", pending, conns)
		}
		clock = clock.Add(stateTTL + time.Second)
		p.mu.Lock()
		p.sweepAt = 0 // force the next lookup to sweep
		p.mu.Unlock()
		if _, err := p.lookup(ctx, planHost); err != nil {
			t.Fatal(err)
		}
		if pending, conns := p.size(); pending != 1 || conns != 0 {
			t.Fatalf("after the sweep: %d pending, %d connection states; want only the new lookup's", pending, conns)
		}
	})
	t.Run("cancel reaches the server", func(t *testing.T) {
		// pgx sends a CancelRequest through DialFunc, with the server's
		// real address, when a query's context ends; without it the
		// backend would sleep on for a minute.
		cc, p := config(t, base+"user=pw password=pw-secret sslmode=verify-full")
		conn, err := ConnectConfig(ctx, cc)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		pid := conn.PgConn().PID()
		qctx, qcancel := context.WithTimeout(ctx, 300*time.Millisecond)
		_, err = conn.Exec(qctx, "SELECT pg_sleep(60)")
		qcancel()
		if err == nil {
			t.Fatal("pg_sleep(60) returned within 300 ms")
		}
		p.mu.Lock()
		targets := len(p.targets)
		p.mu.Unlock()
		if targets != 1 {
			t.Fatalf("%d cancel targets, want the one address", targets)
		}
		admin, err := Connect(ctx, base+"user=pw password=pw-secret sslmode=verify-full")
		if err != nil {
			t.Fatal(err)
		}
		defer admin.Close(ctx)
		// Wait (up to 20 s, far below the sleep) for the backend to stop
		// running the query.
		for deadline := time.Now().Add(20 * time.Second); ; {
			var active bool
			if err := admin.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active')", pid).Scan(&active); err != nil {
				t.Fatal(err)
			}
			if !active {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the backend still runs pg_sleep: the CancelRequest did not arrive")
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	t.Run("configs share nothing", func(t *testing.T) {
		cc1, p1 := config(t, base+"user=pw password=pw-secret sslmode=prefer")
		_, p2 := config(t, base+"user=pw password=pw-secret sslmode=prefer")
		connect(t, cc1, true)
		if p2.nextID != 0 || p1.nextID != 1 {
			t.Fatalf("plans: %d and %d connects", p1.nextID, p2.nextID)
		}
	})
}

// TestPlanSweepCostConstant drives the worst case, connects that all leave
// state behind (as wrong passwords do under prefer), and counts the entries
// the sweeps look at: spread over the connects, it stays below a constant
// however many connects came before, and the table stays bounded by the
// connects of the last stateTTL.
func TestPlanSweepCostConstant(t *testing.T) {
	cfg, err := connstring.Parse("host=127.0.0.1 sslmode=prefer")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{1_000, 10_000, 100_000} {
		p := newPlan(cfg, nil)
		clock := time.Unix(0, 0)
		p.now = func() time.Time { return clock }
		for i := 0; i < n; i++ {
			clock = clock.Add(time.Second) // one leaked connect a second
			if _, err := p.lookup(context.Background(), planHost); err != nil {
				t.Fatal(err)
			}
		}
		perConnect := float64(p.visited) / float64(n)
		pending, _ := p.size()
		t.Logf("%d connects: %.2f entries visited per connect, %d entries kept", n, perConnect, pending)
		if perConnect > 4 {
			t.Errorf("%d connects: sweeps looked at %.2f entries per connect", n, perConnect)
		}
		// At one connect a second, at most stateTTL seconds of state, plus
		// what accumulates until the table doubles.
		if limit := 2*int(stateTTL/time.Second) + minSweep; pending > limit {
			t.Errorf("%d connects: %d entries kept, more than %d", n, pending, limit)
		}
	}
}
