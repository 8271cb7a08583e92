package paramsync

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/internal/pgtest"
)

func connectPg(t testing.TB, s *pgtest.Server, user string) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, "host=127.0.0.1 port="+strconv.Itoa(s.Port)+" user="+user+" dbname=postgres sslmode=disable connect_timeout=10")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// TestCheckPgconn: Check over pgconn finds what the wire-level check finds.
func TestCheckPgconn(t *testing.T) {
	eachVersion(t, func(t *testing.T, s *pgtest.Server) {
		c := connectPg(t, s, "app")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		hs, err := Check(ctx, c, true)
		if err != nil || len(hs) != 0 {
			t.Fatalf("clean session: %v %v", hs, err)
		}
		if _, err := c.Exec(ctx, "LISTEN x; SELECT pg_advisory_lock(7)").ReadAll(); err != nil {
			t.Fatal(err)
		}
		hs, err = Check(ctx, c, true)
		if err != nil || len(hs) != 2 || hs[0].Kind != Listen || hs[1].Kind != AdvisoryLock || hs[1].Name != "7" {
			t.Fatalf("got %v %v", hs, err)
		}
		if _, err := c.Exec(ctx, "BEGIN").ReadAll(); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Exec(ctx, "SELECT 1/0").ReadAll(); err == nil {
			t.Fatal("want an error")
		}
		// In a failed transaction the check itself fails: classified, fail closed.
		if _, err := Check(ctx, c, false); err == nil {
			t.Fatal("check in an aborted transaction succeeded")
		}
	})
}

// BenchmarkCheck measures the round trip of the check against SELECT 1, on
// a server where 50 other sessions hold 20 advisory locks each (a busy lock
// table: pg_locks copies all of it under every partition lock). Run:
//
//	go test -run '^$' -bench Check -benchtime 3000x ./internal/paramsync
func BenchmarkCheck(b *testing.B) {
	s := pgtest.Start(b, pgtest.Options{Version: 15, Setup: []string{setupSQL}, Conf: map[string]string{"max_connections": "100"}})
	ctx := context.Background()
	for i := 0; i < 50; i++ {
		c := connectPg(b, s, "app")
		if _, err := c.Exec(ctx, fmt.Sprintf("SELECT pg_advisory_lock(k) FROM generate_series(%d, %d) k", i*100, i*100+19)).ReadAll(); err != nil {
			b.Fatal(err)
		}
	}
	c := connectPg(b, s, "app")
	for _, q := range []struct{ name, sql string }{
		{"select1", "SELECT 1"},
		{"check", CheckQuery(false)},
		{"check+advisory", CheckQuery(true)},
		{"pg_locks only", "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid())"},
		{"after LISTEN", checkQuery(needListen)},
		{"after DECLARE", checkQuery(needCursors)},
		{"after PREPARE", checkQuery(needPrepared)},
		{"after SET", checkQuery(needSettings | needRole)},
		{"after CREATE", checkQuery(needTemp)},
	} {
		b.Run(q.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if _, err := c.ExecParams(ctx, q.sql, nil, nil, nil, nil).Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkLocksContention measures what pg_locks scans cost other sessions:
// 8 workers take and release transaction advisory locks (each a lock-manager
// partition lock, as every non-fast-path lock is) while 0 or 2 connections
// run the pg_locks check in a loop, as a pool checking after every
// transaction would, against a control that burns CPU without lock-manager
// locks (the machine's cores are shared). Compare ns/op.
func BenchmarkLocksContention(b *testing.B) {
	s := pgtest.Start(b, pgtest.Options{Version: 15, Setup: []string{setupSQL}, Conf: map[string]string{"max_connections": "100"}})
	ctx := context.Background()
	for i := 0; i < 50; i++ {
		c := connectPg(b, s, "app")
		if _, err := c.Exec(ctx, fmt.Sprintf("SELECT pg_advisory_lock(k) FROM generate_series(%d, %d) k", 100000+i*100, 100000+i*100+19)).ReadAll(); err != nil {
			b.Fatal(err)
		}
	}
	workers := make(chan *pgconn.PgConn, 8)
	for i := 0; i < 8; i++ {
		workers <- connectPg(b, s, "app")
	}
	checkers := []*pgconn.PgConn{connectPg(b, s, "app"), connectPg(b, s, "app")}
	for _, m := range []struct {
		name  string
		n     int
		query string
	}{
		{"no checker", 0, ""},
		{"2 pg_locks checkers", 2, checkQuery(needAdvisory)},
		// The control: as much CPU per check, no lock-manager locks.
		{"2 pg_settings checkers", 2, checkQuery(needSettings)},
	} {
		n, query := m.n, m.query
		b.Run(m.name, func(b *testing.B) {
			var stop atomic.Bool
			var wg sync.WaitGroup
			var checks atomic.Int64
			for _, c := range checkers[:n] {
				wg.Add(1)
				go func(c *pgconn.PgConn) {
					defer wg.Done()
					for !stop.Load() {
						if _, err := c.ExecParams(ctx, query, nil, nil, nil, nil).Close(); err != nil {
							panic(err)
						}
						checks.Add(1)
					}
				}(c)
			}
			var seq atomic.Int64
			b.SetParallelism(4) // 4 × GOMAXPROCS(2) = 8 workers
			b.RunParallel(func(pb *testing.PB) {
				c := <-workers
				defer func() { workers <- c }()
				for pb.Next() {
					k := seq.Add(1)
					if _, err := c.ExecParams(ctx, "SELECT pg_advisory_xact_lock($1)", [][]byte{[]byte(strconv.FormatInt(k, 10))}, nil, nil, nil).Close(); err != nil {
						panic(err)
					}
				}
			})
			stop.Store(true)
			wg.Wait()
			b.ReportMetric(float64(checks.Load())/b.Elapsed().Seconds(), "checks/s")
		})
	}
}
