package main

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

var pgtrustPaths = []string{"pgtrust-tcp", "pgtrust-unix"}

// proxyPaths are the paths with a proxy process in the middle, whose CPU
// bench/run reads from /proc (cpu.WORKLOAD and cs.WORKLOAD in results.tsv).
var proxyPaths = []string{"pgtrust-tcp", "pgtrust-unix", "pgtrust-pool-session", "pgtrust-pool-txn",
	"pgbouncer-session", "pgbouncer-txn", "stunnel"}

// cpuWorkloads: the workloads whose proxy CPU is measured, and per what.
var cpuWorkloads = []struct{ id, name, per string }{
	{"select1", "pgbench -S, 1 client", "transaction"},
	{"select8", "pgbench -S, 8 clients", "transaction"},
	{"select32", "pgbench -S, 32 clients", "transaction"},
	{"tpcb8", "TPC-B-like, 8 clients", "transaction"},
	{"churn8", "pgbench -C -S, 8 clients", "transaction (each a new connection)"},
	{"copy", "COPY TO STDOUT", "MB"},
}

// The idle-memory target of the unpooled proxy, KiB per session.
const idleTargetKiB = 16

func pathName(id string) string {
	for _, p := range paths {
		if p.id == id {
			return p.name
		}
	}
	return id
}

func workloadName(id string) string {
	for _, w := range workloads {
		if w.id == id {
			return w.name
		}
	}
	return id
}

// run is what the report knows of one bench/run: the results, the meta
// lines and the CPU profiles' shares.
type run struct {
	r    *results
	meta map[string]string
	dir  string
	prof map[string]shares
}

// check of one target on one pgtrust path.
type check func(r *results, p string) (ok bool, known bool, detail string)

// target is one line of the targets, evaluated per pgtrust path;
// cause composes, from this run's measurements, why pgtrust misses it.
type target struct {
	text  string
	check check
	cause func(x *run, p string) []string
}

// overlap says whether two cells' min–max ranges over the rounds overlap.
func overlap(a, b stats) bool { return a.n > 1 && b.n > 1 && a.max >= b.min && b.max >= a.min }

// atLeast: median(w, p) ≥ want × direct TLS.
func atLeast(w string, want float64) check {
	return func(r *results, p string) (bool, bool, string) {
		ratio, ok := r.ratio(w, p)
		if !ok {
			return false, false, "not measured"
		}
		if ratio >= want {
			return true, true, fmt.Sprintf("%.3f× (target %.2f×)", ratio, want)
		}
		return false, true, fmt.Sprintf("%.3f× (target %.2f×): short by %.1f%% of direct TLS", ratio, want, (want-ratio)*100)
	}
}

// atMost: median(w, p) ≤ want × median(w, base) (lower is better: CPU, latency).
func atMost(w, base string, want float64, unit string) check {
	return func(r *results, p string) (bool, bool, string) {
		s, ok := r.get(w, p)
		b, okb := r.get(w, base)
		if !ok || !okb || b.median == 0 {
			return false, false, "not measured"
		}
		rel := s.median / b.median
		d := fmt.Sprintf("%s against %s %s: %.2f× (target ≤ %.2f×)", format(s.median, unit)+" "+unit, pathName(base),
			format(b.median, unit)+" "+unit, rel, want)
		if rel <= want {
			return true, true, d
		}
		if overlap(s, b) {
			d += ", within the spread of the rounds"
		}
		return false, true, d
	}
}

// aheadOf: median(w, p) > median(w, other) for each other.
func aheadOf(w string, others ...string) check {
	return func(r *results, p string) (bool, bool, string) {
		s, ok := r.get(w, p)
		if !ok {
			return false, false, "not measured"
		}
		all := true
		var parts []string
		for _, o := range others {
			os, ok := r.get(w, o)
			if !ok {
				parts = append(parts, pathName(o)+" not measured")
				all = false
				continue
			}
			rel := s.median / os.median
			if rel <= 1 {
				all = false
				d := fmt.Sprintf("%.3f× %s (behind by %.1f%%", rel, pathName(o), (1-rel)*100)
				if overlap(s, os) {
					d += ", within the spread of the rounds"
				}
				parts = append(parts, d+")")
			} else {
				parts = append(parts, fmt.Sprintf("%.3f× %s", rel, pathName(o)))
			}
		}
		return all, true, strings.Join(parts, ", ")
	}
}

func both(a, b check) check {
	return func(r *results, p string) (bool, bool, string) {
		oa, ka, da := a(r, p)
		ob, kb, db := b(r, p)
		return oa && ob, ka && kb, da + "; " + db
	}
}

func memoryTarget(r *results, p string) (bool, bool, string) {
	suffix := ""
	if p == "pgtrust-unix" {
		// One process serves both listeners with the same session code.
		p, suffix = "pgtrust-tcp", " (measured over TCP; same session code)"
	}
	for _, m := range r.memory {
		if m.path == p {
			v := m.perConnKiB()
			if v <= idleTargetKiB {
				return true, true, fmt.Sprintf("%.1f KiB per session (%d sessions)%s", v, m.conns, suffix)
			}
			return false, true, fmt.Sprintf("%.1f KiB per session (%d sessions): %.1f KiB over%s", v, m.conns, v-idleTargetKiB, suffix)
		}
	}
	return false, false, "not measured"
}

