package doctor

import (
	"fmt"
	"io"
	"strings"
)

// Style selects how text output looks.
type Style struct {
	Color bool // ANSI colours (terminals only, never with NO_COLOR)
}

func (s Style) paint(code, text string) string {
	if !s.Color {
		return text
	}
	return "\x1b[" + code + "m" + text + "\x1b[0m"
}

var stageTitles = map[string]string{
	StageConfiguration:     "configuration",
	StageDNS:               "DNS resolution",
	StageTCP:               "TCP connect",
	StageSSLNegotiation:    "SSL negotiation",
	StageTLSHandshake:      "TLS handshake",
	StageServerCertificate: "server certificate",
	StageAttestation:       "attestation",
	StageClientCertificate: "client certificate",
	StageAuthentication:    "authentication",
	StageQuery:             "query",
}

// StageTitle is a stage's name for people.
func StageTitle(name string) string {
	if t, ok := stageTitles[name]; ok {
		return t
	}
	return name
}

func (s Style) mark(st Status) string {
	switch st {
	case StatusOK:
		return s.paint("32", "ok  ")
	case StatusWarn:
		return s.paint("33", "warn")
	case StatusFail:
		return s.paint("31;1", "FAIL")
	}
	return s.paint("2", "skip")
}

// WriteText writes the report for people.
func (r *Report) WriteText(w io.Writer, s Style) {
	if r.Connection != "" {
		fmt.Fprintf(w, "pgtrust doctor: %s\n\n", r.Connection)
	}
	for i, st := range r.Stages {
		dur := ""
		if st.DurationMS > 0 {
			dur = fmt.Sprintf("%.1f ms", st.DurationMS)
		}
		fmt.Fprintf(w, "%d. [%s] %-19s %s\n", i+1, s.mark(st.Status), StageTitle(st.Name), s.paint("2", dur))
		for _, line := range strings.Split(st.Detail, "\n") {
			if line != "" {
				fmt.Fprintf(w, "       %s\n", line)
			}
		}
	}
	fmt.Fprintln(w)
	if r.OK {
		fmt.Fprintf(w, "%s connected", s.paint("32;1", "verdict:"))
		if r.TLS != nil && r.TLS.Encrypted {
			fmt.Fprintf(w, " over %s (%s)", r.TLS.Version, r.TLS.Cipher)
		} else {
			fmt.Fprintf(w, " without encryption")
		}
		fmt.Fprintf(w, " in %.1f ms\n", r.DurationMS)
	} else if r.Error != nil {
		fmt.Fprintf(w, "%s NOT connected — stopped at %s\n", s.paint("31;1", "verdict:"), StageTitle(r.FailedStage))
		fmt.Fprintf(w, "  class:    %s\n", s.paint("1", string(r.Class)))
		fmt.Fprintf(w, "  message:  %s\n", indent(r.Error.Message, "            "))
		if r.Error.Evidence != "" {
			fmt.Fprintf(w, "  evidence: %s\n", r.Error.Evidence)
		}
		if r.Error.Fix != "" {
			fmt.Fprintf(w, "  fix:      %s\n", s.paint("1", r.Error.Fix))
		}
	}
	if len(r.Warnings) > 0 {
		fmt.Fprintf(w, "\n%s\n", s.paint("33;1", "warnings:"))
		for _, wn := range r.Warnings {
			fmt.Fprintf(w, "  - [%s] %s\n", wn.Code, wn.Message)
			if wn.Fix != "" {
				fmt.Fprintf(w, "    fix: %s\n", wn.Fix)
			}
		}
	}
}

// QuietLine is the one-line summary (--quiet).
func (r *Report) QuietLine() string {
	if r.OK {
		enc := "unencrypted"
		if r.TLS != nil && r.TLS.Encrypted {
			enc = r.TLS.Version
			switch {
			case r.ServerCertificate != nil && r.ServerCertificate.HostnameChecked:
				enc += " verified"
			case r.ServerCertificate != nil && r.ServerCertificate.Verified:
				enc += " chain-verified"
			default:
				enc += " unverified"
			}
		}
		return fmt.Sprintf("ok: connected (%s), %d warning(s)", enc, len(r.Warnings))
	}
	msg := ""
	if r.Error != nil {
		msg = summaryLine(r.Error.Message)
	}
	return fmt.Sprintf("fail: %s at %s: %s", r.Class, r.FailedStage, msg)
}

// WriteText writes the matrix as a table.
func (m *Matrix) WriteText(w io.Writer, s Style) {
	if m.Connection != "" {
		fmt.Fprintf(w, "pgtrust doctor --matrix: %s\n\n", m.Connection)
	}
	fmt.Fprintf(w, "%-12s %-9s %-10s %-10s %-9s %-8s %s\n", "sslmode", "negotiate", "connected", "encrypted", "verified", "TLS", "cipher / failure")
	for _, r := range m.Rows {
		conn := s.paint("32", "yes")
		if !r.Connected {
			conn = s.paint("31", "no ")
		}
		verified := "no"
		switch {
		case r.HostnameVerified:
			verified = "full"
		case r.ServerVerified:
			verified = "chain"
		}
		if !r.Connected {
			verified = "-"
		}
		enc := "no"
		if r.Encrypted {
			enc = "yes"
		}
		if !r.Connected {
			enc = "-"
		}
		last := r.Cipher
		if !r.Connected {
			last = string(r.Class) + ": " + r.Message
		} else if !r.Encrypted {
			last = ""
		}
		tlsv := r.TLSVersion
		if tlsv == "" {
			tlsv = "-"
		}
		fmt.Fprintf(w, "%-12s %-9s %s %-10s %-9s %-8s %s\n", r.SSLMode, r.Negotiation, pad(conn, "yes", 10), enc, verified, tlsv, last)
	}
	fmt.Fprintf(w, "\ndirect TLS negotiation (sslnegotiation=direct): %s\n", m.Direct)
}

// pad pads a possibly coloured cell to width by its visible text.
func pad(cell, visible string, width int) string {
	if n := width - len(visible); n > 0 {
		return cell + strings.Repeat(" ", n)
	}
	return cell
}

func indent(s, prefix string) string {
	return strings.ReplaceAll(s, "\n", "\n"+prefix)
}
