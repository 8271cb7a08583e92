package paramsync

import (
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgtest"
)

// reportedByVersion is what the servers send at startup, measured: PG 16
// added scram_iterations, PG 18 search_path.
var reportedByVersion = map[int][]string{
	15: {"DateStyle", "IntervalStyle", "TimeZone", "application_name", "client_encoding",
		"default_transaction_read_only", "in_hot_standby", "integer_datetimes", "is_superuser",
		"server_encoding", "server_version", "session_authorization", "standard_conforming_strings"},
}

func init() {
	reportedByVersion[18] = append(append([]string(nil), reportedByVersion[15]...), "scram_iterations", "search_path")
	sort.Strings(reportedByVersion[18])
}

func TestReportedParameters(t *testing.T) {
	eachVersion(t, func(t *testing.T, s *pgtest.Server) {
		w := dialWire(t, s, nil)
		var got []string
		for n := range w.params {
			got = append(got, n)
		}
		sort.Strings(got)
		if !reflect.DeepEqual(got, reportedByVersion[s.Version]) {
			t.Fatalf("reported at startup:\n got %v\nwant %v", got, reportedByVersion[s.Version])
		}
		known := map[string]bool{}
		for _, n := range append(append([]string(nil), Replayed...), Informational...) {
			known[n] = true
		}
		for _, n := range got {
			if !known[n] {
				t.Errorf("%s is reported but neither Replayed nor Informational", n)
			}
		}
		// Replayed means a client can SET it: context "user" for every one the server has.
		list := make([]string, len(Replayed))
		for i, n := range Replayed {
			list[i] = QuoteLiteral(n)
		}
		bad := w.value("SELECT count(*) FILTER (WHERE context <> 'user') || '/' || count(*) FROM pg_settings WHERE name IN (" + strings.Join(list, ",") + ")")
		want := map[int]string{15: "0/8", 18: "0/9"}[s.Version] // search_path is a setting on 15 too; scram_iterations from 16
		if bad != want {
			t.Fatalf("replayed parameters not user-settable / present: %s, want %s", bad, want)
		}
	})
}

// hostileSearchPath uses every kind of name that breaks naive quoting.
const hostileSearchPath = `"MySchema", "we,ird", "quo""te", "back\slash", "Ünïcode ☃", "sp ace", "$user", public`

func hostileSets(version int) []string {
	sets := []string{
		`SET application_name = 'it''s \ a, "test" ; x'`,
		`SET TimeZone = 'America/New_York'`,
		`SET IntervalStyle = iso_8601`,
		`SET DateStyle = 'SQL, DMY'`,
		`SET default_transaction_read_only = on`,
		`SET standard_conforming_strings = off`,
	}
	if version >= 18 {
		sets = append(sets, `SET search_path = `+hostileSearchPath, `SET scram_iterations = 5000`)
	}
	return sets
}

// TestPlanMakesServerMatch: a client session with hostile values; a fresh
// server connection gets Plan's queries; afterwards it reports exactly the
// client's values, SHOW and current_schemas agree, and a second Plan is empty.
func TestPlanMakesServerMatch(t *testing.T) {
	eachVersion(t, func(t *testing.T, s *pgtest.Server) {
		a := dialWire(t, s, nil) // the client's own session, as if unpooled
		c, err := NewClient(map[string]string{"user": "app", "database": "postgres"}, a.params)
		if err != nil {
			t.Fatal(err)
		}
		c.Reconcile(a.params) // what the client was sent at startup
		for _, q := range hostileSets(s.Version) {
			for n, v := range statusOf(a.mustQuery(q)) {
				c.Observe(n, v) // forwarded ParameterStatus
			}
		}
		b := dialWire(t, s, nil) // a pooled server connection with defaults
		// A previous client left standard_conforming_strings on and
		// something else off: the E'' literals must not care.
		b.mustQuery(`SET standard_conforming_strings = on`)
		queries, err := c.Plan(b.params)
		if err != nil {
			t.Fatal(err)
		}
		if len(queries) != 1 {
			t.Fatalf("want one query (encodings agree), got %q", queries)
		}
		for _, q := range queries {
			b.mustQuery(q)
		}
		for _, n := range Replayed {
			av, aok := a.params[n]
			if bv := b.params[n]; aok && av != bv {
				t.Errorf("%s: server %q, client %q", n, bv, av)
			}
		}
		shows := []string{"application_name", "TimeZone", "IntervalStyle", "DateStyle", "default_transaction_read_only", "standard_conforming_strings"}
		if s.Version >= 18 {
			shows = append(shows, "search_path", "scram_iterations")
			if got, want := b.value("SELECT current_schemas(false)::text"), a.value("SELECT current_schemas(false)::text"); got != want {
				t.Errorf("current_schemas: server %s, client %s", got, want)
			}
			if got := b.value("SELECT current_schemas(false)::text"); got != `{MySchema,"we,ird","quo\"te","back\\slash","Ünïcode ☃","sp ace",public}` {
				t.Errorf("current_schemas on the synced server: %s", got)
			}
		}
		for _, n := range shows {
			if got, want := b.value("SHOW "+n), a.value("SHOW "+n); got != want {
				t.Errorf("SHOW %s: server %q, client %q", n, got, want)
			}
		}
		again, err := c.Plan(b.params)
		if err != nil || again != nil {
			t.Fatalf("second Plan: %q, %v; want nothing", again, err)
		}
		// Minimal: one difference, one set_config.
		b.mustQuery(`SET TimeZone = 'UTC'`)
		one, _ := c.Plan(b.params)
		if len(one) != 1 || strings.Count(one[0], "set_config") != 1 || !strings.Contains(one[0], "'TimeZone'") {
			t.Fatalf("one difference: %q", one)
		}
		b.mustQuery(one[0])
		if b.params["TimeZone"] != "America/New_York" {
			t.Fatalf("TimeZone after sync: %q", b.params["TimeZone"])
		}
	})
}

