package ratls

import (
	"crypto/x509"
	"encoding/asn1"
	"fmt"

	"github.com/pgtrust/pgtrust/failure"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// PCKInfo is the SGX extension (1.2.840.113741.1.13.1) of a PCK leaf.
type PCKInfo struct {
	FMSPC            [6]byte
	PCEID            [2]byte
	PCESVN           uint16
	CPUSVN           [16]byte
	SGXTCBComponents [16]byte
}

// OIDSGXExtension is Intel's SGX extension of PCK certificates.
var OIDSGXExtension = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1}

// Sub-arcs of the SGX extension (Intel SGX PCK Certificate and CRL
// Profile, section "Intel SGX PCK Certificate extensions").
const (
	sgxPPID   = 1
	sgxTCB    = 2
	sgxPCEID  = 3
	sgxFMSPC  = 4
	sgxType   = 5
	tcbPCESVN = 17
	tcbCPUSVN = 18
)

const fixPCKExtension = "the quote's PCK certificate is not a genuine Intel SGX PCK certificate (or was altered): obtain fresh evidence from the attested server"

// ParsePCKInfo parses the SGX extension of a PCK leaf strictly: DER only,
// every mandatory field (PPID, TCB with its 18 entries, PCE ID, FMSPC, SGX
// type) exactly once with its exact size; unknown fields after them are
// tolerated (Intel adds platform-CA fields .6 and .7).
func ParsePCKInfo(cert *x509.Certificate) (*PCKInfo, error) {
	if cert == nil {
		return nil, failure.New(ClassPCKExtension, "no PCK certificate to read the SGX extension from").
			WithEvidence("PCK leaf certificate is nil").WithFix(fixPCKExtension)
	}
	var value []byte
	found := false
	for _, e := range cert.Extensions {
		if e.Id.Equal(OIDSGXExtension) {
			value, found = e.Value, true
		}
	}
	if !found {
		return nil, failure.New(ClassPCKExtension, "PCK certificate has no SGX extension").
			WithEvidence("certificate %q serial %x has no extension %s", cert.Subject.CommonName, cert.SerialNumber, OIDSGXExtension).
			WithFix(fixPCKExtension)
	}
	info, field, err := parseSGXExtension(value)
	if err != nil {
		return nil, failure.New(ClassPCKExtension, "PCK certificate's SGX extension is malformed").
			WithEvidence("certificate %q serial %x, extension %s, field %s: %v", cert.Subject.CommonName, cert.SerialNumber, OIDSGXExtension, field, err).
			WithFix(fixPCKExtension)
	}
	return info, nil
}

// parseSGXExtension decodes the extension value; on error it names the
// field that failed.
func parseSGXExtension(b []byte) (*PCKInfo, string, error) {
	in := cryptobyte.String(b)
	var seq cryptobyte.String
	if !in.ReadASN1(&seq, cbasn1.SEQUENCE) || !in.Empty() {
		return nil, "SEQUENCE", fmt.Errorf("not one DER SEQUENCE")
	}
	info := &PCKInfo{}
	seen := map[int]bool{}
	for !seq.Empty() {
		var item cryptobyte.String
		var oid asn1.ObjectIdentifier
		if !seq.ReadASN1(&item, cbasn1.SEQUENCE) || !item.ReadASN1ObjectIdentifier(&oid) {
			return nil, "entry", fmt.Errorf("entry is not SEQUENCE { OID, value }")
		}
		if len(oid) != len(OIDSGXExtension)+1 || !oidHasPrefix(oid, OIDSGXExtension) {
			return nil, oid.String(), fmt.Errorf("entry outside the SGX extension's arc")
		}
		n := oid[len(oid)-1]
		if seen[n] {
			return nil, oid.String(), fmt.Errorf("entry appears twice")
		}
		seen[n] = true
		var err error
		switch n {
		case sgxPPID:
			_, err = readOctets(&item, 16)
		case sgxTCB:
			err = parseTCBEntry(&item, info)
		case sgxPCEID:
			var v []byte
			if v, err = readOctets(&item, 2); err == nil {
				copy(info.PCEID[:], v)
			}
		case sgxFMSPC:
			var v []byte
			if v, err = readOctets(&item, 6); err == nil {
				copy(info.FMSPC[:], v)
			}
		case sgxType:
			var v cryptobyte.String
			if !item.ReadASN1(&v, cbasn1.ENUM) || len(v) == 0 {
				err = fmt.Errorf("not an ENUMERATED")
			}
		default:
			// Later Intel fields (platform instance ID, configuration)
			// do not enter the appraisal.
			item = nil
		}
		if err == nil && !item.Empty() {
			err = fmt.Errorf("%d unexpected bytes after the value", len(item))
		}
		if err != nil {
			return nil, oid.String(), err
		}
	}
	for _, n := range []int{sgxPPID, sgxTCB, sgxPCEID, sgxFMSPC, sgxType} {
		if !seen[n] {
			return nil, append(asn1.ObjectIdentifier{}, append(OIDSGXExtension, n)...).String(), fmt.Errorf("mandatory entry absent")
		}
	}
	return info, "", nil
}

