package ratls

import (
	"bytes"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/pgtrust/pgtrust/failure"
)

// jsonEvent is one entry of dstack's JSON event log (cc-eventlog TdxEvent
// through serde): digest and payload are hex. version (2 for the V2 digest
// rule, absent or 1 for V1) and preimage (hex of the V2 digest input) are
// written by newer dstack for V2 runtime events only.
type jsonEvent struct {
	IMR          *uint32 `json:"imr"`
	EventType    *uint32 `json:"event_type"`
	Digest       string  `json:"digest"`
	Event        *string `json:"event"`
	EventPayload *string `json:"event_payload"`
	Version      *uint32 `json:"version,omitempty"`
	Preimage     *string `json:"preimage,omitempty"`
}

func eventLogMalformed(format string, args ...any) *failure.Error {
	return failure.New(ClassEventLog, "event log is malformed").
		WithEvidence(format, args...).
		WithFix(fixEventLog)
}

func decodeHex(s string) ([]byte, error) {
	s = strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X")
	return hex.DecodeString(s)
}

// ParseEventLogJSON parses dstack's JSON event log: an array of
// {imr, event_type, digest (hex, may be empty or absent), event,
// event_payload (hex)}. Digests are kept as stored; ReplayRTMRs recomputes
// the runtime ones. A V2 runtime event ("version":2) gets its digest
// recomputed here with the V2 rule (RuntimeEventDigestV2), since Event has
// no version field: a stored digest or preimage that disagrees is refused,
// and the recomputed digest then tells ReplayRTMRs which rule applies.
func ParseEventLogJSON(b []byte) ([]Event, error) {
	if t := bytes.TrimLeft(b, " \t\r\n"); len(t) == 0 || t[0] != '[' {
		return nil, eventLogMalformed("the event log is not a JSON array")
	}
	var raw []jsonEvent
	if err := json.Unmarshal(b, &raw); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			return nil, eventLogMalformed("JSON syntax error at byte %d: %v", se.Offset, se)
		case errors.As(err, &te):
			return nil, eventLogMalformed("field %s at byte %d: JSON %s where %s is required", te.Field, te.Offset, te.Value, te.Type)
		default:
			return nil, eventLogMalformed("%v", err)
		}
	}
	events := make([]Event, len(raw))
	for i, j := range raw {
		if j.IMR == nil || j.EventType == nil || j.Event == nil || j.EventPayload == nil {
			return nil, eventLogMalformed("event %d lacks one of imr, event_type, event, event_payload", i)
		}
		ev := Event{IMR: *j.IMR, EventType: *j.EventType, Event: *j.Event}
		var err error
		if ev.Digest, err = decodeHex(j.Digest); err != nil {
			return nil, eventLogMalformed("event %d: digest is not hex: %v", i, err)
		}
		if ev.Payload, err = decodeHex(*j.EventPayload); err != nil {
			return nil, eventLogMalformed("event %d: event_payload is not hex: %v", i, err)
		}
		if len(ev.Digest) == 0 {
			ev.Digest = nil
		}
		if j.Version != nil && *j.Version != 1 {
			if *j.Version != 2 || ev.EventType != RuntimeEventType {
				return nil, failure.New(ClassEventLog, "event log uses an unknown digest version").
					WithEvidence("event %d (%q, type 0x%08x): version %d; known: 1, and 2 for runtime events", i, ev.Event, ev.EventType, *j.Version).
					WithFix("verify this server with a verifier that knows this event-log version")
			}
			v2, ok := RuntimeEventDigestV2(ev.Event, ev.Payload)
			if !ok {
				return nil, eventLogMalformed("event %d: a V2 runtime event name must be valid UTF-8", i)
			}
			if ev.Digest != nil && !bytes.Equal(ev.Digest, v2[:]) {
				return nil, digestMismatch(i, ev, v2[:])
			}
			if j.Preimage != nil {
				pre, err := decodeHex(*j.Preimage)
				if err != nil || !bytes.Equal(pre, runtimeEventPreimageV2(ev.Event, ev.Payload)) {
					return nil, failure.New(ClassEventLog, "V2 runtime event %q carries a preimage that is not its canonical form", ev.Event).
						WithEvidence("event %d: preimage %q", i, *j.Preimage).
						WithFix(fixEventLog)
				}
			}
			ev.Digest = v2[:]
		}
		events[i] = ev
	}
	return events, nil
}