// TestPlanExactRawValue: set_config can store a search_path SET would
// normalise (odd spacing, a semicolon): Plan reproduces the bytes, so the
// comparison settles instead of setting it again on every transaction.
func TestPlanExactRawValue(t *testing.T) {
	eachVersion(t, func(t *testing.T, s *pgtest.Server) {
		a := dialWire(t, s, nil)
		c, _ := NewClient(nil, a.params)
		c.Reconcile(a.params)
		name, raw := "application_name", `x';SELECT 1;--\`
		if s.Version >= 18 {
			name, raw = "search_path", `a;b ,   "X""y"  ,public`
		}
		for n, v := range statusOf(a.mustQuery("SELECT set_config(" + QuoteLiteral(name) + ", " + QuoteLiteral(raw) + ", false)")) {
			c.Observe(n, v)
		}
		if a.params[name] != raw {
			t.Fatalf("server stored %q, want %q", a.params[name], raw)
		}
		b := dialWire(t, s, nil)
		b.mustQuery(`SET standard_conforming_strings = off`)
		qs, err := c.Plan(b.params)
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range qs {
			b.mustQuery(q)
		}
		if b.params[name] != raw {
			t.Fatalf("%s after sync: %q, want %q", name, b.params[name], raw)
		}
		// standard_conforming_strings itself was synced back to on.
		if b.params["standard_conforming_strings"] != "on" {
			t.Fatalf("standard_conforming_strings: %q", b.params["standard_conforming_strings"])
		}
		if again, _ := c.Plan(b.params); again != nil {
			t.Fatalf("second Plan: %q", again)
		}
	})
}

// TestPlanClientEncoding: a LATIN1 client; its values are in LATIN1 and the
// encoding switch must come first, in its own query.
func TestPlanClientEncoding(t *testing.T) {
	eachVersion(t, func(t *testing.T, s *pgtest.Server) {
		a := dialWire(t, s, map[string]string{"client_encoding": "latin1"})
		c, err := NewClient(map[string]string{"client_encoding": "latin1"}, dialWire(t, s, nil).params)
		if err != nil {
			t.Fatal(err)
		}
		if a.params["client_encoding"] != "LATIN1" {
			t.Fatalf("client_encoding %q", a.params["client_encoding"])
		}
		c.Reconcile(a.params)
		if v, _ := c.Want("client_encoding"); v != "LATIN1" {
			t.Fatalf("want after Reconcile: %q (the server's normalised spelling)", v)
		}
		if s.Version >= 18 {
			// "Über" in LATIN1 bytes: Ü is 0xDC.
			for n, v := range statusOf(a.mustQuery("SET search_path = \"\xdcber\", public")) {
				c.Observe(n, v)
			}
			if a.params["search_path"] != "\"\xdcber\", public" {
				t.Fatalf("search_path as the LATIN1 client sees it: %q", a.params["search_path"])
			}
		}
		b := dialWire(t, s, nil)
		qs, err := c.Plan(b.params)
		if err != nil {
			t.Fatal(err)
		}
		want := 1
		if s.Version >= 18 {
			want = 2
		}
		if len(qs) != want || !strings.Contains(qs[0], "'client_encoding'") || strings.Count(qs[0], "set_config") != 1 {
			t.Fatalf("queries: %q", qs)
		}
		for _, q := range qs {
			b.mustQuery(q)
		}
		if b.params["client_encoding"] != "LATIN1" {
			t.Fatalf("client_encoding after sync %q", b.params["client_encoding"])
		}
		if s.Version >= 18 {
			if b.params["search_path"] != a.params["search_path"] {
				t.Fatalf("search_path: server %q, client %q", b.params["search_path"], a.params["search_path"])
			}
			if got := b.value("SELECT current_schemas(false)::text"); got != "{\xdcber,public}" {
				t.Fatalf("current_schemas %q", got)
			}
		}
		if again, _ := c.Plan(b.params); again != nil {
			t.Fatalf("second Plan: %q", again)
		}
	})
}

// TestPlanSJIS: in SJIS "表" is 0x95 0x5C; escaping bytes would double the
// 0x5C and the server, after converting, would see "表\" and a broken
// literal. The value must arrive intact (search_path is reported on 18).
func TestPlanSJIS(t *testing.T) {
	eachVersion(t, func(t *testing.T, s *pgtest.Server) {
		a := dialWire(t, s, map[string]string{"client_encoding": "SJIS"})
		c, _ := NewClient(map[string]string{"client_encoding": "SJIS"}, dialWire(t, s, nil).params)
		c.Reconcile(a.params)
		name, set := "application_name", "SET application_name = 'x'" // application_name keeps only ASCII
		if s.Version >= 18 {
			// set_config keeps the raw string: 表 then a quote and SQL, so
			// a literal broken by the trail byte would run it.
			name, set = "search_path", "SELECT set_config('search_path', '\x95\x5c'';SELECT/**/1;--,\"\x95\x5c\",public', false)"
		}
		for n, v := range statusOf(a.mustQuery(set)) {
			c.Observe(n, v)
		}
		b := dialWire(t, s, nil)
		qs, err := c.Plan(b.params)
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range qs {
			b.mustQuery(q)
		}
		if b.params[name] != a.params[name] || b.params["client_encoding"] != "SJIS" {
			t.Fatalf("%s: server %q, client %q (%s)", name, b.params[name], a.params[name], b.params["client_encoding"])
		}
		if s.Version >= 18 {
			if !strings.Contains(qs[1], "convert_from") || strings.Contains(qs[1], "\x95") {
				t.Fatalf("non-ASCII value not sent as hex: %q", qs[1])
			}
			if got := b.value("SELECT current_schemas(false)::text"); got != "{\x95\x5c,public}" {
				t.Fatalf("current_schemas %q", got)
			}
		}
		if again, _ := c.Plan(b.params); again != nil {
			t.Fatalf("second Plan: %q", again)
		}
	})
}

// TestStartupParameters: values from the startup packet (directly and in
// options) are applied and come back as the server normalises them, the same
// a direct connection with that packet would have been sent.
func TestStartupParameters(t *testing.T) {
	eachVersion(t, func(t *testing.T, s *pgtest.Server) {
		startup := map[string]string{
			"DateStyle": "sql, dmy",
			"options":   `-c TimeZone=Europe/Paris --application-name=it\'s\ a\ \\test -cIntervalStyle=sql_standard -c default-transaction-read-only=on`,
		}
		if s.Version >= 18 {
			startup["search_path"] = `"MySchema", public`
		}
		direct := dialWire(t, s, startup)
		b := dialWire(t, s, nil)
		c, err := NewClient(startup, b.params)
		if err != nil {
			t.Fatal(err)
		}
		qs, err := c.Plan(b.params)
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range qs {
			b.mustQuery(q)
		}
		sent := map[string]string{}
		for _, ps := range c.Reconcile(b.params) {
			sent[ps.Name] = ps.Value
		}
		if !reflect.DeepEqual(sent, direct.params) {
			t.Fatalf("sent to the client:\n%v\na direct connection got:\n%v", sent, direct.params)
		}
		if sent["application_name"] != `it's a \test` || sent["DateStyle"] != "SQL, DMY" {
			t.Fatalf("normalised values: %q %q", sent["application_name"], sent["DateStyle"])
		}
		if again := c.Reconcile(b.params); again != nil {
			t.Fatalf("second Reconcile: %v", again)
		}
		if again, _ := c.Plan(b.params); again != nil {
			t.Fatalf("second Plan: %q", again)
		}
	})
}