const bouncerSession = "pgbouncer-session"

var targets = []target{
	{"pgbench -S, 1 client: ahead of PgBouncer session and stunnel",
		aheadOf("select1", bouncerSession, "stunnel"), pipeCause("select1", "select1")},
	{"pgbench -S, 8 clients: ≥ 0.85× direct TLS, and ahead of PgBouncer session and stunnel",
		both(atLeast("select8", 0.85), aheadOf("select8", bouncerSession, "stunnel")), pipeCause("select8", "select8")},
	{"pgbench -S, 32 clients: ahead of PgBouncer session and stunnel",
		aheadOf("select32", bouncerSession, "stunnel"), pipeCause("select32", "select8")},
	{"TPC-B-like, 8 clients: ahead of PgBouncer session and stunnel",
		aheadOf("tpcb8", bouncerSession, "stunnel"), pipeCause("tpcb8", "select8")},
	{"Proxy CPU per transaction, pgbench -S 1 client: ≤ 1.0× PgBouncer session",
		atMost("cpu.select1", bouncerSession, 1, "µs"), pipeCause("select1", "select1")},
	{"Proxy CPU per transaction, pgbench -S 8 clients: ≤ 1.0× PgBouncer session",
		atMost("cpu.select8", bouncerSession, 1, "µs"), pipeCause("select8", "select8")},
	{"COPY TO STDOUT: ≥ 0.95× direct TLS throughput", atLeast("copy", 0.95), copyCause},
	{"Average latency, pgbench -S 1 client: ≤ 1.3× direct TLS", atMost("avg", "direct-tls", 1.3, "ms"), latencyCause},
	{"Connection churn (pgbench -C -S, 8 clients): ≥ 0.9× direct TLS", atLeast("churn8", 0.9), churnCause},
	{fmt.Sprintf("≤ %d KiB RSS per idle session", idleTargetKiB), memoryTarget, memoryCause},
}

// --- the measured facts the causes are composed of ------------------------------

func (x *run) med(id, p string) (float64, bool) {
	s, ok := x.r.get(id, p)
	return s.median, ok
}

// cpuFacts: "Proxy CPU (utime+stime) per transaction on W, medians:
// pgtrust TCP 41.0 µs, PgBouncer session 24.0 µs, stunnel 38.0 µs. pgtrust
// used 1.71× PgBouncer session's CPU per transaction. At its median ..."
// as one block, so that a later target's causes repeat it whole or not at all.
func cpuFacts(x *run, w, p string, others ...string) []string {
	c, ok := x.med("cpu."+w, p)
	if !ok {
		return []string{fmt.Sprintf("The proxy's CPU on %s was not measured in this run.", workloadName(w))}
	}
	per := "transaction"
	if w == "copy" {
		per = "MB"
	}
	parts := []string{fmt.Sprintf("%s %.1f µs", pathName(p), c)}
	for _, o := range others {
		if v, ok := x.med("cpu."+w, o); ok {
			parts = append(parts, fmt.Sprintf("%s %.1f µs", pathName(o), v))
		}
	}
	out := []string{fmt.Sprintf("Proxy CPU (utime+stime) per %s on %s, medians: %s.", per, workloadName(w), strings.Join(parts, ", "))}
	if len(others) > 0 {
		if b, ok := x.med("cpu."+w, others[0]); ok && b > 0 {
			if rel := c / b; rel > 1 {
				out = append(out, fmt.Sprintf("pgtrust used %.2f× %s's CPU per %s.", rel, pathName(others[0]), per))
			} else {
				out = append(out, fmt.Sprintf("pgtrust used no more CPU per %s than %s (%.2f×), so CPU time alone does not explain the gap.",
					per, pathName(others[0]), rel))
			}
		}
	}
	if tps, ok := x.med(w, p); ok && w != "copy" {
		g := x.meta["_gomaxprocs"]
		if strings.HasPrefix(p, "pgtrust-pool") || g == "" {
			out = append(out, fmt.Sprintf("At its median %s tps that is %.2f CPUs busy in the proxy.", format(tps, "tps"), tps*c/1e6))
		} else {
			out = append(out, fmt.Sprintf("At its median %s tps that is %.2f CPUs busy in the proxy, which ran with GOMAXPROCS %s on %s CPUs shared with PostgreSQL and pgbench.",
				format(tps, "tps"), tps*c/1e6, g, x.meta["_cpus"]))
		}
	}
	return []string{strings.Join(out, " ")}
}

// csFacts: context switches per transaction of p and the others that have them.
func csFacts(x *run, w, p string, others ...string) []string {
	c, ok := x.med("cs."+w, p)
	if !ok {
		return nil
	}
	parts := []string{fmt.Sprintf("%s %.1f", pathName(p), c)}
	for _, o := range others {
		if v, ok := x.med("cs."+w, o); ok {
			parts = append(parts, fmt.Sprintf("%s %.1f", pathName(o), v))
		}
	}
	return []string{fmt.Sprintf("Context switches of the proxy's threads per transaction on %s: %s.", workloadName(w), strings.Join(parts, ", "))}
}