type jsonEventOut struct {
	IMR          uint32 `json:"imr"`
	EventType    uint32 `json:"event_type"`
	Digest       string `json:"digest"`
	Event        string `json:"event"`
	EventPayload string `json:"event_payload"`
	Version      uint32 `json:"version,omitempty"`
	Preimage     string `json:"preimage,omitempty"`
}

// MarshalEventLogJSON writes events in dstack's JSON event-log shape, the
// form of certificate extension .1.2 and of dstack's GetQuote response. A
// runtime event whose digest is its V2 digest is written with "version":2
// and its preimage, as dstack writes V2 events.
func MarshalEventLogJSON(events []Event) ([]byte, error) {
	out := make([]jsonEventOut, len(events))
	for i, ev := range events {
		if !utf8.ValidString(ev.Event) {
			return nil, failure.New(ClassEventLog, "cannot encode the event log: event %d's name is not UTF-8", i).
				WithEvidence("event %d name %q", i, ev.Event).
				WithFix("event names must be UTF-8 text")
		}
		out[i] = jsonEventOut{IMR: ev.IMR, EventType: ev.EventType, Digest: hex.EncodeToString(ev.Digest),
			Event: ev.Event, EventPayload: hex.EncodeToString(ev.Payload)}
		if isV2Digest(ev) {
			out[i].Version = 2
			out[i].Preimage = hex.EncodeToString(runtimeEventPreimageV2(ev.Event, ev.Payload))
		}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // as serde_json writes it
	if err := enc.Encode(out); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// isV2Digest reports whether ev is a runtime event whose stored digest is
// its V2 digest (and not its V1 one).
func isV2Digest(ev Event) bool {
	if ev.EventType != RuntimeEventType || len(ev.Digest) != sha512.Size384 {
		return false
	}
	v2, ok := RuntimeEventDigestV2(ev.Event, ev.Payload)
	return ok && bytes.Equal(ev.Digest, v2[:])
}

// runtimeEventPreimageV2 is dstack's V2 digest input (cc-eventlog
// canonical_event_json_v2): the RFC 8785 (JCS) canonical JSON of
// {"name": name, "payload": lowercase hex, "type": 134217729}. With these
// three keys JCS fixes the key order (name, payload, type), the number
// form and the string escapes: `"` and `\` escaped, U+0008, U+0009,
// U+000A, U+000C, U+000D as \b \t \n \f \r, other controls below U+0020 as
// \u00xx in lowercase hex, everything else (including non-ASCII) verbatim.
func runtimeEventPreimageV2(name string, payload []byte) []byte {
	b := []byte(`{"name":"`)
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\b':
			b = append(b, `\b`...)
		case '\t':
			b = append(b, `\t`...)
		case '\n':
			b = append(b, `\n`...)
		case '\f':
			b = append(b, `\f`...)
		case '\r':
			b = append(b, `\r`...)
		default:
			if c < 0x20 {
				b = append(b, fmt.Sprintf(`\u%04x`, c)...)
			} else {
				b = append(b, c)
			}
		}
	}
	b = append(b, `","payload":"`...)
	b = hex.AppendEncode(b, payload)
	b = append(b, fmt.Sprintf(`","type":%d}`, RuntimeEventType)...)
	return b
}

// RuntimeEventDigestV2 is dstack's V2 runtime-event digest: SHA-384 of the
// JCS canonical JSON {"name","payload" (hex),"type":134217729}. ok is false
// for a name that is not UTF-8, which a V2 event (a Rust String) cannot have.
func RuntimeEventDigestV2(name string, payload []byte) (d [48]byte, ok bool) {
	if !utf8.ValidString(name) {
		return d, false
	}
	return sha512.Sum384(runtimeEventPreimageV2(name, payload)), true
}

