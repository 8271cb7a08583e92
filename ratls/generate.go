package ratls

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"math/big"
	"net"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/pgtrust/pgtrust/failure"
)

// EventLogProvider is optionally implemented by a QuoteProvider that also
// has an event log (the one that explains its quotes' RTMRs).
type EventLogProvider interface {
	EventLog(ctx context.Context) ([]Event, error)
}

// CertificateOptions shape an RA-TLS certificate.
type CertificateOptions struct {
	DNSNames    []string
	IPAddresses []net.IP
	// NotBefore, NotAfter: zero means now-1m .. now+24h.
	NotBefore, NotAfter time.Time
	// AppID is written as extension .1.3 when set.
	AppID []byte
	// Legacy writes the raw quote (.1.1) and JSON event log (.1.2)
	// instead of the versioned attestation (.1.8).
	Legacy bool
	// Issuer signs the certificate (a KMS or CA key); nil = self-signed.
	Issuer *tls.Certificate
}

func issueFailed(format string, args ...any) *failure.Error {
	return failure.New(ClassIssue, "cannot issue the RA-TLS certificate: "+format, args...)
}

// NewCertificate makes a fresh ECDSA P-256 key, asks p for a quote whose
// report_data is KeyBinding of the key's DER SubjectPublicKeyInfo (the same
// bytes the certificate carries, checked after signing), and returns the
// certificate with the quote and, when p is an EventLogProvider, its event
// log: in the versioned attestation extension (.1.8, SCALE V0 with
// report_data and an empty vm_config) or, with opts.Legacy, in .1.1/.1.2.
// The provider's quote must carry exactly that report_data, and its event
// log must replay to the quote's RTMR3, else the certificate could never
// pass a verifier's key-binding or replay check; an event log the replay
// refuses is returned with ClassEventLog. The
// certificate is for TLS server authentication; the chain holds the
// issuer's chain after the leaf when opts.Issuer is set.
func NewCertificate(ctx context.Context, p QuoteProvider, opts CertificateOptions) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, issueFailed("key generation: %v", err).WithEvidence("crypto/rand failed").WithFix("check the system's entropy source")
	}
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, issueFailed("%v", err).WithEvidence("marshalling the P-256 public key").WithFix("report this as a bug")
	}
	binding := KeyBinding(spki)
	quote, err := p.Quote(ctx, binding)
	if err != nil {
		return nil, failure.Wrap(ClassIssue, err, "cannot issue the RA-TLS certificate: the quote provider failed").
			WithEvidence("quote requested for report_data %s", hex.EncodeToString(binding[:])).
			WithFix("check the quote provider (configfs-tsm on TDX hardware, or the simulator)")
	}
	q, err := ParseQuote(quote)
	if err != nil {
		return nil, failure.Wrap(ClassIssue, err, "cannot issue the RA-TLS certificate: the quote provider returned no TDX quote").
			WithEvidence("%d bytes from the provider", len(quote)).
			WithFix("check the quote provider")
	}
	if !bytes.Equal(q.Body.ReportData[:], binding[:]) {
		return nil, issueFailed("the provider's quote is not bound to the new key").
			WithEvidence("quote report_data %s, requested %s", hex.EncodeToString(q.Body.ReportData[:]), hex.EncodeToString(binding[:])).
			WithFix("the quote provider must put the requested report_data into the quote")
	}
	var events []Event
	if lp, ok := p.(EventLogProvider); ok {
		if events, err = lp.EventLog(ctx); err != nil {
			return nil, failure.Wrap(ClassIssue, err, "cannot issue the RA-TLS certificate: the event log provider failed").
				WithEvidence("reading the event log").
				WithFix("check the quote provider's event log")
		}
	}
	if len(events) > 0 {
		// A log that does not explain the quote's RTMR3 would make every
		// verifier refuse the certificate; say so here, at the source.
		// RTMR0-2 are not checked: a provider may log only RTMR3 (the
		// simulator does), and dstack's verifier replays only RTMR3.
		rtmr, err := ReplayRTMRs(events)
		if err != nil {
			return nil, err
		}
		if rtmr[3] != q.Body.RTMR[3] {
			return nil, issueFailed("the provider's event log does not replay to its quote's RTMR3").
				WithEvidence("RTMR3 replayed %s, quote %s", hex.EncodeToString(rtmr[3][:]), hex.EncodeToString(q.Body.RTMR[3][:])).
				WithFix("the provider's EventLog must return the events measured into the quoted RTMR3")
		}
	}
	exts, err := evidenceExtensions(quote, events, binding, opts)
	if err != nil {
		return nil, err
	}

	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "pgtrust RA-TLS"},
		DNSNames:              opts.DNSNames,
		IPAddresses:           opts.IPAddresses,
		NotBefore:             opts.NotBefore,
		NotAfter:              opts.NotAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		ExtraExtensions:       exts,
	}
	if len(opts.DNSNames) > 0 {
		tmpl.Subject.CommonName = opts.DNSNames[0]
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = now.Add(-time.Minute)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = now.Add(24 * time.Hour)
	}
	if !tmpl.NotAfter.After(tmpl.NotBefore) {
		return nil, issueFailed("the validity period is empty").
			WithEvidence("NotBefore %s, NotAfter %s", tmpl.NotBefore.Format(time.RFC3339), tmpl.NotAfter.Format(time.RFC3339)).
			WithFix("set NotAfter after NotBefore, or leave both zero")
	}
	if tmpl.SerialNumber, err = rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128)); err != nil {
		return nil, issueFailed("serial number: %v", err).WithEvidence("crypto/rand failed").WithFix("check the system's entropy source")
	}

	parent, signer := tmpl, crypto.Signer(key)
	var chain [][]byte
	if opts.Issuer != nil {
		if parent, signer, err = issuerOf(opts.Issuer); err != nil {
			return nil, err
		}
		chain = opts.Issuer.Certificate
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		return nil, issueFailed("signing: %v", err).
			WithEvidence("x509.CreateCertificate failed").
			WithFix("check that the issuer's key matches its certificate and may sign certificates")
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, issueFailed("parsing the new certificate: %v", err).WithEvidence("x509.ParseCertificate failed").WithFix("report this as a bug")
	}
	// The quote binds the SPKI computed before signing; the verifier hashes
	// the SPKI in the certificate. They must be the same bytes.
	if !bytes.Equal(leaf.RawSubjectPublicKeyInfo, spki) {
		return nil, issueFailed("the certificate's SubjectPublicKeyInfo differs from the bound one").
			WithEvidence("bound %x, certificate %x", spki, leaf.RawSubjectPublicKeyInfo).
			WithFix("report this as a bug")
	}
	return &tls.Certificate{Certificate: append([][]byte{der}, chain...), PrivateKey: key, Leaf: leaf}, nil
}

