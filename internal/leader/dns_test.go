package leader

import (
	"context"
	"encoding/binary"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
)

// txtServer is a minimal authoritative DNS server on loopback UDP: it
// answers a TXT query for name with one record made of chunks, NXDOMAIN for
// any other name, and nothing at all when silent is set. Hand-written (the
// wire format is small) so the test needs no DNS library.
func txtServer(t *testing.T, name string, chunks []string, silent bool) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if silent || n < 12 {
				continue
			}
			q := buf[:n]
			// Question: QNAME labels, then QTYPE and QCLASS.
			var labels []string
			i := 12
			for i < n && q[i] != 0 {
				l := int(q[i])
				if i+1+l > n {
					break
				}
				labels = append(labels, string(q[i+1:i+1+l]))
				i += 1 + l
			}
			if i+5 > n {
				continue
			}
			qEnd := i + 5
			qtype := binary.BigEndian.Uint16(q[i+1:])
			resp := append([]byte{}, q[:2]...)
			match := strings.EqualFold(strings.Join(labels, "."), strings.TrimSuffix(name, ".")) && qtype == 16
			flags := uint16(0x8400) // QR, AA
			an := uint16(1)
			if !match {
				flags |= 3 // NXDOMAIN
				an = 0
			}
			resp = binary.BigEndian.AppendUint16(resp, flags)
			resp = binary.BigEndian.AppendUint16(resp, 1)
			resp = binary.BigEndian.AppendUint16(resp, an)
			resp = append(resp, 0, 0, 0, 0)
			resp = append(resp, q[12:qEnd]...)
			if match {
				var rdata []byte
				for _, c := range chunks {
					rdata = append(append(rdata, byte(len(c))), c...)
				}
				resp = append(resp, 0xc0, 12, 0, 16, 0, 1, 0, 0, 0, 60)
				resp = binary.BigEndian.AppendUint16(resp, uint16(len(rdata)))
				resp = append(resp, rdata...)
			}
			_, _ = pc.WriteTo(resp, addr)
		}
	}()
	return pc.LocalAddr().String()
}

func resolverFor(addr string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", addr)
	}}
}

func TestLookupFromLocalDNS(t *testing.T) {
	v := loadVectors(t)
	golden := v.Cases[0].TXT
	chunks := chunk255(golden)
	if len(chunks) < 2 {
		t.Fatalf("golden record fits one chunk")
	}
	addr := txtServer(t, "_teesql-leader.monitor.teesql.test", chunks, false)
	r := resolverFor(addr)
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
	addr := txtServer(t, "x.test", nil, true)
	_, err := Lookup(context.Background(), resolverFor(addr), "x.test.", 300*time.Millisecond)
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
		return resolverFor(txtServer(t, "_teesql-leader.c.test", chunk255(sign(k, m)), false))
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

// chunk255 splits a record body into TXT character-strings, as publishers do.
func chunk255(s string) []string {
	var chunks []string
	for s != "" {
		n := min(255, len(s))
		chunks = append(chunks, s[:n])
		s = s[n:]
	}
	return chunks
}
