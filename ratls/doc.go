// Package ratls verifies Intel TDX attestation evidence, the basis of
// attested TLS (RA-TLS): a server is trusted because its certificate carries
// a hardware-signed quote of the code it runs, not because a CA signed it.
//
// This first part parses TDX quotes (versions 4 and 5, ECDSA-P256, QE
// certification data type 6 wrapping a PEM PCK chain of type 5) and checks
// their signatures: the quote signature by the attestation key over header
// and body, the QE report signature by the PCK leaf key, the QE report-data
// binding of the attestation key, and the PCK chain up to the pinned Intel
// SGX Root CA at an explicit instant. Every refusal is a *failure.Error with
// an attestation_* class, the evidence (field, offset, expected, got) and a
// fix.
//
// Which code does what: the parser and the signature checks are written
// here on the standard library (encoding/binary, crypto/ecdsa, crypto/x509);
// github.com/google/go-tdx-guest is not used yet. Its abi package parses
// quotes into protobuf types and its errors are plain strings, without the
// field and offset a refusal must show; its newest tag, v0.3.1, ships no v5
// test quote; its verify package ties the signature checks to collateral
// fetching and TCB appraisal, where it may fit later (TCB info and QE
// identity matching). Every length is checked against the bytes present.
// Bytes after the signature data are kept in Quote.Extra, as go-tdx-guest
// does, because genuine quotes carry zero padding there; no signature
// covers them. The PEM PCK chain may end in a NUL, as Intel's library
// writes it.
//
// Not yet here: TCB appraisal from TCB info and QE identity collateral,
// CRLs, policy checks (MRTD allowlist, debug bit, RTMR pins, key binding),
// the PCK certificate's SGX extension, RA-TLS certificate extensions.
package ratls
