package ratls

import (
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/failure"
)

// TestEvidenceClasses: the evidence classes are distinct snake_case
// attestation_ classes that collide with none of pgtrust's general ones.
func TestEvidenceClasses(t *testing.T) {
	seen := map[failure.Class]bool{}
	for _, c := range failure.Classes {
		seen[c] = true
	}
	if len(evidenceClasses) != 5 {
		t.Fatalf("%d evidence classes, want 5", len(evidenceClasses))
	}
	for _, c := range evidenceClasses {
		s := string(c)
		if !strings.HasPrefix(s, "attestation_") || strings.Trim(s, "abcdefghijklmnopqrstuvwxyz_") != "" || seen[c] {
			t.Errorf("class %q is not a distinct attestation_ snake_case class", s)
		}
		seen[c] = true
	}
}
