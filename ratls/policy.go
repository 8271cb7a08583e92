package ratls

import (
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/pgtrust/pgtrust/failure"
)

// Policy says which attested TDs a verifier accepts. The zero value is
// invalid: at least an MRTD allowlist and a collateral source are needed
// (see Validate); the development relaxations are explicit fields. A
// Policy is read, never changed, by verification: safe for concurrent use.
type Policy struct {
	// MRTD is the allowlist of TD firmware measurements, hex (48 bytes,
	// any case, optional 0x prefix). Required unless AllowAnyMRTD.
	MRTD []string
	// AllowAnyMRTD accepts any MRTD (development only).
	AllowAnyMRTD bool
	// RTMR pins RTMR0..3, hex 48 bytes; "" accepts any value.
	RTMR [4]string
	// MinTEETCBSVN is the component-wise minimum of tee_tcb_svn, hex 16
	// bytes; "" sets no minimum.
	MinTEETCBSVN string
	// AcceptTCBStatuses are the TCB statuses accepted; empty means
	// [StatusUpToDate]. StatusRevoked is never accepted.
	AcceptTCBStatuses []TCBStatus
	// AppID (20 bytes each) and ComposeHash (32 bytes each) are optional
	// hex allowlists matched against the RTMR3 app-id and compose-hash
	// events.
	AppID, ComposeHash []string
	// KeyProvider pins the key-provider event's name ("kms",
	// "local-sgx"...); "" accepts any.
	KeyProvider string
	// KMSRoots are KMS root CAs: when set, the certificate must chain to
	// one and the key-provider id must be that root's SPKI DER.
	KMSRoots *x509.CertPool
	// AllowSimulator accepts simulated quotes (development only).
	AllowSimulator bool
	// AllowDebug accepts a TD in debug mode (development only; seed 003's
	// allow_debug_mode): its host can read and change its memory, so it
	// attests nothing about confidentiality. The debug check then passes
	// with a warning in its detail.
	AllowDebug bool
	// Collateral supplies Intel collateral for TCB appraisal. nil is
	// refused unless SkipTCB or AllowSimulator (then a genuine quote fails
	// its tcb check).
	Collateral CollateralSource
	// SkipTCB skips TCB appraisal (development only).
	SkipTCB bool
	// Root is the PCK chain's trust anchor; nil means IntelSGXRoot().
	Root *x509.Certificate
}

// Expected lengths of the hex values a policy holds.
const (
	mrtdLen        = 48
	teeTCBSVNLen   = 16
	appIDLen       = 20
	composeHashLen = 32
)

// compiledPolicy is a validated Policy with its hex decoded once.
type compiledPolicy struct {
	mrtd        [][]byte
	rtmr        [4][]byte // nil: not pinned
	minSVN      []byte    // nil: no minimum
	accept      []TCBStatus
	appID       [][]byte
	composeHash [][]byte
}

var knownStatuses = []TCBStatus{StatusUpToDate, StatusSWHardeningNeeded, StatusConfigurationNeeded,
	StatusConfigurationAndSWHardeningNeeded, StatusOutOfDate, StatusOutOfDateConfigurationNeeded,
	StatusRevoked}

// Validate refuses a policy that cannot be applied as written, with class
// attestation_policy naming the field. It never accepts a policy that
// would silently ignore part of itself.
func (p *Policy) Validate() error {
	_, err := p.compile()
	if err != nil {
		return err
	}
	return nil
}

func policyError(field, expected, got, fix string) *failure.Error {
	return failure.New(ClassPolicy, "attestation policy is invalid: %s", field).
		WithEvidence("field %s: expected %s, got %s", field, expected, got).
		WithFix("%s", fix)
}

// normHex decodes a hex measurement written in any case with an optional
// 0x/0X prefix, as people copy them from tools that differ in both.
func normHex(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if len(s) >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X') {
		s = s[2:]
	}
	return hex.DecodeString(strings.ToLower(s))
}

