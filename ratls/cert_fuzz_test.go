package ratls_test

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"testing"

	"github.com/pgtrust/pgtrust/ratls"
)

// FuzzParseCertificateEvidence fuzzes the extension values themselves (the
// DER OCTET STRING wrapping and its payload), not whole certificates:
// crypto/x509's own parsing is not ours to fuzz and would slow every
// execution. kind picks the extension: even = .1.8, odd = .1.2 beside a
// fixed .1.1 quote (the legacy path, with ELGZv1 gzip).
func FuzzParseCertificateEvidence(f *testing.F) {
	quote, log := loadDstackJSON(f, reportName)
	f.Add(uint8(0), octet(f, readTestdata(f, simName)))
	f.Add(uint8(0), octet(f, liteAttestation(f)))
	f.Add(uint8(0), octet(f, []byte{0x83, 0xa1, 'v'}))
	f.Add(uint8(1), octet(f, log))
	f.Add(uint8(1), octet(f, gzipELGZ(f, log)))
	rawQuote := pkix.Extension{Id: ratls.OIDRawQuote, Value: octet(f, quote)}
	f.Fuzz(func(t *testing.T, kind uint8, value []byte) {
		c := &x509.Certificate{Extensions: []pkix.Extension{{Id: ratls.OIDAttestation, Value: value}}}
		if kind%2 == 1 {
			c.Extensions = []pkix.Extension{rawQuote, {Id: ratls.OIDEventLog, Value: value}}
		}
		e, err := ratls.ParseCertificateEvidence(c)
		if err != nil {
			wantEvidenceClass(t, err, ratls.ClassExtension, ratls.ClassEventLog, ratls.ClassUnsupported)
			return
		}
		if e.Quote == nil || (e.Format != "v0" && e.Format != "legacy") {
			t.Fatalf("accepted evidence without quote or format: %q", e.Format)
		}
	})
}
