package leader

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/leader/leadertest"
)

type vectorFile struct {
	TestPrivateKey  string `json:"test_private_key"`
	SignerAddress   string `json:"signer_address"`
	SignerPubkey    string `json:"signer_pubkey_uncompressed"`
	GoldenBody      string `json:"golden_canonical_body"`
	GoldenDigest    string `json:"golden_eip191_digest"`
	GoldenSignature string `json:"golden_signature"`
	Cases           []struct {
		Name           string `json:"name"`
		TXT            string `json:"txt"`
		ExpectedSigner string `json:"expected_signer"`
		Now            int64  `json:"now"`
		Expect         string `json:"expect"`
		CanonicalBody  string `json:"canonical_body"`
		Recovered      string `json:"recovered_address"`
	} `json:"cases"`
}

// repoRoot walks up from the test's directory to the module root; the
// shared testdata sits beside the clone, locally and in CI.
func repoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test directory")
		}
		dir = parent
	}
}

func loadVectors(t testing.TB) vectorFile {
	t.Helper()
	p := filepath.Join(repoRoot(t), "..", "shared", "testdata", "ratls", "teesql_manifest_vectors.json")
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("manifest vectors: %v (the shared testdata must sit beside the clone)", err)
	}
	var v vectorFile
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Cases) < 11 {
		t.Fatalf("only %d vector cases", len(v.Cases))
	}
	return v
}

func wantClass(t *testing.T, err error, c failure.Class) {
	t.Helper()
	var fe *failure.Error
	if !errors.As(err, &fe) {
		t.Fatalf("error %v (%T), want class %s", err, err, c)
	}
	if fe.Class != c {
		t.Fatalf("class %s (%v), want %s", fe.Class, fe.Detail(), c)
	}
	if fe.Fix == "" || fe.Evidence == "" {
		t.Errorf("class %s without evidence or fix: %s", c, fe.Detail())
	}
}

