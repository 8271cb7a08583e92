//go:build unix

package pgproc

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
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
	cmd.SysProcAttr = sysProcAttr(id.cred, ownGroup)
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
