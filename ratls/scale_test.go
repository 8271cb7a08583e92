package ratls_test

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/ratls"
)

// scaleEnc is a test-local SCALE encoder, written from the spec
// independently of MarshalV0, to build envelopes the decoder must refuse.
type scaleEnc struct{ b []byte }

func (w *scaleEnc) compact(n uint32) *scaleEnc {
	switch {
	case n < 1<<6:
		w.b = append(w.b, byte(n<<2))
	case n < 1<<14:
		w.b = append(w.b, byte(n<<2|1), byte(n>>6))
	case n < 1<<30:
		w.b = binary.LittleEndian.AppendUint32(w.b, n<<2|2)
	default:
		w.b = append(w.b, 3)
		w.b = binary.LittleEndian.AppendUint32(w.b, n)
	}
	return w
}
func (w *scaleEnc) raw(b ...byte) *scaleEnc { w.b = append(w.b, b...); return w }
func (w *scaleEnc) vec(b []byte) *scaleEnc  { return w.compact(uint32(len(b))).raw(b...) }
func (w *scaleEnc) u32(v uint32) *scaleEnc {
	w.b = binary.LittleEndian.AppendUint32(w.b, v)
	return w
}

// envelope encodes a V0 envelope from its parts.
func envelope(quote []byte, tdx []ratls.Event, runtime []ratls.Event, reportData []byte, cfg string) []byte {
	w := (&scaleEnc{}).raw(0, 0).vec(quote).compact(uint32(len(tdx)))
	for _, ev := range tdx {
		w.u32(ev.IMR).u32(ev.EventType).vec(ev.Digest).vec([]byte(ev.Event)).vec(ev.Payload)
	}
	w.compact(uint32(len(runtime)))
	for _, ev := range runtime {
		w.vec([]byte(ev.Event)).vec(ev.Payload)
	}
	return w.raw(reportData...).vec([]byte(cfg)).b
}

func runtimeOf(events []ratls.Event) []ratls.Event {
	var out []ratls.Event
	for _, ev := range events {
		if ev.EventType == ratls.RuntimeEventType {
			out = append(out, ev)
		}
	}
	return out
}

// TestParseAttestationV0 decodes both genuine dstack envelopes (README 3.5,
// 3.6), checks every part against the README and ratls_expected.json, and
// re-encodes them byte for byte.
func TestParseAttestationV0(t *testing.T) {
	var exp struct {
		Quotes map[string]struct {
			VMConfig string `json:"vm_config"`
		} `json:"quotes"`
	}
	if err := json.Unmarshal(readTestdata(t, "ratls_expected.json"), &exp); err != nil {
		t.Fatal(err)
	}
	liteQuote, _ := loadDstackJSON(t, liteQuoteName)
	for _, c := range []struct {
		name            string
		raw             []byte
		quoteLen        int
		quote           []byte
		events, runtime int
		reportData      string
		vmConfig        string
	}{
		{simName, readTestdata(t, simName), 5010, nil, 33, 9, strings.Repeat("00", 64), exp.Quotes[simName].VMConfig},
		{liteAttestName, liteAttestation(t), 5006, liteQuote, 12, 9, hex.EncodeToString([]byte("dip1::secp256k1c-pk:A55pWmteJIJOj8_pI7-pzeDxy1G2q18GDv88HNRdBXkQ")), ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.vmConfig == "" {
				var j struct {
					VMConfig string `json:"vm_config"`
				}
				if err := json.Unmarshal(readTestdata(t, liteQuoteName), &j); err != nil {
					t.Fatal(err)
				}
				c.vmConfig = j.VMConfig
			}
			e, err := ratls.ParseAttestationV0(c.raw)
			if err != nil {
				t.Fatalf("ParseAttestationV0: %s", failureDetail(err))
			}
			if e.Format != "v0" || len(e.Quote) != c.quoteLen || !bytes.Equal(e.Quote, c.raw[4:4+c.quoteLen]) {
				t.Errorf("format %q, quote %d bytes, want v0 and %d bytes at offset 4", e.Format, len(e.Quote), c.quoteLen)
			}
			if c.quote != nil && !bytes.Equal(e.Quote, c.quote) {
				t.Error("lite envelope's quote differs from the getquote file's")
			}
			if len(e.EventLog) != c.events || len(runtimeOf(e.EventLog)) != c.runtime {
				t.Errorf("%d events (%d runtime), want %d (%d)", len(e.EventLog), len(runtimeOf(e.EventLog)), c.events, c.runtime)
			}
			if hex.EncodeToString(e.ReportData) != c.reportData {
				t.Errorf("report_data %x, want %s", e.ReportData, c.reportData)
			}
			if e.VMConfig != c.vmConfig {
				t.Errorf("vm_config %.80q, want %.80q", e.VMConfig, c.vmConfig)
			}
			out, err := e.MarshalV0()
			if err != nil {
				t.Fatalf("MarshalV0: %s", failureDetail(err))
			}
			if !bytes.Equal(out, c.raw) {
				t.Fatalf("MarshalV0 gives %d bytes, differing from the %d-byte original", len(out), len(c.raw))
			}
			// The Evidence does not alias the input.
			c.raw[5] ^= 0xff
			if e.Quote[1] == c.raw[5] {
				t.Error("Evidence aliases the input buffer")
			}
		})
	}
}

