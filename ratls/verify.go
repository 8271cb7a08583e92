package ratls

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	_ "embed"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/pgtrust/pgtrust/failure"
)

//go:embed intel_sgx_root_ca.der
var intelRootDER []byte

// IntelSGXRootSHA256 is the SHA-256 of the DER of the Intel SGX Root CA
// pinned by default (CN=Intel SGX Root CA, valid 2018-05-21..2049-12-31).
const IntelSGXRootSHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"

// IntelSGXRoot returns a fresh copy of the pinned Intel SGX Root CA.
func IntelSGXRoot() *x509.Certificate {
	c, err := x509.ParseCertificate(intelRootDER)
	if err != nil {
		panic("ratls: embedded Intel SGX root does not parse: " + err.Error())
	}
	return c
}

// VerifyOptions says what the quote's signatures are checked against.
type VerifyOptions struct {
	// Root is the trust anchor of the PCK chain; nil means IntelSGXRoot().
	Root *x509.Certificate
	// Time is the instant at which the PCK chain must be valid; the zero
	// value means now. Pass the instant the evidence was produced to
	// verify old evidence.
	Time time.Time
	// AllowSimulator accepts a quote from the simulator provider, whose
	// PCK chain ends in its own throwaway root instead of Intel's. For
	// development only: a simulated quote proves nothing about hardware.
	AllowSimulator bool
}

// Verified is what a successful Verify established.
type Verified struct {
	// PCKChain is the verified chain, leaf first, ending at the root.
	PCKChain []*x509.Certificate
}

// Verify checks, in order: the PCK chain up to the root at opts.Time, the
// QE report signature by the PCK leaf key, the QE report-data binding of
// the attestation key, and the quote signature by the attestation key over
// header and body. It does not appraise the TCB nor apply a policy.
func (q *Quote) Verify(opts VerifyOptions) (*Verified, error) {
	root := opts.Root
	if root == nil {
		root = IntelSGXRoot()
	}
	at := opts.Time
	if at.IsZero() {
		at = time.Now()
	}
	// A simulated quote is refused before its foreign root could be
	// reported as untrusted; allowed, its own marked root is the anchor.
	simRoot, err := simulatorTrust(q, opts.AllowSimulator)
	if err != nil {
		return nil, err
	}
	if simRoot != nil {
		root = simRoot
	}
	chain, err := verifyPCKChain(q.PCKChainPEM, root, at)
	if err != nil {
		return nil, err
	}
	leafKey, ok := chain[0].PublicKey.(*ecdsa.PublicKey)
	if !ok || leafKey.Curve != elliptic.P256() {
		return nil, failure.New(ClassPCKChain, "PCK certificate does not hold a P-256 key").
			WithEvidence("PCK leaf %q key type %T", chain[0].Subject.CommonName, chain[0].PublicKey).
			WithFix("the quote's PCK chain is not an Intel PCK chain; obtain the quote again")
	}
	if !verifyRaw(leafKey, q.QEReportRaw, q.QEReportSignature[:]) {
		return nil, failure.New(ClassQEReportSignature, "QE report signature does not verify with the PCK certificate's key").
			WithEvidence("QE report (%d bytes), signature %s, PCK leaf serial %x", len(q.QEReportRaw), hex.EncodeToString(q.QEReportSignature[:]), chain[0].SerialNumber).
			WithFix("the quote was altered or its QE report belongs to another platform: do not trust this server; obtain fresh evidence")
	}
	h := sha256.New()
	h.Write(q.AttestationKey[:])
	h.Write(q.QEAuthData)
	want := h.Sum(nil)
	got := q.QEReport.ReportData[:]
	var zero [32]byte
	if subtle.ConstantTimeCompare(want, got[:32]) != 1 || subtle.ConstantTimeCompare(zero[:], got[32:]) != 1 {
		return nil, failure.New(ClassQEBinding, "QE report does not vouch for the quote's attestation key").
			WithEvidence("QE report_data: expected SHA-256(attestation key ‖ QE auth data) = %x followed by 32 zero bytes, got %x", want, got).
			WithFix("the attestation key was swapped: do not trust this server; obtain fresh evidence")
	}
	attKey, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append([]byte{4}, q.AttestationKey[:]...))
	if err != nil {
		return nil, failure.Wrap(ClassQuoteSignature, err, "quote attestation key is not a P-256 point").
			WithEvidence("attestation key %x", q.AttestationKey[:]).
			WithFix("the quote was altered: obtain fresh evidence")
	}
	if !verifyRaw(attKey, q.Signed, q.Signature[:]) {
		return nil, failure.New(ClassQuoteSignature, "quote signature does not verify with its attestation key").
			WithEvidence("signed region [0,%d) (header and TD report), signature %x, MRTD %x", len(q.Signed), q.Signature[:], q.Body.MRTD[:]).
			WithFix("the quote's header or measurements were altered: do not trust this server; obtain fresh evidence")
	}
	return &Verified{PCKChain: chain}, nil
}