// profileFacts: where the CPU of the LABEL profile went.
func profileFacts(x *run, label string) []string {
	s, ok := x.prof[label]
	if !ok {
		return nil
	}
	g := x.meta["_benchproxy_gomaxprocs"]
	if g == "" {
		g = "?"
	}
	return []string{fmt.Sprintf("In this run's %s CPU profile (bench/benchproxy, GOMAXPROCS %s, %d ms sampled): %s.",
		label, g, s.total.Milliseconds(), sharesText(s))}
}

// pipeCause: a pgbench workload w through the unpooled proxy; profile is
// the CPU profile that shows the same kind of traffic.
func pipeCause(w, profile string) func(*run, string) []string {
	return func(x *run, p string) []string {
		out := cpuFacts(x, w, p, bouncerSession, "stunnel")
		out = append(out, csFacts(x, w, p, bouncerSession)...)
		return append(out, profileFacts(x, profile)...)
	}
}

func latencyCause(x *run, p string) []string {
	var out []string
	l, ok1 := x.med("avg", p)
	d, ok2 := x.med("avg", "direct-tls")
	if ok1 && ok2 {
		s := fmt.Sprintf("Average latency at 1 client: %s %.3f ms, direct TLS %.3f ms", pathName(p), l, d)
		if b, ok := x.med("avg", bouncerSession); ok {
			s += fmt.Sprintf(", PgBouncer session %.3f ms: the pgtrust hop adds %.0f µs per transaction", b, (l-d)*1000)
			if b >= d {
				s += fmt.Sprintf(", PgBouncer's %.0f µs", (b-d)*1000)
			} else {
				s += fmt.Sprintf(", while PgBouncer session was %.0f µs faster than direct TLS", (d-b)*1000)
			}
		} else {
			s += fmt.Sprintf(": the pgtrust hop adds %.0f µs per transaction", (l-d)*1000)
		}
		out = append(out, s+".")
		if c, ok := x.med("cpu.select1", p); ok && l > d {
			add := (l - d) * 1000
			if c < add {
				out = append(out, fmt.Sprintf("Of those %.0f µs, %.1f µs are the proxy's CPU time per transaction; the other %.0f µs are spent outside the proxy's CPU (waiting for wake-ups, the second loopback hop).",
					add, c, add-c))
			} else {
				out = append(out, fmt.Sprintf("The proxy's CPU time per transaction (%.1f µs) covers all of those %.0f µs.", c, add))
			}
		}
	}
	out = append(out, csFacts(x, "select1", p, bouncerSession)...)
	return append(out, profileFacts(x, "select1")...)
}

func copyCause(x *run, p string) []string {
	var out []string
	mbps, ok1 := x.med("copy", p)
	c, ok2 := x.med("cpu.copy", p)
	if ok1 && ok2 && c > 0 {
		s := fmt.Sprintf("COPY through %s ran at %s MB/s using %.0f µs of proxy CPU per MB: %.0f MB/s per proxy CPU", pathName(p),
			format(mbps, "MB/s"), c, 1e6/c)
		var others []string
		for _, o := range []string{"stunnel", bouncerSession} {
			if v, ok := x.med("cpu.copy", o); ok && v > 0 {
				others = append(others, fmt.Sprintf("%s %.0f", pathName(o), 1e6/v))
			}
		}
		if len(others) > 0 {
			s += " (" + strings.Join(others, ", ") + ")"
		}
		s += fmt.Sprintf(". During the copy the proxy kept %.2f CPUs busy", mbps*c/1e6)
		if g := x.meta["_gomaxprocs"]; g != "" {
			s += fmt.Sprintf(", with GOMAXPROCS %s on %s CPUs shared with the backend producing the rows and psql reading them", g, x.meta["_cpus"])
		}
		out = append(out, s+".")
	} else {
		out = append(out, "The proxy's CPU during the copy was not measured in this run.")
	}
	return append(out, profileFacts(x, "copy")...)
}

func churnCause(x *run, p string) []string {
	out := []string{"Each transaction of pgbench -C opens a new connection: the proxy accepts it and opens a TLS connection to PostgreSQL (a full handshake), as stunnel does."}
	out = append(out, cpuFacts(x, "churn8", p, "stunnel")...)
	return append(out, profileFacts(x, "churn8")...)
}

// heapFacts reads the first line of FILE ("N idle WORD: goroutines=G
// parked=P heap_inuse_kib=H stack_inuse_kib=S ... rss_kib=R"), as bench/run
// writes it from benchproxy's memstats line.
func heapFacts(dir, file string) (int, map[string]float64, bool) {
	line, _, _ := strings.Cut(readOptional(dir, file), "\n")
	head, kv, ok := strings.Cut(line, ": ")
	f := strings.Fields(head)
	if !ok || len(f) < 2 || f[1] != "idle" {
		return 0, nil, false
	}
	n, err := strconv.Atoi(f[0])
	if err != nil || n <= 0 {
		return 0, nil, false
	}
	v := map[string]float64{}
	for _, f := range strings.Fields(kv) {
		k, x, _ := strings.Cut(f, "=")
		v[k], _ = strconv.ParseFloat(x, 64)
	}
	return n, v, true
}