// NeedsServer lets a pool greet without a server connection only when the
// greeting it builds (Greeting) is what PostgreSQL itself sends: checked
// against direct connections for application_name values PostgreSQL keeps
// and ones it changes, and for other parameters.
func TestNeedsServerGreetingMatchesServer(t *testing.T) {
	eachVersion(t, func(t *testing.T, s *pgtest.Server) {
		defaults := dialWire(t, s, nil).params
		for _, tc := range []struct {
			startup map[string]string
			needs   bool
		}{
			{map[string]string{}, false},
			{map[string]string{"application_name": "bench"}, false},
			{map[string]string{"application_name": `it's a \test "x" ab` + strings.Repeat("long", 11)}, false}, // 63 bytes
			{map[string]string{"application_name": strings.Repeat("long", 16)}, true},                          // PostgreSQL keeps 63
			{map[string]string{"options": "--application-name=via-options"}, false},
			{map[string]string{"application_name": "b\u00e9"}, true},
			{map[string]string{"application_name": "tab\there"}, true},
			{map[string]string{"DateStyle": "sql, dmy"}, true},
			{map[string]string{"application_name": "bench", "TimeZone": "Europe/Paris"}, true},
		} {
			c, err := NewClient(tc.startup, defaults)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.NeedsServer(defaults); got != tc.needs {
				t.Errorf("%q: NeedsServer %v, want %v", tc.startup, got, tc.needs)
				continue
			}
			if tc.needs {
				continue
			}
			sent := map[string]string{}
			for _, ps := range c.Greeting(defaults) {
				sent[ps.Name] = ps.Value
			}
			if direct := dialWire(t, s, tc.startup).params; !reflect.DeepEqual(sent, direct) {
				t.Errorf("%q: greeting without a server:\n%v\na direct connection got:\n%v", tc.startup, sent, direct)
			}
		}
	})
}

