package pgtls_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/testpki"
	"github.com/pgtrust/pgtrust/pgtls"
)

// recordingConn keeps the first bytes the client sends, to read the
// ClientHello's random.
type recordingConn struct {
	net.Conn
	mu   sync.Mutex
	sent bytes.Buffer
}

func (r *recordingConn) Write(p []byte) (int, error) {
	r.mu.Lock()
	if r.sent.Len() < 4096 {
		r.sent.Write(p)
	}
	r.mu.Unlock()
	return r.Conn.Write(p)
}

// clientRandom finds the ClientHello after the 8-byte SSLRequest: record
// header (5), handshake header (4), legacy version (2), then 32 random bytes.
func (r *recordingConn) clientRandom(t *testing.T) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.sent.Bytes()
	if len(b) < 8+5+4+2+32 || b[8] != 0x16 || b[8+5] != 0x01 {
		t.Fatalf("no ClientHello after the SSLRequest in % x", b[:min(len(b), 32)])
	}
	return hex.EncodeToString(b[8+5+4+2 : 8+5+4+2+32])
}

func TestSSLKeyLogFile(t *testing.T) {
	ca := testpki.NewRootCA(t, "keylog root")
	srv := ca.Server(t)
	s := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: srv.ChainPEM, ServerKey: srv.KeyPEM})
	dir := t.TempDir()
	logPath := filepath.Join(dir, "keys.log")

	connect := func(extra string) (string, *pgtls.Facts) {
		t.Helper()
		cfg, err := connstring.ParseWithEnv(s.DSN("sslmode=require "+extra), map[string]string{}, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		var rec *recordingConn
		opts := &pgtls.Options{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			rec = &recordingConn{Conn: c}
			return rec, nil
		}}
		got := connectWith(t, cfg, opts)
		if got.err != nil {
			t.Fatalf("%s: %v", extra, got.err)
		}
		return rec.clientRandom(t), got.facts
	}
	labels := func(content, random string) []string {
		t.Helper()
		var out []string
		for _, line := range strings.Split(strings.TrimSuffix(content, "\n"), "\n") {
			f := strings.Fields(line)
			if len(f) != 3 {
				t.Fatalf("key log line %q is not LABEL RANDOM SECRET", line)
			}
			if f[1] == random {
				if _, err := hex.DecodeString(f[2]); err != nil || len(f[2]) < 64 {
					t.Fatalf("secret of %s is not hex", f[0])
				}
				out = append(out, f[0])
			}
		}
		sort.Strings(out)
		return out
	}

	r1, _ := connect("sslkeylogfile=" + logPath)
	st, err := os.Stat(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key log file mode %v, want 0600", st.Mode().Perm())
	}
	first, _ := os.ReadFile(logPath)
	want13 := []string{"CLIENT_HANDSHAKE_TRAFFIC_SECRET", "CLIENT_TRAFFIC_SECRET_0", "SERVER_HANDSHAKE_TRAFFIC_SECRET", "SERVER_TRAFFIC_SECRET_0"}
	if got := labels(string(first), r1); strings.Join(got, " ") != strings.Join(want13, " ") {
		t.Fatalf("TLS 1.3 labels for client random %s: %v, want %v\n%d bytes in the file", r1, got, want13, len(first))
	}

	// A second connection appends, here over TLS 1.2.
	r2, _ := connect("ssl_max_protocol_version=TLSv1.2 sslkeylogfile=" + logPath)
	both, _ := os.ReadFile(logPath)
	if !bytes.HasPrefix(both, first) {
		t.Fatal("the second connection did not append to the key log")
	}
	if got := labels(string(both), r2); strings.Join(got, " ") != "CLIENT_RANDOM" {
		t.Fatalf("TLS 1.2 labels for client random %s: %v, want [CLIENT_RANDOM]", r2, got)
	}

	// libpq 18 only warns about a file it cannot open, and connects.
	bad := filepath.Join(dir, "missing-dir", "keys.log")
	_, facts := connect("sslkeylogfile=" + bad)
	wantWarn := `could not open SSL key logging file "` + bad + `": No such file or directory`
	if len(facts.Warnings) != 1 || facts.Warnings[0] != wantWarn {
		t.Fatalf("warnings %q, want [%q]", facts.Warnings, wantWarn)
	}
	lib := pgtest.Psql18(t, s.DSN("sslmode=require sslkeylogfile="+bad), nil)
	if !lib.OK || !strings.Contains(lib.Stderr, "WARNING: "+wantWarn) {
		t.Fatalf("libpq 18: ok=%v, stderr %q, want the warning %q", lib.OK, lib.Stderr, wantWarn)
	}

	// libpq 18 writes the same kind of file: mode 0600, NSS lines.
	libLog := filepath.Join(dir, "libpq.log")
	if lib := pgtest.Psql18(t, s.DSN("sslmode=require sslkeylogfile="+libLog), nil); !lib.OK {
		t.Fatalf("libpq 18: %s", lib.Stderr)
	}
	if st, err := os.Stat(libLog); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("libpq 18's key log: %v %v", st, err)
	}

	// No TLS, no file.
	plain := filepath.Join(dir, "plain.log")
	cfg, err := connstring.ParseWithEnv(s.DSN("sslmode=disable sslkeylogfile="+plain), map[string]string{}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if got := connectWith(t, cfg, nil); got.err != nil {
		t.Fatal(got.err)
	}
	if _, err := os.Stat(plain); !os.IsNotExist(err) {
		t.Fatalf("a plaintext connection created the key log: %v", err)
	}
}
