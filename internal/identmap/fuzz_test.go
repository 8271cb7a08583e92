package identmap

import (
	"fmt"
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/failure"
)

// FuzzParseMapFile checks that no map text panics or takes long (inputs are
// bounded so each execution is cheap and -fuzztime Nx runs are predictable),
// that every refusal is a config_invalid failure naming a line that exists,
// and that every accepted file compiles and answers Allowed.
func FuzzParseMapFile(f *testing.F) {
	for _, seed := range []string{
		"",
		"alice alice",
		"# c\n\n/^(.*)@example\\.com$ \\1\n",
		`"a b" "c""d" # x`,
		"a \\\nb",
		"a,b c",
		"@inc r",
		"include x",
		`/^(a)?b$ \1`,
		"/\\bx y",
		`"unterminated`,
		"m a b",
		"x /^app_",
		"x +g",
		"spiffe://td/ns/a/sa/b api\r\n",
	} {
		f.Add(seed, "alice@example.com", "alice")
	}
	f.Fuzz(func(t *testing.T, text, identity, role string) {
		if len(text) > 4096 || len(identity) > 256 || len(role) > 256 {
			return
		}
		rules, err := ParseMapFile(text)
		if err != nil {
			fe, ok := failure.As(err)
			if !ok || fe.Class != failure.ConfigInvalid || fe.Evidence == "" || fe.Fix == "" {
				t.Fatalf("refusal is not a complete config_invalid failure: %#v", err)
			}
			var n int
			if _, serr := fmt.Sscanf(fe.Message, "identity map line %d:", &n); serr != nil || n < 1 || n > strings.Count(text, "\n")+1 {
				t.Fatalf("refusal names no line of the text: %v", err)
			}
			return
		}
		m, err := NewMap(rules)
		if err != nil {
			t.Fatalf("ParseMapFile accepted rules NewMap refuses: %v", err)
		}
		if m.Len() != len(rules) {
			t.Fatalf("Len = %d, want %d", m.Len(), len(rules))
		}
		if got, ok := m.Allowed([]string{identity}, role); ok && got != identity {
			t.Fatalf("Allowed returned identity %q, want %q", got, identity)
		}
		for _, r := range rules {
			if r.Identity == "" || r.Role == "" {
				t.Fatalf("accepted an empty field: %+v", r)
			}
		}
	})
}
