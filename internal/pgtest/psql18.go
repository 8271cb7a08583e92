package pgtest

import (
	"os"
	"path/filepath"
	"testing"
)

// LibPQ18Dir returns the directory holding libpq.so.5 of the PostgreSQL 18
// install (.ci/setup), or fails the test saying how to install it.
func LibPQ18Dir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(envOr("PGTRUST_PG18_DIR", defaultPG18Dir), "lib")
	if _, err := os.Stat(filepath.Join(dir, "libpq.so.5")); err != nil {
		t.Fatalf("pgtest: libpq 18 is not installed (%v): run `sudo .ci/setup` from the repository root", err)
	}
	return dir
}

// Psql18 is Psql with libpq 18 as the oracle: psql 15 run with
// LD_LIBRARY_PATH pointing at PostgreSQL 18's libpq.so.5, so connection
// string parsing, service files and the connection keywords are libpq 18's.
// That libpq links its own OpenSSL 1.1: keep Psql (system OpenSSL 3) as the
// oracle for certificate-chain rules.
func Psql18(t testing.TB, conninfo string, env map[string]string) PsqlResult {
	t.Helper()
	return Psql18Query(t, conninfo, "SELECT 1", env)
}

// Psql18Query is Psql18 with an arbitrary query.
func Psql18Query(t testing.TB, conninfo, query string, env map[string]string) PsqlResult {
	t.Helper()
	vars := map[string]string{"LD_LIBRARY_PATH": LibPQ18Dir(t)}
	for k, v := range env {
		vars[k] = v
	}
	return PsqlQuery(t, conninfo, query, vars)
}