func memoryCause(x *run, p string) []string {
	var out []string
	var others []string
	for _, m := range x.r.memory {
		switch m.path {
		case "pgtrust-tcp":
			out = append(out, fmt.Sprintf("%d idle sessions grew pgtrust proxy's RSS from %.0f to %.0f KiB: %.1f KiB each.",
				m.conns, m.beforeKiB, m.afterKB, m.perConnKiB()))
		case bouncerSession, "stunnel":
			others = append(others, fmt.Sprintf("%s %.1f KiB", pathName(m.path), m.perConnKiB()))
		}
	}
	if len(others) > 0 {
		out = append(out, "Per idle connection in the same measurement: "+strings.Join(others, ", ")+".")
	}
	if n, v, ok := heapFacts(x.dir, "profile-idle-heap.txt"); ok {
		perSess := (v["heap_inuse_kib"] + v["stack_inuse_kib"]) / float64(n)
		s := fmt.Sprintf("With %d idle sessions open in bench/benchproxy (profile idle-heap below): %.0f goroutines (%.1f per session), stacks in use %.0f KiB (%.1f KiB per session), heap in use %.0f KiB including the process's own (at most %.1f KiB per session)",
			n, v["goroutines"], v["goroutines"]/float64(n), v["stack_inuse_kib"], v["stack_inuse_kib"]/float64(n),
			v["heap_inuse_kib"], v["heap_inuse_kib"]/float64(n))
		s += fmt.Sprintf(": heap and stacks in use together at most %.1f KiB per session", perSess)
		if rss := v["rss_kib"]; rss > 0 {
			s += fmt.Sprintf("; the process's RSS then %.0f KiB", rss)
		}
		out = append(out, s+".")
	}
	if len(out) == 0 {
		out = append(out, "Not measured in this run.")
	}
	return out
}

