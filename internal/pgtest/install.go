package pgtest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/pgtrust/pgtrust/internal/pgproc"
)

// Where the PostgreSQL binaries live. .ci/setup installs both.
const (
	defaultPG15Bin = "/usr/lib/postgresql/15/bin"
	defaultPG18Dir = "/opt/pgtrust/pg18"
)

// BinDir returns the directory holding initdb, postgres and pg_ctl for a
// PostgreSQL major version (15 or 18), or an error saying how to install it.
// PGTRUST_PG15_BIN and PGTRUST_PG18_DIR override the defaults.
func BinDir(version int) (string, error) {
	var dir string
	switch version {
	case 15:
		dir = envOr("PGTRUST_PG15_BIN", defaultPG15Bin)
	case 18:
		dir = filepath.Join(envOr("PGTRUST_PG18_DIR", defaultPG18Dir), "bin")
	default:
		return "", fmt.Errorf("pgtest: PostgreSQL %d is not supported (use 15 or 18)", version)
	}
	for _, b := range []string{"initdb", "postgres", "pg_ctl"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return "", fmt.Errorf("pgtest: PostgreSQL %d is not installed (%v): run `sudo .ci/setup` from the repository root to install it", version, err)
		}
	}
	return dir, nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// runAs is the identity the server processes run as (see pgproc).
type runAs = pgproc.Identity

func serverIdentity() (runAs, error) {
	id, err := pgproc.ServerIdentity()
	if err != nil {
		return id, fmt.Errorf("pgtest: %w (run .ci/setup)", err)
	}
	return id, nil
}

// template is an initdb'd data directory that servers copy.
type template struct {
	dir string
	err error
}

var (
	templateMu sync.Mutex
	templates  = map[int]*template{}
)

// templateDir returns a data directory made by initdb for version, making it
// on first use. It lives in the user cache dir, keyed by the exact server
// build, so initdb runs once per machine rather than once per test binary;
// concurrent test binaries race safely through an atomic rename.
func templateDir(version int) (string, error) {
	templateMu.Lock()
	defer templateMu.Unlock()
	if t, ok := templates[version]; ok {
		return t.dir, t.err
	}
	dir, err := makeTemplate(version)
	templates[version] = &template{dir: dir, err: err}
	return dir, err
}

// templateLayout names the initdb options below; change it when they
// change so cached templates made with the old ones are not reused.
const templateLayout = "v2: trust, postgres, no-locale, UTF8, 1MB WAL segments"

func makeTemplate(version int) (string, error) {
	bin, err := BinDir(version)
	if err != nil {
		return "", err
	}
	who, err := serverIdentity()
	if err != nil {
		return "", err
	}
	out, err := who.Command(false, filepath.Join(bin, "postgres"), "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("pgtest: %s/postgres --version as uid %d: %v: %s (is the directory tree readable by that user? run .ci/setup)", bin, who.UID, err, out)
	}
	if !strings.Contains(string(out), fmt.Sprintf(" %d.", version)) {
		return "", fmt.Errorf("pgtest: %s/postgres is %q, want PostgreSQL %d", bin, strings.TrimSpace(string(out)), version)
	}
	sum := sha256.Sum256(append([]byte(templateLayout+"\x00"+bin+"\x00"+strconv.Itoa(who.UID)+"\x00"), out...))
	cache, err := cacheRoot()
	if err != nil {
		return "", err
	}
	final := filepath.Join(cache, fmt.Sprintf("template-%d-%s", version, hex.EncodeToString(sum[:6])))
	if _, err := os.Stat(filepath.Join(final, "data", "PG_VERSION")); err == nil {
		return filepath.Join(final, "data"), nil
	}

	tmp, err := os.MkdirTemp(cache, fmt.Sprintf("building-%d-", version))
	if err != nil {
		return "", fmt.Errorf("pgtest: %w", err)
	}
	defer os.RemoveAll(tmp) // after a successful rename this is a no-op
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", fmt.Errorf("pgtest: %w", err)
	}
	if err := who.Chown(tmp); err != nil {
		return "", fmt.Errorf("pgtest: chown template dir: %w", err)
	}
	data := filepath.Join(tmp, "data")
	// 1MB WAL segments instead of 16MB: every server copies the template,
	// and the first segment was 40% of its size.
	cmd := who.Command(false, filepath.Join(bin, "initdb"), "-D", data, "--no-sync", "-A", "trust", "-U", "postgres",
		"--no-locale", "-E", "UTF8", "--no-instructions", "--wal-segsize=1")
	cmd.Dir = tmp // initdb must be able to stat its working directory
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("pgtest: initdb for PostgreSQL %d failed: %v\n%s", version, err, buf.String())
	}
	if err := os.Rename(tmp, final); err != nil {
		// Another test binary won the race; its template is as good as ours.
		if _, statErr := os.Stat(filepath.Join(final, "data", "PG_VERSION")); statErr == nil {
			return filepath.Join(final, "data"), nil
		}
		return "", fmt.Errorf("pgtest: install template: %w", err)
	}
	return filepath.Join(final, "data"), nil
}

// cacheRoot is where templates are kept between test runs: under the temp
// dir rather than the home dir because the postgres user, which runs initdb,
// must be able to traverse it (root's home is 0700).
func cacheRoot() (string, error) {
	base := os.Getenv("PGTRUST_PGTEST_CACHE")
	if base == "" {
		base = filepath.Join(os.TempDir(), fmt.Sprintf("pgtrust-pgcache-%d", os.Getuid()))
	}
	if err := os.MkdirAll(base, 0o755); err != nil {
		return "", fmt.Errorf("pgtest: cache dir: %w", err)
	}
	fi, err := os.Stat(base)
	if err != nil {
		return "", fmt.Errorf("pgtest: cache dir: %w", err)
	}
	// A shared temp dir: only trust a cache we own.
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Getuid() {
		return "", fmt.Errorf("pgtest: cache dir %s is owned by uid %d, not us (%d): remove it or set PGTRUST_PGTEST_CACHE", base, st.Uid, os.Getuid())
	}
	return base, nil
}
