package pgtls_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/pgtls"
)

// libpqMessage returns psql's error without its "psql: error: " prefix.
func libpqMessage(r pgtest.PsqlResult) string {
	return strings.TrimPrefix(strings.TrimSpace(r.Stderr), "psql: error: ")
}

// TestRequirePeer compares requirepeer with libpq 18 on a real server's
// Unix socket, whose peer is the OS user the server runs as (postgres).
func TestRequirePeer(t *testing.T) {
	s := pgtest.Start(t, pgtest.Options{})
	sock := fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres", s.SocketDir, s.Port)
	tcp := s.DSN("sslmode=disable")
	tests := []struct {
		dsn  string
		want failure.Class
	}{
		{sock + " requirepeer=postgres", failure.OK},
		{sock + " requirepeer=root", failure.PeerMismatch},
		{sock + " requirepeer=''", failure.OK},                 // empty: no check, as in libpq
		{tcp + " requirepeer=root", failure.OK},                // TCP: libpq checks only Unix sockets
		{sock + " requirepeer=Postgres", failure.PeerMismatch}, // exact, case-sensitive
		// A failed check ends the whole attempt: the TCP host after the socket is not tried.
		{fmt.Sprintf("host=%s,127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable requirepeer=root", s.SocketDir, s.Port), failure.PeerMismatch},
	}
	for _, tt := range tests {
		home := pgtest.EmptyHome(t)
		env := map[string]string{"HOME": home}
		lib := pgtest.Psql18(t, tt.dsn, env)
		cfg, err := connstring.ParseWithEnv(tt.dsn, env, home)
		if err != nil {
			t.Fatalf("%s: %v", tt.dsn, err)
		}
		got := connectWith(t, cfg, nil)
		if (got.err == nil) != lib.OK {
			t.Errorf("%s: pgtrust connected=%v (%v), libpq 18 connected=%v (%s)", tt.dsn, got.err == nil, got.err, lib.OK, libpqMessage(lib))
			continue
		}
		if c := failure.ClassOf(got.err); c != tt.want {
			t.Errorf("%s: class %s, want %s: %v", tt.dsn, c, tt.want, got.err)
			continue
		}
		if got.err != nil {
			fe, _ := failure.As(got.err)
			if fe.Message != libpqMessage(lib) {
				t.Errorf("%s:\n pgtrust %q\n libpq18 %q", tt.dsn, fe.Message, libpqMessage(lib))
			}
			if !strings.Contains(fe.Evidence, `runs as OS user "postgres"`) {
				t.Errorf("evidence %q does not name the peer", fe.Evidence)
			}
		}
	}
}

// The same check through Dial (the proxy's path) and DialAddress (cancel requests).
func TestRequirePeerDial(t *testing.T) {
	s := pgtest.Start(t, pgtest.Options{})
	cfg, err := connstring.ParseWithEnv(fmt.Sprintf("host=%s port=%d requirepeer=nobody user=postgres", s.SocketDir, s.Port), map[string]string{}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if conn, _, err := pgtls.Dial(ctx, cfg, nil); failure.ClassOf(err) != failure.PeerMismatch {
		if conn != nil {
			conn.Close()
		}
		t.Fatalf("Dial: %v, want peer_mismatch", err)
	}
	if conn, _, err := pgtls.DialAddress(ctx, cfg, cfg.Hosts[0], cfg.Hosts[0].SocketPath(), pgtls.MethodPlaintext, nil); failure.ClassOf(err) != failure.PeerMismatch {
		if conn != nil {
			conn.Close()
		}
		t.Fatalf("DialAddress: %v, want peer_mismatch", err)
	}
}

// TestRefusedKeywords: keywords pgtrust parses but cannot apply are refused
// before any network step, with a fix, and without showing secrets; values
// that ask for nothing (the defaults) are accepted.
func TestRefusedKeywords(t *testing.T) {
	const key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
	refused := []string{
		"krbsrvname=kerberos", "gsslib=sspi", "gssdelegation=1",
		"scram_client_key=" + key, "scram_server_key=" + key,
		"oauth_issuer=https://issuer.example", "oauth_client_id=app", "oauth_client_secret=hunter2-secret", "oauth_scope=openid",
	}
	for _, kv := range refused {
		// Port 1 on loopback: any network step would fail differently.
		cfg, err := connstring.ParseWithEnv("host=127.0.0.1 port=1 sslmode=disable "+kv, map[string]string{}, t.TempDir())
		if err != nil {
			t.Fatalf("%s: parse: %v", kv, err)
		}
		for name, run := range map[string]func() error{
			"Connect": func() error { _, _, err := pgtls.Connect(context.Background(), cfg, nil); return err },
			"Dial":    func() error { _, _, err := pgtls.Dial(context.Background(), cfg, nil); return err },
		} {
			err := run()
			fe, ok := failure.As(err)
			if !ok || fe.Class != failure.ConfigInvalid || fe.Fix == "" || !strings.Contains(fe.Message, "is not supported by pgtrust") {
				t.Errorf("%s %s: %v, want config_invalid with a fix", name, kv, err)
				continue
			}
			if strings.Contains(fe.Detail(), "hunter2") || strings.Contains(fe.Detail(), key) {
				t.Errorf("%s: the error shows the secret: %s", kv, fe.Detail())
			}
		}
	}
	s := pgtest.Start(t, pgtest.Options{})
	for _, kv := range []string{"krbsrvname=postgres", "gsslib=gssapi", "gssdelegation=0", "oauth_scope=''", "gssencmode=prefer", "sslcompression=1"} {
		cfg, err := connstring.ParseWithEnv(s.DSN("sslmode=disable "+kv), map[string]string{}, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if got := connectWith(t, cfg, nil); got.err != nil {
			t.Errorf("%s: %v", kv, got.err)
		}
	}
}

// TestProtocolVersionKeywords compares min/max_protocol_version with
// libpq 18 against PostgreSQL 15 (protocol 3.0 only) and 18 (3.2).
func TestProtocolVersionKeywords(t *testing.T) {
	for _, version := range []int{15, 18} {
		s := pgtest.Start(t, pgtest.Options{Version: version})
		for _, kv := range []string{"", "max_protocol_version=latest", "max_protocol_version=3.2", "min_protocol_version=3.2", "min_protocol_version=latest", "min_protocol_version=3.0 max_protocol_version=3.0"} {
			dsn := s.DSN("sslmode=disable " + kv)
			home := pgtest.EmptyHome(t)
			env := map[string]string{"HOME": home}
			lib := pgtest.Psql18Query(t, dsn, "SELECT 1", env)
			cfg, err := connstring.ParseWithEnv(dsn, env, home)
			if err != nil {
				t.Fatal(err)
			}
			got := connectWith(t, cfg, nil)
			if (got.err == nil) != lib.OK {
				t.Errorf("PostgreSQL %d, %q: pgtrust %v, libpq 18 ok=%v %s", version, kv, got.err, lib.OK, libpqMessage(lib))
			}
		}
	}
}
