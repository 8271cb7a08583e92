package attestation

import (
	"crypto/x509"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/keyfile"
	"github.com/pgtrust/pgtrust/ratls"
)

// PCCSTimeout bounds every request to a PCCS: a collateral fetch must not
// hang a verification.
const PCCSTimeout = 10 * time.Second

// PolicyFlags are the command-line settings of an attestation policy. They
// are shared by `pgtrust attest verify` and `pgtrust doctor` so that both
// spell and interpret every setting the same way.
type PolicyFlags struct {
	MRTD            []string
	AllowAnyMRTD    bool
	RTMR            [4]string
	MinTEETCBSVN    string
	AcceptTCBStatus []string
	AppID           []string
	ComposeHash     []string
	KeyProvider     string
	KMSRootCA       string
	AllowSimulator  bool
	AllowDebug      bool
	CollateralDir   string
	PCCSURL         string
	SkipTCB         bool
	At              string

	fs *pflag.FlagSet
}

// flagNames lists the flags that configure a policy (not --at, which only
// says when to verify).
var flagNames = []string{"mrtd", "allow-any-mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "min-tee-tcb-svn",
	"accept-tcb-status", "app-id", "compose-hash", "key-provider", "kms-root-ca", "allow-simulator",
	"allow-debug-mode", "collateral", "pccs-url", "skip-tcb"}

// Register adds the policy flags to fs; withAt adds --at too.
func (f *PolicyFlags) Register(fs *pflag.FlagSet, withAt bool) {
	f.fs = fs
	fs.StringArrayVar(&f.MRTD, "mrtd", nil, "allowed MRTD, 96 hex digits (repeatable; required unless --allow-any-mrtd)")
	fs.BoolVar(&f.AllowAnyMRTD, "allow-any-mrtd", false, "accept any MRTD (development only: pins no firmware)")
	for i := range f.RTMR {
		fs.StringVar(&f.RTMR[i], "rtmr"+string(rune('0'+i)), "", "required RTMR"+string(rune('0'+i))+", 96 hex digits")
	}
	fs.StringVar(&f.MinTEETCBSVN, "min-tee-tcb-svn", "", "minimum TEE TCB SVN, 32 hex digits, compared component by component")
	fs.StringArrayVar(&f.AcceptTCBStatus, "accept-tcb-status", nil, "accepted TCB status (repeatable; default UpToDate): "+strings.Join(statusNames(), ", "))
	fs.StringArrayVar(&f.AppID, "app-id", nil, "allowed dstack app id, hex (repeatable)")
	fs.StringArrayVar(&f.ComposeHash, "compose-hash", nil, "allowed dstack compose hash, hex (repeatable)")
	fs.StringVar(&f.KeyProvider, "key-provider", "", "required key-provider name from the event log (e.g. kms)")
	fs.StringVar(&f.KMSRootCA, "kms-root-ca", "", "PEM file of KMS root CAs: the certificate must chain to one of them")
	fs.BoolVar(&f.AllowSimulator, "allow-simulator", false, "accept simulated quotes (development only: proves nothing about hardware)")
	fs.BoolVar(&f.AllowDebug, "allow-debug-mode", false, "accept a debug TD (development only: the host can read its memory)")
	fs.StringVar(&f.CollateralDir, "collateral", "", "directory of Intel collateral JSON files (offline TCB appraisal)")
	fs.StringVar(&f.PCCSURL, "pccs-url", "", "PCCS or Intel PCS base URL to fetch collateral from")
	fs.BoolVar(&f.SkipTCB, "skip-tcb", false, "do not appraise the TCB (development only)")
	if withAt {
		fs.StringVar(&f.At, "at", "", "verify at this instant (RFC 3339), e.g. when old evidence's collateral was valid; default now")
	}
}

// Configured reports whether any policy flag was given: doctor runs its
// attestation stage only then.
func (f *PolicyFlags) Configured() bool {
	if f.fs == nil {
		return false
	}
	for _, n := range flagNames {
		if fl := f.fs.Lookup(n); fl != nil && fl.Changed {
			return true
		}
	}
	return false
}

func statusNames() []string {
	return []string{string(ratls.StatusUpToDate), string(ratls.StatusSWHardeningNeeded), string(ratls.StatusConfigurationNeeded),
		string(ratls.StatusConfigurationAndSWHardeningNeeded), string(ratls.StatusOutOfDate),
		string(ratls.StatusOutOfDateConfigurationNeeded), string(ratls.StatusRevoked)}
}

