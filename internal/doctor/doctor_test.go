package doctor_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/chain"
	"github.com/pgtrust/pgtrust/internal/doctor"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/secretscan"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

// world is the PKI and the servers the tests share (starting a server is
// the slow part).
type world struct {
	ca, otherCA                     *testpki.CA
	server, expired                 *testpki.Leaf
	alice, foreign, selfSignedLeaf  *testpki.Leaf
	main, old                       *pgtest.Server
	dir, home                       string
	refuse, inject, silent, http    string
	closing, garbage, errorResponse string
}

const secretPassword = "pw-very-secret-42"

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{dir: t.TempDir(), home: pgtest.EmptyHome(t)}
	w.ca = testpki.NewRootCA(t, "doctor test root", testpki.WithValidity(time.Now().Add(-time.Hour), time.Now().Add(3650*24*time.Hour)))
	w.otherCA = testpki.NewRootCA(t, "some other root")
	long := testpki.WithValidity(time.Now().Add(-time.Hour), time.Now().Add(365*24*time.Hour))
	w.server = w.ca.Server(t, long)
	w.expired = w.ca.Server(t, testpki.Expired())
	w.alice = w.ca.Client(t, "alice", long)
	w.foreign = w.otherCA.Client(t, "alice")
	w.selfSignedLeaf = testpki.SelfSigned(t, testpki.WithCN("localhost"), testpki.WithDNS("localhost"))

	// main: TLS with a CA (so it asks for client certificates), and a
	// pg_hba.conf with one line per way of authenticating.
	w.main = pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: w.server.ChainPEM, ServerKey: w.server.KeyPEM, CA: w.ca.CertPEM,
		HBA: []string{
			"local all all trust",
			"hostssl all alice 127.0.0.1/32 cert",
			"hostssl all carol 127.0.0.1/32 scram-sha-256",
			"hostnossl all dave 127.0.0.1/32 trust",
			"host all postgres 127.0.0.1/32 trust",
		},
		Setup: []string{"SET password_encryption = 'scram-sha-256'; CREATE ROLE alice LOGIN; CREATE ROLE dave LOGIN; CREATE ROLE carol LOGIN PASSWORD '" + secretPassword + "';"}})
	// old: an expired certificate and TLS 1.2 at most.
	w.old = pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: w.expired.ChainPEM, ServerKey: w.expired.KeyPEM,
		Conf: map[string]string{"ssl_max_protocol_version": "TLSv1.2"}})

	fake := func(b pgtest.FakeBehaviour) string {
		h, p := pgtest.FakeServer(t, b)
		return fmt.Sprintf("host=%s port=%d", h, p)
	}
	w.refuse, w.inject, w.silent = fake(pgtest.FakeRefuseSSL), fake(pgtest.FakeInjectAfterS), fake(pgtest.FakeSilent)
	w.http, w.closing, w.garbage, w.errorResponse = fake(pgtest.FakeHTTP), fake(pgtest.FakeCloseImmediately), fake(pgtest.FakeGarbage), fake(pgtest.FakeErrorOnSSL)

	write := func(name string, data []byte, mode os.FileMode) {
		testpki.WriteFile(t, w.dir, name, data, mode)
	}
	write("root.crt", w.ca.CertPEM, 0o644)
	write("other.crt", w.otherCA.CertPEM, 0o644)
	write("self.crt", w.selfSignedLeaf.CertPEM, 0o644)
	write("root.crl", w.ca.CRL(t, w.server.Cert), 0o644)
	write("alice.crt", w.alice.ChainPEM, 0o644)
	write("alice.key", w.alice.KeyPEM, 0o600)
	write("alice-0640.key", w.alice.KeyPEM, 0o640)
	write("alice-0644.key", w.alice.KeyPEM, 0o644)
	write("alice-enc.key", testpki.EncryptedPKCS8PEM(t, w.alice.Key, "s3cret"), 0o600)
	write("foreign.crt", w.foreign.ChainPEM, 0o644)
	write("foreign.key", w.foreign.KeyPEM, 0o600)
	write("other.key", w.foreign.KeyPEM, 0o600)
	// A hashed CRL directory holding a version 1 CRL that revokes the server.
	v1 := w.ca.CRLv1(t, w.server.Cert)
	hash, err := chain.NameHash(w.ca.Cert.RawSubject)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(w.dir, "crls"), 0o755); err != nil {
		t.Fatal(err)
	}
	write("crls/"+hash+".r0", v1, 0o644)
	if err := os.Mkdir(filepath.Join(w.dir, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	return w
}

// dsn expands {dir}, {main} and {old} in a connection-string template.
func (w *world) dsn(tmpl string) string {
	r := strings.NewReplacer("{dir}", w.dir,
		"{main}", fmt.Sprintf("host=%s port=%d", w.main.Host, w.main.Port),
		"{old}", fmt.Sprintf("host=%s port=%d", w.old.Host, w.old.Port),
		"{refuse}", w.refuse, "{inject}", w.inject, "{silent}", w.silent, "{http}", w.http,
		"{closing}", w.closing, "{garbage}", w.garbage, "{error}", w.errorResponse)
	return r.Replace(tmpl)
}

func (w *world) opts() *doctor.Options {
	return &doctor.Options{Env: map[string]string{"HOME": w.home}}
}

func (w *world) diagnose(t *testing.T, dsn string) *doctor.Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := doctor.Diagnose(ctx, dsn, w.opts())
	var text strings.Builder
	r.WriteText(&text, doctor.Style{})
	secretscan.Record(t, "doctor report", text.String()+jsonOf(t, r))
	return r
}

