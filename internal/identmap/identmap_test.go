package identmap

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

// certWith issues a client certificate from a fresh CA with the given
// subject attributes (CNs in order), DNS SANs and raw URI SANs. The SAN
// extension is built by hand so the URIs are stored byte for byte (a
// template's URIs would be re-rendered by net/url).
func certWith(t *testing.T, cns []string, dns []string, uris []string) *x509.Certificate {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "identmap test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var names []pkix.AttributeTypeAndValue
	for _, cn := range cns {
		names = append(names, pkix.AttributeTypeAndValue{Type: oidCommonName, Value: cn})
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{ExtraNames: names},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if len(dns)+len(uris) > 0 {
		var raw []asn1.RawValue
		for _, d := range dns {
			raw = append(raw, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 2, Bytes: []byte(d)})
		}
		for _, u := range uris {
			raw = append(raw, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte(u)})
		}
		val, err := asn1.Marshal(raw)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Value: val}}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestIdentitiesSPIFFE(t *testing.T) {
	const id = "spiffe://prod.example.org/ns/payments/sa/api"
	cert := certWith(t, []string{"api"}, nil, []string{id})
	if got := Identities(cert, []Source{SourceURI}); !reflect.DeepEqual(got, []string{id}) {
		t.Fatalf("Identities = %q, want %q", got, id)
	}
	// Exactly as signed: net/url would drop the empty fragment.
	const odd = "spiffe://prod.example.org/a%2Fb#"
	cert = certWith(t, nil, nil, []string{odd, "https://x.example/p"})
	if u := cert.URIs[0].String(); u == odd {
		t.Fatalf("test premise: net/url renders %q unchanged", odd)
	}
	if got := Identities(cert, []Source{SourceURI}); !reflect.DeepEqual(got, []string{odd, "https://x.example/p"}) {
		t.Fatalf("Identities = %q, want the raw URIs in certificate order", got)
	}
}

func TestIdentitiesDNSAndCN(t *testing.T) {
	ca := testpki.NewRootCA(t, "root")
	leaf := ca.Client(t, "alice", testpki.WithDNS("b.example", "a.example"))
	if got, want := Identities(leaf.Cert, DefaultSources), []string{"b.example", "a.example", "alice"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Identities = %q, want %q", got, want)
	}
	cnOnly := ca.Client(t, "bob").Cert
	if got := Identities(cnOnly, DefaultSources); !reflect.DeepEqual(got, []string{"bob"}) {
		t.Fatalf("CN-only Identities = %q", got)
	}
	if got := Identities(cnOnly, []Source{SourceURI, SourceDNS}); len(got) != 0 {
		t.Fatalf("CN-only certificate without the cn source: %q, want none", got)
	}
	if got := Identities(nil, DefaultSources); got != nil {
		t.Fatalf("nil certificate: %q", got)
	}
}

func TestIdentitiesOrder(t *testing.T) {
	cert := certWith(t, []string{"cn-name"}, []string{"dns.example"}, []string{"spiffe://td/w"})
	for _, tc := range []struct {
		order []Source
		want  []string
	}{
		{[]Source{SourceURI, SourceDNS, SourceCN}, []string{"spiffe://td/w", "dns.example", "cn-name"}},
		{[]Source{SourceCN, SourceURI}, []string{"cn-name", "spiffe://td/w"}},
		{[]Source{SourceDNS}, []string{"dns.example"}},
	} {
		if got := Identities(cert, tc.order); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("order %v: %q, want %q", tc.order, got, tc.want)
		}
	}
	// The order is also Allowed's preference when several identities map.
	m := mustMap(t, "spiffe://td/w app\ncn-name app\n")
	for _, tc := range []struct {
		order []Source
		want  string
	}{{[]Source{SourceURI, SourceCN}, "spiffe://td/w"}, {[]Source{SourceCN, SourceURI}, "cn-name"}} {
		if got, ok := m.Allowed(Identities(cert, tc.order), "app"); !ok || got != tc.want {
			t.Errorf("order %v: Allowed = %q, %v; want %q", tc.order, got, ok, tc.want)
		}
	}
}

