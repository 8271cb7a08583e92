package ratls

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	"github.com/google/go-tdx-guest/pcs"
	"github.com/pgtrust/pgtrust/failure"
)

// Collateral is verified-on-use Intel collateral for one FMSPC + PCK CA:
// ParseCollateralJSON checks its structure only; Appraise verifies its
// signatures, issuer chains, CRLs and validity against a quote's verified
// PCK chain.
type Collateral struct {
	tcbInfoRaw    []byte // the exact signed bytes
	tcbInfo       pcs.TcbInfo
	tcbInfoSig    []byte // r ‖ s
	tcbChain      []*x509.Certificate
	qeIdentityRaw []byte
	qeIdentity    pcs.EnclaveIdentity
	qeIdentitySig []byte
	qeChain       []*x509.Certificate
	pckCRL        *x509.RevocationList
	pckCRLChain   []*x509.Certificate
	rootCRL       *x509.RevocationList
	// tcbDates holds each platform TCB level's parsed tcbDate.
	tcbDates []time.Time
}

// collateralJSON is dcap-qvl's QuoteCollateralV3 in its JSON form: the
// signed documents as strings, signatures and CRLs as hex.
type collateralJSON struct {
	PCKCRLIssuerChain     string `json:"pck_crl_issuer_chain"`
	RootCACRL             string `json:"root_ca_crl"`
	PCKCRL                string `json:"pck_crl"`
	TCBInfoIssuerChain    string `json:"tcb_info_issuer_chain"`
	TCBInfo               string `json:"tcb_info"`
	TCBInfoSignature      string `json:"tcb_info_signature"`
	QEIdentityIssuerChain string `json:"qe_identity_issuer_chain"`
	QEIdentity            string `json:"qe_identity"`
	QEIdentitySignature   string `json:"qe_identity_signature"`
	// PCKCertificateChain is written by newer dcap-qvl; the appraisal uses
	// the quote's verified chain instead, so it is accepted and ignored.
	PCKCertificateChain *string `json:"pck_certificate_chain,omitempty"`
}

const fixCollateralMalformed = "obtain the collateral again (Intel PCS/PCCS, or a dcap-qvl QuoteCollateralV3 JSON file); a truncated or altered file cannot be used"

func collateralErr(field, format string, args ...any) *failure.Error {
	return failure.New(ClassCollateral, "Intel collateral is malformed: %s", field).
		WithEvidence("%s: %s", field, fmt.Sprintf(format, args...)).
		WithFix(fixCollateralMalformed)
}

// maxCollateralJSON bounds what is read from a collateral file or PCCS
// response (genuine files are below 100 KB; a processor-CA CRL is larger).
const maxCollateralJSON = 8 << 20