func stage(r *doctor.Report, name string) doctor.Stage {
	for _, s := range r.Stages {
		if s.Name == name {
			return s
		}
	}
	return doctor.Stage{}
}

func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDoctor(t *testing.T) {
	w := newWorld(t)
	t.Run("failure classes", func(t *testing.T) { testFailureClasses(t, w) })
	t.Run("successful connections", func(t *testing.T) { testSuccess(t, w) })
	t.Run("verdict equals psql", func(t *testing.T) { testParity(t, w) })
	t.Run("matrix", func(t *testing.T) { testMatrix(t, w) })
	t.Run("pgx's cancel request is not part of the report", func(t *testing.T) { testCancelNotInReport(t, w) })
	t.Run("explanations in our own words", func(t *testing.T) { testOwnWords(t, w) })
}

// testFailureClasses runs doctor against every failure class the harness
// can produce and checks the class, the failing stage, the evidence and
// the exit code.
func testFailureClasses(t *testing.T, w *world) {
	const root = "sslrootcert={dir}/root.crt "
	const alice = root + "sslmode=verify-full user=alice dbname=postgres sslcert={dir}/alice.crt "
	cases := []struct {
		name, dsn string
		class     failure.Class
		stage     string
		evidence  []string // substrings of evidence (or, for config errors, the message)
		exit      int
	}{
		{"malformed DSN", "host='unterminated", failure.ConfigInvalid, doctor.StageConfiguration, []string{"unterminated"}, 2},
		{"unknown keyword", "{main} sslmod=require", failure.ConfigInvalid, doctor.StageConfiguration, []string{"sslmod"}, 2},
		{"root file is a directory", "{main} user=postgres sslmode=require sslrootcert={dir}/adir", failure.ConfigInvalid, doctor.StageConfiguration, []string{"adir"}, 2},
		{"DNS failure", "host=no-such-host.invalid port=5432 user=postgres", failure.DNSFailure, doctor.StageDNS, []string{"no-such-host.invalid"}, 1},
		{"connection refused", fmt.Sprintf("host=127.0.0.1 port=%d user=postgres", closedPort(t)), failure.ConnectionRefused, doctor.StageTCP, []string{"refused"}, 1},
		{"silent server", "{silent} user=postgres sslmode=require connect_timeout=2", failure.Timeout, doctor.StageSSLNegotiation, []string{"SSL negotiation"}, 1},
		{"HTTP server", "{http} user=postgres sslmode=require", failure.ProtocolError, doctor.StageSSLNegotiation, nil, 1},
		{"closes at once", "{closing} user=postgres sslmode=require", failure.ProtocolError, doctor.StageSSLNegotiation, []string{"closed"}, 1},
		{"garbage answer", "{garbage} user=postgres sslmode=require", failure.ProtocolError, doctor.StageSSLNegotiation, nil, 1},
		{"E answer", "{error} user=postgres sslmode=require", failure.ProtocolError, doctor.StageSSLNegotiation, nil, 1},
		{"bytes injected after S", "{inject} user=postgres sslmode=require", failure.InjectionDetected, doctor.StageSSLNegotiation, []string{"CVE-2021-23222"}, 1},
		{"ssl=off server", "{refuse} user=postgres sslmode=require", failure.NoSSLServer, doctor.StageSSLNegotiation, []string{"'N'"}, 1},
		{"TLS versions do not overlap", "{old} user=postgres sslmode=require ssl_min_protocol_version=TLSv1.3", failure.TLSVersionMismatch, doctor.StageTLSHandshake, nil, 1},
		{"unknown CA", "{main} user=postgres sslmode=verify-ca sslrootcert={dir}/other.crt", failure.UnknownCA, doctor.StageServerCertificate, []string{"other.crt"}, 1},
		{"host name mismatch", "host=db.example.com hostaddr=127.0.0.1 port=" + fmt.Sprint(w.main.Port) + " user=postgres sslmode=verify-full " + root,
			failure.HostnameMismatch, doctor.StageServerCertificate, []string{"db.example.com", "localhost"}, 1},
		{"expired server certificate", "{old} user=postgres sslmode=verify-ca " + root, failure.CertExpired, doctor.StageServerCertificate, []string{"expired", "days ago"}, 1},
		{"revoked server certificate", "{main} user=postgres sslmode=verify-ca sslcrl={dir}/root.crl " + root, failure.CertRevoked, doctor.StageServerCertificate, []string{"revoked"}, 1},
		{"server revoked by a version 1 CRL in sslcrldir", "{main} user=postgres sslmode=verify-ca sslcrldir={dir}/crls " + root, failure.CertRevoked, doctor.StageServerCertificate, []string{"revoked"}, 1},
		{"root certificate missing", "{main} user=postgres sslmode=verify-ca sslrootcert={dir}/none.crt", failure.RootCertMissing, doctor.StageConfiguration, []string{"none.crt"}, 1},
		{"client certificate required", "{main} " + root + "sslmode=verify-full user=alice", failure.ClientCertRequired, doctor.StageClientCertificate, []string{"client certificate"}, 1},
		{"client certificate from a foreign CA", "{main} " + root + "sslmode=verify-full user=alice sslcert={dir}/foreign.crt sslkey={dir}/foreign.key", failure.ClientCertRejected, doctor.StageClientCertificate, nil, 1},
		{"key missing", "{main} " + alice + "sslkey={dir}/none.key", failure.KeyMissing, doctor.StageConfiguration, []string{"none.key"}, 1},
		{"key readable by others", "{main} " + alice + "sslkey={dir}/alice-0644.key", failure.KeyPermissions, doctor.StageConfiguration, []string{"0644"}, 1},
		{"key does not match", "{main} " + alice + "sslkey={dir}/other.key", failure.KeyMismatch, doctor.StageConfiguration, []string{"alice.crt"}, 1},
		{"wrong key password", "{main} " + alice + "sslkey={dir}/alice-enc.key sslpassword=" + secretPassword, failure.KeyDecryptFailed, doctor.StageConfiguration, nil, 1},
		{"no pg_hba.conf entry", "{main} user=nobody dbname=postgres sslmode=require", failure.PgHbaReject, doctor.StageAuthentication, []string{"127.0.0.1/32"}, 1},
		{"wrong password", "{main} user=carol dbname=postgres sslmode=require password=wrong-" + secretPassword, failure.AuthFailed, doctor.StageAuthentication, []string{"carol"}, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := w.diagnose(t, w.dsn(c.dsn))
			js := jsonOf(t, r)
			if r.OK || r.Class != c.class || r.FailedStage != c.stage || r.Error == nil {
				t.Fatalf("ok=%v class=%s stage=%s, want class %s at %s\n%s", r.OK, r.Class, r.FailedStage, c.class, c.stage, js)
			}
			if got := stage(r, c.stage); got.Status != doctor.StatusFail || got.Class != c.class {
				t.Errorf("stage %s: %+v", c.stage, got)
			}
			text := r.Error.Evidence + " " + r.Error.Message
			for _, want := range c.evidence {
				if !strings.Contains(text, want) {
					t.Errorf("evidence/message %q lacks %q", text, want)
				}
			}
			if r.Error.Fix == "" && c.class != failure.ProtocolError {
				t.Errorf("no fix: %s", js)
			}
			if got := r.ExitCode(); got != c.exit {
				t.Errorf("exit code %d, want %d", got, c.exit)
			}
			if strings.Contains(js, secretPassword) {
				t.Errorf("a secret leaked into the report: %s", js)
			}
			// Stages after the failing one that saw nothing are skipped.
			if c.stage != doctor.StageQuery && stage(r, doctor.StageQuery).Status != doctor.StatusSkipped {
				t.Errorf("query stage ran after a failure: %+v", stage(r, doctor.StageQuery))
			}
		})
	}

	t.Run("pg_hba line names hostssl, address, database, user", func(t *testing.T) {
		r := w.diagnose(t, w.dsn("{main} user=nobody dbname=postgres sslmode=require"))
		want := "hostssl postgres nobody 127.0.0.1/32 scram-sha-256"
		if r.Authentication.HBALine != want || !strings.Contains(r.Error.Fix, want) {
			t.Errorf("hba line %q, fix %q; want %q", r.Authentication.HBALine, r.Error.Fix, want)
		}
		r = w.diagnose(t, w.dsn("{main} user=nobody dbname=postgres sslmode=disable"))
		if want := "host postgres nobody 127.0.0.1/32 scram-sha-256"; r.Authentication.HBALine != want {
			t.Errorf("plaintext hba line %q, want %q", r.Authentication.HBALine, want)
		}
	})
	t.Run("file problems that libpq never meets are not failures", func(t *testing.T) {
		// sslmode=allow connects in plaintext first (dave's line is
		// hostnossl): the broken key is never loaded, as in libpq.
		r := w.diagnose(t, w.dsn("{main} user=dave dbname=postgres sslmode=allow sslcert={dir}/alice.crt sslkey={dir}/other.key"))
		if !r.OK {
			t.Fatalf("not connected: %s", jsonOf(t, r.Error))
		}
		if st := stage(r, doctor.StageConfiguration); st.Status != doctor.StatusWarn || !strings.Contains(st.Detail, "mismatch") {
			t.Errorf("configuration stage should warn about the key: %+v", st)
		}
	})
}

