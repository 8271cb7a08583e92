// Package ratls verifies Intel TDX attestation evidence and issues it: the
// basis of attested TLS (RA-TLS), where a server is trusted because its
// certificate carries a hardware-signed quote of the code it runs, bound to
// the certificate's key, not because a CA signed it.
//
// Verifying:
//   - ParseQuote and Quote.Verify: TDX quotes v4 and v5 (ECDSA-P256, QE
//     certification data type 6 around a PEM PCK chain), the quote
//     signature, the QE report signature by the PCK key, the QE binding of
//     the attestation key, the PCK chain to the pinned Intel SGX Root CA at
//     an explicit instant.
//   - Appraise, with Collateral from CollateralDir (offline, dcap-qvl's
//     JSON shape) or NewPCCS (a PCCS or Intel PCS, cached until
//     nextUpdate): collateral signatures over their exact bytes, both CRLs,
//     TDX module identity, TCB level and QE identity, the merged status and
//     its advisory IDs.
//   - ParseCertificateEvidence: dstack's RA-TLS extensions (the versioned
//     attestation, SCALE V0; the legacy raw-quote and event-log ones);
//     ReplayRTMRs recomputes runtime-event digests and replays the log;
//     ParseAppIdentity reads the RTMR3 application events.
//   - Policy.VerifyCertificate / VerifyQuote run every check (MRTD
//     allowlist, RTMR pins, debug, SEAM, TEE TCB SVN, TCB status, event
//     log, app id, compose hash, key provider, key binding, KMS chain) and
//     return a Report naming each one; CheckNames lists them.
//
// Issuing: a QuoteProvider (NewConfigFSProvider on TDX hardware through
// go-tdx-guest's configfs-tsm client; NewSimulator for development, whose
// quotes every verifier refuses unless AllowSimulator) and NewCertificate,
// which binds a fresh key into a quote and writes the evidence extensions.
//
// Every refusal is a *failure.Error with one of Classes (attestation_*),
// the evidence (field, expected, got) and a fix. Which parts use
// github.com/google/go-tdx-guest and which are written here, and why, is
// recorded in docs/attestation.md: go-tdx-guest decodes Intel's TCB info and
// QE identity JSON and requests quotes from configfs-tsm; the quote parser,
// the PCK extension parser, collateral verification and TCB appraisal, the
// PCCS client, the dstack formats and the policy are written here, because
// go-tdx-guest's versions report plain-string errors without the field a
// refusal must show, judge only UpToDate, and know nothing of dstack.
package ratls
