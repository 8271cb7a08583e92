package main

import (
	"fmt"
	"os"
	"path/filepath"
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
		"the TLS handshake and the backend fork entirely (pooling is a later issue)."
	causeCopy = "A large result is a stream of TLS records the proxy decrypts and re-sends in plaintext; " +
		"its throughput is bounded by the proxy's AES-GCM, copy loop and syscalls, on cores shared with the " +
		"PostgreSQL backend producing the rows and the client consuming them."
	causeMemory = "An idle session holds a 2 KiB read buffer per direction (the 32 KiB pooled buffers are " +
		"borrowed only while data streams), two goroutine stacks, the upstream crypto/tls connection's " +
		"record buffers (which keep the size of the largest record seen) and the kernel socket objects " +
		"counted in RSS."
)

var targets = []target{
	{"pgbench -S, 8 clients: ≥ 0.85× direct TLS, and ahead of PgBouncer and stunnel",
		both(atLeast("select8", 0.85), aheadOf("select8", "pgbouncer", "stunnel")), causePipe},
	{"pgbench -S, 1 client: ahead of PgBouncer and stunnel", aheadOf("select1", "pgbouncer", "stunnel"), causePipe},
	{"pgbench -S, 32 clients: ahead of PgBouncer and stunnel", aheadOf("select32", "pgbouncer", "stunnel"), causePipe},
	{"TPC-B-like, 8 clients: ahead of PgBouncer and stunnel", aheadOf("tpcb8", "pgbouncer", "stunnel"), causePipe},
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
	p("| PgBouncer | pgbench → PgBouncer (session pooling) → `server_tls_sslmode=verify-full` → PostgreSQL |\n")
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
		p("| path | connections | RSS before (KiB) | RSS after (KiB) | per connection (KiB) |\n|---|---|---|---|---|\n")
		for _, m := range r.memory {
			p("| %s | %d | %.0f | %.0f | **%.1f** |\n", pathName(m.path), m.conns, m.beforeKiB, m.afterKB, m.perConnKiB())
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
			mark := "met"
			switch {
			case !known:
				mark = "not measured"
			case !ok:
				mark = "**missed**"
				anyMiss = true
			}
			p(" %s: %s |", mark, detail)
		}
		p("\n")
		if anyMiss {
			missed = append(missed, t)
		}
	}
	p("\n")
	if s, ok := r.get("churn8", "pgbouncer"); ok {
		if base, ok := r.get("churn8", "direct-tls"); ok && base.median > 0 {
			p("Connection churn, PgBouncer (reuses server connections): %.2f× direct TLS. Pooling is a later issue.\n\n", s.median/base.median)
		}
	}
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
			"the workload ran through its TCP listener; `go tool pprof -top` entries, flat and cumulative.\n\n")
		p("%s\n", prof)
	}
	if mb := readOptional(dir, "microbench.txt"); mb != "" {
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
		"Environment knobs: `BENCH_ROUNDS`, `BENCH_DURATION` (seconds per pgbench run), `BENCH_COPY_MB`, `BENCH_IDLE_CONNS`.\n\n")
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