func closedPort(t *testing.T) int {
	t.Helper()
	// A port from a server that has been stopped would race with other
	// tests; port 1 needs root to listen on and nothing does.
	return 1
}

func testSuccess(t *testing.T, w *world) {
	hasWarning := func(r *doctor.Report, code string) bool {
		for _, wn := range r.Warnings {
			if wn.Code == code {
				return true
			}
		}
		return false
	}
	t.Run("sslkeylogfile that cannot be opened is a warning", func(t *testing.T) {
		r := w.diagnose(t, w.dsn("{main} user=postgres dbname=postgres sslmode=require sslkeylogfile={dir}/no/such/dir/keys.log"))
		if !r.OK {
			t.Fatalf("not ok: %s", jsonOf(t, r))
		}
		found := false
		for _, wn := range r.Warnings {
			found = found || wn.Code == doctor.WarnLibpq && strings.Contains(wn.Message, "could not open SSL key logging file")
		}
		if !found {
			t.Errorf("no key-log warning: %s", jsonOf(t, r.Warnings))
		}
	})
	t.Run("verify-full with a client certificate", func(t *testing.T) {
		r := w.diagnose(t, w.dsn("{main} host=localhost hostaddr=127.0.0.1 user=alice dbname=postgres sslmode=verify-full sslrootcert={dir}/root.crt sslcert={dir}/alice.crt sslkey={dir}/alice.key"))
		if !r.OK || r.ExitCode() != 0 {
			t.Fatalf("not ok: %s", jsonOf(t, r))
		}
		for _, s := range r.Stages {
			if s.Status != doctor.StatusOK {
				t.Errorf("stage %s: %s: %s", s.Name, s.Status, s.Detail)
			}
		}
		if r.TLS.Version != "TLSv1.3" || r.TLS.Negotiation != "postgres" || r.TLS.SSLResponse != "S" {
			t.Errorf("tls: %+v", r.TLS)
		}
		sc := r.ServerCertificate
		if !sc.Verified || !sc.HostnameChecked || !sc.VerifyCA.OK || !sc.VerifyFull.OK || len(sc.Chain) == 0 {
			t.Errorf("server certificate: %s", jsonOf(t, sc))
		}
		cc := r.ClientCertificate
		if !cc.Requested || !cc.Sent || cc.Accepted == nil || !*cc.Accepted {
			t.Errorf("client certificate: %s", jsonOf(t, cc))
		}
		if r.Authentication.Method != "cert" {
			t.Errorf("auth method %q", r.Authentication.Method)
		}
		if s := r.Server; s == nil || s.SSL != "on" || s.StatSSL == nil || !s.StatSSL.SSL || s.StatSSL.ClientDN != "/CN=alice" || s.StatSSL.Version != "TLSv1.3" || !strings.HasPrefix(s.Version, "15") {
			t.Errorf("server facts: %s", jsonOf(t, r.Server))
		}
		if len(r.Warnings) != 0 {
			t.Errorf("warnings: %s", jsonOf(t, r.Warnings))
		}
	})
	t.Run("require without a root certificate warns and says what verify-full would do", func(t *testing.T) {
		r := w.diagnose(t, w.dsn("host=db.example.com hostaddr=127.0.0.1 port="+fmt.Sprint(w.main.Port)+" user=postgres sslmode=require"))
		if !r.OK {
			t.Fatalf("not ok: %s", jsonOf(t, r.Error))
		}
		if !hasWarning(r, doctor.WarnNotVerified) || stage(r, doctor.StageServerCertificate).Status != doctor.StatusWarn {
			t.Errorf("no not-verified warning: %s", jsonOf(t, r))
		}
		if v := r.ServerCertificate.VerifyCA; v.OK || v.Class != failure.RootCertMissing {
			t.Errorf("verify-ca verdict without root: %+v", v)
		}
		// With the root file, doctor computes verify-full's verdict though
		// require does not check the host name.
		r = w.diagnose(t, w.dsn("host=db.example.com hostaddr=127.0.0.1 port="+fmt.Sprint(w.main.Port)+" user=postgres sslmode=verify-ca sslrootcert={dir}/root.crt"))
		if !r.OK || !r.ServerCertificate.VerifyCA.OK || r.ServerCertificate.VerifyFull.Class != failure.HostnameMismatch ||
			!strings.Contains(r.ServerCertificate.VerifyFull.Detail, "db.example.com") {
			t.Errorf("verify-full verdict: %s", jsonOf(t, r.ServerCertificate))
		}
	})
	t.Run("TLS 1.2 server with an expired certificate under require", func(t *testing.T) {
		r := w.diagnose(t, w.dsn("{old} user=postgres sslmode=require"))
		if !r.OK || r.TLS.Version != "TLSv1.2" {
			t.Fatalf("not ok / version: %s", jsonOf(t, r))
		}
		if !hasWarning(r, doctor.WarnTLS12) {
			t.Errorf("no TLS 1.2 warning: %s", jsonOf(t, r.Warnings))
		}
	})
	t.Run("password in the DSN, permissive key, expiring certificate", func(t *testing.T) {
		r := w.diagnose(t, w.dsn("{main} user=carol dbname=postgres sslmode=require sslcert={dir}/alice.crt sslkey={dir}/alice-0640.key password="+secretPassword))
		if !r.OK {
			t.Fatalf("not ok: %s", jsonOf(t, r.Error))
		}
		js := jsonOf(t, r)
		if strings.Contains(js, secretPassword) {
			t.Errorf("password leaked: %s", js)
		}
		for _, code := range []string{doctor.WarnPasswordInDSN, doctor.WarnKeyPermissive, doctor.WarnNotVerified} {
			if !hasWarning(r, code) {
				t.Errorf("no %s warning: %s", code, jsonOf(t, r.Warnings))
			}
		}
		if r.Authentication.Method != "scram-sha-256-plus" || !r.Authentication.ChannelBound {
			t.Errorf("auth: %+v", r.Authentication)
		}
		// 30-day certificates are within --warn-days 30.
		r = w.diagnose(t, w.dsn("{main} user=alice dbname=postgres sslmode=require sslcert={dir}/foreign.crt sslkey={dir}/foreign.key"))
		if !hasWarning(r, doctor.WarnExpiring) {
			t.Errorf("no expiry warning: %s", jsonOf(t, r.Warnings))
		}
	})
	t.Run("self-signed leaf as root", func(t *testing.T) {
		r := w.diagnose(t, w.dsn("{main} user=postgres sslmode=disable sslrootcert={dir}/self.crt"))
		if !hasWarning(r, doctor.WarnNotEncrypted) {
			t.Errorf("no not-encrypted warning: %s", jsonOf(t, r.Warnings))
		}
		r = w.diagnose(t, w.dsn("{main} user=postgres sslmode=prefer sslrootcert={dir}/self.crt"))
		if !hasWarning(r, doctor.WarnRootIsLeaf) {
			t.Errorf("no self-signed leaf warning: %s", jsonOf(t, r.Warnings))
		}
	})
}

