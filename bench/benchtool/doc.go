package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

var pgtrustPaths = []string{"pgtrust-tcp", "pgtrust-unix"}

func pathName(id string) string {
	for _, p := range paths {
		if p.id == id {
			return p.name
		}
	}
	return id
}

// target is one line of the targets, evaluated per pgtrust path.
type target struct {
	text  string
	check func(r *results, p string) (ok bool, known bool, detail string)
	cause string // why pgtrust misses it when it does
}

// atLeast: median(w, p) ≥ want × direct TLS.
func atLeast(w string, want float64) func(*results, string) (bool, bool, string) {
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

// aheadOf: median(w, p) > median(w, other) for each other.
func aheadOf(w string, others ...string) func(*results, string) (bool, bool, string) {
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
				parts = append(parts, fmt.Sprintf("%.3f× %s (behind by %.1f%%)", rel, pathName(o), (1-rel)*100))
			} else {
				parts = append(parts, fmt.Sprintf("%.3f× %s", rel, pathName(o)))
			}
		}
		return all, true, strings.Join(parts, ", ")
	}
}

func both(a, b func(*results, string) (bool, bool, string)) func(*results, string) (bool, bool, string) {
	return func(r *results, p string) (bool, bool, string) {
		oa, ka, da := a(r, p)
		ob, kb, db := b(r, p)
		return oa && ob, ka && kb, da + "; " + db
	}
}

const (
	causePipe = "Every query and its answer cross the proxy: four more system calls per round trip " +
		"(read from the client, TLS write upstream, TLS read upstream, write to the client), two goroutine " +
		"wake-ups through the netpoller, and one more TLS record each way, all on the same two cores that " +
		"PostgreSQL and pgbench need (PgBouncer and stunnel pay the same hop). pgtrust proxy runs with half " +
		"the CPUs as Ps (GOMAXPROCS 1 here) so its scheduler spins less against the database. In the select8 profile below " +
		"most of the proxy's CPU is in the system calls (Syscall6; loopback writes also run the receiver's " +
		"network stack) and the scheduler (findRunnable, netpoll); AES-GCM and the copy loop are small. The " +
		"proxy allocates nothing of its own per message (BenchmarkPipeEcho: the 2 allocs/op are crypto/tls's " +
		"per-record reader, one in the proxy and one in the fake upstream), so the gap is the hop itself, " +
		"not allocation."
	causeChurn = "A new client connection costs the proxy an accept, a goroutine, an upstream TCP connect and " +
		"a full TLS 1.3 handshake (ECDSA P-256 verification of the server chain, a client-certificate " +
		"signature) before the first byte reaches PostgreSQL, plus the relay of the authentication messages; " +
		"direct TLS pays only the handshake, in libpq. PgBouncer reuses its server connections and so skips " +
		"the TLS handshake and the backend fork entirely, as pgtrust's pooled paths do (below)."
	causeCopy = "A large result is a stream of TLS records the proxy decrypts and re-sends in plaintext; " +
		"its throughput is bounded by the proxy's AES-GCM, copy loop and syscalls, on cores shared with the " +
		"PostgreSQL backend producing the rows and the client consuming them."
	causePoolChurn = "Each new client costs the pool an accept (Go's listener also turns on TCP keep-alive with " +
		"its own timings: several setsockopt calls), a proxy session and its goroutine, the startup packet's " +
		"parsing, the greeting, a first transaction on a pooled server connection (with a set_config of " +
		"pgbench's application_name the first time a server connection meets it) and a close; PgBouncer does the " +
		"same work in one event loop. pgtrust proxy also logs every session's opening and closing at the default " +
		"level (PgBouncer logs connections too). The pool-txn-churn8 profile below shows where this run's CPU went."
	causePoolTxn = "Per query the pool does what PgBouncer does: a read from the client, a TLS write to the " +
		"server, a TLS read back and a write to the client, plus a server connection taken and given back " +
		"(with a non-blocking peek at its socket). pgtrust does it with two goroutines per busy client (the " +
		"client reader and the server pump) woken through Go's netpoller, where PgBouncer runs one event loop; " +
		"the pool-txn-select8 profile below shows this run's split between system calls, the scheduler " +
		"(findRunnable, netpoll) and the pool's own code. The per-round-trip cost is the proxy's data path, " +
		"shared with the unpooled paths."
	causePoolMemory = "An idle pooled client is parked after client_park_after (1 s): no goroutine, no read " +
		"buffer; it keeps its socket and its session state (the proxy session, the startup parameters, the " +
		"paramsync and prepared-statement state), and the proxy returns the memory parked clients gave back " +
		"once the burst of parks is over. PgBouncer keeps a client in about 1 KiB of its own structures."
	causeMemory = "An idle session holds a 2 KiB read buffer per direction (the 32 KiB pooled buffers are " +
		"borrowed only while data streams), two goroutine stacks, the upstream crypto/tls connection's " +
		"record buffers (which keep the size of the largest record seen) and the kernel socket objects " +
		"counted in RSS."
)