// verifyRaw checks an ECDSA signature given as 64 bytes r ‖ s over
// SHA-256(msg).
func verifyRaw(pub *ecdsa.PublicKey, msg, sig []byte) bool {
	d := sha256.Sum256(msg)
	r := new(big.Int).SetBytes(sig[:32])
	s := new(big.Int).SetBytes(sig[32:])
	return ecdsa.Verify(pub, d[:], r, s)
}

// verifyPCKChain parses the PEM chain (leaf first) and verifies it up to
// root at the instant at. A chain that carries its own root is accepted
// only if that root is byte-identical to the pinned one.
func verifyPCKChain(pemChain []byte, root *x509.Certificate, at time.Time) ([]*x509.Certificate, error) {
	certs, err := decodePEMChain(pemChain)
	if err != nil {
		return nil, failure.Wrap(ClassPCKChain, err, "PCK certificate chain does not parse").
			WithEvidence("quote's PCK chain: %v", err).
			WithFix("the quote's PCK chain was altered: obtain fresh evidence")
	}
	// The chain comes leaf first; checking each link in that order names
	// the broken certificate, which x509.Verify's path search cannot.
	for i := 0; i+1 < len(certs); i++ {
		if err := certs[i].CheckSignatureFrom(certs[i+1]); err != nil {
			return nil, failure.Wrap(ClassPCKChain, err, "PCK certificate chain is broken").
				WithEvidence("certificate %d %q (serial %x) is not signed by certificate %d %q", i, certs[i].Subject.CommonName, certs[i].SerialNumber, i+1, certs[i+1].Subject.CommonName).
				WithFix("the quote's PCK chain was altered: do not trust this server; obtain fresh evidence")
		}
	}
	leaf := certs[0]
	inter := x509.NewCertPool()
	var carried *x509.Certificate
	for _, c := range certs[1:] {
		if c.IsCA && bytes.Equal(c.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(c) == nil {
			carried = c
			continue
		}
		inter.AddCert(c)
	}
	if carried != nil && !bytes.Equal(carried.Raw, root.Raw) {
		sum := sha256.Sum256(carried.Raw)
		want := sha256.Sum256(root.Raw)
		return nil, failure.New(ClassUntrustedRoot, "PCK certificate chain ends in a root that is not the pinned one").
			WithEvidence("chain root %q SHA-256 %x, pinned root %q SHA-256 %x", carried.Subject.CommonName, sum, root.Subject.CommonName, want).
			WithFix("this quote was not signed under the Intel SGX Root CA: do not trust it (a simulator or a test platform?)")
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: at,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		class := ClassPCKChain
		var ua x509.UnknownAuthorityError
		if carried == nil && errors.As(err, &ua) {
			class = ClassUntrustedRoot
		}
		return nil, failure.Wrap(class, err, "PCK certificate chain does not verify").
			WithEvidence("leaf %q serial %x valid %s..%s, issuer %q, verified at %s against %q",
				leaf.Subject.CommonName, leaf.SerialNumber, leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339),
				leaf.Issuer.CommonName, at.UTC().Format(time.RFC3339), root.Subject.CommonName).
			WithFix("verify at an instant inside the chain's validity (explicit time), or obtain fresh evidence; a broken signature means the chain was altered")
	}
	return chains[0], nil
}

// decodePEMChain decodes a PEM certificate chain as Intel writes them, in
// quotes and in collateral issuer chains: CERTIFICATE blocks only, then
// nothing but whitespace or a C string's NUL.
func decodePEMChain(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := b
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %d is %q, want CERTIFICATE", len(certs), blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs), err)
		}
		certs = append(certs, c)
	}
	if left := bytes.Trim(rest, "\x00 \t\r\n"); len(left) != 0 || len(certs) == 0 {
		return nil, fmt.Errorf("%d certificates decoded, %d bytes left that are not PEM", len(certs), len(left))
	}
	return certs, nil
}
