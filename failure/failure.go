// Package failure defines pgtrust's typed errors: every user-facing failure
// carries a stable Class (part of the public interface: CLI JSON, metric
// labels and proxy error messages use it), a message in libpq's wording where
// libpq has one, the evidence that led to the verdict and the fix to apply.
package failure

import (
	"errors"
	"fmt"
	"strings"
)

// Class is a stable, machine-readable name for a kind of failure.
type Class string

// The stable vocabulary. Never rename a class: scripts and dashboards match on it.
const (
	OK                 Class = "ok"
	ConfigInvalid      Class = "config_invalid"
	DNSFailure         Class = "dns_failure"
	ConnectionRefused  Class = "connection_refused"
	Timeout            Class = "timeout"
	NoSSLServer        Class = "no_ssl_server"
	ProtocolError      Class = "protocol_error"
	InjectionDetected  Class = "injection_detected"
	TLSVersionMismatch Class = "tls_version_mismatch"
	UnknownCA          Class = "unknown_ca"
	HostnameMismatch   Class = "hostname_mismatch"
	PeerMismatch       Class = "peer_mismatch" // requirepeer: the Unix-socket server runs as another OS user
	CertExpired        Class = "cert_expired"
	CertExpiring       Class = "cert_expiring" // still valid, but expires soon (a warning, never a refusal)
	CertNotYetValid    Class = "cert_not_yet_valid"
	CertRevoked        Class = "cert_revoked"
	RootCertMissing    Class = "root_cert_missing"
	ClientCertRequired Class = "client_cert_required"
	ClientCertRejected Class = "client_cert_rejected"
	KeyMissing         Class = "key_missing"
	KeyPermissions     Class = "key_permissions"
	KeyMismatch        Class = "key_mismatch"
	KeyDecryptFailed   Class = "key_decrypt_failed"
	PgHbaReject        Class = "pg_hba_reject"
	AuthFailed         Class = "auth_failed"
)

// Classes lists every class, in the documented order.
var Classes = []Class{OK, ConfigInvalid, DNSFailure, ConnectionRefused, Timeout,
	NoSSLServer, ProtocolError, InjectionDetected, TLSVersionMismatch, UnknownCA,
	HostnameMismatch, PeerMismatch, CertExpired, CertExpiring, CertNotYetValid, CertRevoked, RootCertMissing,
	ClientCertRequired, ClientCertRejected, KeyMissing, KeyPermissions, KeyMismatch,
	KeyDecryptFailed, PgHbaReject, AuthFailed}

// Error is a classified failure.
type Error struct {
	Class    Class  // stable class
	Message  string // what went wrong, in libpq's words where libpq has them
	Evidence string // the specific facts: which file, which name, since when
	Fix      string // the concrete change that makes it work
	Err      error  // underlying cause, if any

	causeInMessage bool // Message already says what Err says
}

// New returns an Error of class c with a formatted message.
func New(c Class, format string, args ...any) *Error {
	return &Error{Class: c, Message: fmt.Sprintf(format, args...)}
}

// Wrap returns an Error of class c whose cause is err.
func Wrap(c Class, err error, format string, args ...any) *Error {
	return &Error{Class: c, Message: fmt.Sprintf(format, args...), Err: err}
}

// CauseInMessage marks the message as already stating the cause, so
// Error() does not repeat it (server errors quoted verbatim).
func (e *Error) CauseInMessage() *Error {
	e.causeInMessage = true
	return e
}

// WithEvidence sets the evidence and returns e.
func (e *Error) WithEvidence(format string, args ...any) *Error {
	e.Evidence = fmt.Sprintf(format, args...)
	return e
}

// WithFix sets the fix and returns e.
func (e *Error) WithFix(format string, args ...any) *Error {
	e.Fix = fmt.Sprintf(format, args...)
	return e
}

// Error renders "message: cause", secrets masked (see Redact). Evidence
// and fix are kept apart so that callers can lay them out: WriteText and
// Text render all of it.
func (e *Error) Error() string {
	return Redact(e.text())
}

func (e *Error) text() string {
	msg := e.Message
	if e.Err != nil && !e.causeInMessage {
		cause := e.Err.Error()
		if msg == "" {
			msg = cause
		} else if !strings.Contains(msg, cause) {
			msg += ": " + cause
		}
	}
	return msg
}

// Detail renders the message, evidence and fix on separate lines, without
// the class. Commands use Text or WriteText, which lay out all four fields.
func (e *Error) Detail() string {
	var b strings.Builder
	b.WriteString(e.Error())
	if e.Evidence != "" {
		b.WriteString("\nevidence: ")
		b.WriteString(Redact(e.Evidence))
	}
	if e.Fix != "" {
		b.WriteString("\nfix: ")
		b.WriteString(Redact(e.Fix))
	}
	return b.String()
}

// GoString keeps %#v from printing the fields, and a secret in the cause,
// unmasked.
func (e *Error) GoString() string {
	return fmt.Sprintf("&failure.Error{Class:%q, Message:%q, Evidence:%q, Fix:%q}", e.Class, e.Error(), Redact(e.Evidence), Redact(e.Fix))
}

func (e *Error) Unwrap() error { return e.Err }

// Is reports a match for a *Error target with the same class, so that
// errors.Is(err, failure.New(failure.UnknownCA, "")) works.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Class == e.Class && t.Message == ""
}

// ClassOf returns the class of the first *Error in err's chain: OK for a
// nil error, ProtocolError for an unclassified one.
func ClassOf(err error) Class {
	if err == nil {
		return OK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Class
	}
	return ProtocolError
}

// As returns the first *Error in err's chain.
func As(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}

// Report is the JSON form of a failure, shared by every command's --json:
//
//	{"class": "unknown_ca", "message": "...", "evidence": "...", "fix": "..."}
//
// class and message are always present, evidence and fix when known.
type Report struct {
	Class    Class  `json:"class"`
	Message  string `json:"message"`
	Evidence string `json:"evidence,omitempty"`
	Fix      string `json:"fix,omitempty"`
}

// ReportOf returns the Report of err (nil for a nil error): the first
// *Error in its chain, whatever wrapped it on the way. An unclassified error
// is reported as a protocol_error with its text. Message and evidence are
// masked (see Redact); the fix is pgtrust's own advice and left as is.
func ReportOf(err error) *Report {
	if err == nil {
		return nil
	}
	if e, ok := As(err); ok {
		return &Report{Class: e.Class, Message: e.Error(), Evidence: Redact(e.Evidence), Fix: Redact(e.Fix)}
	}
	return &Report{Class: ProtocolError, Message: Redact(err.Error())}
}
