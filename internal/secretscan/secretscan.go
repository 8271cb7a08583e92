// Package secretscan checks the test suite's own output for the secrets the
// tests use: the passwords of the roles that internal/pgtest servers are set
// up with, the sslpassword and key passphrases of the key files the tests
// write, and PEM private keys. A secret that reaches a log line, an error
// message or a CLI's output during a test is a leak the code would commit in
// production too.
//
// Tests hand what they capture (a proxy's slog output, a CLI's stdout and
// stderr) to Record; scripts/test runs the suite with go test -json and
// PGTRUST_SECRETSCAN=1 and pipes the result through cmd/secretscan, which
// fails on any hit.
package secretscan

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// Secret is one known test secret.
type Secret struct {
	Name  string // where it comes from, shown instead of the value
	Value string
}

// Known are the secrets the tests use. Keep in step with the tests: a new
// password or passphrase in a test belongs here.
var Known = []Secret{
	{"role pw password (pgtrust_test.go, plan_test.go)", "pw-secret"},
	{"role scram password (internal/proxy helpers)", "scram-Secret-7"},
	{"role scram password (pgtls features_test.go)", "scram-pw"},
	{"role md5user password (pgtls features_test.go)", "md5-pw"},
	{"role clear password (pgtls features_test.go)", "clear-pw"},
	{"role carol password (internal/doctor)", "pw-very-secret-42"},
	{"key passphrase (testPassword)", "s3cret-Passphrase"},
	{"key passphrase (cmd/pgtrust, connstring)", "s3cret pass"},
	{"sslpassword in tests", "s3cret"},
	{"connstring test password", "s3cr3t-pw"},
	{"connstring/config test password", "hunter2"},
	{"keyfile fuzz seed passphrase", "fuzz-Key-Pass-9"},
	{"config fuzz seed sslpassword", "fuzz-Secret-1"},
	{"scram read secret (internal/scram)", "g1-Scram-Secret-1"},
	{"scram readwrite secret (internal/scram)", "g1-Scram-Secret-2"},
	{"scram wrong secret (internal/scram)", "g1-Wrong-Secret-3"},
	{"vault token (certs vault tests)", "hvs.R2-vault-Token-secret-1"},
	{"vault AppRole secret_id (certs vault tests)", "r2-Secret-ID-value-2"},
	{"vault Kubernetes JWT (certs vault tests)", "eyJhbGciOiJSUzI1NiJ9.r2-k8s-JWT-payload-3.sig"},
	{"step-ca provisioner key password (internal/steptest)", "r3-step-Provisioner-pw-5"},
	{"MCP HTTP bearer token (internal/mcphttp)", "r13-mcp-Bearer-Token-secret-1"},
	{"MCP HTTP wrong token, same length (internal/mcphttp)", "r13-mcp-Bearer-Wrong-secret-2"},
	{"DSN password (cmd/pgtrust mcp tests)", "r13-dsn-Password-6"},
	{"fuzzed DSN password (internal/dbenv FuzzResolve)", "fz-Resolve-Password-7"},
	{"MCP CLI bearer token (cmd/pgtrust mcp tests)", "r13-mcp-Cli-Token-secret-4"},
	{"MCP CLI wrong token (cmd/pgtrust mcp tests)", "r13-mcp-Cli-Wrong-secret-5"},
	{"MCP HTTP wrong token, other length (internal/mcphttp)", "r13-mcp-Other-len-Token-secret-3-longer"},
}

// pemPrivateKey matches the header of any PEM private key block ("PRIVATE
// KEY", "RSA PRIVATE KEY", "ENCRYPTED PRIVATE KEY", ...).
var pemPrivateKey = regexp.MustCompile(`-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----`)

// EnvVar turns Record on.
const EnvVar = "PGTRUST_SECRETSCAN"

// Record logs text (a captured log, a command's output) under what when
// PGTRUST_SECRETSCAN is set, so that the scan of the suite's output sees it;
// otherwise it does nothing and passing tests stay quiet.
func Record(t testing.TB, what, text string) {
	t.Helper()
	if os.Getenv(EnvVar) == "" || text == "" {
		return
	}
	t.Logf("secretscan: %s:\n%s", what, text)
}

