// Command benchproxy runs pgtrust's proxy package with one upstream, as
// `pgtrust proxy` does, plus what the benchmark needs and the CLI does not
// offer: CPU and heap profiles (runtime/pprof) and a settable connection
// limit. bench/run uses it to profile the proxy under pgbench load, and for
// the pgtrust paths when the installed CLI has no proxy command yet.
//
//	benchproxy --upstream DSN [--listen ADDR] [--unix-socket-dir DIR]
//	           [--max-connections N] [--cpuprofile FILE] [--memprofile FILE]
//
// It prints "ready" on stdout once listening and runs until SIGINT or
// SIGTERM, then writes the profiles and shuts the proxy down.
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
	"syscall"
	"time"

	"github.com/pgtrust/pgtrust/connstring"
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
	flag.Parse()
	if *upstream == "" {
		return fmt.Errorf("--upstream is required")
	}
	conn, err := connstring.Parse(*upstream)
	if err != nil {
		return err
	}
	logger := slog.New(slog.DiscardHandler)
	if *verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	p, err := proxy.New(proxy.Config{
		Logger: logger,
		Upstreams: []proxy.UpstreamConfig{{
			Name: "bench", Listen: *listen, UnixSocketDir: *socketDir, UnixSocketPort: *socketPort,
			Conn: conn, MaxConnections: *maxConns,
		}},
	})
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
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := p.Start(ctx); err != nil {
		return err
	}
	fmt.Println("ready")
	<-ctx.Done()
	if *memProfile != "" {
		runtime.GC()
		f, err := os.Create(*memProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.WriteHeapProfile(f); err != nil {
			return err
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = p.Shutdown(sctx)
	return nil
}
