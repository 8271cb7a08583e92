package userlist

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/scram"
	"github.com/pgtrust/pgtrust/internal/secretscan"
)

// Secrets already in secretscan.Known (internal/scram's), reused so the
// scan covers this package without a new entry.
const (
	appSecret    = "g1-Scram-Secret-1"
	lookupSecret = "g1-Scram-Secret-2"
	wrongSecret  = "g1-Wrong-Secret-3"
	plainSecret  = "pw-secret"
)

func mustVerifier(t *testing.T, secret string) *scram.Verifier {
	t.Helper()
	v, err := scram.NewVerifier([]byte(secret), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func writeList(t *testing.T, path, content string) {
	t.Helper()
	// Write then rename, as config managers do, so a watcher never reads half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// noSecret fails when err's whole text holds a secret or a verifier.
func noSecret(t *testing.T, err error, secrets ...string) {
	t.Helper()
	text := failure.Text(err)
	if fe, ok := failure.As(err); ok {
		text += "\n" + fe.Detail()
	}
	secretscan.Record(t, "userlist error", text)
	for _, s := range secrets {
		if s != "" && strings.Contains(text, s) {
			t.Fatalf("error text holds a secret or verifier: %s", strings.ReplaceAll(text, s, "<SECRET>"))
		}
	}
}

func TestParse(t *testing.T) {
	a, b := mustVerifier(t, appSecret), mustVerifier(t, wrongSecret)
	md5hash := "md5" + hex.EncodeToString(func() []byte { h := md5.Sum([]byte(plainSecret + "alice")); return h[:] }())
	good := []struct {
		name, text string
		want       map[string]*scram.Verifier
	}{
		{"empty", "", map[string]*scram.Verifier{}},
		{"comments and blanks", "; PgBouncer comment\n# hash comment\n\n   \t\n", map[string]*scram.Verifier{}},
		{"two users", `"alice" "` + a.String() + "\"\n\"bob\"\t\"" + b.String() + `"`, map[string]*scram.Verifier{"alice": a, "bob": b}},
		{"CRLF, BOM, indentation", "\xef\xbb\xbf  \"alice\" \"" + a.String() + "\"\r\n", map[string]*scram.Verifier{"alice": a}},
		{"escaped quotes in the name", `"say ""hi""" "` + a.String() + `"`, map[string]*scram.Verifier{`say "hi"`: a}},
		{"spaces and semicolon in the name", `"a b;c" "` + a.String() + `"`, map[string]*scram.Verifier{"a b;c": a}},
		{"extra quoted fields ignored", `"alice" "` + a.String() + `" "extra" "more"`, map[string]*scram.Verifier{"alice": a}},
		{"UTF-8 name", `"jürgen" "` + a.String() + `"`, map[string]*scram.Verifier{"jürgen": a}},
		{"63-byte name", `"` + strings.Repeat("n", 63) + `" "` + a.String() + `"`, map[string]*scram.Verifier{strings.Repeat("n", 63): a}},
	}
	for _, c := range good {
		t.Run(c.name, func(t *testing.T) {
			got, err := Parse("test", []byte(c.text))
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !sameUsers(got, c.want) {
				t.Fatalf("got %d users %v, want %d", len(got), keys(got), len(c.want))
			}
		})
	}
	bad := []struct {
		name, text, want string
	}{
		{"md5 refused", `"alice" "` + md5hash + `"`, "md5 password hash"},
		{"plain refused", `"alice" "` + plainSecret + `"`, "plain-text password"},
		{"empty secret refused", `"alice" ""`, "empty password field"},
		{"malformed SCRAM", `"alice" "` + strings.Replace(a.String(), "$", "$x", 1) + `"`, "SCRAM verifier"},
		{"SCRAM with bad keys", `"alice" "` + a.String()[:len(a.String())-4] + `"`, "SCRAM verifier"},
		{"duplicate user", `"alice" "` + a.String() + "\"\n\"alice\" \"" + b.String() + `"`, `user "alice" appears twice`},
		{"unquoted name", `alice "` + a.String() + `"`, "line 1: no opening double quote"},
		{"unterminated name", `"alice`, "no closing double quote"},
		{"unterminated verifier", `"alice" "` + a.String(), "no closing double quote"},
		{"no verifier", `"alice"`, "no verifier"},
		{"no separator", `"alice""x"`, "no verifier"},
		{"junk after", `"alice" "` + a.String() + `" junk`, "not a quoted field"},
		{"empty name", `"" "` + a.String() + `"`, "empty user name"},
		{"long name", `"` + strings.Repeat("n", 64) + `" "` + a.String() + `"`, "64 bytes"},
		{"bad UTF-8", "\"a\xff\" \"" + a.String() + `"`, "not valid UTF-8"},
		{"error on line 3", "; c\n\"alice\" \"" + a.String() + "\"\n\"bob\" \"" + md5hash + `"`, "line 3"},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("test", []byte(c.text))
			if err == nil {
				t.Fatal("accepted")
			}
			if failure.ClassOf(err) != failure.ConfigInvalid {
				t.Fatalf("class %s: %v", failure.ClassOf(err), err)
			}
			fe, _ := failure.As(err)
			if !strings.Contains(fe.Message, c.want) || fe.Fix == "" {
				t.Fatalf("message %q (want %q), fix %q", fe.Message, c.want, fe.Fix)
			}
			noSecret(t, err, plainSecret, md5hash, md5hash[3:], a.String(), a.String()[14:], b.String())
		})
	}
	t.Run("md5 fix says how to get a verifier", func(t *testing.T) {
		_, err := Parse("test", []byte(`"alice" "`+md5hash+`"`))
		fe, _ := failure.As(err)
		if !strings.Contains(fe.Fix, "pg_authid") || !strings.Contains(fe.Fix, "password_encryption") || !strings.Contains(fe.Fix, "hash-secret") {
			t.Fatalf("fix: %s", fe.Fix)
		}
	})
}

func keys(m map[string]*scram.Verifier) []string {
	var k []string
	for u := range m {
		k = append(k, u)
	}
	return k
}

func TestLoadFile(t *testing.T) {
	a := mustVerifier(t, appSecret)
	dir := t.TempDir()
	path := filepath.Join(dir, "userlist.txt")
	writeList(t, path, `"alice" "`+a.String()+`"`)
	f, err := LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := f.Lookup("alice"); !ok || v.String() != a.String() {
		t.Fatal("alice not found")
	}
	if _, ok := f.Lookup("bob"); ok {
		t.Fatal("bob found")
	}
	if _, ok := f.Lookup("Alice"); ok {
		t.Fatal("lookup is not exact")
	}

	if err := os.Chmod(path, 0o604); err != nil {
		t.Fatal(err)
	}
	_, err = LoadFile(path)
	if failure.ClassOf(err) != failure.KeyPermissions {
		t.Fatalf("world-readable file: %v", err)
	}
	if _, err := LoadFile(filepath.Join(dir, "missing")); failure.ClassOf(err) != failure.ConfigInvalid {
		t.Fatalf("missing file: %v", err)
	}
	if _, err := LoadFile(dir); failure.ClassOf(err) != failure.ConfigInvalid {
		t.Fatalf("directory: %v", err)
	}
}

func TestReload(t *testing.T) {
	a, b := mustVerifier(t, appSecret), mustVerifier(t, wrongSecret)
	dir := t.TempDir()
	path := filepath.Join(dir, "userlist.txt")
	writeList(t, path, `"alice" "`+a.String()+`"`)
	f, err := LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reports := make(chan error, 16)
	if err := f.Watch(ctx, func(err error) { reports <- err }); err != nil {
		t.Fatal(err)
	}
	next := func() error {
		t.Helper()
		select {
		case err := <-reports:
			return err
		case <-time.After(20 * time.Second):
			t.Fatal("no reload reported")
			return nil
		}
	}

	// A new user by rename.
	writeList(t, path, `"alice" "`+a.String()+"\"\n\"bob\" \""+b.String()+`"`)
	if err := next(); err != nil {
		t.Fatalf("valid file refused: %v", err)
	}
	if _, ok := f.Lookup("bob"); !ok || f.Len() != 2 {
		t.Fatal("bob not loaded")
	}

	// An md5 line: refused as a whole, the old content stays.
	writeList(t, path, `"alice" "`+a.String()+"\"\n\"carol\" \"md5"+strings.Repeat("0", 32)+`"`)
	err = next()
	if failure.ClassOf(err) != failure.ConfigInvalid || !strings.Contains(err.Error(), "md5") {
		t.Fatalf("bad file: %v", err)
	}
	noSecret(t, err, a.String(), b.String())
	if _, ok := f.Lookup("bob"); !ok {
		t.Fatal("a refused reload dropped the old content")
	}
	if _, ok := f.Lookup("carol"); ok {
		t.Fatal("a refused file was half applied")
	}

	// In-place write (truncate + write) of a fixed file.
	if err := os.WriteFile(path, []byte(`"carol" "`+b.String()+`"`), 0o600); err != nil {
		t.Fatal(err)
	}
	for {
		if err := next(); err != nil {
			continue // the truncation step parses as another file; the write follows
		}
		if _, ok := f.Lookup("carol"); ok {
			break
		}
	}
	if _, ok := f.Lookup("alice"); ok || f.Len() != 1 {
		t.Fatal("alice survived a reload without her")
	}

	// Removed file: error, old content kept.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := next(); failure.ClassOf(err) != failure.ConfigInvalid {
		t.Fatalf("removed file: %v", err)
	}
	if _, ok := f.Lookup("carol"); !ok {
		t.Fatal("removing the file dropped the users")
	}

	// Reload (SIGHUP path) validates the same way.
	writeList(t, path, `"dave" "`+plainSecret+`"`)
	if err := f.Reload(); failure.ClassOf(err) != failure.ConfigInvalid {
		t.Fatalf("Reload of a plain password: %v", err)
	}
	if _, ok := f.Lookup("dave"); ok {
		t.Fatal("Reload applied a bad file")
	}
}

