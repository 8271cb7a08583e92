package ratls

import (
	"bytes"
	"compress/gzip"
	"crypto/x509"
	"encoding/asn1"
	"io"
	"strings"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/pgtrust/pgtrust/failure"
)

// dstack's RA-TLS certificate extensions (dstack ra-tls/src/oids.rs), under
// Phala's private enterprise number 62397.
const (
	OIDQuote = "1.3.6.1.4.1.62397.1.1" // OIDRawQuote as dotted text
)

var (
	// OIDRawQuote: the raw TDX quote (legacy; superseded by OIDAttestation).
	OIDRawQuote = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 62397, 1, 1}
	// OIDEventLog: the JSON event log that goes with OIDRawQuote, possibly
	// gzip-compressed behind the magic "ELGZv1".
	OIDEventLog = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 62397, 1, 2}
	// OIDAppID: the application id.
	OIDAppID = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 62397, 1, 3}
	// OIDCertUsage: dstack's special certificate usage (text).
	OIDCertUsage = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 62397, 1, 4}
	// OIDAttestation: VersionedAttestation (SCALE V0 or msgpack V1).
	OIDAttestation = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 62397, 1, 8}
	// OIDAppInfo: the application info (msgpack).
	OIDAppInfo = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 62397, 1, 9}
)

const (
	// eventLogGzipMagic prefixes a gzip-compressed event log (dstack
	// EVENTLOG_GZIP_MAGIC).
	eventLogGzipMagic = "ELGZv1"
	// MaxEventLogExtension caps a compressed event log after decompression
	// (dstack MAX_EVENTLOG_EXT_SIZE), against decompression bombs.
	MaxEventLogExtension = 16 * 1024
)

const fixNoEvidence = "the server is not presenting an RA-TLS certificate: check that host and port reach the attested server " +
	"(not a proxy or load balancer that terminates TLS) and that sslmode negotiates TLS with it"

// ParseCertificateEvidence extracts the attestation evidence from a dstack
// RA-TLS certificate. Each extension value is one DER OCTET STRING around
// its payload. The versioned attestation (.1.8) is read first, as dstack
// and TeeSQL do: a payload starting 0x00 is SCALE V0; a msgpack map is V1,
// refused as unsupported (no V1 sample exists to test a decoder against).
// Without .1.8, the legacy raw quote (.1.1) and its JSON event log (.1.2,
// required with it) are read. The app id (.1.3) and app info (.1.9) are
// returned raw. It does not verify anything: the quote, the key binding
// and the event-log replay are the verifier's checks.
func ParseCertificateEvidence(cert *x509.Certificate) (*Evidence, error) {
	if cert == nil {
		return nil, failure.New(ClassNoEvidence, "no certificate to read attestation from").
			WithEvidence("the certificate is nil: the server presented none").
			WithFix(fixNoEvidence)
	}
	ext := map[string][]byte{}
	for _, x := range cert.Extensions {
		for _, oid := range []asn1.ObjectIdentifier{OIDRawQuote, OIDEventLog, OIDAppID, OIDCertUsage, OIDAttestation, OIDAppInfo} {
			if !x.Id.Equal(oid) {
				continue
			}
			k := oid.String()
			if _, dup := ext[k]; dup {
				return nil, failure.New(ClassExtension, "the certificate carries extension %s twice", k).
					WithEvidence("extension %s appears more than once", k).
					WithFix("the certificate is not a well-formed RA-TLS certificate; reissue it")
			}
			v, err := unwrapOctetString(k, x.Value)
			if err != nil {
				return nil, err
			}
			ext[k] = v
		}
	}
	var e *Evidence
	if v, ok := ext[OIDAttestation.String()]; ok {
		var err error
		if e, err = parseVersionedAttestation(v); err != nil {
			return nil, err
		}
	} else if q, ok := ext[OIDRawQuote.String()]; ok {
		raw, ok := ext[OIDEventLog.String()]
		if !ok {
			return nil, failure.New(ClassExtension, "the certificate has a quote (%s) but no event log (%s)", OIDRawQuote, OIDEventLog).
				WithEvidence("extension %s present, %s absent", OIDRawQuote, OIDEventLog).
				WithFix("reissue the certificate with its event log; without it the RTMRs cannot be explained")
		}
		log, err := eventLogExtension(raw)
		if err != nil {
			return nil, err
		}
		events, err := ParseEventLogJSON(log)
		if err != nil {
			return nil, err
		}
		e = &Evidence{Format: "legacy", Quote: q, EventLog: events}
	} else {
		var present []string
		for _, x := range cert.Extensions {
			present = append(present, x.Id.String())
		}
		return nil, failure.New(ClassNoEvidence, "the certificate carries no attestation").
			WithEvidence("certificate %q has neither %s nor %s; its extensions: %s",
				cert.Subject.String(), OIDAttestation, OIDRawQuote, strings.Join(present, ", ")).
			WithFix(fixNoEvidence)
	}
	e.AppID = ext[OIDAppID.String()]
	e.AppInfo = ext[OIDAppInfo.String()]
	return e, nil
}

