package paramsync

import "testing"

// TestParseScope: two clients differing in any one setting that changes
// what a Parse means have different scopes; equal settings (whatever their
// other parameters) give equal scopes.
func TestParseScope(t *testing.T) {
	defaults := map[string]string{"client_encoding": "UTF8", "DateStyle": "ISO, MDY", "TimeZone": "UTC",
		"IntervalStyle": "postgres", "standard_conforming_strings": "on", "application_name": "",
		"default_transaction_read_only": "off", "search_path": `"$user", public`}
	mk := func(startup map[string]string) *Client {
		t.Helper()
		c, err := NewClient(startup, defaults)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	base := mk(nil).ParseScope()
	if base == "" || mk(nil).ParseScope() != base {
		t.Fatalf("unstable scope %q", base)
	}
	if s := mk(map[string]string{"application_name": "other", "default_transaction_read_only": "on"}).ParseScope(); s != base {
		t.Fatalf("settings that do not change a Parse changed the scope: %q vs %q", s, base)
	}
	for n, v := range map[string]string{
		"client_encoding": "LATIN1", "DateStyle": "German, DMY", "IntervalStyle": "sql_standard",
		"TimeZone": "Europe/Berlin", "standard_conforming_strings": "off", "search_path": "app, public",
	} {
		c := mk(map[string]string{n: v})
		if c.ParseScope() == base {
			t.Errorf("%s=%s: same scope as the default", n, v)
		}
		// Observe brings it back: the scope follows.
		c.Observe(n, defaults[n])
		if c.ParseScope() != base {
			t.Errorf("%s back to default: %q vs %q", n, c.ParseScope(), base)
		}
	}
	// Not tracked (a server that does not report search_path): not in the scope.
	noPath := map[string]string{}
	for k, v := range defaults {
		if k != "search_path" {
			noPath[k] = v
		}
	}
	c, err := NewClient(nil, noPath)
	if err != nil {
		t.Fatal(err)
	}
	if s := c.ParseScope(); s == base || s == "" {
		t.Fatalf("scope without search_path %q", s)
	}
	// Injective: a value cannot imitate the next setting.
	a := mk(map[string]string{"TimeZone": `UTC" standard_conforming_strings="on`})
	if a.ParseScope() == base {
		t.Fatal("a crafted value collided")
	}
}
