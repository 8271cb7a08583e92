package pgtest

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"sort"
	"testing"
	"time"
)

// PsqlResult is the outcome of running psql.
type PsqlResult struct {
	OK       bool // connected and the query succeeded (exit code 0)
	Stdout   string
	Stderr   string
	ExitCode int // psql's: 0 ok, 1 error, 2 connection failed, 3 script error; -1 not run to completion
}

// psqlTimeout bounds one psql run; PGCONNECT_TIMEOUT (5s) normally ends it first.
const psqlTimeout = 60 * time.Second

// PsqlPath is the psql binary used as the libpq oracle: the version-specific
// one, not Debian's /usr/bin/psql wrapper, which picks a default cluster and
// may add PGHOST/PGPORT of its own.
func PsqlPath() string {
	for _, p := range []string{"/usr/lib/postgresql/15/bin/psql", "/usr/bin/psql"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("psql"); err == nil {
		return p
	}
	return "psql"
}

// Psql runs libpq (psql) as the oracle:
//
//	psql -X -At -v ON_ERROR_STOP=1 -c 'SELECT 1' -d <conninfo>
//
// with HOME set to an empty temp dir (so no ~/.postgresql or .pgpass leaks
// in), PGCONNECT_TIMEOUT=5, LC_ALL=C, and no PG* variable inherited: only
// those in env (which may also override HOME and PGCONNECT_TIMEOUT).
func Psql(t testing.TB, conninfo string, env map[string]string) PsqlResult {
	t.Helper()
	return PsqlQuery(t, conninfo, "SELECT 1", env)
}

// PsqlQuery is Psql with an arbitrary query.
func PsqlQuery(t testing.TB, conninfo, query string, env map[string]string) PsqlResult {
	t.Helper()
	vars := map[string]string{
		"PATH":              "/usr/bin:/bin",
		"LC_ALL":            "C",
		"LANG":              "C",
		"PGCONNECT_TIMEOUT": "5",
	}
	if _, ok := env["HOME"]; !ok {
		vars["HOME"] = EmptyHome(t)
	}
	for k, v := range env {
		vars[k] = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), psqlTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, PsqlPath(), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", query, "-d", conninfo)
	cmd.Env = envList(vars)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := PsqlResult{Stdout: stdout.String(), Stderr: stderr.String()}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		res.OK = true
	case ctx.Err() != nil:
		res.ExitCode = -1
		res.Stderr += "\npgtest: psql killed after " + psqlTimeout.String()
	case errors.As(err, &exitErr):
		res.ExitCode = exitErr.ExitCode()
	default:
		t.Fatalf("pgtest: run psql: %v", err)
	}
	return res
}

// EmptyHome returns a fresh empty directory to use as HOME, so pgtrust and
// psql see the same (absent) ~/.postgresql defaults. Removed at cleanup.
func EmptyHome(t testing.TB) string {
	t.Helper()
	return t.TempDir()
}

func envList(vars map[string]string) []string {
	out := make([]string, 0, len(vars))
	for k, v := range vars {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}
