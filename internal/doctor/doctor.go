// Package doctor diagnoses a PostgreSQL connection stage by stage.
//
// It opens the connection exactly once, through pgtls.Connect (the same
// path as every other pgtrust front door), and turns the events of its
// Trace into findings: configuration, DNS, TCP, SSL negotiation, TLS
// handshake, server certificate, client certificate, authentication and
// query. The verdict (connected or not) and the class are pgtls's, so they
// equal libpq's; doctor only adds evidence, fixes and warnings.
package doctor

import (
	"context"
	"os"
	"strings"
	"time"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/attestation"
	"github.com/pgtrust/pgtrust/ratls"
)

// Status is the outcome of one stage.
type Status string

// Stage statuses.
const (
	StatusOK      Status = "ok"
	StatusWarn    Status = "warn"
	StatusFail    Status = "fail"
	StatusSkipped Status = "skipped"
)

// Stage names, in order.
const (
	StageConfiguration     = "configuration"
	StageDNS               = "dns"
	StageTCP               = "tcp"
	StageSSLNegotiation    = "ssl_negotiation"
	StageTLSHandshake      = "tls_handshake"
	StageServerCertificate = "server_certificate"
	StageClientCertificate = "client_certificate"
	StageAuthentication    = "authentication"
	StageQuery             = "query"
)

// StageNames lists the stages in the order they run.
var StageNames = []string{StageConfiguration, StageDNS, StageTCP, StageSSLNegotiation, StageTLSHandshake,
	StageServerCertificate, StageClientCertificate, StageAuthentication, StageQuery}

// Stage is one step of the diagnosis.
type Stage struct {
	Name       string        `json:"name"`
	Status     Status        `json:"status"`
	DurationMS float64       `json:"duration_ms"`
	Detail     string        `json:"detail"`
	Class      failure.Class `json:"class,omitempty"` // set on the failing stage
}

// TLSInfo describes the negotiated encryption.
type TLSInfo struct {
	Encrypted   bool   `json:"encrypted"`
	Version     string `json:"version,omitempty"`
	Cipher      string `json:"cipher,omitempty"`
	ALPN        string `json:"alpn,omitempty"`
	Negotiation string `json:"negotiation,omitempty"`  // "postgres" (SSLRequest) or "direct"
	SSLResponse string `json:"ssl_response,omitempty"` // "S", "N" or "E" when an SSLRequest was answered
}

// Verdict is what one verification would conclude.
type Verdict struct {
	OK     bool          `json:"ok"`
	Class  failure.Class `json:"class"`
	Detail string        `json:"detail,omitempty"`
}

// ServerCertificate describes the chain the server presented and what
// libpq's verification concludes about it.
type ServerCertificate struct {
	Presented bool        `json:"presented"`
	Chain     []CertBrief `json:"chain,omitempty"`
	// Verified says whether the current sslmode checked the chain (and,
	// under verify-full, the host name) and it passed.
	Verified        bool   `json:"verified"`
	HostnameChecked bool   `json:"hostname_checked"`
	RootFile        string `json:"root_file,omitempty"`
	CRLs            int    `json:"crls,omitempty"`
	// VerifyCA and VerifyFull are what sslmode=verify-ca / verify-full
	// would conclude, whatever the current mode.
	VerifyCA   *Verdict `json:"verify_ca,omitempty"`
	VerifyFull *Verdict `json:"verify_full,omitempty"`
}