// unwrapOctetString returns the content of the single DER OCTET STRING
// that is an extension's value, refusing anything else (no trailing bytes).
func unwrapOctetString(oid string, v []byte) ([]byte, error) {
	s := cryptobyte.String(v)
	var out cryptobyte.String
	if !s.ReadASN1(&out, cbasn1.OCTET_STRING) || !s.Empty() {
		n := len(v)
		if n > 8 {
			n = 8
		}
		return nil, failure.New(ClassExtension, "extension %s is not one DER OCTET STRING", oid).
			WithEvidence("extension %s: %d bytes starting %x", oid, len(v), v[:n]).
			WithFix("the certificate is not a well-formed RA-TLS certificate; reissue it")
	}
	return bytes.Clone(out), nil
}

func parseVersionedAttestation(v []byte) (*Evidence, error) {
	if len(v) == 0 {
		return nil, failure.New(ClassExtension, "the attestation extension %s is empty", OIDAttestation).
			WithEvidence("extension %s holds 0 bytes", OIDAttestation).
			WithFix(fixEnvelope)
	}
	switch b := v[0]; {
	case b == v0Variant:
		return ParseAttestationV0(v)
	case b >= 0x80 && b <= 0x8f || b == 0xde || b == 0xdf: // msgpack fixmap, map16, map32
		return nil, failure.New(ClassUnsupported, "the certificate carries a V1 (msgpack) dstack attestation, which pgtrust does not decode").
			WithEvidence("extension %s starts with 0x%02x, a msgpack map (VersionedAttestation V1)", OIDAttestation, b).
			WithFix("configure the dstack issuer to write the V0 (SCALE) attestation, or the legacy %s/%s extensions", OIDRawQuote, OIDEventLog)
	default:
		return nil, failure.New(ClassExtension, "the attestation extension %s has an unknown format", OIDAttestation).
			WithEvidence("first byte 0x%02x: neither 0x00 (SCALE V0) nor a msgpack map (V1)", b).
			WithFix(fixEnvelope)
	}
}

// eventLogExtension undoes the optional ELGZv1 gzip wrapping of .1.2,
// refusing more than MaxEventLogExtension decompressed bytes.
func eventLogExtension(v []byte) ([]byte, error) {
	if !bytes.HasPrefix(v, []byte(eventLogGzipMagic)) {
		return v, nil
	}
	bad := func(why string) *failure.Error {
		return failure.New(ClassEventLog, "the compressed event log (%s) cannot be read", OIDEventLog).
			WithEvidence("%s", why).
			WithFix(fixEventLog)
	}
	zr, err := gzip.NewReader(bytes.NewReader(v[len(eventLogGzipMagic):]))
	if err != nil {
		return nil, bad(err.Error())
	}
	out, err := io.ReadAll(io.LimitReader(zr, MaxEventLogExtension+1))
	if err != nil {
		return nil, bad(err.Error())
	}
	if len(out) > MaxEventLogExtension {
		return nil, failure.New(ClassEventLog, "the compressed event log (%s) is too large", OIDEventLog).
			WithEvidence("more than %d bytes after decompression", MaxEventLogExtension).
			WithFix("dstack caps the certificate's event log at %d bytes; a larger one is refused as a decompression bomb", MaxEventLogExtension)
	}
	// Reading to EOF also checks the gzip trailer (CRC and size).
	if _, err := zr.Read(make([]byte, 1)); err != io.EOF {
		return nil, bad("gzip: the stream does not end cleanly")
	}
	return out, nil
}
