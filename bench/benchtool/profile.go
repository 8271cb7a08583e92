package main

import (
	"bufio"
	"cmp"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Where a CPU profile's samples went, by what each sampled stack was
// doing. The categories are decided per stack (not per function), in this
// order, so that each sample counts once:
const (
	catGC      = "GC and allocation"     // a GC worker, sweeping, or an allocation (mallocgc) anywhere in the stack
	catSched   = "scheduler and netpoll" // finding, parking or waking goroutines and threads: findRunnable, netpoll, futex...
	catSyscall = "system calls"          // a system call outside the scheduler: read, write, accept, setsockopt...
	catCrypto  = "TLS and crypto"        // crypto/tls record handling, AES-GCM, ECDSA and the rest of crypto/...
	catOwn     = "pgtrust code"          // the leaf is a pgtrust function
	catOther   = "other"                 // the rest: copies, the net and bufio packages, the runtime's other work
)

var categories = []string{catSyscall, catSched, catCrypto, catGC, catOwn, catOther}

// shares of one profile: total sampled time and time per category.
type shares struct {
	total time.Duration
	by    map[string]time.Duration
}

func (s shares) pct(cat string) float64 {
	if s.total <= 0 {
		return 0
	}
	return 100 * float64(s.by[cat]) / float64(s.total)
}

var (
	gcFrames = map[string]bool{
		"runtime.gcBgMarkWorker": true, "runtime.gcDrain": true, "runtime.gcDrainN": true, "runtime.bgsweep": true,
		"runtime.bgscavenge": true, "runtime.mallocgc": true, "runtime.gcAssistAlloc": true, "runtime.sweepone": true,
		"runtime.GC": true, "runtime.scanobject": true, "runtime.markroot": true, "runtime.gcStart": true,
		"runtime.gcMarkDone": true, "runtime.gcMarkTermination": true,
	}
	schedFrames = map[string]bool{
		"runtime.findRunnable": true, "runtime.schedule": true, "runtime.park_m": true, "runtime.netpoll": true,
		"runtime.stopm": true, "runtime.startm": true, "runtime.wakep": true, "runtime.mPark": true,
		"runtime.notesleep": true, "runtime.notewakeup": true, "runtime.notetsleep_internal": true,
		"runtime.futexsleep": true, "runtime.futexwakeup": true, "runtime.futex": true, "runtime.ready": true,
		"runtime.goready": true, "runtime.runqgrab": true, "runtime.stealWork": true, "runtime.sysmon": true,
		"runtime.handoffp": true, "runtime.goschedImpl": true, "runtime.gosched_m": true, "runtime.exitsyscall0": true,
		"runtime.entersyscallblock": true, "runtime.netpollBreak": true, "runtime.usleep": true, "runtime.osyield": true,
		"runtime.goexit0": true,
	}
	syscallLeaves = map[string]bool{
		"runtime.entersyscall": true, "runtime.exitsyscall": true, "runtime.reentersyscall": true,
		"runtime.write1": true, "runtime.read": true,
	}
)

// categorize one stack, leaf first.
func categorize(stack []string) string {
	if len(stack) == 0 {
		return catOther
	}
	for _, f := range stack {
		if gcFrames[f] {
			return catGC
		}
	}
	for _, f := range stack {
		if schedFrames[f] {
			return catSched
		}
	}
	leaf := stack[0]
	if syscallLeaves[leaf] || strings.HasPrefix(leaf, "syscall.") || strings.HasPrefix(leaf, "internal/runtime/syscall") ||
		strings.HasPrefix(leaf, "runtime/internal/syscall") || strings.HasPrefix(leaf, "golang.org/x/sys/unix.") {
		return catSyscall
	}
	for _, f := range stack {
		if strings.HasPrefix(f, "crypto/") || strings.HasPrefix(f, "vendor/golang.org/x/crypto") ||
			strings.HasPrefix(f, "golang.org/x/crypto") {
			return catCrypto
		}
	}
	if strings.HasPrefix(leaf, "github.com/pgtrust/pgtrust") {
		return catOwn
	}
	return catOther
}

// parseTraces reads `go tool pprof -traces` output of a CPU profile.
func parseTraces(r io.Reader) (shares, error) {
	s := shares{by: map[string]time.Duration{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var (
		val   time.Duration
		stack []string
		in    bool
	)
	flush := func() {
		if in {
			s.by[categorize(stack)] += val
			s.total += val
		}
		in, stack = false, nil
	}
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "-----------+") {
			flush()
			in = true
			continue
		}
		if !in {
			continue
		}
		t := strings.TrimSpace(line)
		if t == "" {
			continue
		}
		if len(stack) == 0 {
			// The first line of a trace: its value, then its leaf.
			v, fn, ok := strings.Cut(t, " ")
			d, err := time.ParseDuration(v)
			if !ok || err != nil {
				return s, fmt.Errorf("traces: %q: want a sample value and a function", line)
			}
			val = d
			t = strings.TrimSpace(fn)
		}
		stack = append(stack, strings.TrimSuffix(t, " (inline)"))
	}
	flush()
	if err := sc.Err(); err != nil {
		return s, err
	}
	if s.total == 0 {
		return s, fmt.Errorf("traces: no samples")
	}
	return s, nil
}

// readShares reads profile-LABEL.traces of each label in dir.
func readShares(dir string) map[string]shares {
	out := map[string]shares{}
	names, _ := filepath.Glob(filepath.Join(dir, "profile-*.traces"))
	for _, n := range names {
		f, err := os.Open(n)
		if err != nil {
			continue
		}
		s, err := parseTraces(f)
		f.Close()
		if err != nil {
			continue
		}
		out[strings.TrimSuffix(strings.TrimPrefix(filepath.Base(n), "profile-"), ".traces")] = s
	}
	return out
}

// sharesText: "system calls 41%, scheduler and netpoll 30%, ..." over the
// categories with at least 0.5%, largest first.
func sharesText(s shares) string {
	type kv struct {
		k string
		v float64
	}
	var l []kv
	for _, c := range categories {
		if p := s.pct(c); p >= 0.5 {
			l = append(l, kv{c, p})
		}
	}
	slices.SortStableFunc(l, func(a, b kv) int { return cmp.Compare(b.v, a.v) })
	parts := make([]string, len(l))
	for i, x := range l {
		parts[i] = fmt.Sprintf("%s %.0f%%", x.k, x.v)
	}
	return strings.Join(parts, ", ")
}
