// Package pgproc runs PostgreSQL server processes for pgtrust's throwaway
// servers (quickstart's internal/devserver and the tests' internal/pgtest):
// as the postgres OS user when pgtrust runs as root (initdb and postgres
// refuse root), tied to pgtrust's life by a parent-death signal, and found
// again by working directory when something must be cleaned up.
package pgproc

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
)

// The parent-death signal belongs to the thread that forked the child, not
// the process: if that thread exits, the kernel kills the child. Children
// are therefore forked from one goroutine locked to its thread forever.
var (
	spawnOnce sync.Once
	spawnReqs chan spawnReq
)

type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

// Start starts cmd from the spawner thread.
func Start(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnReqs = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread lives as long as the process
			for r := range spawnReqs {
				r.done <- r.cmd.Start()
			}
		}()
	})
	done := make(chan error, 1)
	spawnReqs <- spawnReq{cmd: cmd, done: done}
	return <-done
}

// Ready reports whether postmaster.pid says pid accepts connections.
func Ready(pidFile, pid string) bool {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return false
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		lines = append(lines, strings.TrimSpace(sc.Text()))
	}
	return len(lines) >= 8 && lines[0] == pid && lines[7] == "ready"
}

// FreePort asks the kernel for a free 127.0.0.1 TCP port.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ProcessesIn returns the live (not zombie) processes whose working
// directory is dir: a postmaster and its backends run in their data
// directory.
func ProcessesIn(dir string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd")); err != nil || cwd != dir {
			continue
		}
		if stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil {
			if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
				continue
			}
		}
		pids = append(pids, pid)
	}
	return pids
}