func usage(msg string, args ...any) *failure.Error {
	return failure.New(failure.ConfigInvalid, msg, args...)
}

// Instant is the verification instant: --at, else now().
func (f *PolicyFlags) Instant(now func() time.Time) (time.Time, error) {
	if f.At == "" {
		return now(), nil
	}
	t, err := time.Parse(time.RFC3339, f.At)
	if err != nil {
		return time.Time{}, usage("--at %q is not an RFC 3339 time", f.At).
			WithEvidence("%v", err).WithFix("write the instant as 2025-07-01T00:00:00Z")
	}
	return t, nil
}

// Policy builds the ratls policy the flags describe. Problems with the
// flags themselves (unreadable files, unknown statuses, a policy that
// Validate refuses) are config_invalid errors: usage errors, not refusals
// of a server.
func (f *PolicyFlags) Policy() (*ratls.Policy, error) {
	p := &ratls.Policy{
		MRTD:           append([]string(nil), f.MRTD...),
		AllowAnyMRTD:   f.AllowAnyMRTD,
		RTMR:           f.RTMR,
		MinTEETCBSVN:   f.MinTEETCBSVN,
		AppID:          append([]string(nil), f.AppID...),
		ComposeHash:    append([]string(nil), f.ComposeHash...),
		KeyProvider:    f.KeyProvider,
		AllowSimulator: f.AllowSimulator,
		AllowDebug:     f.AllowDebug,
		SkipTCB:        f.SkipTCB,
	}
	known := map[string]bool{}
	for _, s := range statusNames() {
		known[strings.ToLower(s)] = true
	}
	for _, s := range f.AcceptTCBStatus {
		for _, one := range strings.Split(s, ",") {
			one = strings.TrimSpace(one)
			if !known[strings.ToLower(one)] {
				return nil, usage("--accept-tcb-status %q is not a TCB status", one).
					WithFix("use one of %s", strings.Join(statusNames(), ", "))
			}
			for _, n := range statusNames() {
				if strings.EqualFold(n, one) {
					p.AcceptTCBStatuses = append(p.AcceptTCBStatuses, ratls.TCBStatus(n))
				}
			}
		}
	}
	if f.KMSRootCA != "" {
		pool, err := loadPool(f.KMSRootCA)
		if err != nil {
			return nil, err
		}
		p.KMSRoots = pool
	}
	switch {
	case f.CollateralDir != "" && f.PCCSURL != "":
		return nil, usage("--collateral and --pccs-url exclude each other").
			WithFix("give the offline collateral directory or the PCCS URL, not both")
	case f.CollateralDir != "":
		fi, err := os.Stat(f.CollateralDir)
		if err != nil || !fi.IsDir() {
			e := usage("--collateral %q is not a readable directory", f.CollateralDir).
				WithFix("point --collateral at a directory of collateral JSON files")
			if err != nil {
				e = e.WithEvidence("%v", err)
			}
			return nil, e
		}
		p.Collateral = ratls.CollateralDir(f.CollateralDir)
	case f.PCCSURL != "":
		u, err := url.Parse(f.PCCSURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return nil, usage("--pccs-url %q is not an http(s) URL", f.PCCSURL).
				WithFix("give the PCCS base URL, e.g. https://pccs.example.com/sgx/certification/v4")
		}
		p.Collateral = ratls.NewPCCS(f.PCCSURL, &http.Client{Timeout: PCCSTimeout})
	}
	if err := p.Validate(); err != nil {
		if fe, ok := failure.As(err); ok {
			return nil, fe
		}
		return nil, usage("the attestation policy is invalid: %v", err)
	}
	return p, nil
}

// loadPool reads every CERTIFICATE block of a PEM file.
func loadPool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, usage("could not read --kms-root-ca file %q", path).WithEvidence("%v", err).
			WithFix("give the PEM file of the KMS root CA")
	}
	certs, err := keyfile.ParseCertificates(b)
	if err != nil && !keyfile.IsNoCertificate(err) {
		return nil, usage("--kms-root-ca file %q holds a certificate that does not parse", path).WithEvidence("%v", err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	if len(certs) == 0 {
		return nil, usage("--kms-root-ca file %q holds no PEM certificate", path).
			WithFix("give the PEM file of the KMS root CA (-----BEGIN CERTIFICATE-----)")
	}
	return pool, nil
}
