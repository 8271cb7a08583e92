//go:build unix && !linux

package pgproc

import "syscall"

// sysProcAttr runs the child as cred, optionally in its own process group.
// Outside Linux there is no parent-death signal: a pgtrust killed with
// SIGKILL leaves its throwaway server running until its directory is
// removed (a normal exit stops it).
func sysProcAttr(cred *syscall.Credential, ownGroup bool) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred, Setpgid: ownGroup}
}
