package ratls

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/pgtrust/pgtrust/failure"
)

// SimulatorMarkerOID is the certificate policy that every certificate of
// the simulator's PCK chain carries (root, Platform CA, leaf). It is a
// UUID-derived OID (ITU-T X.667, arc 2.25, UUID
// 91b88b06-37b1-4829-9b7a-106a1a0b73b9) minted for pgtrust, so it needs no
// registration and collides with no Intel OID. IsSimulated looks for it on
// the chain's self-signed root.
const SimulatorMarkerOID = "2.25.193696261758323088710628916145678939065"

var simulatorMarker = func() x509.OID {
	oid, err := x509.ParseOID(SimulatorMarkerOID)
	if err != nil {
		panic("ratls: simulator marker OID: " + err.Error())
	}
	return oid
}()

// Names of the simulator's PCK chain. Each says it is not hardware
// evidence, so that a human reading any certificate of the chain knows.
const (
	SimulatorRootCN     = "pgtrust TDX simulator root - NOT hardware evidence"
	simulatorOrg        = "pgtrust TDX simulator - NOT hardware evidence"
	simulatorPlatformCN = "pgtrust TDX simulator PCK Platform CA - NOT hardware evidence"
	simulatorLeafCN     = "pgtrust TDX simulator PCK Certificate - NOT hardware evidence"
)

// Fixed, documented values of simulated evidence. Labels are hashed so
// that the values look like measurements yet are reproducible anywhere.
const (
	simulatorMRTDLabel    = "pgtrust TDX simulator MRTD v1"
	simulatorMRSEAMLabel  = "pgtrust TDX simulator MRSEAM v1"
	simulatorComposeLabel = "pgtrust TDX simulator app-compose v1"
	simulatorInstanceLbl  = "pgtrust TDX simulator instance v1"
)

// DefaultSimulatorMRTD is the simulator's MRTD when SimulatorOptions.MRTD
// is zero: SHA-384 of the ASCII label "pgtrust TDX simulator MRTD v1",
// 57e4d62c50e62de24df59dce24db2ac3731dd75f336fd41dc6639d516814e76d
// 4d66fe63b552785c863a6c1fe76e2a05. Allowlist it to accept simulated
// evidence.
func DefaultSimulatorMRTD() [48]byte { return sha512.Sum384([]byte(simulatorMRTDLabel)) }

// Simulated platform values, shaped like a genuine Platform-CA PCK of an
// Emerald Rapids part (README 3.2) but with an FMSPC no Intel part has:
// ASCII "pgsim" and a zero byte.
var (
	simulatorFMSPC        = [6]byte{'p', 'g', 's', 'i', 'm', 0}
	simulatorPCEID        = [2]byte{0, 0}
	simulatorCPUSVN       = [16]byte{3, 3, 2, 2, 4, 1, 0, 5}
	simulatorTEETCBSVN    = [16]byte{6, 1, 3}
	simulatorTDAttributes = [8]byte{0, 0, 0, 0x10} // bit 28 SEPT_VE_DISABLE, not debug
	simulatorXFAM         = [8]byte{0xe7, 0x02, 0x06}
)

const (
	simulatorPCESVN = 13
	simulatorQESVN  = 6
	simulatorQEProd = 2 // TDX quoting enclave
)

// SimulatorOptions sets the measurements of simulated quotes. Zero values
// take the documented defaults.
type SimulatorOptions struct {
	// MRTD; zero means DefaultSimulatorMRTD().
	MRTD [48]byte
	// RTMR holds RTMR0..2 as given (zero stays zero).
	RTMR [3][48]byte
	// Events are the RTMR3 events; RTMR3 is their replay from zero. Runtime
	// events (EventType RuntimeEventType) get their digest computed; other
	// events must carry a 48-byte digest. Every event must be in IMR 3.
	// nil means DefaultSimulatorEvents().
	Events []Event
	// TDAttributes; zero means 0000001000000000 (not debug,
	// SEPT_VE_DISABLE), as genuine production TDs.
	TDAttributes [8]byte
	// TEETCBSVN; zero means 06010300000000000000000000000000.
	TEETCBSVN [16]byte
}

