// Package userlist supplies the SCRAM-SHA-256 verifiers a pooling gateway
// checks clients against, from PgBouncer's userlist.txt format (File) or from
// the database through a dedicated lookup role (AuthQuery).
//
// Only SCRAM-SHA-256 verifiers are accepted: an md5 hash or a plain password
// is refused, since either lets whoever reads it log in to PostgreSQL, while
// a verifier does not. No error, log line or panic of this package holds a
// verifier or a password; user names are not secrets and are named.
package userlist

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/fsnotify/fsnotify"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/scram"
)

// MaxNameLen is PostgreSQL's longest role name (NAMEDATALEN-1 bytes): the
// server truncates longer names, so such a line could never match the role
// the client meant.
const MaxNameLen = 63

// WatchSettle is how long Watch waits after the last change before it
// reloads.
const WatchSettle = 200 * time.Millisecond

// MaxFileSize bounds a userlist file (a line is about 200 bytes).
const MaxFileSize = 16 << 20

// fixVerifier tells how to get a SCRAM verifier for a line.
const fixVerifier = "store SCRAM-SHA-256 verifiers only: set password_encryption = 'scram-sha-256', set the role's password again " +
	"(ALTER ROLE ... PASSWORD), and copy pg_authid.rolpassword, e.g. psql -XAt -c " +
	`"SELECT format('\"%s\" \"%s\"', replace(rolname, '\"', '\"\"'), rolpassword) FROM pg_authid WHERE rolpassword LIKE 'SCRAM-SHA-256$%'"` +
	"; or print one with `pgtrust gateway hash-secret`"

// File is a userlist file's verifiers. Lookup is safe for concurrent use and
// sees the last content that parsed without error.
type File struct {
	path  string
	users atomic.Pointer[map[string]*scram.Verifier]
	mu    sync.Mutex // serializes Reload
}

// LoadFile reads and validates path. Every line is checked before the File
// exists: a file with one bad line is refused as a whole.
func LoadFile(path string) (*File, error) {
	m, err := readFile(path)
	if err != nil {
		return nil, err
	}
	f := &File{path: path}
	f.users.Store(&m)
	return f, nil
}

// Lookup returns user's verifier. A false result means the caller runs the
// exchange without candidates (scram's fake-salt path), so that an unknown
// user fails exactly like a wrong password.
func (f *File) Lookup(user string) (*scram.Verifier, bool) {
	v, ok := (*f.users.Load())[user]
	return v, ok
}

// OtherIterations lists the users whose verifier's iteration count is not
// want (sorted): the gateway advertises want for unknown users, so a user
// with another count is told apart from unknown names by it.
func (f *File) OtherIterations(want int) []string {
	var out []string
	for u, v := range *f.users.Load() {
		if v.Iterations != want {
			out = append(out, u)
		}
	}
	sort.Strings(out)
	return out
}

// Len is the number of users.
func (f *File) Len() int { return len(*f.users.Load()) }

// Path is the file's path.
func (f *File) Path() string { return f.path }

// Reload reads the file again and swaps it in only if every line is valid;
// on error the previous content stays in use.
func (f *File) Reload() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, err := readFile(f.path)
	if err != nil {
		return err
	}
	f.users.Store(&m)
	return nil
}

// Watch reloads the file whenever it changes, until ctx ends. It watches the
// directory, so that editors and config managers that replace the file by a
// rename (and Kubernetes' symlink swaps) are seen too. report, when not nil,
// gets every reload's result (nil: swapped in; an error: old content kept).
// Watch returns once watching has started.
func (f *File) Watch(ctx context.Context, report func(error)) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return failure.Wrap(failure.ConfigInvalid, err, "userlist: cannot watch %s", f.path).
			WithFix("raise fs.inotify.max_user_instances, or reload with SIGHUP")
	}
	dir := filepath.Dir(f.path)
	if err := w.Add(dir); err != nil {
		w.Close()
		return failure.Wrap(failure.ConfigInvalid, err, "userlist: cannot watch directory %s", dir).
			WithFix("make the directory readable by the gateway")
	}
	name := filepath.Clean(f.path)
	go func() {
		defer w.Close()
		// An in-place write raises several events (truncate, write); reloading
		// once they settle avoids swapping in the empty, truncated file.
		settle := time.NewTimer(time.Hour)
		settle.Stop()
		for {
			select {
			case <-ctx.Done():
				settle.Stop()
				return
			case <-settle.C:
				err := f.reloadIfChanged()
				if report != nil && !errors.Is(err, errUnchanged) {
					report(err)
				}
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				// A symlink swap (..data in Kubernetes) changes another name in the
				// directory, so any event in it may change what the path resolves to.
				if filepath.Clean(ev.Name) != name && !strings.HasPrefix(filepath.Base(ev.Name), "..") {
					continue
				}
				if ev.Op == fsnotify.Chmod {
					continue
				}
				settle.Reset(WatchSettle)
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				if report != nil {
					report(failure.Wrap(failure.ConfigInvalid, err, "userlist: watching %s", f.path).
						WithFix("reload with SIGHUP; the previous content stays in use"))
				}
			}
		}
	}()
	return nil
}

