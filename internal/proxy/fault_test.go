//go:build linux

package proxy

// Fault campaigns against real PostgreSQL servers: each one injects a
// fault (a slowloris flood, a SIGKILLed server, a blackholed upstream)
// while real clients run, and ends by proving that the proxy still serves,
// that the affected clients got a clear error, and that nothing leaked
// (goroutines and open descriptors back to their baseline).

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/internal/faultnet"
)

// faultLoad is a set of real pgx clients running queries through the
// proxy until stopped: the first half keep one session open, the second
// half open a new session for every few queries (exercising accept,
// startup and the upstream dial while the fault is on).
type faultLoad struct {
	stop     chan struct{}
	wg       sync.WaitGroup
	ok, fail atomic.Int64
	mu       sync.Mutex
	errs     []string
}

func startFaultLoad(t *testing.T, port, n int) *faultLoad {
	t.Helper()
	l := &faultLoad{stop: make(chan struct{})}
	for i := range n {
		persistent := i < n/2
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			var conn *pgx.Conn
			defer func() {
				if conn != nil {
					conn.Close(context.Background())
				}
			}()
			for q := 0; ; q++ {
				select {
				case <-l.stop:
					return
				default:
				}
				if conn == nil {
					c, err := pgxConnect(t, port, "sslmode=disable")
					if err != nil {
						l.failed(fmt.Sprintf("client %d connect: %v", i, err))
						time.Sleep(50 * time.Millisecond)
						continue
					}
					conn = c
				}
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				var v int
				err := conn.QueryRow(ctx, "SELECT $1::int", q).Scan(&v)
				cancel()
				if err != nil || v != q {
					l.failed(fmt.Sprintf("client %d query: %v (got %d, want %d)", i, err, v, q))
					conn.Close(context.Background())
					conn = nil
					continue
				}
				l.ok.Add(1)
				if !persistent && q%3 == 2 {
					conn.Close(context.Background())
					conn = nil
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	return l
}

func (l *faultLoad) failed(msg string) {
	l.fail.Add(1)
	l.mu.Lock()
	if len(l.errs) < 20 {
		l.errs = append(l.errs, msg)
	}
	l.mu.Unlock()
}

// finish stops the clients and returns the successes and failures.
func (l *faultLoad) finish() (ok, fail int64, errs []string) {
	close(l.stop)
	l.wg.Wait()
	return l.ok.Load(), l.fail.Load(), l.errs
}

// freshQuery proves the proxy serves: a new session runs a query.
func freshQuery(t *testing.T, port int) {
	t.Helper()
	c, err := pgxConnect(t, port, "sslmode=disable")
	if err != nil {
		t.Fatalf("fresh session through the proxy: %v", err)
	}
	defer c.Close(context.Background())
	var s string
	if err := c.QueryRow(context.Background(), "SELECT 'alive'").Scan(&s); err != nil || s != "alive" {
		t.Fatalf("fresh query through the proxy: %q %v", s, err)
	}
}

// rejections returns the proxy's client rejections by reason.
func (r *running) rejections(t *testing.T) map[string]float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "pgtrust_client_rejections_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "reason" {
					out[lp.GetValue()] += m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}

// TestFaultSlowloris floods the proxy with 1,000 clients that never
// complete a StartupMessage (half send nothing, half dribble one byte a
// second) while 8 real clients run queries. The real clients must see no
// failure; every flooding client must be shed by the startup timeout
// (closed by the proxy, counted as a rejection); nothing may leak.
func TestFaultSlowloris(t *testing.T) {
	const flood = 1000
	const startupTimeout = 2 * time.Second
	faultnet.RaiseNoFile(t, 3*flood+1024) // both ends of each socket live in this process

	e := newEnv(t)
	p := startProxy(t, Config{StartupTimeout: startupTimeout, Upstreams: []UpstreamConfig{
		{Name: "main", Listen: "127.0.0.1:0", Conn: e.upstream(t)},
	}})
	port := p.port(t, "main")
	freshQuery(t, port)
	before := faultnet.Count(t)

	load := startFaultLoad(t, port, 8)
	time.Sleep(300 * time.Millisecond) // the load is running before the flood

	startup, err := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "app", "database": "appdb"}}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	type outcome struct {
		how     string
		err     error
		elapsed time.Duration
	}
	results := make([]outcome, flood)
	conns := make([]net.Conn, flood)
	var readers, dialers sync.WaitGroup
	var closed atomic.Int64
	dialErrs := make(chan error, flood)
	t0 := time.Now()
	// 16 dialers, so that the whole flood is pending at once.
	for w := range 16 {
		dialers.Add(1)
		go func() {
			defer dialers.Done()
			for i := w; i < flood; i += 16 {
				c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 10*time.Second)
				if err != nil {
					dialErrs <- fmt.Errorf("flood connection %d: %w", i, err)
					continue
				}
				conns[i] = c
				start := time.Now()
				readers.Add(1)
				go func() {
					defer readers.Done()
					// The hang guard is far beyond the startup timeout.
					how, err := faultnet.ReadClosed(c, startupTimeout+20*time.Second)
					closed.Add(1)
					results[i] = outcome{how: how, err: err, elapsed: time.Since(start)}
				}()
			}
		}()
	}
	dialers.Wait()
	pendingAtPeak := int64(flood) - closed.Load()
	close(dialErrs)
	for err := range dialErrs {
		t.Fatal(err)
	}
	dialDone := time.Since(t0)

	// Odd clients dribble their StartupMessage one byte a second.
	dribbleStop := make(chan struct{})
	var dribbled atomic.Int64
	var dribbler sync.WaitGroup
	dribbler.Add(1)
	go func() {
		defer dribbler.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		dead := make([]bool, flood)
		for sent := 0; sent < len(startup); sent++ {
			for i := 1; i < flood; i += 2 {
				if dead[i] {
					continue
				}
				_ = conns[i].SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
				if _, err := conns[i].Write(startup[sent : sent+1]); err != nil {
					dead[i] = true
					continue
				}
				dribbled.Add(1)
			}
			select {
			case <-dribbleStop:
				return
			case <-tick.C:
			}
		}
	}()

	readers.Wait()
	close(dribbleStop)
	dribbler.Wait()
	for _, c := range conns {
		c.Close()
	}
	// The real clients keep running a moment after the flood is shed.
	time.Sleep(500 * time.Millisecond)
	ok, fail, errs := load.finish()

	hows := map[string]int{}
	var elapsed []time.Duration
	for i, r := range results {
		if r.err != nil {
			t.Errorf("flood client %d was not closed by the proxy: %v", i, r.err)
			continue
		}
		hows[r.how]++
		elapsed = append(elapsed, r.elapsed)
	}
	sort.Slice(elapsed, func(i, j int) bool { return elapsed[i] < elapsed[j] })
	if len(elapsed) > 0 {
		t.Logf("flood: %d connections dialed in %v (%d pending at once); closed by the proxy: %v; time to close: min %v, median %v, max %v; %d bytes dribbled",
			flood, dialDone.Round(time.Millisecond), pendingAtPeak, hows, elapsed[0].Round(time.Millisecond),
			elapsed[len(elapsed)/2].Round(time.Millisecond), elapsed[len(elapsed)-1].Round(time.Millisecond), dribbled.Load())
	}
	t.Logf("real clients during the flood: %d queries ok, %d failed", ok, fail)
	if fail != 0 || ok == 0 {
		t.Errorf("real clients: %d ok, %d failed: %s", ok, fail, strings.Join(errs, "; "))
	}
	rej := p.rejections(t)
	t.Logf("rejections by reason: %v", rej)
	if rej[rejectStartupTimeout] != flood {
		t.Errorf("startup_timeout rejections = %v, want %d (all: %v)", rej[rejectStartupTimeout], flood, rej)
	}
	if !strings.Contains(p.logs.String(), "no complete startup packet within the startup timeout") {
		t.Errorf("the log does not name the startup timeout")
	}

	freshQuery(t, port)
	faultnet.Settle(t, "slowloris campaign", before, 4, 20*time.Second)
}
