package connstring

import (
	"os"
	"strings"
	"testing"
)

// TestKeywordTableDocumented: docs/tls-semantics.md lists every libpq 18
// keyword with its status (applied, refused, no effect), so a keyword added
// here without a decision about it fails this test.
func TestKeywordTableDocumented(t *testing.T) {
	b, err := os.ReadFile("../docs/tls-semantics.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	start := strings.Index(doc, "## Connection keywords")
	if start < 0 {
		t.Fatal(`docs/tls-semantics.md has no "## Connection keywords" section`)
	}
	section := doc[start:]
	if end := strings.Index(section[3:], "\n## "); end >= 0 {
		section = section[:end+3]
	}
	rows := map[string]bool{}
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		cells := strings.Split(line, "|")
		for _, name := range strings.Split(cells[1], ",") {
			rows[strings.Trim(strings.TrimSpace(name), "`")] = true
		}
	}
	for _, k := range append(keywordNames(), "requiressl") {
		if !rows[k] {
			t.Errorf("keyword %q has no row in the keyword table of docs/tls-semantics.md", k)
		}
	}
}

func keywordNames() []string {
	out := make([]string, len(keywords))
	for i, k := range keywords {
		out[i] = k.name
	}
	return out
}
