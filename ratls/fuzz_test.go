package ratls_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/ratls"
)

// FuzzParseQuote feeds the parser mutations of the genuine quotes. It must
// never panic, must refuse with an attestation class, and what it accepts
// must be self-consistent. Verify is left out: its x509 parsing makes each
// execution slow enough that minimising every new input stalls the run.
func FuzzParseQuote(f *testing.F) {
	for name, e := range loadExpected(f) {
		f.Add(quoteBytes(f, name, e))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := ratls.ParseQuote(b)
		if err != nil {
			var fe *failure.Error
			if !errors.As(err, &fe) || (fe.Class != ratls.ClassMalformed && fe.Class != ratls.ClassUnsupported) {
				t.Fatalf("refusal without an attestation class: %v", err)
			}
			return
		}
		want := ratls.BodySizeV4
		if q.BodyType == ratls.BodyTypeTD15 {
			want = ratls.BodySizeTD15
		}
		if len(q.Signed) != q.BodyOffset+want || !bytes.Equal(q.Signed, b[:len(q.Signed)]) {
			t.Fatalf("signed region %d bytes, body at %d of %d", len(q.Signed), q.BodyOffset, want)
		}
		if len(q.QEReportRaw) != ratls.QEReportSize || !bytes.HasSuffix(b, q.Extra) {
			t.Fatal("QE report or extra bytes inconsistent")
		}
	})
}
