package ratls

import "github.com/pgtrust/pgtrust/failure"

// Attestation failure classes. They are failure.Class values so that
// callers handle them like every other pgtrust failure; they are declared
// here, with the rest of the package's classes in errors_*.go, to keep the
// package self-contained (failure's vocabulary lists pgtrust's general
// classes; Classes below lists these).
const (
	// ClassMalformed: the quote's bytes do not have the TDX quote layout.
	ClassMalformed failure.Class = "attestation_malformed"
	// ClassUnsupported: a well-formed quote of a kind not verified here
	// (another TEE type, attestation key type or certification data type).
	ClassUnsupported failure.Class = "attestation_unsupported"
	// ClassQuoteSignature: the attestation key did not sign header and body.
	ClassQuoteSignature failure.Class = "attestation_quote_signature"
	// ClassQEReportSignature: the PCK leaf key did not sign the QE report.
	ClassQEReportSignature failure.Class = "attestation_qe_report_signature"
	// ClassQEBinding: the QE report does not vouch for the attestation key.
	ClassQEBinding failure.Class = "attestation_qe_binding"
	// ClassPCKChain: the PCK certificate chain is unparseable, broken or
	// not valid at the verification instant.
	ClassPCKChain failure.Class = "attestation_pck_chain"
	// ClassUntrustedRoot: the PCK chain ends in a root other than the
	// pinned Intel SGX Root CA.
	ClassUntrustedRoot failure.Class = "attestation_untrusted_root"
)

// Classes lists every attestation class the package declares: the quote
// classes above, then evidence, TCB appraisal, provider and policy classes.
var Classes = concatClasses(
	[]failure.Class{ClassMalformed, ClassUnsupported, ClassQuoteSignature,
		ClassQEReportSignature, ClassQEBinding, ClassPCKChain, ClassUntrustedRoot},
	evidenceClasses, tcbClasses, providerClasses, policyClasses)

func concatClasses(lists ...[]failure.Class) []failure.Class {
	var all []failure.Class
	for _, l := range lists {
		all = append(all, l...)
	}
	return all
}

const fixMalformed = "obtain the quote again from the attested server; a truncated or altered quote cannot be verified"

func malformed(field string, offset, want, got int) *failure.Error {
	return failure.New(ClassMalformed, "TDX quote is malformed: %s", field).
		WithEvidence("field %s at offset %d needs %d bytes, %d present", field, offset, want, got).
		WithFix(fixMalformed)
}
