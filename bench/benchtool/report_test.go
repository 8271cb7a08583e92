package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeRun writes a synthetic bench/run results directory: three rounds in
// which pgtrust uses more CPU per transaction than PgBouncer and misses.
func writeRun(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	var res strings.Builder
	tps := map[string]float64{"direct-tls": 10000, "direct-plain": 14000, "pgtrust-tcp": 5000, "pgtrust-unix": 5200,
		"pgtrust-pool-session": 5100, "pgtrust-pool-txn": 5050, "pgbouncer-session": 9000, "pgbouncer-txn": 8800, "stunnel": 8000}
	cpu := map[string]float64{"pgtrust-tcp": 41.5, "pgtrust-unix": 40, "pgtrust-pool-session": 45, "pgtrust-pool-txn": 47,
		"pgbouncer-session": 23.25, "pgbouncer-txn": 24, "stunnel": 30}
	for r := 1; r <= 3; r++ {
		d := float64(r-2) * 0.01
		for p, v := range tps {
			for _, w := range []string{"select1", "select8", "select32", "tpcb8", "churn8"} {
				fmt.Fprintf(&res, "%d\t%s\t%s\t%.2f\n", r, p, w, v*(1+d))
			}
			fmt.Fprintf(&res, "%d\t%s\tcopy\t%.2f\n", r, p, v/30*(1+d))
			fmt.Fprintf(&res, "%d\t%s\tavg\t%.4f\n", r, p, 1000/v*(1-d))
			fmt.Fprintf(&res, "%d\t%s\tp50\t%.4f\n", r, p, 900/v)
			fmt.Fprintf(&res, "%d\t%s\tp99\t%.4f\n", r, p, 3000/v)
			if c, ok := cpu[p]; ok {
				for _, w := range []string{"select1", "select8", "select32", "tpcb8", "churn8"} {
					fmt.Fprintf(&res, "%d\t%s\tcpu.%s\t%.3f\n", r, p, w, c*(1+d))
					if p != "stunnel" {
						fmt.Fprintf(&res, "%d\t%s\tcs.%s\t%.3f\n", r, p, w, c/10)
					}
				}
				fmt.Fprintf(&res, "%d\t%s\tcpu.copy\t%.3f\n", r, p, c*50)
			}
		}
	}
	files := map[string]string{
		"results.tsv": res.String(),
		"memory.tsv": "pgtrust-tcp\t500\t20000\t47000\t\npgbouncer-session\t500\t8000\t36000\t\nstunnel\t500\t10000\t77000\t\n" +
			"pgtrust-pool-txn\t2000\t21000\t39000\t8\npgbouncer-txn\t2000\t8000\t10400\t7\n",
		"meta.tsv": "date\t2026-12-02 11:39 UTC\nCPU\t2 × Test CPU\n_cpus\t2\nload average at the end\t1.00 2.00 3.00 (noisy)\n" +
			"_gomaxprocs\t1\n_benchproxy_gomaxprocs\t1\n",
		"commands.txt":                   "pgbench ...",
		"profile-select8.txt":            "Showing nodes\nflat%",
		"profile-select8.traces":         tracesSample,
		"profile-select1.traces":         tracesSample,
		"profile-idle-heap.txt":          "500 idle sessions: goroutines=1003 parked=0 heap_inuse_kib=9000 stack_inuse_kib=8000 rss_kib=47000\n",
		"profile-pool-txn-idle-heap.txt": "2000 idle clients: goroutines=9 parked=2000 heap_inuse_kib=14000 stack_inuse_kib=700 rss_kib=31000\n",
	}
	for n, c := range files {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestReport(t *testing.T) {
	dir := writeRun(t)
	out := filepath.Join(dir, "benchmarks.md")
	if err := report([]string{"-dir", dir, "-out", out, "-png", filepath.Join(dir, "b.png")}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, want := range []string{
		"### Proxy CPU per transaction",
		"| pgbench -S, 1 client (µs per transaction) | **41.5** (1.78×)",
		"| Proxy CPU per transaction, pgbench -S 1 client: ≤ 1.0× PgBouncer session | **missed**: 41.5 µs against PgBouncer session 23.2 µs: 1.78×",
		"| Average latency, pgbench -S 1 client: ≤ 1.3× direct TLS | **missed**",
		"| ≤ 16 KiB RSS per idle session | **missed**: 54.0 KiB per session (500 sessions): 38.0 KiB over",
		"pgtrust TCP 41.5 µs, PgBouncer session 23.2 µs, stunnel 30.0 µs",
		"pgtrust used 1.78× PgBouncer session's CPU per transaction.",
		"which ran with GOMAXPROCS 1 on 2 CPUs",
		"In this run's select1 CPU profile (bench/benchproxy, GOMAXPROCS 1, 100 ms sampled): system calls 40%, scheduler and netpoll 30%",
		"the pgtrust hop adds 100 µs per transaction, PgBouncer's 11 µs",
		"Of those 100 µs, 41.5 µs are the proxy's CPU time per transaction",
		"1003 goroutines (2.0 per session)",
		"a cell of the results table moved by (max − min) / median = 2%",
		"load average at the end of this run: 1.00 2.00 3.00",
		"| select8 | 100 ms | 40% | 30% | 10% | 10% | 5% | 5% |",
		"PgBouncer transaction held its 2000 idle clients in 1.2 KiB each",
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("the report lacks %q", want)
		}
	}
	// Canned sentences of earlier reports must not come back.
	for _, bad := range []string{"GOMAXPROCS 1 here", "about 1 KiB of its own", "| _gomaxprocs", "| _cpus"} {
		if strings.Contains(doc, bad) {
			t.Errorf("the report says %q", bad)
		}
	}
}

func TestReportOneRound(t *testing.T) {
	dir := t.TempDir()
	_ = os.WriteFile(filepath.Join(dir, "results.tsv"), []byte("1\tdirect-tls\tselect8\t100\n1\tpgtrust-tcp\tselect8\t90\n"), 0o644)
	_ = os.WriteFile(filepath.Join(dir, "meta.tsv"), []byte("date\tx\n"), 0o644)
	out := filepath.Join(dir, "b.md")
	if err := report([]string{"-dir", dir, "-out", out}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	if !strings.Contains(string(b), "This run had one round: it cannot say how much a figure moves") {
		t.Error("a one-round report claims a spread")
	}
	if !strings.Contains(string(b), "The proxy's CPU on pgbench -S, 8 clients was not measured in this run.") {
		t.Error("a report without CPU figures does not say so")
	}
}
