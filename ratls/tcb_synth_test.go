package ratls_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/ratls"
)

// synthPKI re-creates the Intel PKI with test keys: a root, a PCK
// Platform CA, a PCK leaf carrying the genuine v4 leaf's SGX extension and
// a TCB signer. The genuine TCB info and QE identity are re-signed after
// the test's edits, so that every branch of the appraisal can be reached;
// the quote is the genuine v4 quote (Appraise reads its body and QE
// report, which Verify has already authenticated).
type synthPKI struct {
	t                     testing.TB
	rootKey, caKey, sgKey *ecdsa.PrivateKey
	root, ca, leaf, sg    *x509.Certificate
	fields                map[string]string
	pckRevoked, rootRevkd []*big.Int
	crlSigner             *x509.Certificate // PCK CRL issuer; default ca
	crlSignerKey          *ecdsa.PrivateKey
	crlFrom, crlUntil     time.Time // CRL window; zero: 2025-06-19..07-19
}

var synthAt = time.Date(2025, 7, 1, 0, 0, 0, 0, time.UTC)

func newSynthPKI(t testing.TB) *synthPKI {
	t.Helper()
	p := &synthPKI{t: t, fields: collFields(t, collB0)}
	gen := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	p.rootKey, p.caKey, p.sgKey = gen(), gen(), gen()
	from, until := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2040, 1, 1, 0, 0, 0, 0, time.UTC)
	p.root = p.cert(&x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Test SGX Root CA"}, NotBefore: from, NotAfter: until,
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}, nil, p.rootKey, p.rootKey)
	p.ca = p.cert(&x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "Intel SGX PCK Platform CA"}, NotBefore: from, NotAfter: until,
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}, p.root, p.rootKey, p.caKey)
	_, v := verifiedQuote(t, v4Name)
	var sgx []byte
	for _, e := range v.PCKChain[0].Extensions {
		if e.Id.Equal(ratls.OIDSGXExtension) {
			sgx = e.Value
		}
	}
	p.leaf = p.cert(&x509.Certificate{SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "Intel SGX PCK Certificate"}, NotBefore: from, NotAfter: until,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtraExtensions: []pkix.Extension{{Id: ratls.OIDSGXExtension, Value: sgx}}}, p.ca, p.caKey, gen())
	p.setSigner(from, until)
	p.crlSigner, p.crlSignerKey = p.ca, p.caKey
	return p
}

func (p *synthPKI) setSigner(from, until time.Time) {
	p.sg = p.cert(&x509.Certificate{SerialNumber: big.NewInt(4), Subject: pkix.Name{CommonName: "Intel SGX TCB Signing"}, NotBefore: from, NotAfter: until,
		KeyUsage: x509.KeyUsageDigitalSignature}, p.root, p.rootKey, p.sgKey)
}

func (p *synthPKI) cert(tmpl, parent *x509.Certificate, parentKey, key *ecdsa.PrivateKey) *x509.Certificate {
	p.t.Helper()
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		p.t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		p.t.Fatal(err)
	}
	return c
}

func pemOf(certs ...*x509.Certificate) string {
	var s string
	for _, c := range certs {
		s += string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	}
	return s
}

func (p *synthPKI) sign(doc string) string {
	d := sha256.Sum256([]byte(doc))
	r, s, err := ecdsa.Sign(rand.Reader, p.sgKey, d[:])
	if err != nil {
		p.t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return hex.EncodeToString(sig)
}

func (p *synthPKI) crl(issuer *x509.Certificate, key *ecdsa.PrivateKey, revoked []*big.Int) string {
	var entries []x509.RevocationListEntry
	for _, s := range revoked {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: s, RevocationTime: time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)})
	}
	from, until := p.crlFrom, p.crlUntil
	if from.IsZero() {
		from, until = time.Date(2025, 6, 19, 0, 0, 0, 0, time.UTC), time.Date(2025, 7, 19, 0, 0, 0, 0, time.UTC)
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1), RevokedCertificateEntries: entries,
		ThisUpdate: from, NextUpdate: until}, issuer, key)
	if err != nil {
		p.t.Fatal(err)
	}
	return hex.EncodeToString(der)
}

// edit replaces old by new in a signed document; old must occur.
func (p *synthPKI) edit(field, old, new string) {
	p.t.Helper()
	if !strings.Contains(p.fields[field], old) {
		p.t.Fatalf("%s does not contain %s", field, old)
	}
	p.fields[field] = strings.ReplaceAll(p.fields[field], old, new)
}