func TestIdentitiesAmbiguousOrNULCN(t *testing.T) {
	two := certWith(t, []string{"alice", "admin"}, nil, nil)
	if got := Identities(two, []Source{SourceCN}); len(got) != 0 {
		t.Fatalf("two CNs: %q, want no CN identity", got)
	}
	nul := certWith(t, []string{"admin\x00.evil"}, []string{"ok.example"}, nil)
	if got := Identities(nul, DefaultSources); !reflect.DeepEqual(got, []string{"ok.example"}) {
		t.Fatalf("CN with NUL: %q, want only the DNS name", got)
	}
}

func TestParseSources(t *testing.T) {
	got, err := ParseSources([]string{"cn", "uri"})
	if err != nil || !reflect.DeepEqual(got, []Source{SourceCN, SourceURI}) {
		t.Fatalf("ParseSources = %v, %v", got, err)
	}
	for _, bad := range [][]string{nil, {"uri", "email"}, {"uri", "cn", "uri"}, {"URI"}, {""}} {
		_, err := ParseSources(bad)
		fe := asConfigInvalid(t, err)
		if fe.Evidence == "" || fe.Fix == "" {
			t.Errorf("%q: error without evidence or fix: %#v", bad, fe)
		}
	}
}

func asConfigInvalid(t *testing.T, err error) *failure.Error {
	t.Helper()
	var fe *failure.Error
	if !errors.As(err, &fe) || fe.Class != failure.ConfigInvalid {
		t.Fatalf("error %v: want a *failure.Error of class config_invalid", err)
	}
	return fe
}

func mustMap(t *testing.T, text string) *Map {
	t.Helper()
	rules, err := ParseMapFile(text)
	if err != nil {
		t.Fatalf("ParseMapFile(%q): %v", text, err)
	}
	m, err := NewMap(rules)
	if err != nil {
		t.Fatalf("NewMap: %v", err)
	}
	return m
}

func TestAllowed(t *testing.T) {
	for _, tc := range []struct {
		name, file, id, role string
		ok                   bool
	}{
		{"exact", "alice alice", "alice", "alice", true},
		{"exact other role", "alice alice", "alice", "bob", false},
		{"case-sensitive identity", "alice alice", "Alice", "alice", false},
		{"case-sensitive role", "alice alice", "alice", "Alice", false},
		{"no line matches", "alice alice\nbob bob", "carol", "carol", false},
		{"spiffe exact", "spiffe://td/ns/a/sa/api api", "spiffe://td/ns/a/sa/api", "api", true},
		{"regex with \\1", `/^spiffe://td/ns/([a-z]+)/sa/api$ app_\1`, "spiffe://td/ns/pay/sa/api", "app_pay", true},
		{"regex with \\1 wrong role", `/^spiffe://td/ns/([a-z]+)/sa/api$ app_\1`, "spiffe://td/ns/pay/sa/api", "app_ship", false},
		{"quoted \\1", `/^(.*)@example\.com$ "\1"`, "alice@example.com", "alice", true},
		// PostgreSQL's expressions are not anchored: these pin that.
		{"unanchored matches a substring", "/alice bob", "xx-alice-xx", "bob", true},
		{"unanchored \\1 takes the substring", `/(.*)@example\.com \1`, "alice@example.com.evil.net", "alice", true},
		{"anchored refuses a prefix", `/^(.*)@example\.com$ \1`, "alice@example.com.evil.net", "alice", false},
		{"anchored refuses a superstring", "/^alice$ bob", "alice2", "bob", false},
		{"regex case-sensitive", "/^ALICE$ bob", "alice", "bob", false},
		{"regex (?i)", "/(?i)^alice$ bob", "ALICE", "bob", true},
		{"dot matches newline", "/^a.b$ bob", "a\nb", "bob", true},
		{"dollar is end of text", "/^alice$ bob", "alice\n", "bob", false},
		{"alternation without \\1", "/^(a|ab)$ r", "ab", "r", true},
		{"literal alternation with \\1", `/^spiffe://td/(?:prod|stage)/(.*)$ \1`, "spiffe://td/stage/api", "api", true},
		{"leftmost-longest split", `/(a*)(ab)? x\1`, "aab", "xa", true},
		{"optional group 1", `/^(x)?y$ \1`, "xy", "x", true},
		{"role regex", "alice /^app_", "alice", "app_reader", true},
		{"role regex unanchored", "alice /app_", "alice", "my_app_x", true},
		{"role regex no match", "alice /^app_", "alice", "postgres", false},
		{"first line decides", "/^a app1\nalice app2", "alice", "app2", true},
		{"group 1 absent ends the search", "/^(a)?lice$ \\1x\nlice lice", "lice", "lice", false},
		{"quoted token with space", `"alice smith" "my role"`, "alice smith", "my role", true},
		{"continuation", "alice \\\n alice", "alice", "alice", true},
		{"comment and blank lines", "# header\n\n   \t\nalice alice # trailing\n", "alice", "alice", true},
		{"hash in quotes", `"a#b" r`, "a#b", "r", true},
		{"doubled quote", `"a""b" r`, `a"b`, "r", true},
		{"partly quoted", `a"b c"d r`, "ab cd", "r", true},
		{"CRLF", "alice alice\r\n", "alice", "alice", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := mustMap(t, tc.file)
			got, ok := m.Allowed([]string{tc.id}, tc.role)
			if ok != tc.ok {
				t.Fatalf("Allowed(%q, %q) = %v, want %v", tc.id, tc.role, ok, tc.ok)
			}
			if ok && got != tc.id {
				t.Fatalf("matched identity %q, want %q", got, tc.id)
			}
		})
	}
}