// Line returns the names of the known secrets (and "PEM private key") that
// line holds, in Known's order.
func Line(line string) []string {
	var hits []string
	for _, s := range Known {
		if strings.Contains(line, s.Value) {
			hits = append(hits, s.Name)
		}
	}
	if pemPrivateKey.MatchString(line) {
		hits = append(hits, "PEM private key")
	}
	return hits
}

// Finding is a line of test output that holds a secret.
type Finding struct {
	Package, Test string
	Secrets       []string
}

func (f Finding) String() string {
	where := f.Package
	if f.Test != "" {
		where += " " + f.Test
	}
	return fmt.Sprintf("%s: output holds %s", where, strings.Join(f.Secrets, ", "))
}

// event is the part of a go test -json (test2json) event the scan reads.
type event struct {
	Action  string
	Package string
	Test    string
	Output  string
}

// framework reports lines that go test itself writes: test names are chosen
// by the test's author (a table's input), not output of the code.
func framework(line string) bool {
	l := strings.TrimLeft(line, " ")
	for _, p := range []string{"=== RUN", "=== PAUSE", "=== CONT", "=== NAME", "--- PASS:", "--- FAIL:", "--- SKIP:"} {
		if strings.HasPrefix(l, p) {
			return true
		}
	}
	return false
}

// Report is the outcome of scanning a go test -json stream.
type Report struct {
	Findings       []Finding
	FailedPackages []string // packages whose run failed (a failed test or build)
	Packages       int      // packages that reported a result
	Passed, Failed int      // tests, subtests and fuzz seeds
}

// Scan reads a go test -json stream. It writes to summary, if not nil, the
// package result lines ("ok ...", "FAIL ...") and the full output of every
// failed test, so the stream doubles as the readable log of the run. Lines
// that are not JSON (build errors) are copied to summary and scanned too.
func Scan(r io.Reader, summary io.Writer) (*Report, error) {
	rep := &Report{}
	type key struct{ pkg, test string }
	outputs := map[key][]string{}
	seen := map[key]bool{}
	failed := map[string]bool{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1<<20), 64<<20)
	for sc.Scan() {
		raw := sc.Text()
		var ev event
		if !strings.HasPrefix(raw, "{") || json.Unmarshal([]byte(raw), &ev) != nil {
			if hits := Line(raw); len(hits) > 0 {
				rep.Findings = append(rep.Findings, Finding{Package: "(not JSON)", Secrets: hits})
			}
			if summary != nil {
				fmt.Fprintln(summary, raw)
			}
			continue
		}
		k := key{ev.Package, ev.Test}
		switch ev.Action {
		case "output":
			if !framework(ev.Output) {
				if hits := Line(ev.Output); len(hits) > 0 {
					rep.Findings = append(rep.Findings, Finding{Package: ev.Package, Test: ev.Test, Secrets: hits})
				}
			}
			outputs[k] = append(outputs[k], ev.Output)
		case "pass", "fail":
			if ev.Test != "" {
				if ev.Action == "pass" {
					rep.Passed++
				} else {
					rep.Failed++
					if summary != nil {
						fmt.Fprint(summary, strings.Join(outputs[k], ""))
					}
				}
				delete(outputs, k)
				continue
			}
			if !seen[k] {
				rep.Packages++
			}
			seen[k] = true
			if ev.Action == "fail" {
				failed[ev.Package] = true
			}
			if summary != nil {
				for _, l := range outputs[k] {
					// A failing package's own output (a build error, a
					// panic outside a test) and every package's result line.
					if isResultLine(l) || (ev.Action == "fail" && l != "PASS\n" && l != "FAIL\n") {
						fmt.Fprint(summary, l)
					}
				}
			}
			delete(outputs, k)
		case "skip":
			delete(outputs, k)
		}
	}
	if err := sc.Err(); err != nil {
		return rep, err
	}
	for p := range failed {
		rep.FailedPackages = append(rep.FailedPackages, p)
	}
	sort.Strings(rep.FailedPackages)
	return rep, nil
}

// isResultLine is go test's per-package closing line.
func isResultLine(s string) bool {
	return strings.HasPrefix(s, "ok  \t") || strings.HasPrefix(s, "FAIL\t") || strings.HasPrefix(s, "?   \t")
}