// Simulator is a QuoteProvider that needs no TDX hardware: it signs
// structurally valid TDX v4 quotes with throwaway keys under a PCK chain of
// its own, whose root is marked (SimulatorMarkerOID) and named as the
// simulator. Verify refuses these quotes with ClassSimulator unless
// VerifyOptions.AllowSimulator is set. Safe for concurrent use.
type Simulator struct {
	header   [HeaderSize]byte
	body     [BodySizeV4]byte // report_data (last 64 bytes) set per quote
	attKey   *ecdsa.PrivateKey
	attPub   [PublicKeySize]byte
	certData []byte // type 6 certification data: signed QE report, auth data, PEM chain
	events   []Event
}

// DefaultSimulatorEvents is the RTMR3 log of a simulator built without
// Events: a dstack-style boot sequence. Payloads: app-id = first 20 bytes
// of the compose hash (as dstack derives it), compose-hash = SHA-256 of
// ASCII "pgtrust TDX simulator app-compose v1", instance-id = first 20
// bytes of SHA-256 of "pgtrust TDX simulator instance v1", key-provider =
// {"name":"none","id":""}; the marker events carry no payload.
func DefaultSimulatorEvents() []Event {
	compose := sha256.Sum256([]byte(simulatorComposeLabel))
	instance := sha256.Sum256([]byte(simulatorInstanceLbl))
	ev := func(name string, payload []byte) Event {
		d := RuntimeEventDigest(RuntimeEventType, name, payload)
		return Event{IMR: 3, EventType: RuntimeEventType, Digest: d[:], Event: name, Payload: payload}
	}
	return []Event{
		ev("system-preparing", []byte{}),
		ev("app-id", bytes.Clone(compose[:20])),
		ev("compose-hash", bytes.Clone(compose[:])),
		ev("instance-id", bytes.Clone(instance[:20])),
		ev("boot-mr-done", []byte{}),
		ev("key-provider", []byte(`{"name":"none","id":""}`)),
		ev("system-ready", []byte{}),
	}
}

// NewSimulator generates the throwaway keys and PCK chain and fixes the
// measurements. The root and Platform CA keys are dropped once they have
// signed; only the attestation key is kept.
func NewSimulator(opts SimulatorOptions) (*Simulator, error) {
	events := opts.Events
	if events == nil {
		events = DefaultSimulatorEvents()
	}
	events, rtmr3, err := simulatorReplay(events)
	if err != nil {
		return nil, err
	}
	s := &Simulator{events: events}

	h := s.header[:]
	binary.LittleEndian.PutUint16(h[0:], 4)
	binary.LittleEndian.PutUint16(h[2:], AttKeyECDSA256)
	binary.LittleEndian.PutUint32(h[4:], TEETypeTDX)
	// Bytes 8..12 (qe_svn, pce_svn in SGX quotes) stay zero, as in
	// genuine TDX quotes.
	copy(h[12:28], intelQEVendorID[:])
	// user_data is signed: a second, in-band hint for hex dumps.
	copy(h[28:48], "pgtrust-simulator")

	b := s.body[:]
	put := func(off int, v []byte) { copy(b[off-HeaderSize:], v) }
	tcb := opts.TEETCBSVN
	if tcb == [16]byte{} {
		tcb = simulatorTEETCBSVN
	}
	put(48, tcb[:])
	mrseam := sha512.Sum384([]byte(simulatorMRSEAMLabel))
	put(64, mrseam[:])
	// mr_signer_seam (112) and seam_attributes (160) stay zero: Intel's module.
	attrs := opts.TDAttributes
	if attrs == [8]byte{} {
		attrs = simulatorTDAttributes
	}
	put(168, attrs[:])
	put(176, simulatorXFAM[:])
	mrtd := opts.MRTD
	if mrtd == [48]byte{} {
		mrtd = DefaultSimulatorMRTD()
	}
	put(184, mrtd[:])
	// dstack sets mr_config_id to 0x01 ‖ compose hash.
	for _, e := range events {
		if e.EventType == RuntimeEventType && e.Event == "compose-hash" {
			cfg := append([]byte{1}, e.Payload...)
			put(232, cfg[:min(len(cfg), 48)])
			break
		}
	}
	for i := range 3 {
		put(376+48*i, opts.RTMR[i][:])
	}
	put(520, rtmr3[:])

	if s.attKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return nil, simulatorErr(err, "attestation key")
	}
	pub, err := s.attKey.PublicKey.Bytes() // 0x04 ‖ x ‖ y
	if err != nil {
		return nil, simulatorErr(err, "attestation key encoding")
	}
	copy(s.attPub[:], pub[1:])

	leafKey, chainPEM, err := simulatorPCKChain()
	if err != nil {
		return nil, err
	}
	authData := make([]byte, 32) // genuine QEs send 00 01 .. 1f
	for i := range authData {
		authData[i] = byte(i)
	}
	qe := simulatorQEReport(s.attPub[:], authData)
	qeSig, err := signRaw(leafKey, qe)
	if err != nil {
		return nil, simulatorErr(err, "QE report signature")
	}
	cd := make([]byte, 0, len(qe)+SignatureSize+2+len(authData)+6+len(chainPEM))
	cd = append(cd, qe...)
	cd = append(cd, qeSig...)
	cd = binary.LittleEndian.AppendUint16(cd, uint16(len(authData)))
	cd = append(cd, authData...)
	cd = binary.LittleEndian.AppendUint16(cd, CertDataPCKChain)
	cd = binary.LittleEndian.AppendUint32(cd, uint32(len(chainPEM)))
	s.certData = append(cd, chainPEM...)
	return s, nil
}