func mustAddr(t testing.TB, s string) Address {
	t.Helper()
	a, err := ParseAddress(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// The class each vector is refused with; the vectors give a reason in
// words, this table pins it to a stable class.
var vectorClass = map[string]failure.Class{
	"golden_expired_at_boundary": ClassExpired,
	"wrong_expected_signer":      ClassSigner,
	"tampered_leader_url":        ClassSigner,
	"expired_upstream_case":      ClassExpired,
	"unsupported_version":        ClassVersion,
	"short_signature":            ClassSignature,
	"missing_signature":          ClassMalformed,
}

func TestVectors(t *testing.T) {
	v := loadVectors(t)
	for _, c := range v.Cases {
		t.Run(c.Name, func(t *testing.T) {
			p := Policy{Signer: mustAddr(t, c.ExpectedSigner)}
			now := time.Unix(c.Now, 0)
			m, err := Parse(c.TXT)
			if err == nil {
				if c.CanonicalBody != "" && m.CanonicalBody() != c.CanonicalBody {
					t.Errorf("canonical body\n got %s\nwant %s", m.CanonicalBody(), c.CanonicalBody)
				}
				err = m.Verify(p, now)
			}
			if strings.HasPrefix(c.Expect, "accept") {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			class, ok := vectorClass[c.Name]
			if !ok {
				t.Fatalf("no class pinned for reject vector %q", c.Name)
			}
			wantClass(t, err, class)
			if c.Recovered != "" {
				got, rerr := Recover(EIP191Digest([]byte(m.CanonicalBody())), m.Signature)
				if rerr != nil || hex.EncodeToString(got[:]) != c.Recovered {
					t.Errorf("recovered %x, %v; want %s", got, rerr, c.Recovered)
				}
			}
		})
	}
}

func TestGoldenDigestAndKey(t *testing.T) {
	v := loadVectors(t)
	d := EIP191Digest([]byte(v.GoldenBody))
	if hex.EncodeToString(d[:]) != v.GoldenDigest {
		t.Fatalf("digest %x, want %s", d, v.GoldenDigest)
	}
	if len(v.GoldenBody) != 240 {
		t.Fatalf("golden body is %d bytes, want 240", len(v.GoldenBody))
	}
	priv := testKey(t, v)
	pub := hex.EncodeToString(priv.PubKey().SerializeUncompressed())
	if pub != v.SignerPubkey {
		t.Fatalf("public key %s, want %s", pub, v.SignerPubkey)
	}
	sig, _ := hex.DecodeString(strings.TrimPrefix(v.GoldenSignature, "0x"))
	got, err := Recover(d, sig)
	if err != nil {
		t.Fatal(err)
	}
	if got != mustAddr(t, v.SignerAddress) {
		t.Fatalf("recovered %s, want %s", got, v.SignerAddress)
	}
	// The vectors' address is written in EIP-55 form; String must reproduce it.
	if got.String() != v.SignerAddress {
		t.Fatalf("EIP-55 %s, want %s", got, v.SignerAddress)
	}
	// The well-known address of private key 1.
	var one [32]byte
	one[31] = 1
	k1 := secp256k1.PrivKeyFromBytes(one[:])
	if a := addressOf(k1); a.String() != "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf" {
		t.Fatalf("address of key 1: %s", a)
	}
}

func testKey(t testing.TB, v vectorFile) *secp256k1.PrivateKey {
	b, err := hex.DecodeString(strings.TrimPrefix(v.TestPrivateKey, "0x"))
	if err != nil || len(b) != 32 {
		t.Fatalf("test key: %v", err)
	}
	return secp256k1.PrivKeyFromBytes(b)
}

func addressOf(k *secp256k1.PrivateKey) Address {
	var a Address
	h := keccak256(k.PubKey().SerializeUncompressed()[1:])
	copy(a[:], h[12:])
	return a
}

// sign makes the wire record of m signed by k, v written as 27/28.
func sign(k *secp256k1.PrivateKey, m *Manifest) string {
	d := EIP191Digest([]byte(m.CanonicalBody()))
	c := ecdsa.SignCompact(k, d[:], false)
	sig := append(append([]byte{}, c[1:]...), c[0])
	return "v=1;cluster=" + m.Cluster + ";leader_instance=" + m.LeaderInstance + ";leader_url=" + m.LeaderURL +
		";epoch=" + itoa(m.Epoch) + ";valid_until=" + itoa(uint64(m.ValidUntil)) + ";sig=0x" + hex.EncodeToString(sig)
}

func itoa(u uint64) string { return strconv.FormatUint(u, 10) }

const testCluster = "0xbd32b609057a1a4569558a571d535c8f1212b097"

func signed(t *testing.T, k *secp256k1.PrivateKey, epoch uint64, validUntil int64) *Manifest {
	t.Helper()
	m, err := Parse(sign(k, &Manifest{Version: "1", Cluster: testCluster, LeaderInstance: "ea23198e3419ebbb240571a29d0112d9bcbe69c0",
		LeaderURL: "https://leader.example:5433", Epoch: epoch, ValidUntil: validUntil}))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestSignatureForms(t *testing.T) {
	v := loadVectors(t)
	p := Policy{Signer: mustAddr(t, v.SignerAddress)}
	now := time.Unix(1713311999, 0)
	golden := v.Cases[0].TXT
	m, err := Parse(golden)
	if err != nil {
		t.Fatal(err)
	}
	// v written as 0/1 is the same signature.
	alt := *m
	alt.Signature = append([]byte{}, m.Signature...)
	alt.Signature[64] -= 27
	if err := alt.Verify(p, now); err != nil {
		t.Fatalf("v=%d refused: %v", alt.Signature[64], err)
	}
	// The high-s twin (s' = n - s, recovery id flipped) is mathematically
	// valid and refused.
	var s secp256k1.ModNScalar
	s.SetByteSlice(m.Signature[32:64])
	s.Negate()
	hi := *m
	hi.Signature = append([]byte{}, m.Signature...)
	sb := s.Bytes()
	copy(hi.Signature[32:64], sb[:])
	hi.Signature[64] = 27 + (1 - (m.Signature[64] - 27))
	wantClass(t, hi.Verify(p, now), ClassSignature)
	// Recovery ids 29/30 (and anything else) are refused.
	for _, bad := range []byte{2, 26, 29, 30, 255} {
		b := *m
		b.Signature = append([]byte{}, m.Signature...)
		b.Signature[64] = bad
		wantClass(t, b.Verify(p, now), ClassSignature)
	}
	// r = 0: no key recovers.
	z := *m
	z.Signature = make([]byte, 65)
	z.Signature[64] = 27
	wantClass(t, z.Verify(p, now), ClassSignature)
}

func TestTamperedFields(t *testing.T) {
	v := loadVectors(t)
	p := Policy{Signer: mustAddr(t, v.SignerAddress)}
	now := time.Unix(1713311999, 0)
	golden := v.Cases[0].TXT
	for _, tc := range []struct{ from, to string }{
		{"epoch=42", "epoch=43"},
		{"valid_until=1713312000", "valid_until=1713312001"},
		{"cluster=0xbd32", "cluster=0xbd33"},
		{"leader_instance=ea23", "leader_instance=ea24"},
		{"-5433.", "-5434."},
	} {
		txt := strings.Replace(golden, tc.from, tc.to, 1)
		if txt == golden {
			t.Fatalf("%s not in the golden record", tc.from)
		}
		m, err := Parse(txt)
		if err != nil {
			t.Fatalf("%s: %v", tc.to, err)
		}
		wantClass(t, m.Verify(p, now), ClassSigner)
	}
}

func TestParseRefusals(t *testing.T) {
	v := loadVectors(t)
	golden := v.Cases[0].TXT
	for _, tc := range []struct {
		name, txt string
		class     failure.Class
	}{
		{"no equals", golden + ";garbage", ClassMalformed},
		{"missing epoch", strings.Replace(golden, "epoch=42;", "", 1), ClassMalformed},
		{"signed epoch", strings.Replace(golden, "epoch=42", "epoch=-42", 1), ClassMalformed},
		{"plus epoch", strings.Replace(golden, "epoch=42", "epoch=+42", 1), ClassMalformed},
		{"epoch overflow", strings.Replace(golden, "epoch=42", "epoch=18446744073709551616", 1), ClassMalformed},
		{"float valid_until", strings.Replace(golden, "valid_until=1713312000", "valid_until=1713312000.5", 1), ClassMalformed},
		{"cluster short", strings.Replace(golden, "cluster=0xbd32", "cluster=0xbd3", 1), ClassMalformed},
		{"cluster unprefixed", strings.Replace(golden, "cluster=0x", "cluster=", 1), ClassMalformed},
		{"instance not hex", strings.Replace(golden, "leader_instance=ea", "leader_instance=zz", 1), ClassMalformed},
		{"empty url", strings.Replace(golden, "leader_url=https://", "leader_url=;x=", 1), ClassMalformed},
		{"sig not hex", strings.Replace(golden, "sig=0x7b", "sig=0xzz", 1), ClassSignature},
		{"version before signature", strings.Replace(strings.Replace(golden, "v=1", "v=01", 1), "sig=0x7b", "sig=0xzz", 1), ClassVersion},
		{"empty", "", ClassMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.txt)
			wantClass(t, err, tc.class)
		})
	}
	// Upstream rules that accept: whitespace, empty parts, a later
	// duplicate overwriting an earlier one, a sig without 0x.
	loose := strings.ReplaceAll(golden, ";", " ; ;") + ";epoch=7;epoch=42"
	m, err := Parse(strings.Replace(loose, "sig=0x", "sig=", 1))
	if err != nil {
		t.Fatal(err)
	}
	if m.CanonicalBody() != v.GoldenBody {
		t.Fatalf("canonical %s", m.CanonicalBody())
	}
}

func TestUnknownFields(t *testing.T) {
	v := loadVectors(t)
	var txt string
	for _, c := range v.Cases {
		if c.Name == "unknown_extra_field" {
			txt = c.TXT
		}
	}
	m, err := Parse(txt)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(m.Unsigned, ",") != "note" {
		t.Fatalf("unsigned %v", m.Unsigned)
	}
	p := Policy{Signer: mustAddr(t, v.SignerAddress), RejectUnsigned: true}
	wantClass(t, m.Verify(p, time.Unix(1713311999, 0)), ClassUnsignedField)
}

func TestClusterAndExpiry(t *testing.T) {
	v := loadVectors(t)
	k := testKey(t, v)
	m := signed(t, k, 5, 2000)
	p := Policy{Signer: addressOf(k), Cluster: "0X" + strings.ToUpper(testCluster[2:])}
	if err := m.Verify(p, time.Unix(1999, 0)); err != nil {
		t.Fatal(err)
	}
	wantClass(t, m.Verify(p, time.Unix(2000, 0)), ClassExpired)
	p.Cluster = "0x" + strings.Repeat("ab", 20)
	wantClass(t, m.Verify(p, time.Unix(1999, 0)), ClassCluster)
	p.Cluster = "bogus"
	wantClass(t, m.Verify(p, time.Unix(1999, 0)), failure.ConfigInvalid)
	// Another key signing the same manifest: signer mismatch.
	other := secp256k1.PrivKeyFromBytes([]byte(strings.Repeat("\x22", 32)))
	m2 := signed(t, other, 5, 2000)
	wantClass(t, m2.Verify(Policy{Signer: addressOf(k)}, time.Unix(1999, 0)), ClassSigner)
}

func TestParseAddress(t *testing.T) {
	for _, ok := range []string{
		"0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A",
		"0x19e7e376e7c213b7e7e7e46cc70a5dd086daff2a",
		"19E7E376E7C213B7E7E7E46CC70A5DD086DAFF2A",
	} {
		if _, err := ParseAddress(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{
		"0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2a", // checksum broken
		"0x19e7",
		"0xzz",
	} {
		_, err := ParseAddress(bad)
		wantClass(t, err, failure.ConfigInvalid)
	}
}

func TestEpochStore(t *testing.T) {
	v := loadVectors(t)
	k := testKey(t, v)
	path := filepath.Join(t.TempDir(), "epochs.json")
	s, err := OpenEpochStore(path)
	if err != nil {
		t.Fatal(err)
	}
	p := Policy{Signer: addressOf(k), Cluster: testCluster}
	now := time.Unix(1000, 0)
	accept := func(s *EpochStore, epoch uint64) error {
		m := signed(t, k, epoch, 2000)
		if err := m.Verify(p, now); err != nil {
			t.Fatal(err)
		}
		return s.Accept(m)
	}
	for _, e := range []uint64{3, 3, 7} {
		if err := accept(s, e); err != nil {
			t.Fatalf("epoch %d: %v", e, err)
		}
	}
	wantClass(t, accept(s, 6), ClassEpochRollback)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("store mode %v, want 0600", fi.Mode().Perm())
	}
	// The last epoch survives a restart.
	s2, err := OpenEpochStore(path)
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := s2.Last(testCluster); !ok || e != 7 {
		t.Fatalf("reloaded epoch %d %v", e, ok)
	}
	wantClass(t, accept(s2, 2), ClassEpochRollback)
	if err := accept(s2, 9); err != nil {
		t.Fatal(err)
	}
	// A second store on the same file (a configuration reload while the
	// first still serves sessions): the first, which last saw 7, must not
	// write 8 over the 9 the second recorded.
	wantClass(t, accept(s, 8), ClassEpochRollback)
	s3, err := OpenEpochStore(path)
	if err != nil {
		t.Fatal(err)
	}
	if e, _ := s3.Last(testCluster); e != 9 {
		t.Fatalf("stored epoch %d after the stale store's attempt, want 9", e)
	}
	// Other clusters are independent.
	if _, ok := s2.Last("0x" + strings.Repeat("00", 20)); ok {
		t.Fatal("unrelated cluster has an epoch")
	}
	// A damaged store is refused, not reset.
	if err := os.WriteFile(path, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = OpenEpochStore(path)
	wantClass(t, err, failure.ConfigInvalid)
}

func TestRecordNameAndTXT(t *testing.T) {
	for in, want := range map[string]string{
		"monitor.teesql.com":                "_teesql-leader.monitor.teesql.com",
		"_teesql-leader.monitor.teesql.com": "_teesql-leader.monitor.teesql.com",
		"c.example.":                        "_teesql-leader.c.example.",
	} {
		if got := RecordName(in); got != want {
			t.Errorf("RecordName(%q) = %q, want %q", in, got, want)
		}
	}
	v := loadVectors(t)
	golden := v.Cases[0].TXT
	chunks := leadertest.Chunks(golden)
	if len(chunks) < 2 {
		t.Fatalf("golden record fits one chunk (%d bytes)", len(golden))
	}
	m, err := ParseTXT([][]string{chunks, {"v=1;garbage"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Verify(Policy{Signer: mustAddr(t, v.SignerAddress)}, time.Unix(1713311999, 0)); err != nil {
		t.Fatal(err)
	}
	host, port, err := m.LeaderAddress()
	if err != nil || host != "ea23198e3419ebbb240571a29d0112d9bcbe69c0-5433.dstack-base-prod9.phala.network" || port != "443" {
		t.Fatalf("leader %s %s %v", host, port, err)
	}
	_, err = ParseTXT(nil)
	if failure.ClassOf(err) != ClassFetch {
		t.Fatalf("empty RRset: %v", err)
	}
	for u, want := range map[string]string{"http://h": "h:80", "https://h:5433/x": "h:5433", "HTTPS://[::1]": "::1:443"} {
		mm := *m
		mm.LeaderURL = u
		h, p, err := mm.LeaderAddress()
		if err != nil || h+":"+p != want {
			t.Errorf("%s: %s:%s %v", u, h, p, err)
		}
	}
	for _, u := range []string{"https://", "ftp://h", "::"} {
		mm := *m
		mm.LeaderURL = u
		_, _, err := mm.LeaderAddress()
		wantClass(t, err, ClassMalformed)
	}
}