// ReplayRTMRs extends every event into its RTMR from 48 zero bytes, in log
// order. Runtime events (RuntimeEventType, which must be in IMR 3) are
// replayed with the digest recomputed from name and payload, never with the
// stored one: the V1 rule (RuntimeEventDigest), or the V2 rule when the
// stored digest is exactly the V2 digest (ParseEventLogJSON puts it there
// for "version":2 events). A stored non-empty digest that is neither is
// refused. Other events (firmware, kernel) are replayed with their stored
// digest, which must be a 48-byte SHA-384 digest.
func ReplayRTMRs(events []Event) ([4][48]byte, error) {
	var rtmr [4][48]byte
	for i, ev := range events {
		if ev.IMR > 3 {
			return rtmr, failure.New(ClassEventLog, "event log names an RTMR that does not exist").
				WithEvidence("event %d (%q): IMR %d, want 0..3", i, ev.Event, ev.IMR).
				WithFix(fixEventLog)
		}
		var d []byte
		if ev.EventType == RuntimeEventType {
			if ev.IMR != 3 {
				return rtmr, failure.New(ClassEventLog, "runtime event %q is not in RTMR3", ev.Event).
					WithEvidence("event %d: type 0x%08x in IMR %d, want IMR 3", i, ev.EventType, ev.IMR).
					WithFix(fixEventLog)
			}
			v1 := RuntimeEventDigest(ev.EventType, ev.Event, ev.Payload)
			switch {
			case len(ev.Digest) == 0 || bytes.Equal(ev.Digest, v1[:]):
				d = v1[:]
			case isV2Digest(ev):
				v2, _ := RuntimeEventDigestV2(ev.Event, ev.Payload)
				d = v2[:]
			default:
				return rtmr, digestMismatch(i, ev, v1[:])
			}
		} else {
			if len(ev.Digest) != sha512.Size384 {
				return rtmr, failure.New(ClassEventLog, "event %d has no SHA-384 digest to extend", i).
					WithEvidence("event %d (%q, type 0x%08x, IMR %d): digest of %d bytes, want 48", i, ev.Event, ev.EventType, ev.IMR, len(ev.Digest)).
					WithFix(fixEventLog)
			}
			d = ev.Digest
		}
		rtmr[ev.IMR] = Extend(rtmr[ev.IMR], d)
	}
	return rtmr, nil
}

// identityEvents are the RTMR3 events ParseAppIdentity reads.
var identityEvents = map[string]bool{"app-id": true, "compose-hash": true, "instance-id": true, "os-image-hash": true, "key-provider": true}

// ParseAppIdentity reads the application identity from the RTMR3 runtime
// events. Like dstack (find_event), only events before the first
// "system-ready" count: later events are emitted by the application
// itself, which could otherwise claim another app id. An identity event
// repeated before system-ready is refused rather than picking one. It does
// not replay: callers check ReplayRTMRs against the quote first.
func ParseAppIdentity(events []Event) (*AppIdentity, error) {
	id := &AppIdentity{}
	seen := map[string]bool{}
	ready := false
	for i, ev := range events {
		if ev.IMR != 3 || ev.EventType != RuntimeEventType {
			continue
		}
		id.Events = append(id.Events, ev.Event)
		if ev.Event == "system-ready" {
			ready = true
		}
		if ready || !identityEvents[ev.Event] {
			continue
		}
		if seen[ev.Event] {
			return nil, failure.New(ClassAppIdentity, "RTMR3 event %q appears twice before system-ready", ev.Event).
				WithEvidence("event %d repeats %q", i, ev.Event).
				WithFix("the CVM's boot measured two identities; do not trust it until it boots with one")
		}
		seen[ev.Event] = true
		p := bytes.Clone(ev.Payload)
		switch ev.Event {
		case "app-id":
			id.AppID = p
		case "compose-hash":
			id.ComposeHash = p
		case "instance-id":
			id.InstanceID = p
		case "os-image-hash":
			id.OSImageHash = p
		case "key-provider":
			if len(p) == 0 {
				continue
			}
			kp, err := parseKeyProvider(i, p)
			if err != nil {
				return nil, err
			}
			id.KeyProvider = kp
		}
	}
	return id, nil
}

// parseKeyProvider reads dstack's KeyProviderInfo {"name","id"} where id is
// hex (for "kms" the DER SPKI of the KMS root CA).
func parseKeyProvider(i int, p []byte) (*KeyProvider, error) {
	var j struct {
		Name *string `json:"name"`
		ID   *string `json:"id"`
	}
	bad := func(why string) *failure.Error {
		return failure.New(ClassAppIdentity, "the key-provider event is malformed").
			WithEvidence("event %d: %s in %q", i, why, p).
			WithFix("the key-provider payload must be JSON {\"name\":…,\"id\":\"<hex>\"}, as dstack writes it")
	}
	if err := json.Unmarshal(p, &j); err != nil {
		return nil, bad(err.Error())
	}
	if j.Name == nil || j.ID == nil {
		return nil, bad("name or id missing")
	}
	id, err := hex.DecodeString(*j.ID)
	if err != nil {
		return nil, bad("id is not hex")
	}
	return &KeyProvider{Name: *j.Name, ID: id}, nil
}