// testParity requires doctor's verdict to equal psql's in every sslmode.
func testParity(t *testing.T, w *world) {
	scenarios := []string{
		"{main} user=postgres sslrootcert={dir}/root.crt",
		"{main} user=postgres",
		"host=localhost hostaddr=127.0.0.1 port=" + fmt.Sprint(w.main.Port) + " user=alice sslrootcert={dir}/root.crt sslcert={dir}/alice.crt sslkey={dir}/alice.key",
		"{main} user=alice sslrootcert={dir}/root.crt sslcert={dir}/foreign.crt sslkey={dir}/foreign.key",
		"{main} user=dave",
		"{main} user=postgres sslrootcert={dir}/other.crt",
		"{main} user=postgres sslrootcert={dir}/root.crt sslcrl={dir}/root.crl",
		"{old} user=postgres sslrootcert={dir}/root.crt",
		"{old} user=postgres ssl_min_protocol_version=TLSv1.3",
		"{refuse} user=postgres sslrootcert={dir}/root.crt",
		"{main} user=alice sslcert={dir}/alice.crt sslkey={dir}/alice-0644.key",
	}
	for _, sc := range scenarios {
		for _, mode := range doctor.MatrixModes {
			dsn := w.dsn(sc) + " dbname=postgres connect_timeout=5 sslmode=" + string(mode)
			r := w.diagnose(t, dsn)
			lib := pgtest.Psql(t, dsn, map[string]string{"HOME": w.home})
			if r.OK != lib.OK {
				t.Errorf("verdict differs: doctor ok=%v (%s), psql ok=%v (%s)\n  dsn: %s", r.OK, r.Class, lib.OK, strings.TrimSpace(lib.Stderr), dsn)
			}
		}
	}
}