func writeDoc(b *strings.Builder, r *results, meta map[string]string, metaOrder []string, dir, png string) {
	x := &run{r: r, meta: meta, dir: dir, prof: readShares(dir)}
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	p("# Benchmarks\n\n")
	p("<!-- Generated by bench/run on %s. Do not edit: rerun `bench/run` instead. -->\n\n", meta["date"])
	p("pgtrust's proxy measured side by side with what users would otherwise run, on one machine, in one run "+
		"of `bench/run`. Paths were interleaved (every workload runs on every path in turn, round after round) "+
		"so that drift hits all of them equally. Each figure is the **median of %d round(s)**, its ratio to "+
		"**direct TLS** (the baseline), and the min–max spread. How the proxy scales with CPUs and clients, "+
		"and the capacity per core it implies, is in [scaling.md](scaling.md) (`bench/run --scaling`).\n\n", r.rounds)
	writeMachine(b, meta, metaOrder)

	p("## Paths\n\n")
	p("| path | what |\n|---|---|\n")
	p("| direct TLS | pgbench → PostgreSQL, `sslmode=verify-full`, client certificate (the baseline) |\n")
	p("| direct plaintext | pgbench → PostgreSQL, `sslmode=disable` (the ceiling no proxy can pass) |\n")
	p("| pgtrust TCP | pgbench → pgtrust on 127.0.0.1 (plaintext) → verify-full TLS 1.3 → PostgreSQL |\n")
	p("| pgtrust Unix | pgbench → pgtrust's Unix socket → verify-full TLS 1.3 → PostgreSQL |\n")
	p("| pgtrust pool session | pgbench → pgtrust on 127.0.0.1, `[upstreams.NAME.auth]` (pgtrust opens the server connections as `postgres` with its client certificate) and `[upstreams.NAME.pool] mode = \"session\"` → verify-full TLS 1.3 → PostgreSQL |\n")
	p("| pgtrust pool transaction | the same with `mode = \"transaction\"`: a server connection per transaction |\n")
	p("| PgBouncer session | pgbench → PgBouncer (`pool_mode = session`) → `server_tls_sslmode=verify-full` → PostgreSQL |\n")
	p("| PgBouncer transaction | pgbench → PgBouncer (`pool_mode = transaction`) → `server_tls_sslmode=verify-full` → PostgreSQL |\n")
	p("| stunnel | pgbench → stunnel (client mode, `protocol = pgsql`, `verifyChain = yes`, `checkHost`) → PostgreSQL |\n\n")

	p("## Results\n\n")
	p("Cells: **median** (ratio to direct TLS) and min–max. Throughput: higher is better; latency: lower is better " +
		"(its ratio below 1 is better than direct TLS).\n\n")
	p("| workload |")
	for _, ph := range paths {
		p(" %s |", ph.name)
	}
	p("\n|---|")
	for range paths {
		p("---|")
	}
	p("\n")
	for _, w := range workloads {
		p("| %s (%s) |", w.name, w.unit)
		for _, ph := range paths {
			s, ok := r.get(w.id, ph.id)
			if !ok {
				p(" – |")
				continue
			}
			ratio, _ := r.ratio(w.id, ph.id)
			p(" **%s** (%.2f×)<br>%s–%s |", format(s.median, w.unit), ratio, format(s.min, w.unit), format(s.max, w.unit))
		}
		p("\n")
	}
	p("\n![Medians as ratio to direct TLS](%s)\n\n", png)

	writeCPU(b, x)

	if len(r.memory) > 0 {
		p("### Memory per idle connection\n\n")
		p("RSS (VmRSS) of the process in the middle, before and after opening idle, authenticated connections " +
			"through it (each ran `SELECT 1` once), divided by their number. PostgreSQL's `max_connections` is raised " +
			"(see the commands below) so that it accepts them all.\n\n")
		p("The transaction pools hold more idle clients than PostgreSQL's `max_connections`; *server connections* " +
			"is how many client backends PostgreSQL gained while they were open (bench/run fails if it exceeds the pool size). " +
			"The pooled proxy's figure includes its server connections' TLS state, spread over the clients.\n\n")
		p("| path | connections | server connections | RSS before (KiB) | RSS after (KiB) | per connection (KiB) |\n|---|---|---|---|---|---|\n")
		for _, m := range r.memory {
			srv := "–"
			if m.servers >= 0 {
				srv = fmt.Sprint(m.servers)
			}
			p("| %s | %d | %s | %.0f | %.0f | **%.1f** |\n", pathName(m.path), m.conns, srv, m.beforeKiB, m.afterKB, m.perConnKiB())
		}
		p("\n")
	}

	p("## Targets\n\n")
	p("| target | pgtrust TCP | pgtrust Unix |\n|---|---|---|\n")
	type miss struct {
		t      target
		missed []string
	}
	var missed []miss
	for _, t := range targets {
		p("| %s |", t.text)
		var m []string
		for _, pp := range pgtrustPaths {
			ok, known, detail := t.check(r, pp)
			if known && !ok {
				m = append(m, pp)
			}
			p(" %s: %s |", verdict(ok, known), detail)
		}
		p("\n")
		if len(m) > 0 {
			missed = append(missed, miss{t, m})
		}
	}
	p("\n")
	writePooling(b, x)
	if len(missed) > 0 {
		p("### Why the missed targets are missed\n\n")
		p("Composed from this run's own measurements (the tables above, the proxy CPU read from /proc, and the CPU " +
			"profiles below); a fact already given for an earlier target is not repeated.\n\n")
		said := map[string]bool{}
		for _, m := range missed {
			names := make([]string, len(m.missed))
			for i, pp := range m.missed {
				names[i] = pathName(pp)
			}
			var fresh []string
			for _, s := range m.t.cause(x, m.missed[0]) {
				if !said[s] {
					said[s] = true
					fresh = append(fresh, s)
				}
			}
			if len(fresh) == 0 {
				fresh = []string{"see the facts above."}
			}
			p("- *%s* (missed by %s): %s\n", m.t.text, strings.Join(names, " and "), strings.Join(fresh, " "))
		}
		p("\nThe causes traced beyond these figures, and the next steps, are in [proxy.md](proxy.md#data-path).\n\n")
	}

	writeVariation(b, x)

	if prof := profiles(dir); prof != "" {
		p("## Profiles\n\n")
		p("CPU profiles of the proxy (the same package, run by `bench/benchproxy` with runtime/pprof and, like " +
			"`pgtrust proxy`, GOMAXPROCS half the CPUs unless set) while the workload ran through its TCP listener. " +
			"`pool-txn-*`: the transaction-mode pool (`--pool-mode transaction`, the same pool size). " +
			"`idle-heap` and `pool-txn-idle-heap`: the heap in use with the idle sessions (unpooled) or idle pooled " +
			"clients of the memory measurement open, and the runtime's goroutine count, heap and stacks in use at that moment.\n\n")
		writeShares(b, x)
		p("`go tool pprof -top` entries, flat and cumulative:\n\n")
		p("%s\n", prof)
	}
	mb := readOptional(dir, "microbench.txt")
	if mb == "" {
		p("## Go micro-benchmarks\n\nNot run in this run (`BENCH_MICRO=0`).\n\n")
	}
	if mb != "" {
		p("## Go micro-benchmarks\n\n")
		p("- `BenchmarkPipeEcho`: one message through the proxy and back (plaintext client → proxy → TLS 1.3 → " +
			"in-process upstream that echoes). allocs/op count the whole process, the fake upstream and the client included.\n")
		p("- `BenchmarkPipeStream`: a continuous upstream stream (a large result) read through the proxy, 64 KiB per op.\n")
		p("- `BenchmarkIdleSession`: opens one idle, authenticated session per op and keeps them; heap and stack " +
			"per session include the in-process fake upstream's side.\n")
		p("- `BenchmarkDialTLS13ECDSA`: pgtls.Dial with verify-full against an in-process TLS 1.3 ECDSA P-256 " +
			"server (whose handshake runs in the same process and is included), with and without a client certificate.\n")
		p("- `BenchmarkSourceRead`: the client certificate and CA pool a new connection reads from a certs.FileSource, " +
			"idle and while another goroutine reloads and swaps the material back to back.\n\n")
		p("```\n%s\n```\n\n", mb)
	}
	p("## Exact commands\n\n")
	p("Reproduce with `bench/run` (as root on Debian 12: it installs what is missing). " +
		"Environment knobs: `BENCH_ROUNDS`, `BENCH_DURATION` (seconds per pgbench run), `BENCH_COPY_MB`, `BENCH_IDLE_CONNS`, " +
		"`BENCH_POOL_IDLE_CONNS`, `BENCH_POOL_SIZE`, `BENCH_MICRO=0` (no Go micro-benchmarks).\n\n")
	p("```\n%s\n```\n", readOptional(dir, "commands.txt"))
}

