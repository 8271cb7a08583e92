package ratls

import "github.com/pgtrust/pgtrust/failure"

// Classes of the RA-TLS certificate evidence: what a certificate carries
// besides its key (the attestation extensions, the event log and the
// application identity measured into RTMR3) and the issuing side.
const (
	// ClassNoEvidence: the certificate carries no attestation extension
	// (neither .1.8 nor .1.1): it is an ordinary TLS certificate.
	ClassNoEvidence failure.Class = "attestation_no_evidence"
	// ClassExtension: an attestation extension is present but its bytes
	// are not what dstack writes (DER wrapping, SCALE envelope, gzip,
	// duplicates).
	ClassExtension failure.Class = "attestation_extension"
	// ClassEventLog: the event log is malformed, too large, disagrees with
	// itself or carries a digest that its event does not produce.
	ClassEventLog failure.Class = "attestation_event_log"
	// ClassAppIdentity: an RTMR3 identity event (app-id, compose-hash,
	// instance-id, os-image-hash, key-provider) is malformed or repeated.
	ClassAppIdentity failure.Class = "attestation_app_identity"
	// ClassIssue: an RA-TLS certificate could not be issued (the quote
	// provider failed or returned a quote not bound to the new key).
	ClassIssue failure.Class = "attestation_issue"
)

// evidenceClasses is folded into Classes by the lead.
var evidenceClasses = []failure.Class{ClassNoEvidence, ClassExtension, ClassEventLog, ClassAppIdentity, ClassIssue}

const (
	fixEnvelope = "obtain the attestation again from the attested server; a truncated or altered attestation cannot be verified"
	fixEventLog = "obtain the event log again from the attested server (dstack guest agent); a log that does not explain the quote's RTMRs cannot be trusted"
)
