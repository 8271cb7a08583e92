package ratls

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"time"

	"github.com/google/go-tdx-guest/pcs"
	"github.com/pgtrust/pgtrust/failure"
)

const (
	tcbSigningCN = "Intel SGX TCB Signing"

	fixCollateralBad   = "the collateral was altered or is not Intel's: obtain it again from Intel PCS or a PCCS that serves Intel's collateral"
	fixWrongCollateral = "use the collateral for this platform: fetch it for the quote's FMSPC and PCK CA (Intel PCS/PCCS, or the matching file of the collateral directory)"
)

// Appraise verifies the collateral against the quote's verified PCK chain
// at the instant at (zero: now) and matches the TDX TCB levels and the QE
// identity, following Intel's DCAP quote verification library:
//
//   - the TCB info and QE identity signatures over their exact signed
//     bytes, by an "Intel SGX TCB Signing" certificate whose issuer chain
//     ends in the root of v.PCKChain;
//   - the root CRL (signed by that root) and the PCK CRL (signed by the
//     quote chain's PCK CA), neither listing a certificate in use;
//   - every item valid at at;
//   - FMSPC and PCE ID equal to the PCK certificate's;
//   - the TDX module against the TCB info, the platform TCB level, the TDX
//     module TCB level, the QE vendor and the QE identity, combined worst-of.
//
// A Revoked status returns the appraisal together with an
// attestation_revoked error; any other status is returned without error,
// for a policy to accept or refuse.
func Appraise(q *Quote, v *Verified, c *Collateral, at time.Time) (*Appraisal, error) {
	if q == nil || v == nil || len(v.PCKChain) < 3 {
		return nil, failure.New(ClassPCKChain, "TCB appraisal needs a verified quote").
			WithEvidence("quote or verified PCK chain (leaf, PCK CA, root) missing").
			WithFix("verify the quote (Quote.Verify) before appraising it")
	}
	if !c.parsed() {
		return nil, failure.New(ClassCollateralUnavailable, "no Intel collateral to appraise the TCB with").
			WithEvidence("collateral is nil or empty (not from ParseCollateralJSON or a CollateralSource)").
			WithFix("configure a collateral source (PCCS URL or collateral directory)")
	}
	if at.IsZero() {
		at = time.Now()
	}
	at = at.UTC()
	chain := v.PCKChain
	leaf, pckCA, root := chain[0], chain[1], chain[len(chain)-1]

	// Signatures and issuer chains first: nothing of an unauthenticated
	// document is believed, not even its dates.
	tcbSigner, err := verifyIssuerChain("tcb_info_issuer_chain", c.tcbChain, tcbSigningCN, root, at)
	if err != nil {
		return nil, err
	}
	if err := verifyDocument("tcb_info", tcbSigner, c.tcbInfoRaw, c.tcbInfoSig); err != nil {
		return nil, err
	}
	qeSigner, err := verifyIssuerChain("qe_identity_issuer_chain", c.qeChain, tcbSigningCN, root, at)
	if err != nil {
		return nil, err
	}
	if err := verifyDocument("qe_identity", qeSigner, c.qeIdentityRaw, c.qeIdentitySig); err != nil {
		return nil, err
	}
	crlCA, err := verifyIssuerChain("pck_crl_issuer_chain", c.pckCRLChain, pckCA.Subject.CommonName, root, at)
	if err != nil {
		return nil, err
	}
	if k, ok := crlCA.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(pckCA.PublicKey) || !bytes.Equal(crlCA.RawSubject, pckCA.RawSubject) {
		return nil, failure.New(ClassCollateral, "PCK CRL issuer chain is not for the quote's PCK CA").
			WithEvidence("pck_crl_issuer_chain signer %q serial %x, quote's PCK CA %q serial %x", crlCA.Subject.CommonName, crlCA.SerialNumber, pckCA.Subject.CommonName, pckCA.SerialNumber).
			WithFix(fixWrongCollateral)
	}
	if err := verifyCRL("root_ca_crl", c.rootCRL, root); err != nil {
		return nil, err
	}
	if err := verifyCRL("pck_crl", c.pckCRL, pckCA); err != nil {
		return nil, err
	}

	// Validity of every item at the instant.
	items := []struct {
		name         string
		from, before time.Time
	}{
		{"TCB info", c.tcbInfo.IssueDate, c.tcbInfo.NextUpdate},
		{"QE identity", c.qeIdentity.IssueDate, c.qeIdentity.NextUpdate},
		{"PCK CRL", c.pckCRL.ThisUpdate, c.pckCRL.NextUpdate},
		{"root CA CRL", c.rootCRL.ThisUpdate, c.rootCRL.NextUpdate},
	}
	for _, it := range items {
		if at.Before(it.from) || at.After(it.before) {
			return nil, failure.New(ClassCollateralExpired, "Intel collateral is not valid at the appraisal instant: %s", it.name).
				WithEvidence("%s valid %s..%s (whole collateral %s..%s), appraisal instant %s",
					it.name, rfc(it.from), rfc(it.before), rfc(c.ValidFrom()), rfc(c.NextUpdate()), rfc(at)).
				WithFix("fetch fresh collateral (PCCS, or a newer file in the collateral directory), or appraise at an instant inside the window (--at)")
		}
	}

	// Revocation: the root CRL covers the CAs and signers, the PCK CRL the
	// PCK leaf.
	for _, rc := range []struct {
		crl  *x509.RevocationList
		name string
		cert *x509.Certificate
	}{
		{c.rootCRL, "root CA CRL", pckCA},
		{c.rootCRL, "root CA CRL", tcbSigner},
		{c.rootCRL, "root CA CRL", qeSigner},
		{c.pckCRL, "PCK CRL", leaf},
	} {
		for _, e := range rc.crl.RevokedCertificateEntries {
			if e.SerialNumber != nil && e.SerialNumber.Cmp(rc.cert.SerialNumber) == 0 {
				return nil, failure.New(ClassRevoked, "certificate %q is revoked", rc.cert.Subject.CommonName).
					WithEvidence("serial %x is on the %s (issuer %q, thisUpdate %s) since %s", rc.cert.SerialNumber, rc.name, rc.crl.Issuer.CommonName, rfc(rc.crl.ThisUpdate), rfc(e.RevocationTime)).
					WithFix("do not trust this platform: Intel revoked its key; the server's operator must move to a platform that is not revoked")
			}
		}
	}

	// The collateral is Intel's and current; now is it this platform's?
	pck, err := ParsePCKInfo(leaf)
	if err != nil {
		return nil, err
	}
	ti := &c.tcbInfo
	fmspc := hex.EncodeToString(pck.FMSPC[:])
	if !strings.EqualFold(ti.Fmspc, fmspc) || !strings.EqualFold(ti.PceID, hex.EncodeToString(pck.PCEID[:])) {
		return nil, failure.New(ClassCollateral, "Intel collateral is for another platform").
			WithEvidence("TCB info FMSPC %s PCE ID %s, PCK certificate FMSPC %s PCE ID %x", ti.Fmspc, ti.PceID, fmspc, pck.PCEID).
			WithFix(fixWrongCollateral)
	}

	body := &q.Body
	module, err := matchModule(ti, body)
	if err != nil {
		return nil, err
	}
	level, err := matchPlatform(ti, c.tcbDates, pck, body.TEETCBSVN)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(q.Header.QEVendorID[:], intelQEVendorID[:]) {
		return nil, failure.New(ClassQEIdentity, "quote was not produced by Intel's quoting enclave").
			WithEvidence("header qe_vendor_id %x, Intel's is %x", q.Header.QEVendorID, intelQEVendorID).
			WithFix("only quotes of Intel's TDX quoting enclave can be appraised with Intel's collateral")
	}
	qe, err := matchQE(&c.qeIdentity, &q.QEReport)
	if err != nil {
		return nil, err
	}

	a := &Appraisal{
		PlatformStatus:          TCBStatus(level.status),
		QEStatus:                TCBStatus(qe.TcbStatus),
		TCBDate:                 level.date,
		FMSPC:                   fmspc,
		TCBEvaluationDataNumber: ti.TcbEvaluationDataNumber,
		CollateralValidUntil:    c.NextUpdate(),
	}
	statuses := []TCBStatus{a.PlatformStatus, a.QEStatus}
	ids := slices.Concat(level.advisories, qe.AdvisoryIDs)
	if module != nil {
		a.ModuleStatus = TCBStatus(module.TcbStatus)
		statuses = append(statuses, a.ModuleStatus)
		ids = append(ids, module.AdvisoryIDs...)
	}
	a.Status = combineStatus(statuses...)
	slices.Sort(ids)
	a.AdvisoryIDs = slices.Compact(ids)
	if a.AdvisoryIDs == nil {
		a.AdvisoryIDs = []string{}
	}
	if a.Status == StatusRevoked {
		return a, failure.New(ClassRevoked, "Intel lists this platform's TCB as Revoked").
			WithEvidence("platform %s, TDX module %s, QE %s (FMSPC %s, TCB evaluation data number %d)", a.PlatformStatus, orNone(a.ModuleStatus), a.QEStatus, fmspc, a.TCBEvaluationDataNumber).
			WithFix("do not trust this platform; its operator must update it to a TCB Intel has not revoked")
	}
	return a, nil
}

