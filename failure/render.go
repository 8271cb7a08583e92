package failure

import (
	"io"
	"log/slog"
	"strings"
)

// The text layout every command uses for a failure, so that a person (or a
// grep) finds the same labels whatever printed it:
//
//	pgtrust: could not read root certificate file "/etc/db/ca.crt": no such file or directory
//	  class:    root_cert_missing
//	  evidence: sslmode=verify-full reads the root certificates from sslrootcert
//	  fix:      copy the CA certificate that signed the server's certificate to /etc/db/ca.crt
//
// The message comes first, after a caller's headline ("pgtrust: ", a file
// name, a step), then the class, the evidence and the fix, each on its own
// line, labels aligned; a value of several lines continues under its first
// line. Lines without a value are left out. The JSON form
// is Report, with the same four fields.

const detailIndent = "  "

// WriteText writes r for a person: headline and message on the first line,
// then class, evidence and fix indented by two spaces.
func (r *Report) WriteText(w io.Writer, headline string) {
	io.WriteString(w, r.text(headline))
}

// WriteDetails writes only the class, evidence and fix lines, each after
// indent: for callers whose own line already says what failed (a check
// with its status, a stage of a diagnosis).
func (r *Report) WriteDetails(w io.Writer, indent string) {
	var b strings.Builder
	r.details(&b, indent)
	io.WriteString(w, b.String())
}

func (r *Report) text(headline string) string {
	var b strings.Builder
	b.WriteString(headline)
	b.WriteString(r.Message)
	b.WriteByte('\n')
	r.details(&b, detailIndent)
	return b.String()
}

func (r *Report) details(b *strings.Builder, indent string) {
	line := func(label, value string) {
		if value == "" {
			return
		}
		b.WriteString(indent)
		b.WriteString(label)
		// Continuation lines (a quoted excerpt of a file) stay under the
		// value, so that the labels remain the only thing at the margin.
		b.WriteString(strings.ReplaceAll(strings.TrimRight(value, "\n"), "\n", "\n"+indent+strings.Repeat(" ", len(label))))
		b.WriteByte('\n')
	}
	line("class:    ", string(r.Class))
	line("evidence: ", r.Evidence)
	line("fix:      ", r.Fix)
}

// WriteText writes err in the shared layout (see Report.WriteText); an
// unclassified error is shown as a protocol_error, as ReportOf does.
// Nothing is written for a nil error.
func WriteText(w io.Writer, headline string, err error) {
	if r := ReportOf(err); r != nil {
		r.WriteText(w, headline)
	}
}

// Text returns err in the shared layout without a headline and without the
// final newline, for callers that print it after their own words:
//
//	fmt.Fprintln(os.Stderr, "pgtrust: "+failure.Text(err))
func Text(err error) string {
	r := ReportOf(err)
	if r == nil {
		return ""
	}
	return strings.TrimSuffix(r.text(""), "\n")
}

// LogValue makes slog log a failure as a group of its class, message,
// evidence and fix, secrets masked.
func (e *Error) LogValue() slog.Value {
	return ReportOf(e).LogValue()
}

// LogValue logs a Report as a group of its non-empty fields.
func (r *Report) LogValue() slog.Value {
	if r == nil {
		return slog.Value{}
	}
	attrs := []slog.Attr{slog.String("class", string(r.Class)), slog.String("message", r.Message)}
	if r.Evidence != "" {
		attrs = append(attrs, slog.String("evidence", r.Evidence))
	}
	if r.Fix != "" {
		attrs = append(attrs, slog.String("fix", r.Fix))
	}
	return slog.GroupValue(attrs...)
}