func testMatrix(t *testing.T, w *world) {
	cfg, err := doctor.ParseDSN(w.dsn("host=localhost hostaddr=127.0.0.1 port="+fmt.Sprint(w.main.Port)+" user=postgres dbname=postgres sslrootcert={dir}/root.crt sslmode=verify-full"), w.opts())
	if err != nil {
		t.Fatal(err)
	}
	m := doctor.RunMatrix(context.Background(), cfg, w.opts())
	want := map[string]struct{ connected, encrypted, verified bool }{
		"disable": {true, false, false}, "allow": {true, false, false}, "prefer": {true, true, true},
		"require": {true, true, true}, "verify-ca": {true, true, true}, "verify-full": {true, true, true},
	}
	for _, row := range m.Rows {
		if row.Negotiation != "postgres" {
			continue
		}
		wnt := want[row.SSLMode]
		if row.Connected != wnt.connected || row.Encrypted != wnt.encrypted || row.ServerVerified != wnt.verified {
			t.Errorf("row %+v, want %+v", row, wnt)
		}
		if row.Encrypted && row.TLSVersion != "TLSv1.3" {
			t.Errorf("row %s: version %q", row.SSLMode, row.TLSVersion)
		}
		delete(want, row.SSLMode)
	}
	if len(want) != 0 {
		t.Errorf("missing rows: %v", want)
	}
	// PostgreSQL 15 does not accept direct TLS: detected, not assumed.
	if !strings.HasPrefix(m.Direct, "not accepted") {
		t.Errorf("direct: %q", m.Direct)
	}
	if row := m.ConfiguredRow(""); row == nil || !row.Connected || !row.HostnameVerified {
		t.Errorf("configured row: %+v", row)
	}
	var b strings.Builder
	m.WriteText(&b, doctor.Style{})
	if !strings.Contains(b.String(), "verify-full") || strings.Contains(b.String(), "\x1b[") {
		t.Errorf("table:\n%s", b.String())
	}

	// The matrix over a server with ssl=off.
	cfg, err = doctor.ParseDSN(w.dsn("{refuse} user=postgres"), w.opts())
	if err != nil {
		t.Fatal(err)
	}
	m = doctor.RunMatrix(context.Background(), cfg, w.opts())
	for _, row := range m.Rows {
		if row.SSLMode == "require" && row.Negotiation == "postgres" && (row.Connected || row.Class != failure.NoSSLServer) {
			t.Errorf("require on ssl=off: %+v", row)
		}
		if row.SSLMode == "prefer" && (!row.Connected || row.Encrypted) {
			t.Errorf("prefer on ssl=off: %+v", row)
		}
	}
}
