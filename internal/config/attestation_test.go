package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/testpki"
	"github.com/pgtrust/pgtrust/ratls"
)

var (
	mrtdA = strings.Repeat("ab", 48)
	mrtdB = "0x" + strings.Repeat("CD", 48)
)

func attestDoc(dsn, table string) string {
	return `
[upstreams.tee]
listen = "127.0.0.1:6440"
dsn = "` + dsn + `"

[upstreams.tee.attestation]
` + table
}

// TestAttestationParse: every key of the table reaches the ratls.Policy,
// with the defaults (UpToDate only, 5000 ms).
func TestAttestationParse(t *testing.T) {
	kms := filepath.Join(t.TempDir(), "kms.pem")
	ca := testpki.NewRootCA(t, "kms root")
	os.WriteFile(kms, ca.CertPEM, 0o644)
	f, err := Parse([]byte(attestDoc("host=db.internal sslmode=require", `
allowed_mrtds = ["`+mrtdA+`", "`+mrtdB+`"]
rtmr0 = "`+strings.Repeat("01", 48)+`"
rtmr3 = "`+strings.Repeat("03", 48)+`"
min_tee_tcb_svn = "`+strings.Repeat("00", 16)+`"
accepted_tcb_statuses = ["UpToDate", "SWHardeningNeeded"]
allowed_app_ids = ["`+strings.Repeat("aa", 20)+`"]
allowed_compose_hashes = ["`+strings.Repeat("bb", 32)+`"]
key_provider = "kms"
kms_root_ca = "`+kms+`"
allow_simulator = true
allow_debug_mode = true
collateral_dir = "/var/lib/pgtrust/collateral"
handshake_timeout_ms = 2500
`)))
	if err != nil {
		t.Fatal(err)
	}
	a := f.Upstreams["tee"].Attestation
	p, err := a.Policy("upstreams.tee.attestation")
	if err != nil {
		t.Fatal(err)
	}
	if len(p.MRTD) != 2 || p.MRTD[1] != mrtdB || p.RTMR[0] == "" || p.RTMR[1] != "" || p.RTMR[3] == "" || p.MinTEETCBSVN == "" ||
		len(p.AcceptTCBStatuses) != 2 || p.AcceptTCBStatuses[1] != ratls.StatusSWHardeningNeeded || len(p.AppID) != 1 || len(p.ComposeHash) != 1 ||
		p.KeyProvider != "kms" || p.KMSRoots == nil || !p.AllowSimulator || !p.AllowDebug || p.Collateral == nil || p.SkipTCB || p.AllowAnyMRTD {
		t.Fatalf("policy %+v", p)
	}
	if a.Timeout() != 2500*time.Millisecond {
		t.Fatalf("timeout %s", a.Timeout())
	}

	f, err = Parse([]byte(attestDoc("host=db.internal sslmode=verify-full sslrootcert=/etc/ca.crt", `
allowed_mrtds = ["`+mrtdA+`"]
pccs_url = "https://pccs.internal:8081/sgx/certification/v4/"
`)))
	if err != nil {
		t.Fatal(err)
	}
	a = f.Upstreams["tee"].Attestation
	p, err = a.Policy("k")
	if err != nil {
		t.Fatal(err)
	}
	if len(p.AcceptTCBStatuses) != 1 || p.AcceptTCBStatuses[0] != ratls.StatusUpToDate || p.Collateral == nil || a.Timeout() != 5000*time.Millisecond {
		t.Fatalf("defaults: %+v timeout %s", p, a.Timeout())
	}
	pc, err := f.ProxyConfig(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if pc.Upstreams[0].Attestation == nil || pc.Upstreams[0].AttestationTimeout != 5000*time.Millisecond {
		t.Fatalf("proxy upstream: %+v", pc.Upstreams[0])
	}
}

// TestAttestationRefused: each invalid table is refused as config_invalid
// naming the key, with evidence and a fix.
func TestAttestationRefused(t *testing.T) {
	good := `allowed_mrtds = ["` + mrtdA + `"]` + "\nskip_tcb = true\n"
	for _, tc := range []struct{ name, dsn, table, key string }{
		{"empty allowlist", "sslmode=require", "skip_tcb = true", "allowed_mrtds"},
		{"allowlist and allow_any", "sslmode=require", good + "allow_any_mrtd = true", "allow_any_mrtd"},
		{"short mrtd", "sslmode=require", `allowed_mrtds = ["abcd"]` + "\nskip_tcb = true", "allowed_mrtds[0]"},
		{"not hex", "sslmode=require", `allowed_mrtds = ["` + strings.Repeat("zz", 48) + `"]` + "\nskip_tcb = true", "allowed_mrtds[0]"},
		{"bad rtmr2", "sslmode=require", good + `rtmr2 = "12"`, "rtmr2"},
		{"bad svn", "sslmode=require", good + `min_tee_tcb_svn = "` + strings.Repeat("00", 48) + `"`, "min_tee_tcb_svn"},
		{"unknown status", "sslmode=require", good + `accepted_tcb_statuses = ["uptodate"]`, "accepted_tcb_statuses[0]"},
		{"revoked", "sslmode=require", good + `accepted_tcb_statuses = ["UpToDate", "Revoked"]`, "accepted_tcb_statuses[1]"},
		{"bad app id", "sslmode=require", good + `allowed_app_ids = ["aa"]`, "allowed_app_ids[0]"},
		{"bad compose hash", "sslmode=require", good + `allowed_compose_hashes = ["` + strings.Repeat("aa", 20) + `"]`, "allowed_compose_hashes[0]"},
		{"key provider spaces", "sslmode=require", good + `key_provider = " kms"`, "key_provider"},
		{"two sources", "sslmode=require", `allowed_mrtds = ["` + mrtdA + `"]` + "\ncollateral_dir = \"/c\"\npccs_url = \"https://p\"", "pccs_url"},
		{"source and skip", "sslmode=require", good + `collateral_dir = "/c"`, "skip_tcb"},
		{"no source", "sslmode=require", `allowed_mrtds = ["` + mrtdA + `"]`, "collateral_dir"},
		{"pccs over http", "sslmode=require", `allowed_mrtds = ["` + mrtdA + `"]` + "\npccs_url = \"http://pccs.example.com/\"", "pccs_url"},
		{"negative timeout", "sslmode=require", good + "handshake_timeout_ms = -1", "handshake_timeout_ms"},
		{"unknown key", "sslmode=require", good + "allow_debug = true", "allow_debug"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(attestDoc("host=db "+tc.dsn, tc.table)))
			e, ok := failure.As(err)
			if !ok || e.Class != failure.ConfigInvalid || e.Fix == "" || e.Evidence == "" {
				t.Fatalf("want config_invalid with evidence and fix, got %#v", err)
			}
			if !strings.Contains(e.Message, tc.key) {
				t.Fatalf("message %q does not name %s", e.Message, tc.key)
			}
		})
	}
	// http to a loopback PCCS is allowed.
	if _, err := Parse([]byte(attestDoc("host=db sslmode=require", `allowed_mrtds = ["`+mrtdA+`"]`+"\npccs_url = \"http://127.0.0.1:8081/\""))); err != nil {
		t.Fatal(err)
	}
	// kms_root_ca that does not exist: refused when the policy is built
	// (ProxyConfig, Validate), naming the key.
	f, err := Parse([]byte(attestDoc("host=db sslmode=require", good+`kms_root_ca = "/nonexistent/kms.pem"`)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Upstreams["tee"].Attestation.Policy("upstreams.tee.attestation"); failure.ClassOf(err) != failure.ConfigInvalid || !strings.Contains(err.Error(), "kms_root_ca") {
		t.Fatalf("kms_root_ca: %v", err)
	}
	found := false
	for _, fd := range validate(f, testEnv(t.TempDir()), time.Now()) {
		if fd.Check == "upstreams.tee.attestation" && fd.Status == StatusFail {
			found = true
		}
	}
	if !found {
		t.Fatal("Validate did not report the missing kms_root_ca")
	}
}

// TestAttestationSSLMode: a policy with an sslmode that may connect in
// plaintext is refused; require passes Validate without the usual
// "require verifies nothing" warning.
func TestAttestationSSLMode(t *testing.T) {
	good := `allowed_mrtds = ["` + mrtdA + `"]` + "\nskip_tcb = true\n"
	for _, mode := range []string{"disable", "allow", "prefer"} {
		f, err := Parse([]byte(attestDoc("host=db sslmode="+mode, good)))
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.upstream("tee", testEnv(t.TempDir()))
		e, ok := failure.As(err)
		if !ok || e.Class != failure.ConfigInvalid || !strings.Contains(e.Fix, "sslmode=require") || !strings.Contains(e.Message, "sslmode="+mode) {
			t.Fatalf("%s: %v", mode, err)
		}
	}
	// The environment may not weaken it either.
	f, err := Parse([]byte(attestDoc("host=db", good)))
	if err != nil {
		t.Fatal(err)
	}
	env := testEnv(t.TempDir())
	env["PGSSLMODE"] = "prefer"
	if _, err := f.upstream("tee", env); failure.ClassOf(err) != failure.ConfigInvalid {
		t.Fatalf("PGSSLMODE=prefer with attestation: %v", err)
	}
	f, err = Parse([]byte(attestDoc("host=db sslmode=require", good)))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range validate(f, testEnv(t.TempDir()), time.Now()) {
		if fd.Check == "upstreams.tee.sslmode" && fd.Status != StatusOK {
			t.Fatalf("sslmode=require with attestation: %+v", fd)
		}
		if fd.Check == "upstreams.tee.attestation" && fd.Status != StatusOK {
			t.Fatalf("attestation finding: %+v", fd)
		}
	}
}
