//go:build !unix

package certagent

import "os/exec"

func setProcessGroup(*exec.Cmd) {}