func issuerOf(c *tls.Certificate) (*x509.Certificate, crypto.Signer, error) {
	if len(c.Certificate) == 0 {
		return nil, nil, issueFailed("the issuer has no certificate").
			WithEvidence("CertificateOptions.Issuer.Certificate is empty").
			WithFix("load the issuer with tls.LoadX509KeyPair")
	}
	leaf := c.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return nil, nil, issueFailed("the issuer's certificate does not parse: %v", err).
				WithEvidence("CertificateOptions.Issuer.Certificate[0]").
				WithFix("load the issuer with tls.LoadX509KeyPair")
		}
	}
	signer, ok := c.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, nil, issueFailed("the issuer's private key cannot sign").
			WithEvidence("issuer %q has a private key of type %T", leaf.Subject.String(), c.PrivateKey).
			WithFix("load the issuer with tls.LoadX509KeyPair")
	}
	return leaf, signer, nil
}

// evidenceExtensions builds the attestation extensions, each value one DER
// OCTET STRING around the payload (dstack ra-tls add_ext).
func evidenceExtensions(quote []byte, events []Event, binding [64]byte, opts CertificateOptions) ([]pkix.Extension, error) {
	var exts []pkix.Extension
	add := func(oid asn1.ObjectIdentifier, payload []byte) {
		var b cryptobyte.Builder
		b.AddASN1(cbasn1.OCTET_STRING, func(b *cryptobyte.Builder) { b.AddBytes(payload) })
		exts = append(exts, pkix.Extension{Id: oid, Value: b.BytesOrPanic()})
	}
	if opts.Legacy {
		log, err := MarshalEventLogJSON(events)
		if err != nil {
			return nil, err
		}
		// No compression: the cap applies after decompression anyway, so a
		// larger log could not be read back by dstack either.
		if len(log) > MaxEventLogExtension {
			return nil, issueFailed("the event log is too large for extension %s", OIDEventLog).
				WithEvidence("%d bytes of JSON, at most %d", len(log), MaxEventLogExtension).
				WithFix("use the versioned attestation extension (leave Legacy unset)")
		}
		add(OIDRawQuote, quote)
		add(OIDEventLog, log)
	} else {
		e := &Evidence{Format: "v0", Quote: quote, EventLog: events, ReportData: binding[:]}
		v, err := e.MarshalV0()
		if err != nil {
			return nil, err
		}
		add(OIDAttestation, v)
	}
	if opts.AppID != nil {
		add(OIDAppID, opts.AppID)
	}
	return exts, nil
}
