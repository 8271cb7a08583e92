// Package leader parses and verifies the signed leader manifest of a
// TeeSQL-style cluster (seed 003): a DNS TXT record naming the current
// leader, signed with an Ethereum key (EIP-191 personal_sign, Keccak-256,
// secp256k1). The wire format, the canonical signing string and the
// verdicts follow TeeSQL's psycopg-ra-tls verifier, pinned by the vectors in
// shared/testdata/ratls/teesql_manifest_vectors.json. On top of upstream,
// this package also checks the cluster id and refuses an epoch older than
// the last one seen (EpochStore).
package leader

import (
	"encoding/hex"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/pgtrust/pgtrust/failure"
)

// Error classes. They are declared here rather than in package failure so
// that this package can land without touching the shared vocabulary; the
// strings are stable.
const (
	// ClassMalformed: the record is not a manifest (a part without "=", a
	// required field missing, a field of the wrong form).
	ClassMalformed failure.Class = "manifest_malformed"
	// ClassVersion: v is not 1. Checked before the signature, as upstream.
	ClassVersion failure.Class = "manifest_version_unsupported"
	// ClassSignature: the sig field is not a valid 65-byte secp256k1
	// recoverable signature (wrong length, bad v, high s, no key recovers).
	ClassSignature failure.Class = "manifest_signature_invalid"
	// ClassSigner: the signature is valid but recovers another address.
	ClassSigner failure.Class = "manifest_signer_mismatch"
	// ClassCluster: the manifest is for another cluster.
	ClassCluster failure.Class = "manifest_cluster_mismatch"
	// ClassExpired: valid_until <= now.
	ClassExpired failure.Class = "manifest_expired"
	// ClassEpochRollback: the epoch is older than the last one seen.
	ClassEpochRollback failure.Class = "manifest_epoch_rollback"
	// ClassUnsignedField: the policy refuses unknown (unsigned) keys.
	ClassUnsignedField failure.Class = "manifest_unsigned_field"
	// ClassFetch: the manifest could not be fetched (DNS).
	ClassFetch failure.Class = "manifest_fetch_failed"
)

// Version is the only manifest version understood.
const Version = "1"

// Manifest is a parsed leader manifest. Parse validates the form of every
// field; only Verify says whether it is authentic.
type Manifest struct {
	Version        string // "1"
	Cluster        string // "0x" + 40 lowercase hex digits
	LeaderInstance string // lowercase hex
	LeaderURL      string // verbatim, as signed
	Epoch          uint64
	ValidUntil     int64 // Unix seconds; the manifest is expired when ValidUntil <= now
	Signature      []byte
	// Unsigned lists, sorted, the keys present on the wire that the
	// signature does not cover. Upstream accepts and ignores them; nothing
	// here reads their values.
	Unsigned []string
}

var signedKeys = []string{"cluster", "epoch", "leader_instance", "leader_url", "v", "valid_until"}

const fixMalformed = "the record is not a valid leader manifest: check the cluster domain, and ask the cluster operator whether the dns-controller publishes a v=1 manifest"