// NormalizeHex returns a hex value in the canonical form reports use:
// lowercase without prefix. It fails on what Validate refuses.
func NormalizeHex(s string) (string, error) {
	b, err := normHex(s)
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

func hexField(field, s string, n int, fix string) ([]byte, *failure.Error) {
	b, err := normHex(s)
	if err != nil {
		return nil, policyError(field, fmt.Sprintf("%d bytes of hex (optional 0x prefix)", n), fmt.Sprintf("%q (%v)", s, err), fix)
	}
	if len(b) != n {
		return nil, policyError(field, fmt.Sprintf("%d bytes of hex (%d digits)", n, 2*n), fmt.Sprintf("%d bytes in %q", len(b), s), fix)
	}
	return b, nil
}

func (p *Policy) compile() (*compiledPolicy, *failure.Error) {
	if p == nil {
		p = &Policy{}
	}
	c := &compiledPolicy{}
	switch {
	case len(p.MRTD) == 0 && !p.AllowAnyMRTD:
		return nil, policyError("MRTD", "an allowlist of at least one MRTD", "an empty allowlist",
			"list the MRTD of each TD image you trust (pgtrust attest verify --allow-any-mrtd prints a quote's MRTD); for development only, set AllowAnyMRTD")
	case len(p.MRTD) != 0 && p.AllowAnyMRTD:
		return nil, policyError("AllowAnyMRTD", "either an MRTD allowlist or AllowAnyMRTD", fmt.Sprintf("AllowAnyMRTD and %d allowlisted MRTDs", len(p.MRTD)),
			"remove AllowAnyMRTD to enforce the allowlist, or remove the allowlist")
	}
	for i, s := range p.MRTD {
		b, err := hexField(fmt.Sprintf("MRTD[%d]", i), s, mrtdLen, "write the MRTD as 96 hex digits, as a quote's body.mrtd")
		if err != nil {
			return nil, err
		}
		c.mrtd = append(c.mrtd, b)
	}
	for i, s := range p.RTMR {
		if strings.TrimSpace(s) == "" {
			continue
		}
		b, err := hexField(fmt.Sprintf("RTMR[%d]", i), s, mrtdLen, "write the RTMR as 96 hex digits, or leave it empty to accept any value")
		if err != nil {
			return nil, err
		}
		c.rtmr[i] = b
	}
	if strings.TrimSpace(p.MinTEETCBSVN) != "" {
		b, err := hexField("MinTEETCBSVN", p.MinTEETCBSVN, teeTCBSVNLen, "write the minimum tee_tcb_svn as 32 hex digits (16 component SVNs), or leave it empty")
		if err != nil {
			return nil, err
		}
		c.minSVN = b
	}
	for i, st := range p.AcceptTCBStatuses {
		field := fmt.Sprintf("AcceptTCBStatuses[%d]", i)
		if st == StatusRevoked {
			return nil, policyError(field, "a status other than Revoked", "Revoked",
				"remove Revoked: a revoked platform's keys may be in an attacker's hands")
		}
		known := false
		for _, k := range knownStatuses {
			known = known || st == k
		}
		if !known {
			return nil, policyError(field, "one of UpToDate, SWHardeningNeeded, ConfigurationNeeded, ConfigurationAndSWHardeningNeeded, OutOfDate, OutOfDateConfigurationNeeded",
				fmt.Sprintf("%q", st), "use Intel's TCB status names exactly (case-sensitive)")
		}
		c.accept = append(c.accept, st)
	}
	if len(c.accept) == 0 {
		c.accept = []TCBStatus{StatusUpToDate}
	}
	for i, s := range p.AppID {
		b, err := hexField(fmt.Sprintf("AppID[%d]", i), s, appIDLen, "write the app id as 40 hex digits, as the app-id event's payload")
		if err != nil {
			return nil, err
		}
		c.appID = append(c.appID, b)
	}
	for i, s := range p.ComposeHash {
		b, err := hexField(fmt.Sprintf("ComposeHash[%d]", i), s, composeHashLen, "write the compose hash as 64 hex digits (SHA-256 of app-compose.json)")
		if err != nil {
			return nil, err
		}
		c.composeHash = append(c.composeHash, b)
	}
	if p.KeyProvider != strings.TrimSpace(p.KeyProvider) {
		return nil, policyError("KeyProvider", "a key-provider name without surrounding spaces", fmt.Sprintf("%q", p.KeyProvider),
			"write the name exactly as the key-provider event states it, e.g. kms")
	}
	switch {
	case p.Collateral == nil && !p.SkipTCB && !p.AllowSimulator:
		return nil, policyError("Collateral", "a collateral source (PCCS URL or collateral directory)", "none",
			"configure a PCCS (NewPCCS) or an offline collateral directory (CollateralDir); for development only, set SkipTCB")
	case p.Collateral != nil && p.SkipTCB:
		return nil, policyError("SkipTCB", "either a collateral source or SkipTCB", "SkipTCB and a collateral source",
			"remove SkipTCB to appraise the TCB, or remove the collateral source")
	}
	return c, nil
}
