package config

import (
	"bytes"
	"reflect"
	"testing"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/pgtrust/pgtrust/failure"
)

// FuzzParse feeds arbitrary documents to Parse and what it accepts to the
// resolver and Validate. Invariants: no panic; every error is a
// config_invalid failure.Error with a fix; every failed finding and every
// resolver error carries a class; an accepted configuration marshals to
// TOML that parses back to the same configuration.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		"",
		full,
		"[upstreams.main]\nlisten = \"127.0.0.1:6432\"\ndsn = \"host=db sslmode=verify-full sslrootcert=/nonexistent/ca.crt\"\n",
		"[upstreams.m]\nlisten = \"127.0.0.1:0\"\nunix_socket_dir = \"/nonexistent/run\"\nunix_socket_port = 65535\n[upstreams.m.settings]\nhost = \"h\"\nport = 5432\nsslsni = true\nsslpassword = \"fuzz-Secret-1\"\n",
		"[upstreams.\"a b\\u00e9\"]\nlisten = \"[::1]:6432\"\nmax_connections = 1\ndsn = \"postgresql://u:pw@h:1/db?sslmode=require\"\n[upstreams.\"a b\\u00e9\".client_tls]\ncert_file = \"/nonexistent/c\"\nkey_file = \"/nonexistent/k\"\nrequire = true\n",
		"[health]\nlisten = \"\"\nprobe_interval = \"1h2m3.5s\"\n[proxy]\nmax_startup_packet = 8\nstartup_timeout = \"1ns\"\n",
		"[log]\nformat = \"json\"\nlevel = \"DEBUG+2\"\n",
		"[upstreams.m]\nlisten = \"x:1\"\n[upstreams.m.settings]\nport = 1.5\n",
		"[upstreams.m]\nlisten = \"x:1\"\ndsn = \"host='unterminated\"\n",
		"upstreams = 1\n",
		"[proxy]\ndrain_timeout = \"-1s\"\n",
		"[upstreams.m]\nlisten = \"x:99999\"\ndsn = \"host=a\"\n[upstreams.m.settings]\n",
	} {
		f.Add([]byte(seed))
	}
	home := f.TempDir()
	env := map[string]string{"HOME": home}
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, doc []byte) {
		cfg, err := Parse(doc)
		if err != nil {
			fe, ok := failure.As(err)
			if !ok || fe.Class != failure.ConfigInvalid || fe.Fix == "" {
				t.Fatalf("Parse error is not a config_invalid failure.Error with a fix: %#v", err)
			}
			return
		}
		for _, name := range cfg.UpstreamNames() {
			if _, err := cfg.upstream(name, env); err != nil {
				if fe, ok := failure.As(err); !ok || fe.Class == "" || fe.Class == failure.OK {
					t.Fatalf("upstream %q: unclassified error %#v", name, err)
				}
			}
		}
		for _, fd := range validate(cfg, env, now) {
			switch fd.Status {
			case StatusOK, StatusWarn, StatusFail:
			default:
				t.Fatalf("finding with status %q: %+v", fd.Status, fd)
			}
			if fd.Status != StatusOK && (fd.Class == "" || fd.Class == failure.OK || fd.Message == "") {
				t.Fatalf("finding without a class or message: %+v", fd)
			}
		}

		out, err := toml.Marshal(cfg)
		if err != nil {
			t.Fatalf("an accepted configuration does not marshal: %v", err)
		}
		back, err := Parse(out)
		if err != nil {
			t.Fatalf("marshalled configuration does not parse: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(normalized(cfg), normalized(back)) {
			t.Fatalf("round trip changed the configuration:\n%#v\nvs\n%#v\nTOML:\n%s", normalized(cfg), normalized(back), out)
		}
		again, err := toml.Marshal(back)
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("marshal is not stable (%v):\n%s\nvs\n%s", err, out, again)
		}
	})
}

// normalized copies f with empty settings maps as nil: TOML cannot tell an
// absent table from an empty one.
func normalized(f *File) File {
	c := *f
	c.Upstreams = map[string]*Upstream{}
	for n, u := range f.Upstreams {
		v := *u
		if len(v.Settings) == 0 {
			v.Settings = nil
		}
		c.Upstreams[n] = &v
	}
	return c
}
