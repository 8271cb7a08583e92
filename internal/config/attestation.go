package config

import (
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/keyfile"
	"github.com/pgtrust/pgtrust/ratls"
)

// DefaultAttestationTimeout is handshake_timeout_ms's default (seed 003).
const DefaultAttestationTimeout = 5000 * time.Millisecond

// DefaultPCCSTimeout bounds one request to the configured PCCS.
const DefaultPCCSTimeout = 10 * time.Second

// Attestation is the [upstreams.NAME.attestation] table: the RA-TLS policy
// the upstream's certificate must pass on every connection (seed 003's
// allowedMrTd, allowSimulator, allowDebugMode and friends).
type Attestation struct {
	AllowedMRTDs []string `toml:"allowed_mrtds"`
	AllowAnyMRTD bool     `toml:"allow_any_mrtd"` // development only: no MRTD allowlist
	RTMR0        string   `toml:"rtmr0"`
	RTMR1        string   `toml:"rtmr1"`
	RTMR2        string   `toml:"rtmr2"`
	RTMR3        string   `toml:"rtmr3"`
	// MinTEETCBSVN is 32 hex digits, compared component-wise.
	MinTEETCBSVN string `toml:"min_tee_tcb_svn"`
	// AcceptedTCBStatuses defaults to ["UpToDate"].
	AcceptedTCBStatuses  []string `toml:"accepted_tcb_statuses"`
	AllowedAppIDs        []string `toml:"allowed_app_ids"`
	AllowedComposeHashes []string `toml:"allowed_compose_hashes"`
	KeyProvider          string   `toml:"key_provider"`
	// KMSRootCA is a PEM file of the KMS root CA(s) for KMS-signed certificates.
	KMSRootCA      string `toml:"kms_root_ca"`
	AllowSimulator bool   `toml:"allow_simulator"`
	AllowDebugMode bool   `toml:"allow_debug_mode"`
	// CollateralDir (offline) or PCCSURL supplies Intel collateral; one of
	// them unless SkipTCB (development) or AllowSimulator.
	CollateralDir string `toml:"collateral_dir"`
	PCCSURL       string `toml:"pccs_url"`
	SkipTCB       bool   `toml:"skip_tcb"`
	// HandshakeTimeoutMS bounds the TLS handshake plus the attestation
	// (default 5000).
	HandshakeTimeoutMS int `toml:"handshake_timeout_ms"`
}

// measurement lengths in bytes, as a TDX quote carries them.
const (
	mrLen          = 48
	teeTCBSVNLen   = 16
	appIDLen       = 20
	composeHashLen = 32
)

var knownTCBStatuses = []ratls.TCBStatus{ratls.StatusUpToDate, ratls.StatusSWHardeningNeeded, ratls.StatusConfigurationNeeded,
	ratls.StatusConfigurationAndSWHardeningNeeded, ratls.StatusOutOfDate, ratls.StatusOutOfDateConfigurationNeeded}