// Parse parses the wire form
//
//	v=1;cluster=0x…;leader_instance=…;leader_url=…;epoch=N;valid_until=N;sig=0x…
//
// with upstream's rules: parts split on ";" (empty parts dropped), each
// trimmed and split at its first "=", key and value trimmed, a later
// duplicate key overwriting an earlier one, order free. The checks run in
// upstream's order: sig present, required fields present, version, integer
// fields, sig hex and length.
func Parse(txt string) (*Manifest, error) {
	fields := map[string]string{}
	for _, part := range strings.Split(txt, ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return nil, failure.New(ClassMalformed, "leader manifest: a part has no \"=\"").
				WithEvidence("part %q", clip(part)).WithFix("%s", fixMalformed)
		}
		fields[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	sig, ok := fields["sig"]
	if !ok {
		return nil, failure.New(ClassMalformed, "leader manifest: missing sig field").
			WithEvidence("keys present: %s", keyList(fields)).WithFix("%s", fixMalformed)
	}
	for _, k := range signedKeys {
		if _, ok := fields[k]; !ok {
			return nil, failure.New(ClassMalformed, "leader manifest: missing field %q", k).
				WithEvidence("keys present: %s", keyList(fields)).WithFix("%s", fixMalformed)
		}
	}
	if v := fields["v"]; v != Version {
		return nil, failure.New(ClassVersion, "unsupported manifest version").
			WithEvidence("v=%q, this client understands v=%s", clip(v), Version).
			WithFix("upgrade pgtrust, or ask the cluster operator which manifest version the dns-controller publishes")
	}
	m := &Manifest{Version: Version, LeaderURL: fields["leader_url"]}
	var err error
	if m.Epoch, err = decimal(fields["epoch"], 64); err != nil {
		return nil, badField("epoch", fields["epoch"], "a non-negative decimal integer")
	}
	vu, err := decimal(fields["valid_until"], 63)
	if err != nil {
		return nil, badField("valid_until", fields["valid_until"], "Unix seconds, a non-negative decimal integer")
	}
	m.ValidUntil = int64(vu)
	if m.Cluster, err = hexField(fields["cluster"], true, 20); err != nil {
		return nil, badField("cluster", fields["cluster"], "0x followed by 40 hex digits")
	}
	if m.LeaderInstance, err = hexField(fields["leader_instance"], false, 0); err != nil {
		return nil, badField("leader_instance", fields["leader_instance"], "hex digits")
	}
	if m.LeaderURL == "" {
		return nil, badField("leader_url", "", "a URL")
	}
	raw := strings.TrimPrefix(strings.TrimPrefix(sig, "0x"), "0X")
	b, err := hex.DecodeString(raw)
	if err != nil {
		return nil, failure.New(ClassSignature, "leader manifest: sig is not hex").
			WithEvidence("sig %q", clip(sig)).WithFix("%s", fixMalformed)
	}
	if len(b) != 65 {
		return nil, failure.New(ClassSignature, "leader manifest: sig must be 65 bytes").
			WithEvidence("sig is %d bytes", len(b)).WithFix("%s", fixMalformed)
	}
	m.Signature = b
	for k := range fields {
		if k != "sig" && !isSigned(k) {
			m.Unsigned = append(m.Unsigned, k)
		}
	}
	sort.Strings(m.Unsigned)
	return m, nil
}

// CanonicalBody is the exact string that is signed: the six signed fields in
// alphabetical key order, rebuilt from the parsed values (never the wire
// text), hex fields lowercased, integers in decimal, leader_url verbatim.
func (m *Manifest) CanonicalBody() string {
	return "cluster=" + m.Cluster +
		";epoch=" + strconv.FormatUint(m.Epoch, 10) +
		";leader_instance=" + m.LeaderInstance +
		";leader_url=" + m.LeaderURL +
		";v=" + m.Version +
		";valid_until=" + strconv.FormatInt(m.ValidUntil, 10)
}

func isSigned(k string) bool {
	for _, s := range signedKeys {
		if s == k {
			return true
		}
	}
	return false
}

// decimal accepts only ASCII digits (no sign, no spaces, no underscores) so
// that two parsers cannot disagree on the value that was signed.
func decimal(s string, bits int) (uint64, error) {
	if s == "" {
		return 0, strconv.ErrSyntax
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, strconv.ErrSyntax
		}
	}
	return strconv.ParseUint(s, 10, bits)
}

// hexField validates an ASCII hex field and lowercases it. Only ASCII is
// accepted so that lowercasing cannot differ between implementations.
func hexField(s string, prefixed bool, wantBytes int) (string, error) {
	body := s
	if prefixed {
		if len(s) < 2 || s[0] != '0' || (s[1] != 'x' && s[1] != 'X') {
			return "", strconv.ErrSyntax
		}
		body = s[2:]
	}
	if body == "" || (wantBytes > 0 && len(body) != 2*wantBytes) {
		return "", strconv.ErrSyntax
	}
	for i := 0; i < len(body); i++ {
		if !isHex(body[i]) {
			return "", strconv.ErrSyntax
		}
	}
	if prefixed {
		return "0x" + strings.ToLower(body), nil
	}
	return strings.ToLower(body), nil
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func badField(key, val, want string) error {
	return failure.New(ClassMalformed, "leader manifest: field %q is malformed", key).
		WithEvidence("%s=%q, want %s", key, clip(val), want).WithFix("%s", fixMalformed)
}

func keyList(fields map[string]string) string {
	ks := make([]string, 0, len(fields))
	for k := range fields {
		ks = append(ks, fmt.Sprintf("%q", clip(k)))
	}
	sort.Strings(ks)
	return strings.Join(ks, ", ")
}

// clip bounds evidence taken from an untrusted record.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}