func TestAllowedNoIdentities(t *testing.T) {
	m := mustMap(t, "/ any")
	if _, ok := m.Allowed(nil, "any"); ok {
		t.Fatal("no identities: allowed")
	}
	if _, ok := m.Allowed([]string{"x"}, ""); ok {
		t.Fatal("empty requested role: allowed")
	}
	var nilMap *Map
	if _, ok := nilMap.Allowed([]string{"x"}, "any"); ok {
		t.Fatal("nil map: allowed")
	}
}

func TestAllowedNoAllocs(t *testing.T) {
	m := mustMap(t, "a a\n/^(.*)@example\\.com$ app_\\1\n")
	ids := []string{"zed@example.com"}
	// Only the submatch indexes of a \1 rule are allocated (the race
	// detector's instrumentation adds one).
	if n := testing.AllocsPerRun(100, func() { m.Allowed(ids, "app_zed") }); n > 2 {
		t.Errorf("allocations per Allowed with \\1: %v, want at most 2", n)
	}
	if n := testing.AllocsPerRun(100, func() { m.Allowed([]string{"b"}, "a") }); n != 0 {
		t.Errorf("allocations per Allowed without a match: %v, want 0", n)
	}
	if _, ok := m.Allowed(ids, "app_zed"); !ok {
		t.Fatal("not allowed")
	}
}

