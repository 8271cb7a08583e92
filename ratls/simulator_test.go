package ratls_test

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
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/ratls"
)

// simQuote builds a default simulator and one quote with random
// report_data.
func simQuote(t testing.TB) (*ratls.Simulator, [64]byte, []byte) {
	t.Helper()
	s, err := ratls.NewSimulator(ratls.SimulatorOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var rd [64]byte
	if _, err := rand.Read(rd[:]); err != nil {
		t.Fatal(err)
	}
	raw, err := s.Quote(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	return s, rd, raw
}

// replayRTMR3 extends the events' digests from zero with SHA-384 written
// out here, independently of ratls.Extend.
func replayRTMR3(events []ratls.Event) []byte {
	rtmr := make([]byte, 48)
	for _, e := range events {
		h := sha512.New384()
		h.Write(rtmr)
		h.Write(e.Digest)
		rtmr = h.Sum(nil)
	}
	return rtmr
}

// TestSimulatorQuote: a default simulated quote parses, carries the
// documented header and body, the report_data passed in and the replay of
// its event log in RTMR3; it is refused without AllowSimulator and verifies
// with it.
func TestSimulatorQuote(t *testing.T) {
	s, rd, raw := simQuote(t)
	q, err := ratls.ParseQuote(raw)
	if err != nil {
		t.Fatal(failureDetail(err))
	}
	h := q.Header
	if h.Version != 4 || h.AttestationKeyType != 2 || h.TEEType != 0x81 || hex.EncodeToString(h.QEVendorID[:]) != "939a7233f79c4ca9940a0db3957f0607" {
		t.Errorf("header %+v", h)
	}
	if h.QESVN != 0 || h.PCESVN != 0 || !bytes.HasPrefix(h.UserData[:], []byte("pgtrust-simulator")) {
		t.Errorf("header svns %d %d (genuine TDX quotes: 0), user_data %q", h.QESVN, h.PCESVN, h.UserData)
	}
	if q.QEReport.ISVProdID != 2 || q.QEReport.ISVSVN != 6 || len(q.QEAuthData) != 32 {
		t.Errorf("QE report prod %d svn %d, auth data %d bytes", q.QEReport.ISVProdID, q.QEReport.ISVSVN, len(q.QEAuthData))
	}
	if len(q.Extra) != 0 || len(q.Signed) != 632 || q.BodyOffset != 48 {
		t.Errorf("layout: extra %d, signed %d, body at %d", len(q.Extra), len(q.Signed), q.BodyOffset)
	}
	b := q.Body
	const wantMRTD = "57e4d62c50e62de24df59dce24db2ac3731dd75f336fd41dc6639d516814e76d4d66fe63b552785c863a6c1fe76e2a05"
	label := sha512.Sum384([]byte("pgtrust TDX simulator MRTD v1"))
	def := ratls.DefaultSimulatorMRTD()
	if hex.EncodeToString(b.MRTD[:]) != wantMRTD || b.MRTD != label || def != label {
		t.Errorf("MRTD %x, default %x, want %s", b.MRTD, def, wantMRTD)
	}
	if hex.EncodeToString(b.TDAttributes[:]) != "0000001000000000" || b.Debug() {
		t.Errorf("td_attributes %x (debug %v), want 0000001000000000 like genuine quotes", b.TDAttributes, b.Debug())
	}
	if b.MRSignerSEAM != [48]byte{} || b.SEAMAttributes != [8]byte{} {
		t.Errorf("mr_signer_seam %x seam_attributes %x, want zero", b.MRSignerSEAM, b.SEAMAttributes)
	}
	if b.ReportData != rd || !bytes.Equal(raw[568:632], rd[:]) {
		t.Errorf("report_data %x, want %x", b.ReportData, rd)
	}
	for i := range 3 {
		if b.RTMR[i] != [48]byte{} {
			t.Errorf("RTMR%d %x, want zero by default", i, b.RTMR[i])
		}
	}
	events, err := s.EventLog(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := replayRTMR3(events); !bytes.Equal(b.RTMR[3][:], got) {
		t.Errorf("RTMR3 %x, replay of the event log %x", b.RTMR[3], got)
	}
	compose := sha256.Sum256([]byte("pgtrust TDX simulator app-compose v1"))
	if !bytes.Equal(b.MRConfigID[:33], append([]byte{1}, compose[:]...)) || !bytes.Equal(b.MRConfigID[33:], make([]byte, 15)) {
		t.Errorf("mr_config_id %x, want 01 ‖ compose hash", b.MRConfigID)
	}
	if !ratls.IsSimulated(q) {
		t.Fatal("simulated quote is not IsSimulated")
	}

	// Refused without the flag, even against an explicit Intel root: the
	// simulator class comes before any untrusted-root error.
	for _, opts := range []ratls.VerifyOptions{{}, {Root: ratls.IntelSGXRoot()}} {
		_, err = q.Verify(opts)
		fe := wantClass(t, err, ratls.ClassSimulator)
		if fe.Fix != "this quote comes from pgtrust's TDX simulator, not hardware; set allow_simulator = true only for development" {
			t.Errorf("fix: %q", fe.Fix)
		}
		if !strings.Contains(fe.Evidence, ratls.SimulatorMarkerOID) || !strings.Contains(fe.Evidence, "NOT hardware evidence") {
			t.Errorf("evidence does not name the marker and root: %s", fe.Evidence)
		}
	}
	for _, at := range []time.Time{{}, time.Date(2025, 7, 1, 0, 0, 0, 0, time.UTC)} {
		v, err := q.Verify(ratls.VerifyOptions{AllowSimulator: true, Time: at})
		if err != nil {
			t.Fatalf("at %v: %s", at, failureDetail(err))
		}
		if len(v.PCKChain) != 3 || v.PCKChain[2].Subject.CommonName != ratls.SimulatorRootCN {
			t.Errorf("verified chain %d certs, root %q", len(v.PCKChain), v.PCKChain[len(v.PCKChain)-1].Subject.CommonName)
		}
	}
	if !strings.Contains(ratls.SimulatorRootCN, "NOT hardware evidence") || !strings.Contains(ratls.SimulatorRootCN, "pgtrust TDX simulator") {
		t.Errorf("root CN %q does not say what it is", ratls.SimulatorRootCN)
	}
}

// TestSimulatorPerQuote: quotes of one simulator share everything but
// report_data and the quote signature; another simulator has other keys.
func TestSimulatorPerQuote(t *testing.T) {
	s, _, raw1 := simQuote(t)
	var rd [64]byte
	rd[0] = 7
	raw2, err := s.Quote(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw1) != len(raw2) || !bytes.Equal(raw1[:568], raw2[:568]) || !bytes.Equal(raw1[700:], raw2[700:]) {
		t.Error("two quotes of one simulator differ outside report_data and signature")
	}
	if bytes.Equal(raw1[568:632], raw2[568:632]) || bytes.Equal(raw1[636:700], raw2[636:700]) {
		t.Error("report_data or signature did not change")
	}
	_, _, other := simQuote(t)
	if bytes.Equal(raw1[700:764], other[700:764]) {
		t.Error("two simulators share an attestation key")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = s.Quote(ctx, rd)
	wantClass(t, err, ratls.ClassProvider)
}

// TestSimulatorOptions: the options flow into the body, runtime digests
// are filled, and unusable events are refused.
func TestSimulatorOptions(t *testing.T) {
	var o ratls.SimulatorOptions
	for i := range o.MRTD {
		o.MRTD[i] = 0xaa
	}
	for r := range 3 {
		o.RTMR[r][0] = byte(r + 1)
	}
	o.TDAttributes = [8]byte{1} // debug
	o.TEETCBSVN = [16]byte{9, 9}
	fw := sha512.Sum384([]byte("firmware"))
	o.Events = []ratls.Event{
		{IMR: 3, EventType: ratls.RuntimeEventType, Event: "compose-hash", Payload: bytes.Repeat([]byte{0xcc}, 32)},
		{IMR: 3, EventType: 1, Event: "other", Digest: fw[:]},
	}
	s, err := ratls.NewSimulator(o)
	if err != nil {
		t.Fatal(err)
	}
	if o.Events[0].Digest != nil {
		t.Error("NewSimulator wrote into the caller's events")
	}
	raw, err := s.Quote(context.Background(), [64]byte{})
	if err != nil {
		t.Fatal(err)
	}
	q, err := ratls.ParseQuote(raw)
	if err != nil {
		t.Fatal(err)
	}
	b := q.Body
	if b.MRTD != o.MRTD || b.TDAttributes != o.TDAttributes || !b.Debug() || b.TEETCBSVN != o.TEETCBSVN {
		t.Errorf("body does not carry the options: %+v", b)
	}
	for r := range 3 {
		if b.RTMR[r] != o.RTMR[r] {
			t.Errorf("RTMR%d %x", r, b.RTMR[r])
		}
	}
	events, _ := s.EventLog(context.Background())
	d := ratls.RuntimeEventDigest(ratls.RuntimeEventType, "compose-hash", o.Events[0].Payload)
	if len(events) != 2 || !bytes.Equal(events[0].Digest, d[:]) || !bytes.Equal(events[1].Digest, fw[:]) {
		t.Fatalf("event log %+v", events)
	}
	if want := replayRTMR3(events); !bytes.Equal(b.RTMR[3][:], want) {
		t.Errorf("RTMR3 %x, replay %x", b.RTMR[3], want)
	}
	if b.MRConfigID[0] != 1 || b.MRConfigID[1] != 0xcc || b.MRConfigID[33] != 0 {
		t.Errorf("mr_config_id %x", b.MRConfigID)
	}
	// EventLog hands out copies.
	events[0].Digest[0] ^= 1
	again, _ := s.EventLog(context.Background())
	if !bytes.Equal(again[0].Digest, d[:]) {
		t.Error("EventLog returned the simulator's own slices")
	}

	bad := [][]ratls.Event{
		{{IMR: 0, EventType: ratls.RuntimeEventType, Event: "x"}},
		{{IMR: 3, EventType: ratls.RuntimeEventType, Event: "x", Digest: make([]byte, 48)}},
		{{IMR: 3, EventType: 1, Event: "no digest"}},
	}
	for i, ev := range bad {
		_, err := ratls.NewSimulator(ratls.SimulatorOptions{Events: ev})
		if fe := wantClass(t, err, ratls.ClassProvider); fe != nil && !strings.Contains(fe.Evidence, "event 0") {
			t.Errorf("case %d evidence: %s", i, fe.Evidence)
		}
	}
}

// TestSimulatorDefaultEvents: the default RTMR3 log is dstack's boot
// sequence with the documented payloads.
func TestSimulatorDefaultEvents(t *testing.T) {
	s, err := ratls.NewSimulator(ratls.SimulatorOptions{})
	if err != nil {
		t.Fatal(err)
	}
	events, _ := s.EventLog(context.Background())
	compose := sha256.Sum256([]byte("pgtrust TDX simulator app-compose v1"))
	instance := sha256.Sum256([]byte("pgtrust TDX simulator instance v1"))
	want := []struct{ name, payload string }{
		{"system-preparing", ""},
		{"app-id", hex.EncodeToString(compose[:20])},
		{"compose-hash", hex.EncodeToString(compose[:])},
		{"instance-id", hex.EncodeToString(instance[:20])},
		{"boot-mr-done", ""},
		{"key-provider", hex.EncodeToString([]byte(`{"name":"none","id":""}`))},
		{"system-ready", ""},
	}
	if len(events) != len(want) {
		t.Fatalf("%d events, want %d", len(events), len(want))
	}
	for i, e := range events {
		// The V1 rule written out: SHA-384(u32le type ‖ ":" ‖ name ‖ ":" ‖ payload).
		h := sha512.New384()
		h.Write([]byte{0x01, 0x00, 0x00, 0x08, ':'})
		h.Write([]byte(e.Event + ":"))
		h.Write(e.Payload)
		if e.IMR != 3 || e.EventType != 0x08000001 || e.Event != want[i].name || hex.EncodeToString(e.Payload) != want[i].payload || !bytes.Equal(e.Digest, h.Sum(nil)) {
			t.Errorf("event %d: %+v, want %s %s", i, e, want[i].name, want[i].payload)
		}
	}
	// The documented default RTMR3, pinnable in a policy.
	if got := hex.EncodeToString(replayRTMR3(events)); got != "b718fc68ae79f1ee0076ea60cb3e600fd79fe586e804db71a36066951cdbab3dfd13ab75487c2e2ca98c12d9d03a7d8a" {
		t.Errorf("default RTMR3 changed: %s", got)
	}
	if hex.EncodeToString(compose[:]) != "2da053fe5fe7cd9e283bb4b506d6b65e5f14ec0038bb8f7c5445ae907a3e0c4a" {
		t.Errorf("documented compose hash changed: %x", compose)
	}
}

// mutations is one table for genuine and simulated quotes: both share the
// v4 layout, so the same offsets hit the same parts.
func mutations(t testing.TB, raw []byte) []struct {
	name  string
	off   int
	class failure.Class
} {
	return []struct {
		name  string
		off   int
		class failure.Class
	}{
		{"header qe_vendor_id", 12, ratls.ClassQuoteSignature},
		{"body mrtd", 184, ratls.ClassQuoteSignature},
		{"body td_attributes debug bit", 168, ratls.ClassQuoteSignature},
		{"body rtmr3", 520, ratls.ClassQuoteSignature},
		{"body report_data last byte", 631, ratls.ClassQuoteSignature},
		{"quote signature r", offSig + 5, ratls.ClassQuoteSignature},
		{"quote signature s", offSig + 40, ratls.ClassQuoteSignature},
		{"attestation key", offAttKey + 3, ratls.ClassQEBinding},
		{"QE report cpusvn", offQEReprt + 2, ratls.ClassQEReportSignature},
		{"QE report report_data", offQEReprt + 320, ratls.ClassQEReportSignature},
		{"QE report signature", offQESig + 10, ratls.ClassQEReportSignature},
		{"QE auth data", offAuthLen + 2, ratls.ClassQEBinding},
		{"PCK leaf signature", leafSignatureOffset(t, raw), ratls.ClassPCKChain},
	}
}

// TestSimulatorMutations: one-bit mutations of a simulated quote, verified
// with AllowSimulator, fail with the class the same mutation of the
// genuine v4 quote fails with.
func TestSimulatorMutations(t *testing.T) {
	_, _, sim := simQuote(t)
	genuine, at := genuineV4(t)
	for _, c := range []struct {
		name string
		raw  []byte
		opts ratls.VerifyOptions
	}{
		{"genuine", genuine, ratls.VerifyOptions{Time: at}},
		{"simulated", sim, ratls.VerifyOptions{AllowSimulator: true}},
	} {
		q, err := ratls.ParseQuote(c.raw)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := q.Verify(c.opts); err != nil {
			t.Fatalf("%s: unmutated quote: %s", c.name, failureDetail(err))
		}
		for _, m := range mutations(t, c.raw) {
			t.Run(c.name+"/"+m.name, func(t *testing.T) {
				b := bytes.Clone(c.raw)
				if m.name == "PCK leaf signature" {
					b[m.off] = flipBase64(b[m.off])
				} else {
					b[m.off] ^= 0x01
				}
				q, err := ratls.ParseQuote(b)
				if err != nil {
					t.Fatalf("mutated quote no longer parses: %v", err)
				}
				_, err = q.Verify(c.opts)
				wantClass(t, err, m.class)
			})
		}
	}
}

// pemCerts returns the certificates of a quote's PEM chain.
func pemCerts(t testing.TB, raw []byte) []*x509.Certificate {
	t.Helper()
	q, err := ratls.ParseQuote(raw)
	if err != nil {
		t.Fatal(err)
	}
	var out []*x509.Certificate
	rest := q.PCKChainPEM
	for {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			return out
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

// withPCKChain returns a v4 quote whose PEM PCK chain is replaced by the
// given certificates, lengths adjusted; no signature covers the chain.
func withPCKChain(t testing.TB, raw []byte, certs ...[]byte) []byte {
	t.Helper()
	q, err := ratls.ParseQuote(raw)
	if err != nil {
		t.Fatal(err)
	}
	var chain []byte
	for _, der := range certs {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	pemOff := len(raw) - len(q.Extra) - len(q.PCKChainPEM)
	out := bytes.Clone(raw[:pemOff])
	delta := uint32(len(chain) - len(q.PCKChainPEM))
	binary.LittleEndian.PutUint32(out[pemOff-4:], uint32(len(chain)))
	binary.LittleEndian.PutUint32(out[632:], binary.LittleEndian.Uint32(out[632:])+delta)
	binary.LittleEndian.PutUint32(out[offAttKey+64+2:], binary.LittleEndian.Uint32(out[offAttKey+64+2:])+delta)
	return append(out, chain...)
}

// TestSimulatorChainTampering: a simulated chain re-rooted to a root
// without the marker, cut before its root, or with a broken root
// signature is not "simulated" but untrusted, with or without the flag.
func TestSimulatorChainTampering(t *testing.T) {
	_, _, raw := simQuote(t)
	certs := pemCerts(t, raw)
	if len(certs) != 3 {
		t.Fatalf("%d certificates", len(certs))
	}
	leaf, platform, root := certs[0], certs[1], certs[2]

	// Same names and validity, a fresh key, no marker; the Platform CA
	// (same key) is re-signed by it, so the chain is intact up to a root
	// that is neither Intel's nor marked.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rt := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: root.Subject, NotBefore: root.NotBefore, NotAfter: root.NotAfter,
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	rootDER, err := x509.CreateCertificate(rand.Reader, rt, rt, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	newRoot, _ := x509.ParseCertificate(rootDER)
	pt := &x509.Certificate{SerialNumber: platform.SerialNumber, Subject: platform.Subject, NotBefore: platform.NotBefore, NotAfter: platform.NotAfter,
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true, KeyUsage: x509.KeyUsageCertSign, SubjectKeyId: platform.SubjectKeyId,
		Policies: platform.Policies}
	platDER, err := x509.CreateCertificate(rand.Reader, pt, newRoot, platform.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	// A root whose signature bit is flipped no longer signs itself.
	broken := bytes.Clone(root.Raw)
	broken[len(broken)-5] ^= 1

	for _, c := range []struct {
		name  string
		certs [][]byte
	}{
		{"re-rooted without marker", [][]byte{leaf.Raw, platDER, rootDER}},
		{"cut before the root", [][]byte{leaf.Raw, platform.Raw}},
		{"root signature broken", [][]byte{leaf.Raw, platform.Raw, broken}},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := withPCKChain(t, raw, c.certs...)
			q, err := ratls.ParseQuote(m)
			if err != nil {
				t.Fatal(failureDetail(err))
			}
			if ratls.IsSimulated(q) {
				t.Error("IsSimulated")
			}
			for _, allow := range []bool{false, true} {
				_, err = q.Verify(ratls.VerifyOptions{AllowSimulator: allow})
				wantClass(t, err, ratls.ClassUntrustedRoot)
			}
		})
	}
	// The helper itself keeps a quote valid: the original chain put back.
	q, err := ratls.ParseQuote(withPCKChain(t, raw, leaf.Raw, platform.Raw, root.Raw))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.Verify(ratls.VerifyOptions{AllowSimulator: true}); err != nil {
		t.Fatal(failureDetail(err))
	}
}

// TestGenuineNotSimulated: no genuine quote is IsSimulated, and setting
// AllowSimulator changes nothing for them: they still need the Intel root.
func TestGenuineNotSimulated(t *testing.T) {
	other, err := ratls.NewSimulator(ratls.SimulatorOptions{})
	if err != nil {
		t.Fatal(err)
	}
	simRaw, _ := other.Quote(context.Background(), [64]byte{})
	simRoot := pemCerts(t, simRaw)[2]
	for name, e := range loadExpected(t) {
		t.Run(name, func(t *testing.T) {
			q, err := ratls.ParseQuote(quoteBytes(t, name, e))
			if err != nil {
				t.Fatal(err)
			}
			if ratls.IsSimulated(q) {
				t.Fatal("genuine quote is IsSimulated")
			}
			at := mustTime(t, e.Appraisal.Now)
			if _, err := q.Verify(ratls.VerifyOptions{AllowSimulator: true, Time: at}); err != nil {
				t.Fatal(failureDetail(err))
			}
			_, err = q.Verify(ratls.VerifyOptions{AllowSimulator: true, Time: at, Root: simRoot})
			wantClass(t, err, ratls.ClassUntrustedRoot)
		})
	}
}

// TestSimulatorPCKShape: the simulator's chain is shaped like Intel's
// (three certificates, Platform CA, a leaf whose SGX extension has the
// same members and encodings as the genuine leaf's) yet every certificate
// carries the marker and no name claims to be Intel's.
func TestSimulatorPCKShape(t *testing.T) {
	_, _, raw := simQuote(t)
	genuine, _ := genuineV4(t)
	gl := sgxMembers(t, pemCerts(t, genuine)[0])
	sl := sgxMembers(t, pemCerts(t, raw)[0])
	for oid, g := range gl {
		s, ok := sl[oid]
		if !ok || s.Tag != g.Tag || s.Class != g.Class || s.IsCompound != g.IsCompound {
			t.Errorf("SGX member %s: simulator %+v, genuine tag %d", oid, s, g.Tag)
		}
	}
	if len(sl) != len(gl) {
		t.Errorf("%d SGX members, genuine %d", len(sl), len(gl))
	}
	if got := hex.EncodeToString(sl["1.2.840.113741.1.13.1.4"].Bytes); got != "706773696d00" {
		t.Errorf("FMSPC %s", got)
	}
	if got := hex.EncodeToString(sl["1.2.840.113741.1.13.1.3"].Bytes); got != "0000" {
		t.Errorf("PCEID %s", got)
	}
	var tcb []struct {
		ID    asn1.ObjectIdentifier
		Value asn1.RawValue
	}
	if _, err := asn1.Unmarshal(sl["1.2.840.113741.1.13.1.2"].FullBytes, &tcb); err != nil || len(tcb) != 18 {
		t.Fatalf("TCB: %d members, %v", len(tcb), err)
	}
	var pcesvn int
	if _, err := asn1.Unmarshal(tcb[16].Value.FullBytes, &pcesvn); err != nil || pcesvn != 13 || tcb[16].ID.String() != "1.2.840.113741.1.13.1.2.17" {
		t.Errorf("PCESVN %d %v", pcesvn, err)
	}
	if hex.EncodeToString(tcb[17].Value.Bytes) != "03030202040100050000000000000000" {
		t.Errorf("CPUSVN %x", tcb[17].Value.Bytes)
	}
	var comp8 int
	if _, err := asn1.Unmarshal(tcb[7].Value.FullBytes, &comp8); err != nil || comp8 != 5 {
		t.Errorf("SGX TCB component 8 = %d", comp8)
	}

	names := []string{}
	for _, c := range pemCerts(t, raw) {
		names = append(names, c.Subject.String())
		if strings.Contains(c.Subject.String(), "Intel") || !strings.Contains(c.Subject.CommonName, "NOT hardware evidence") {
			t.Errorf("subject %q", c.Subject)
		}
		marked := false
		for _, p := range c.Policies {
			marked = marked || p.String() == ratls.SimulatorMarkerOID
		}
		if !marked {
			t.Errorf("%q lacks the marker policy", c.Subject.CommonName)
		}
	}
	if !strings.Contains(names[1], "PCK Platform CA") {
		t.Errorf("intermediate %q does not name a Platform CA", names[1])
	}
	if ratls.SimulatorMarkerOID != "2.25.193696261758323088710628916145678939065" {
		t.Error("documented marker OID changed")
	}
}

// sgxMembers decodes the leaf's SGX extension into its members by OID.
func sgxMembers(t testing.TB, leaf *x509.Certificate) map[string]asn1.RawValue {
	t.Helper()
	var ext *pkix.Extension
	for i := range leaf.Extensions {
		if leaf.Extensions[i].Id.String() == "1.2.840.113741.1.13.1" {
			ext = &leaf.Extensions[i]
		}
	}
	if ext == nil {
		t.Fatalf("%q has no SGX extension", leaf.Subject.CommonName)
	}
	var members []struct {
		ID    asn1.ObjectIdentifier
		Value asn1.RawValue
	}
	if rest, err := asn1.Unmarshal(ext.Value, &members); err != nil || len(rest) != 0 {
		t.Fatalf("SGX extension: %v, %d trailing bytes", err, len(rest))
	}
	out := map[string]asn1.RawValue{}
	for _, m := range members {
		out[m.ID.String()] = m.Value
	}
	return out
}
