package proxy

import (
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/failure"
)

const (
	// maxAuthMessage caps a client message during authentication; PostgreSQL
	// allows at most PG_MAX_AUTH_TOKEN_LENGTH (65535) bytes of token.
	maxAuthMessage = 65535 + 1024
	// maxBackendMessage caps an upstream message during authentication
	// (ParameterStatus, NoticeResponse, ErrorResponse are small).
	maxBackendMessage = 1 << 20
)

// SQLSTATEs the proxy sends itself.
const (
	sqlstateConnectionFailure   = "08006"
	sqlstateProtocolViolation   = "08P01"
	sqlstateTooManyClients      = "53300"
	sqlstateCannotConnectNow    = "57P03"
	sqlstateInvalidAuthSpec     = "28000"
	sqlstateFeatureNotSupported = "0A000"
	sqlstateQueryCanceled       = "57014"
	// sqlstateInvalidParameterValue: a pooled client's startup value the pool refuses.
	sqlstateInvalidParameterValue = "22023"
)

// errorWriteTimeout bounds the write of a last ErrorResponse to a client.
const errorWriteTimeout = 2 * time.Second

// errorResponse encodes a FATAL ErrorResponse.
func errorResponse(code, message, detail, hint string) []byte {
	b, _ := (&pgproto3.ErrorResponse{
		Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code,
		Message: message, Detail: detail, Hint: hint,
	}).Encode(nil)
	return b
}

// upstreamErrorResponse renders an upstream failure for the client:
// "pgtrust: upstream NAME: <class>: <message>", the evidence as Detail and
// the fix as Hint. With hide (a listener reachable from other machines) the
// client has not authenticated yet and gets only the class, a generic
// message and the correlation id ref; the evidence (file paths, internal
// addresses) goes to the log line carrying the same ref.
func upstreamErrorResponse(name string, err error, hide bool, ref string) []byte {
	r := failure.ReportOf(err)
	if hide {
		return errorResponse(sqlstateFor(r.Class), fmt.Sprintf("pgtrust: upstream %s: %s: the connection to the database server failed (ref %s)", name, r.Class, ref),
			"", fmt.Sprintf("the proxy's log has the evidence and the fix under ref=%s", ref))
	}
	return errorResponse(sqlstateFor(r.Class), fmt.Sprintf("pgtrust: upstream %s: %s: %s", name, r.Class, r.Message), r.Evidence, r.Fix)
}

// sqlstateFor maps a failure class to the SQLSTATE the client sees.
func sqlstateFor(c failure.Class) string {
	switch c {
	case failure.PgHbaReject, failure.AuthFailed, failure.ClientCertRejected, failure.ClientCertRequired:
		return sqlstateInvalidAuthSpec
	case failure.ProtocolError, failure.InjectionDetected:
		return sqlstateProtocolViolation
	}
	return sqlstateConnectionFailure
}
