package ratls

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"unicode/utf8"

	"github.com/pgtrust/pgtrust/failure"
)

// dstack's VersionedAttestation::V0 is SCALE-encoded (parity-scale-codec):
//
//	u8 0x00                      VersionedAttestation::V0
//	u8 0x00                      AttestationQuote::DstackTdx
//	Vec<u8>      quote
//	Vec<TdxEvent> event_log      {u32le imr, u32le event_type, Vec<u8> digest, String event, Vec<u8> event_payload}
//	Vec<RuntimeEvent> runtime    {String event, Vec<u8> payload}
//	[u8;64]      report_data
//	String       vm_config
//
// Vec and String lengths are SCALE compact integers. The decoder follows
// parity-scale-codec's Compact<u32>: all four modes, canonical (shortest)
// encodings only, values up to 2^32-1. Refusing non-canonical forms is
// what makes MarshalV0 reproduce every accepted input byte for byte.

const (
	v0Variant        = 0x00 // VersionedAttestation::V0
	v0QuoteDstackTDX = 0x00 // AttestationQuote::DstackTdx
	reportDataSize   = 64
	// Smallest encodings, to bound an element count by the bytes left
	// before allocating: a TDX event is 4+4 bytes and three empty compact
	// lengths; a runtime event two empty compact lengths.
	minTDXEventSize     = 11
	minRuntimeEventSize = 2
)

// attestationQuoteNames names the other AttestationQuote variants, which
// are not TDX quotes and are refused as unsupported.
var attestationQuoteNames = map[byte]string{1: "DstackGcpTdx", 2: "DstackNitroEnclave", 3: "DstackAmdSevSnp", 4: "DstackAwsNitroTpm"}

type scaleReader struct {
	b   []byte
	off int
}

func envelopeMalformed(field string, off int, format string, args ...any) *failure.Error {
	return failure.New(ClassExtension, "dstack attestation (SCALE V0) is malformed: %s", field).
		WithEvidence("field %s at offset %d: "+format, append([]any{field, off}, args...)...).
		WithFix(fixEnvelope)
}

func (r *scaleReader) take(field string, n int) ([]byte, error) {
	if n < 0 || len(r.b)-r.off < n {
		return nil, envelopeMalformed(field, r.off, "needs %d bytes, %d present", n, len(r.b)-r.off)
	}
	s := r.b[r.off : r.off+n : r.off+n]
	r.off += n
	return s, nil
}

func (r *scaleReader) u32(field string) (uint32, error) {
	s, err := r.take(field, 4)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(s), nil
}

// compact reads a canonical SCALE Compact<u32>.
func (r *scaleReader) compact(field string) (uint32, error) {
	start := r.off
	if r.off >= len(r.b) {
		return 0, envelopeMalformed(field, start, "compact length needs 1 byte, 0 present")
	}
	var v, min uint64
	switch mode := r.b[r.off] & 3; mode {
	case 0:
		v = uint64(r.b[r.off] >> 2)
		r.off++
	case 1:
		s, err := r.take(field, 2)
		if err != nil {
			return 0, err
		}
		v, min = uint64(binary.LittleEndian.Uint16(s)>>2), 1<<6
	case 2:
		s, err := r.take(field, 4)
		if err != nil {
			return 0, err
		}
		v, min = uint64(binary.LittleEndian.Uint32(s)>>2), 1<<14
	default:
		// Big-integer mode: the upper six bits give the byte count - 4.
		// A u32 has exactly four.
		if n := int(r.b[r.off]>>2) + 4; n != 4 {
			return 0, envelopeMalformed(field, start, "compact length of %d bytes exceeds a u32", n)
		}
		r.off++
		s, err := r.take(field, 4)
		if err != nil {
			return 0, err
		}
		v, min = uint64(binary.LittleEndian.Uint32(s)), 1<<30
	}
	if v < min {
		return 0, envelopeMalformed(field, start, "compact length %d is not in its shortest encoding", v)
	}
	return uint32(v), nil
}

// bytes reads a Vec<u8>, bounded by the bytes present.
func (r *scaleReader) bytes(field string) ([]byte, error) {
	start := r.off
	n, err := r.compact(field)
	if err != nil {
		return nil, err
	}
	if uint64(n) > uint64(len(r.b)-r.off) {
		return nil, envelopeMalformed(field, start, "length %d exceeds the %d bytes left", n, len(r.b)-r.off)
	}
	return r.take(field, int(n))
}

// string reads a SCALE String, which Rust requires to be UTF-8.
func (r *scaleReader) string(field string) (string, error) {
	start := r.off
	s, err := r.bytes(field)
	if err != nil {
		return "", err
	}
	if !utf8.Valid(s) {
		return "", envelopeMalformed(field, start, "string is not valid UTF-8")
	}
	return string(s), nil
}