func oidHasPrefix(oid, prefix asn1.ObjectIdentifier) bool {
	if len(oid) < len(prefix) {
		return false
	}
	for i := range prefix {
		if oid[i] != prefix[i] {
			return false
		}
	}
	return true
}

func readOctets(s *cryptobyte.String, size int) ([]byte, error) {
	var v cryptobyte.String
	if !s.ReadASN1(&v, cbasn1.OCTET_STRING) {
		return nil, fmt.Errorf("not an OCTET STRING")
	}
	if len(v) != size {
		return nil, fmt.Errorf("OCTET STRING of %d bytes, want %d", len(v), size)
	}
	return v, nil
}

// parseTCBEntry reads the TCB SEQUENCE: components .2.1-.2.16 (INTEGER
// 0..255), PCESVN .2.17 (INTEGER 0..65535) and CPUSVN .2.18 (16 octets),
// each exactly once.
func parseTCBEntry(s *cryptobyte.String, info *PCKInfo) error {
	var tcb cryptobyte.String
	if !s.ReadASN1(&tcb, cbasn1.SEQUENCE) {
		return fmt.Errorf("TCB is not a SEQUENCE")
	}
	prefix := append(append(asn1.ObjectIdentifier{}, OIDSGXExtension...), sgxTCB)
	seen := map[int]bool{}
	for !tcb.Empty() {
		var item cryptobyte.String
		var oid asn1.ObjectIdentifier
		if !tcb.ReadASN1(&item, cbasn1.SEQUENCE) || !item.ReadASN1ObjectIdentifier(&oid) {
			return fmt.Errorf("TCB entry is not SEQUENCE { OID, value }")
		}
		if len(oid) != len(prefix)+1 || !oidHasPrefix(oid, prefix) || oid[len(oid)-1] < 1 || oid[len(oid)-1] > tcbCPUSVN {
			return fmt.Errorf("TCB entry %s is not one of %s.1-18", oid, prefix)
		}
		n := oid[len(oid)-1]
		if seen[n] {
			return fmt.Errorf("TCB entry %s appears twice", oid)
		}
		seen[n] = true
		switch {
		case n == tcbCPUSVN:
			v, err := readOctets(&item, 16)
			if err != nil {
				return fmt.Errorf("CPUSVN %s: %v", oid, err)
			}
			copy(info.CPUSVN[:], v)
		default:
			var v int64
			if !item.ReadASN1Integer(&v) {
				return fmt.Errorf("TCB entry %s is not a DER INTEGER", oid)
			}
			limit := int64(255)
			if n == tcbPCESVN {
				limit = 65535
			}
			if v < 0 || v > limit {
				return fmt.Errorf("TCB entry %s = %d is outside 0..%d", oid, v, limit)
			}
			if n == tcbPCESVN {
				info.PCESVN = uint16(v)
			} else {
				info.SGXTCBComponents[n-1] = byte(v)
			}
		}
		if !item.Empty() {
			return fmt.Errorf("TCB entry %s has %d unexpected bytes after its value", oid, len(item))
		}
	}
	if len(seen) != tcbCPUSVN {
		return fmt.Errorf("TCB has %d of its 18 entries", len(seen))
	}
	return nil
}
