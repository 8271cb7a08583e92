package ratls_test

import (
	"errors"
	"testing"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/ratls"
)

// FuzzParseCollateralJSON feeds the collateral parser mutations of both
// genuine files. It must never panic and must refuse with
// attestation_collateral; what it accepts has the accessors' invariants.
// Appraise is left out: its signature checks would make every execution
// slow and the fuzzer would rarely get past them.
func FuzzParseCollateralJSON(f *testing.F) {
	for _, name := range []string{collB0, coll90} {
		f.Add(readFile(f, name))
	}
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ratls.ParseCollateralJSON(b)
		if err != nil {
			var fe *failure.Error
			if !errors.As(err, &fe) || fe.Class != ratls.ClassCollateral || fe.Evidence == "" || fe.Fix == "" {
				t.Fatalf("refusal without the collateral class, evidence and fix: %v", err)
			}
			return
		}
		if len(c.FMSPC()) != 12 || c.NextUpdate().IsZero() || c.ValidFrom().IsZero() {
			t.Fatalf("accepted collateral FMSPC %q window %s..%s", c.FMSPC(), c.ValidFrom(), c.NextUpdate())
		}
	})
}