// TestParseAttestationV0Truncated: one byte more is refused; every
// truncation is refused, never a panic.
func TestParseAttestationV0Truncated(t *testing.T) {
	raw := readTestdata(t, simName)
	_, err := ratls.ParseAttestationV0(append(bytes.Clone(raw), 0))
	fe := wantClass(t, err, ratls.ClassExtension)
	if !strings.Contains(fe.Evidence, "1 trailing bytes") {
		t.Errorf("evidence %q", fe.Evidence)
	}
	for n := 0; n < len(raw); n++ {
		if _, err := ratls.ParseAttestationV0(raw[:n]); err == nil {
			t.Fatalf("%d-byte prefix accepted", n)
		} else {
			wantClass(t, err, ratls.ClassExtension)
		}
	}
}

// TestCompactLengths: quotes whose lengths need each compact mode
// round-trip, and their first bytes are the canonical encodings.
func TestCompactLengths(t *testing.T) {
	rd := make([]byte, 64)
	for _, c := range []struct {
		n      int
		prefix string
	}{{0, "00"}, {1, "04"}, {63, "fc"}, {64, "0101"}, {16383, "fdff"}, {16384, "02000100"}, {1 << 20, "02004000"}} {
		q := bytes.Repeat([]byte{0xa5}, c.n)
		e := &ratls.Evidence{Quote: q, ReportData: rd, VMConfig: "{}"}
		b, err := e.MarshalV0()
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(b[2 : 2+len(c.prefix)/2]); got != c.prefix {
			t.Errorf("length %d encoded %s, want %s", c.n, got, c.prefix)
		}
		if !bytes.Equal(b, envelope(q, nil, nil, rd, "{}")) {
			t.Errorf("length %d: MarshalV0 disagrees with the test encoder", c.n)
		}
		back, err := ratls.ParseAttestationV0(b)
		if err != nil || !bytes.Equal(back.Quote, q) || back.VMConfig != "{}" {
			t.Errorf("length %d: %v", c.n, err)
		}
	}
	// Mode 3 (four-byte big integer) holds lengths from 2^30: decoded,
	// then bounded by the bytes present before anything is allocated.
	_, err := ratls.ParseAttestationV0((&scaleEnc{}).raw(0, 0).compact(1<<30+5).raw(1, 2, 3).b)
	fe := wantClass(t, err, ratls.ClassExtension)
	if !strings.Contains(fe.Evidence, "length 1073741829 exceeds") {
		t.Errorf("evidence %q", fe.Evidence)
	}
}

