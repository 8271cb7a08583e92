package ratls

import (
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/failure"
)

// TestTCBClasses: the classes of this area are distinct snake_case
// attestation_ classes, apart from the package's and pgtrust's others.
func TestTCBClasses(t *testing.T) {
	seen := map[failure.Class]bool{}
	for _, c := range append(append([]failure.Class{}, failure.Classes...), Classes...) {
		seen[c] = true
	}
	if len(tcbClasses) != 8 {
		t.Fatalf("%d classes, want 8", len(tcbClasses))
	}
	for _, c := range tcbClasses {
		s := string(c)
		if !strings.HasPrefix(s, "attestation_") || strings.Trim(s, "abcdefghijklmnopqrstuvwxyz_") != "" || seen[c] {
			t.Errorf("class %q: not a distinct attestation_ snake_case class", s)
		}
		seen[c] = true
	}
}
