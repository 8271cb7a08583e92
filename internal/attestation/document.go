// Package attestation presents the results of attested-TLS verification
// (package ratls): a stable JSON document and a text rendering of a
// ratls.Report with every check and the measured values, the loading of
// evidence for `pgtrust attest verify` (RA-TLS certificate, raw quote,
// dstack JSON, or a live server through pgtls), the policy flags shared by
// `attest verify` and `doctor`, and the /attestation HTTP handler.
//
// Nothing here decides whether evidence is trusted: ratls's Policy does.
// This package only gathers the evidence, runs the policy and reports.
package attestation

import (
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/ratls"
)

// Check statuses in the document.
const (
	StatusPass = "pass"
	StatusFail = "fail"
	StatusSkip = "skip"
)

// ClassNoEvidence: no certificate or no attestation evidence to judge.
const ClassNoEvidence = ratls.ClassNoEvidence

// Document is the JSON form of one verification. Its shape is stable:
// fields are added, never renamed or removed.
//
//	{"ok": false, "class": "attestation_mrtd", "source": "...", "at": "...",
//	 "checks": [{"name": "mrtd", "status": "fail", "class": "...", "message": "...", "evidence": "...", "fix": "..."}],
//	 "measurements": {"mrtd": "...", "rtmr": ["...", ...], "tcb_status": "UpToDate", ...},
//	 "error": {"class": "...", "message": "...", "evidence": "...", "fix": "..."}}
type Document struct {
	// OK is true when every check passed or was skipped.
	OK bool `json:"ok"`
	// Class is "ok" or the class of the first failed check (or of the
	// input or connection error when no check ran).
	Class failure.Class `json:"class"`
	// Source names what was verified: "certificate FILE", "quote FILE",
	// "dstack FILE", "server HOST:PORT".
	Source string `json:"source,omitempty"`
	// At is the verification instant (certificate chains, collateral).
	At     time.Time     `json:"at"`
	Checks []CheckResult `json:"checks"`
	// Measurements are the values the evidence carries; nil when no quote
	// could be parsed.
	Measurements *Measurements `json:"measurements,omitempty"`
	// Error is the first failed check's error (or the input error).
	Error *failure.Report `json:"error,omitempty"`
}

// CheckResult is one check of the policy.
type CheckResult struct {
	Name   string        `json:"name"`
	Status string        `json:"status"` // pass, fail or skip
	Class  failure.Class `json:"class,omitempty"`
	// Detail is what the check found (pass) or why it did not run (skip).
	Detail string `json:"detail,omitempty"`
	// Message, Evidence and Fix are set on a failed check.
	Message  string `json:"message,omitempty"`
	Evidence string `json:"evidence,omitempty"`
	Fix      string `json:"fix,omitempty"`
}

// Measurements are the measured values of the quote and what the event
// log and collateral say about them. Hex is lowercase.
type Measurements struct {
	// Verified is false when the quote's signatures did not verify: the
	// values are then what the bytes say, not what hardware measured.
	Verified     bool      `json:"verified"`
	QuoteVersion uint16    `json:"quote_version"`
	Simulated    bool      `json:"simulated,omitempty"`
	MRTD         string    `json:"mrtd"`
	RTMR         [4]string `json:"rtmr"`
	MRConfigID   string    `json:"mr_config_id"`
	MRSEAM       string    `json:"mr_seam"`
	TDAttributes string    `json:"td_attributes"`
	Debug        bool      `json:"debug"`
	XFAM         string    `json:"xfam"`
	TEETCBSVN    string    `json:"tee_tcb_svn"`
	ReportData   string    `json:"report_data"`

	FMSPC                   string    `json:"fmspc,omitempty"`
	TCBStatus               string    `json:"tcb_status,omitempty"`
	PlatformStatus          string    `json:"platform_status,omitempty"`
	ModuleStatus            string    `json:"module_status,omitempty"`
	QEStatus                string    `json:"qe_status,omitempty"`
	AdvisoryIDs             []string  `json:"advisory_ids"`
	TCBDate                 time.Time `json:"tcb_date,omitzero"`
	TCBEvaluationDataNumber int       `json:"tcb_evaluation_data_number,omitempty"`
	CollateralValidUntil    time.Time `json:"collateral_valid_until,omitzero"`

	EvidenceFormat string   `json:"evidence_format,omitempty"`
	EventCount     int      `json:"event_count"`
	AppID          string   `json:"app_id,omitempty"`
	ComposeHash    string   `json:"compose_hash,omitempty"`
	InstanceID     string   `json:"instance_id,omitempty"`
	OSImageHash    string   `json:"os_image_hash,omitempty"`
	KeyProvider    string   `json:"key_provider,omitempty"`
	KeyProviderID  string   `json:"key_provider_id,omitempty"`
	Events         []string `json:"events,omitempty"`
}