func TestStartupRefusals(t *testing.T) {
	eachVersion(t, func(t *testing.T, s *pgtest.Server) {
		def := dialWire(t, s, nil).params
		for _, startup := range []map[string]string{
			{"work_mem": "8MB"},
			{"options": "-c work_mem=8MB"},
			{"options": "-c statement_timeout=0 -c DateStyle=ISO"},
			{"replication": "database"},
		} {
			_, err := NewClient(startup, def)
			h, ok := err.(*Hazard)
			if !ok || h.Kind != StartupParameter {
				t.Fatalf("%v: %v", startup, err)
			}
			if f, ok := failure.As(err); !ok || f.Class != failure.ConfigInvalid || failure.ClassOf(err) != failure.ConfigInvalid {
				t.Fatalf("%v: not classified: %v", startup, err)
			}
			if e := h.ErrorResponse(); e.Code != "0A000" || !strings.Contains(e.Message, "work_mem") && !strings.Contains(e.Message, "statement_timeout") && !strings.Contains(e.Message, "replication") {
				t.Fatalf("error response %+v", e)
			}
		}
		// pgJDBC's startup packet, with extra_float_digits ignored.
		jdbc := map[string]string{"user": "app", "database": "postgres", "client_encoding": "UTF8", "DateStyle": "ISO",
			"TimeZone": "UTC", "extra_float_digits": "2", "application_name": "PostgreSQL JDBC Driver", "options": "-c Extra_Float_Digits=3"}
		if _, err := NewClient(jdbc, def, "EXTRA_FLOAT_DIGITS"); err != nil {
			t.Fatalf("jdbc with extra_float_digits ignored: %v", err)
		}
		if _, err := NewClient(jdbc, def); err == nil {
			t.Fatal("jdbc without the ignore list accepted")
		}
		for _, opts := range []string{"-B 10", "-c", "-c novalue", "--=x"} {
			_, err := NewClient(map[string]string{"options": opts}, def)
			if failure.ClassOf(err) != failure.ConfigInvalid {
				t.Fatalf("options %q: %v", opts, err)
			}
		}
		// search_path at startup: carried on 18, refused on 15 (not reported there).
		// Without defaults the client could only inherit a server's leftovers.
		if _, err := NewClient(nil, nil); failure.ClassOf(err) != failure.ConfigInvalid {
			t.Fatalf("no defaults: %v", err)
		}
		c, err := NewClient(map[string]string{"options": "-c search_path=public"}, def)
		if err != nil {
			t.Fatal(err)
		}
		b := dialWire(t, s, nil)
		_, err = c.Plan(b.params)
		if s.Version >= 18 && err != nil {
			t.Fatalf("PG %d: %v", s.Version, err)
		}
		if h, ok := err.(*Hazard); s.Version < 18 && (!ok || h.Kind != StartupParameter || h.Name != "search_path") {
			t.Fatalf("PG %d: %v", s.Version, err)
		}
	})
}