// writeCPU renders the proxy CPU and context switches per transaction.
// writeMachine writes the run's note, if any, and the Machine table of
// meta.tsv in the order bench/run wrote it.
func writeMachine(b *strings.Builder, meta map[string]string, order []string) {
	if n := meta["note"]; n != "" {
		fmt.Fprintf(b, "> %s\n\n", n)
	}
	b.WriteString("## Machine\n\n| | |\n|---|---|\n")
	for _, k := range order {
		if k == "date" || k == "note" || strings.HasPrefix(k, "_") {
			continue
		}
		fmt.Fprintf(b, "| %s | %s |\n", k, strings.ReplaceAll(meta[k], "|", "\\|"))
	}
	b.WriteString("\n")
}

func writeCPU(b *strings.Builder, x *run) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	measured := false
	for _, w := range cpuWorkloads {
		for _, pp := range proxyPaths {
			if _, ok := x.r.get("cpu."+w.id, pp); ok {
				measured = true
			}
		}
	}
	if !measured {
		return
	}
	p("### Proxy CPU per transaction\n\n")
	p("CPU time (utime + stime, all threads) of the process in the middle, read from `/proc/PID/stat` before and after " +
		"each run, divided by the transactions pgbench counted (COPY: by the megabytes sent); µs, lower is better. " +
		"**Median** (ratio to PgBouncer session) and min–max over the rounds. pgtrust TCP and Unix are one process, " +
		"measured during their own runs. Direct paths have no process in the middle.")
	if g := x.meta["_gomaxprocs"]; g != "" {
		p(" pgtrust proxy ran with GOMAXPROCS %s on %s CPUs (as its `go_sched_gomaxprocs_threads` metric said).", g, x.meta["_cpus"])
	}
	p("\n\n")
	p("| workload |")
	for _, pp := range proxyPaths {
		p(" %s |", pathName(pp))
	}
	p("\n|---|")
	for range proxyPaths {
		p("---|")
	}
	p("\n")
	for _, w := range cpuWorkloads {
		p("| %s (µs per %s) |", w.name, w.per)
		base, okb := x.r.get("cpu."+w.id, bouncerSession)
		for _, pp := range proxyPaths {
			s, ok := x.r.get("cpu."+w.id, pp)
			if !ok {
				p(" – |")
				continue
			}
			rel := "–"
			if okb && base.median > 0 {
				rel = fmt.Sprintf("%.2f×", s.median/base.median)
			}
			p(" **%.1f** (%s)<br>%.1f–%.1f |", s.median, rel, s.min, s.max)
		}
		p("\n")
	}
	p("\nCOPY as MB per proxy CPU-second (1 / the figure above):")
	for _, pp := range proxyPaths {
		if s, ok := x.r.get("cpu.copy", pp); ok && s.median > 0 {
			p(" %s %.0f;", pathName(pp), 1e6/s.median)
		}
	}
	p("\n\n")
	p("Context switches (voluntary + nonvoluntary) of the proxy's threads per transaction, from " +
		"`/proc/PID/task/*/status`, medians. Not for stunnel: it runs a thread per connection, and a thread's " +
		"counts leave /proc with it.\n\n")
	p("| workload |")
	var csPaths []string
	for _, pp := range proxyPaths {
		if pp != "stunnel" {
			csPaths = append(csPaths, pp)
			p(" %s |", pathName(pp))
		}
	}
	p("\n|---|")
	for range csPaths {
		p("---|")
	}
	p("\n")
	for _, w := range cpuWorkloads {
		if w.id == "copy" {
			continue
		}
		p("| %s |", w.name)
		for _, pp := range csPaths {
			if s, ok := x.r.get("cs."+w.id, pp); ok {
				p(" %.1f |", s.median)
			} else {
				p(" – |")
			}
		}
		p("\n")
	}
	p("\n")
}

// writeShares renders where each CPU profile's samples went.
func writeShares(b *strings.Builder, x *run) {
	if len(x.prof) == 0 {
		return
	}
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	p("Where each profile's samples went, by what the sampled stack was doing (`go tool pprof -traces`, each sample " +
		"counted once, in this order: *GC and allocation* if a GC worker or an allocation is on the stack; *scheduler and " +
		"netpoll* if findRunnable, netpoll, futex and the like are; *system calls* if the leaf is one; *TLS and crypto* " +
		"if crypto/ is on the stack; *pgtrust code* if the leaf is pgtrust's; else *other*):\n\n")
	p("| profile | sampled |")
	for _, c := range categories {
		p(" %s |", c)
	}
	p("\n|---|---|")
	for range categories {
		p("---|")
	}
	p("\n")
	for _, label := range sortedKeys(x.prof) {
		s := x.prof[label]
		p("| %s | %d ms |", label, s.total.Milliseconds())
		for _, c := range categories {
			p(" %.0f%% |", s.pct(c))
		}
		p("\n")
	}
	p("\n")
}

