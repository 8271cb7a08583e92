package ratls

import "github.com/pgtrust/pgtrust/failure"

// Policy failure classes: a verified quote whose measurements, TCB or
// bindings are not what the policy accepts, or a policy that cannot be
// applied as written.
const (
	// ClassPolicy: the policy itself is invalid (empty MRTD allowlist,
	// malformed hex, unknown TCB status name, no collateral source...).
	ClassPolicy failure.Class = "attestation_policy"
	// ClassMRTD: the TD's MRTD (its firmware) is not in the allowlist.
	ClassMRTD failure.Class = "attestation_mrtd"
	// ClassRTMR: a pinned RTMR differs from the quote's.
	ClassRTMR failure.Class = "attestation_rtmr"
	// ClassDebug: the TD runs in debug mode; never accepted.
	ClassDebug failure.Class = "attestation_debug"
	// ClassSEAM: the TDX module is not Intel's (mr_signer_seam non-zero),
	// or SEAM attributes or a TD 1.5 service TD are set.
	ClassSEAM failure.Class = "attestation_seam"
	// ClassTEETCBSVN: the TDX module's SVNs are below the policy minimum.
	ClassTEETCBSVN failure.Class = "attestation_tee_tcb_svn"
	// ClassTCBStatus: the platform's TCB status is not accepted.
	ClassTCBStatus failure.Class = "attestation_tcb_status"
	// ClassTCBUnavailable: no TCB appraisal could be made (no collateral
	// source, or the PCK chain does not say which collateral to use).
	ClassTCBUnavailable failure.Class = "attestation_tcb_unavailable"
	// ClassRTMR3Replay: the event log does not reproduce the quote's
	// RTMRs, so the application identity it states is not measured.
	ClassRTMR3Replay failure.Class = "attestation_rtmr3_replay"
	// ClassAppID: the app-id event is absent or not in the allowlist.
	ClassAppID failure.Class = "attestation_app_id"
	// ClassComposeHash: the compose-hash event is absent or not allowed.
	ClassComposeHash failure.Class = "attestation_compose_hash"
	// ClassKeyProvider: the key-provider event is absent or names another
	// provider than the pinned one.
	ClassKeyProvider failure.Class = "attestation_key_provider"
	// ClassKeyBinding: the quote's report_data does not bind the TLS key.
	ClassKeyBinding failure.Class = "attestation_key_binding"
	// ClassKMSChain: the certificate does not chain to a pinned KMS root,
	// or the measured key-provider id is not that root's key.
	ClassKMSChain failure.Class = "attestation_kms_chain"
)

// policyClasses lists the policy classes in the order above; the lead
// folds them into Classes.
var policyClasses = []failure.Class{ClassPolicy, ClassMRTD, ClassRTMR, ClassDebug, ClassSEAM,
	ClassTEETCBSVN, ClassTCBStatus, ClassTCBUnavailable, ClassRTMR3Replay, ClassAppID,
	ClassComposeHash, ClassKeyProvider, ClassKeyBinding, ClassKMSChain}
