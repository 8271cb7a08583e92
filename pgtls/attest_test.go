package pgtls_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/testpki"
	"github.com/pgtrust/pgtrust/pgtls"
	"github.com/pgtrust/pgtrust/ratls"
)

// testPolicy is a policy any real TDX or simulator evidence could be
// checked against; an ordinary certificate carries none.
func testPolicy() *ratls.Policy {
	return &ratls.Policy{MRTD: []string{strings.Repeat("ab", 48)}, SkipTCB: true}
}

// attestTrace records every attestation report and dial.
type attestTrace struct {
	mu      sync.Mutex
	reports []*ratls.Report
	dials   int
}

func (a *attestTrace) options(p *ratls.Policy) *pgtls.Options {
	return &pgtls.Options{
		Attestation: p,
		Trace: &pgtls.Trace{
			Attestation: func(_ string, r *ratls.Report) {
				a.mu.Lock()
				a.reports = append(a.reports, r)
				a.mu.Unlock()
			},
			ConnectDone: func(string, string, error, time.Duration) {
				a.mu.Lock()
				a.dials++
				a.mu.Unlock()
			},
		},
	}
}

func parseDSN(t *testing.T, dsn string) *connstring.Config {
	t.Helper()
	cfg, err := connstring.ParseWithEnv(dsn, nil, pgtest.EmptyHome(t))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// firstFailed is the class of the report's first failed check.
func firstFailed(r *ratls.Report) failure.Class {
	for _, c := range r.Checks {
		if !c.Passed && !c.Skipped {
			return c.Class
		}
	}
	return ""
}

// TestAttestationRefusesOrdinaryCertificate: a real PostgreSQL whose
// certificate is an ordinary CA-signed one. With a policy, every sslmode
// that runs the attestation refuses the connection with the class of the
// report's first failed check (attestation_no_evidence with the real
// verifier), the Trace hook sees the report, and the sslmode's own checks
// still run first (a wrong root fails as unknown_ca, before attestation).
// Without a policy, nothing changes.
func TestAttestationRefusesOrdinaryCertificate(t *testing.T) {
	ca := testpki.NewRootCA(t, "attest root")
	srv := ca.Server(t)
	s := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: srv.ChainPEM, ServerKey: srv.KeyPEM})
	rootFile := filepath.Join(t.TempDir(), "root.crt")
	os.WriteFile(rootFile, ca.CertPEM, 0o644)
	otherRoot := filepath.Join(t.TempDir(), "other.crt")
	os.WriteFile(otherRoot, testpki.NewRootCA(t, "other root").CertPEM, 0o644)
	base := fmt.Sprintf("host=localhost hostaddr=127.0.0.1 port=%d user=postgres dbname=postgres connect_timeout=10", s.Port)

	for _, tc := range []struct {
		name, extra string
		chain, host bool
	}{
		{"require", "sslmode=require sslrootcert=" + filepath.Join(t.TempDir(), "absent.crt"), false, false},
		{"require with a root file (verify-ca rule)", "sslmode=require sslrootcert=" + rootFile, true, false},
		{"verify-ca", "sslmode=verify-ca sslrootcert=" + rootFile, true, false},
		{"verify-full", "sslmode=verify-full sslrootcert=" + rootFile, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var tr attestTrace
			pg, facts, err := pgtls.Connect(context.Background(), parseDSN(t, base+" "+tc.extra), tr.options(testPolicy()))
			if err == nil {
				pg.Close(context.Background())
				t.Fatal("connected to a server without attestation evidence")
			}
			e, ok := failure.As(err)
			if !ok || !strings.HasPrefix(string(e.Class), "attestation_") {
				t.Fatalf("want an attestation_* class, got %v", err)
			}
			if len(tr.reports) != 1 || tr.reports[0] == nil {
				t.Fatalf("Trace.Attestation saw %d reports, want 1", len(tr.reports))
			}
			if got := firstFailed(tr.reports[0]); got != e.Class {
				t.Fatalf("error class %s, report's first failed check %s", e.Class, got)
			}
			if facts == nil || facts.Attestation != tr.reports[0] || facts.Attested {
				t.Fatalf("facts do not carry the failed report: %+v", facts)
			}
			if facts.ServerChainVerified != tc.chain || facts.HostnameVerified != tc.host {
				t.Fatalf("chain verified %v (want %v), host verified %v (want %v)", facts.ServerChainVerified, tc.chain, facts.HostnameVerified, tc.host)
			}
			if len(facts.PeerCertificates) == 0 || !facts.PeerCertificates[0].Equal(srv.Cert) {
				t.Fatal("the attested certificate is not the server's")
			}
			t.Logf("refused: %s: %s", e.Class, e.Message)
		})
	}

	t.Run("sslmode check first", func(t *testing.T) {
		var tr attestTrace
		_, _, err := pgtls.Connect(context.Background(), parseDSN(t, base+" sslmode=verify-ca sslrootcert="+otherRoot), tr.options(testPolicy()))
		if e, ok := failure.As(err); !ok || e.Class != failure.UnknownCA {
			t.Fatalf("want unknown_ca, got %v", err)
		}
		if len(tr.reports) != 0 {
			t.Fatal("attestation ran although the chain failed")
		}
	})

	t.Run("pgtls.Dial too", func(t *testing.T) {
		var tr attestTrace
		conn, _, err := pgtls.Dial(context.Background(), parseDSN(t, base+" sslmode=require"), tr.options(testPolicy()))
		if err == nil {
			conn.Close()
			t.Fatal("Dial returned an unattested transport")
		}
		if e, ok := failure.As(err); !ok || !strings.HasPrefix(string(e.Class), "attestation_") {
			t.Fatalf("want an attestation_* class, got %v", err)
		}
	})

	t.Run("no policy unchanged", func(t *testing.T) {
		var tr attestTrace
		opts := tr.options(nil)
		pg, facts, err := pgtls.Connect(context.Background(), parseDSN(t, base+" sslmode=verify-full sslrootcert="+rootFile), opts)
		if err != nil {
			t.Fatal(err)
		}
		defer pg.Close(context.Background())
		if err := pg.Exec(context.Background(), "SELECT 1").Close(); err != nil {
			t.Fatal(err)
		}
		if len(tr.reports) != 0 || facts.Attestation != nil || facts.Attested {
			t.Fatal("attestation ran without a policy")
		}
		if !facts.Encrypted || !facts.HostnameVerified {
			t.Fatalf("facts changed: %+v", facts)
		}
	})
}