var targets = []target{
	{"pgbench -S, 8 clients: ≥ 0.85× direct TLS, and ahead of PgBouncer and stunnel",
		both(atLeast("select8", 0.85), aheadOf("select8", "pgbouncer-session", "stunnel")), causePipe},
	{"pgbench -S, 1 client: ahead of PgBouncer and stunnel", aheadOf("select1", "pgbouncer-session", "stunnel"), causePipe},
	{"pgbench -S, 32 clients: ahead of PgBouncer and stunnel", aheadOf("select32", "pgbouncer-session", "stunnel"), causePipe},
	{"TPC-B-like, 8 clients: ahead of PgBouncer and stunnel", aheadOf("tpcb8", "pgbouncer-session", "stunnel"), causePipe},
	{"Large result: ≥ 0.95× direct TLS throughput", atLeast("copy", 0.95), causeCopy},
	{"Connection churn: ≥ 0.9× direct TLS", atLeast("churn8", 0.9), causeChurn},
	{"≤ 64 KiB RSS per idle proxied connection", memoryTarget, causeMemory},
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
			if v <= 64 {
				return true, true, fmt.Sprintf("%.1f KiB per connection (%d connections)%s", v, m.conns, suffix)
			}
			return false, true, fmt.Sprintf("%.1f KiB per connection (%d connections): %.1f KiB over%s", v, m.conns, v-64, suffix)
		}
	}
	return false, false, "not measured"
}

