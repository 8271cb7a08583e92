package mcpserver

import (
	"strings"
	"testing"
)

// completable: PostgreSQL's test server cannot hold a name over 63 bytes,
// so the length bound is tested here.
func TestCompletable(t *testing.T) {
	for n, want := range map[string]bool{
		"orders": true, "Odd Schema": true, "ünïcode": true, strings.Repeat("a", 63): true,
		"": false, strings.Repeat("a", 64): false, "a\nb": false, "a\x1b[2J": false, "a\u202eb": false,
		"a\u200bb": false, "a\x7f": false, "a\xffb": false,
	} {
		if got := completable(n); got != want {
			t.Errorf("completable(%q) = %v, want %v", n, got, want)
		}
	}
}
