package ratls

import (
	"fmt"

	"github.com/pgtrust/pgtrust/failure"
)

// Stable check names, in the order a Report lists them. Renderers and
// scripts key on these; they never change meaning.
const (
	CheckPolicy      = "policy"
	CheckEvidence    = "evidence"
	CheckQuote       = "quote"
	CheckTCB         = "tcb"
	CheckTCBStatus   = "tcb_status"
	CheckMRTD        = "mrtd"
	CheckRTMR0       = "rtmr0"
	CheckRTMR1       = "rtmr1"
	CheckRTMR2       = "rtmr2"
	CheckRTMR3       = "rtmr3"
	CheckDebug       = "debug"
	CheckSEAM        = "seam"
	CheckTEETCBSVN   = "tee_tcb_svn"
	CheckEventLog    = "event_log"
	CheckAppID       = "app_id"
	CheckComposeHash = "compose_hash"
	CheckKeyProvider = "key_provider"
	CheckKeyBinding  = "key_binding"
	CheckKMSChain    = "kms_chain"
)

// CheckNames lists every check name in report order.
var CheckNames = []string{CheckPolicy, CheckEvidence, CheckQuote, CheckTCB, CheckTCBStatus,
	CheckMRTD, CheckRTMR0, CheckRTMR1, CheckRTMR2, CheckRTMR3, CheckDebug, CheckSEAM,
	CheckTEETCBSVN, CheckEventLog, CheckAppID, CheckComposeHash, CheckKeyProvider,
	CheckKeyBinding, CheckKMSChain}

var rtmrCheckNames = [4]string{CheckRTMR0, CheckRTMR1, CheckRTMR2, CheckRTMR3}

// Check is the outcome of one policy check. Exactly one of three states:
// Passed; Skipped (not evaluated: Detail says why, a failed prerequisite,
// an unset pin or a development relaxation); or failed (Err set). Class
// is Err's class when failed, otherwise the class the check fails with.
type Check struct {
	Name    string
	Class   failure.Class
	Passed  bool
	Skipped bool
	Detail  string
	Err     *failure.Error
}

// Failed reports whether the check ran and refused.
func (c *Check) Failed() bool { return !c.Passed && !c.Skipped }

// Report is the outcome of verifying one piece of evidence against a
// policy: every check (it does not stop at the first failure) and what
// was parsed on the way, nil where that step was not reached.
type Report struct {
	Checks    []Check
	Quote     *Quote
	Appraisal *Appraisal
	Identity  *AppIdentity
	Evidence  *Evidence
}

// Err returns the first failed check's error, nil if every check passed
// or was skipped. A report without checks is an error: nothing was
// verified, and failing closed is the only safe reading.
func (r *Report) Err() error {
	if r == nil || len(r.Checks) == 0 {
		return failure.New(ClassPolicy, "no attestation checks ran").
			WithEvidence("empty report").
			WithFix("verify the evidence with Policy.VerifyCertificate or Policy.VerifyQuote")
	}
	for i := range r.Checks {
		c := &r.Checks[i]
		if !c.Failed() {
			continue
		}
		if c.Err != nil {
			return c.Err
		}
		// A failed check always carries its error; this only guards
		// against a hand-built report returning nil for a failure.
		return failure.New(c.Class, "attestation check %s failed", c.Name).
			WithEvidence("check %s: %s", c.Name, c.Detail).
			WithFix("inspect the attestation report")
	}
	return nil
}

// Check returns the check named name, nil if the report has none.
func (r *Report) Check(name string) *Check {
	for i := range r.Checks {
		if r.Checks[i].Name == name {
			return &r.Checks[i]
		}
	}
	return nil
}

func passed(name string, class failure.Class, format string, args ...any) Check {
	return Check{Name: name, Class: class, Passed: true, Detail: fmt.Sprintf(format, args...)}
}

func skipped(name string, class failure.Class, format string, args ...any) Check {
	return Check{Name: name, Class: class, Skipped: true, Detail: fmt.Sprintf(format, args...)}
}

func failed(name string, err *failure.Error) Check {
	return Check{Name: name, Class: err.Class, Detail: err.Message, Err: err}
}
