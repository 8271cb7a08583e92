//go:build linux

package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/internal/faultnet"
	"github.com/pgtrust/pgtrust/internal/pgproc"
	"github.com/pgtrust/pgtrust/internal/pgtest"
)

// killServer SIGKILLs the whole PostgreSQL server (postmaster and every
// backend, as when the host or container dies) and waits until no process
// is left in its data directory.
func killServer(t *testing.T, srv *pgtest.Server) {
	t.Helper()
	pids := pgtest.ProcessesIn(srv.DataDir)
	if len(pids) == 0 {
		t.Fatal("no server process to kill")
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	waitFor(t, "the killed server's processes to be gone", 30*time.Second, func() bool {
		for _, pid := range pgtest.ProcessesIn(srv.DataDir) {
			_ = syscall.Kill(pid, syscall.SIGKILL) // forked while we killed
		}
		return len(pgtest.ProcessesIn(srv.DataDir)) == 0
	})
}

// relaunchKilled starts postgres again on the killed server's data
// directory and port (crash recovery included) and waits until it accepts
// connections. pgtest's own cleanup stops it (pg_ctl stop reads the new
// postmaster.pid), so the harness does not know the server ever died.
func relaunchKilled(t *testing.T, srv *pgtest.Server) {
	t.Helper()
	bin, err := pgtest.BinDir(srv.Version)
	if err != nil {
		t.Fatal(err)
	}
	who, err := pgproc.ServerIdentity()
	if err != nil {
		t.Fatal(err)
	}
	logf, err := os.OpenFile(filepath.Join(srv.Dir, "server.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := who.Command(false, filepath.Join(bin, "postgres"), "-D", srv.DataDir)
	cmd.Dir = srv.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := pgproc.Start(cmd); err != nil {
		t.Fatalf("relaunch postgres: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	pid := strconv.Itoa(cmd.Process.Pid)
	waitFor(t, "the relaunched server to accept connections", 60*time.Second, func() bool {
		select {
		case <-exited:
			t.Fatalf("relaunched postgres exited:\n%s", srv.Log())
		default:
		}
		return pgproc.Ready(filepath.Join(srv.DataDir, "postmaster.pid"), pid)
	})
}

// TestFaultServerKilledMidCopy SIGKILLs the upstream PostgreSQL in the
// middle of a large COPY through the proxy, in both directions (pgx
// streaming COPY FROM STDIN; psql, the libpq oracle, reading COPY TO
// STDOUT). The copying client must get a connection error promptly, not
// hang; a client connecting while the server is down gets the proxy's
// classified error; once the server is back the proxy serves again, and
// nothing leaked.
func TestFaultServerKilledMidCopy(t *testing.T) {
	e := newEnv(t)
	p := startProxy(t, Config{Upstreams: []UpstreamConfig{{Name: "main", Listen: "127.0.0.1:0", Conn: e.upstream(t)}}})
	port := p.port(t, "main")
	setup, err := pgxConnect(t, port, "sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := setup.Exec(context.Background(), "CREATE TABLE sink (id int, payload text)"); err != nil {
		t.Fatal(err)
	}
	setup.Close(context.Background())
	freshQuery(t, port)
	before := faultnet.Count(t)

	t.Run("COPY FROM STDIN, pgx", func(t *testing.T) {
		c, err := pgxConnect(t, port, "sslmode=disable")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(context.Background())
		// An endless COPY stream; the server is killed once 8 MB went out,
		// and the stream keeps going: the client must learn of the death
		// from the connection, not from its input ending.
		pr, pw := io.Pipe()
		halfway := make(chan struct{})
		go func() {
			line := []byte("1\t" + strings.Repeat("x", 200) + "\n")
			for sent := 0; ; sent += len(line) {
				if _, err := pw.Write(line); err != nil {
					return
				}
				if sent < 8<<20 && sent+len(line) >= 8<<20 {
					close(halfway)
				}
			}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		copyErr := make(chan error, 1)
		go func() {
			_, err := c.PgConn().CopyFrom(ctx, pr, "COPY sink FROM STDIN")
			copyErr <- err
		}()
		select {
		case <-halfway:
		case err := <-copyErr:
			t.Fatalf("COPY ended before the server was killed: %v", err)
		}
		at := time.Now()
		killServer(t, e.srv)
		err = <-copyErr
		pr.Close()
		took := time.Since(at)
		t.Logf("COPY FROM STDIN: error %v after the kill: %v", took.Round(time.Millisecond), err)
		if err == nil {
			t.Fatal("COPY FROM STDIN succeeded although the server was killed")
		}
		if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
			t.Fatalf("the client hung until its own deadline: %v", err)
		}
		if !isConnLost(err) {
			t.Errorf("COPY FROM error does not say the connection was lost: %v", err)
		}
		if !c.IsClosed() {
			t.Errorf("pgx still takes the connection for open")
		}

		// While the server is down, a new client gets the proxy's own
		// classified error, not a silent close.
		_, err = pgxConnect(t, port, "sslmode=disable")
		t.Logf("connect while the server is down: %v", err)
		if err == nil || !strings.Contains(err.Error(), "pgtrust: upstream main: connection_refused") {
			t.Errorf("connect while down: %v, want the proxy's connection_refused error", err)
		}
		relaunchKilled(t, e.srv)
		freshQuery(t, port)
	})

	t.Run("COPY TO STDOUT, psql", func(t *testing.T) {
		dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=app dbname=appdb sslmode=disable", port)
		cmd := exec.Command(pgtest.PsqlPath(), "-X", "-q", "-d", dsn, "-c",
			// In the select list, generate_series streams (in FROM it would
			// materialize all its rows before the first is sent).
			"COPY (SELECT generate_series(1, 100000000), repeat('y', 200)) TO STDOUT")
		cmd.Env = []string{"HOME=" + pgtest.EmptyHome(t), "LC_ALL=C", "PATH=/usr/bin:/bin", "PGCONNECT_TIMEOUT=10"}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Guard against a hang: psql has no timeout of its own.
		guard := time.AfterFunc(60*time.Second, func() { _ = cmd.Process.Kill() })
		defer guard.Stop()
		r := bufio.NewReaderSize(stdout, 64<<10)
		buf := make([]byte, 64<<10)
		var got int
		var at time.Time
		for {
			n, err := r.Read(buf)
			got += n
			if at.IsZero() && got >= 8<<20 {
				at = time.Now()
				killServer(t, e.srv)
			}
			if err != nil {
				break
			}
		}
		werr := cmd.Wait()
		if at.IsZero() {
			t.Fatalf("COPY TO STDOUT ended after %d bytes, before the kill: %v %s", got, werr, stderr.String())
		}
		took := time.Since(at)
		msg := strings.TrimSpace(stderr.String())
		t.Logf("COPY TO STDOUT: psql exited %v %v after the kill, %d MB received: %s", werr, took.Round(time.Millisecond), got>>20, msg)
		if werr == nil {
			t.Fatal("psql succeeded although the server was killed")
		}
		// libpq's words for a connection that ended mid-result.
		if !strings.Contains(msg, "server closed the connection unexpectedly") && !strings.Contains(msg, "connection to server was lost") {
			t.Errorf("psql's error does not say the connection was lost: %q", msg)
		}
		relaunchKilled(t, e.srv)
		freshQuery(t, port)
	})

	freshQuery(t, port)
	waitFor(t, "the proxy's sessions to end", 15*time.Second, func() bool { return p.HealthStatus().Upstreams[0].ActiveConnections == 0 })
	faultnet.Settle(t, "server-killed campaign", before, 4, 20*time.Second)
}

// isConnLost says whether err is what a client sees when its connection
// ends under it: the peer's reset or EOF, or (pgx) the connection it closed
// itself after a failed write.
func isConnLost(err error) bool {
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed)
}