// writeVariation says how much the figures moved between the rounds of
// this run, and what that means for other runs and machines.
func writeVariation(b *strings.Builder, x *run) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	p("## How much the figures vary\n\n")
	type cell struct {
		w, p   string
		spread float64
	}
	var cells []cell
	for _, w := range workloads {
		for _, ph := range paths {
			if s, ok := x.r.get(w.id, ph.id); ok && s.n > 1 && s.median > 0 {
				cells = append(cells, cell{w.name, ph.name, (s.max - s.min) / s.median})
			}
		}
	}
	var cpuSpreads []float64
	for _, w := range cpuWorkloads {
		for _, pp := range proxyPaths {
			if s, ok := x.r.get("cpu."+w.id, pp); ok && s.n > 1 && s.median > 0 {
				cpuSpreads = append(cpuSpreads, (s.max-s.min)/s.median)
			}
		}
	}
	if len(cells) == 0 {
		p("This run had one round: it cannot say how much a figure moves between runs. A full run (three rounds) " +
			"reports the spread here.\n\n")
	} else {
		sp := make([]float64, len(cells))
		worst := cells[0]
		for i, c := range cells {
			sp[i] = c.spread
			if c.spread > worst.spread {
				worst = c
			}
		}
		m := summarize(sp)
		p("Between the %d rounds of this run, a cell of the results table moved by (max − min) / median = %.0f%% "+
			"in the median cell and %.0f%% at most (%s, %s).", x.r.rounds, 100*m.median, 100*worst.spread, worst.w, worst.p)
		if len(cpuSpreads) > 0 {
			c := summarize(cpuSpreads)
			p(" The proxy CPU per transaction moved by %.0f%% in the median cell and %.0f%% at most.", 100*c.median, 100*c.max)
		}
		p(" A target whose ratio is closer to its threshold than that can pass in one run and fail in the next; " +
			"the targets table says when two paths' ranges overlap (\"within the spread of the rounds\").\n\n")
	}
	p("Between machines the absolute figures (tps, MB/s, µs) change with the CPU model and its clock, the kernel " +
		"and its mitigations (every relayed message costs system calls), and other tenants' load")
	if la := x.meta["load average at the end"]; la != "" {
		la, _, _ = strings.Cut(la, " (")
		p(" (load average at the end of this run: %s)", la)
	}
	p(". Here PostgreSQL, pgbench and the proxy share the same %s CPUs, so a proxy's CPU per transaction is taken "+
		"from the database and the client; on a host where the proxy has cores of its own the ratios shift. Compare "+
		"paths within one run, not figures across runs; [scaling.md](scaling.md) measures how the proxy's CPU per "+
		"transaction and throughput change with the CPUs it is given and the number of clients.\n\n", orQ(x.meta["_cpus"]))
}

func orQ(s string) string {
	if s == "" {
		return "?"
	}
	return s
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

// profiles renders profile-*.txt (pprof -top output) as code blocks.
func profiles(dir string) string {
	names, _ := filepath.Glob(filepath.Join(dir, "profile-*.txt"))
	var b strings.Builder
	for _, n := range names {
		data, err := os.ReadFile(n)
		if err != nil || len(data) == 0 {
			continue
		}
		label := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(n), "profile-"), ".txt")
		fmt.Fprintf(&b, "### %s\n\n```\n%s\n```\n\n", label, strings.TrimRight(string(data), "\n"))
	}
	return b.String()
}

// The pooling targets (issue 14) hold for the transaction-mode pgtrust path.
const poolPath = "pgtrust-pool-txn"

// relTo: median(w, p) ≥ want × median(w, base).
func relTo(w, p, base string, want float64) func(*results) (bool, bool, string) {
	return func(r *results) (bool, bool, string) {
		s, ok := r.get(w, p)
		b, okb := r.get(w, base)
		if !ok || !okb || b.median == 0 {
			return false, false, "not measured"
		}
		rel := s.median / b.median
		if rel >= want {
			return true, true, fmt.Sprintf("%.2f× %s (target %.2f×)", rel, pathName(base), want)
		}
		d := fmt.Sprintf("%.2f× %s (target %.2f×): short by %.1f%%", rel, pathName(base), want, (1-rel/want)*100)
		if overlap(s, b) {
			d += fmt.Sprintf(", within the spread of the rounds (%s–%s against %s–%s)",
				format(s.min, "tps"), format(s.max, "tps"), format(b.min, "tps"), format(b.max, "tps"))
		}
		return false, true, d
	}
}

func all(checks ...func(*results) (bool, bool, string)) func(*results) (bool, bool, string) {
	return func(r *results) (bool, bool, string) {
		ok, known := true, true
		var parts []string
		for _, c := range checks {
			o, k, d := c(r)
			ok, known = ok && o, known && k
			parts = append(parts, d)
		}
		return ok, known, strings.Join(parts, "; ")
	}
}

func poolMemoryTarget(r *results) (bool, bool, string) {
	for _, m := range r.memory {
		if m.path == poolPath {
			v := m.perConnKiB()
			d := fmt.Sprintf("%.1f KiB per client (%d idle clients over %d server connections)", v, m.conns, m.servers)
			if v <= 8 {
				return true, true, d
			}
			return false, true, fmt.Sprintf("%s: %.1f KiB over", d, v-8)
		}
	}
	return false, false, "not measured"
}