// checkAttestation applies the structural rules of an attestation table
// (no file system, no network), naming the key of each problem. The hex
// rules repeat ratls.Policy.Validate's so that the error names the TOML key.
func (f *File) checkAttestation(key string, a *Attestation) error {
	hexKey := func(k, v string, n int, what string) error {
		s := strings.TrimSpace(v)
		if len(s) >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X') {
			s = s[2:]
		}
		b, err := hex.DecodeString(s)
		if err != nil || len(b) != n {
			return f.invalid(k, "expected %d bytes of hex (%d digits, optional 0x), got %q", n, 2*n, clipValue(v)).
				WithFix("write %s as %d hex digits", what, 2*n)
		}
		return nil
	}
	switch {
	case len(a.AllowedMRTDs) == 0 && !a.AllowAnyMRTD:
		return f.invalid(key+".allowed_mrtds", "an attestation policy needs an MRTD allowlist").
			WithFix("list the MRTD of each TD image you trust (pgtrust attest verify prints a server's MRTD); for development only, set allow_any_mrtd = true")
	case len(a.AllowedMRTDs) > 0 && a.AllowAnyMRTD:
		return f.invalid(key+".allow_any_mrtd", "allow_any_mrtd = true contradicts the %d MRTDs of allowed_mrtds", len(a.AllowedMRTDs)).
			WithFix("remove allow_any_mrtd to enforce the allowlist, or remove the allowlist")
	}
	for i, m := range a.AllowedMRTDs {
		if err := hexKey(fmt.Sprintf("%s.allowed_mrtds[%d]", key, i), m, mrLen, "an MRTD"); err != nil {
			return err
		}
	}
	for i, r := range []string{a.RTMR0, a.RTMR1, a.RTMR2, a.RTMR3} {
		if strings.TrimSpace(r) == "" {
			continue
		}
		if err := hexKey(fmt.Sprintf("%s.rtmr%d", key, i), r, mrLen, "an RTMR"); err != nil {
			return err
		}
	}
	if strings.TrimSpace(a.MinTEETCBSVN) != "" {
		if err := hexKey(key+".min_tee_tcb_svn", a.MinTEETCBSVN, teeTCBSVNLen, "the minimum tee_tcb_svn (16 component SVNs)"); err != nil {
			return err
		}
	}
	for i, s := range a.AcceptedTCBStatuses {
		k := fmt.Sprintf("%s.accepted_tcb_statuses[%d]", key, i)
		if s == string(ratls.StatusRevoked) {
			return f.invalid(k, "Revoked cannot be accepted").
				WithFix("remove Revoked: a revoked platform's keys may be in an attacker's hands")
		}
		known := false
		for _, st := range knownTCBStatuses {
			known = known || s == string(st)
		}
		if !known {
			return f.invalid(k, "unknown TCB status %q", clipValue(s)).
				WithFix("use Intel's names exactly: UpToDate, SWHardeningNeeded, ConfigurationNeeded, ConfigurationAndSWHardeningNeeded, OutOfDate, OutOfDateConfigurationNeeded")
		}
	}
	for i, s := range a.AllowedAppIDs {
		if err := hexKey(fmt.Sprintf("%s.allowed_app_ids[%d]", key, i), s, appIDLen, "the app id"); err != nil {
			return err
		}
	}
	for i, s := range a.AllowedComposeHashes {
		if err := hexKey(fmt.Sprintf("%s.allowed_compose_hashes[%d]", key, i), s, composeHashLen, "the compose hash (SHA-256 of app-compose.json)"); err != nil {
			return err
		}
	}
	if a.KeyProvider != strings.TrimSpace(a.KeyProvider) {
		return f.invalid(key+".key_provider", "%q has surrounding spaces", clipValue(a.KeyProvider)).
			WithFix("write the key provider's name exactly as its event states it, e.g. \"kms\"")
	}
	switch {
	case a.CollateralDir != "" && a.PCCSURL != "":
		return f.invalid(key+".pccs_url", "both collateral_dir and pccs_url are set").
			WithFix("keep one collateral source: collateral_dir (offline files) or pccs_url")
	case (a.CollateralDir != "" || a.PCCSURL != "") && a.SkipTCB:
		return f.invalid(key+".skip_tcb", "skip_tcb = true contradicts the configured collateral source").
			WithFix("remove skip_tcb to appraise the TCB, or remove the collateral source")
	case a.CollateralDir == "" && a.PCCSURL == "" && !a.SkipTCB && !a.AllowSimulator:
		return f.invalid(key+".collateral_dir", "no collateral source: the TCB cannot be appraised").
			WithFix("set pccs_url (a PCCS or Intel PCS v4 URL) or collateral_dir (offline collateral files); for development only, skip_tcb = true")
	}
	if a.PCCSURL != "" {
		if err := checkPCCSURL(a.PCCSURL); err != nil {
			return f.invalid(key+".pccs_url", "%v", err).
				WithFix("use an https:// URL (http:// only to a PCCS on this machine: 127.0.0.1, ::1 or localhost)")
		}
	}
	if a.HandshakeTimeoutMS < 0 {
		return f.invalid(key+".handshake_timeout_ms", "must not be negative").
			WithFix("remove the key for the default %d, or give milliseconds", DefaultAttestationTimeout.Milliseconds())
	}
	return nil
}

// checkPCCSURL allows https, and http only to a loopback PCCS, so that
// collateral is never fetched in the clear across a network (it is signed,
// but a path attacker could still withhold or stall it).
func checkPCCSURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%q is not an absolute URL", clipValue(s))
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		h := u.Hostname()
		if h == "localhost" || net.ParseIP(h) != nil && net.ParseIP(h).IsLoopback() {
			return nil
		}
		return fmt.Errorf("http:// to %s: collateral would cross the network unencrypted", h)
	}
	return fmt.Errorf("scheme %q: want https", u.Scheme)
}

func clipValue(s string) string {
	if len(s) > 120 {
		return s[:120] + "…"
	}
	return s
}