// TestAttestationV0Refusals covers the envelope's refusals.
func TestAttestationV0Refusals(t *testing.T) {
	sim, err := ratls.ParseAttestationV0(readTestdata(t, simName))
	if err != nil {
		t.Fatal(failureDetail(err))
	}
	log, rd := sim.EventLog, sim.ReportData
	rt := runtimeOf(log)
	q := []byte{1, 2, 3}
	ok := envelope(q, log, rt, rd, "")
	if _, err := ratls.ParseAttestationV0(ok); err != nil {
		t.Fatalf("baseline refused: %s", failureDetail(err))
	}
	changed := cloneEvents(rt)
	changed[2].Payload[0] ^= 1
	badDigest := cloneEvents(log)
	badDigest[findEvent(t, badDigest, "app-id")].Digest[0] ^= 1
	inRTMR0 := cloneEvents(log)
	inRTMR0[findEvent(t, inRTMR0, "app-id")].IMR = 0
	noRuntimeInLog := runtimeOf(nil)
	for _, ev := range log {
		if ev.EventType != ratls.RuntimeEventType {
			noRuntimeInLog = append(noRuntimeInLog, ev)
		}
	}
	extra := ratls.Event{IMR: 3, EventType: ratls.RuntimeEventType, Event: "extra"}

	extension, eventLog, unsupported := ratls.ClassExtension, ratls.ClassEventLog, ratls.ClassUnsupported
	for name, c := range map[string]struct {
		b     []byte
		class failure.Class
	}{
		"empty":                       {nil, extension},
		"version 1":                   {append([]byte{1}, ok[1:]...), extension},
		"SEV-SNP quote":               {append([]byte{0, 3}, ok[2:]...), unsupported},
		"unknown quote variant":       {append([]byte{0, 9}, ok[2:]...), extension},
		"runtime list differs":        {envelope(q, log, changed, rd, ""), eventLog},
		"runtime list shorter":        {envelope(q, log, rt[:8], rd, ""), eventLog},
		"runtime list longer":         {envelope(q, log, append(cloneEvents(rt), extra), rd, ""), eventLog},
		"runtime events only in list": {envelope(q, noRuntimeInLog, rt, rd, ""), eventLog},
		"runtime events only in log":  {envelope(q, log, nil, rd, ""), eventLog},
		"stale runtime digest":        {envelope(q, badDigest, rt, rd, ""), eventLog},
		"runtime event in RTMR0":      {envelope(q, inRTMR0, rt, rd, ""), eventLog},
		"report_data short":           {envelope(q, nil, nil, rd[:63], ""), extension},
		"vm_config not UTF-8":         {envelope(q, nil, nil, rd, "\xff"), extension},
		"event name not UTF-8":        {envelope(q, []ratls.Event{{Event: "\xc3"}}, nil, rd, ""), extension},
		"non-canonical compact mode 1": {(&scaleEnc{}).raw(0, 0).raw(0x0d, 0).raw(q...).compact(0).compact(0).raw(rd...).compact(0).b,
			extension},
		"non-canonical compact mode 2": {(&scaleEnc{}).raw(0, 0).u32(3<<2 | 2).raw(q...).compact(0).compact(0).raw(rd...).compact(0).b,
			extension},
		"non-canonical compact mode 3": {(&scaleEnc{}).raw(0, 0).raw(3).u32(3).raw(q...).compact(0).compact(0).raw(rd...).compact(0).b,
			extension},
		"compact beyond u32": {(&scaleEnc{}).raw(0, 0).raw(7, 0, 0, 0, 0, 1).b, extension},
		"huge event count":   {(&scaleEnc{}).raw(0, 0).vec(q).compact(1<<30 - 1).raw(make([]byte, 100)...).b, extension},
		"huge runtime count": {(&scaleEnc{}).raw(0, 0).vec(q).compact(0).compact(1 << 29).raw(make([]byte, 100)...).b, extension},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ratls.ParseAttestationV0(c.b)
			wantClass(t, err, c.class)
		})
	}
}
