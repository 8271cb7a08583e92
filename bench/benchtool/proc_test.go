package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const tracesSample = `File: benchproxy
Type: cpu
Duration: 8s, Total samples = 100ms ( 1.25%)
-----------+-------------------------------------------------------
      40ms   internal/runtime/syscall/linux.Syscall6
             syscall.RawSyscall6
             syscall.Syscall
             syscall.write
             internal/poll.(*FD).Write
             net.(*conn).Write
             github.com/pgtrust/pgtrust/internal/relay.copy
-----------+-------------------------------------------------------
      20ms   internal/runtime/syscall/linux.Syscall6
             runtime.netpoll
             runtime.findRunnable
             runtime.schedule
-----------+-------------------------------------------------------
      10ms   runtime.futex
             runtime.futexwakeup
             runtime.notewakeup
             runtime.startm
-----------+-------------------------------------------------------
      10ms   crypto/internal/fips140/aes/gcm.gcmAesEnc
             crypto/tls.(*halfConn).encrypt
             crypto/tls.(*Conn).writeRecordLocked
-----------+-------------------------------------------------------
      10ms   runtime.memclrNoHeapPointers
             runtime.mallocgc
             crypto/tls.(*Conn).readRecord
-----------+-------------------------------------------------------
       5ms   github.com/pgtrust/pgtrust/internal/relay.copy (inline)
             github.com/pgtrust/pgtrust/internal/relay.run
-----------+-------------------------------------------------------
       5ms   runtime.memmove
             bufio.(*Reader).Read
`

func TestParseTraces(t *testing.T) {
	s, err := parseTraces(strings.NewReader(tracesSample))
	if err != nil {
		t.Fatal(err)
	}
	if s.total != 100*time.Millisecond {
		t.Fatalf("total %v, want 100ms", s.total)
	}
	want := map[string]float64{catSyscall: 40, catSched: 30, catCrypto: 10, catGC: 10, catOwn: 5, catOther: 5}
	for c, w := range want {
		if got := s.pct(c); got != w {
			t.Errorf("%s: %.1f%%, want %.0f%%", c, got, w)
		}
	}
	if got := sharesText(s); !strings.HasPrefix(got, "system calls 40%, scheduler and netpoll 30%") {
		t.Errorf("sharesText = %q", got)
	}
	if _, err := parseTraces(strings.NewReader("File: x\n")); err == nil {
		t.Error("a profile without samples parsed")
	}
}

func writeProc(t *testing.T, root string, pid, ticks int, threads map[int]int) {
	t.Helper()
	dir := filepath.Join(root, fmt.Sprint(pid))
	_ = os.RemoveAll(dir)
	// utime is field 14, stime field 15; the name has a space and a ')'.
	stat := fmt.Sprintf("%d (a b) c) S 1 1 1 0 -1 4194560 10 0 0 0 %d %d 0 0 20 0 3 0 100\n", pid, ticks-5, 5)
	if err := os.MkdirAll(filepath.Join(dir, "task"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644); err != nil {
		t.Fatal(err)
	}
	for tid, cs := range threads {
		td := filepath.Join(dir, "task", fmt.Sprint(tid))
		if err := os.MkdirAll(td, 0o755); err != nil {
			t.Fatal(err)
		}
		st := fmt.Sprintf("Name:\tx\nvoluntary_ctxt_switches:\t%d\nnonvoluntary_ctxt_switches:\t%d\n", cs-1, 1)
		if err := os.WriteFile(filepath.Join(td, "status"), []byte(st), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestProcDelta(t *testing.T) {
	root := t.TempDir()
	writeProc(t, root, 7, 100, map[int]int{7: 10, 8: 20})
	before, err := readProc(root, 7)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := before.write(&b); err != nil {
		t.Fatal(err)
	}
	back, err := parseSnap(strings.NewReader(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	// A new thread (9) counts from zero.
	writeProc(t, root, 7, 350, map[int]int{7: 30, 8: 25, 9: 5})
	after, err := readProc(root, 7)
	if err != nil {
		t.Fatal(err)
	}
	cpu, cs, known := procDelta(back, after, 100)
	if cpu != 2.5 || cs != 30 || !known {
		t.Errorf("delta = %v s, %d switches, known %v; want 2.5 s, 30, true", cpu, cs, known)
	}
	// A thread that ended took its switches with it.
	writeProc(t, root, 7, 400, map[int]int{7: 40})
	after, _ = readProc(root, 7)
	if _, _, known := procDelta(back, after, 100); known {
		t.Error("context switches known although thread 8 ended")
	}
}

func TestFindMetric(t *testing.T) {
	text := "# HELP go_sched_gomaxprocs_threads x\n# TYPE go_sched_gomaxprocs_threads gauge\ngo_sched_gomaxprocs_threads 2\n" +
		"go_sched_gomaxprocs_threads_other 9\nfoo{a=\"1\"} 3\nfoo{a=\"2\"} 4\n"
	if v, ok, err := findMetric(strings.NewReader(text), "go_sched_gomaxprocs_threads"); err != nil || !ok || v != 2 {
		t.Errorf("gomaxprocs = %v %v %v", v, ok, err)
	}
	if v, ok, _ := findMetric(strings.NewReader(text), "foo"); !ok || v != 7 {
		t.Errorf("foo = %v %v, want the sum 7", v, ok)
	}
	if _, ok, _ := findMetric(strings.NewReader(text), "bar"); ok {
		t.Error("found a metric that is not there")
	}
}
