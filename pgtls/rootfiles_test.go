package pgtls

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/chain"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

// TestRootFileParsedOncePerContent: a root file is read at every load, and
// parsed again only when its bytes changed; a changed, broken or removed
// file is never answered from what was parsed before.
func TestRootFileParsedOncePerContent(t *testing.T) {
	ca1 := testpki.NewRootCA(t, "root one")
	ca2 := testpki.NewRootCA(t, "root two")
	inter := ca2.NewIntermediate(t, "intermediate two")
	path := filepath.Join(t.TempDir(), "root.crt")
	write := func(data []byte) {
		t.Helper()
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	load := func() *chain.Roots {
		t.Helper()
		r, err := loadRootFile(path)
		if err != nil {
			t.Fatalf("load %s: %v", path, err)
		}
		return r
	}

	write(ca1.CertPEM)
	first := load()
	if again := load(); again != first {
		t.Error("the same bytes were parsed again: each dial would keep its own copy")
	}
	if len(first.Anchors) != 1 || first.Anchors[0].Subject.CommonName != "root one" {
		t.Fatalf("anchors %v, want root one", first.Anchors)
	}

	// Replaced in place: the next load sees the new content.
	write(append(append([]byte{}, ca2.CertPEM...), inter.CertPEM...))
	second := load()
	if second == first || len(second.Anchors) != 1 || second.Anchors[0].Subject.CommonName != "root two" ||
		len(second.Intermediates) != 1 || second.Intermediates[0].Subject.CommonName != "intermediate two" {
		t.Fatalf("after the file changed: anchors %v, intermediates %v", second.Anchors, second.Intermediates)
	}

	// Broken: the error, not the last good parse.
	write([]byte("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"))
	_, err := loadRootFile(path)
	if failure.ClassOf(err) != failure.ConfigInvalid || err == nil || !containsPath(err, path) {
		t.Fatalf("broken root file: %v (class %s), want config_invalid naming %s", err, failure.ClassOf(err), path)
	}

	// Removed: the read error, wrapping fs.ErrNotExist.
	os.Remove(path)
	if _, err := loadRootFile(path); !errors.Is(err, fs.ErrNotExist) || failure.ClassOf(err) != failure.ConfigInvalid {
		t.Fatalf("removed root file: %v", err)
	}

	// Back to the first content: parsed afresh, and right.
	write(ca1.CertPEM)
	if r := load(); len(r.Anchors) != 1 || r.Anchors[0].Subject.CommonName != "root one" {
		t.Fatalf("anchors %v after restoring, want root one", r.Anchors)
	}
}

// TestRootFileCacheBounded: dials with ever new root files (temporary
// directories) do not grow the cache without limit, and concurrent loads
// of one file are safe (go test -race).
func TestRootFileCacheBounded(t *testing.T) {
	ca := testpki.NewRootCA(t, "bounded root")
	dir := t.TempDir()
	for i := range 3 * maxRootFiles {
		p := testpki.WriteFile(t, dir, fmt.Sprintf("root-%d.crt", i), ca.CertPEM, 0o644)
		if _, err := loadRootFile(p); err != nil {
			t.Fatal(err)
		}
		rootFiles.Lock()
		n := len(rootFiles.byPath)
		rootFiles.Unlock()
		if n > maxRootFiles {
			t.Fatalf("%d root files cached after %d loads, bound %d", n, i+1, maxRootFiles)
		}
	}

	shared := testpki.WriteFile(t, dir, "shared.crt", ca.CertPEM, 0o644)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				r, err := loadRootFile(shared)
				if err == nil && (len(r.Anchors) != 1 || r.Pool == nil) {
					err = fmt.Errorf("anchors %d, pool %v", len(r.Anchors), r.Pool)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func containsPath(err error, path string) bool {
	return err != nil && strings.Contains(err.Error(), path)
}
