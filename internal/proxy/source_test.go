package proxy

import (
	"net"
	"testing"
)

func TestSourceKey(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1":            "127.0.0.1",
		"::ffff:192.0.2.7":     "192.0.2.7",
		"2001:db8:1:2:3:4:5:6": "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::1": "2001:db8:1:2::/64",
		"2001:db8:1:3::1":      "2001:db8:1:3::/64",
		"::1":                  "::/64",
	} {
		if got := sourceKey(net.ParseIP(in)); got != want {
			t.Errorf("sourceKey(%s) = %s, want %s", in, got, want)
		}
	}
}