func writeDoc(b *strings.Builder, r *results, meta map[string]string, metaOrder []string, dir, png string) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	p("# Benchmarks\n\n")
	p("<!-- Generated by bench/run on %s. Do not edit: rerun `bench/run` instead. -->\n\n", meta["date"])
	p("pgtrust's proxy measured side by side with what users would otherwise run, on one machine, in one run "+
		"of `bench/run`. Paths were interleaved (every workload runs on every path in turn, round after round) "+
		"so that drift hits all of them equally. Each figure is the **median of %d round(s)**, its ratio to "+
		"**direct TLS** (the baseline), and the min–max spread.\n\n", r.rounds)
	if n := meta["note"]; n != "" {
		p("> %s\n\n", n)
	}

	p("## Machine\n\n| | |\n|---|---|\n")
	for _, k := range metaOrder {
		if k == "date" || k == "note" {
			continue
		}
		p("| %s | %s |\n", k, strings.ReplaceAll(meta[k], "|", "\\|"))
	}
	p("\n")

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

	if len(r.memory) > 0 {
		p("### Memory per idle connection\n\n")
		p("RSS (VmRSS) of the process in the middle, before and after opening idle, authenticated connections " +
			"through it (each ran `SELECT 1` once), divided by their number.\n\n")
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
	var missed []target
	for _, t := range targets {
		p("| %s |", t.text)
		anyMiss := false
		for _, pp := range pgtrustPaths {
			ok, known, detail := t.check(r, pp)
			anyMiss = anyMiss || known && !ok
			p(" %s: %s |", verdict(ok, known), detail)
		}
		p("\n")
		if anyMiss {
			missed = append(missed, t)
		}
	}
	p("\n")
	writePooling(b, r, dir)
	if len(missed) > 0 {
		p("### Why the missed targets are missed\n\n")
		seen := map[string]bool{}
		for _, t := range missed {
			if seen[t.cause] {
				p("- *%s*: same cause as above.\n", t.text)
				continue
			}
			seen[t.cause] = true
			p("- *%s*: %s\n", t.text, t.cause)
		}
		p("\n")
	}

	if prof := profiles(dir); prof != "" {
		p("## Profiles\n\n")
		p("CPU profiles of the proxy (the same package, run by `bench/benchproxy` with runtime/pprof) while " +
			"the workload ran through its TCP listener; `go tool pprof -top` entries, flat and cumulative. " +
			"`pool-txn-*`: the transaction-mode pool (`--pool-mode transaction`, the same pool size). " +
			"`pool-txn-idle-heap` (when present): the heap in use with the idle pooled clients of the memory " +
			"measurement open, and the runtime's goroutine count, heap and stacks in use at that moment.\n\n")
		p("%s\n", prof)
	}
	mb := readOptional(dir, "microbench.txt")
	if mb == "" {
		p("## Go micro-benchmarks\n\nNot run in this run (`BENCH_MICRO=0`).\n\n")
	}
	if mb != "" {
		p("## Go micro-benchmarks\n\n")
		p("- `BenchmarkPipeEcho`: one message through the proxy and back (plaintext client → proxy → TLS 1.3 → " +
			"in-process upstream that echoes). allocs/op count the whole process: the fake upstream and the client " +
			"allocate nothing per message, and so far the proxy's own copy loop neither; what remains is " +
			"crypto/tls's per-record reader.\n")
		p("- `BenchmarkPipeStream`: a continuous upstream stream (a large result) read through the proxy, 64 KiB per op.\n")
		p("- `BenchmarkIdleSession`: opens one idle, authenticated session per op and keeps them; heap and stack " +
			"per session include the in-process fake upstream's side (its TLS connection and a 32 KiB buffer).\n")
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
		if s.max >= b.min && b.max >= s.min && r.rounds > 1 {
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

var poolTargets = []struct {
	text  string
	check func(*results) (bool, bool, string)
	cause string // the measured reason of a miss; "" = see the profiles
}{
	{"pgbench -C -S, 8 clients: ≥ 25× direct TLS and ≥ 1.0× PgBouncer transaction",
		all(relTo("churn8", poolPath, "direct-tls", 25), relTo("churn8", poolPath, "pgbouncer-txn", 1)), causePoolChurn},
	{"pgbench -S, 8 clients: ≥ 1.0× PgBouncer transaction", relTo("select8", poolPath, "pgbouncer-txn", 1), causePoolTxn},
	{"pgbench -S, 32 clients: ≥ 1.0× PgBouncer transaction", relTo("select32", poolPath, "pgbouncer-txn", 1), causePoolTxn},
	{"TPC-B-like, 8 clients: ≥ 1.0× PgBouncer transaction", relTo("tpcb8", poolPath, "pgbouncer-txn", 1), causePoolTxn},
	{"≤ 8 KiB RSS per idle pooled client", poolMemoryTarget, causePoolMemory},
}

// writePooling renders the pooled paths against PgBouncer in the same mode
// and the pooling targets.
func writePooling(b *strings.Builder, r *results, dir string) {
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
	seen := map[string]bool{}
	for _, t := range poolTargets {
		ok, known, detail := t.check(r)
		if known && !ok && t.cause != "" && !seen[t.cause] {
			seen[t.cause] = true
			c := t.cause
			if t.cause == causePoolMemory {
				c += idleHeapFacts(dir)
			}
			causes = append(causes, fmt.Sprintf("- *%s*: %s", t.text, c))
		}
		p("| %s | %s: %s |\n", t.text, verdict(ok, known), detail)
	}
	p("\n")
	if len(causes) > 0 {
		p("Why the missed pooling targets are missed (from the pool-txn CPU profiles below):\n\n%s\n\n", strings.Join(causes, "\n"))
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

// idleHeapFacts reads the first line of profile-pool-txn-idle-heap.txt
// ("N idle clients: goroutines=G parked=P heap_inuse_kib=H
// stack_inuse_kib=S ... rss_kib=R") and says what it means per client.
func idleHeapFacts(dir string) string {
	line, _, _ := strings.Cut(readOptional(dir, "profile-pool-txn-idle-heap.txt"), "\n")
	head, kv, ok := strings.Cut(line, " idle clients: ")
	n, err := strconv.Atoi(head)
	if !ok || err != nil || n <= 0 {
		return ""
	}
	v := map[string]float64{}
	for _, f := range strings.Fields(kv) {
		k, x, _ := strings.Cut(f, "=")
		v[k], _ = strconv.ParseFloat(x, 64)
	}
	return fmt.Sprintf(" Measured with %d idle clients open (pool-txn-idle-heap below): %.0f of them parked, "+
		"%.0f goroutines; stacks in use %.0f KiB; heap in use %.0f KiB including the process's own, at most "+
		"%.1f KiB per client; the proxy's RSS then %.0f KiB.",
		n, v["parked"], v["goroutines"], v["stack_inuse_kib"], v["heap_inuse_kib"], v["heap_inuse_kib"]/float64(n), v["rss_kib"])
}
