package ratls

import (
	"encoding/binary"
	"fmt"

	"github.com/pgtrust/pgtrust/failure"
)

// Sizes and constants of the TDX quote layout (Intel TDX DCAP Quoting
// Library API, "Quote Format").
const (
	HeaderSize     = 48
	BodySizeV4     = 584 // TD 1.0 report body
	BodySizeTD15   = 648 // TD 1.5 report body (v5, body type 3)
	QEReportSize   = 384
	SignatureSize  = 64
	PublicKeySize  = 64
	TEETypeTDX     = 0x81
	AttKeyECDSA256 = 2

	BodyTypeTD10 = 2 // v5 body descriptor: TD 1.0 report
	BodyTypeTD15 = 3 // v5 body descriptor: TD 1.5 report

	CertDataPCKChain = 5 // PEM PCK leaf, Platform/Processor CA, root
	CertDataQEReport = 6 // QE report certification data
)

// intelQEVendorID is the QE vendor ID of Intel's quoting enclaves.
var intelQEVendorID = [16]byte{0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07}

// Header is the 48-byte quote header.
type Header struct {
	Version            uint16
	AttestationKeyType uint16
	TEEType            uint32
	QESVN              uint16
	PCESVN             uint16
	QEVendorID         [16]byte
	UserData           [20]byte
}

// TDReport is the TD report body: the measurements of the trust domain.
// TEETCBSVN2 and MRServiceTD are set only for TD 1.5 bodies (v5, type 3).
type TDReport struct {
	TEETCBSVN      [16]byte
	MRSEAM         [48]byte
	MRSignerSEAM   [48]byte
	SEAMAttributes [8]byte
	TDAttributes   [8]byte
	XFAM           [8]byte
	MRTD           [48]byte
	MRConfigID     [48]byte
	MROwner        [48]byte
	MROwnerConfig  [48]byte
	RTMR           [4][48]byte
	ReportData     [64]byte
	TEETCBSVN2     [16]byte
	MRServiceTD    [48]byte
}

// Debug reports whether the TD runs in debug mode (TDATTRIBUTES bit 0),
// in which the host can read and alter its memory.
func (r *TDReport) Debug() bool { return r.TDAttributes[0]&0x01 != 0 }

// QEReport is the SGX report body of the Quoting Enclave.
type QEReport struct {
	CPUSVN     [16]byte
	MiscSelect uint32
	Attributes [16]byte
	MREnclave  [32]byte
	MRSigner   [32]byte
	ISVProdID  uint16
	ISVSVN     uint16
	ReportData [64]byte
}

// Quote is a parsed TDX quote. Byte slices alias the input.
type Quote struct {
	Raw    []byte
	Header Header
	// BodyType is the v5 body descriptor's type; BodyTypeTD10 for v4.
	BodyType uint16
	// BodyOffset is where the TD report starts: 48 (v4) or 54 (v5).
	BodyOffset int
	Body       TDReport
	// Signed is the region the attestation key signs: header and body
	// (with the v5 descriptor).
	Signed []byte

	Signature         [SignatureSize]byte // r ‖ s, big-endian
	AttestationKey    [PublicKeySize]byte // P-256 x ‖ y
	QEReportRaw       []byte              // the 384 bytes the PCK key signs
	QEReport          QEReport
	QEReportSignature [SignatureSize]byte
	QEAuthData        []byte
	PCKChainPEM       []byte
	// Extra holds the bytes after the signature data: genuine quotes
	// carry zero padding there. It is not covered by any signature.
	Extra []byte
}

// reader walks the quote with strict bounds: every read names its field so
// that a refusal says where the bytes ran out.
type reader struct {
	b   []byte
	off int
	end int
}

func (r *reader) take(field string, n int) ([]byte, error) {
	if n < 0 || r.end-r.off < n {
		return nil, malformed(field, r.off, n, max(r.end-r.off, 0))
	}
	s := r.b[r.off : r.off+n : r.off+n]
	r.off += n
	return s, nil
}

func (r *reader) u16(field string) (uint16, error) {
	s, err := r.take(field, 2)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(s), nil
}

func (r *reader) u32(field string) (uint32, error) {
	s, err := r.take(field, 4)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(s), nil
}

func (r *reader) into(field string, dst []byte) error {
	s, err := r.take(field, len(dst))
	if err != nil {
		return err
	}
	copy(dst, s)
	return nil
}

