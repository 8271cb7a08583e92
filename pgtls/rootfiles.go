package pgtls

import (
	"bytes"
	"sync"

	"github.com/pgtrust/pgtrust/internal/chain"
	"github.com/pgtrust/pgtrust/internal/keyfile"
)

// rootFiles keeps the parsed content of the root files dials have read.
// Like libpq, every dial reads sslrootcert again, so a replaced file takes
// effect at the next connection. The parsing and the self-signature check
// of each certificate are done once per distinct content: otherwise every
// dial paid for them in CPU, and every open connection kept its own parsed
// copy through its tls.Config's closures (about 3 KiB per session in the
// proxy). A parsed *chain.Roots is shared read-only by every dial that read
// the same bytes.
var rootFiles = struct {
	sync.Mutex
	byPath map[string]parsedRootFile
}{byPath: map[string]parsedRootFile{}}

type parsedRootFile struct {
	data  []byte
	roots *chain.Roots
}

// maxRootFiles bounds the cache: a program dialing with ever new root
// files (temporary directories, tests) must not grow without limit.
const maxRootFiles = 32

// loadRootFile reads path and returns its certificates split into anchors
// and intermediates, parsing them only when the bytes differ from the last
// read of path. Errors are keyfile's.
func loadRootFile(path string) (*chain.Roots, error) {
	data, err := keyfile.ReadCertificateFile(path)
	if err != nil {
		return nil, err
	}
	rootFiles.Lock()
	cached, ok := rootFiles.byPath[path]
	rootFiles.Unlock()
	if ok && bytes.Equal(cached.data, data) {
		return cached.roots, nil
	}
	certs, err := keyfile.ParseCertificateFile(path, data)
	if err != nil {
		return nil, err
	}
	roots := chain.SplitRoots(path, certs)
	rootFiles.Lock()
	if len(rootFiles.byPath) >= maxRootFiles {
		clear(rootFiles.byPath)
	}
	rootFiles.byPath[path] = parsedRootFile{data: data, roots: roots}
	rootFiles.Unlock()
	return roots, nil
}
