package leader

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"sync"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/keyfile"
)

// EpochStore persists, per cluster, the highest epoch accepted, so that a
// replayed older manifest (still within its valid_until) cannot move the
// leader back after a restart. The file is JSON, written atomically 0600.
type EpochStore struct {
	path string
	mu   sync.Mutex
	seen map[string]uint64 // cluster id (lowercase 0x…) → last epoch
}

type epochFile struct {
	Clusters map[string]uint64 `json:"clusters"`
}

// OpenEpochStore loads the store at path; a missing file is an empty store.
// A damaged file is an error, not a reset: resetting would reopen rollback.
func OpenEpochStore(path string) (*EpochStore, error) {
	s := &EpochStore{path: path, seen: map[string]uint64{}}
	if err := s.merge(); err != nil {
		return nil, err
	}
	return s, nil
}

// pathLocks serialises Accept across the stores of one file in this
// process: a configuration reload opens a second store on the same file
// while sessions of the old configuration still use the first.
var pathLocks sync.Map // path → *sync.Mutex

// merge raises the in-memory epochs to those in the file, so that a store
// never writes back an epoch lower than one another store recorded.
func (s *EpochStore) merge() error {
	data, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return failure.Wrap(failure.ConfigInvalid, err, "cannot read the manifest epoch store").
			WithEvidence("file %s", s.path).WithFix("make the file readable by this user")
	}
	var f epochFile
	if err := json.Unmarshal(data, &f); err != nil {
		return failure.Wrap(failure.ConfigInvalid, err, "the manifest epoch store is damaged").
			WithEvidence("file %s", s.path).
			WithFix("restore the file, or delete it knowingly: the next manifest seen is then trusted at any epoch")
	}
	for k, v := range f.Clusters {
		if v > s.seen[k] {
			s.seen[k] = v
		}
	}
	return nil
}

// Last returns the last epoch accepted for cluster, and whether there is one.
func (s *EpochStore) Last(cluster string) (uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.seen[cluster]
	return e, ok
}

// Accept refuses a manifest whose epoch is lower than the last one accepted
// for its cluster, and otherwise records its epoch (persisted before it
// returns). An equal epoch is accepted: the controller re-signs the same
// leader with a later valid_until. Call it only after Manifest.Verify.
func (s *EpochStore) Accept(m *Manifest) error {
	l, _ := pathLocks.LoadOrStore(s.path, new(sync.Mutex))
	l.(*sync.Mutex).Lock()
	defer l.(*sync.Mutex).Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.merge(); err != nil {
		return err
	}
	last, ok := s.seen[m.Cluster]
	if ok && m.Epoch < last {
		return failure.New(ClassEpochRollback, "leader manifest epoch went backwards").
			WithEvidence("cluster %s: manifest epoch %d, last accepted epoch %d (store %s)", m.Cluster, m.Epoch, last, s.path).
			WithFix("an older, still-valid manifest is being served (replay or a stale DNS answer): wait for the current record; do not delete the store unless the operator reset the cluster's epochs")
	}
	if ok && m.Epoch == last {
		return nil
	}
	next := make(map[string]uint64, len(s.seen)+1)
	for k, v := range s.seen {
		next[k] = v
	}
	next[m.Cluster] = m.Epoch
	data, err := json.MarshalIndent(epochFile{Clusters: next}, "", "  ")
	if err != nil {
		return err
	}
	if err := keyfile.WriteFileAtomic(s.path, append(data, '\n'), 0o600); err != nil {
		return err
	}
	s.seen = next
	return nil
}