// ParseQuote parses a TDX quote of version 4 or 5 with an ECDSA-P256
// attestation key and QE report certification data. It checks structure
// only; Verify checks the signatures.
func ParseQuote(b []byte) (*Quote, error) {
	q := &Quote{Raw: b}
	r := &reader{b: b, end: len(b)}
	h := &q.Header
	var err error
	if h.Version, err = r.u16("header.version"); err != nil {
		return nil, err
	}
	if h.Version != 4 && h.Version != 5 {
		return nil, unsupported("header.version", 0, "4 or 5", fmt.Sprint(h.Version))
	}
	if h.AttestationKeyType, err = r.u16("header.att_key_type"); err != nil {
		return nil, err
	}
	if h.AttestationKeyType != AttKeyECDSA256 {
		return nil, unsupported("header.att_key_type", 2, "2 (ECDSA-256-with-P-256)", fmt.Sprint(h.AttestationKeyType))
	}
	if h.TEEType, err = r.u32("header.tee_type"); err != nil {
		return nil, err
	}
	if h.TEEType != TEETypeTDX {
		return nil, unsupported("header.tee_type", 4, "0x81 (TDX)", fmt.Sprintf("%#x", h.TEEType))
	}
	if h.QESVN, err = r.u16("header.qe_svn"); err != nil {
		return nil, err
	}
	if h.PCESVN, err = r.u16("header.pce_svn"); err != nil {
		return nil, err
	}
	if err = r.into("header.qe_vendor_id", h.QEVendorID[:]); err != nil {
		return nil, err
	}
	if err = r.into("header.user_data", h.UserData[:]); err != nil {
		return nil, err
	}

	bodySize := BodySizeV4
	q.BodyType = BodyTypeTD10
	if h.Version == 5 {
		if q.BodyType, err = r.u16("body_descriptor.type"); err != nil {
			return nil, err
		}
		off := r.off
		size, err := r.u32("body_descriptor.size")
		if err != nil {
			return nil, err
		}
		switch q.BodyType {
		case BodyTypeTD10:
			bodySize = BodySizeV4
		case BodyTypeTD15:
			bodySize = BodySizeTD15
		default:
			return nil, unsupported("body_descriptor.type", off-2, "2 (TD 1.0) or 3 (TD 1.5)", fmt.Sprint(q.BodyType))
		}
		if int64(size) != int64(bodySize) {
			return nil, failure.New(ClassMalformed, "TDX quote is malformed: body_descriptor.size").
				WithEvidence("field body_descriptor.size at offset %d: expected %d for body type %d, got %d", off, bodySize, q.BodyType, size).
				WithFix(fixMalformed)
		}
	}
	q.BodyOffset = r.off
	if err := parseBody(r, &q.Body, q.BodyType); err != nil {
		return nil, err
	}
	q.Signed = b[:r.off:r.off]

	sigLen, err := r.u32("signature_data_len")
	if err != nil {
		return nil, err
	}
	if int64(sigLen) > int64(len(b)-r.off) {
		return nil, malformed("signature_data", r.off, int(min(int64(sigLen), 1<<31-1)), len(b)-r.off)
	}
	sig := &reader{b: b, off: r.off, end: r.off + int(sigLen)}
	q.Extra = b[sig.end:len(b):len(b)]
	if err := parseSignatureData(sig, q); err != nil {
		return nil, err
	}
	if sig.off != sig.end {
		return nil, failure.New(ClassMalformed, "TDX quote is malformed: signature_data").
			WithEvidence("signature_data_len says %d bytes, its contents end %d bytes earlier (offset %d)", sigLen, sig.end-sig.off, sig.off).
			WithFix(fixMalformed)
	}
	return q, nil
}

func unsupported(field string, offset int, want, got string) *failure.Error {
	return failure.New(ClassUnsupported, "TDX quote kind is not supported: %s", field).
		WithEvidence("field %s at offset %d: expected %s, got %s", field, offset, want, got).
		WithFix("present an Intel TDX quote (version 4 or 5, ECDSA-P256 attestation key)")
}

