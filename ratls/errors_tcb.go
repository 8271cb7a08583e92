package ratls

import "github.com/pgtrust/pgtrust/failure"

// Classes of the PCK extension, the Intel collateral and the TCB appraisal.
const (
	// ClassPCKExtension: the PCK leaf lacks a well-formed SGX extension
	// (1.2.840.113741.1.13.1), so its FMSPC and TCB are unknown.
	ClassPCKExtension failure.Class = "attestation_pck_extension"
	// ClassCollateral: the collateral is unparseable, its signature or
	// issuer chain does not verify, it does not chain to the quote's root,
	// or it is for another platform (FMSPC, PCE ID, PCK CA).
	ClassCollateral failure.Class = "attestation_collateral"
	// ClassCollateralExpired: an item of the collateral (TCB info, QE
	// identity, a CRL or a signing certificate) is not valid at the
	// appraisal instant.
	ClassCollateralExpired failure.Class = "attestation_collateral_expired"
	// ClassCollateralUnavailable: no collateral could be obtained (PCCS
	// unreachable or failing, no matching file in the collateral directory).
	ClassCollateralUnavailable failure.Class = "attestation_collateral_unavailable"
	// ClassRevoked: a certificate of the chain is on a CRL, or the TCB
	// status is Revoked.
	ClassRevoked failure.Class = "attestation_revoked"
	// ClassTCBNoMatch: no TCB level of the TCB info (or of the TDX module
	// identity, or of the QE identity) is met by the platform.
	ClassTCBNoMatch failure.Class = "attestation_tcb_no_match"
	// ClassTDXModule: the TDX module (MRSIGNER_SEAM, SEAM attributes or
	// module version) is not one the TCB info describes.
	ClassTDXModule failure.Class = "attestation_tdx_module"
	// ClassQEIdentity: the quoting enclave does not match Intel's QE
	// identity (MRSIGNER, ISVPRODID, MISCSELECT or ATTRIBUTES).
	ClassQEIdentity failure.Class = "attestation_qe_identity"
)

// tcbClasses lists the classes above; the lead folds them into Classes.
var tcbClasses = []failure.Class{ClassPCKExtension, ClassCollateral, ClassCollateralExpired,
	ClassCollateralUnavailable, ClassRevoked, ClassTCBNoMatch, ClassTDXModule, ClassQEIdentity}
