package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSplice(t *testing.T) {
	sec := capBegin + "\n## Capacity\n\nnew\n" + capEnd + "\n"
	got, err := spliceText("# Doc\n\n## Signals\n\ntext\n", sec)
	if err != nil || got != "# Doc\n\n## Signals\n\ntext\n\n"+sec {
		t.Fatalf("append: %q %v", got, err)
	}
	again, err := spliceText(got, strings.Replace(sec, "new", "newer", 1))
	if err != nil || !strings.Contains(again, "newer") || strings.Contains(again, "\nnew\n") || strings.Count(again, capBegin) != 1 {
		t.Fatalf("replace: %q %v", again, err)
	}
	if _, err := spliceText("x\n"+capBegin+"\n", sec); err == nil {
		t.Error("a begin marker without an end marker was accepted")
	}
	if _, err := spliceText("x\n", "## Capacity\n"); err == nil {
		t.Error("a section without markers was accepted")
	}
}

func TestScalingReport(t *testing.T) {
	dir := t.TempDir()
	var s strings.Builder
	for _, cpus := range []int{1, 2} {
		for _, c := range []int{1, 8, 64} {
			fmt.Fprintf(&s, "1\t%d\tdirect-tls\t%d\t%d\t0.1\t-\t-\t-\t-\n", cpus, c, 1000*c)
			// pgtrust: 40 µs on 1 CPU, 50 µs on 2 at 64 clients.
			us := 40.0
			if cpus == 2 {
				us = 50
			}
			if c == 1 {
				us = 80
			}
			fmt.Fprintf(&s, "1\t%d\tpgtrust-tcp\t%d\t%d\t0.2\t%.1f\t4.0\t1.0\t5.0\n", cpus, c, 500*c, us)
			fmt.Fprintf(&s, "1\t%d\tpgbouncer-session\t%d\t%d\t0.15\t25.0\t2.0\t1.0\t5.0\n", cpus, c, 700*c)
		}
	}
	files := map[string]string{
		"scaling.tsv":      s.String(),
		"scaling-copy.tsv": "1\t1\tdirect-tls\t268.4\t1.0\t-\n1\t2\tpgtrust-tcp\t268.4\t1.0\t0.5\n1\t2\tpgbouncer-session\t268.4\t1.0\t1.0\n",
		"memory.tsv":       "pgtrust-tcp\t500\t20000\t28000\t\n",
		"meta.tsv":         "date\t2026-12-02\nCPU\t2 × Test\n_procs_mode\tpinned\n_gomaxprocs.1\t1\n_gomaxprocs.2\t2\n",
		"commands.txt":     "pgbench",
	}
	for n, c := range files {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, capOut := filepath.Join(dir, "scaling.md"), filepath.Join(dir, "cap.md")
	if err := scaling([]string{"-dir", dir, "-out", out, "-capacity", capOut}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	doc := string(b)
	for _, want := range []string{
		"### Proxies pinned to 2 CPUs (`taskset -c 0-1`, pgtrust GOMAXPROCS 2)",
		"| 64 | 64000 | 0.100 | 32000 | 0.200 | 50.0 | 1.60 | 4.0 |",
		"pgtrust TCP on 1 CPU, 1 → 64 clients: CPU per transaction 80.0 → 40.0 µs (-50%)",
		"pgtrust TCP on 2 CPUs instead of 1: at 1 client throughput +0% and CPU per transaction +0%; at 64 clients throughput +0% and CPU per transaction +25%.",
		"pgtrust proxy spent **50.0 µs of CPU per transaction**, so one core relays about **20000 such transactions per second**",
		"kept 1.60 CPUs busy: **40 such busy sessions per core**",
		// 16 cores × 20000 = 320000; with 25% more per doubling (3 doublings): 16e6/(50×1.25³) = 163840.
		"would relay up to 320000 transactions per second",
		"up to 163840",
		"**Estimate, not a measurement.**",
		"| 2 | pgtrust TCP | 268 | 537 |",
		"**16.0 KiB per session**",
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("scaling.md lacks %q", want)
		}
	}
	c, _ := os.ReadFile(capOut)
	capText := string(c)
	for _, want := range []string{capBegin, capEnd, "## Capacity", "about 20000 short transactions", "about 537 MB/s",
		"16.0 KiB per idle session", "up to 163840–320000 such transactions per second"} {
		if !strings.Contains(capText, want) {
			t.Errorf("the capacity section lacks %q", want)
		}
	}
}
