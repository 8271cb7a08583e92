// Command idleproxy runs internal/proxy with one upstream in a process of
// its own, so that TestIdleSessionMemory measures the proxy's memory and
// not its test clients'. The test builds it with go build (never with the
// race detector, whose shadow memory would inflate the figures).
//
//	idleproxy -upstream DSN -max-connections N
//
// It listens on 127.0.0.1 (a free port) and prints "ready PORT" on stdout.
// Then, for each line "measure" on stdin, it collects garbage twice and
// prints one line:
//
//	memstats heap_alloc=B heap_inuse=B stack_inuse=B goroutines=N active=N
//
// (bytes; active is the proxy's pgtrust_connections_active). For a line
// "profile DIR" it writes DIR/heap.pprof (live heap, sampled every 4 KiB)
// and DIR/goroutines.txt (the goroutine profile, grouped by stack) and
// prints "profiled". At the end of stdin (the test is done, or died) it
// closes the proxy and exits.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/internal/proxy"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "idleproxy:", err)
		os.Exit(1)
	}
}

func run() error {
	// Sampled finely enough for a heap profile to say where each of a
	// session's few KiB goes; the profile's records are not in the heap
	// figures.
	runtime.MemProfileRate = 4 << 10
	upstream := flag.String("upstream", "", "upstream libpq connection string")
	maxConns := flag.Int("max-connections", 0, "the upstream's session limit")
	flag.Parse()
	conn, err := connstring.ParseWithEnv(*upstream, map[string]string{}, "")
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	p, err := proxy.New(proxy.Config{
		// Warnings and errors only: a refused or failed session shows in the
		// test's failure output, and no log line per session is kept.
		Logger:     slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Registerer: reg,
		// The measure is of memory, not speed: on a loaded 2-CPU machine
		// PostgreSQL forking its 1,000th backend can take longer than the
		// default 5s, which must not fail the test.
		ConnectTimeout: time.Minute,
		AuthTimeout:    time.Minute,
		Upstreams: []proxy.UpstreamConfig{{
			Name: "idle", Listen: "127.0.0.1:0", Conn: conn, MaxConnections: *maxConns,
		}},
	})
	if err != nil {
		return err
	}
	if err := p.Start(context.Background()); err != nil {
		return err
	}
	defer p.Close()
	port := 0
	for _, a := range p.Addrs()["idle"] {
		if ta, ok := a.(*net.TCPAddr); ok {
			port = ta.Port
		}
	}
	if port == 0 {
		return fmt.Errorf("no TCP listener: %v", p.Addrs())
	}
	fmt.Printf("ready %d\n", port)

	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		cmd, arg, _ := strings.Cut(strings.TrimSpace(in.Text()), " ")
		switch cmd {
		case "measure":
			// Twice: the first GC's finalizers and cleared sync.Pools free
			// more that the second collects.
			runtime.GC()
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			active, err := gauge(reg, "pgtrust_connections_active")
			if err != nil {
				return err
			}
			fmt.Printf("memstats heap_alloc=%d heap_inuse=%d stack_inuse=%d goroutines=%d active=%d\n",
				ms.HeapAlloc, ms.HeapInuse, ms.StackInuse, runtime.NumGoroutine(), active)
		case "profile":
			if err := profile(arg); err != nil {
				return err
			}
			fmt.Println("profiled")
		default:
			return fmt.Errorf("unknown command %q", cmd)
		}
	}
	return in.Err()
}

// profile writes dir/heap.pprof (live heap, as go tool pprof reads it)
// and dir/goroutines.txt (goroutines grouped by stack).
func profile(dir string) error {
	runtime.GC()
	if err := writeProfile(filepath.Join(dir, "heap.pprof"), "heap", 0); err != nil {
		return err
	}
	return writeProfile(filepath.Join(dir, "goroutines.txt"), "goroutine", 1)
}

func writeProfile(file, name string, debug int) error {
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	err = pprof.Lookup(name).WriteTo(f, debug)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// gauge sums the samples of a gauge family.
func gauge(reg *prometheus.Registry, name string) (int, error) {
	mfs, err := reg.Gather()
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return int(sum), nil
}
