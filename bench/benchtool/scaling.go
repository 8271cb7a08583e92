package main

import (
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// The paths of bench/run --scaling, in table order. Only the proxies are
// pinned; direct TLS has no process in the middle.
var scalingPaths = []string{"direct-tls", "pgtrust-tcp", "pgbouncer-session"}

type scaleKey struct {
	cpus    int
	path    string
	clients int
}

// scalePoint: the rounds of one (CPUs, path, clients) point. busy is the
// proxy's CPUs busy: tps × CPU per transaction.
type scalePoint struct {
	tps, lat, cpuUS, cs, busy []float64
}

type copyPoint struct {
	mbps, mbPerCPUSec []float64
}

type scalingData struct {
	points  map[scaleKey]*scalePoint
	copies  map[scaleKey]*copyPoint // clients = 0
	cpus    []int
	clients []int
	rounds  int
	memory  []memoryRow
}

// optFloat parses a figure, "-" for none.
func optFloat(s string) (float64, bool, error) {
	if s == "-" || s == "" {
		return 0, false, nil
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, false, fmt.Errorf("bad number %q", s)
	}
	return v, true, nil
}

// readScaling reads scaling.tsv (round, cpus, path, clients, tps, latency
// ms, proxy CPU µs per transaction, context switches per transaction,
// proxy CPU seconds, wall seconds: the last two are kept for the record) and scaling-copy.tsv (round, cpus, path,
// MB, seconds, proxy CPU seconds).
func readScaling(dir string) (*scalingData, error) {
	d := &scalingData{points: map[scaleKey]*scalePoint{}, copies: map[scaleKey]*copyPoint{}}
	err := eachRow(filepath.Join(dir, "scaling.tsv"), func(line int, fl []string) error {
		if len(fl) != 10 {
			return fmt.Errorf("scaling.tsv:%d: want 10 fields: %q", line, strings.Join(fl, "\t"))
		}
		round, e1 := strconv.Atoi(fl[0])
		cpus, e2 := strconv.Atoi(fl[1])
		clients, e3 := strconv.Atoi(fl[3])
		if e1 != nil || e2 != nil || e3 != nil {
			return fmt.Errorf("scaling.tsv:%d: bad round, cpus or clients: %q", line, strings.Join(fl, "\t"))
		}
		var v [6]float64
		var ok [6]bool
		for i := range v {
			var err error
			if v[i], ok[i], err = optFloat(fl[4+i]); err != nil {
				return fmt.Errorf("scaling.tsv:%d: %v", line, err)
			}
		}
		if !ok[0] || !ok[1] {
			return fmt.Errorf("scaling.tsv:%d: no tps or latency: %q", line, strings.Join(fl, "\t"))
		}
		k := scaleKey{cpus, fl[2], clients}
		pt := d.points[k]
		if pt == nil {
			pt = &scalePoint{}
			d.points[k] = pt
		}
		pt.tps = append(pt.tps, v[0])
		pt.lat = append(pt.lat, v[1])
		if ok[2] {
			pt.cpuUS = append(pt.cpuUS, v[2])
			pt.busy = append(pt.busy, v[0]*v[2]/1e6)
		}
		if ok[3] {
			pt.cs = append(pt.cs, v[3])
		}
		d.rounds = max(d.rounds, round)
		if !slices.Contains(d.cpus, cpus) {
			d.cpus = append(d.cpus, cpus)
		}
		if !slices.Contains(d.clients, clients) {
			d.clients = append(d.clients, clients)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(d.points) == 0 {
		return nil, fmt.Errorf("scaling.tsv: no measurements")
	}
	slices.Sort(d.cpus)
	slices.Sort(d.clients)
	err = eachRow(filepath.Join(dir, "scaling-copy.tsv"), func(line int, fl []string) error {
		if len(fl) != 6 {
			return fmt.Errorf("scaling-copy.tsv:%d: want 6 fields: %q", line, strings.Join(fl, "\t"))
		}
		cpus, err := strconv.Atoi(fl[1])
		if err != nil {
			return fmt.Errorf("scaling-copy.tsv:%d: %q", line, strings.Join(fl, "\t"))
		}
		mb, ok1, err1 := optFloat(fl[3])
		secs, ok2, err2 := optFloat(fl[4])
		cpu, ok3, err3 := optFloat(fl[5])
		if err1 != nil || err2 != nil || err3 != nil || !ok1 || !ok2 || secs <= 0 {
			return fmt.Errorf("scaling-copy.tsv:%d: %q", line, strings.Join(fl, "\t"))
		}
		k := scaleKey{cpus, fl[2], 0}
		c := d.copies[k]
		if c == nil {
			c = &copyPoint{}
			d.copies[k] = c
		}
		c.mbps = append(c.mbps, mb/secs)
		if ok3 && cpu > 0 {
			c.mbPerCPUSec = append(c.mbPerCPUSec, mb/cpu)
		}
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	if d.memory, err = readMemory(dir); err != nil {
		return nil, err
	}
	return d, nil
}

// med is the median of a point's figure; ok false when none was measured.
func med(v []float64) (float64, bool) {
	if len(v) == 0 {
		return 0, false
	}
	return summarize(v).median, true
}

func (d *scalingData) pt(cpus int, path string, clients int) *scalePoint {
	if p := d.points[scaleKey{cpus, path, clients}]; p != nil {
		return p
	}
	return &scalePoint{}
}

func (d *scalingData) idleKiB() (memoryRow, bool) {
	for _, m := range d.memory {
		if m.path == "pgtrust-tcp" {
			return m, true
		}
	}
	return memoryRow{}, false
}

// capacity: the per-core figures of the setting with the most CPUs at its
// highest client count, and the 16-core, 1000-client estimate from them.
type capacity struct {
	cpus, clients       int
	cpuUS, txnPerCore   float64
	busy, sessPerCore   float64
	tps                 float64
	mbPerCore           float64
	haveMB, haveBusy    bool
	bouncerCPUUS        float64
	haveBouncer         bool
	lowCPUs             int
	lowCPUUS, degrade   float64
	haveDegrade         bool
	c1US                float64 // pgtrust CPU per transaction at the fewest clients
	fewClients          int
	optimistic, pessim  float64 // txn/s on 16 cores
	idle                memoryRow
	haveIdle            bool
	gomaxprocs, procsMd string
}

const (
	hostCores   = 16
	hostClients = 1000
)

func (d *scalingData) capacity(meta map[string]string) (capacity, bool) {
	var c capacity
	c.cpus = d.cpus[len(d.cpus)-1]
	c.clients = d.clients[len(d.clients)-1]
	pt := d.pt(c.cpus, "pgtrust-tcp", c.clients)
	var ok bool
	if c.cpuUS, ok = med(pt.cpuUS); !ok || c.cpuUS <= 0 {
		return c, false
	}
	c.txnPerCore = 1e6 / c.cpuUS
	c.tps, _ = med(pt.tps)
	if c.busy, c.haveBusy = med(pt.busy); c.haveBusy && c.busy > 0 {
		c.sessPerCore = float64(c.clients) / c.busy
	} else {
		c.haveBusy = false
	}
	if cp := d.copies[scaleKey{c.cpus, "pgtrust-tcp", 0}]; cp != nil {
		c.mbPerCore, c.haveMB = med(cp.mbPerCPUSec)
	}
	c.bouncerCPUUS, c.haveBouncer = med(d.pt(c.cpus, "pgbouncer-session", c.clients).cpuUS)
	c.fewClients = d.clients[0]
	c.c1US, _ = med(d.pt(c.cpus, "pgtrust-tcp", c.fewClients).cpuUS)
	c.optimistic = hostCores * c.txnPerCore
	c.pessim = c.optimistic
	if len(d.cpus) > 1 && d.cpus[0] < c.cpus {
		c.lowCPUs = d.cpus[0]
		if v, ok := med(d.pt(c.lowCPUs, "pgtrust-tcp", c.clients).cpuUS); ok && v > 0 {
			c.lowCPUUS, c.haveDegrade = v, true
			c.degrade = c.cpuUS / v
			if c.degrade > 1 {
				// The same growth of CPU per transaction for each further
				// doubling of the cores, up to 16.
				doublings := math.Log2(float64(hostCores)/float64(c.cpus)) / math.Log2(float64(c.cpus)/float64(c.lowCPUs))
				c.pessim = hostCores * 1e6 / (c.cpuUS * math.Pow(c.degrade, doublings))
			}
		}
	}
	c.idle, c.haveIdle = d.idleKiB()
	c.gomaxprocs = meta[fmt.Sprintf("_gomaxprocs.%d", c.cpus)]
	c.procsMd = meta["_procs_mode"]
	return c, true
}

func scaling(args []string) error {
	fs := flag.NewFlagSet("scaling", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory with scaling.tsv, scaling-copy.tsv, memory.tsv, meta.tsv, commands.txt")
	out := fs.String("out", "", "markdown file to write (docs/scaling.md)")
	capOut := fs.String("capacity", "", "markdown file for the capacity section of docs/proxy.md")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" || *out == "" || *capOut == "" {
		return fmt.Errorf("-dir, -out and -capacity are required")
	}
	d, err := readScaling(*dir)
	if err != nil {
		return err
	}
	meta, order, err := readMeta(*dir)
	if err != nil {
		return err
	}
	var b strings.Builder
	writeScaling(&b, d, meta, order, *dir)
	if err := os.WriteFile(*out, []byte(b.String()), 0o644); err != nil {
		return err
	}
	var cb strings.Builder
	writeCapacity(&cb, d, meta)
	return os.WriteFile(*capOut, []byte(cb.String()), 0o644)
}

// plural: "1 CPU", "2 CPUs".
func plural(n int, word string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, word)
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// span: "A–B" of two estimates, one figure when they agree.
func span(a, b float64) string {
	if fmt.Sprintf("%.0f", a) == fmt.Sprintf("%.0f", b) {
		return fmt.Sprintf("%.0f", a)
	}
	return fmt.Sprintf("%.0f–%.0f", a, b)
}

func pinText(cpus int) string {
	if cpus == 1 {
		return "taskset -c 0"
	}
	return fmt.Sprintf("taskset -c 0-%d", cpus-1)
}

func writeScaling(b *strings.Builder, d *scalingData, meta map[string]string, order []string, dir string) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	p("# Scaling\n\n")
	p("<!-- Generated by bench/run --scaling on %s. Do not edit: rerun `bench/run --scaling` instead. -->\n\n", meta["date"])
	p("How pgtrust proxy's throughput, latency and CPU per transaction change with the CPUs it may run on and with " +
		"the number of clients, next to PgBouncer (session mode) and direct TLS, measured in one run of " +
		"`bench/run --scaling` on the machine below. **Only the proxy process is pinned** (`taskset` on pgtrust proxy " +
		"and on PgBouncer, checked in `/proc/PID/status`); PostgreSQL and pgbench run on every CPU of the machine, so " +
		"a pinned proxy still shares its CPUs with them. ")
	switch meta["_procs_mode"] {
	case "pinned":
		p("pgtrust proxy ran with `GOMAXPROCS` set to the number of CPUs it was pinned to, as for a proxy given " +
			"cores of its own (without the variable it takes half of them).")
	default:
		p("pgtrust proxy ran with its default `GOMAXPROCS` (half the CPUs it may run on, at least 1).")
	}
	p(" Workload: `pgbench -S` (one indexed SELECT per transaction) for a fixed time per point; %d round(s), "+
		"figures are medians. *CPU µs/txn* is the proxy's utime + stime from `/proc/PID/stat` over the run (setting up the "+
		"clients' connections included) divided by the transactions pgbench counted; *CPUs busy* is that times the tps; "+
		"*cs/txn*, the context switches of its threads per transaction (`/proc/PID/task/*/status`). The main comparison "+
		"with every path is in [benchmarks.md](benchmarks.md).\n\n", d.rounds)
	writeMachine(b, meta, order)

	p("## pgbench -S by clients\n\n")
	for _, cpus := range d.cpus {
		g := meta[fmt.Sprintf("_gomaxprocs.%d", cpus)]
		p("### Proxies pinned to %s (`%s`", plural(cpus, "CPU"), pinText(cpus))
		if g != "" {
			p(", pgtrust GOMAXPROCS %s", g)
		}
		p(")\n\n")
		p("| clients | direct TLS tps | latency (ms) | pgtrust tps | latency (ms) | CPU µs/txn | CPUs busy | cs/txn | PgBouncer tps | latency (ms) | CPU µs/txn | CPUs busy | cs/txn |\n")
		p("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, c := range d.clients {
			p("| %d |", c)
			for _, path := range scalingPaths {
				pt := d.pt(cpus, path, c)
				p(" %s | %s |", optFmt(pt.tps, "%.0f"), optFmt(pt.lat, "%.3f"))
				if path != "direct-tls" {
					p(" %s | %s | %s |", optFmt(pt.cpuUS, "%.1f"), optFmt(pt.busy, "%.2f"), optFmt(pt.cs, "%.1f"))
				}
			}
			p("\n")
		}
		p("\n")
	}

	if len(d.copies) > 0 {
		p("## COPY TO STDOUT\n\n")
		p("One `COPY (SELECT repeat('x', 1023) …) TO STDOUT` through each path; MB = 10⁶ bytes. *MB per proxy CPU-second* " +
			"is the data the proxy moved per second of its own CPU: its throughput per core when the proxy is the limit.\n\n")
		p("| CPUs | path | MB/s | MB per proxy CPU-second |\n|---|---|---|---|\n")
		for _, cpus := range d.cpus {
			for _, path := range scalingPaths {
				if cp := d.copies[scaleKey{cpus, path, 0}]; cp != nil {
					p("| %d | %s | %s | %s |\n", cpus, pathName(path), optFmt(cp.mbps, "%.0f"), optFmt(cp.mbPerCPUSec, "%.0f"))
				}
			}
		}
		p("\n")
	}
	if m, ok := d.idleKiB(); ok {
		p("## Idle sessions\n\n%d idle sessions through pgtrust proxy (each ran `SELECT 1` once) grew its RSS from %.0f to %.0f KiB: "+
			"**%.1f KiB per session**.\n\n", m.conns, m.beforeKiB, m.afterKB, m.perConnKiB())
	}

	p("## What the measurements say\n\n")
	for _, s := range scalingFindings(d) {
		p("- %s\n", s)
	}
	p("\n")
	if c, ok := d.capacity(meta); ok {
		p("## Estimate: a 16-core host serving 1,000 clients\n\n")
		for _, s := range estimateText(c, d) {
			p("%s\n\n", s)
		}
	} else {
		p("## Estimate: a 16-core host serving 1,000 clients\n\nNot possible from this run: pgtrust's CPU per transaction was not measured.\n\n")
	}
	p("## Exact commands\n\n```\n%s\n```\n", readOptional(dir, "commands.txt"))
}

func optFmt(v []float64, f string) string {
	m, ok := med(v)
	if !ok {
		return "–"
	}
	return fmt.Sprintf(f, m)
}

// scalingFindings: how tps, latency and CPU per transaction moved with
// clients and with CPUs, in this run's figures.
func scalingFindings(d *scalingData) []string {
	var out []string
	lo, hi := d.clients[0], d.clients[len(d.clients)-1]
	for _, cpus := range d.cpus {
		for _, path := range []string{"pgtrust-tcp", "pgbouncer-session"} {
			a, b := d.pt(cpus, path, lo), d.pt(cpus, path, hi)
			ca, ok1 := med(a.cpuUS)
			cb, ok2 := med(b.cpuUS)
			ta, ok3 := med(a.tps)
			tb, ok4 := med(b.tps)
			if !ok1 || !ok2 || !ok3 || !ok4 || lo == hi {
				continue
			}
			peak, peakC := 0.0, 0
			for _, c := range d.clients {
				if t, ok := med(d.pt(cpus, path, c).tps); ok && t > peak {
					peak, peakC = t, c
				}
			}
			out = append(out, fmt.Sprintf("%s on %s, %d → %d clients: CPU per transaction %.1f → %.1f µs (%+.0f%%), "+
				"throughput %.0f → %.0f tps, the most at %s (%.0f tps).",
				pathName(path), plural(cpus, "CPU"), lo, hi, ca, cb, 100*(cb/ca-1), ta, tb, plural(peakC, "client"), peak))
		}
	}
	if len(d.cpus) > 1 {
		c0, c1 := d.cpus[0], d.cpus[len(d.cpus)-1]
		for _, path := range []string{"pgtrust-tcp", "pgbouncer-session"} {
			var parts []string
			for _, c := range []int{lo, hi} {
				a, b := d.pt(c0, path, c), d.pt(c1, path, c)
				ta, ok1 := med(a.tps)
				tb, ok2 := med(b.tps)
				ca, ok3 := med(a.cpuUS)
				cb, ok4 := med(b.cpuUS)
				if ok1 && ok2 && ok3 && ok4 && ta > 0 && ca > 0 {
					parts = append(parts, fmt.Sprintf("at %s throughput %+.0f%% and CPU per transaction %+.0f%%",
						plural(c, "client"), 100*(tb/ta-1), 100*(cb/ca-1)))
				}
				if lo == hi {
					break
				}
			}
			if len(parts) > 0 {
				out = append(out, fmt.Sprintf("%s on %d CPUs instead of %d: %s.", pathName(path), c1, c0, strings.Join(parts, "; ")))
			}
		}
	}
	for _, cpus := range d.cpus {
		a, ok1 := med(d.pt(cpus, "pgtrust-tcp", hi).cpuUS)
		b, ok2 := med(d.pt(cpus, "pgbouncer-session", hi).cpuUS)
		if ok1 && ok2 && b > 0 {
			out = append(out, fmt.Sprintf("At %s on %s, pgtrust used %.2f× PgBouncer session's CPU per transaction.",
				plural(hi, "client"), plural(cpus, "CPU"), a/b))
		}
	}
	if len(out) == 0 {
		out = append(out, "Too few points in this run to say.")
	}
	return out
}

func estimateText(c capacity, d *scalingData) []string {
	var out []string
	out = append(out, fmt.Sprintf("From the %d-CPU setting at %d clients: pgtrust proxy spent **%.1f µs of CPU per transaction**, "+
		"so one core relays about **%.0f such transactions per second**.", c.cpus, c.clients, c.cpuUS, c.txnPerCore))
	if c.haveBusy {
		out[0] += fmt.Sprintf(" Its %d sessions ran at %.0f tps in all (%.0f tps each) and kept %.2f CPUs busy: "+
			"**%.0f such busy sessions per core**.", c.clients, c.tps, c.tps/float64(c.clients), c.busy, c.sessPerCore)
	}
	if c.haveMB {
		out = append(out, fmt.Sprintf("Bulk results (COPY TO STDOUT) on the same setting: **%.0f MB per proxy CPU-second**.", c.mbPerCore))
	}
	assume := []string{
		fmt.Sprintf("CPU per transaction stays at the %d-client figure up to %d clients (from %d to %d clients it went from %.1f to %.1f µs)",
			c.clients, hostClients, c.fewClients, c.clients, c.c1US, c.cpuUS),
		"the transactions are like pgbench -S: one short query and a small answer each",
		"the proxy has the host's cores to itself: here it shared them with PostgreSQL and pgbench",
	}
	if c.procsMd == "pinned" {
		assume = append(assume, fmt.Sprintf("GOMAXPROCS %d (set it: by default pgtrust proxy takes half the CPUs, %d)", hostCores, hostCores/2))
	}
	est := fmt.Sprintf("**Estimate, not a measurement.** On %d cores, ", hostCores)
	switch {
	case c.haveDegrade && c.degrade > 1:
		est += fmt.Sprintf("if CPU per transaction stayed at its %d-CPU figure, the proxy would relay up to %.0f transactions per second; "+
			"from %d to %d CPUs it grew %.0f%% (%.1f → %.1f µs), and if it grew as much with every further doubling of the "+
			"cores, up to %.0f. ", c.cpus, c.optimistic, c.lowCPUs, c.cpus, 100*(c.degrade-1), c.lowCPUUS, c.cpuUS, c.pessim)
	case c.haveDegrade:
		est += fmt.Sprintf("the proxy would relay up to %.0f transactions per second (from %d to %d CPUs its CPU per transaction did not "+
			"grow: %.1f → %.1f µs, so the estimate scales linearly). ", c.optimistic, c.lowCPUs, c.cpus, c.lowCPUUS, c.cpuUS)
	default:
		est += fmt.Sprintf("the proxy would relay up to %.0f transactions per second if its CPU per transaction stayed at the %d-CPU figure. ",
			c.optimistic, c.cpus)
	}
	est += fmt.Sprintf("Spread over %d clients that is %s transactions per second per client before the proxy, rather than "+
		"the database, is the limit.", hostClients, span(c.pessim/hostClients, c.optimistic/hostClients))
	if c.haveIdle {
		est += fmt.Sprintf(" Their sessions idle would hold about %.0f MiB (%.1f KiB each, measured with %d).",
			hostClients*c.idle.perConnKiB()/1024, c.idle.perConnKiB(), c.idle.conns)
	}
	out = append(out, est)
	out = append(out, "Assumptions: "+strings.Join(assume, "; ")+".")
	if c.haveBouncer && c.bouncerCPUUS > 0 {
		out = append(out, fmt.Sprintf("PgBouncer session spent %.1f µs per transaction in the same setting (%.0f per core per second); "+
			"it runs in one thread, so one PgBouncer process uses one core however many the host has.", c.bouncerCPUUS, 1e6/c.bouncerCPUUS))
	}
	return out
}

// The markers of the generated capacity section in docs/proxy.md.
const (
	capBegin = "<!-- BEGIN capacity: generated by bench/run --scaling; do not edit by hand, rerun it -->"
	capEnd   = "<!-- END capacity -->"
)

func writeCapacity(b *strings.Builder, d *scalingData, meta map[string]string) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	p("%s\n## Capacity\n\n", capBegin)
	p("From `bench/run --scaling` on %s (%s; the figures, the method and their limits are in "+
		"[scaling.md](scaling.md)).", meta["date"], orQ(meta["CPU"]))
	if n := meta["note"]; n != "" {
		p(" **%s**", n)
	}
	p("\n\n")
	c, ok := d.capacity(meta)
	if !ok {
		p("That run measured no CPU per transaction: no guidance from it.\n%s\n", capEnd)
		return
	}
	p("- **CPU**: about %.0f short transactions (`pgbench -S`) per second per proxy core (%.1f µs of CPU each, %d clients, "+
		"proxy on %s).", c.txnPerCore, c.cpuUS, c.clients, plural(c.cpus, "CPU"))
	if c.haveBusy {
		p(" Sessions sending such transactions back to back: about %.0f per core; a session that is mostly idle costs "+
			"CPU only when it sends something, so plan cores by transactions per second, not by sessions.", c.sessPerCore)
	}
	p("\n")
	if c.haveMB {
		p("- **Bulk data**: about %.0f MB/s of query results per proxy core (COPY TO STDOUT).\n", c.mbPerCore)
	}
	if c.haveIdle {
		p("- **Memory**: %.1f KiB per idle session (%d held open).\n", c.idle.perConnKiB(), c.idle.conns)
	}
	p("- **16 cores, 1,000 clients (estimate)**: up to %s such transactions per second through the proxy, "+
		"%s per client; see [scaling.md](scaling.md) for the assumptions.", span(c.pessim, c.optimistic),
		span(c.pessim/hostClients, c.optimistic/hostClients))
	if c.haveIdle {
		p(" Idle, the 1,000 sessions hold about %.0f MiB.", hostClients*c.idle.perConnKiB()/1024)
	}
	p("\n")
	p("- **GOMAXPROCS**: by default the proxy runs on half the CPUs (see [CPU](#cpu)); on cores of its own, set " +
		"`GOMAXPROCS` to their number.\n")
	p("%s\n", capEnd)
}

// splice replaces the capacity section of -file (between capBegin and
// capEnd) with -with's content, or appends it when the file has none.
func splice(args []string) error {
	fs := flag.NewFlagSet("splice", flag.ContinueOnError)
	file := fs.String("file", "", "markdown file to update (docs/proxy.md)")
	with := fs.String("with", "", "the generated section, markers included")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *file == "" || *with == "" {
		return fmt.Errorf("-file and -with are required")
	}
	doc, err := os.ReadFile(*file)
	if err != nil {
		return err
	}
	sec, err := os.ReadFile(*with)
	if err != nil {
		return err
	}
	out, err := spliceText(string(doc), string(sec))
	if err != nil {
		return fmt.Errorf("%s: %w", *file, err)
	}
	return os.WriteFile(*file, []byte(out), 0o644)
}

func spliceText(doc, sec string) (string, error) {
	if !strings.HasPrefix(sec, capBegin) || !strings.HasSuffix(strings.TrimRight(sec, "\n"), capEnd) {
		return "", fmt.Errorf("the section does not start and end with the capacity markers")
	}
	sec = strings.TrimRight(sec, "\n") + "\n"
	i := strings.Index(doc, capBegin)
	if i < 0 {
		if strings.Contains(doc, capEnd) {
			return "", fmt.Errorf("an end marker without a begin marker")
		}
		return strings.TrimRight(doc, "\n") + "\n\n" + sec, nil
	}
	j := strings.Index(doc[i:], capEnd)
	if j < 0 {
		return "", fmt.Errorf("a begin marker without an end marker")
	}
	end := i + j + len(capEnd)
	if end < len(doc) && doc[end] == '\n' {
		end++
	}
	return doc[:i] + sec + doc[end:], nil
}
