package attestation

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pgtrust/pgtrust/failure"
)

// WriteText renders the document for people: one line per check (PASS,
// FAIL or SKIP, its name and what it found), the measured values, then the
// verdict; a refusal ends with the failing check's class, evidence and
// fix in failure's shared layout.
//
//	attestation of quote q.bin at 2025-07-01T00:00:00Z
//	  PASS  quote         signatures and PCK chain verified
//	  FAIL  mrtd          MRTD is not in the allowlist
//	  SKIP  rtmr0         not pinned
//	measured values:
//	  MRTD         91eb…
//	verdict: attestation refused: MRTD is not in the allowlist
//	  class:    attestation_mrtd
//	  evidence: ...
//	  fix:      ...
func (d *Document) WriteText(w io.Writer) {
	src := d.Source
	if src == "" {
		src = "evidence"
	}
	fmt.Fprintf(w, "attestation of %s at %s\n", src, d.At.Format(time.RFC3339))
	width := 0
	for _, c := range d.Checks {
		width = max(width, len(c.Name))
	}
	for _, c := range d.Checks {
		label := strings.ToUpper(c.Status)
		text := c.Detail
		if c.Status == StatusFail {
			text = c.Message
		}
		fmt.Fprintf(w, "  %-4s  %-*s  %s\n", label, width, c.Name, indentRest(text, 10+width))
		if c.Status == StatusFail {
			(&failure.Report{Class: c.Class, Evidence: c.Evidence, Fix: c.Fix}).WriteDetails(w, strings.Repeat(" ", 10+width))
		}
	}
	if m := d.Measurements; m != nil {
		d.writeMeasurements(w, m)
	}
	switch {
	case d.OK:
		fmt.Fprintln(w, "verdict: attested: every check passed or was skipped")
	case d.Error != nil:
		d.Error.WriteText(w, "verdict: attestation refused: ")
	default:
		fmt.Fprintln(w, "verdict: attestation refused")
	}
}

func indentRest(s string, n int) string {
	return strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n"+strings.Repeat(" ", n))
}

func (d *Document) writeMeasurements(w io.Writer, m *Measurements) {
	head := "measured values:"
	if !m.Verified {
		head = "measured values (NOT verified: the quote's signatures did not check out; these are only what its bytes say):"
	}
	fmt.Fprintln(w, head)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "  %s\t%s\n", k, v)
		}
	}
	q := fmt.Sprintf("TDX v%d", m.QuoteVersion)
	if m.Simulated {
		q += " (SIMULATED: not from TDX hardware)"
	}
	row("quote", q)
	row("MRTD", m.MRTD)
	for i, r := range m.RTMR {
		row(fmt.Sprintf("RTMR%d", i), r)
	}
	debug := "no"
	if m.Debug {
		debug = "YES (the host can read and alter the TD's memory)"
	}
	row("td_attributes", m.TDAttributes+" (debug: "+debug+")")
	row("TEE TCB SVN", m.TEETCBSVN)
	row("MR_CONFIG_ID", m.MRConfigID)
	row("report_data", m.ReportData)
	row("FMSPC", m.FMSPC)
	status := m.TCBStatus
	if status == "" {
		status = "not appraised"
	} else if m.PlatformStatus != "" || m.ModuleStatus != "" || m.QEStatus != "" {
		status += fmt.Sprintf(" (platform %s, TDX module %s, QE %s)", orDash(m.PlatformStatus), orDash(m.ModuleStatus), orDash(m.QEStatus))
	}
	row("TCB status", status)
	if m.TCBStatus != "" {
		adv := "none"
		if len(m.AdvisoryIDs) > 0 {
			adv = strings.Join(m.AdvisoryIDs, ", ")
		}
		row("advisory IDs", adv)
		if !m.TCBDate.IsZero() {
			row("TCB date", m.TCBDate.UTC().Format(time.RFC3339))
		}
		if m.TCBEvaluationDataNumber != 0 {
			row("TCB eval number", fmt.Sprint(m.TCBEvaluationDataNumber))
		}
		if !m.CollateralValidUntil.IsZero() {
			row("collateral until", m.CollateralValidUntil.UTC().Format(time.RFC3339))
		}
	}
	row("evidence format", m.EvidenceFormat)
	row("event log", fmt.Sprintf("%d events", m.EventCount))
	row("app id", m.AppID)
	row("compose hash", m.ComposeHash)
	row("instance id", m.InstanceID)
	row("OS image hash", m.OSImageHash)
	kp := m.KeyProvider
	if kp != "" && m.KeyProviderID != "" {
		kp += " (id " + m.KeyProviderID + ")"
	}
	row("key provider", kp)
	tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
