// Package leadertest serves and signs leader manifests for tests of the
// packages that follow a leader (internal/leader, internal/proxy): a
// loopback DNS server whose TXT record can be changed while it runs, and
// the signing side of seed 003's EIP-191 manifest.
package leadertest

import (
	"encoding/binary"
	"encoding/hex"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"
	"golang.org/x/crypto/sha3"
)

// TestPrivateKey is the vectors' signing key (0x11…11), whose address is
// 0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A.
const TestPrivateKey = "1111111111111111111111111111111111111111111111111111111111111111"

// Key returns TestPrivateKey.
func Key() *secp256k1.PrivateKey {
	b, _ := hex.DecodeString(TestPrivateKey)
	return secp256k1.PrivKeyFromBytes(b)
}

// Address is the 0x-prefixed lowercase address of k.
func Address(k *secp256k1.PrivateKey) string {
	h := keccak(k.PubKey().SerializeUncompressed()[1:])
	return "0x" + hex.EncodeToString(h[12:])
}

func keccak(parts ...[]byte) []byte {
	h := sha3.NewLegacyKeccak256()
	for _, p := range parts {
		h.Write(p)
	}
	return h.Sum(nil)
}

// Fields are a manifest's signed fields.
type Fields struct {
	Cluster        string // 0x + 40 lowercase hex
	LeaderInstance string // lowercase hex
	LeaderURL      string
	Epoch          uint64
	ValidUntil     int64
}

// Sign returns the TXT wire form of f signed by k (EIP-191 personal_sign
// over the canonical body: signed keys sorted, joined by ";"; v = 27/28).
func Sign(k *secp256k1.PrivateKey, f Fields) string {
	body := "cluster=" + f.Cluster + ";epoch=" + strconv.FormatUint(f.Epoch, 10) + ";leader_instance=" + f.LeaderInstance +
		";leader_url=" + f.LeaderURL + ";v=1;valid_until=" + strconv.FormatInt(f.ValidUntil, 10)
	d := keccak([]byte("\x19Ethereum Signed Message:\n"+strconv.Itoa(len(body))), []byte(body))
	c := ecdsa.SignCompact(k, d, false)
	sig := append(append([]byte{}, c[1:]...), c[0])
	return "v=1;cluster=" + f.Cluster + ";leader_instance=" + f.LeaderInstance + ";leader_url=" + f.LeaderURL +
		";epoch=" + strconv.FormatUint(f.Epoch, 10) + ";valid_until=" + strconv.FormatInt(f.ValidUntil, 10) + ";sig=0x" + hex.EncodeToString(sig)
}

// Chunks splits a record body into TXT character-strings of at most 255
// bytes, as publishers do.
func Chunks(s string) []string {
	var out []string
	for s != "" {
		n := min(255, len(s))
		out = append(out, s[:n])
		s = s[n:]
	}
	return out
}

// DNSServer is a minimal authoritative DNS server on loopback UDP: one TXT
// record for one name (NXDOMAIN for other names), replaceable at any time.
// Hand-written: the wire format needed is small and the module then needs
// no DNS library.
type DNSServer struct {
	Addr string // "127.0.0.1:port"
	name string

	mu      sync.Mutex
	record  string
	queries int
	silent  bool
}

// StartDNS serves TXT record for name until the test ends.
func StartDNS(t testing.TB, name, record string) *DNSServer {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &DNSServer{Addr: pc.LocalAddr().String(), name: strings.TrimSuffix(name, "."), record: record}
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if resp := s.answer(buf[:n]); resp != nil {
				_, _ = pc.WriteTo(resp, addr)
			}
		}
	}()
	return s
}

// Set replaces the record.
func (s *DNSServer) Set(record string) {
	s.mu.Lock()
	s.record = record
	s.mu.Unlock()
}

// SetSilent makes the server drop every query unanswered (a resolver
// timeout), or answer again.
func (s *DNSServer) SetSilent(silent bool) {
	s.mu.Lock()
	s.silent = silent
	s.mu.Unlock()
}

// Queries is the number of TXT queries for the name answered so far.
func (s *DNSServer) Queries() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries
}

func (s *DNSServer) answer(q []byte) []byte {
	n := len(q)
	s.mu.Lock()
	silent := s.silent
	s.mu.Unlock()
	if n < 12 || silent {
		return nil
	}
	var labels []string
	i := 12
	for i < n && q[i] != 0 {
		l := int(q[i])
		if i+1+l > n {
			return nil
		}
		labels = append(labels, string(q[i+1:i+1+l]))
		i += 1 + l
	}
	if i+5 > n {
		return nil
	}
	qEnd := i + 5
	qtype := binary.BigEndian.Uint16(q[i+1:])
	s.mu.Lock()
	record := s.record
	nameMatch := strings.EqualFold(strings.Join(labels, "."), s.name)
	match := nameMatch && qtype == 16
	if match {
		s.queries++
	}
	s.mu.Unlock()
	resp := append([]byte{}, q[:2]...)
	flags := uint16(0x8400) // QR, AA
	an := uint16(1)
	if !match {
		an = 0
		if !nameMatch {
			flags |= 3 // NXDOMAIN
		}
	}
	resp = binary.BigEndian.AppendUint16(resp, flags)
	resp = binary.BigEndian.AppendUint16(resp, 1)
	resp = binary.BigEndian.AppendUint16(resp, an)
	resp = append(resp, 0, 0, 0, 0)
	resp = append(resp, q[12:qEnd]...)
	if match {
		var rdata []byte
		for _, c := range Chunks(record) {
			rdata = append(append(rdata, byte(len(c))), c...)
		}
		resp = append(resp, 0xc0, 12, 0, 16, 0, 1, 0, 0, 0, 0) // TTL 0: never cached
		resp = binary.BigEndian.AppendUint16(resp, uint16(len(rdata)))
		resp = append(resp, rdata...)
	}
	return resp
}