// CertBrief is the part of a certificate doctor shows.
type CertBrief struct {
	Subject   string    `json:"subject"`
	Issuer    string    `json:"issuer"`
	DNSNames  []string  `json:"dns_names,omitempty"`
	IPs       []string  `json:"ip_addresses,omitempty"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	Expiry    string    `json:"expiry"`
	Serial    string    `json:"serial"`
	IsCA      bool      `json:"is_ca"`
}

// ClientCertificate describes the client certificate side.
type ClientCertificate struct {
	File      string     `json:"file,omitempty"`
	Loaded    bool       `json:"loaded"`
	Requested bool       `json:"requested"`
	Sent      bool       `json:"sent"`
	Accepted  *bool      `json:"accepted,omitempty"`
	Reason    string     `json:"reason,omitempty"`
	Cert      *CertBrief `json:"certificate,omitempty"`
}

// Authentication describes what the server asked for.
type Authentication struct {
	Method         string   `json:"method,omitempty"`
	Requests       []string `json:"requests,omitempty"`
	SASLMechanisms []string `json:"sasl_mechanisms,omitempty"`
	ChannelBound   bool     `json:"channel_bound"`
	// HBALine is the pg_hba.conf line that would admit this connection,
	// set when the server rejected it.
	HBALine string `json:"hba_line,omitempty"`
}

// ServerFacts are what the server says about itself and this backend.
type ServerFacts struct {
	Version               string   `json:"version,omitempty"`
	SSL                   string   `json:"ssl,omitempty"` // SHOW ssl
	SSLMinProtocolVersion string   `json:"ssl_min_protocol_version,omitempty"`
	StatSSL               *StatSSL `json:"pg_stat_ssl,omitempty"`
}

// StatSSL is this backend's pg_stat_ssl row.
type StatSSL struct {
	SSL          bool   `json:"ssl"`
	Version      string `json:"version,omitempty"`
	Cipher       string `json:"cipher,omitempty"`
	Bits         string `json:"bits,omitempty"`
	ClientDN     string `json:"client_dn,omitempty"`
	ClientSerial string `json:"client_serial,omitempty"`
	IssuerDN     string `json:"issuer_dn,omitempty"`
}

// Warning is a finding that does not stop the connection.
type Warning struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Fix     string `json:"fix,omitempty"`
}

// Warning codes.
const (
	WarnNotEncrypted    = "not_encrypted"
	WarnNotVerified     = "server_not_verified"
	WarnExpiring        = "certificate_expiring"
	WarnTLS12           = "tls12_where_tls13_possible"
	WarnKeyPermissive   = "key_file_permissive"
	WarnPasswordInDSN   = "password_in_dsn"
	WarnRootIsLeaf      = "root_is_self_signed_leaf"
	WarnNoChannelBind   = "channel_binding_not_used"
	WarnLibpq           = "libpq_warning"
	WarnFileNotUsed     = "file_not_used"
	WarnFallback        = "fallback"
	WarnExpiredNotFatal = "certificate_expired"
)

// Report is the full diagnosis.
type Report struct {
	OK                bool               `json:"ok"`
	Class             failure.Class      `json:"class"`
	Connection        string             `json:"connection,omitempty"` // redacted settings
	SSLMode           string             `json:"sslmode,omitempty"`
	FailedStage       string             `json:"failed_stage,omitempty"`
	Stages            []Stage            `json:"stages"`
	TLS               *TLSInfo           `json:"tls"`
	ServerCertificate *ServerCertificate `json:"server_certificate"`
	ClientCertificate *ClientCertificate `json:"client_certificate"`
	Authentication    *Authentication    `json:"authentication"`
	Server            *ServerFacts       `json:"server,omitempty"`
	Warnings          []Warning          `json:"warnings"`
	Error             *failure.Report    `json:"error,omitempty"`
	DurationMS        float64            `json:"duration_ms"`
	// Attestation is the attestation stage's full result (policy set only).
	Attestation *attestation.Document `json:"attestation,omitempty"`
}

// ExitCode is doctor's exit status for the report: 0 connected, 1 a
// problem found, 2 a usage or configuration error (the settings or their
// files are wrong before any server is involved).
func (r *Report) ExitCode() int {
	switch {
	case r.OK:
		return 0
	case r.Class == failure.ConfigInvalid && r.FailedStage == StageConfiguration:
		return 2
	}
	return 1
}

// Options adjust a diagnosis.
type Options struct {
	// Env is the environment the settings are read with (PG* variables,
	// DATABASE_URL, HOME); nil means the process environment.
	Env map[string]string
	// WarnDays is how close to expiry a certificate draws a warning (default 30).
	WarnDays int
	// DefaultConnectTimeout applies when the settings set no
	// connect_timeout (default 10 s), so a silent server ends in a finding.
	DefaultConnectTimeout time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// OnStage, when set, is told which stage is under way (progress line).
	OnStage func(stage string)
	// Attestation, when set, adds the attestation stage: the server's
	// certificate must carry TDX evidence this policy accepts, checked
	// before any credential is sent.
	Attestation *ratls.Policy
	// AttestationAt is the instant the evidence is verified at (zero: Now).
	AttestationAt time.Time
}

func (o *Options) fill() Options {
	out := Options{}
	if o != nil {
		out = *o
	}
	if out.Env == nil {
		out.Env = environ()
	}
	if out.WarnDays == 0 {
		out.WarnDays = 30
	}
	if out.DefaultConnectTimeout == 0 {
		out.DefaultConnectTimeout = 10 * time.Second
	}
	if out.Now == nil {
		out.Now = time.Now
	}
	if out.OnStage == nil {
		out.OnStage = func(string) {}
	}
	return out
}

func environ() map[string]string {
	env := map[string]string{}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	return env
}

// ParseDSN reads connection settings the way libpq does (DSN, then the
// environment in opts, then defaults).
func ParseDSN(dsn string, opts *Options) (*connstring.Config, error) {
	o := opts.fill()
	return connstring.ParseWithEnv(dsn, o.Env, homeOf(o.Env))
}

func homeOf(env map[string]string) string {
	if h := env["HOME"]; h != "" {
		return h
	}
	if h, err := os.UserHomeDir(); err == nil {
		return h
	}
	return ""
}

// Diagnose parses dsn (a key/value string or URI; "" = environment only)
// and diagnoses the connection it describes.
func Diagnose(ctx context.Context, dsn string, opts *Options) *Report {
	o := opts.fill()
	start := o.Now()
	cfg, err := connstring.ParseWithEnv(dsn, o.Env, homeOf(o.Env))
	if err != nil {
		return ConfigFailure(err, time.Since(start))
	}
	r := Run(ctx, cfg, &o)
	if w, ok := passwordInDSN(dsn, o.Env); ok {
		r.Warnings = append(r.Warnings, w)
	}
	return r
}

// ConfigFailure is the report for settings that could not be read: the
// configuration stage fails and nothing else runs.
func ConfigFailure(err error, d time.Duration) *Report {
	rep := failure.ReportOf(err)
	r := &Report{Class: rep.Class, FailedStage: StageConfiguration, Error: rep, Warnings: []Warning{},
		TLS: &TLSInfo{}, ServerCertificate: &ServerCertificate{}, ClientCertificate: &ClientCertificate{}, Authentication: &Authentication{}}
	for _, name := range StageNames {
		st := Stage{Name: name, Status: StatusSkipped, Detail: "not run: the configuration stage failed"}
		if name == StageConfiguration {
			st = Stage{Name: name, Status: StatusFail, DurationMS: ms(d), Detail: rep.Message, Class: rep.Class}
		}
		r.Stages = append(r.Stages, st)
	}
	r.DurationMS = ms(d)
	return r
}

// passwordInDSN warns when the connection string itself carries a
// password: it ends up in shell history and process listings.
func passwordInDSN(dsn string, env map[string]string) (Warning, bool) {
	where := "the connection string on the command line"
	if dsn == "" {
		dsn, where = env["DATABASE_URL"], "DATABASE_URL"
	}
	if dsn == "" {
		return Warning{}, false
	}
	kw, err := connstring.ParseKeywords(dsn)
	if err != nil {
		return Warning{}, false
	}
	if _, ok := kw["password"]; !ok {
		return Warning{}, false
	}
	return Warning{Code: WarnPasswordInDSN,
		Message: "a password is given in " + where + ": it is visible in shell history and process listings",
		Fix:     "remove it from the connection string and use ~/.pgpass (mode 0600) or PGPASSFILE, or a client certificate"}, true
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
