package leader

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/leader/leadertest"
)

func fields(epoch uint64, url string, validUntil int64) leadertest.Fields {
	return leadertest.Fields{Cluster: testCluster, LeaderInstance: "ea23198e3419ebbb240571a29d0112d9bcbe69c0", LeaderURL: url, Epoch: epoch, ValidUntil: validUntil}
}

// TestFollowerDNS follows a record served by a loopback DNS server: a
// higher epoch is followed, a lower one refused (the last good leader
// kept while its manifest is valid, fail closed after), the manifest is
// cached for the refresh interval, and a new follower on the same epoch
// store refuses the rollback at once.
func TestFollowerDNS(t *testing.T) {
	k := leadertest.Key()
	now := time.Unix(1000, 0)
	var clockMu sync.Mutex
	clock := func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return now }
	advance := func(d time.Duration) { clockMu.Lock(); now = now.Add(d); clockMu.Unlock() }
	dns := leadertest.StartDNS(t, "_teesql-leader.c.test", leadertest.Sign(k, fields(5, "https://a.test:5433", 2000)))
	storePath := filepath.Join(t.TempDir(), "epochs.json")
	store, err := OpenEpochStore(storePath)
	if err != nil {
		t.Fatal(err)
	}
	var refusals []error
	signer, _ := ParseAddress(leadertest.Address(k))
	opts := FollowOptions{Manifest: "dns:c.test.", Policy: Policy{Signer: signer, Cluster: testCluster}, Store: store,
		Resolver: NewResolver(dns.Addr), Timeout: 5 * time.Second, Refresh: time.Minute, Now: clock,
		OnRefusal: func(err error) { refusals = append(refusals, err) }}
	f, err := NewFollower(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	m, err := f.Leader(ctx)
	if err != nil || m.Epoch != 5 || m.LeaderURL != "https://a.test:5433" {
		t.Fatalf("first: %v %+v", err, m)
	}
	// Within the refresh interval: no new query.
	q := dns.Queries()
	if m, _ := f.Leader(ctx); m.Epoch != 5 || dns.Queries() != q {
		t.Fatal("refetched within the interval")
	}
	// A new leader at a higher epoch, picked up at the interval.
	dns.Set(leadertest.Sign(k, fields(6, "https://b.test:5433", 2000)))
	advance(time.Minute)
	if m, err := f.Leader(ctx); err != nil || m.Epoch != 6 || m.LeaderURL != "https://b.test:5433" {
		t.Fatalf("epoch 6: %v %+v", err, m)
	}
	if e, _ := store.Last(testCluster); e != 6 {
		t.Fatalf("store at %d", e)
	}
	// A replayed epoch 5: refused, the epoch-6 leader kept.
	dns.Set(leadertest.Sign(k, fields(5, "https://a.test:5433", 2000)))
	m, err = f.Refresh(ctx)
	if err != nil || m.Epoch != 6 {
		t.Fatalf("rollback: kept %v %+v", err, m)
	}
	wantClass(t, f.LastError(), ClassEpochRollback)
	if len(refusals) != 1 {
		t.Fatalf("refusals %d", len(refusals))
	}
	// A fresh follower (a restart) on the same store refuses it and has
	// no leader to keep: fail closed.
	store2, err := OpenEpochStore(storePath)
	if err != nil {
		t.Fatal(err)
	}
	opts2 := opts
	opts2.Store, opts2.OnRefusal = store2, nil
	f2, err := NewFollower(opts2)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f2.Leader(ctx)
	wantClass(t, err, ClassEpochRollback)
	// Once the kept manifest expires, the first follower fails closed too.
	advance(time.Duration(2000-now.Unix()) * time.Second)
	_, err = f.Leader(ctx)
	if err == nil {
		t.Fatal("an expired leader was kept")
	}
	// Invalidate forces a fetch even within the interval.
	dns.Set(leadertest.Sign(k, fields(7, "https://c.test:5433", 5000)))
	if m, err := f.Leader(ctx); err != nil || m.Epoch != 7 {
		t.Fatalf("epoch 7: %v", err)
	}
	q = dns.Queries()
	f.Invalidate()
	if _, err := f.Leader(ctx); err != nil || dns.Queries() != q+1 {
		t.Fatalf("Invalidate did not refetch: %v", err)
	}
}

// TestFollowerHTTPS follows a manifest published over HTTPS.
func TestFollowerHTTPS(t *testing.T) {
	k := leadertest.Key()
	rec := leadertest.Sign(k, fields(3, "https://leader.test:5433", 2000))
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte(rec)) }))
	t.Cleanup(srv.Close)
	store, _ := OpenEpochStore(filepath.Join(t.TempDir(), "e.json"))
	signer, _ := ParseAddress(leadertest.Address(k))
	f, err := NewFollower(FollowOptions{Manifest: srv.URL, Policy: Policy{Signer: signer}, Store: store, HTTPClient: srv.Client(),
		Now: func() time.Time { return time.Unix(1000, 0) }})
	if err != nil {
		t.Fatal(err)
	}
	m, err := f.Leader(context.Background())
	if err != nil || m.Epoch != 3 {
		t.Fatalf("%v %+v", err, m)
	}
	host, port, err := m.LeaderAddress()
	if err != nil || host != "leader.test" || port != "5433" {
		t.Fatalf("%s %s %v", host, port, err)
	}
}

// TestFollowerOptions refuses unusable options before any fetch.
func TestFollowerOptions(t *testing.T) {
	store, _ := OpenEpochStore(filepath.Join(t.TempDir(), "e.json"))
	for _, o := range []FollowOptions{
		{Manifest: "dns:c.test"},                    // no store
		{Manifest: "dns:", Store: store},            // no domain
		{Manifest: "http://m.test/x", Store: store}, // not https
		{Manifest: "ftp://m.test/x", Store: store},  // unknown source
		{Manifest: "c.test", Store: store},          // no scheme
	} {
		if _, err := NewFollower(o); failure.ClassOf(err) != failure.ConfigInvalid {
			t.Fatalf("%+v: %v", o, err)
		}
	}
}