// Policy turns the table into a ratls.Policy: it reads kms_root_ca and
// builds the collateral source, then runs ratls.Policy.Validate.
func (a *Attestation) Policy(key string) (*ratls.Policy, error) {
	p := &ratls.Policy{
		MRTD:           append([]string(nil), a.AllowedMRTDs...),
		AllowAnyMRTD:   a.AllowAnyMRTD,
		RTMR:           [4]string{a.RTMR0, a.RTMR1, a.RTMR2, a.RTMR3},
		MinTEETCBSVN:   a.MinTEETCBSVN,
		AppID:          append([]string(nil), a.AllowedAppIDs...),
		ComposeHash:    append([]string(nil), a.AllowedComposeHashes...),
		KeyProvider:    a.KeyProvider,
		AllowSimulator: a.AllowSimulator,
		AllowDebug:     a.AllowDebugMode,
		SkipTCB:        a.SkipTCB,
	}
	for _, s := range a.AcceptedTCBStatuses {
		p.AcceptTCBStatuses = append(p.AcceptTCBStatuses, ratls.TCBStatus(s))
	}
	if len(p.AcceptTCBStatuses) == 0 {
		p.AcceptTCBStatuses = []ratls.TCBStatus{ratls.StatusUpToDate}
	}
	if a.KMSRootCA != "" {
		pool, err := loadKMSRoots(a.KMSRootCA)
		if err != nil {
			e, _ := failure.As(err)
			out := failure.Wrap(failure.ConfigInvalid, err, "%s.kms_root_ca: %s", key, e.Message)
			out.Evidence, out.Fix = e.Evidence, e.Fix
			return nil, out.CauseInMessage()
		}
		p.KMSRoots = pool
	}
	switch {
	case a.CollateralDir != "":
		p.Collateral = ratls.CollateralDir(a.CollateralDir)
	case a.PCCSURL != "":
		p.Collateral = ratls.NewPCCS(a.PCCSURL, &http.Client{Timeout: DefaultPCCSTimeout})
	}
	if err := p.Validate(); err != nil {
		fe, ok := failure.As(err)
		if !ok {
			return nil, failure.Wrap(failure.ConfigInvalid, err, "%s: invalid attestation policy", key).
				WithFix("correct the [%s] table (see docs/proxy.md)", key)
		}
		out := *fe
		out.Message = key + ": " + fe.Message
		return nil, &out
	}
	return p, nil
}

// Timeout is handshake_timeout_ms as a duration (default 5000 ms).
func (a *Attestation) Timeout() time.Duration {
	if a.HandshakeTimeoutMS <= 0 {
		return DefaultAttestationTimeout
	}
	return time.Duration(a.HandshakeTimeoutMS) * time.Millisecond
}

// loadKMSRoots reads a PEM file of self-signed KMS root CAs.
func loadKMSRoots(path string) (*x509.CertPool, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, failure.Wrap(failure.ConfigInvalid, err, "cannot read the KMS root CA file \"%s\"", path).
			WithEvidence("%v", err).WithFix("point kms_root_ca at the PEM file of the dstack KMS root CA")
	}
	certs, err := keyfile.LoadCertificates(path)
	if err != nil {
		if fe, ok := failure.As(err); ok {
			return nil, fe
		}
		return nil, failure.Wrap(failure.ConfigInvalid, err, "cannot parse the KMS root CA file \"%s\"", path).
			WithFix("kms_root_ca must hold PEM certificates")
	}
	if len(certs) == 0 {
		return nil, failure.New(failure.ConfigInvalid, "the KMS root CA file \"%s\" holds no certificate", path).
			WithFix("kms_root_ca must hold the KMS root CA in PEM")
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// attestationSSLMode refuses an sslmode under which the policy could be
// bypassed (plaintext on some attempt), as pgtls would at the first dial.
func attestationSSLMode(key string, cfg *connstring.Config, source string) error {
	switch cfg.SSLMode {
	case connstring.SSLDisable, connstring.SSLAllow, connstring.SSLPrefer:
		return failure.New(failure.ConfigInvalid, "%s: an attestation policy needs sslmode=require or stronger, not sslmode=%s", source, cfg.SSLMode).
			WithEvidence("[%s] is set and sslmode=%s may connect without TLS: a plaintext connection carries no certificate to attest", key, cfg.SSLMode).
			WithFix("use sslmode=require (attestation only), verify-ca (chain + attestation) or verify-full (chain + host name + attestation)")
	}
	return nil
}
