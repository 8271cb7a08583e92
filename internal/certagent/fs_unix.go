//go:build unix

package certagent

import (
	"fmt"
	"os"
	"syscall"
)

// oNoFollow makes open fail on a symbolic link instead of following it;
// oNonBlock keeps a FIFO swapped in after the Lstat from blocking open.
const (
	oNoFollow = syscall.O_NOFOLLOW
	oNonBlock = syscall.O_NONBLOCK
)

// linkCount is the number of hard links of fi's file.
func linkCount(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Nlink)
	}
	return 1
}

// dirRisks says who besides the agent's own user may write dir (empty
// when nobody): such a user could swap the files the agent reads and replaces.
func dirRisks(dir string) []string {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	var why []string
	if int(st.Uid) != os.Geteuid() {
		why = append(why, fmt.Sprintf("it is owned by uid %d, not the agent's uid %d", st.Uid, os.Geteuid()))
	}
	perm := fi.Mode().Perm()
	if perm&0o020 != 0 {
		why = append(why, fmt.Sprintf("group %d may write it (mode %04o)", st.Gid, perm))
	}
	if perm&0o002 != 0 {
		why = append(why, fmt.Sprintf("every user may write it (mode %04o)", perm))
	}
	return why
}