// ParseCollateralJSON parses collateral in dcap-qvl's QuoteCollateralV3
// JSON shape (README 3.2). Unknown keys and trailing data are refused.
func ParseCollateralJSON(b []byte) (*Collateral, error) {
	if len(b) > maxCollateralJSON {
		return nil, collateralErr("json", "%d bytes, more than the %d accepted", len(b), maxCollateralJSON)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var j collateralJSON
	if err := dec.Decode(&j); err != nil {
		return nil, collateralErr("json", "%v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, collateralErr("json", "data after the collateral object")
	}
	return parseCollateral(&j)
}

func parseCollateral(j *collateralJSON) (*Collateral, error) {
	c := &Collateral{tcbInfoRaw: []byte(j.TCBInfo), qeIdentityRaw: []byte(j.QEIdentity)}
	var err error
	fields := []struct {
		name string
		err  func() error
	}{
		{"tcb_info", func() error { return c.parseTCBInfo() }},
		{"qe_identity", func() error { return c.parseQEIdentity() }},
		{"tcb_info_signature", func() error { c.tcbInfoSig, err = parseSig(j.TCBInfoSignature); return err }},
		{"qe_identity_signature", func() error { c.qeIdentitySig, err = parseSig(j.QEIdentitySignature); return err }},
		{"tcb_info_issuer_chain", func() error { c.tcbChain, err = parsePEMChain(j.TCBInfoIssuerChain); return err }},
		{"qe_identity_issuer_chain", func() error { c.qeChain, err = parsePEMChain(j.QEIdentityIssuerChain); return err }},
		{"pck_crl_issuer_chain", func() error { c.pckCRLChain, err = parsePEMChain(j.PCKCRLIssuerChain); return err }},
		{"pck_crl", func() error { c.pckCRL, err = parseHexCRL(j.PCKCRL); return err }},
		{"root_ca_crl", func() error { c.rootCRL, err = parseHexCRL(j.RootCACRL); return err }},
	}
	for _, f := range fields {
		if err := f.err(); err != nil {
			return nil, collateralErr(f.name, "%v", err)
		}
	}
	return c, nil
}

func parseSig(s string) ([]byte, error) {
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("not hex: %v", err)
	}
	if len(b) != 64 {
		return nil, fmt.Errorf("%d bytes, want 64 (P-256 r ‖ s)", len(b))
	}
	return b, nil
}

// parsePEMChain decodes a PEM chain, signer first; nothing but
// CERTIFICATE blocks (and whitespace or a C string's NUL) is accepted.
func parsePEMChain(s string) ([]*x509.Certificate, error) {
	certs, err := decodePEMChain([]byte(s))
	if err != nil {
		return nil, err
	}
	if len(certs) < 2 {
		return nil, fmt.Errorf("%d certificates, want the signer and its root", len(certs))
	}
	return certs, nil
}

func parseHexCRL(s string) (*x509.RevocationList, error) {
	der, err := hex.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("not hex: %v", err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, err
	}
	return crl, nil
}

var (
	reFMSPC    = regexp.MustCompile(`^[0-9A-Fa-f]{12}$`)
	rePCEID    = regexp.MustCompile(`^[0-9A-Fa-f]{4}$`)
	reModuleID = regexp.MustCompile(`^TDX_[0-9A-Fa-f]{2}$`)
)

// parseTCBInfo decodes the signed TCB info (v3, id TDX) and checks every
// field the appraisal reads, so that the appraisal never meets a missing
// or short one. go-tdx-guest's pcs types do the JSON decoding (and refuse
// unknown status names); the checks are ours because those types accept
// absent fields and hex of any length.
func (c *Collateral) parseTCBInfo() error {
	t := &c.tcbInfo
	if err := json.Unmarshal(c.tcbInfoRaw, t); err != nil {
		return err
	}
	switch {
	case t.ID != "TDX":
		return fmt.Errorf("id %q, want TDX (only TDX TCB info is appraised)", t.ID)
	case t.Version != 3:
		return fmt.Errorf("version %d, want 3", t.Version)
	case t.IssueDate.IsZero() || t.NextUpdate.IsZero() || !t.NextUpdate.After(t.IssueDate):
		return fmt.Errorf("issueDate %s nextUpdate %s: not a validity window", t.IssueDate, t.NextUpdate)
	case !reFMSPC.MatchString(t.Fmspc):
		return fmt.Errorf("fmspc %q is not 6 bytes of hex", t.Fmspc)
	case !rePCEID.MatchString(t.PceID):
		return fmt.Errorf("pceId %q is not 2 bytes of hex", t.PceID)
	case t.TcbType != 0:
		return fmt.Errorf("tcbType %d, want 0", t.TcbType)
	case len(t.TcbLevels) == 0:
		return fmt.Errorf("no tcbLevels")
	}
	if err := checkModule("tdxModule", t.TdxModule.Mrsigner, t.TdxModule.Attributes, t.TdxModule.AttributesMask); err != nil {
		return err
	}
	for i, m := range t.TdxModuleIdentities {
		name := fmt.Sprintf("tdxModuleIdentities[%d]", i)
		if !reModuleID.MatchString(m.ID) {
			return fmt.Errorf("%s id %q is not TDX_<2 hex digits>", name, m.ID)
		}
		if err := checkModule(name, m.Mrsigner, m.Attributes, m.AttributesMask); err != nil {
			return err
		}
		if err := checkLevels(name, m.TcbLevels); err != nil {
			return err
		}
	}
	for i, l := range t.TcbLevels {
		if len(l.Tcb.SgxTcbcomponents) != 16 || len(l.Tcb.TdxTcbcomponents) != 16 {
			return fmt.Errorf("tcbLevels[%d] has %d SGX and %d TDX components, want 16 each", i, len(l.Tcb.SgxTcbcomponents), len(l.Tcb.TdxTcbcomponents))
		}
	}
	if err := checkLevels("tcbLevels", t.TcbLevels); err != nil {
		return err
	}
	c.tcbDates = make([]time.Time, len(t.TcbLevels))
	for i, l := range t.TcbLevels {
		c.tcbDates[i], _ = time.Parse(time.RFC3339, l.TcbDate)
	}
	return nil
}

func checkModule(name string, mrsigner, attrs, mask pcs.HexBytes) error {
	if len(mrsigner.Bytes) != 48 || len(attrs.Bytes) != 8 || len(mask.Bytes) != 8 {
		return fmt.Errorf("%s mrsigner/attributes/attributesMask are %d/%d/%d bytes, want 48/8/8", name, len(mrsigner.Bytes), len(attrs.Bytes), len(mask.Bytes))
	}
	return nil
}

// checkLevels requires a status and an RFC 3339 tcbDate on every level.
func checkLevels(name string, levels []pcs.TcbLevel) error {
	if len(levels) == 0 {
		return fmt.Errorf("%s has no tcbLevels", name)
	}
	for i, l := range levels {
		if l.TcbStatus == "" {
			return fmt.Errorf("%s.tcbLevels[%d] has no tcbStatus", name, i)
		}
		if _, err := time.Parse(time.RFC3339, l.TcbDate); err != nil {
			return fmt.Errorf("%s.tcbLevels[%d] tcbDate %q: %v", name, i, l.TcbDate, err)
		}
	}
	return nil
}

// parseQEIdentity decodes the signed QE identity (v2, id TD_QE).
func (c *Collateral) parseQEIdentity() error {
	q := &c.qeIdentity
	if err := json.Unmarshal(c.qeIdentityRaw, q); err != nil {
		return err
	}
	switch {
	case q.ID != "TD_QE":
		return fmt.Errorf("id %q, want TD_QE", q.ID)
	case q.Version != 2:
		return fmt.Errorf("version %d, want 2", q.Version)
	case q.IssueDate.IsZero() || q.NextUpdate.IsZero() || !q.NextUpdate.After(q.IssueDate):
		return fmt.Errorf("issueDate %s nextUpdate %s: not a validity window", q.IssueDate, q.NextUpdate)
	case len(q.Miscselect.Bytes) != 4 || len(q.MiscselectMask.Bytes) != 4:
		return fmt.Errorf("miscselect/miscselectMask are %d/%d bytes, want 4", len(q.Miscselect.Bytes), len(q.MiscselectMask.Bytes))
	case len(q.Attributes.Bytes) != 16 || len(q.AttributesMask.Bytes) != 16:
		return fmt.Errorf("attributes/attributesMask are %d/%d bytes, want 16", len(q.Attributes.Bytes), len(q.AttributesMask.Bytes))
	case len(q.Mrsigner.Bytes) != 32:
		return fmt.Errorf("mrsigner is %d bytes, want 32", len(q.Mrsigner.Bytes))
	}
	return checkLevels("qe_identity", q.TcbLevels)
}

// FMSPC is the platform family the TCB info is for (lowercase hex).
func (c *Collateral) FMSPC() string {
	if !c.parsed() {
		return ""
	}
	return strings.ToLower(c.tcbInfo.Fmspc)
}

// CA is the PCK CA the PCK CRL is for: "platform", "processor", or "" when
// its issuer is neither Intel PCK CA.
func (c *Collateral) CA() string {
	if !c.parsed() {
		return ""
	}
	return pckCAName(c.pckCRL.Issuer.CommonName)
}

// parsed tells a Collateral from ParseCollateralJSON or a source from a
// zero value, which holds nothing to verify.
func (c *Collateral) parsed() bool {
	return c != nil && c.pckCRL != nil && c.rootCRL != nil && len(c.tcbChain) > 0 && len(c.qeChain) > 0 && len(c.pckCRLChain) > 0
}

// TCBEvaluationDataNumber is the TCB info's evaluation data number (Intel
// raises it with each TCB recovery).
func (c *Collateral) TCBEvaluationDataNumber() int {
	if !c.parsed() {
		return 0
	}
	return c.tcbInfo.TcbEvaluationDataNumber
}

// ValidFrom is the latest issue date (thisUpdate) of the four items: the
// collateral as a whole is valid from then.
func (c *Collateral) ValidFrom() time.Time {
	if !c.parsed() {
		return time.Time{}
	}
	t := c.tcbInfo.IssueDate
	for _, u := range []time.Time{c.qeIdentity.IssueDate, c.pckCRL.ThisUpdate, c.rootCRL.ThisUpdate} {
		if u.After(t) {
			t = u
		}
	}
	return t.UTC()
}

// NextUpdate is the earliest nextUpdate of the four items: the collateral
// as a whole is valid until then.
func (c *Collateral) NextUpdate() time.Time {
	if !c.parsed() {
		return time.Time{}
	}
	t := c.tcbInfo.NextUpdate
	for _, u := range []time.Time{c.qeIdentity.NextUpdate, c.pckCRL.NextUpdate, c.rootCRL.NextUpdate} {
		if u.Before(t) {
			t = u
		}
	}
	return t.UTC()
}

const (
	pckPlatformCA  = "Intel SGX PCK Platform CA"
	pckProcessorCA = "Intel SGX PCK Processor CA"
)

// pckCAName maps a PCK CA's common name to the PCS "ca" parameter.
func pckCAName(cn string) string {
	switch cn {
	case pckPlatformCA:
		return "platform"
	case pckProcessorCA:
		return "processor"
	}
	return ""
}

// PCKCAName returns the PCS "ca" parameter ("platform" or "processor") of
// a verified PCK chain: its intermediate's common name. It is "" for a
// chain of another shape.
func PCKCAName(chain []*x509.Certificate) string {
	if len(chain) < 2 {
		return ""
	}
	return pckCAName(chain[1].Subject.CommonName)
}

// selfConsistent checks each signed item against the first certificate of
// its own issuer chain (the root CRL against the TCB info chain's root).
// It establishes integrity only, not trust.
func (c *Collateral) selfConsistent() error {
	for _, d := range []struct {
		name   string
		signer *x509.Certificate
		doc    []byte
		sig    []byte
	}{
		{"tcb_info", c.tcbChain[0], c.tcbInfoRaw, c.tcbInfoSig},
		{"qe_identity", c.qeChain[0], c.qeIdentityRaw, c.qeIdentitySig},
	} {
		if _, ok := d.signer.PublicKey.(*ecdsa.PublicKey); !ok {
			return collateralErr(d.name, "signer key is %T, want ECDSA P-256", d.signer.PublicKey)
		}
		if err := verifyDocument(d.name, d.signer, d.doc, d.sig); err != nil {
			return err
		}
	}
	if err := c.pckCRL.CheckSignatureFrom(c.pckCRLChain[0]); err != nil {
		return collateralErr("pck_crl", "not signed by its issuer chain's %q: %v", c.pckCRLChain[0].Subject.CommonName, err)
	}
	root := c.tcbChain[len(c.tcbChain)-1]
	if err := c.rootCRL.CheckSignatureFrom(root); err != nil {
		return collateralErr("root_ca_crl", "not signed by %q: %v", root.Subject.CommonName, err)
	}
	return nil
}