// TestFileLogin runs real SCRAM logins (pgconn) against verifiers from a
// userlist file; an unknown user takes scram's fake-salt path.
func TestFileLogin(t *testing.T) {
	path := filepath.Join(t.TempDir(), "userlist.txt")
	writeList(t, path, `"alice" "`+mustVerifier(t, appSecret).String()+`"`)
	f, err := LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	gw := startFront(t, func(_ context.Context, user string) ([]*scram.Verifier, bool, error) {
		if v, ok := f.Lookup(user); ok {
			return []*scram.Verifier{v}, false, nil
		}
		return nil, true, nil
	})
	conninfo := fmt.Sprintf("host=127.0.0.1 port=%d dbname=app sslmode=disable gssencmode=disable", gw.port())
	for _, c := range []struct {
		user, secret string
		ok           bool
	}{{"alice", appSecret, true}, {"alice", wrongSecret, false}, {"bob", appSecret, false}} {
		err := pgconnSelect(t, conninfo+" user="+c.user, c.secret)
		o := gw.next(t)
		if c.ok != (err == nil) || c.ok != (o.err == nil) {
			t.Fatalf("%s: pgconn %v, server %v", c.user, err, o.err)
		}
		var pgErr *pgconn.PgError
		if !c.ok && (!errors.As(err, &pgErr) || pgErr.Code != "28P01" || !errors.Is(o.err, scram.ErrAuthFailed)) {
			t.Fatalf("%s: %v / %v", c.user, err, o.err)
		}
	}
}

func TestFileOtherIterations(t *testing.T) {
	a, err := scram.NewVerifier([]byte("g1-Scram-Secret-1"), 4096, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := scram.NewVerifier([]byte("g1-Scram-Secret-2"), 10000, nil)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "userlist.txt")
	if err := os.WriteFile(path, []byte(`"alice" "`+a.String()+`"`+"\n"+`"bob" "`+b.String()+`"`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := f.OtherIterations(4096); len(got) != 1 || got[0] != "bob" {
		t.Fatalf("OtherIterations(4096) = %q", got)
	}
	if got := f.OtherIterations(10000); len(got) != 1 || got[0] != "alice" {
		t.Fatalf("OtherIterations(10000) = %q", got)
	}
}