var errUnchanged = errors.New("unchanged")

// reloadIfChanged is Reload, but reports errUnchanged when the content is
// the same (an editor writes in several steps; each step raises an event).
func (f *File) reloadIfChanged() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, err := readFile(f.path)
	if err != nil {
		return err
	}
	if sameUsers(m, *f.users.Load()) {
		return errUnchanged
	}
	f.users.Store(&m)
	return nil
}

func sameUsers(a, b map[string]*scram.Verifier) bool {
	if len(a) != len(b) {
		return false
	}
	for u, va := range a {
		vb, ok := b[u]
		if !ok || va.String() != vb.String() {
			return false
		}
	}
	return true
}

func fileError(path, format string, args ...any) *failure.Error {
	return failure.New(failure.ConfigInvalid, "userlist %s: "+format, append([]any{path}, args...)...)
}

func readFile(path string) (map[string]*scram.Verifier, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, failure.Wrap(failure.ConfigInvalid, err, "userlist: cannot open %s", path).
			WithFix("point the userlist setting at a readable file of \"user\" \"SCRAM-SHA-256$...\" lines")
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return nil, failure.Wrap(failure.ConfigInvalid, err, "userlist: cannot stat %s", path)
	}
	if !st.Mode().IsRegular() {
		return nil, fileError(path, "not a regular file").WithEvidence("mode %s", st.Mode()).WithFix("point the userlist setting at a file")
	}
	// Verifiers let whoever holds them pose as this server to its clients.
	if st.Mode().Perm()&0o007 != 0 {
		return nil, failure.New(failure.KeyPermissions, "userlist %s: other users can access it", path).
			WithEvidence("mode %#o gives access to every local user", st.Mode().Perm()).
			WithFix("chmod 0600 %s (or 0640 with a group the gateway is in)", path)
	}
	data, err := io.ReadAll(io.LimitReader(fh, MaxFileSize+1))
	if err != nil {
		return nil, failure.Wrap(failure.ConfigInvalid, err, "userlist: cannot read %s", path)
	}
	if len(data) > MaxFileSize {
		return nil, fileError(path, "larger than %d bytes", MaxFileSize).WithFix("use auth_query for very many users")
	}
	return Parse(path, data)
}