// Quote returns a fresh simulated TDX v4 quote whose report_data is
// reportData, signed by the simulator's attestation key.
func (s *Simulator) Quote(ctx context.Context, reportData [64]byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, failure.Wrap(ClassProvider, err, "simulated quote not produced").
			WithEvidence("context ended before the quote was signed").
			WithFix("retry with a context that has not been cancelled or timed out")
	}
	signedLen := HeaderSize + BodySizeV4
	sigDataLen := SignatureSize + PublicKeySize + 6 + len(s.certData)
	q := make([]byte, 0, signedLen+4+sigDataLen)
	q = append(q, s.header[:]...)
	q = append(q, s.body[:BodySizeV4-64]...)
	q = append(q, reportData[:]...)
	sig, err := signRaw(s.attKey, q[:signedLen])
	if err != nil {
		return nil, simulatorErr(err, "quote signature")
	}
	q = binary.LittleEndian.AppendUint32(q, uint32(sigDataLen))
	q = append(q, sig...)
	q = append(q, s.attPub[:]...)
	q = binary.LittleEndian.AppendUint16(q, CertDataQEReport)
	q = binary.LittleEndian.AppendUint32(q, uint32(len(s.certData)))
	q = append(q, s.certData...)
	return q, nil
}

// EventLog returns the RTMR3 events, digests filled, in replay order. The
// slice is a copy.
func (s *Simulator) EventLog(ctx context.Context) ([]Event, error) {
	return cloneEvents(s.events), nil
}

// IsSimulated reports whether q's PCK chain ends in a simulator root: a
// self-signed certificate that carries SimulatorMarkerOID. No Intel
// certificate carries it, and a chain re-rooted elsewhere is not
// "simulated" but untrusted.
func IsSimulated(q *Quote) bool { return simulatorRootOf(q) != nil }

func simulatorRootOf(q *Quote) *x509.Certificate {
	if q == nil {
		return nil
	}
	var last *x509.Certificate
	rest := q.PCKChainPEM
	for {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil
		}
		last = c
	}
	if last == nil || !bytes.Equal(last.RawSubject, last.RawIssuer) || last.CheckSignatureFrom(last) != nil {
		return nil
	}
	for _, p := range last.Policies {
		if p.Equal(simulatorMarker) {
			return last
		}
	}
	return nil
}

// simulatorTrust is Verify's simulator branch. For a quote that is not
// simulated it returns nil, nil and Verify goes on unchanged. A simulated
// quote is refused unless allowed; allowed, its own marked root is the
// trust anchor and every other check still runs.
func simulatorTrust(q *Quote, allow bool) (*x509.Certificate, error) {
	root := simulatorRootOf(q)
	if root == nil {
		return nil, nil
	}
	if !allow {
		sum := sha256.Sum256(root.Raw)
		return nil, failure.New(ClassSimulator, "quote comes from pgtrust's TDX simulator, not from TDX hardware").
			WithEvidence("PCK chain root %q carries the simulator marker (certificate policy %s), SHA-256 %x; allow_simulator: expected true to accept it, got false",
				root.Subject.CommonName, SimulatorMarkerOID, sum).
			WithFix(fixSimulator)
	}
	return root, nil
}

