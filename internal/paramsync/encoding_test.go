package paramsync

import (
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgtest"
)

var testDefaults = map[string]string{"client_encoding": "UTF8", "DateStyle": "ISO, MDY", "TimeZone": "UTC",
	"IntervalStyle": "postgres", "standard_conforming_strings": "on", "application_name": ""}

// TestEncodingRefused: a client_encoding that is not a plain name never
// reaches SQL, from the startup packet, options, or a value observed later.
func TestEncodingRefused(t *testing.T) {
	for _, bad := range []string{"UTF8'; SELECT 1; --", "", "UTF 8", `LATIN1\`, "Ü", strings.Repeat("a", 65), "SJIS\x00"} {
		for _, startup := range []map[string]string{
			{"client_encoding": bad},
			{"options": "-c client_encoding=" + strings.NewReplacer(`\`, `\\`, " ", `\ `).Replace(bad)},
		} {
			_, err := NewClient(startup, testDefaults)
			if failure.ClassOf(err) != failure.ConfigInvalid {
				t.Errorf("%q via %v: %v", bad, startup, err)
				continue
			}
			if f, ok := failure.As(err); !ok || f.Fix == "" || f.Evidence == "" {
				t.Errorf("%q: %#v", bad, err)
			}
		}
		c, err := NewClient(nil, testDefaults)
		if err != nil {
			t.Fatal(err)
		}
		c.Observe("client_encoding", bad)
		if _, err := c.Plan(testDefaults); failure.ClassOf(err) != failure.ConfigInvalid {
			t.Errorf("%q observed: Plan %v", bad, err)
		}
	}
	for _, good := range []string{"UTF8", "latin1", "ISO-8859-1", "EUC_JP", "WIN1252", strings.Repeat("a", 64)} {
		if _, err := NewClient(map[string]string{"client_encoding": good}, testDefaults); err != nil {
			t.Errorf("%q: %v", good, err)
		}
	}
}

// TestEncodingAliasOnServer: the accepted names include the aliases the
// server knows (ISO-8859-1 is LATIN1 there), so the rule refuses nothing a
// direct connection accepts that a plain name can spell.
func TestEncodingAliasOnServer(t *testing.T) {
	eachVersion(t, func(t *testing.T, s *pgtest.Server) {
		srv := dialWire(t, s, nil)
		c, err := NewClient(map[string]string{"client_encoding": "ISO-8859-1"}, srv.params)
		if err != nil {
			t.Fatal(err)
		}
		qs, err := c.Plan(srv.params)
		if err != nil || len(qs) != 1 {
			t.Fatalf("%v %v", qs, err)
		}
		srv.mustQuery(qs[0])
		if srv.params["client_encoding"] != "LATIN1" {
			t.Fatalf("client_encoding %q", srv.params["client_encoding"])
		}
	})
}