// NewDocument turns a policy report into the document. rawQuote and
// events are the evidence as given (used for the measured values when the
// report holds no parsed quote, e.g. because a signature failed).
func NewDocument(rep *ratls.Report, source string, at time.Time, rawQuote []byte, events []ratls.Event) *Document {
	d := &Document{Source: source, At: at.UTC(), Checks: []CheckResult{}}
	if rep == nil {
		d.Class = ClassNoEvidence
		d.Error = &failure.Report{Class: ClassNoEvidence, Message: "no attestation report"}
		return d
	}
	for _, c := range rep.Checks {
		r := CheckResult{Name: c.Name, Class: c.Class, Detail: c.Detail}
		switch {
		case c.Skipped:
			r.Status = StatusSkip
		case c.Passed:
			r.Status = StatusPass
		default:
			r.Status = StatusFail
			rp := failure.ReportOf(checkErr(c))
			r.Class, r.Message, r.Evidence, r.Fix = rp.Class, rp.Message, rp.Evidence, rp.Fix
		}
		d.Checks = append(d.Checks, r)
	}
	if err := firstFailure(rep); err != nil {
		d.Error = failure.ReportOf(err)
		d.Class = d.Error.Class
	} else {
		d.OK, d.Class = true, failure.OK
	}
	d.Measurements = measure(rep, rawQuote, events)
	return d
}

// checkErr is the error of a failed check; a check that failed without
// one (which ratls should never produce) still fails closed.
func checkErr(c ratls.Check) error {
	if c.Err != nil {
		return c.Err
	}
	cl := c.Class
	if cl == "" {
		cl = failure.Class("attestation_" + c.Name)
	}
	return failure.New(cl, "check %s failed", c.Name).WithEvidence("%s", c.Detail)
}

// firstFailure is the error of the first failed check, nil if none
// failed. An empty report fails: no check ran, nothing was established.
func firstFailure(rep *ratls.Report) error {
	if len(rep.Checks) == 0 {
		return failure.New(ClassNoEvidence, "the verification ran no check").
			WithFix("this is a bug: report it with the evidence")
	}
	for _, c := range rep.Checks {
		if !c.Passed && !c.Skipped {
			return checkErr(c)
		}
	}
	return nil
}

// ErrorDocument is the document for evidence that could not be obtained
// (an unreadable file, an unreachable or non-TLS server): no check ran.
func ErrorDocument(err error, source string, at time.Time) *Document {
	rp := failure.ReportOf(err)
	return &Document{Class: rp.Class, Source: source, At: at.UTC(), Checks: []CheckResult{}, Error: rp}
}

func measure(rep *ratls.Report, rawQuote []byte, events []ratls.Event) *Measurements {
	q := rep.Quote
	verified := q != nil
	if q == nil && len(rawQuote) > 0 {
		// Parsing shows what the bytes claim; Verified says they are not
		// vouched for.
		q, _ = ratls.ParseQuote(rawQuote)
	}
	if q == nil && rep.Evidence != nil && len(rep.Evidence.Quote) > 0 {
		q, _ = ratls.ParseQuote(rep.Evidence.Quote)
	}
	if q == nil {
		return nil
	}
	if verified {
		for _, c := range rep.Checks {
			if c.Name == "quote" && !c.Passed {
				verified = false
			}
		}
	}
	b := &q.Body
	m := &Measurements{
		Verified:     verified,
		QuoteVersion: q.Header.Version,
		Simulated:    ratls.IsSimulated(q),
		MRTD:         hex.EncodeToString(b.MRTD[:]),
		MRConfigID:   hex.EncodeToString(b.MRConfigID[:]),
		MRSEAM:       hex.EncodeToString(b.MRSEAM[:]),
		TDAttributes: hex.EncodeToString(b.TDAttributes[:]),
		Debug:        b.Debug(),
		XFAM:         hex.EncodeToString(b.XFAM[:]),
		TEETCBSVN:    hex.EncodeToString(b.TEETCBSVN[:]),
		ReportData:   hex.EncodeToString(b.ReportData[:]),
		AdvisoryIDs:  []string{},
	}
	for i := range b.RTMR {
		m.RTMR[i] = hex.EncodeToString(b.RTMR[i][:])
	}
	if a := rep.Appraisal; a != nil {
		m.FMSPC, m.TCBStatus = a.FMSPC, string(a.Status)
		m.PlatformStatus, m.ModuleStatus, m.QEStatus = string(a.PlatformStatus), string(a.ModuleStatus), string(a.QEStatus)
		if a.AdvisoryIDs != nil {
			m.AdvisoryIDs = append([]string{}, a.AdvisoryIDs...)
		}
		m.TCBDate, m.TCBEvaluationDataNumber, m.CollateralValidUntil = a.TCBDate, a.TCBEvaluationDataNumber, a.CollateralValidUntil
	}
	if m.FMSPC == "" {
		m.FMSPC = fmspcOf(q)
	}
	if e := rep.Evidence; e != nil {
		m.EvidenceFormat = e.Format
		if events == nil {
			events = e.EventLog
		}
	}
	m.EventCount = len(events)
	if id := rep.Identity; id != nil {
		m.AppID, m.ComposeHash = hex.EncodeToString(id.AppID), hex.EncodeToString(id.ComposeHash)
		m.InstanceID, m.OSImageHash = hex.EncodeToString(id.InstanceID), hex.EncodeToString(id.OSImageHash)
		if kp := id.KeyProvider; kp != nil {
			m.KeyProvider, m.KeyProviderID = kp.Name, hex.EncodeToString(kp.ID)
		}
		m.Events = append([]string(nil), id.Events...)
	}
	return m
}

// fmspcOf reads the FMSPC from the quote's PCK leaf, for reports without
// a TCB appraisal (--skip-tcb, or the appraisal failed).
func fmspcOf(q *ratls.Quote) string {
	blk, _ := pem.Decode(q.PCKChainPEM)
	if blk == nil {
		return ""
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return ""
	}
	info, err := ratls.ParsePCKInfo(c)
	if err != nil || info == nil {
		return ""
	}
	return hex.EncodeToString(info.FMSPC[:])
}