// simulatorReplay copies the events, fills runtime digests and extends
// RTMR3 from zero.
func simulatorReplay(in []Event) ([]Event, [48]byte, error) {
	var rtmr [48]byte
	out := cloneEvents(in)
	for i := range out {
		e := &out[i]
		if e.IMR != 3 {
			return nil, rtmr, simulatorOptErr(i, e.Event, "IMR", "3 (RTMR0..2 are set as values in SimulatorOptions.RTMR)", hexU32(e.IMR))
		}
		if e.EventType == RuntimeEventType {
			d := RuntimeEventDigest(e.EventType, e.Event, e.Payload)
			if len(e.Digest) != 0 && !bytes.Equal(e.Digest, d[:]) {
				return nil, rtmr, simulatorOptErr(i, e.Event, "digest", hex.EncodeToString(d[:])+" (recomputed) or empty", hex.EncodeToString(e.Digest))
			}
			e.Digest = d[:]
		} else if len(e.Digest) != 48 {
			return nil, rtmr, simulatorOptErr(i, e.Event, "digest length", "48 bytes for a non-runtime event", hexU32(uint32(len(e.Digest))))
		}
		rtmr = Extend(rtmr, e.Digest)
	}
	return out, rtmr, nil
}

func hexU32(v uint32) string { return "0x" + hex.EncodeToString(binary.BigEndian.AppendUint32(nil, v)) }

func simulatorOptErr(i int, name, field, want, got string) *failure.Error {
	return failure.New(ClassProvider, "simulator event %d (%q) is not usable", i, name).
		WithEvidence("event %d %s: expected %s, got %s", i, field, want, got).
		WithFix("give RTMR3 runtime events (IMR 3, type 0x08000001) with an empty digest, or leave SimulatorOptions.Events nil for the default log")
}

func simulatorErr(err error, what string) *failure.Error {
	return failure.Wrap(ClassProvider, err, "simulator could not produce its %s", what).
		WithEvidence("%s", what).
		WithFix("the system's random source or crypto failed; retry, and check the host")
}

func cloneEvents(in []Event) []Event {
	if in == nil {
		return nil
	}
	out := make([]Event, len(in))
	for i, e := range in {
		e.Digest = bytes.Clone(e.Digest)
		e.Payload = bytes.Clone(e.Payload)
		out[i] = e
	}
	return out
}

// signRaw signs SHA-256(msg) and returns r ‖ s, 32 bytes each, the
// encoding of TDX quotes.
func signRaw(key *ecdsa.PrivateKey, msg []byte) ([]byte, error) {
	d := sha256.Sum256(msg)
	r, s, err := ecdsa.Sign(rand.Reader, key, d[:])
	if err != nil {
		return nil, err
	}
	out := make([]byte, 64)
	r.FillBytes(out[:32])
	s.FillBytes(out[32:])
	return out, nil
}

// simulatorQEReport builds the 384-byte SGX report body of a simulated
// quoting enclave whose report_data vouches for the attestation key.
func simulatorQEReport(attPub, authData []byte) []byte {
	r := make([]byte, QEReportSize)
	copy(r[0:16], simulatorCPUSVN[:])
	r[48] = 0x11 // attributes: INIT | MODE64BIT
	r[56] = 0xe7 // XFRM
	mre := sha256.Sum256([]byte("pgtrust TDX simulator QE MRENCLAVE v1"))
	copy(r[64:96], mre[:])
	mrs := sha256.Sum256([]byte("pgtrust TDX simulator QE MRSIGNER v1"))
	copy(r[128:160], mrs[:])
	binary.LittleEndian.PutUint16(r[256:], simulatorQEProd)
	binary.LittleEndian.PutUint16(r[258:], simulatorQESVN)
	h := sha256.New()
	h.Write(attPub)
	h.Write(authData)
	copy(r[320:352], h.Sum(nil)) // [352:384] stays zero
	return r
}

// Validity of the simulator's certificates: from 2000 to RFC 5280's "no
// well-defined expiration" (9999-12-31), so simulated evidence verifies at
// any instant a test or `attest verify --at` picks. The keys live only in
// this process's memory, so the long validity gives nothing away.
var (
	simulatorNotBefore = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	simulatorNotAfter  = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)
)

