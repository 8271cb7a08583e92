package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// freePort prints a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer l.Close()
	fmt.Println(l.Addr().(*net.TCPAddr).Port)
	return nil
}

// hold opens n authenticated connections and keeps them idle until SIGTERM,
// SIGINT or EOF on stdin, so that the memory of whatever sits in between
// (the proxy) can be read with all of them open.
func hold(args []string) error {
	fs := flag.NewFlagSet("hold", flag.ContinueOnError)
	n := fs.Int("n", 500, "number of connections")
	dsn := fs.String("dsn", "", "libpq connection string")
	parallel := fs.Int("parallel", 16, "connections opened at once")
	// A background job of a script has /dev/null as stdin: its EOF would
	// close the connections at once, before anyone measured them.
	untilSignal := fs.Bool("until-signal", false, "ignore stdin: hold until SIGTERM or SIGINT only")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := pgconn.ParseConfig(*dsn)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	conns := make([]*pgconn.PgConn, *n)
	errs := make(chan error, *n)
	sem := make(chan struct{}, *parallel)
	for i := range conns {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			c, err := pgconn.ConnectConfig(cctx, cfg)
			if err == nil {
				// One round trip proves the session works end to end.
				err = c.Exec(cctx, "SELECT 1").Close()
			}
			conns[i] = c
			errs <- err
		}()
	}
	var firstErr error
	for range conns {
		if err := <-errs; err != nil && firstErr == nil {
			firstErr = err
		}
	}
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close(context.Background())
			}
		}
	}()
	if firstErr != nil {
		return fmt.Errorf("open %d connections: %w", *n, firstErr)
	}
	fmt.Printf("ready %d\n", *n)
	stdinEOF := make(chan struct{})
	if !*untilSignal {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			close(stdinEOF)
		}()
	}
	select {
	case <-ctx.Done():
	case <-stdinEOF:
	}
	return nil
}

// latency prints "p50_ms p99_ms count" over the transaction latencies of
// pgbench --log files (third field: latency in microseconds).
func latency(files []string) error {
	var us []float64
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 3 {
				continue
			}
			v, err := strconv.ParseFloat(fields[2], 64)
			if err != nil {
				f.Close()
				return fmt.Errorf("%s: %q: %v", name, sc.Text(), err)
			}
			us = append(us, v)
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return err
		}
	}
	if len(us) == 0 {
		return fmt.Errorf("no transactions in %v", files)
	}
	slices.Sort(us)
	fmt.Printf("%.4f %.4f %d\n", percentile(us, 50)/1000, percentile(us, 99)/1000, len(us))
	return nil
}

// percentile of sorted values, nearest-rank.
func percentile(sorted []float64, p float64) float64 {
	i := int(float64(len(sorted))*p/100+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}
