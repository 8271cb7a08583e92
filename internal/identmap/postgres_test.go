package identmap

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

// oracleCase is one map line, a certificate CN and a requested role, run
// through PostgreSQL's own cert authentication with map=m and through Map.
type oracleCase struct {
	line, cn, role string
	since16        bool // role expressions are PostgreSQL 16+
}

var oracleCases = []oracleCase{
	{line: "alice alice", cn: "alice", role: "alice"},
	{line: "alice alice", cn: "Alice", role: "alice"},
	{line: "alice alice", cn: "alice", role: "bob"},
	{line: `/^(.*)@example\.com$ \1`, cn: "alice@example.com", role: "alice"},
	{line: `/^(.*)@example\.com$ \1`, cn: "alice@example.com.evil", role: "alice"},
	// Not anchored: a match anywhere counts, and \1 is what the group took.
	{line: `/(.*)@example\.com \1`, cn: "alice@example.com.evil", role: "alice"},
	{line: `/alice bob`, cn: "xx-alice-xx", role: "bob"},
	{line: `/^alice$ bob`, cn: "alice2", role: "bob"},
	{line: `/^ALICE$ bob`, cn: "alice", role: "bob"},
	{line: `/(?i)^alice$ bob`, cn: "ALICE", role: "bob"},
	{line: `/^(.*)$ app_\1`, cn: "alice", role: "app_alice"},
	{line: `/^(.*)$ "\1"`, cn: "alice", role: "alice"},
	{line: `"/^ali" bob`, cn: "alice", role: "bob"}, // a quoted "/..." identity is still an expression
	{line: `/^a.b$ bob`, cn: "a\nb", role: "bob"},
	{line: `/^alice$ bob`, cn: "alice\n", role: "bob"},
	{line: "/^(a)?lice$ \\1x\nlice lice", cn: "lice", role: "lice"},
	{line: "/^a app_alice\nalice bob", cn: "alice", role: "bob"},
	{line: `"alice smith" "my role"`, cn: "alice smith", role: "my role"},
	{line: "alice \\\n  alice # continued", cn: "alice", role: "alice"},
	{line: `a"b c"d bob`, cn: "ab cd", role: "bob"},
	{line: `"a""b" bob`, cn: `a"b`, role: "bob"},
	{line: `spiffe://td/ns/a/sa/api bob`, cn: "spiffe://td/ns/a/sa/api", role: "bob"},
	// Where a greedy engine could split differently, Map takes PostgreSQL's
	// (leftmost-longest) whole match.
	{line: `/(a*)(ab)? x\1`, cn: "aab", role: "xa"},
	{line: `/(a*)(ab)? x\1`, cn: "aab", role: "xaa"},
	{line: `/(.*)@ \1`, cn: "a@b@c", role: "a@b"},
	{line: `/^(?:prod|stage)/(.*)$ \1`, cn: "stage/x", role: "x"},
	{line: `alice /^app_`, cn: "alice", role: "app_alice", since16: true},
	{line: `alice /^app_`, cn: "alice", role: "bob", since16: true},
	{line: `alice /app_`, cn: "alice", role: "my_app_x", since16: true},
	{line: `alice "/^app_"`, cn: "alice", role: "app_alice", since16: true}, // quoted: still an expression
}

// TestMatchesPostgreSQL runs every case through PostgreSQL 15 and 18 as the
// oracle: psql connects with a client certificate whose CN is the identity,
// under "hostssl ... cert map=m" with the case's lines as map m. Map must
// allow exactly what PostgreSQL allows.
func TestMatchesPostgreSQL(t *testing.T) {
	for _, version := range []int{15, 18} {
		t.Run(fmt.Sprint("PostgreSQL ", version), func(t *testing.T) {
			testAgainst(t, version)
		})
	}
}

func testAgainst(t *testing.T, version int) {
	ca := testpki.NewRootCA(t, "identmap oracle CA")
	srv := ca.Server(t)
	roles := map[string]bool{}
	for _, c := range oracleCases {
		roles[c.role] = true
	}
	var setup strings.Builder
	for r := range roles {
		fmt.Fprintf(&setup, "CREATE ROLE %q LOGIN;\n", r)
	}
	s := pgtest.Start(t, pgtest.Options{
		Version: version, SSL: true, ServerCert: srv.ChainPEM, ServerKey: srv.KeyPEM, CA: ca.CertPEM,
		HBA:   []string{"hostssl all all 127.0.0.1/32 cert map=m"},
		Setup: []string{setup.String()},
	})
	dir := t.TempDir()
	rootFile := testpki.WriteFile(t, dir, "root.crt", ca.CertPEM, 0o644)
	allowed, denied := 0, 0
	for i, c := range oracleCases {
		if c.since16 && version < 16 {
			continue
		}
		// The map file: every line gets the map name m in front (cases
		// write continued lines indented).
		var file strings.Builder
		for _, l := range strings.Split(c.line, "\n") {
			if strings.HasPrefix(l, "  ") {
				file.WriteString(l + "\n") // the rest of a continued line
				continue
			}
			file.WriteString("m " + l + "\n")
		}
		identFile := filepath.Join(s.DataDir, "pg_ident.conf")
		if err := os.WriteFile(identFile, []byte(file.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		logBefore := strings.Count(s.Log(), "was not reloaded")
		s.Reload(t)
		if strings.Count(s.Log(), "was not reloaded") != logBefore {
			t.Fatalf("case %d: PostgreSQL did not load %q:\n%s", i, file.String(), s.Log())
		}
		leaf := ca.Client(t, c.cn)
		name := fmt.Sprint("c", i)
		conn := fmt.Sprintf("host=127.0.0.1 port=%d dbname=postgres user='%s' sslmode=verify-ca sslrootcert=%s sslcert=%s sslkey=%s",
			s.Port, strings.ReplaceAll(c.role, "'", `\'`), rootFile,
			testpki.WriteFile(t, dir, name+".crt", leaf.CertPEM, 0o644),
			testpki.WriteFile(t, dir, name+".key", leaf.KeyPEM, 0o600))
		res := pgtest.Psql(t, conn, nil)
		if !res.OK && !strings.Contains(res.Stderr, "certificate authentication failed") {
			t.Fatalf("case %d: psql failed for another reason: %s", i, res.Stderr)
		}

		rules, err := ParseMapFile(c.line)
		if err != nil {
			t.Fatalf("case %d: ParseMapFile(%q): %v", i, c.line, err)
		}
		m, err := NewMap(rules)
		if err != nil {
			t.Fatalf("case %d: NewMap: %v", i, err)
		}
		_, ok := m.Allowed(Identities(leaf.Cert, []Source{SourceCN}), c.role)
		if ok != res.OK {
			t.Errorf("case %d: map %q, CN %q, role %q: Map allows %v, PostgreSQL %d allows %v", i, c.line, c.cn, c.role, ok, version, res.OK)
		}
		if res.OK {
			allowed++
		} else {
			denied++
		}
	}
	t.Logf("PostgreSQL %d: %d cases allowed, %d denied", version, allowed, denied)
	if allowed == 0 || denied == 0 {
		t.Fatalf("oracle saw allowed=%d denied=%d: both outcomes must occur", allowed, denied)
	}
}