// simulatorPCKChain makes root → Platform CA → PCK leaf and returns the
// leaf key and the PEM chain, leaf first, ended by a NUL as Intel's quoting
// library writes it.
func simulatorPCKChain() (*ecdsa.PrivateKey, []byte, error) {
	var keys [3]*ecdsa.PrivateKey
	for i := range keys {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, simulatorErr(err, "PCK chain keys")
		}
		keys[i] = k
	}
	leafKey := keys[2]
	name := func(cn string) pkix.Name {
		return pkix.Name{CommonName: cn, Organization: []string{simulatorOrg}}
	}
	sgxExt, err := simulatorSGXExtension()
	if err != nil {
		return nil, nil, simulatorErr(err, "PCK SGX extension")
	}
	tmpl := []*x509.Certificate{
		{Subject: name(SimulatorRootCN), IsCA: true, MaxPathLen: 1,
			KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign},
		{Subject: name(simulatorPlatformCN), IsCA: true, MaxPathLen: 0, MaxPathLenZero: true,
			KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign},
		{Subject: name(simulatorLeafCN), KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment,
			ExtraExtensions: []pkix.Extension{sgxExt}},
	}
	serialLimit := new(big.Int).Lsh(big.NewInt(1), 127)
	var ders [3][]byte
	var parent *x509.Certificate
	for i, t := range tmpl {
		if t.SerialNumber, err = rand.Int(rand.Reader, serialLimit); err != nil {
			return nil, nil, simulatorErr(err, "certificate serial")
		}
		t.SerialNumber.Add(t.SerialNumber, big.NewInt(1))
		t.NotBefore, t.NotAfter = simulatorNotBefore, simulatorNotAfter
		t.BasicConstraintsValid = true
		t.Policies = []x509.OID{simulatorMarker}
		signer, p := keys[0], t // the root signs itself
		if i > 0 {
			signer, p = keys[i-1], parent
		}
		if ders[i], err = x509.CreateCertificate(rand.Reader, t, p, &keys[i].PublicKey, signer); err != nil {
			return nil, nil, simulatorErr(err, "PCK chain certificate")
		}
		if parent, err = x509.ParseCertificate(ders[i]); err != nil {
			return nil, nil, simulatorErr(err, "PCK chain certificate")
		}
	}
	var out []byte
	for i := 2; i >= 0; i-- {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ders[i]})...)
	}
	return leafKey, append(out, 0), nil
}

// oidSGX is Intel's SGX extension of PCK certificates.
var oidSGX = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1}

func sgxOID(arcs ...int) asn1.ObjectIdentifier {
	return append(append(asn1.ObjectIdentifier{}, oidSGX...), arcs...)
}

// simulatorSGXExtension encodes the SGX extension the way Intel's
// Platform-CA PCK leaves do: PPID (.1), TCB (.2: components .2.1..16,
// PCESVN .2.17, CPUSVN .2.18), PCE-ID (.3), FMSPC (.4), SGX type (.5,
// 1 = scalable), platform instance id (.6) and configuration (.7).
func simulatorSGXExtension() (pkix.Extension, error) {
	var b cryptobyte.Builder
	pair := func(b *cryptobyte.Builder, oid asn1.ObjectIdentifier, value func(*cryptobyte.Builder)) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(oid)
			value(b)
		})
	}
	octets := func(v []byte) func(*cryptobyte.Builder) {
		return func(b *cryptobyte.Builder) { b.AddASN1OctetString(v) }
	}
	ppid := sha256.Sum256([]byte("pgtrust TDX simulator PPID"))
	instance := sha256.Sum256([]byte("pgtrust TDX simulator platform instance"))
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		pair(b, sgxOID(1), octets(ppid[:16]))
		pair(b, sgxOID(2), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				for i, c := range simulatorCPUSVN {
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
						b.AddASN1ObjectIdentifier(sgxOID(2, i+1))
						b.AddASN1Int64(int64(c))
					})
				}
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
					b.AddASN1ObjectIdentifier(sgxOID(2, 17))
					b.AddASN1Int64(simulatorPCESVN)
				})
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
					b.AddASN1ObjectIdentifier(sgxOID(2, 18))
					b.AddASN1OctetString(simulatorCPUSVN[:])
				})
			})
		})
		pair(b, sgxOID(3), octets(simulatorPCEID[:]))
		pair(b, sgxOID(4), octets(simulatorFMSPC[:]))
		pair(b, sgxOID(5), func(b *cryptobyte.Builder) { b.AddASN1Enum(1) })
		pair(b, sgxOID(6), octets(instance[:16]))
		pair(b, sgxOID(7), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				for i := 1; i <= 3; i++ {
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
						b.AddASN1ObjectIdentifier(sgxOID(7, i))
						b.AddASN1Boolean(i == 1) // dynamic platform; no cached keys, SMT off
					})
				}
			})
		})
	})
	der, err := b.Bytes()
	if err != nil {
		return pkix.Extension{}, err
	}
	return pkix.Extension{Id: oidSGX, Value: der}, nil
}
