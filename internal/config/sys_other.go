//go:build !unix

package config

// canCreateIn cannot check in advance here; the proxy reports a failure to
// create its files when it starts.
func canCreateIn(string) error { return nil }
