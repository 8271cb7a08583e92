package leader

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
)

// FuzzParseManifest: any input either parses to a manifest whose canonical
// body re-parses to the same fields, or is refused with a manifest class;
// Verify never panics and accepts only what the pinned key signed.
func FuzzParseManifest(f *testing.F) {
	v := loadVectors(f)
	for _, c := range v.Cases {
		f.Add(c.TXT)
	}
	f.Add(v.GoldenBody)
	f.Add("v=1;;=;sig=")
	signer := mustAddr(f, v.SignerAddress)
	classes := map[failure.Class]bool{ClassMalformed: true, ClassVersion: true, ClassSignature: true}
	f.Fuzz(func(t *testing.T, txt string) {
		m, err := Parse(txt)
		if err != nil {
			var fe *failure.Error
			if !errors.As(err, &fe) || !classes[fe.Class] {
				t.Fatalf("unclassified parse error %v", err)
			}
			return
		}
		body := m.CanonicalBody()
		again, err := Parse(body + ";sig=0x" + strings.Repeat("00", 65))
		if err != nil {
			t.Fatalf("canonical body %q does not re-parse: %v", body, err)
		}
		if again.CanonicalBody() != body {
			t.Fatalf("canonical body not stable: %q then %q", body, again.CanonicalBody())
		}
		if err := m.Verify(Policy{Signer: signer}, time.Unix(0, 0)); err == nil && body != v.GoldenBody && !strings.Contains(body, "valid_until=1000") {
			t.Fatalf("accepted a body the test key never signed: %q", body)
		}
		_, _, _ = m.LeaderAddress()
	})
}
