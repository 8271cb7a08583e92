package ratls_test

import (
	"bytes"
	"compress/gzip"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/ratls"
)

// octet wraps a payload in one DER OCTET STRING, as dstack's add_ext does.
func octet(t testing.TB, payload []byte) []byte {
	t.Helper()
	b, err := asn1.Marshal(payload)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func ext(t testing.TB, oid asn1.ObjectIdentifier, payload []byte) pkix.Extension {
	return pkix.Extension{Id: oid, Value: octet(t, payload)}
}

// certWith signs a real certificate carrying exts and parses it back, so
// the extensions go through crypto/x509's DER parser.
func certWith(t testing.TB, exts ...pkix.Extension) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ratls test"},
		NotBefore: time.Unix(0, 0), NotAfter: time.Unix(1<<31, 0), ExtraExtensions: exts}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func gzipELGZ(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	buf.WriteString("ELGZv1")
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestCertificateV0: the genuine dstack envelope in extension .1.8 gives
// the same evidence as ParseAttestationV0, with app id and app info raw.
func TestCertificateV0(t *testing.T) {
	raw := readTestdata(t, simName)
	want, err := ratls.ParseAttestationV0(raw)
	if err != nil {
		t.Fatal(failureDetail(err))
	}
	appID := []byte{0x5b, 0xb4, 0xff, 0x9a}
	appInfo := []byte{0x81, 0xa1, 'k', 0x01}
	c := certWith(t, ext(t, ratls.OIDAttestation, raw), ext(t, ratls.OIDAppID, appID),
		ext(t, ratls.OIDAppInfo, appInfo), ext(t, ratls.OIDCertUsage, []byte("ra-tls")))
	got, err := ratls.ParseCertificateEvidence(c)
	if err != nil {
		t.Fatalf("ParseCertificateEvidence: %s", failureDetail(err))
	}
	if !bytes.Equal(got.AppID, appID) || !bytes.Equal(got.AppInfo, appInfo) {
		t.Errorf("app id %x app info %x", got.AppID, got.AppInfo)
	}
	got.AppID, got.AppInfo = nil, nil
	if !reflect.DeepEqual(got, want) {
		t.Error("certificate evidence differs from the envelope's")
	}
	// .1.8 wins over legacy extensions present beside it.
	quote, log := loadDstackJSON(t, reportName)
	c = certWith(t, ext(t, ratls.OIDRawQuote, quote), ext(t, ratls.OIDEventLog, log), ext(t, ratls.OIDAttestation, raw))
	if got, err = ratls.ParseCertificateEvidence(c); err != nil || got.Format != "v0" || !bytes.Equal(got.Quote, want.Quote) {
		t.Errorf("with legacy extensions too: %v", err)
	}
}

// TestCertificateLegacy: .1.1 and .1.2 (plain or ELGZv1 gzip) give the
// quote and an event log that replays to the quote's RTMRs.
func TestCertificateLegacy(t *testing.T) {
	quote, log := loadDstackJSON(t, reportName)
	for name, logExt := range map[string][]byte{"plain": log, "gzip": gzipELGZ(t, log)} {
		t.Run(name, func(t *testing.T) {
			e, err := ratls.ParseCertificateEvidence(certWith(t, ext(t, ratls.OIDRawQuote, quote), ext(t, ratls.OIDEventLog, logExt)))
			if err != nil {
				t.Fatalf("ParseCertificateEvidence: %s", failureDetail(err))
			}
			if e.Format != "legacy" || !bytes.Equal(e.Quote, quote) || e.ReportData != nil || e.AppID != nil {
				t.Errorf("format %q, quote %d bytes", e.Format, len(e.Quote))
			}
			rtmr, err := ratls.ReplayRTMRs(e.EventLog)
			if err != nil {
				t.Fatal(failureDetail(err))
			}
			if rtmr != quoteRTMRs(t, quote) {
				t.Error("legacy event log does not replay to the quote's RTMRs")
			}
		})
	}
}

// TestEventLogCap: a gzip event log of exactly 16384 bytes after
// decompression is read; one byte more is refused as a bomb.
func TestEventLogCap(t *testing.T) {
	quote, log := loadDstackJSON(t, reportName)
	pad := func(n int) []byte { return append(bytes.Clone(log), bytes.Repeat([]byte(" "), n-len(log))...) }
	c := certWith(t, ext(t, ratls.OIDRawQuote, quote), ext(t, ratls.OIDEventLog, gzipELGZ(t, pad(16384))))
	if _, err := ratls.ParseCertificateEvidence(c); err != nil {
		t.Fatalf("16384-byte log refused: %s", failureDetail(err))
	}
	c = certWith(t, ext(t, ratls.OIDRawQuote, quote), ext(t, ratls.OIDEventLog, gzipELGZ(t, pad(16385))))
	_, err := ratls.ParseCertificateEvidence(c)
	fe := wantClass(t, err, ratls.ClassEventLog)
	if !strings.Contains(fe.Evidence, "16384") {
		t.Errorf("evidence %q", fe.Evidence)
	}
	// A bomb: 10 MB of zeros compress to ~10 KB; refused after 16 KiB.
	bomb := gzipELGZ(t, make([]byte, 10<<20))
	_, err = ratls.ParseCertificateEvidence(certWith(t, ext(t, ratls.OIDRawQuote, quote), ext(t, ratls.OIDEventLog, bomb)))
	wantClass(t, err, ratls.ClassEventLog)
	// Corrupt gzip: a flipped CRC byte.
	z := gzipELGZ(t, log)
	z[len(z)-6] ^= 1
	_, err = ratls.ParseCertificateEvidence(certWith(t, ext(t, ratls.OIDRawQuote, quote), ext(t, ratls.OIDEventLog, z)))
	wantClass(t, err, ratls.ClassEventLog)
}

// TestCertificateNoEvidence: an ordinary certificate is refused with the
// no-evidence class and a fix that points at the connection.
func TestCertificateNoEvidence(t *testing.T) {
	_, err := ratls.ParseCertificateEvidence(certWith(t, ext(t, ratls.OIDAppID, []byte{1})))
	fe := wantClass(t, err, ratls.ClassNoEvidence)
	if !strings.Contains(fe.Fix, "not presenting an RA-TLS certificate") || !strings.Contains(fe.Fix, "sslmode") {
		t.Errorf("fix %q", fe.Fix)
	}
	if !strings.Contains(fe.Evidence, "1.3.6.1.4.1.62397.1.3") {
		t.Errorf("evidence does not list the extensions present: %q", fe.Evidence)
	}
	_, err = ratls.ParseCertificateEvidence(nil)
	wantClass(t, err, ratls.ClassNoEvidence)
}

// TestCertificateRefusals: malformed extensions.
func TestCertificateRefusals(t *testing.T) {
	raw := readTestdata(t, simName)
	quote, log := loadDstackJSON(t, reportName)
	wrapped := octet(t, raw)
	for name, c := range map[string]struct {
		exts  []pkix.Extension
		class failure.Class
	}{
		"quote without event log": {[]pkix.Extension{ext(t, ratls.OIDRawQuote, quote)}, ratls.ClassExtension},
		"not an OCTET STRING":     {[]pkix.Extension{{Id: ratls.OIDAttestation, Value: raw}}, ratls.ClassExtension},
		"UTF8String wrapping":     {[]pkix.Extension{{Id: ratls.OIDAttestation, Value: append([]byte{0x0c}, wrapped[1:]...)}}, ratls.ClassExtension},
		"trailing byte after DER": {[]pkix.Extension{{Id: ratls.OIDAttestation, Value: append(bytes.Clone(wrapped), 0)}}, ratls.ClassExtension},
		"non-minimal DER length":  {[]pkix.Extension{{Id: ratls.OIDAppID, Value: []byte{0x04, 0x81, 0x01, 0xaa}}, ext(t, ratls.OIDAttestation, raw)}, ratls.ClassExtension},
		"empty .1.8":              {[]pkix.Extension{ext(t, ratls.OIDAttestation, nil)}, ratls.ClassExtension},
		"V1 msgpack fixmap":       {[]pkix.Extension{ext(t, ratls.OIDAttestation, []byte{0x83, 0xa1, 'v'})}, ratls.ClassUnsupported},
		"V1 msgpack map16":        {[]pkix.Extension{ext(t, ratls.OIDAttestation, []byte{0xde, 0, 3})}, ratls.ClassUnsupported},
		"unknown .1.8 format":     {[]pkix.Extension{ext(t, ratls.OIDAttestation, []byte{0x7b, '}'})}, ratls.ClassExtension},
		"V0 with trailing byte":   {[]pkix.Extension{ext(t, ratls.OIDAttestation, append(bytes.Clone(raw), 0))}, ratls.ClassExtension},
		"event log not JSON":      {[]pkix.Extension{ext(t, ratls.OIDRawQuote, quote), ext(t, ratls.OIDEventLog, log[1:])}, ratls.ClassEventLog},
		"gzip magic, no gzip":     {[]pkix.Extension{ext(t, ratls.OIDRawQuote, quote), ext(t, ratls.OIDEventLog, append([]byte("ELGZv1"), log...))}, ratls.ClassEventLog},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ratls.ParseCertificateEvidence(certWith(t, c.exts...))
			wantClass(t, err, c.class)
		})
	}
	// crypto/x509 refuses duplicate extensions when parsing DER, so this
	// case is built as a struct, as a caller's own parser might hand it.
	dup := &x509.Certificate{Extensions: []pkix.Extension{ext(t, ratls.OIDAttestation, raw), ext(t, ratls.OIDAttestation, raw)}}
	_, err := ratls.ParseCertificateEvidence(dup)
	wantClass(t, err, ratls.ClassExtension)
}

// TestOIDs pins the OIDs to dstack's ra-tls/src/oids.rs.
func TestOIDs(t *testing.T) {
	for oid, want := range map[string]string{
		ratls.OIDRawQuote.String(): "1.3.6.1.4.1.62397.1.1", ratls.OIDEventLog.String(): "1.3.6.1.4.1.62397.1.2",
		ratls.OIDAppID.String(): "1.3.6.1.4.1.62397.1.3", ratls.OIDCertUsage.String(): "1.3.6.1.4.1.62397.1.4",
		ratls.OIDAttestation.String(): "1.3.6.1.4.1.62397.1.8", ratls.OIDAppInfo.String(): "1.3.6.1.4.1.62397.1.9",
		ratls.OIDQuote: "1.3.6.1.4.1.62397.1.1",
	} {
		if oid != want {
			t.Errorf("OID %s, want %s", oid, want)
		}
	}
}
