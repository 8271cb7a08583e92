package ratls_test

import (
	"bytes"
	"crypto/sha512"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/ratls"
)

// Files with a dstack event log (README 3.4-3.6).
const (
	simName        = "dstack_simulator_attestation.bin"
	reportName     = "dstack_quote_report.json"
	liteQuoteName  = "dstack_tdx_lite_getquote.json"
	liteAttestName = "dstack_tdx_lite_attestation.json"
)

// expectedLog is the event-log part of ratls_expected.json.
type expectedLog struct {
	RTMR     [4]string
	Events   int
	PerIMR   map[string]int
	Empty    int
	Order    []string
	Payloads map[string]string
}

func loadExpectedLogs(t testing.TB) map[string]expectedLog {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testdata, "ratls_expected.json"))
	if err != nil {
		t.Fatalf("RA-TLS test data missing (expected beside the repository): %v", err)
	}
	var doc struct {
		Quotes map[string]struct {
			RTMR0, RTMR1, RTMR2, RTMR3 string
			EventLog                   *struct {
				Events   int               `json:"events"`
				PerIMR   map[string]int    `json:"per_imr"`
				Empty    int               `json:"empty_digest_events"`
				Order    []string          `json:"runtime_events_in_order"`
				Payloads map[string]string `json:"runtime_payloads"`
			} `json:"event_log"`
		} `json:"quotes"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	out := map[string]expectedLog{}
	for name, q := range doc.Quotes {
		if q.EventLog == nil {
			continue
		}
		out[name] = expectedLog{RTMR: [4]string{q.RTMR0, q.RTMR1, q.RTMR2, q.RTMR3}, Events: q.EventLog.Events,
			PerIMR: q.EventLog.PerIMR, Empty: q.EventLog.Empty, Order: q.EventLog.Order, Payloads: q.EventLog.Payloads}
	}
	if len(out) != 3 {
		t.Fatalf("ratls_expected.json has %d event logs, want 3", len(out))
	}
	return out
}

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testdata, name))
	if err != nil {
		t.Fatalf("RA-TLS test data missing: %v", err)
	}
	return b
}

// dstackJSON is the shape of dstack_quote_report.json and the lite
// getquote file: hex quote, event log as a JSON string.
type dstackJSON struct {
	Quote      string `json:"quote"`
	EventLog   string `json:"event_log"`
	ReportData string `json:"report_data"`
	VMConfig   string `json:"vm_config"`
}

func loadDstackJSON(t testing.TB, name string) (quote []byte, eventLog []byte) {
	t.Helper()
	var j dstackJSON
	if err := json.Unmarshal(readTestdata(t, name), &j); err != nil {
		t.Fatal(err)
	}
	return unhex(t, j.Quote), []byte(j.EventLog)
}

// liteAttestation returns the SCALE V0 envelope of the lite attestation file.
func liteAttestation(t testing.TB) []byte {
	t.Helper()
	var j struct {
		Attestation string `json:"attestation"`
	}
	if err := json.Unmarshal(readTestdata(t, liteAttestName), &j); err != nil {
		t.Fatal(err)
	}
	return unhex(t, j.Attestation)
}

// logOf returns the event log and the quote of one of the dstack files.
func logOf(t testing.TB, name string) ([]ratls.Event, []byte) {
	t.Helper()
	switch name {
	case simName:
		e, err := ratls.ParseAttestationV0(readTestdata(t, simName))
		if err != nil {
			t.Fatalf("ParseAttestationV0: %s", failureDetail(err))
		}
		return e.EventLog, e.Quote
	case liteAttestName:
		e, err := ratls.ParseAttestationV0(liteAttestation(t))
		if err != nil {
			t.Fatalf("ParseAttestationV0: %s", failureDetail(err))
		}
		return e.EventLog, e.Quote
	default:
		q, log := loadDstackJSON(t, name)
		events, err := ratls.ParseEventLogJSON(log)
		if err != nil {
			t.Fatalf("ParseEventLogJSON: %s", failureDetail(err))
		}
		return events, q
	}
}

func quoteRTMRs(t testing.TB, raw []byte) [4][48]byte {
	t.Helper()
	q, err := ratls.ParseQuote(raw)
	if err != nil {
		t.Fatalf("ParseQuote: %s", failureDetail(err))
	}
	return q.Body.RTMR
}

// TestReplayReproducesQuoteRTMRs: replaying each dstack event log (runtime
// digests recomputed) gives the RTMRs of its quote and of
// ratls_expected.json: all four for three files, RTMR3 only for the lite
// attestation, whose log keeps only the ACPI and RTMR3 events by design.
func TestReplayReproducesQuoteRTMRs(t *testing.T) {
	want := loadExpectedLogs(t)
	for _, name := range []string{simName, reportName, liteQuoteName, liteAttestName} {
		t.Run(name, func(t *testing.T) {
			events, quote := logOf(t, name)
			expName := name
			if name == liteAttestName {
				expName = liteQuoteName // the same quote (README 3.6)
			}
			exp := want[expName]
			got, err := ratls.ReplayRTMRs(events)
			if err != nil {
				t.Fatalf("ReplayRTMRs: %s", failureDetail(err))
			}
			inQuote := quoteRTMRs(t, quote)
			first := 0
			if name == liteAttestName {
				first = 3
				if len(events) != 12 {
					t.Errorf("%d events, want 12", len(events))
				}
				if got[0] == inQuote[0] {
					t.Error("RTMR0 replayed from the stripped log matches; the test would not notice a missing event")
				}
			} else if len(events) != exp.Events {
				t.Errorf("%d events, want %d", len(events), exp.Events)
			}
			for i := first; i < 4; i++ {
				if hex.EncodeToString(got[i][:]) != exp.RTMR[i] {
					t.Errorf("RTMR%d replayed %x, want %s", i, got[i], exp.RTMR[i])
				}
				if got[i] != inQuote[i] {
					t.Errorf("RTMR%d replayed %x, quote has %x", i, got[i], inQuote[i])
				}
			}
		})
	}
}

// TestEventLogShape checks per-IMR counts and the empty digests of the lite
// getquote log, which the verifier must recompute.
func TestEventLogShape(t *testing.T) {
	for name, exp := range loadExpectedLogs(t) {
		t.Run(name, func(t *testing.T) {
			events, _ := logOf(t, name)
			per := map[string]int{}
			empty := 0
			for _, ev := range events {
				per[string(rune('0'+ev.IMR))]++
				if len(ev.Digest) == 0 {
					empty++
				}
			}
			if !reflect.DeepEqual(per, exp.PerIMR) {
				t.Errorf("per IMR %v, want %v", per, exp.PerIMR)
			}
			if empty != exp.Empty {
				t.Errorf("%d empty digests, want %d", empty, exp.Empty)
			}
		})
	}
}

// TestAppIdentity reads the RTMR3 identity of each dstack log and compares
// it with ratls_expected.json.
func TestAppIdentity(t *testing.T) {
	for name, exp := range loadExpectedLogs(t) {
		t.Run(name, func(t *testing.T) {
			events, _ := logOf(t, name)
			id, err := ratls.ParseAppIdentity(events)
			if err != nil {
				t.Fatalf("ParseAppIdentity: %s", failureDetail(err))
			}
			if !reflect.DeepEqual(id.Events, exp.Order) {
				t.Errorf("events %q, want %q", id.Events, exp.Order)
			}
			for field, got := range map[string][]byte{"app-id": id.AppID, "compose-hash": id.ComposeHash,
				"instance-id": id.InstanceID, "os-image-hash": id.OSImageHash} {
				want, ok := exp.Payloads[field]
				if !ok {
					if got != nil {
						t.Errorf("%s = %x, want absent", field, got)
					}
					continue
				}
				if hex.EncodeToString(got) != want {
					t.Errorf("%s = %x, want %s", field, got, want)
				}
			}
			var kp struct{ Name, ID string }
			if err := json.Unmarshal([]byte(exp.Payloads["key-provider"]), &kp); err != nil {
				t.Fatal(err)
			}
			if id.KeyProvider == nil || id.KeyProvider.Name != kp.Name || hex.EncodeToString(id.KeyProvider.ID) != kp.ID {
				t.Errorf("key provider %+v, want %+v", id.KeyProvider, kp)
			}
		})
	}
}

// TestAppIdentityValues pins the README's values independently of
// ratls_expected.json (README 3.4, 3.5).
func TestAppIdentityValues(t *testing.T) {
	events, _ := logOf(t, reportName)
	id, err := ratls.ParseAppIdentity(events)
	if err != nil {
		t.Fatal(failureDetail(err))
	}
	if hex.EncodeToString(id.AppID) != "3763bc34552cf3a27ff71ad5f7a90471562a1a2d" ||
		hex.EncodeToString(id.ComposeHash) != "3763bc34552cf3a27ff71ad5f7a90471562a1a2df552dfc1998cba2d60da27e7" ||
		id.KeyProvider.Name != "local-sgx" || id.OSImageHash != nil {
		t.Errorf("quote-report identity %x %x %+v", id.AppID, id.ComposeHash, id.KeyProvider)
	}
	events, _ = logOf(t, simName)
	if id, err = ratls.ParseAppIdentity(events); err != nil {
		t.Fatal(failureDetail(err))
	}
	if hex.EncodeToString(id.AppID) != "5bb4ff9a3837357f19dc176407a5709c62eb6c56" ||
		hex.EncodeToString(id.ComposeHash) != "c143116fef3940e7f776bfc0919c256232ae5338a6e948c96b711e0b2383483a" ||
		hex.EncodeToString(id.OSImageHash) != "e61be43dd1cc6a6f5edefd7c51b608983780839b0000ce60dd99737dcffe09b9" ||
		id.KeyProvider.Name != "kms" {
		t.Errorf("simulator identity %x %x %x %+v", id.AppID, id.ComposeHash, id.OSImageHash, id.KeyProvider)
	}
}

// TestKeyProviderIsKMSRoot: the simulator's key-provider id is the DER
// SubjectPublicKeyInfo of the dstack KMS CA (README 3.5), the cross-check
// a policy makes against its pinned KMS root.
func TestKeyProviderIsKMSRoot(t *testing.T) {
	block, _ := pem.Decode(readTestdata(t, "dstack_simulator_kms_ca.pem"))
	if block == nil {
		t.Fatal("no PEM block")
	}
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	events, _ := logOf(t, simName)
	id, err := ratls.ParseAppIdentity(events)
	if err != nil {
		t.Fatal(failureDetail(err))
	}
	if !bytes.Equal(id.KeyProvider.ID, ca.RawSubjectPublicKeyInfo) {
		t.Errorf("key-provider id %x, KMS CA SPKI %x", id.KeyProvider.ID, ca.RawSubjectPublicKeyInfo)
	}
}

func findEvent(t testing.TB, events []ratls.Event, name string) int {
	t.Helper()
	for i, ev := range events {
		if ev.IMR == 3 && ev.Event == name {
			return i
		}
	}
	t.Fatalf("no %s event", name)
	return -1
}

func cloneEvents(events []ratls.Event) []ratls.Event {
	out := make([]ratls.Event, len(events))
	for i, ev := range events {
		out[i] = ratls.Event{IMR: ev.IMR, EventType: ev.EventType, Digest: bytes.Clone(ev.Digest), Event: ev.Event, Payload: bytes.Clone(ev.Payload)}
	}
	return out
}

// TestAlteredPayloadChangesRTMR3: one payload byte altered in a log whose
// runtime digests are empty (lite) changes the replayed RTMR3; in a log
// with stored digests the stale digest is refused instead of trusted.
func TestAlteredPayloadChangesRTMR3(t *testing.T) {
	events, quote := logOf(t, liteQuoteName)
	want := quoteRTMRs(t, quote)
	m := cloneEvents(events)
	i := findEvent(t, m, "compose-hash")
	m[i].Payload[0] ^= 1
	got, err := ratls.ReplayRTMRs(m)
	if err != nil {
		t.Fatalf("ReplayRTMRs: %s", failureDetail(err))
	}
	if got[3] == want[3] {
		t.Error("altered compose-hash payload still replays to the quote's RTMR3")
	}
	if got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Error("an RTMR3 change altered RTMR0-2")
	}

	events, _ = logOf(t, reportName)
	m = cloneEvents(events)
	i = findEvent(t, m, "app-id")
	m[i].Payload[len(m[i].Payload)-1] ^= 0x80
	_, err = ratls.ReplayRTMRs(m)
	fe := wantClass(t, err, ratls.ClassEventLog)
	if !strings.Contains(fe.Evidence, hex.EncodeToString(events[i].Digest)) {
		t.Errorf("evidence lacks the stored digest: %s", fe.Evidence)
	}
}

// TestStoredRuntimeDigestsAreV1: every stored runtime digest of the
// quote-report log equals RuntimeEventDigest (README 5.3), an independent
// vector for the V1 rule.
func TestStoredRuntimeDigestsAreV1(t *testing.T) {
	events, _ := logOf(t, reportName)
	n := 0
	for _, ev := range events {
		if ev.EventType != ratls.RuntimeEventType {
			continue
		}
		d := ratls.RuntimeEventDigest(ev.EventType, ev.Event, ev.Payload)
		if !bytes.Equal(d[:], ev.Digest) {
			t.Errorf("%s: stored %x, V1 %x", ev.Event, ev.Digest, d)
		}
		n++
	}
	if n != 8 {
		t.Fatalf("%d runtime events, want 8", n)
	}
}

// TestReplayRefusals: a wrong stored runtime digest, an IMR beyond 3, a
// runtime event outside RTMR3 and a firmware event without digest.
func TestReplayRefusals(t *testing.T) {
	events, _ := logOf(t, reportName)
	cases := map[string]func(m []ratls.Event){
		"wrong runtime digest":     func(m []ratls.Event) { m[findEvent(t, m, "system-ready")].Digest[0] ^= 1 },
		"short runtime digest":     func(m []ratls.Event) { i := findEvent(t, m, "app-id"); m[i].Digest = m[i].Digest[:47] },
		"IMR 4":                    func(m []ratls.Event) { m[0].IMR = 4 },
		"runtime event in RTMR2":   func(m []ratls.Event) { m[findEvent(t, m, "app-id")].IMR = 2 },
		"firmware event no digest": func(m []ratls.Event) { m[0].Digest = nil },
		"firmware digest 32 bytes": func(m []ratls.Event) { m[1].Digest = m[1].Digest[:32] },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			m := cloneEvents(events)
			mutate(m)
			_, err := ratls.ReplayRTMRs(m)
			wantClass(t, err, ratls.ClassEventLog)
		})
	}
}

// TestEventLogJSONRoundTrip: MarshalEventLogJSON writes dstack's own bytes
// back (field order and hex as serde writes them) and parses to the same
// events.
func TestEventLogJSONRoundTrip(t *testing.T) {
	for _, name := range []string{reportName, liteQuoteName} {
		t.Run(name, func(t *testing.T) {
			_, raw := loadDstackJSON(t, name)
			events, err := ratls.ParseEventLogJSON(raw)
			if err != nil {
				t.Fatal(failureDetail(err))
			}
			out, err := ratls.MarshalEventLogJSON(events)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out, raw) {
				t.Errorf("re-encoded log differs from dstack's:\n%.300s\n%.300s", out, raw)
			}
			again, err := ratls.ParseEventLogJSON(out)
			if err != nil || !reflect.DeepEqual(again, events) {
				t.Errorf("round trip: %v", err)
			}
		})
	}
	if out, err := ratls.MarshalEventLogJSON(nil); err != nil || string(out) != "[]" {
		t.Errorf("empty log %q %v, want []", out, err)
	}
}

// TestEventLogJSONRefusals: malformed logs are refused with ClassEventLog.
func TestEventLogJSONRefusals(t *testing.T) {
	ok := `{"imr":3,"event_type":134217729,"digest":"","event":"app-id","event_payload":"00"}`
	for name, in := range map[string]string{
		"not an array":    `{"imr":0}`,
		"null":            `null`,
		"empty":           ``,
		"truncated":       `[` + ok,
		"trailing data":   `[` + ok + `] x`,
		"missing imr":     `[{"event_type":1,"digest":"","event":"","event_payload":""}]`,
		"missing payload": `[{"imr":0,"event_type":1,"digest":"","event":""}]`,
		"imr negative":    `[{"imr":-1,"event_type":1,"digest":"","event":"","event_payload":""}]`,
		"imr overflow":    `[{"imr":4294967296,"event_type":1,"digest":"","event":"","event_payload":""}]`,
		"imr string":      `[{"imr":"0","event_type":1,"digest":"","event":"","event_payload":""}]`,
		"digest not hex":  `[{"imr":0,"event_type":1,"digest":"zz","event":"","event_payload":""}]`,
		"payload odd hex": `[{"imr":0,"event_type":1,"digest":"","event":"","event_payload":"abc"}]`,
		"version 3":       `[{"imr":3,"event_type":134217729,"digest":"","event":"a","event_payload":"","version":3}]`,
		"version 2 boot":  `[{"imr":0,"event_type":1,"digest":"","event":"a","event_payload":"","version":2}]`,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ratls.ParseEventLogJSON([]byte(in))
			wantClass(t, err, ratls.ClassEventLog)
		})
	}
	if ev, err := ratls.ParseEventLogJSON([]byte(" [" + ok + "]\n")); err != nil || len(ev) != 1 || ev[0].Digest != nil {
		t.Errorf("valid one-event log: %v %+v", err, ev)
	}
}

// TestRuntimeEventDigestV2 checks the V2 preimage against the canonical
// strings of dstack's own tests (cc-eventlog runtime_events.rs).
func TestRuntimeEventDigestV2(t *testing.T) {
	for _, c := range []struct {
		name    string
		payload []byte
		want    string
	}{
		{"compose-hash", []byte{0xab, 0xcd}, `{"name":"compose-hash","payload":"abcd","type":134217729}`},
		{"event\"with\\special\nchars", []byte{0xff}, `{"name":"event\"with\\special\nchars","payload":"ff","type":134217729}`},
		{"", nil, `{"name":"","payload":"","type":134217729}`},
		{"\x08\x0c\n\r\t\x01", nil, `{"name":"\b\f\n\r\t\u0001","payload":"","type":134217729}`},
		{"测试-emoji-🦀/<&>\x7f", []byte{0xAB, 0xCD, 0xEF}, `{"name":"测试-emoji-🦀/<&>` + "\x7f" + `","payload":"abcdef","type":134217729}`},
		{"\x1f", nil, `{"name":"\u001f","payload":"","type":134217729}`},
	} {
		got, ok := ratls.RuntimeEventDigestV2(c.name, c.payload)
		if !ok || got != sha512.Sum384([]byte(c.want)) {
			t.Errorf("V2 digest of %q is not SHA-384(%s)", c.name, c.want)
		}
	}
	if _, ok := ratls.RuntimeEventDigestV2("\xff", nil); ok {
		t.Error("V2 digest of a non-UTF-8 name")
	}
}

// TestV2Events: a "version":2 runtime event is replayed with the V2 digest,
// written back with its version and preimage, and a wrong V2 digest or
// preimage is refused. A V0 envelope cannot carry it.
func TestV2Events(t *testing.T) {
	pre := `{"name":"compose-hash","payload":"abcd","type":134217729}`
	v2 := sha512.Sum384([]byte(pre))
	v1 := ratls.RuntimeEventDigest(ratls.RuntimeEventType, "compose-hash", []byte{0xab, 0xcd})
	log := `[{"imr":3,"event_type":134217729,"digest":"","event":"compose-hash","event_payload":"abcd","version":2}]`
	events, err := ratls.ParseEventLogJSON([]byte(log))
	if err != nil {
		t.Fatal(failureDetail(err))
	}
	if !bytes.Equal(events[0].Digest, v2[:]) {
		t.Fatalf("V2 event digest %x, want %x", events[0].Digest, v2)
	}
	got, err := ratls.ReplayRTMRs(events)
	if err != nil || got[3] != ratls.Extend([48]byte{}, v2[:]) {
		t.Fatalf("V2 replay %x %v", got[3], err)
	}
	out, err := ratls.MarshalEventLogJSON(events)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out, []byte(`"version":2,"preimage":"`+hex.EncodeToString([]byte(pre))+`"`)) {
		t.Errorf("V2 event written as %s", out)
	}
	if again, err := ratls.ParseEventLogJSON(out); err != nil || !reflect.DeepEqual(again, events) {
		t.Errorf("V2 round trip: %v", err)
	}
	// The V1 digest with version 2, and a preimage of another event.
	for _, bad := range []string{
		strings.Replace(log, `"digest":""`, `"digest":"`+hex.EncodeToString(v1[:])+`"`, 1),
		strings.Replace(log, `"version":2`, `"version":2,"preimage":"`+hex.EncodeToString([]byte(strings.Replace(pre, "abcd", "abce", 1)))+`"`, 1),
	} {
		_, err := ratls.ParseEventLogJSON([]byte(bad))
		wantClass(t, err, ratls.ClassEventLog)
	}
	// V0 is V1-only (dstack skips the version in SCALE).
	e := &ratls.Evidence{Quote: []byte{1}, EventLog: events, ReportData: make([]byte, 64)}
	_, err = e.MarshalV0()
	wantClass(t, err, ratls.ClassEventLog)
}

// TestAppIdentityRules: events after system-ready are the application's
// own and cannot change the identity; a repeated identity event before it
// and a malformed key provider are refused.
func TestAppIdentityRules(t *testing.T) {
	rt := func(name, payload string) ratls.Event {
		return ratls.Event{IMR: 3, EventType: ratls.RuntimeEventType, Event: name, Payload: []byte(payload)}
	}
	id, err := ratls.ParseAppIdentity([]ratls.Event{rt("app-id", "good"), rt("system-ready", ""), rt("app-id", "spoof"),
		rt("key-provider", `{"name":"evil","id":"00"}`)})
	if err != nil {
		t.Fatal(failureDetail(err))
	}
	if string(id.AppID) != "good" || id.KeyProvider != nil || len(id.Events) != 4 {
		t.Errorf("identity %q %+v %q", id.AppID, id.KeyProvider, id.Events)
	}
	// Identity events outside RTMR3 or of another type are not identity.
	other := rt("app-id", "x")
	other.IMR = 2
	if id, err = ratls.ParseAppIdentity([]ratls.Event{other}); err != nil || id.AppID != nil {
		t.Errorf("RTMR2 app-id read as identity: %q %v", id.AppID, err)
	}
	_, err = ratls.ParseAppIdentity([]ratls.Event{rt("app-id", "a"), rt("app-id", "b")})
	wantClass(t, err, ratls.ClassAppIdentity)
	for _, kp := range []string{`{"name":"kms"}`, `{"name":"kms","id":"xyz"}`, `not json`, `{"id":"00"}`} {
		_, err = ratls.ParseAppIdentity([]ratls.Event{rt("key-provider", kp)})
		wantClass(t, err, ratls.ClassAppIdentity)
	}
}
