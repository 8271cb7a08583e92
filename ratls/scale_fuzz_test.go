package ratls_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/ratls"
)

// FuzzParseAttestationV0: the SCALE decoder never panics or over-allocates,
// refuses with an evidence class, and whatever it accepts MarshalV0
// reproduces byte for byte (so nothing accepted is ambiguous).
func FuzzParseAttestationV0(f *testing.F) {
	f.Add(readTestdata(f, simName))
	f.Add(liteAttestation(f))
	f.Add(envelope([]byte{1}, []ratls.Event{{IMR: 3, EventType: ratls.RuntimeEventType, Event: "a"}},
		[]ratls.Event{{Event: "a"}}, make([]byte, 64), "{}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := ratls.ParseAttestationV0(b)
		if err != nil {
			wantEvidenceClass(t, err, ratls.ClassExtension, ratls.ClassEventLog, ratls.ClassUnsupported)
			return
		}
		out, err := e.MarshalV0()
		if err != nil {
			t.Fatalf("accepted envelope does not re-encode: %v", err)
		}
		if !bytes.Equal(out, b) {
			t.Fatalf("re-encoding differs: %d bytes from %d", len(out), len(b))
		}
	})
}

// wantEvidenceClass fails unless err is a *failure.Error of one of classes
// with evidence and a fix.
func wantEvidenceClass(t *testing.T, err error, classes ...failure.Class) {
	t.Helper()
	var fe *failure.Error
	if !errors.As(err, &fe) {
		t.Fatalf("refusal is not a failure.Error: %v", err)
	}
	for _, c := range classes {
		if fe.Class == c {
			if fe.Evidence == "" || fe.Fix == "" {
				t.Fatalf("%s refusal without evidence or fix: %s", c, fe.Detail())
			}
			return
		}
	}
	t.Fatalf("refusal of class %s (%s), want one of %v", fe.Class, fe.Detail(), classes)
}