// TestAttestationNeedsTLSOnEveryAttempt: sslmodes that may connect in
// plaintext, and Unix-socket hosts, are refused with a policy before
// anything is dialled.
func TestAttestationNeedsTLSOnEveryAttempt(t *testing.T) {
	for _, dsn := range []string{
		"host=127.0.0.1 port=1 sslmode=disable",
		"host=127.0.0.1 port=1 sslmode=allow",
		"host=127.0.0.1 port=1 sslmode=prefer",
		"host=127.0.0.1 port=1", // libpq's default, prefer
		"host=/tmp port=1 sslmode=require",
		"host=127.0.0.1,/tmp port=1,1 sslmode=verify-full",
	} {
		t.Run(dsn, func(t *testing.T) {
			var tr attestTrace
			_, _, err := pgtls.Connect(context.Background(), parseDSN(t, dsn), tr.options(testPolicy()))
			e, ok := failure.As(err)
			if !ok || e.Class != failure.ConfigInvalid || e.Fix == "" || e.Evidence == "" {
				t.Fatalf("want config_invalid with evidence and fix, got %#v", err)
			}
			if tr.dials != 0 {
				t.Fatalf("dialled %d times before refusing", tr.dials)
			}
			if strings.Contains(dsn, "/tmp") {
				if !strings.Contains(e.Message, "Unix-domain socket") {
					t.Fatalf("message %q", e.Message)
				}
			} else if !strings.Contains(e.Fix, "sslmode=require") {
				t.Fatalf("fix %q does not name sslmode=require", e.Fix)
			}
		})
	}
	// The same settings without a policy get as far as dialling.
	var tr attestTrace
	_, _, _ = pgtls.Connect(context.Background(), parseDSN(t, "host=127.0.0.1 port=1 sslmode=prefer"), tr.options(nil))
	if tr.dials == 0 {
		t.Fatal("without a policy prefer did not dial")
	}
}

// stallAfterS accepts, answers an SSLRequest with 'S' and then sends
// nothing: the TLS handshake never completes.
func stallAfterS(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			buf := make([]byte, 8)
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			if _, err := c.Read(buf); err == nil {
				c.Write([]byte{'S'})
			}
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return l.Addr().String()
}

// TestAttestationTimeout: with a policy, the TLS negotiation plus the
// attestation must end within AttestationTimeout; the error names the
// stage and the figure. connect_timeout, when shorter, still wins.
func TestAttestationTimeout(t *testing.T) {
	addr := stallAfterS(t)
	host, port, _ := net.SplitHostPort(addr)
	silentHost, silentPort := pgtest.FakeServer(t, pgtest.FakeSilent)
	for _, tc := range []struct{ name, dsn string }{
		{"handshake stalls after S", fmt.Sprintf("host=%s port=%s sslmode=require", host, port)},
		{"SSLRequest unanswered", fmt.Sprintf("host=%s port=%d sslmode=require", silentHost, silentPort)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := testPolicyOptions(300 * time.Millisecond)
			_, _, err := pgtls.Connect(context.Background(), parseDSN(t, tc.dsn), opts)
			e, ok := failure.As(err)
			if !ok || e.Class != failure.Timeout {
				t.Fatalf("want timeout, got %v", err)
			}
			if !strings.Contains(e.Message, "TLS handshake timed out after 300ms") || !strings.Contains(e.Evidence, "300ms") {
				t.Fatalf("message %q evidence %q", e.Message, e.Evidence)
			}
		})
	}
	t.Run("connect_timeout shorter", func(t *testing.T) {
		opts := testPolicyOptions(time.Hour)
		_, _, err := pgtls.Connect(context.Background(), parseDSN(t, fmt.Sprintf("host=%s port=%s sslmode=require connect_timeout=1", host, port)), opts)
		e, ok := failure.As(err)
		if !ok || e.Class != failure.Timeout || strings.Contains(e.Message, "timed out after") {
			t.Fatalf("want connect_timeout's timeout, got %v", err)
		}
	})
	t.Run("default figure", func(t *testing.T) {
		if pgtls.DefaultAttestationTimeout != 5000*time.Millisecond {
			t.Fatalf("default %s, seed 003 says 5000ms", pgtls.DefaultAttestationTimeout)
		}
	})
}

func testPolicyOptions(d time.Duration) *pgtls.Options {
	return &pgtls.Options{Attestation: testPolicy(), AttestationTimeout: d}
}