// count reads an element count and bounds it by the bytes left.
func (r *scaleReader) count(field string, minSize int) (int, error) {
	start := r.off
	n, err := r.compact(field)
	if err != nil {
		return 0, err
	}
	if uint64(n)*uint64(minSize) > uint64(len(r.b)-r.off) {
		return 0, envelopeMalformed(field, start, "%d elements cannot fit in the %d bytes left", n, len(r.b)-r.off)
	}
	return int(n), nil
}

// ParseAttestationV0 decodes dstack's VersionedAttestation::V0, the payload
// of certificate extension 1.3.6.1.4.1.62397.1.8 whose first byte is 0x00,
// and of dstack attestation documents. It consumes exactly all of b.
//
// The envelope carries the runtime (RTMR3) events twice: inside the TDX
// event log, as dstack's read_event_log appends them, and as the separate
// runtime-event list that dstack's verifier replays into RTMR3. Evidence has
// one log, the TDX event log in order, so the two copies must agree: the
// runtime-event list must equal, name and payload in order, the log's events
// of type RuntimeEventType, each of which must be in IMR 3 and carry an
// empty or V1 digest (V0 cannot carry another digest version). Anything
// else is refused with ClassEventLog rather than guessing which copy the
// quote measured.
func ParseAttestationV0(b []byte) (*Evidence, error) {
	b = bytes.Clone(b) // the Evidence must not alias the caller's buffer
	r := &scaleReader{b: b}
	tag, err := r.take("version", 1)
	if err != nil {
		return nil, err
	}
	if tag[0] != v0Variant {
		return nil, envelopeMalformed("version", 0, "variant 0x%02x, want 0x00 (V0)", tag[0])
	}
	kind, err := r.take("quote variant", 1)
	if err != nil {
		return nil, err
	}
	if kind[0] != v0QuoteDstackTDX {
		name, ok := attestationQuoteNames[kind[0]]
		if !ok {
			return nil, envelopeMalformed("quote variant", 1, "unknown AttestationQuote variant %d", kind[0])
		}
		return nil, failure.New(ClassUnsupported, "dstack attestation is for %s, not a TDX quote", name).
			WithEvidence("field quote variant at offset 1: AttestationQuote variant %d (%s), want 0 (DstackTdx)", kind[0], name).
			WithFix("attest this server with a verifier for its platform; pgtrust verifies Intel TDX only")
	}
	e := &Evidence{Format: "v0"}
	if e.Quote, err = r.bytes("quote"); err != nil {
		return nil, err
	}
	n, err := r.count("event_log count", minTDXEventSize)
	if err != nil {
		return nil, err
	}
	e.EventLog = make([]Event, n)
	for i := range e.EventLog {
		ev := &e.EventLog[i]
		if ev.IMR, err = r.u32("event_log.imr"); err != nil {
			return nil, err
		}
		if ev.EventType, err = r.u32("event_log.event_type"); err != nil {
			return nil, err
		}
		if ev.Digest, err = r.bytes("event_log.digest"); err != nil {
			return nil, err
		}
		if len(ev.Digest) == 0 {
			ev.Digest = nil // as ParseEventLogJSON leaves an empty digest
		}
		if ev.Event, err = r.string("event_log.event"); err != nil {
			return nil, err
		}
		if ev.Payload, err = r.bytes("event_log.event_payload"); err != nil {
			return nil, err
		}
	}
	m, err := r.count("runtime_events count", minRuntimeEventSize)
	if err != nil {
		return nil, err
	}
	runtime := make([]Event, m)
	for i := range runtime {
		runtime[i].IMR, runtime[i].EventType = 3, RuntimeEventType
		if runtime[i].Event, err = r.string("runtime_events.event"); err != nil {
			return nil, err
		}
		if runtime[i].Payload, err = r.bytes("runtime_events.payload"); err != nil {
			return nil, err
		}
	}
	if e.ReportData, err = r.take("report_data", reportDataSize); err != nil {
		return nil, err
	}
	if e.VMConfig, err = r.string("vm_config"); err != nil {
		return nil, err
	}
	if r.off != len(b) {
		return nil, envelopeMalformed("end", r.off, "%d trailing bytes after the attestation", len(b)-r.off)
	}
	if err := checkRuntimeCopies(e.EventLog, runtime); err != nil {
		return nil, err
	}
	return e, nil
}

// checkRuntimeCopies enforces the rule documented on ParseAttestationV0.
func checkRuntimeCopies(log, runtime []Event) error {
	j := 0
	for i, ev := range log {
		if ev.EventType != RuntimeEventType {
			continue
		}
		if err := checkV0RuntimeEvent(i, ev); err != nil {
			return err
		}
		if j >= len(runtime) {
			return runtimeCopiesDiffer(j, ev.Event, "(none)", len(runtime), countRuntime(log))
		}
		rt := runtime[j]
		if rt.Event != ev.Event {
			return runtimeCopiesDiffer(j, ev.Event, rt.Event, len(runtime), countRuntime(log))
		}
		if !bytes.Equal(rt.Payload, ev.Payload) {
			return failure.New(ClassEventLog, "the attestation's runtime events disagree with its TDX event log").
				WithEvidence("runtime event %d %q: payload %x in the TDX event log, %x in the runtime-event list", j, ev.Event, ev.Payload, rt.Payload).
				WithFix(fixEventLog)
		}
		j++
	}
	if j != len(runtime) {
		return runtimeCopiesDiffer(j, "(none)", runtime[j].Event, len(runtime), j)
	}
	return nil
}

