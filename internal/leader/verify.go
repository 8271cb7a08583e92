package leader

import (
	"crypto/subtle"
	"encoding/hex"
	"strconv"
	"strings"
	"time"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"
	"golang.org/x/crypto/sha3"

	"github.com/pgtrust/pgtrust/failure"
)

// Address is a 20-byte Ethereum address.
type Address [20]byte

// ParseAddress parses "0x" + 40 hex digits (the prefix is optional). An
// all-lowercase or all-uppercase address is taken as is; a mixed-case one
// must carry a valid EIP-55 checksum, so a mistyped pinned signer is caught.
func ParseAddress(s string) (Address, error) {
	var a Address
	body := strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X")
	b, err := hex.DecodeString(body)
	if err != nil || len(b) != 20 {
		return a, failure.New(failure.ConfigInvalid, "manifest signer address is not 20 bytes of hex").
			WithEvidence("address %q", clip(s)).
			WithFix("set the signer to the cluster operator's manifest_signer_address, 0x followed by 40 hex digits")
	}
	copy(a[:], b)
	if body != strings.ToLower(body) && body != strings.ToUpper(body) && a.String()[2:] != body {
		return a, failure.New(failure.ConfigInvalid, "manifest signer address fails its EIP-55 checksum").
			WithEvidence("address %q, checksummed form %s", clip(s), a.String()).
			WithFix("recheck the address against the operator's value (a mixed-case address encodes a checksum; a typo breaks it)")
	}
	return a, nil
}

// String returns the EIP-55 checksummed form.
func (a Address) String() string {
	lower := hex.EncodeToString(a[:])
	h := keccak256([]byte(lower))
	out := []byte(lower)
	for i, c := range out {
		nibble := h[i/2] >> 4
		if i%2 == 1 {
			nibble = h[i/2] & 0x0f
		}
		if c >= 'a' && nibble >= 8 {
			out[i] = c - 'a' + 'A'
		}
	}
	return "0x" + string(out)
}

func keccak256(parts ...[]byte) [32]byte {
	h := sha3.NewLegacyKeccak256()
	for _, p := range parts {
		h.Write(p)
	}
	var d [32]byte
	h.Sum(d[:0])
	return d
}

// EIP191Digest is Keccak-256("\x19Ethereum Signed Message:\n" ‖ len ‖ msg),
// the digest personal_sign signs.
func EIP191Digest(msg []byte) [32]byte {
	return keccak256([]byte("\x19Ethereum Signed Message:\n"+strconv.Itoa(len(msg))), msg)
}

// Recover returns the address whose key made the 65-byte r‖s‖v signature
// over digest. v may be 27/28 (what signers write) or 0/1. A high s is
// refused: every Ethereum signer emits low s (EIP-2), and accepting both
// would make a second valid signature for every manifest.
func Recover(digest [32]byte, sig []byte) (Address, error) {
	var a Address
	if len(sig) != 65 {
		return a, sigErr("sig must be 65 bytes", "sig is %d bytes", len(sig))
	}
	v := sig[64]
	if v >= 27 {
		v -= 27
	}
	if v > 1 {
		return a, sigErr("signature recovery id is invalid", "v=%d, want 27, 28, 0 or 1", sig[64])
	}
	var s secp256k1.ModNScalar
	if overflow := s.SetByteSlice(sig[32:64]); overflow || s.IsOverHalfOrder() {
		return a, sigErr("signature s value is not in the lower half of the curve order", "s=%x", sig[32:64])
	}
	compact := make([]byte, 65)
	compact[0] = 27 + v // decred's compact form: recovery code first, uncompressed key
	copy(compact[1:], sig[:64])
	pub, _, err := ecdsa.RecoverCompact(compact, digest[:])
	if err != nil {
		return a, sigErr("no public key recovers from the signature", "%v", err)
	}
	h := keccak256(pub.SerializeUncompressed()[1:])
	copy(a[:], h[12:])
	return a, nil
}

func sigErr(msg, evidence string, args ...any) error {
	return failure.New(ClassSignature, "leader manifest: %s", msg).WithEvidence(evidence, args...).
		WithFix("the record's signature is damaged or forged: ask the cluster operator to check the dns-controller; do not bypass")
}

// Policy says which manifests are accepted.
type Policy struct {
	// Signer is the pinned signer address (the operator's
	// manifest_signer_address). Required.
	Signer Address
	// Cluster, when set ("0x" + 40 hex, any case), must equal the manifest's
	// cluster id. Upstream does not check it; set it whenever it is known.
	Cluster string
	// RejectUnsigned refuses a manifest carrying keys the signature does not
	// cover. Upstream ignores them (vector unknown_extra_field), so this is
	// off by default.
	RejectUnsigned bool
}

// Verify checks, in upstream's order, the signature against the pinned
// signer, then (beyond upstream) the cluster id, then expiry at the explicit
// instant now (refused when valid_until <= now). It does not check the
// epoch: EpochStore.Accept does, after Verify succeeds.
func (m *Manifest) Verify(p Policy, now time.Time) error {
	got, err := Recover(EIP191Digest([]byte(m.CanonicalBody())), m.Signature)
	if err != nil {
		return err
	}
	if subtle.ConstantTimeCompare(got[:], p.Signer[:]) != 1 {
		return failure.New(ClassSigner, "manifest signature verification failed").
			WithEvidence("the signature recovers %s, the pinned signer is %s", got, p.Signer).
			WithFix("recheck the configured manifest signer against the cluster operator's manifest_signer_address; if it is right, the record was altered: do not bypass")
	}
	if p.Cluster != "" {
		want, err := hexField(strings.TrimSpace(p.Cluster), true, 20)
		if err != nil {
			return failure.New(failure.ConfigInvalid, "configured manifest cluster id is malformed").
				WithEvidence("cluster %q", clip(p.Cluster)).WithFix("set the cluster id to 0x followed by 40 hex digits")
		}
		if subtle.ConstantTimeCompare([]byte(want), []byte(m.Cluster)) != 1 {
			return failure.New(ClassCluster, "leader manifest is for another cluster").
				WithEvidence("manifest cluster %s, expected %s", m.Cluster, want).
				WithFix("check the cluster domain and the configured cluster id: this record names a different cluster")
		}
	}
	if p.RejectUnsigned && len(m.Unsigned) > 0 {
		return failure.New(ClassUnsignedField, "leader manifest carries fields its signature does not cover").
			WithEvidence("unsigned keys: %s", clip(strings.Join(m.Unsigned, ", "))).
			WithFix("turn off the unsigned-field refusal, or ask the operator why the record carries extra keys")
	}
	if m.ValidUntil <= now.Unix() {
		return failure.New(ClassExpired, "manifest expired").
			WithEvidence("valid_until %s, now %s", time.Unix(m.ValidUntil, 0).UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339)).
			WithFix("the dns-controller has stopped publishing fresh manifests, or this clock is wrong: check the clock, then ask the operator to check the controller")
	}
	return nil
}