// appraise builds the collateral and appraises the v4 quote at at, with
// tee_tcb_svn replaced when tee is not nil.
func (p *synthPKI) appraise(at time.Time, tee []byte) (*ratls.Appraisal, error) {
	return p.appraiseQuote(at, func(q *ratls.Quote) {
		if tee != nil {
			copy(q.Body.TEETCBSVN[:], tee)
		}
	})
}

// json signs the edited documents and returns the collateral file.
func (p *synthPKI) json() []byte {
	p.t.Helper()
	m := p.fields
	m["tcb_info_signature"], m["qe_identity_signature"] = p.sign(m["tcb_info"]), p.sign(m["qe_identity"])
	m["tcb_info_issuer_chain"], m["qe_identity_issuer_chain"] = pemOf(p.sg, p.root), pemOf(p.sg, p.root)
	m["pck_crl_issuer_chain"] = pemOf(p.crlSigner, p.root)
	m["pck_crl"] = p.crl(p.crlSigner, p.crlSignerKey, p.pckRevoked)
	m["root_ca_crl"] = p.crl(p.root, p.rootKey, p.rootRevkd)
	return marshalColl(p.t, m)
}

func (p *synthPKI) appraiseQuote(at time.Time, edit func(q *ratls.Quote)) (*ratls.Appraisal, error) {
	p.t.Helper()
	c, err := ratls.ParseCollateralJSON(p.json())
	if err != nil {
		p.t.Fatal(failureDetail(err))
	}
	q, _ := verifiedQuote(p.t, v4Name)
	edit(q)
	return ratls.Appraise(q, &ratls.Verified{PCKChain: []*x509.Certificate{p.leaf, p.ca, p.root}}, c, at)
}