func checkV0RuntimeEvent(i int, ev Event) error {
	if ev.IMR != 3 {
		return failure.New(ClassEventLog, "runtime event %q is not in RTMR3", ev.Event).
			WithEvidence("event %d: type 0x%08x in IMR %d, want IMR 3", i, ev.EventType, ev.IMR).
			WithFix(fixEventLog)
	}
	if len(ev.Digest) == 0 {
		return nil
	}
	if v1 := RuntimeEventDigest(ev.EventType, ev.Event, ev.Payload); !bytes.Equal(ev.Digest, v1[:]) {
		return digestMismatch(i, ev, v1[:])
	}
	return nil
}

func countRuntime(log []Event) int {
	n := 0
	for _, ev := range log {
		if ev.EventType == RuntimeEventType {
			n++
		}
	}
	return n
}

func runtimeCopiesDiffer(j int, inLog, inList string, nList, nLog int) *failure.Error {
	return failure.New(ClassEventLog, "the attestation's runtime events disagree with its TDX event log").
		WithEvidence("runtime event %d: TDX event log has %q, runtime-event list has %q (%d in the log, %d in the list)", j, inLog, inList, nLog, nList).
		WithFix(fixEventLog)
}

func digestMismatch(i int, ev Event, recomputed []byte) *failure.Error {
	return failure.New(ClassEventLog, "runtime event %q carries a digest its name and payload do not produce", ev.Event).
		WithEvidence("event %d: stored digest %s, recomputed %s", i, hex.EncodeToString(ev.Digest), hex.EncodeToString(recomputed)).
		WithFix(fixEventLog)
}

func notUTF8(field string) *failure.Error {
	return failure.New(ClassExtension, "cannot encode the attestation: %s is not UTF-8", field).
		WithEvidence("%s holds bytes that are not valid UTF-8", field).
		WithFix("event names and the VM configuration must be UTF-8 text")
}

type scaleWriter struct{ b []byte }

func (w *scaleWriter) compact(n int) {
	switch {
	case n < 1<<6:
		w.b = append(w.b, byte(n)<<2)
	case n < 1<<14:
		w.b = binary.LittleEndian.AppendUint16(w.b, uint16(n)<<2|1)
	case n < 1<<30:
		w.b = binary.LittleEndian.AppendUint32(w.b, uint32(n)<<2|2)
	default:
		w.b = append(w.b, 3)
		w.b = binary.LittleEndian.AppendUint32(w.b, uint32(n))
	}
}

func (w *scaleWriter) bytes(s []byte) {
	w.compact(len(s))
	w.b = append(w.b, s...)
}

// MarshalV0 encodes the evidence as dstack's VersionedAttestation::V0: the
// event log as the TDX event log and its RuntimeEventType events again as
// the runtime-event list (see ParseAttestationV0). It reproduces every
// input ParseAttestationV0 accepts byte for byte.
func (e *Evidence) MarshalV0() ([]byte, error) {
	if len(e.ReportData) != reportDataSize {
		return nil, failure.New(ClassExtension, "cannot encode the attestation: report_data is not 64 bytes").
			WithEvidence("report_data has %d bytes, want 64", len(e.ReportData)).
			WithFix("set Evidence.ReportData to the 64-byte report_data the quote was requested with")
	}
	// Rust Strings are UTF-8; encoding anything else would produce bytes
	// that dstack (and ParseAttestationV0) refuse.
	if !utf8.ValidString(e.VMConfig) {
		return nil, notUTF8("vm_config")
	}
	for i, ev := range e.EventLog {
		if !utf8.ValidString(ev.Event) {
			return nil, notUTF8(fmt.Sprintf("event %d name", i))
		}
	}
	w := &scaleWriter{b: []byte{v0Variant, v0QuoteDstackTDX}}
	w.bytes(e.Quote)
	w.compact(len(e.EventLog))
	var runtime []Event
	for i, ev := range e.EventLog {
		if ev.EventType == RuntimeEventType {
			if err := checkV0RuntimeEvent(i, ev); err != nil {
				return nil, err
			}
			runtime = append(runtime, ev)
		}
		w.b = binary.LittleEndian.AppendUint32(w.b, ev.IMR)
		w.b = binary.LittleEndian.AppendUint32(w.b, ev.EventType)
		w.bytes(ev.Digest)
		w.bytes([]byte(ev.Event))
		w.bytes(ev.Payload)
	}
	w.compact(len(runtime))
	for _, ev := range runtime {
		w.bytes([]byte(ev.Event))
		w.bytes(ev.Payload)
	}
	w.b = append(w.b, e.ReportData...)
	w.bytes([]byte(e.VMConfig))
	return w.b, nil
}
