package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Paths in the order of the table and the chart. The ids are those bench/run
// writes into results.tsv.
var paths = []struct{ id, name string }{
	{"direct-tls", "direct TLS"},
	{"direct-plain", "direct plaintext"},
	{"pgtrust-tcp", "pgtrust TCP"},
	{"pgtrust-unix", "pgtrust Unix"},
	{"pgtrust-pool-session", "pgtrust pool session"},
	{"pgtrust-pool-txn", "pgtrust pool transaction"},
	{"pgbouncer-session", "PgBouncer session"},
	{"pgbouncer-txn", "PgBouncer transaction"},
	{"stunnel", "stunnel"},
}

// workload is one measured figure; higher is better unless lowerBetter.
type workload struct {
	id, name, unit string
	lowerBetter    bool
}

var workloads = []workload{
	{"select1", "pgbench -S, 1 client", "tps", false},
	{"select8", "pgbench -S, 8 clients", "tps", false},
	{"select32", "pgbench -S, 32 clients", "tps", false},
	{"tpcb8", "TPC-B-like, 8 clients", "tps", false},
	{"churn8", "pgbench -C -S, 8 clients", "tps", false},
	{"copy", "COPY TO STDOUT", "MB/s", false},
	{"avg", "latency average, -S 1 client", "ms", true},
	{"p50", "latency p50, -S 1 client", "ms", true},
	{"p99", "latency p99, -S 1 client", "ms", true},
}

// stats of one (workload, path) cell.
type stats struct {
	n                int
	median, min, max float64
}

func summarize(v []float64) stats {
	if len(v) == 0 {
		return stats{}
	}
	s := slices.Clone(v)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return stats{n: len(s), median: m, min: s[0], max: s[len(s)-1]}
}

type results struct {
	cells  map[string]map[string]stats // workload → path → stats
	rounds int
	memory []memoryRow
}

type memoryRow struct {
	path               string
	conns              int
	beforeKiB, afterKB float64
	servers            int // PostgreSQL backends the clients opened (pools); -1 = not counted
}

func (m memoryRow) perConnKiB() float64 { return (m.afterKB - m.beforeKiB) / float64(m.conns) }

func (r *results) get(w, p string) (stats, bool) {
	s, ok := r.cells[w][p]
	return s, ok && s.n > 0
}

// ratio of path p to direct TLS for workload w.
func (r *results) ratio(w, p string) (float64, bool) {
	s, ok := r.get(w, p)
	base, okb := r.get(w, "direct-tls")
	if !ok || !okb || base.median == 0 {
		return 0, false
	}
	return s.median / base.median, true
}

func readResults(dir string) (*results, error) {
	r := &results{cells: map[string]map[string]stats{}}
	raw := map[string]map[string][]float64{}
	err := eachRow(filepath.Join(dir, "results.tsv"), func(line int, fl []string) error {
		if len(fl) != 4 {
			return fmt.Errorf("results.tsv:%d: want round, path, workload, value: %q", line, strings.Join(fl, "\t"))
		}
		round, err1 := strconv.Atoi(fl[0])
		v, err2 := strconv.ParseFloat(fl[3], 64)
		if err1 != nil || err2 != nil {
			return fmt.Errorf("results.tsv:%d: bad number in %q", line, strings.Join(fl, "\t"))
		}
		r.rounds = max(r.rounds, round)
		if raw[fl[2]] == nil {
			raw[fl[2]] = map[string][]float64{}
		}
		raw[fl[2]][fl[1]] = append(raw[fl[2]][fl[1]], v)
		return nil
	})
	if err != nil {
		return nil, err
	}
	for w, byPath := range raw {
		r.cells[w] = map[string]stats{}
		for p, v := range byPath {
			r.cells[w][p] = summarize(v)
		}
	}
	if r.memory, err = readMemory(dir); err != nil {
		return nil, err
	}
	return r, nil
}