func TestMalformed(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		line       int
		token      string // what the error may show
	}{
		{"one field", "alice\n", 1, "alice"},
		{"map-name column", "\nm alice alice\n", 2, "alice"},
		{"unterminated quote", "a b\n\"alice x\n", 2, `"alice x`},
		{"comma", "a,b role", 1, "a"},
		{"include", "# x\ninclude other.conf", 2, "include"},
		{"quoted include", `"include_dir" d`, 1, "include_dir"},
		{"file inclusion", "@ids role", 1, "@ids"},
		{"bad regex", "ok ok\nok2 ok2\n/^(a role", 3, "/^(a"},
		{"backreference in regex", `/^(a)\1$ r`, 1, `/^(a)\1$`},
		{"word boundary", `/\balice r`, 1, `/\balice`},
		{"lookahead", `/^(?=a) r`, 1, `/^(?=a)`},
		{"\\1 without regex", `alice \1`, 1, `\1`},
		{"\\1 without group", `/^alice$ x\1`, 1, `x\1`},
		{"\\1 twice", `/^(a)$ \1\1`, 1, `\1\1`},
		{"\\1 in role regex", `/^(a)$ /\1`, 1, `/\1`},
		{"\\1 with ambiguous alternation", `/^(a|ab)(.*)$ \1`, 1, `/^(a|ab)(.*)$`},
		{"\\1 with alternation before group", `/^(?:a|ab)(b*)$ \1`, 1, `/^(?:a|ab)(b*)$`},
		{"\\1 with non-greedy", `/^(.*?)\.(.*)$ \1`, 1, `/^(.*?)\.(.*)$`},
		{"\\1 with repeated group", `/(a+|b+)+ x\1`, 1, `/(a+|b+)+`},
		{"\\1 with repeated group 2", `/^(a){2}$ x\1`, 1, `/^(a){2}$`},
		{"all", "alice all", 1, "all"},
		{"group", "alice +admins", 1, "+admins"},
		{"quoted group", `alice "+admins"`, 1, "+admins"},
		{"empty identity", `"" r`, 1, ""},
		{"empty role", `a ""`, 1, ""},
		{"continued line names its first line", "ok ok\nalice \\\nbob \\\ncarol", 2, "carol"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseMapFile(tc.file)
			fe := asConfigInvalid(t, err)
			detail := fe.Detail()
			if !strings.Contains(fe.Message, "line "+itoa(tc.line)+":") {
				t.Errorf("error does not name line %d: %s", tc.line, detail)
			}
			if fe.Evidence == "" || fe.Fix == "" {
				t.Errorf("no evidence or fix: %s", detail)
			}
			// Nothing of the file beyond the offending token is echoed.
			for _, f := range strings.FieldsFunc(tc.file, func(r rune) bool { return r == ' ' || r == '\n' || r == '\\' }) {
				if len(f) > 2 && !strings.Contains(tc.token, strings.Trim(f, `"`)) && strings.Contains(detail, strings.Trim(f, `"`)) &&
					!strings.Contains(tc.name, "include") && f != "role" {
					t.Errorf("error echoes %q, which is not the offending token %q: %s", f, tc.token, detail)
				}
			}
		})
	}
}

func itoa(n int) string { return big.NewInt(int64(n)).String() }

func TestNewMapRuleNumbers(t *testing.T) {
	_, err := NewMap([]Rule{{Identity: "a", Role: "a"}, {Identity: "/(", Role: "r"}})
	fe := asConfigInvalid(t, err)
	if !strings.Contains(fe.Message, "rule 2") {
		t.Fatalf("error does not name rule 2: %s", fe.Detail())
	}
	m, err := NewMap(nil)
	if err != nil || m.Len() != 0 {
		t.Fatalf("empty map: %v, %v", m, err)
	}
	if _, ok := m.Allowed([]string{"a"}, "a"); ok {
		t.Fatal("empty map allows")
	}
}

// TestMapConcurrent is meant for -race: one Map answers many goroutines.
func TestMapConcurrent(t *testing.T) {
	m := mustMap(t, "/^(.*)@example\\.com$ app_\\1\nalice /^ops_\n")
	done := make(chan bool)
	for g := range 8 {
		go func() {
			ok := true
			for i := range 500 {
				user := fmt.Sprint("u", g, "-", i)
				if _, allowed := m.Allowed([]string{user + "@example.com"}, "app_"+user); !allowed {
					ok = false
				}
				if _, allowed := m.Allowed([]string{user + "@example.com"}, "app_x"); allowed {
					ok = false
				}
			}
			done <- ok
		}()
	}
	for range 8 {
		if !<-done {
			t.Fatal("a concurrent Allowed gave a wrong answer")
		}
	}
}
