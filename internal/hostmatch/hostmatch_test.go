package hostmatch

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
)

func cert(t *testing.T, cn string, dns []string, ips []string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		DNSNames:     dns,
	}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestVerify(t *testing.T) {
	tests := []struct {
		name    string
		cn      string
		dns     []string
		ips     []string
		host    string
		ok      bool
		message string
	}{
		{"dns SAN exact", "x", []string{"db.example.com"}, nil, "db.example.com", true, ""},
		{"dns SAN case-insensitive", "x", []string{"DB.Example.COM"}, nil, "db.example.com", true, ""},
		{"dns SAN mismatch ignores CN", "db.example.com", []string{"other.example.com"}, nil, "db.example.com", false,
			`server certificate for "other.example.com" does not match host name "db.example.com"`},
		{"CN only", "localhost", nil, nil, "localhost", true, ""},
		{"CN only mismatch", "localhost", nil, nil, "db", false, `server certificate for "localhost" does not match host name "db"`},
		{"IP-only SAN falls back to CN for a DNS host", "localhost", nil, []string{"127.0.0.1"}, "localhost", true, ""},
		{"IP host matches IP SAN", "x", nil, []string{"127.0.0.1"}, "127.0.0.1", true, ""},
		{"IP host matches dNSName SAN as a string", "x", []string{"127.0.0.1"}, nil, "127.0.0.1", true, ""},
		{"IP host matches CN despite dNSName SANs", "127.0.0.1", []string{"localhost"}, nil, "127.0.0.1", true, ""},
		{"IP host, IP SAN present disables CN", "127.0.0.1", nil, []string{"10.0.0.1"}, "127.0.0.1", false,
			`server certificate for "10.0.0.1" does not match host name "127.0.0.1"`},
		{"inet_aton short form", "x", nil, []string{"127.0.0.1"}, "127.1", true, ""},
		{"IPv6 SAN", "x", nil, []string{"::1"}, "::1", true, ""},
		{"IPv4 SAN does not match IPv6 host", "", nil, []string{"127.0.0.1"}, "::1", false,
			`server certificate for "127.0.0.1" does not match host name "::1"`},
		{"wildcard one label", "x", []string{"*.example.com"}, nil, "db.example.com", true, ""},
		{"wildcard not two labels", "x", []string{"*.example.com"}, nil, "a.db.example.com", false,
			`server certificate for "*.example.com" does not match host name "a.db.example.com"`},
		{"wildcard not the bare domain", "", []string{"*.example.com"}, nil, "example.com", false,
			`server certificate for "*.example.com" does not match host name "example.com"`},
		{"partial wildcard never matches", "", []string{"db*.example.com"}, nil, "db1.example.com", false,
			`server certificate for "db*.example.com" does not match host name "db1.example.com"`},
		{"wildcard CN", "*.example.com", nil, nil, "db.example.com", true, ""},
		{"no names", "", nil, nil, "db", false, "could not get server's host name from server certificate"},
		{"three names", "", []string{"a", "b", "c"}, nil, "d", false, `server certificate for "a" (and 2 other names) does not match host name "d"`},
		{"empty host", "x", nil, nil, "", false, "host name must be specified for a verified SSL connection"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Verify(cert(t, tt.cn, tt.dns, tt.ips), tt.host)
			if tt.ok {
				if err != nil {
					t.Fatalf("Verify(%q) = %v, want success", tt.host, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Verify(%q) succeeded, want %q", tt.host, tt.message)
			}
			e, ok := failure.As(err)
			if !ok || e.Class != failure.HostnameMismatch {
				t.Fatalf("class = %v, want hostname_mismatch", failure.ClassOf(err))
			}
			if e.Message != tt.message {
				t.Fatalf("message = %q, want %q", e.Message, tt.message)
			}
			if tt.host != "" && !strings.Contains(e.Evidence+e.Fix, tt.host) && e.Message != "could not get server's host name from server certificate" {
				t.Fatalf("evidence/fix do not name the host: %q / %q", e.Evidence, e.Fix)
			}
		})
	}
}

func TestParseIP(t *testing.T) {
	for host, want := range map[string]string{
		"127.0.0.1": "127.0.0.1", "127.1": "127.0.0.1", "0x7f.1": "127.0.0.1", "010.0.0.1": "8.0.0.1",
		"2130706433": "127.0.0.1", "::1": "::1", "db": "", "1.2.3.4.5": "", "256.0.0.1": "", "": "",
	} {
		ip := ParseIP(host)
		got := ""
		if ip != nil {
			got = ip.String()
		}
		if got != want {
			t.Errorf("ParseIP(%q) = %q, want %q", host, got, want)
		}
	}
}

func ExampleNameMatches() {
	fmt.Println(NameMatches("*.example.com", "db.example.com"))
	fmt.Println(NameMatches("*.example.com", "a.b.example.com"))
	fmt.Println(NameMatches("db*.example.com", "db1.example.com"))
	// Output:
	// true
	// false
	// false
}
