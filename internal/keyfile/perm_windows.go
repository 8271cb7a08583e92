//go:build windows

package keyfile

import (
	"errors"
	"io/fs"
	"os"

	"github.com/pgtrust/pgtrust/failure"
)

// CheckPermissions checks only that path is a regular file: libpq does not
// apply its permission rule on Windows, where mode bits mean little.
func CheckPermissions(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return keyMissing(path, err)
		}
		return failure.Wrap(failure.ConfigInvalid, err, "could not stat private key file \"%s\": %s", path, reason(err))
	}
	if !fi.Mode().IsRegular() {
		return failure.New(failure.ConfigInvalid, "private key file \"%s\" is not a regular file", path)
	}
	return nil
}

// FileOwner is unknown on Windows, where files have no uid.
func FileOwner(os.FileInfo) (int, bool) { return 0, false }
