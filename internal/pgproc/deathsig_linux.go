package pgproc

import "syscall"

// sysProcAttr runs the child as cred, optionally in its own process group,
// and has the kernel kill it with SIGKILL if pgtrust dies (Linux only).
func sysProcAttr(cred *syscall.Credential, ownGroup bool) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred, Setpgid: ownGroup, Pdeathsig: syscall.SIGKILL}
}
