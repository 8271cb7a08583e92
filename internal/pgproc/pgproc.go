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
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Identity is who server processes run as: the current user, or postgres
// when the current user is root.
type Identity struct {
	cred     *syscall.Credential // nil: the current user
	UID, GID int
}

var (
	identityOnce sync.Once
	identity     Identity
	identityErr  error
)

// ServerIdentity returns the identity server processes run as.
func ServerIdentity() (Identity, error) {
	identityOnce.Do(func() {
		if os.Geteuid() != 0 {
			identity = Identity{UID: os.Getuid(), GID: os.Getgid()}
			return
		}
		u, err := user.Lookup("postgres")
		if err != nil {
			identityErr = fmt.Errorf("running PostgreSQL as root needs the OS user postgres (apt-get install -y postgresql-15 creates it): %w", err)
			return
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		identity = Identity{cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, UID: uid, GID: gid}
	})
	return identity, identityErr
}

// Command builds a command that runs as the identity, in a minimal
// environment, killed if pgtrust dies (start it with Start so the
// parent-death signal holds). ownGroup puts it in its own process group,
// so a terminal's Ctrl-C reaches pgtrust first.
func (id Identity) Command(ownGroup bool, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: id.cred, Setpgid: ownGroup, Pdeathsig: syscall.SIGKILL}
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C", "LANG=C", "TZ=UTC"}
	return cmd
}

// Chown gives path to the identity (a no-op when not root).
func (id Identity) Chown(path string) error {
	if id.cred == nil {
		return nil
	}
	return os.Lchown(path, id.UID, id.GID)
}

// ChownTree gives a whole tree to the identity.
func (id Identity) ChownTree(root string) error {
	if id.cred == nil {
		return nil
	}
	return filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, id.UID, id.GID)
	})
}

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
