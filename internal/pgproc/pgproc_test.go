package pgproc

import (
	"os"
	"path/filepath"
	"testing"
)

func TestReady(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "postmaster.pid")
	write := func(status string) {
		content := "4242\n/data\n1700000000\n5432\n/tmp\n127.0.0.1\n  5432001  12\n" + status + "\n"
		if err := os.WriteFile(pidFile, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if Ready(pidFile, "4242") {
		t.Fatal("ready without a pid file")
	}
	write("starting")
	if Ready(pidFile, "4242") {
		t.Fatal("ready while starting")
	}
	write("ready   ")
	if !Ready(pidFile, "4242") || Ready(pidFile, "1") {
		t.Fatal("ready state or pid not recognised")
	}
}

func TestProcessesInFindsThisProcess(t *testing.T) {
	wd, _ := os.Getwd()
	found := false
	for _, pid := range ProcessesIn(wd) {
		found = found || pid == os.Getpid()
	}
	if !found {
		t.Fatalf("this test process (cwd %s) not found", wd)
	}
	if p, err := FreePort(); err != nil || p <= 0 {
		t.Fatalf("FreePort: %d %v", p, err)
	}
}
