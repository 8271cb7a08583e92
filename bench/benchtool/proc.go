package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// procSnap is what /proc says about a process at one moment: its CPU time
// (utime+stime of all its threads, dead ones included, in clock ticks) and
// the context switches (voluntary + nonvoluntary) of each thread alive.
type procSnap struct {
	ticks   int64
	threads map[string]int64 // tid → context switches
}

// readProc reads /proc/PID/stat and /proc/PID/task/*/status.
func readProc(root string, pid int) (procSnap, error) {
	dir := filepath.Join(root, strconv.Itoa(pid))
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return procSnap{}, err
	}
	// The command name (field 2) is in parentheses and may hold spaces:
	// count the fields after the last ')'. Field 3 is then the first.
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 {
		return procSnap{}, fmt.Errorf("%s/stat: no ')' in %q", dir, stat)
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return procSnap{}, fmt.Errorf("%s/stat: %d fields after the name, want ≥ 13", dir, len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return procSnap{}, fmt.Errorf("%s/stat: bad utime/stime %q %q", dir, f[11], f[12])
	}
	s := procSnap{ticks: utime + stime, threads: map[string]int64{}}
	tasks, err := os.ReadDir(filepath.Join(dir, "task"))
	if err != nil {
		return procSnap{}, err
	}
	for _, t := range tasks {
		b, err := os.ReadFile(filepath.Join(dir, "task", t.Name(), "status"))
		if err != nil {
			continue // the thread ended since the directory was read
		}
		var cs int64
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if ok && (k == "voluntary_ctxt_switches" || k == "nonvoluntary_ctxt_switches") {
				n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				if err != nil {
					return procSnap{}, fmt.Errorf("%s: %q", t.Name(), line)
				}
				cs += n
			}
		}
		s.threads[t.Name()] = cs
	}
	return s, nil
}

func (s procSnap) write(w io.Writer) error {
	if _, err := fmt.Fprintf(w, "ticks %d\n", s.ticks); err != nil {
		return err
	}
	for tid, cs := range s.threads {
		if _, err := fmt.Fprintf(w, "tid %s %d\n", tid, cs); err != nil {
			return err
		}
	}
	return nil
}

func parseSnap(r io.Reader) (procSnap, error) {
	s := procSnap{threads: map[string]int64{}}
	sc := bufio.NewScanner(r)
	seen := false
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 2 && f[0] == "ticks":
			n, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return s, fmt.Errorf("snapshot: %q", sc.Text())
			}
			s.ticks, seen = n, true
		case len(f) == 3 && f[0] == "tid":
			n, err := strconv.ParseInt(f[2], 10, 64)
			if err != nil {
				return s, fmt.Errorf("snapshot: %q", sc.Text())
			}
			s.threads[f[1]] = n
		default:
			return s, fmt.Errorf("snapshot: %q", sc.Text())
		}
	}
	if !seen {
		return s, fmt.Errorf("snapshot: no ticks line")
	}
	return s, sc.Err()
}

// procDelta is the CPU time and context switches between two snapshots.
// csKnown is false when a thread of the first is gone from the second: its
// switches since the first left with it.
func procDelta(before, after procSnap, hz float64) (cpuSec float64, cs int64, csKnown bool) {
	cpuSec = float64(after.ticks-before.ticks) / hz
	csKnown = true
	for tid := range before.threads {
		if _, ok := after.threads[tid]; !ok {
			csKnown = false
		}
	}
	for tid, n := range after.threads {
		cs += n - before.threads[tid] // a new thread counts from 0
	}
	return cpuSec, cs, csKnown
}

// proc: with -snap FILE, writes PID's snapshot to FILE; with -since FILE,
// prints "CPU_US_PER CS_PER CPU_SECONDS" for the time since that snapshot,
// per -per units of work (transactions, megabytes). CS_PER is "-" with
// -no-cs (a process whose threads end with their connections: their
// switches are not in /proc any more) or when a thread of the snapshot
// ended.
func proc(args []string) error {
	fs := flag.NewFlagSet("proc", flag.ContinueOnError)
	pid := fs.Int("pid", 0, "process id")
	snap := fs.String("snap", "", "write a snapshot of PID to FILE")
	since := fs.String("since", "", "print the CPU and context switches since the snapshot in FILE")
	per := fs.Float64("per", 0, "with -since: divide by this (transactions, MB)")
	hz := fs.Float64("hz", 100, "clock ticks per second of /proc/PID/stat (getconf CLK_TCK)")
	noCS := fs.Bool("no-cs", false, "with -since: do not report context switches")
	root := fs.String("proc", "/proc", "procfs mount")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *pid <= 0 || (*snap == "") == (*since == "") {
		return fmt.Errorf("want -pid and one of -snap, -since")
	}
	now, err := readProc(*root, *pid)
	if err != nil {
		return err
	}
	if *snap != "" {
		f, err := os.Create(*snap)
		if err != nil {
			return err
		}
		if err := now.write(f); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	if *per <= 0 || *hz <= 0 {
		return fmt.Errorf("-per and -hz must be positive")
	}
	f, err := os.Open(*since)
	if err != nil {
		return err
	}
	before, err := parseSnap(f)
	f.Close()
	if err != nil {
		return err
	}
	cpu, cs, known := procDelta(before, now, *hz)
	if cpu < 0 {
		return fmt.Errorf("CPU time went backwards: is pid %d the process of the snapshot?", *pid)
	}
	csText := "-"
	if known && !*noCS {
		csText = strconv.FormatFloat(float64(cs) / *per, 'f', 3, 64)
	}
	fmt.Printf("%.3f %s %.3f\n", cpu*1e6 / *per, csText, cpu)
	return nil
}

// metric prints the value of a metric (summed over its label sets) from a
// Prometheus text endpoint.
func metric(args []string) error {
	fs := flag.NewFlagSet("metric", flag.ContinueOnError)
	url := fs.String("url", "", "http URL of the metrics")
	name := fs.String("name", "", "metric name")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *url == "" || *name == "" {
		return fmt.Errorf("-url and -name are required")
	}
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(*url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", *url, resp.Status)
	}
	v, ok, err := findMetric(resp.Body, *name)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%s: no metric %s", *url, *name)
	}
	fmt.Println(strconv.FormatFloat(v, 'f', -1, 64))
	return nil
}

func findMetric(r io.Reader, name string) (float64, bool, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	sum, found := 0.0, false
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		n, _, _ := strings.Cut(f[0], "{")
		if n != name {
			continue
		}
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil || math.IsNaN(v) {
			return 0, false, fmt.Errorf("metric line %q", line)
		}
		sum, found = sum+v, true
	}
	return sum, found, sc.Err()
}