// TestAppraiseSynthetic reaches each verdict of the appraisal with the
// genuine documents edited and re-signed by a test PKI.
func TestAppraiseSynthetic(t *testing.T) {
	type want struct {
		status, platform, module, qe ratls.TCBStatus
		advisories                   []string
		class                        failure.Class
		evidence                     string
	}
	up := ratls.StatusUpToDate
	cases := []struct {
		name  string
		setup func(p *synthPKI)
		tee   []byte
		at    time.Time
		want  want
	}{
		{name: "faithful copy", want: want{status: up, platform: up, module: up, qe: up}},
		{name: "PCK leaf on the PCK CRL", setup: func(p *synthPKI) { p.pckRevoked = []*big.Int{big.NewInt(9), big.NewInt(3)} },
			want: want{class: ratls.ClassRevoked, evidence: "serial 3 is on the PCK CRL"}},
		{name: "PCK CA on the root CRL", setup: func(p *synthPKI) { p.rootRevkd = []*big.Int{big.NewInt(2)} },
			want: want{class: ratls.ClassRevoked, evidence: "serial 2 is on the root CA CRL"}},
		{name: "TCB signer on the root CRL", setup: func(p *synthPKI) { p.rootRevkd = []*big.Int{big.NewInt(4)} },
			want: want{class: ratls.ClassRevoked, evidence: "serial 4 is on the root CA CRL"}},
		{name: "PCK CRL signed by the root", setup: func(p *synthPKI) { p.crlSigner, p.crlSignerKey = p.root, p.rootKey },
			want: want{class: ratls.ClassCollateral, evidence: "pck_crl_issuer_chain: signer \"Test SGX Root CA\""}},
		{name: "TCB signer expired", setup: func(p *synthPKI) {
			p.setSigner(time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2025, 6, 30, 0, 0, 0, 0, time.UTC))
		},
			want: want{class: ratls.ClassCollateralExpired, evidence: "valid 2020-01-01T00:00:00Z..2025-06-30T00:00:00Z, appraisal instant 2025-07-01T00:00:00Z"}},
		{name: "PCE ID differs", setup: func(p *synthPKI) { p.edit("tcb_info", `"pceId":"0000"`, `"pceId":"0001"`) },
			want: want{class: ratls.ClassCollateral, evidence: "PCE ID 0001"}},
		{name: "module out of date", setup: func(p *synthPKI) { p.edit("tcb_info", `{"tcb":{"isvsvn":4}`, `{"tcb":{"isvsvn":7}`) },
			want: want{status: ratls.StatusOutOfDate, platform: up, module: ratls.StatusOutOfDate, qe: up}},
		{name: "configuration needed and module out of date", setup: func(p *synthPKI) {
			p.edit("tcb_info", `{"tcb":{"isvsvn":4},"tcbDate":"2024-03-13T00:00:00Z","tcbStatus":"UpToDate"},{"tcb":{"isvsvn":2},"tcbDate":"2023-08-09T00:00:00Z","tcbStatus":"OutOfDate"}`,
				`{"tcb":{"isvsvn":7},"tcbDate":"2024-03-13T00:00:00Z","tcbStatus":"UpToDate"},{"tcb":{"isvsvn":2},"tcbDate":"2023-08-09T00:00:00Z","tcbStatus":"OutOfDate","advisoryIDs":["INTEL-SA-00002","INTEL-SA-00001"]}`)
			p.edit("tcb_info", `"tcbDate":"2024-03-13T00:00:00Z","tcbStatus":"UpToDate"}`, `"tcbDate":"2024-03-13T00:00:00Z","tcbStatus":"ConfigurationNeeded","advisoryIDs":["INTEL-SA-00003","INTEL-SA-00001"]}`)
		}, want: want{status: ratls.StatusOutOfDateConfigurationNeeded, platform: ratls.StatusConfigurationNeeded, module: ratls.StatusOutOfDate, qe: up,
			advisories: []string{"INTEL-SA-00001", "INTEL-SA-00002", "INTEL-SA-00003"}}},
		{name: "platform revoked", setup: func(p *synthPKI) {
			p.edit("tcb_info", `"tdxtcbcomponents":[{"svn":5,"category":"OS/VMM","type":"TDX Module"},{"svn":0,"category":"OS/VMM","type":"TDX Module"},{"svn":2,"category":"OS/VMM","type":"TDX Late Microcode Update"},{"svn":0},{"svn":0},{"svn":0},{"svn":0},{"svn":0},{"svn":0},{"svn":0},{"svn":0},{"svn":0},{"svn":0},{"svn":0},{"svn":0},{"svn":0}]},"tcbDate":"2024-03-13T00:00:00Z","tcbStatus":"UpToDate"`,
				`"tdxtcbcomponents":[{"svn":5,"category":"OS/VMM","type":"TDX Module"},{"svn":0,"category":"OS/VMM","type":"TDX Module"},{"svn":2,"category":"OS/VMM","type":"TDX Late Microcode Update"},{"svn":0},{"svn":0},{"svn":0},{"svn":0},{"svn":0},{"svn":0},{"svn":0},{"svn":0},{"svn":0},{"svn":0},{"svn":0},{"svn":0},{"svn":0}]},"tcbDate":"2024-03-13T00:00:00Z","tcbStatus":"Revoked"`)
		}, want: want{status: ratls.StatusRevoked, platform: ratls.StatusRevoked, module: up, qe: up, class: ratls.ClassRevoked, evidence: "platform Revoked"}},
		{name: "module version unknown", setup: func(p *synthPKI) { p.edit("tcb_info", `"id":"TDX_01"`, `"id":"TDX_02"`) },
			want: want{class: ratls.ClassTDXModule, evidence: "names module TDX_01"}},
		{name: "module signer differs", setup: func(p *synthPKI) {
			p.edit("tcb_info", `"id":"TDX_01","mrsigner":"00`, `"id":"TDX_01","mrsigner":"01`)
		}, want: want{class: ratls.ClassTDXModule, evidence: "TCB info expects 01"}},
		{name: "module attributes under mask", setup: func(p *synthPKI) {
			p.edit("tcb_info", `"id":"TDX_01","mrsigner":"000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000","attributes":"0000000000000000"`,
				`"id":"TDX_01","mrsigner":"000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000","attributes":"0100000000000000"`)
		}, want: want{class: ratls.ClassTDXModule, evidence: "seam_attributes"}},
		{name: "module below every level", setup: func(p *synthPKI) {
			p.edit("tcb_info", `{"tcb":{"isvsvn":4}`, `{"tcb":{"isvsvn":8}`)
			p.edit("tcb_info", `{"tcb":{"isvsvn":2}`, `{"tcb":{"isvsvn":7}`)
		}, want: want{class: ratls.ClassTCBNoMatch, evidence: "module ISVSVN (tee_tcb_svn[0]) 6, lowest level of TDX_01 requires 7"}},
		// With a module version, tee_tcb_svn[0..1] are the module's: a
		// module ISVSVN of 4 meets TDX_01's level 4 although the platform
		// levels say 5 for component 0.
		{name: "module ISVSVN 4 of version 1", tee: []byte{4, 1, 3}, want: want{status: up, platform: up, module: up, qe: up}},
		// Without one, all 16 bytes meet the platform level and no module
		// status enters.
		{name: "no module version", tee: []byte{6, 0, 3}, want: want{status: up, platform: up, qe: up}},
		{name: "no module version, component 0 short", tee: []byte{4, 0, 3},
			want: want{class: ratls.ClassTCBNoMatch, evidence: "(tee_tcb_svn[0] = 4 < 5)"}},
		{name: "QE MRSIGNER", setup: func(p *synthPKI) { p.edit("qe_identity", `"mrsigner":"DC9E`, `"mrsigner":"DD9E`) },
			want: want{class: ratls.ClassQEIdentity, evidence: "QE MRSIGNER dc9e"}},
		{name: "QE ISVPRODID", setup: func(p *synthPKI) { p.edit("qe_identity", `"isvprodid":2`, `"isvprodid":1`) },
			want: want{class: ratls.ClassQEIdentity, evidence: "QE ISVPRODID 2, QE identity 1"}},
		{name: "QE ATTRIBUTES", setup: func(p *synthPKI) { p.edit("qe_identity", `"attributes":"11`, `"attributes":"13`) },
			want: want{class: ratls.ClassQEIdentity, evidence: "QE ATTRIBUTES"}},
		{name: "QE MISCSELECT", setup: func(p *synthPKI) { p.edit("qe_identity", `"miscselect":"00000000"`, `"miscselect":"01000000"`) },
			want: want{class: ratls.ClassQEIdentity, evidence: "QE MISCSELECT"}},
		{name: "QE out of date", setup: func(p *synthPKI) {
			p.edit("qe_identity", `"tcbLevels":[{"tcb":{"isvsvn":4},"tcbDate":"2024-03-13T00:00:00Z","tcbStatus":"UpToDate"}]`,
				`"tcbLevels":[{"tcb":{"isvsvn":8},"tcbDate":"2024-03-13T00:00:00Z","tcbStatus":"UpToDate"},{"tcb":{"isvsvn":4},"tcbDate":"2023-03-13T00:00:00Z","tcbStatus":"OutOfDate","advisoryIDs":["INTEL-SA-00999"]}]`)
		}, want: want{status: ratls.StatusOutOfDate, platform: up, module: up, qe: ratls.StatusOutOfDate, advisories: []string{"INTEL-SA-00999"}}},
		{name: "QE below every level", setup: func(p *synthPKI) { p.edit("qe_identity", `{"tcb":{"isvsvn":4}`, `{"tcb":{"isvsvn":7}`) },
			want: want{class: ratls.ClassTCBNoMatch, evidence: "QE ISVSVN 6, lowest QE identity level requires 7"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := newSynthPKI(t)
			if c.setup != nil {
				c.setup(p)
			}
			at := c.at
			if at.IsZero() {
				at = synthAt
			}
			a, err := p.appraise(at, c.tee)
			if c.want.class != "" {
				fe := wantClass(t, err, c.want.class)
				t.Log(fe.Message, "|", fe.Evidence)
				if !strings.Contains(fe.Evidence, c.want.evidence) {
					t.Errorf("evidence %q lacks %q", fe.Evidence, c.want.evidence)
				}
				if c.want.status == "" {
					if a != nil {
						t.Errorf("appraisal %+v returned with the refusal", a)
					}
					return
				}
			} else if err != nil {
				t.Fatal(failureDetail(err))
			}
			if a == nil {
				t.Fatal("no appraisal")
			}
			if a.Status != c.want.status || a.PlatformStatus != c.want.platform || a.ModuleStatus != c.want.module || a.QEStatus != c.want.qe {
				t.Errorf("status %s platform %s module %s QE %s, want %+v", a.Status, a.PlatformStatus, a.ModuleStatus, a.QEStatus, c.want)
			}
			if !slices.Equal(a.AdvisoryIDs, c.want.advisories) && (len(a.AdvisoryIDs) != 0 || len(c.want.advisories) != 0) {
				t.Errorf("advisories %v, want %v", a.AdvisoryIDs, c.want.advisories)
			}
		})
	}
}

// TestAppraiseQEVendor: a quote whose header names another QE vendor is
// not appraised with Intel's QE identity.
func TestAppraiseQEVendor(t *testing.T) {
	p := newSynthPKI(t)
	_, err := p.appraiseQuote(synthAt, func(q *ratls.Quote) { q.Header.QEVendorID[0] ^= 1 })
	fe := wantClass(t, err, ratls.ClassQEIdentity)
	if !strings.Contains(fe.Evidence, "qe_vendor_id 929a7233") {
		t.Errorf("evidence: %s", fe.Evidence)
	}
}
