package secretscan

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func jsonLines(t *testing.T, evs ...event) string {
	t.Helper()
	var b strings.Builder
	for _, ev := range evs {
		j, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(j)
		b.WriteByte('\n')
	}
	return b.String()
}

// TestScanFindsLeak: a log line holding a known password, one holding a PEM
// private key header and a non-JSON line holding a passphrase are each
// found; a secret inside a test's name (go test's own "=== RUN" line) is
// not, and neither is a clean line.
func TestScanFindsLeak(t *testing.T) {
	in := jsonLines(t,
		event{Action: "output", Package: "p", Test: "TestA", Output: "=== RUN   TestA/password=hunter2\n"},
		event{Action: "output", Package: "p", Test: "TestA", Output: "    a_test.go:12: level=WARN msg=\"auth\" dsn=\"user=scram password=scram-Secret-7\"\n"},
		event{Action: "output", Package: "p", Test: "TestA", Output: "    a_test.go:13: -----BEGIN EC PRIVATE KEY-----\n"},
		event{Action: "output", Package: "p", Test: "TestA", Output: "    a_test.go:14: password=******** host=db\n"},
		event{Action: "pass", Package: "p", Test: "TestA"},
		event{Action: "output", Package: "p", Output: "ok  \tp\t0.1s\n"},
		event{Action: "pass", Package: "p"},
	) + "build error: sslpassword s3cret-Passphrase\n"
	var out bytes.Buffer
	rep, err := Scan(strings.NewReader(in), &out)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Findings) != 3 {
		t.Fatalf("want 3 findings, got %v", rep.Findings)
	}
	want := []string{"role scram password", "PEM private key", "key passphrase (testPassword)"}
	for i, f := range rep.Findings {
		if !strings.Contains(strings.Join(f.Secrets, ","), want[i]) {
			t.Errorf("finding %d = %v, want %q", i, f, want[i])
		}
		// A finding names the secret, never shows it.
		if strings.Contains(f.String(), "scram-Secret-7") || strings.Contains(f.String(), "s3cret-Passphrase") {
			t.Errorf("finding shows the secret: %s", f)
		}
	}
	if rep.Passed != 1 || rep.Failed != 0 || rep.Packages != 1 || len(rep.FailedPackages) != 0 {
		t.Fatalf("counts: %+v", rep)
	}
	if !strings.Contains(out.String(), "ok  \tp\t0.1s") {
		t.Fatalf("summary lacks the result line: %q", out.String())
	}
}

// TestScanReportsFailures: a failed test's output reaches the summary and
// its package is reported failed.
func TestScanReportsFailures(t *testing.T) {
	in := jsonLines(t,
		event{Action: "output", Package: "q", Test: "TestB", Output: "    b_test.go:3: got 1, want 2\n"},
		event{Action: "fail", Package: "q", Test: "TestB"},
		event{Action: "output", Package: "q", Output: "FAIL\tq\t0.2s\n"},
		event{Action: "fail", Package: "q"},
	)
	var out bytes.Buffer
	rep, err := Scan(strings.NewReader(in), &out)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Failed != 1 || len(rep.FailedPackages) != 1 || rep.FailedPackages[0] != "q" || len(rep.Findings) != 0 {
		t.Fatalf("report %+v", rep)
	}
	if !strings.Contains(out.String(), "got 1, want 2") || !strings.Contains(out.String(), "FAIL\tq") {
		t.Fatalf("summary %q", out.String())
	}
}

// TestCommandFailsOnLeak runs the real command on real go test -json output
// of a test that records a secret, as scripts/test does, and expects exit
// status 1 and a LEAK line naming the secret without showing it.
func TestCommandFailsOnLeak(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs go test")
	}
	dir := t.TempDir()
	mod := "module leak\n\ngo 1.22\n"
	src := "package leak\n\nimport \"testing\"\n\nfunc TestLeak(t *testing.T) { t.Log(\"connecting with password=pw-secret\") }\n"
	for name, data := range map[string]string{"go.mod": mod, "leak_test.go": src} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("go", "test", "-count=1", "-json", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=", "GOWORK=off")
	stream, err := cmd.Output()
	if err != nil {
		t.Fatalf("go test -json: %v\n%s", err, stream)
	}
	scan := exec.Command("go", "run", "./cmd/secretscan")
	scan.Stdin = bytes.NewReader(stream)
	out, err := scan.CombinedOutput()
	var ee *exec.ExitError
	if err == nil || !asExit(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("secretscan exited %v, want status 1:\n%s", err, out)
	}
	if !strings.Contains(string(out), "LEAK: leak TestLeak: output holds role pw password") || strings.Contains(string(out), "pw-secret") {
		t.Fatalf("output:\n%s", out)
	}
	if !strings.Contains(string(out), "tests: 1 passed, 0 failed") {
		t.Fatalf("output lacks the closing line:\n%s", out)
	}
}

func asExit(err error, ee **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	*ee = e
	return ok
}
