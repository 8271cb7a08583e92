// Command benchproxy runs pgtrust's proxy package with one upstream, as
// `pgtrust proxy` does, plus what the benchmark needs and the CLI does not
// offer: CPU and heap profiles (runtime/pprof) and a settable connection
// limit. bench/run uses it to profile the proxy under pgbench load, and for
// the pgtrust paths when the installed CLI has no proxy command yet.
// --pool-mode pools the server connections as [upstreams.NAME.pool] does;
// pooling needs the proxy to authenticate the client itself, so it also
// sets the upstream's auth (the role, default the dsn's user, opened with
// the dsn's own credentials), which the proxy allows on loopback only.
//
//	benchproxy --upstream DSN [--listen ADDR] [--unix-socket-dir DIR]
//	           [--max-connections N] [--cpuprofile FILE] [--memprofile FILE]
//	           [--pool-mode session|transaction --pool-size N [--auth-role ROLE]]
//
// Like `pgtrust proxy`, it sets GOMAXPROCS to proxy.SidecarProcs (half the
// CPUs) unless the GOMAXPROCS environment variable is set, so that its
// profiles show the proxy as the command runs it.
//
// It prints "ready gomaxprocs=N" on stdout once listening and runs until SIGINT or
// SIGTERM, then writes the profiles (with --memprofile also a "memstats"
// line on stdout: goroutines, heap and stack in use) and shuts the proxy
// down.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/internal/pooling"
	"github.com/pgtrust/pgtrust/internal/proxy"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchproxy:", err)
		os.Exit(1)
	}
}

func run() error {
	upstream := flag.String("upstream", "", "upstream libpq connection string (verify-full)")
	listen := flag.String("listen", "", "local TCP address")
	socketDir := flag.String("unix-socket-dir", "", "directory of the local Unix socket")
	socketPort := flag.Int("unix-socket-port", 0, "port number in the socket's name (default: the listen port, else 5432)")
	maxConns := flag.Int("max-connections", 1000, "session limit of the upstream")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to FILE")
	memProfile := flag.String("memprofile", "", "write a heap profile at exit to FILE")
	verbose := flag.Bool("v", false, "log sessions to stderr")
	poolMode := flag.String("pool-mode", "", `pool server connections: "session" or "transaction" (implies the upstream's auth)`)
	poolSize := flag.Int("pool-size", 0, "server connections per (database, role) (default: the proxy's, 20)")
	authRole := flag.String("auth-role", "", "with --pool-mode: the role the proxy opens server connections as (default: the dsn's user)")
	flag.Parse()
	if *upstream == "" {
		return fmt.Errorf("--upstream is required")
	}
	conn, err := connstring.Parse(*upstream)
	if err != nil {
		return err
	}
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(proxy.SidecarProcs(runtime.GOMAXPROCS(0)))
	}
	logger := slog.New(slog.DiscardHandler)
	if *verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	u := proxy.UpstreamConfig{
		Name: "bench", Listen: *listen, UnixSocketDir: *socketDir, UnixSocketPort: *socketPort,
		Conn: conn, MaxConnections: *maxConns,
	}
	if *poolMode != "" {
		u.Auth = &proxy.UpstreamAuth{Role: *authRole}
		u.Pool = &proxy.PoolConfig{Mode: pooling.Mode(*poolMode), Size: *poolSize}
	} else if *poolSize != 0 || *authRole != "" {
		return fmt.Errorf("--pool-size and --auth-role need --pool-mode")
	}
	reg := prometheus.NewRegistry()
	p, err := proxy.New(proxy.Config{Logger: logger, Upstreams: []proxy.UpstreamConfig{u}, Registerer: reg})
	if err != nil {
		return err
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	sig, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The proxy's own context ends after the heap profile: its sessions
	// end with it, and the profile is of them still open.
	ctx, cancelRun := context.WithCancel(context.Background())
	defer cancelRun()
	if err := p.Start(ctx); err != nil {
		return err
	}
	fmt.Printf("ready gomaxprocs=%d\n", runtime.GOMAXPROCS(0))
	<-sig.Done()
	if *memProfile != "" {
		runtime.GC()
		// Stacks are not in the heap profile: say what they and the heap
		// hold, with the sessions still open.
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		fmt.Printf("memstats goroutines=%d parked=%d heap_inuse_kib=%d stack_inuse_kib=%d heap_released_kib=%d sys_kib=%d rss_kib=%s\n",
			runtime.NumGoroutine(), parked(reg), ms.HeapInuse>>10, ms.StackInuse>>10, ms.HeapReleased>>10, ms.Sys>>10, rssKiB())
		f, err := os.Create(*memProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.WriteHeapProfile(f); err != nil {
			return err
		}
	}
	cancelRun()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = p.Shutdown(sctx)
	return nil
}

// parked is the proxy's pgtrust_pool_clients_parked: idle pooled clients
// without a goroutine.
func parked(reg *prometheus.Registry) int {
	mfs, err := reg.Gather()
	if err != nil {
		return -1
	}
	n := 0
	for _, mf := range mfs {
		if mf.GetName() == "pgtrust_pool_clients_parked" {
			for _, m := range mf.GetMetric() {
				n += int(m.GetGauge().GetValue())
			}
		}
	}
	return n
}

// rssKiB is the process's VmRSS in KiB, as /proc/self/status says ("?"
// where there is none).
func rssKiB() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			return f[1]
		}
	}
	return "?"
}
