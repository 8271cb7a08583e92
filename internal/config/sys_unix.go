//go:build unix

package config

import (
	"syscall"
)

// canCreateIn reports whether this process may create files in dir
// (access(2) with W_OK|X_OK).
func canCreateIn(dir string) error { return syscall.Access(dir, 2|1) }
