package ratls_test

import (
	"reflect"
	"testing"

	"github.com/pgtrust/pgtrust/ratls"
)

// FuzzParseEventLogJSON: the JSON event-log parser never panics, refuses
// with ClassEventLog, and what it accepts survives MarshalEventLogJSON; the
// replay and identity readers never panic on it and refuse with their
// classes.
func FuzzParseEventLogJSON(f *testing.F) {
	for _, name := range []string{reportName, liteQuoteName} {
		_, log := loadDstackJSON(f, name)
		f.Add(log)
	}
	f.Add([]byte(`[{"imr":3,"event_type":134217729,"digest":"","event":"compose-hash","event_payload":"abcd","version":2}]`))
	f.Add([]byte(`[{"imr":3,"event_type":134217729,"event":"key-provider","event_payload":"7b226e616d65223a226b6d73222c226964223a223030227d"}]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		events, err := ratls.ParseEventLogJSON(b)
		if err != nil {
			wantEvidenceClass(t, err, ratls.ClassEventLog)
			return
		}
		if _, err := ratls.ReplayRTMRs(events); err != nil {
			wantEvidenceClass(t, err, ratls.ClassEventLog)
		}
		if _, err := ratls.ParseAppIdentity(events); err != nil {
			wantEvidenceClass(t, err, ratls.ClassAppIdentity)
		}
		out, err := ratls.MarshalEventLogJSON(events)
		if err != nil {
			t.Fatalf("accepted log does not re-encode: %v", err)
		}
		again, err := ratls.ParseEventLogJSON(out)
		if err != nil {
			t.Fatalf("re-encoded log refused: %v", err)
		}
		if !reflect.DeepEqual(again, events) {
			t.Fatalf("round trip changed the events")
		}
	})
}