// TestReconcileInformational: a server that differs in what the client
// cannot set (another server version after a failover, is_superuser) is
// announced to the client; equal values are not.
func TestReconcileInformational(t *testing.T) {
	c, err := NewClient(nil, map[string]string{"client_encoding": "UTF8", "DateStyle": "ISO, MDY", "TimeZone": "UTC"})
	if err != nil {
		t.Fatal(err)
	}
	first := c.Reconcile(map[string]string{"server_version": "15.18", "in_hot_standby": "off", "TimeZone": "UTC"})
	if len(first) != 3 {
		t.Fatalf("first: %v", first)
	}
	got := c.Reconcile(map[string]string{"server_version": "18.4", "in_hot_standby": "off", "TimeZone": "UTC"})
	if len(got) != 1 || *got[0] != (pgproto3.ParameterStatus{Name: "server_version", Value: "18.4"}) {
		t.Fatalf("after failover: %v", got)
	}
	if c.Params()["server_version"] != "18.4" {
		t.Fatal("not recorded")
	}
}

func TestQuoting(t *testing.T) {
	for in, want := range map[string]string{
		``:       `E''`,
		`a'b`:    `E'a''b'`,
		`a\b`:    `E'a\\b'`,
		`\'`:     `E'\\'''`,
		"Ü ☃":    "E'Ü ☃'",
		`"q", x`: `E'"q", x'`,
	} {
		if got := QuoteLiteral(in); got != want {
			t.Errorf("QuoteLiteral(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestParseOptions(t *testing.T) {
	got, err := ParseOptions(` -c a=1   -cb-c=x\ y --d-e=\\z	-c f=`)
	want := [][2]string{{"a", "1"}, {"b_c", "x y"}, {"d_e", `\z`}, {"f", ""}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, %v", got, err)
	}
	if got, err := ParseOptions("-c application_name=\xdc\xff"); err != nil || got[0][1] != "\xdc\xff" {
		t.Fatalf("bytes not kept: %q, %v", got, err)
	}
	if got, err := ParseOptions(""); err != nil || got != nil {
		t.Fatalf("empty: %v %v", got, err)
	}
}

// InSync is true exactly when Plan has nothing to send and Reconcile
// nothing to tell: the pool's shortcut must never skip either.
func TestInSyncAgreesWithPlanAndReconcile(t *testing.T) {
	defaults := map[string]string{"client_encoding": "UTF8", "DateStyle": "ISO, MDY", "TimeZone": "UTC",
		"application_name": "", "is_superuser": "off", "server_version": "15.18"}
	with := func(k, v string) map[string]string {
		m := map[string]string{}
		for n, x := range defaults {
			m[n] = x
		}
		m[k] = v
		return m
	}
	for _, tc := range []struct {
		name    string
		startup map[string]string
		observe [][2]string
		server  map[string]string
	}{
		{"fresh, defaults", nil, nil, defaults},
		{"fresh, server SET by another client", nil, nil, with("DateStyle", "German, DMY")},
		{"client SET, server default", nil, [][2]string{{"DateStyle", "German, DMY"}}, defaults},
		{"client SET, server the same", nil, [][2]string{{"DateStyle", "German, DMY"}}, with("DateStyle", "German, DMY")},
		{"startup application_name, server default", map[string]string{"application_name": "bench"}, nil, defaults},
		{"startup application_name, server set", map[string]string{"application_name": "bench"}, nil, with("application_name", "bench")},
		{"informational differs", nil, nil, with("is_superuser", "on")},
		{"server reports one more", nil, nil, with("search_path", "public")},
	} {
		c, err := NewClient(tc.startup, defaults)
		if err != nil {
			t.Fatal(err)
		}
		c.Greeting(defaults)
		for _, kv := range tc.observe {
			c.Observe(kv[0], kv[1])
		}
		in := c.InSync(tc.server)
		plan, _ := c.Plan(tc.server)
		// Reconcile changes the client: ask a copy.
		d, _ := NewClient(tc.startup, defaults)
		d.Greeting(defaults)
		for _, kv := range tc.observe {
			d.Observe(kv[0], kv[1])
		}
		msgs := d.Reconcile(tc.server)
		if need := len(plan) > 0 || len(msgs) > 0; in == need {
			t.Errorf("%s: InSync %v, Plan %q, Reconcile %d messages", tc.name, in, plan, len(msgs))
		}
	}
}
