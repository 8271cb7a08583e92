package leader

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/leader/leadertest"
)

func TestLookupFromLocalDNS(t *testing.T) {
	v := loadVectors(t)
	golden := v.Cases[0].TXT
	if len(leadertest.Chunks(golden)) < 2 {
		t.Fatalf("golden record fits one chunk")
	}
	r := NewResolver(leadertest.StartDNS(t, "_teesql-leader.monitor.teesql.test", golden).Addr)
	for _, domain := range []string{"monitor.teesql.test.", "_teesql-leader.monitor.teesql.test."} {
		m, err := Lookup(context.Background(), r, domain, 5*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", domain, err)
		}
		if err := m.Verify(Policy{Signer: mustAddr(t, v.SignerAddress), Cluster: testCluster}, time.Unix(1713311999, 0)); err != nil {
			t.Fatal(err)
		}
		if m.Epoch != 42 {
			t.Fatalf("epoch %d", m.Epoch)
		}
	}
	_, err := Lookup(context.Background(), r, "other.teesql.test.", 5*time.Second)
	wantClass(t, err, ClassFetch)
}

func TestLookupTimeout(t *testing.T) {
	dns := leadertest.StartDNS(t, "x.test", "")
	dns.SetSilent(true)
	_, err := Lookup(context.Background(), NewResolver(dns.Addr), "x.test.", 300*time.Millisecond)
	wantClass(t, err, failure.Timeout)
}

func TestResolveRollbackOverDNS(t *testing.T) {
	v := loadVectors(t)
	k := testKey(t, v)
	p := Policy{Signer: addressOf(k), Cluster: testCluster}
	now := time.Unix(1000, 0)
	store, err := OpenEpochStore(t.TempDir() + "/epochs.json")
	if err != nil {
		t.Fatal(err)
	}
	serve := func(epoch uint64) *net.Resolver {
		m := signed(t, k, epoch, 2000)
		return NewResolver(leadertest.StartDNS(t, "_teesql-leader.c.test", sign(k, m)).Addr)
	}
	m, err := Resolve(context.Background(), serve(9), "c.test.", 5*time.Second, p, now, store)
	if err != nil || m.Epoch != 9 {
		t.Fatalf("epoch 9: %v", err)
	}
	// A replayed older manifest, still within valid_until, is refused.
	_, err = Resolve(context.Background(), serve(8), "c.test.", 5*time.Second, p, now, store)
	wantClass(t, err, ClassEpochRollback)
	// The wrong signer is refused before the store is touched.
	_, err = Resolve(context.Background(), serve(10), "c.test.", 5*time.Second, Policy{Signer: Address{1}}, now, store)
	wantClass(t, err, ClassSigner)
	if e, _ := store.Last(testCluster); e != 9 {
		t.Fatalf("store moved to %d on a refused manifest", e)
	}
}