func rfc(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func orNone(s TCBStatus) string {
	if s == "" {
		return "(none)"
	}
	return string(s)
}

// verifyIssuerChain verifies a collateral issuer chain (signer first) up to
// root at the instant at and returns the signer, whose common name must be
// wantCN. A root carried in the chain must be byte-identical to root.
func verifyIssuerChain(name string, chain []*x509.Certificate, wantCN string, root *x509.Certificate, at time.Time) (*x509.Certificate, error) {
	signer := chain[0]
	bad := func(err error, what string, args ...any) *failure.Error {
		return failure.Wrap(ClassCollateral, err, "Intel collateral %s does not verify", name).
			WithEvidence("%s: %s", name, fmt.Sprintf(what, args...)).
			WithFix(fixCollateralBad)
	}
	if signer.Subject.CommonName != wantCN {
		return nil, bad(nil, "signer %q, want %q", signer.Subject.CommonName, wantCN)
	}
	inter := x509.NewCertPool()
	for i, cert := range chain {
		if i+1 < len(chain) {
			if err := cert.CheckSignatureFrom(chain[i+1]); err != nil {
				return nil, bad(err, "certificate %d %q is not signed by certificate %d %q", i, cert.Subject.CommonName, i+1, chain[i+1].Subject.CommonName)
			}
		}
		if i == 0 {
			continue
		}
		if bytes.Equal(cert.RawSubject, cert.RawIssuer) {
			if !bytes.Equal(cert.Raw, root.Raw) {
				got, want := sha256.Sum256(cert.Raw), sha256.Sum256(root.Raw)
				return nil, bad(nil, "chain ends in root %q SHA-256 %x, the quote's PCK chain in %q SHA-256 %x", cert.Subject.CommonName, got, root.Subject.CommonName, want)
			}
			continue
		}
		inter.AddCert(cert)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	_, err := signer.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		var inv x509.CertificateInvalidError
		if errors.As(err, &inv) && inv.Reason == x509.Expired {
			return nil, failure.Wrap(ClassCollateralExpired, err, "Intel collateral signer is not valid at the appraisal instant").
				WithEvidence("%s signer %q valid %s..%s, appraisal instant %s", name, signer.Subject.CommonName, rfc(signer.NotBefore), rfc(signer.NotAfter), rfc(at)).
				WithFix("fetch fresh collateral, or appraise at an instant inside the signer's validity (--at)")
		}
		return nil, bad(err, "signer %q serial %x does not chain to %q at %s", signer.Subject.CommonName, signer.SerialNumber, root.Subject.CommonName, rfc(at))
	}
	if _, ok := signer.PublicKey.(*ecdsa.PublicKey); !ok {
		return nil, bad(nil, "signer key is %T, want ECDSA P-256", signer.PublicKey)
	}
	return signer, nil
}

// verifyDocument checks the P-256 r ‖ s signature over the exact bytes.
func verifyDocument(name string, signer *x509.Certificate, doc, sig []byte) error {
	key := signer.PublicKey.(*ecdsa.PublicKey)
	d := sha256.Sum256(doc)
	if key.Curve != elliptic.P256() || !ecdsa.Verify(key, d[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		return failure.New(ClassCollateral, "Intel collateral %s signature does not verify", name).
			WithEvidence("%s (%d bytes, SHA-256 %x), signature %x, signer %q serial %x", name, len(doc), d, sig, signer.Subject.CommonName, signer.SerialNumber).
			WithFix(fixCollateralBad)
	}
	return nil
}

// verifyCRL checks that issuer signed the CRL and is named as its issuer.
func verifyCRL(name string, crl *x509.RevocationList, issuer *x509.Certificate) error {
	if !bytes.Equal(crl.RawIssuer, issuer.RawSubject) {
		return failure.New(ClassCollateral, "Intel collateral %s is not issued by %q", name, issuer.Subject.CommonName).
			WithEvidence("%s issuer %q, expected %q (the quote's chain)", name, crl.Issuer.CommonName, issuer.Subject.CommonName).
			WithFix(fixWrongCollateral)
	}
	if err := crl.CheckSignatureFrom(issuer); err != nil {
		return failure.Wrap(ClassCollateral, err, "Intel collateral %s signature does not verify", name).
			WithEvidence("%s (number %v, thisUpdate %s) not signed by %q serial %x", name, crl.Number, rfc(crl.ThisUpdate), issuer.Subject.CommonName, issuer.SerialNumber).
			WithFix(fixCollateralBad)
	}
	return nil
}

// matchModule checks the TDX module against the TCB info and, for a
// module version (tee_tcb_svn[1]) above 0, returns the level of its
// TDX_<version> identity that its ISVSVN (tee_tcb_svn[0]) meets.
func matchModule(ti *pcs.TcbInfo, body *TDReport) (*pcs.TcbLevel, error) {
	svn := body.TEETCBSVN
	mrsigner, attrs, mask := ti.TdxModule.Mrsigner.Bytes, ti.TdxModule.Attributes.Bytes, ti.TdxModule.AttributesMask.Bytes
	var identity *pcs.TdxModuleIdentity
	id := fmt.Sprintf("TDX_%02X", svn[1])
	if svn[1] > 0 {
		var ids []string
		for i := range ti.TdxModuleIdentities {
			ids = append(ids, ti.TdxModuleIdentities[i].ID)
			// The first entry of that id counts, as in Intel's library.
			if identity == nil && strings.EqualFold(ti.TdxModuleIdentities[i].ID, id) {
				identity = &ti.TdxModuleIdentities[i]
			}
		}
		if identity == nil {
			return nil, failure.New(ClassTDXModule, "TCB info does not know the TDX module version %s", id).
				WithEvidence("tee_tcb_svn %x names module %s; TCB info (FMSPC %s) lists %v", svn, id, ti.Fmspc, ids).
				WithFix("the TDX module is not one Intel lists for this platform: the host must run an Intel-released TDX module")
		}
		mrsigner, attrs, mask = identity.Mrsigner.Bytes, identity.Attributes.Bytes, identity.AttributesMask.Bytes
	}
	if !bytes.Equal(body.MRSignerSEAM[:], mrsigner) {
		return nil, failure.New(ClassTDXModule, "TDX module signer is not Intel's").
			WithEvidence("mr_signer_seam %x, TCB info expects %x (module %s)", body.MRSignerSEAM, mrsigner, id).
			WithFix("the host runs a TDX module Intel did not sign: do not trust this platform")
	}
	for i := range 8 {
		if body.SEAMAttributes[i]&mask[i] != attrs[i]&mask[i] {
			return nil, failure.New(ClassTDXModule, "TDX module attributes do not match the TCB info").
				WithEvidence("seam_attributes %x under mask %x, TCB info expects %x (module %s)", body.SEAMAttributes, mask, attrs, id).
				WithFix("the host runs the TDX module in a configuration Intel does not accept: do not trust this platform")
		}
	}
	if identity == nil {
		return nil, nil
	}
	levels := slices.Clone(identity.TcbLevels)
	slices.SortStableFunc(levels, func(a, b pcs.TcbLevel) int { return int(b.Tcb.Isvsvn) - int(a.Tcb.Isvsvn) })
	for i := range levels {
		if uint32(svn[0]) >= levels[i].Tcb.Isvsvn {
			return &levels[i], nil
		}
	}
	return nil, failure.New(ClassTCBNoMatch, "no TCB level of TDX module %s matches", id).
		WithEvidence("module ISVSVN (tee_tcb_svn[0]) %d, lowest level of %s requires %d", svn[0], id, levels[len(levels)-1].Tcb.Isvsvn).
		WithFix("the host's TDX module is older than every level Intel lists: its operator must update the TDX module")
}

type platformLevel struct {
	status     pcs.TcbComponentStatus
	date       time.Time
	advisories []string
}

// matchPlatform returns the first TCB level, in Intel's order (highest
// first), that the PCK's SGX components and PCESVN and the quote's
// tee_tcb_svn meet. tee_tcb_svn[0..1] (module ISVSVN and version) are left
// to the module identity when the version is above 0, as Intel's library
// does. TD 1.5 quotes are matched on tee_tcb_svn too: Intel uses
// tee_tcb_svn2 only to advise a TD relaunch, not to pick the level.
func matchPlatform(ti *pcs.TcbInfo, dates []time.Time, pck *PCKInfo, tee [16]byte) (*platformLevel, error) {
	idx := make([]int, len(ti.TcbLevels))
	for i := range idx {
		idx[i] = i
	}
	comps := func(cs []pcs.TcbComponent) []byte {
		b := make([]byte, len(cs))
		for i, c := range cs {
			b[i] = c.Svn
		}
		return b
	}
	// Intel's library keeps levels in a set ordered highest first; PCS
	// serves them so, and sorting makes the first match independent of it.
	slices.SortStableFunc(idx, func(a, b int) int {
		la, lb := ti.TcbLevels[a].Tcb, ti.TcbLevels[b].Tcb
		if c := bytes.Compare(comps(lb.SgxTcbcomponents), comps(la.SgxTcbcomponents)); c != 0 {
			return c
		}
		if la.Pcesvn != lb.Pcesvn {
			return int(lb.Pcesvn) - int(la.Pcesvn)
		}
		return bytes.Compare(comps(lb.TdxTcbcomponents), comps(la.TdxTcbcomponents))
	})
	start := 0
	if tee[1] > 0 {
		start = 2
	}
	// firstShort names the first component below a level's requirement.
	firstShort := func(l pcs.Tcb) string {
		for i := range 16 {
			if pck.SGXTCBComponents[i] < l.SgxTcbcomponents[i].Svn {
				return fmt.Sprintf("SGX TCB component %d = %d < %d", i+1, pck.SGXTCBComponents[i], l.SgxTcbcomponents[i].Svn)
			}
		}
		if pck.PCESVN < l.Pcesvn {
			return fmt.Sprintf("PCESVN %d < %d", pck.PCESVN, l.Pcesvn)
		}
		for i := start; i < 16; i++ {
			if tee[i] < l.TdxTcbcomponents[i].Svn {
				return fmt.Sprintf("tee_tcb_svn[%d] = %d < %d", i, tee[i], l.TdxTcbcomponents[i].Svn)
			}
		}
		return ""
	}
	for _, i := range idx {
		l := ti.TcbLevels[i]
		if firstShort(l.Tcb) == "" {
			return &platformLevel{status: l.TcbStatus, date: dates[i], advisories: l.AdvisoryIDs}, nil
		}
	}
	low := ti.TcbLevels[idx[len(idx)-1]].Tcb
	return nil, failure.New(ClassTCBNoMatch, "no TCB level of the TCB info matches this platform").
		WithEvidence("PCK SGX TCB components %x PCESVN %d, tee_tcb_svn %x; the lowest of %d levels requires SGX %x PCESVN %d TDX %x (%s)",
			pck.SGXTCBComponents, pck.PCESVN, tee, len(idx), comps(low.SgxTcbcomponents), low.Pcesvn, comps(low.TdxTcbcomponents), firstShort(low)).
		WithFix("the platform's TCB is older than every level Intel lists for FMSPC %s: its operator must update the platform (microcode/BIOS, TDX module)", ti.Fmspc)
}

// matchQE checks the QE report against the QE identity and returns the
// level its ISVSVN meets.
func matchQE(id *pcs.EnclaveIdentity, r *QEReport) (*pcs.TcbLevel, error) {
	bad := func(field, format string, args ...any) error {
		return failure.New(ClassQEIdentity, "quoting enclave does not match Intel's QE identity: %s", field).
			WithEvidence("%s", fmt.Sprintf(format, args...)).
			WithFix("the quote was not produced by Intel's TDX quoting enclave: do not trust this platform")
	}
	if !bytes.Equal(r.MRSigner[:], id.Mrsigner.Bytes) {
		return nil, bad("MRSIGNER", "QE MRSIGNER %x, QE identity %x", r.MRSigner, id.Mrsigner.Bytes)
	}
	if r.ISVProdID != id.IsvProdID {
		return nil, bad("ISVPRODID", "QE ISVPRODID %d, QE identity %d", r.ISVProdID, id.IsvProdID)
	}
	mask := binary.LittleEndian.Uint32(id.MiscselectMask.Bytes)
	if r.MiscSelect&mask != binary.LittleEndian.Uint32(id.Miscselect.Bytes)&mask {
		return nil, bad("MISCSELECT", "QE MISCSELECT %08x under mask %08x, QE identity %x", r.MiscSelect, mask, id.Miscselect.Bytes)
	}
	for i := range 16 {
		if r.Attributes[i]&id.AttributesMask.Bytes[i] != id.Attributes.Bytes[i]&id.AttributesMask.Bytes[i] {
			return nil, bad("ATTRIBUTES", "QE ATTRIBUTES %x under mask %x, QE identity %x", r.Attributes, id.AttributesMask.Bytes, id.Attributes.Bytes)
		}
	}
	levels := slices.Clone(id.TcbLevels)
	slices.SortStableFunc(levels, func(a, b pcs.TcbLevel) int { return int(b.Tcb.Isvsvn) - int(a.Tcb.Isvsvn) })
	for i := range levels {
		if uint32(r.ISVSVN) >= levels[i].Tcb.Isvsvn {
			return &levels[i], nil
		}
	}
	return nil, failure.New(ClassTCBNoMatch, "no TCB level of the QE identity matches the quoting enclave").
		WithEvidence("QE ISVSVN %d, lowest QE identity level requires %d", r.ISVSVN, levels[len(levels)-1].Tcb.Isvsvn).
		WithFix("the platform's quoting enclave is older than every level Intel lists: its operator must update the DCAP quoting enclave")
}

// Status components: Intel's statuses are combinations of these, and
// combining statuses is their union (Intel's convergence of platform,
// TDX module and QE statuses; never better than the worst of them).
const (
	flagSWHardening = 1 << iota
	flagConfiguration
	flagOutOfDate
	flagRevoked
)

var statusFlags = map[TCBStatus]int{
	StatusUpToDate:                          0,
	StatusSWHardeningNeeded:                 flagSWHardening,
	StatusConfigurationNeeded:               flagConfiguration,
	StatusConfigurationAndSWHardeningNeeded: flagConfiguration | flagSWHardening,
	StatusOutOfDate:                         flagOutOfDate,
	StatusOutOfDateConfigurationNeeded:      flagOutOfDate | flagConfiguration,
	StatusRevoked:                           flagRevoked,
}

// combineStatus merges statuses; an unknown status counts as Revoked
// (fail closed; the parser admits only Intel's names).
func combineStatus(ss ...TCBStatus) TCBStatus {
	f := 0
	for _, s := range ss {
		v, ok := statusFlags[s]
		if !ok {
			v = flagRevoked
		}
		f |= v
	}
	switch {
	case f&flagRevoked != 0:
		return StatusRevoked
	case f&flagOutOfDate != 0 && f&flagConfiguration != 0:
		return StatusOutOfDateConfigurationNeeded
	case f&flagOutOfDate != 0:
		return StatusOutOfDate
	case f&flagConfiguration != 0 && f&flagSWHardening != 0:
		return StatusConfigurationAndSWHardeningNeeded
	case f&flagConfiguration != 0:
		return StatusConfigurationNeeded
	case f&flagSWHardening != 0:
		return StatusSWHardeningNeeded
	}
	return StatusUpToDate
}
