//go:build !windows

package keyfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"

	"github.com/pgtrust/pgtrust/failure"
)

// CheckPermissions applies libpq's private-key permission rule to path
// (following symlinks, as stat does). A root-owned key may be group-readable
// (0640); any other key must have no group or world bits. User bits are not
// checked, exactly as in libpq, so 0700 passes.
func CheckPermissions(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return keyMissing(path, err)
		}
		return failure.Wrap(failure.ConfigInvalid, err,
			"could not stat private key file \"%s\": %s", path, reason(err)).
			WithEvidence("%v", err).
			WithFix("make the directories leading to %s searchable by uid %d", path, os.Getuid())
	}
	if !fi.Mode().IsRegular() {
		return failure.New(failure.ConfigInvalid, "private key file \"%s\" is not a regular file", path).
			WithEvidence("%s is a %s", path, fileKind(fi.Mode())).
			WithFix("point sslkey at the key file itself")
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	mode := uint32(fi.Mode().Perm())
	var bad uint32
	if st.Uid == 0 {
		bad = mode & 0o037 // S_IWGRP|S_IXGRP|S_IRWXO
	} else {
		bad = mode & 0o077 // S_IRWXG|S_IRWXO
	}
	if bad == 0 {
		return nil
	}
	e := failure.New(failure.KeyPermissions,
		"private key file \"%s\" has group or world access; file must have permissions u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) or less if owned by root", path).
		WithEvidence("mode %04o, owner uid %d", mode, st.Uid)
	q := shellQuote(path)
	uid := os.Getuid()
	switch {
	case st.Uid == 0 && uid != 0:
		// chmod 0600 would lock the current user out of a root-owned file.
		e.Fix = fmt.Sprintf("as root: chmod 0640 %s (and chgrp a group uid %d is in), or chown %d %s && chmod 0600 %s", q, uid, uid, q, q)
	case st.Uid != 0 && int(st.Uid) != uid:
		e.Fix = fmt.Sprintf("chmod 0600 %s (the file is owned by uid %d, not the current uid %d: if it becomes unreadable, chown %d %s)", q, st.Uid, uid, uid, q)
	default:
		e.Fix = fmt.Sprintf("chmod 0600 %s", q)
	}
	return e
}

func fileKind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeDevice != 0:
		return "device"
	default:
		return "non-regular file (" + m.Type().String() + ")"
	}
}

// FileOwner returns the uid that owns fi.
func FileOwner(fi os.FileInfo) (int, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return int(st.Uid), true
}