func poolPipeCause(w, profile string) func(*run) []string {
	return func(x *run) []string {
		out := cpuFacts(x, w, poolPath, "pgbouncer-txn")
		out = append(out, csFacts(x, w, poolPath, "pgbouncer-txn")...)
		return append(out, profileFacts(x, profile)...)
	}
}

func poolMemoryCause(x *run) []string {
	var out []string
	for _, m := range x.r.memory {
		if m.path == "pgbouncer-txn" {
			out = append(out, fmt.Sprintf("PgBouncer transaction held its %d idle clients in %.1f KiB each in the same measurement.",
				m.conns, m.perConnKiB()))
		}
	}
	if n, v, ok := heapFacts(x.dir, "profile-pool-txn-idle-heap.txt"); ok {
		out = append(out, fmt.Sprintf("With %d idle clients open in the pool (profile pool-txn-idle-heap below): %.0f of them parked "+
			"(no goroutine, no read buffer), %.0f goroutines; stacks in use %.0f KiB; heap in use %.0f KiB including the "+
			"process's own, at most %.1f KiB per client; the proxy's RSS then %.0f KiB.",
			n, v["parked"], v["goroutines"], v["stack_inuse_kib"], v["heap_inuse_kib"], v["heap_inuse_kib"]/float64(n), v["rss_kib"]))
	}
	return out
}

var poolTargets = []struct {
	text  string
	check func(*results) (bool, bool, string)
	cause func(*run) []string
}{
	{"pgbench -C -S, 8 clients: ≥ 25× direct TLS and ≥ 1.0× PgBouncer transaction",
		all(relTo("churn8", poolPath, "direct-tls", 25), relTo("churn8", poolPath, "pgbouncer-txn", 1)), poolPipeCause("churn8", "pool-txn-churn8")},
	{"pgbench -S, 8 clients: ≥ 1.0× PgBouncer transaction", relTo("select8", poolPath, "pgbouncer-txn", 1), poolPipeCause("select8", "pool-txn-select8")},
	{"pgbench -S, 32 clients: ≥ 1.0× PgBouncer transaction", relTo("select32", poolPath, "pgbouncer-txn", 1), poolPipeCause("select32", "pool-txn-select8")},
	{"TPC-B-like, 8 clients: ≥ 1.0× PgBouncer transaction", relTo("tpcb8", poolPath, "pgbouncer-txn", 1), poolPipeCause("tpcb8", "pool-txn-select8")},
	{"≤ 8 KiB RSS per idle pooled client", poolMemoryTarget, poolMemoryCause},
}

// writePooling renders the pooled paths against PgBouncer in the same mode
// and the pooling targets.
func writePooling(b *strings.Builder, x *run) {
	r := x.r
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	p("## Pooling\n\n")
	p("pgtrust's pools against PgBouncer's in the same mode and with the same pool size, measured in the same run: " +
		"the ratio of the medians (above 1: pgtrust is ahead; latency: below 1 is better), and each against direct TLS.\n\n")
	p("| workload | pgtrust ÷ PgBouncer, session | pgtrust ÷ PgBouncer, transaction | pgtrust transaction ÷ direct TLS | PgBouncer transaction ÷ direct TLS |\n|---|---|---|---|---|\n")
	cell := func(w, a, base string) string {
		s, ok := r.get(w, a)
		t, okb := r.get(w, base)
		if !ok || !okb || t.median == 0 {
			return "–"
		}
		return fmt.Sprintf("%.2f×", s.median/t.median)
	}
	for _, w := range workloads {
		p("| %s | %s | %s | %s | %s |\n", w.name,
			cell(w.id, "pgtrust-pool-session", "pgbouncer-session"), cell(w.id, "pgtrust-pool-txn", "pgbouncer-txn"),
			cell(w.id, "pgtrust-pool-txn", "direct-tls"), cell(w.id, "pgbouncer-txn", "direct-tls"))
	}
	p("\n### Pooling targets (issue 14), pgtrust pool transaction\n\n")
	p("| target | result |\n|---|---|\n")
	var causes []string
	said := map[string]bool{}
	for _, t := range poolTargets {
		ok, known, detail := t.check(r)
		if known && !ok {
			var fresh []string
			for _, s := range t.cause(x) {
				if !said[s] {
					said[s] = true
					fresh = append(fresh, s)
				}
			}
			if len(fresh) == 0 {
				fresh = []string{"see the facts above."}
			}
			causes = append(causes, fmt.Sprintf("- *%s*: %s", t.text, strings.Join(fresh, " ")))
		}
		p("| %s | %s: %s |\n", t.text, verdict(ok, known), detail)
	}
	p("\n")
	if len(causes) > 0 {
		p("Why the missed pooling targets are missed, from this run's measurements:\n\n%s\n\n", strings.Join(causes, "\n"))
	}
}

// verdict is a target's mark in the report's tables.
func verdict(ok, known bool) string {
	switch {
	case !known:
		return "not measured"
	case !ok:
		return "**missed**"
	}
	return "met"
}