// readMemory reads memory.tsv (path, connections, RSS KiB before and
// after[, server connections]); none when the file is absent.
func readMemory(dir string) ([]memoryRow, error) {
	var rows []memoryRow
	err := eachRow(filepath.Join(dir, "memory.tsv"), func(_ int, fl []string) error {
		row := strings.Join(fl, "\t")
		if len(fl) != 4 && len(fl) != 5 {
			return fmt.Errorf("memory.tsv: want path, conns, before, after[, servers]: %q", row)
		}
		n, err1 := strconv.Atoi(fl[1])
		b, err2 := strconv.ParseFloat(fl[2], 64)
		a, err3 := strconv.ParseFloat(fl[3], 64)
		if err1 != nil || err2 != nil || err3 != nil {
			return fmt.Errorf("memory.tsv: bad number in %q", row)
		}
		srv := -1
		if len(fl) == 5 && fl[4] != "" {
			var err error
			if srv, err = strconv.Atoi(fl[4]); err != nil {
				return fmt.Errorf("memory.tsv: bad server count in %q", row)
			}
		}
		if n > 0 {
			rows = append(rows, memoryRow{fl[0], n, b, a, srv})
		}
		return nil
	})
	if os.IsNotExist(err) {
		return nil, nil
	}
	return rows, err
}

// eachRow calls fn with the tab-separated fields of every line of file,
// numbered from 1; it stops at fn's first error.
func eachRow(file string, fn func(line int, fl []string) error) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		if err := fn(line, strings.Split(sc.Text(), "\t")); err != nil {
			return err
		}
	}
	return sc.Err()
}

// readMeta reads the key<TAB>value lines bench/run wrote.
func readMeta(dir string) (map[string]string, []string, error) {
	f, err := os.Open(filepath.Join(dir, "meta.tsv"))
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	m := map[string]string{}
	var order []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "\t")
		if !ok {
			continue
		}
		if _, dup := m[k]; !dup {
			order = append(order, k)
		}
		m[k] = v
	}
	return m, order, sc.Err()
}

func readOptional(dir, name string) string {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return ""
	}
	return strings.TrimRight(string(b), "\n")
}

func report(args []string) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory with results.tsv, memory.tsv, meta.tsv, commands.txt, profile-*.txt, profile-*.traces")
	out := fs.String("out", "", "markdown file to write")
	png := fs.String("png", "benchmarks.png", "chart file name, as linked from the markdown and written by gnuplot")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" || *out == "" {
		return fmt.Errorf("-dir and -out are required")
	}
	r, err := readResults(*dir)
	if err != nil {
		return err
	}
	meta, metaOrder, err := readMeta(*dir)
	if err != nil {
		return err
	}
	if err := writeChart(*dir, r, *png); err != nil {
		return err
	}
	var b strings.Builder
	writeDoc(&b, r, meta, metaOrder, *dir, filepath.Base(*png))
	return os.WriteFile(*out, []byte(b.String()), 0o644)
}

// chartWorkloads are the bars of the chart: everything, as ratio to direct
// TLS; latency is inverted (direct ÷ path) so that taller is better
// everywhere.
func writeChart(dir string, r *results, png string) error {
	var dat strings.Builder
	dat.WriteString("workload")
	for _, p := range paths {
		fmt.Fprintf(&dat, "\t\"%s\"", p.name)
	}
	dat.WriteString("\n")
	for _, w := range workloads {
		label := w.id
		if w.lowerBetter {
			label += " (1/x)"
		}
		fmt.Fprintf(&dat, "\"%s\"", label)
		for _, p := range paths {
			v, ok := r.ratio(w.id, p.id)
			if ok && w.lowerBetter && v > 0 {
				v = 1 / v
			}
			if !ok {
				dat.WriteString("\t0")
				continue
			}
			fmt.Fprintf(&dat, "\t%.4f", v)
		}
		dat.WriteString("\n")
	}
	if err := os.WriteFile(filepath.Join(dir, "chart.dat"), []byte(dat.String()), 0o644); err != nil {
		return err
	}
	gp := fmt.Sprintf(`set terminal pngcairo size 1400,650 noenhanced font ",11"
set output %q
set title "Medians as ratio to direct TLS (higher is better; latency inverted; log scale), %d round(s)"
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set key outside right top vertical
# gnuplot's default cycle has 8 colours; a 9th path would repeat the first.
set linetype 9 lc rgb "#8c564b"
set grid ytics
set logscale y 2
set yrange [0.125:*]
set ylabel "ratio to direct TLS"
set xtics rotate by -20
set arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2 lw 1.5 lc rgb "black" front
plot for [i=2:%d] %q using i:xtic(1) title columnheader(i)
`, png, r.rounds, len(paths)+1, filepath.Join(dir, "chart.dat"))
	return os.WriteFile(filepath.Join(dir, "chart.gp"), []byte(gp), 0o644)
}

func format(v float64, unit string) string {
	switch {
	case unit == "ms":
		return strconv.FormatFloat(v, 'f', 3, 64)
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	default:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
}