// Parse parses userlist content; name labels errors. Syntax (PgBouncer's
// auth_file): one user per line, `"user" "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>"`,
// a double quote inside a field written as two; more quoted fields after the
// second are ignored (PgBouncer ignores the rest of the line); blank lines
// and lines starting with ';' or '#' are comments. Everything else is an
// error: a line is never skipped silently. Errors carry the line number,
// never a field's secret content.
func Parse(name string, data []byte) (map[string]*scram.Verifier, error) {
	users := make(map[string]*scram.Verifier)
	firstLine := make(map[string]int)
	if bytes.HasPrefix(data, []byte("\xef\xbb\xbf")) {
		data = data[3:] // a BOM some Windows editors write
	}
	for n, line := range bytes.Split(data, []byte("\n")) {
		lineNo := n + 1
		line = bytes.TrimRight(line, "\r")
		rest := bytes.TrimLeft(line, " \t")
		if len(rest) == 0 || rest[0] == ';' || rest[0] == '#' {
			continue
		}
		user, rest, err := quoted(rest)
		if err != nil {
			return nil, fileError(name, "line %d: %s in the user name field", lineNo, err).
				WithFix(`write each line as "user" "SCRAM-SHA-256$..." with both fields in double quotes ("" for a quote inside)`)
		}
		if !bytes.HasPrefix(rest, []byte(" ")) && !bytes.HasPrefix(rest, []byte("\t")) {
			return nil, fileError(name, "line %d: no verifier after the user name", lineNo).
				WithFix(`write each line as "user" "SCRAM-SHA-256$..." separated by a space`)
		}
		secret, rest, err := quoted(bytes.TrimLeft(rest, " \t"))
		if err != nil {
			return nil, fileError(name, "line %d (user %q): %s in the verifier field", lineNo, user, err).
				WithFix(`write each line as "user" "SCRAM-SHA-256$..." with both fields in double quotes`)
		}
		for rest = bytes.TrimLeft(rest, " \t"); len(rest) > 0; rest = bytes.TrimLeft(rest, " \t") {
			if rest[0] != '"' {
				return nil, fileError(name, "line %d (user %q): text after the verifier is not a quoted field", lineNo, user).
					WithFix("remove it, or start a comment line with ';'")
			}
			if _, rest, err = quoted(rest); err != nil {
				return nil, fileError(name, "line %d (user %q): %s in a field after the verifier", lineNo, user, err).
					WithFix("remove the extra fields")
			}
		}
		if err := checkName(user); err != nil {
			return nil, fileError(name, "line %d: %s", lineNo, err).WithFix("use the role's name as PostgreSQL stores it")
		}
		if prev, dup := firstLine[user]; dup {
			return nil, fileError(name, "user %q appears twice", user).
				WithEvidence("lines %d and %d", prev, lineNo).WithFix("keep one line per user")
		}
		v, err := verifier(secret)
		if err != nil {
			fe, _ := failure.As(err)
			return nil, fileError(name, "line %d (user %q): %s", lineNo, user, fe.Message).WithEvidence("%s", fe.Evidence).WithFix("%s", fe.Fix)
		}
		firstLine[user] = lineNo
		users[user] = v
	}
	return users, nil
}

// quoted reads one double-quoted field at the start of p.
func quoted(p []byte) (string, []byte, error) {
	if len(p) == 0 || p[0] != '"' {
		return "", nil, errors.New("no opening double quote")
	}
	var b strings.Builder
	for i := 1; i < len(p); i++ {
		if p[i] != '"' {
			b.WriteByte(p[i])
			continue
		}
		if i+1 < len(p) && p[i+1] == '"' {
			b.WriteByte('"')
			i++
			continue
		}
		return b.String(), p[i+1:], nil
	}
	return "", nil, errors.New("no closing double quote")
}

func checkName(user string) error {
	switch {
	case user == "":
		return errors.New("empty user name")
	case len(user) > MaxNameLen:
		return fmt.Errorf("user name of %d bytes (PostgreSQL role names have at most %d)", len(user), MaxNameLen)
	case !utf8.ValidString(user):
		return errors.New("user name is not valid UTF-8")
	case strings.ContainsAny(user, "\x00\r"):
		return errors.New("user name holds a NUL or CR")
	}
	return nil
}

// verifier accepts a SCRAM-SHA-256 verifier only; the error says which kind
// of secret was found, never the secret.
func verifier(s string) (*scram.Verifier, error) {
	switch {
	case strings.HasPrefix(s, scram.Scheme+"$"):
		return scram.ParseVerifier(s)
	case isMD5(s):
		return nil, failure.New(failure.ConfigInvalid, "an md5 password hash, not a SCRAM verifier").
			WithEvidence("the field is \"md5\" and 32 hex digits; md5 hashes are refused because the hash itself logs in (pass-the-hash)").
			WithFix("%s", fixVerifier)
	case s == "":
		return nil, failure.New(failure.ConfigInvalid, "an empty password field").
			WithEvidence("the verifier field is \"\"").WithFix("%s", fixVerifier)
	default:
		return nil, failure.New(failure.ConfigInvalid, "a plain-text password or unknown scheme, not a SCRAM verifier").
			WithEvidence("the field does not start with %q; plain passwords are refused (the file would hold a login secret)", scram.Scheme+"$").
			WithFix("%s", fixVerifier)
	}
}

func isMD5(s string) bool {
	if len(s) != 35 || !strings.HasPrefix(s, "md5") {
		return false
	}
	for _, c := range s[3:] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