func parseBody(r *reader, t *TDReport, bodyType uint16) error {
	fields := []struct {
		name string
		dst  []byte
	}{
		{"body.tee_tcb_svn", t.TEETCBSVN[:]},
		{"body.mr_seam", t.MRSEAM[:]},
		{"body.mr_signer_seam", t.MRSignerSEAM[:]},
		{"body.seam_attributes", t.SEAMAttributes[:]},
		{"body.td_attributes", t.TDAttributes[:]},
		{"body.xfam", t.XFAM[:]},
		{"body.mrtd", t.MRTD[:]},
		{"body.mr_config_id", t.MRConfigID[:]},
		{"body.mr_owner", t.MROwner[:]},
		{"body.mr_owner_config", t.MROwnerConfig[:]},
		{"body.rtmr0", t.RTMR[0][:]},
		{"body.rtmr1", t.RTMR[1][:]},
		{"body.rtmr2", t.RTMR[2][:]},
		{"body.rtmr3", t.RTMR[3][:]},
		{"body.report_data", t.ReportData[:]},
	}
	if bodyType == BodyTypeTD15 {
		fields = append(fields, struct {
			name string
			dst  []byte
		}{"body.tee_tcb_svn2", t.TEETCBSVN2[:]}, struct {
			name string
			dst  []byte
		}{"body.mr_service_td", t.MRServiceTD[:]})
	}
	for _, f := range fields {
		if err := r.into(f.name, f.dst); err != nil {
			return err
		}
	}
	return nil
}

func parseSignatureData(r *reader, q *Quote) error {
	if err := r.into("signature_data.signature", q.Signature[:]); err != nil {
		return err
	}
	if err := r.into("signature_data.attestation_key", q.AttestationKey[:]); err != nil {
		return err
	}
	typeOff := r.off
	ct, err := r.u16("signature_data.cert_data_type")
	if err != nil {
		return err
	}
	if ct != CertDataQEReport {
		return unsupported("signature_data.cert_data_type", typeOff, "6 (QE report certification data)", fmt.Sprint(ct))
	}
	size, err := r.u32("signature_data.cert_data_size")
	if err != nil {
		return err
	}
	qe := &reader{b: r.b, off: r.off}
	if int64(size) > int64(r.end-r.off) {
		return malformed("signature_data.cert_data", r.off, int(min(int64(size), 1<<31-1)), r.end-r.off)
	}
	qe.end = r.off + int(size)
	r.off = qe.end

	if q.QEReportRaw, err = qe.take("qe_cert_data.qe_report", QEReportSize); err != nil {
		return err
	}
	parseQEReport(q.QEReportRaw, &q.QEReport)
	if err := qe.into("qe_cert_data.qe_report_signature", q.QEReportSignature[:]); err != nil {
		return err
	}
	authLen, err := qe.u16("qe_cert_data.qe_auth_data_size")
	if err != nil {
		return err
	}
	if q.QEAuthData, err = qe.take("qe_cert_data.qe_auth_data", int(authLen)); err != nil {
		return err
	}
	typeOff = qe.off
	ct, err = qe.u16("qe_cert_data.cert_data_type")
	if err != nil {
		return err
	}
	if ct != CertDataPCKChain {
		return unsupported("qe_cert_data.cert_data_type", typeOff, "5 (PEM PCK certificate chain)", fmt.Sprint(ct))
	}
	pckLen, err := qe.u32("qe_cert_data.cert_data_size")
	if err != nil {
		return err
	}
	if int64(pckLen) > int64(qe.end-qe.off) {
		return malformed("qe_cert_data.pck_chain", qe.off, int(min(int64(pckLen), 1<<31-1)), qe.end-qe.off)
	}
	q.PCKChainPEM, _ = qe.take("qe_cert_data.pck_chain", int(pckLen))
	if qe.off != qe.end {
		return failure.New(ClassMalformed, "TDX quote is malformed: signature_data.cert_data").
			WithEvidence("cert_data_size says %d bytes, its contents end %d bytes earlier (offset %d)", size, qe.end-qe.off, qe.off).
			WithFix(fixMalformed)
	}
	return nil
}

// parseQEReport decodes the 384-byte SGX report body; b has exactly that size.
func parseQEReport(b []byte, e *QEReport) {
	copy(e.CPUSVN[:], b[0:16])
	e.MiscSelect = binary.LittleEndian.Uint32(b[16:20])
	copy(e.Attributes[:], b[48:64])
	copy(e.MREnclave[:], b[64:96])
	copy(e.MRSigner[:], b[128:160])
	e.ISVProdID = binary.LittleEndian.Uint16(b[256:258])
	e.ISVSVN = binary.LittleEndian.Uint16(b[258:260])
	copy(e.ReportData[:], b[320:384])
}
