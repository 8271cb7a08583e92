//go:build !unix

package pgproc

import (
	"errors"
	"os/exec"
)

// Identity is who server processes run as. Outside Unix, throwaway servers
// are not supported: PostgreSQL's initdb/postgres are run as another OS
// user there with mechanisms this package does not implement.
type Identity struct{ UID, GID int }

var errNotUnix = errors.New("throwaway PostgreSQL servers (quickstart, tests) need Linux, macOS or a BSD")

// ServerIdentity reports that this platform is not supported.
func ServerIdentity() (Identity, error) { return Identity{}, errNotUnix }

// Command builds a plain command.
func (Identity) Command(_ bool, name string, args ...string) *exec.Cmd {
	return exec.Command(name, args...)
}

// Chown is a no-op.
func (Identity) Chown(string) error { return nil }

// ChownTree is a no-op.
func (Identity) ChownTree(string) error { return nil }
