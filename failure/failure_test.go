package failure_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"log/slog"
	"regexp"
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/failure"
)

// TestClassVocabulary pins every class to its string: the strings are part
// of the public interface (CLI JSON, metric labels, proxy messages), so a
// rename or a removal fails here, and a new class must be added here and to
// Classes.
func TestClassVocabulary(t *testing.T) {
	want := []struct {
		class failure.Class
		text  string
	}{
		{failure.OK, "ok"},
		{failure.ConfigInvalid, "config_invalid"},
		{failure.DNSFailure, "dns_failure"},
		{failure.ConnectionRefused, "connection_refused"},
		{failure.Timeout, "timeout"},
		{failure.NoSSLServer, "no_ssl_server"},
		{failure.ProtocolError, "protocol_error"},
		{failure.InjectionDetected, "injection_detected"},
		{failure.TLSVersionMismatch, "tls_version_mismatch"},
		{failure.UnknownCA, "unknown_ca"},
		{failure.HostnameMismatch, "hostname_mismatch"},
		{failure.PeerMismatch, "peer_mismatch"},
		{failure.CertExpired, "cert_expired"},
		{failure.CertExpiring, "cert_expiring"},
		{failure.CertNotYetValid, "cert_not_yet_valid"},
		{failure.CertRevoked, "cert_revoked"},
		{failure.RootCertMissing, "root_cert_missing"},
		{failure.ClientCertRequired, "client_cert_required"},
		{failure.ClientCertRejected, "client_cert_rejected"},
		{failure.KeyMissing, "key_missing"},
		{failure.KeyPermissions, "key_permissions"},
		{failure.KeyMismatch, "key_mismatch"},
		{failure.KeyDecryptFailed, "key_decrypt_failed"},
		{failure.PgHbaReject, "pg_hba_reject"},
		{failure.AuthFailed, "auth_failed"},
	}
	// Every Class constant declared in the package is in the table above.
	declared := declaredClasses(t)
	if len(declared) != len(want) {
		t.Errorf("the package declares %d Class constants %v, this test lists %d: add the new class here", len(declared), declared, len(want))
	}
	if len(failure.Classes) != len(want) {
		t.Fatalf("Classes has %d entries, the vocabulary %d: add the new class to this test", len(failure.Classes), len(want))
	}
	snake := regexp.MustCompile(`^[a-z]+(_[a-z]+)*$`)
	seen := map[failure.Class]bool{}
	for i, w := range want {
		if string(w.class) != w.text {
			t.Errorf("class %q renamed: must stay %q", w.class, w.text)
		}
		if failure.Classes[i] != w.class {
			t.Errorf("Classes[%d] = %q, want %q (documented order)", i, failure.Classes[i], w.class)
		}
		if !snake.MatchString(w.text) {
			t.Errorf("class %q is not snake_case", w.text)
		}
		if seen[w.class] {
			t.Errorf("class %q listed twice", w.class)
		}
		seen[w.class] = true
	}
}

// declaredClasses returns the names of the constants of type Class in the
// package's source.
func declaredClasses(t *testing.T) []string {
	pkgs, err := parser.ParseDir(token.NewFileSet(), ".", func(fi fs.FileInfo) bool { return !strings.HasSuffix(fi.Name(), "_test.go") }, 0)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range pkgs["failure"].Files {
		for _, d := range f.Decls {
			g, ok := d.(*ast.GenDecl)
			if !ok || g.Tok != token.CONST {
				continue
			}
			for _, spec := range g.Specs {
				vs := spec.(*ast.ValueSpec)
				if id, ok := vs.Type.(*ast.Ident); ok && id.Name == "Class" {
					for _, n := range vs.Names {
						names = append(names, n.Name)
					}
				}
			}
		}
	}
	return names
}

func TestNewWrapEvidenceFix(t *testing.T) {
	e := failure.New(failure.HostnameMismatch, "server certificate for %q does not match host name %q", "db1", "db2")
	if e.Class != failure.HostnameMismatch || e.Err != nil {
		t.Fatalf("New: %+v", e)
	}
	if got := e.Error(); got != `server certificate for "db1" does not match host name "db2"` {
		t.Fatalf("New message: %s", got)
	}
	if e.WithEvidence("SAN %s", "db1") != e || e.WithFix("connect to %s", "db1") != e {
		t.Fatal("WithEvidence and WithFix must return their receiver")
	}
	if e.Evidence != "SAN db1" || e.Fix != "connect to db1" {
		t.Fatalf("evidence %q fix %q", e.Evidence, e.Fix)
	}
	if strings.Contains(e.Error(), "SAN") || strings.Contains(e.Error(), "connect to") {
		t.Fatalf("Error() must not carry evidence or fix: %s", e.Error())
	}

	cause := fs.ErrNotExist
	w := failure.Wrap(failure.RootCertMissing, cause, "could not read root certificate file %q", "/ca.crt")
	if !errors.Is(w, fs.ErrNotExist) || w.Unwrap() != cause {
		t.Fatal("Wrap must keep the cause for errors.Is")
	}
	if got := w.Error(); got != `could not read root certificate file "/ca.crt": file does not exist` {
		t.Fatalf("Wrap message: %s", got)
	}
	// A message that already says the cause does not repeat it.
	if got := failure.Wrap(failure.Timeout, cause, "stat: file does not exist").Error(); got != "stat: file does not exist" {
		t.Fatalf("repeated cause: %s", got)
	}
	if got := failure.Wrap(failure.Timeout, cause, "").Error(); got != "file does not exist" {
		t.Fatalf("empty message: %s", got)
	}
	quoted := failure.Wrap(failure.PgHbaReject, errors.New("FATAL: no pg_hba.conf entry (SQLSTATE 28000)"), `no pg_hba.conf entry for host "127.0.0.1"`).CauseInMessage()
	if got := quoted.Error(); got != `no pg_hba.conf entry for host "127.0.0.1"` {
		t.Fatalf("CauseInMessage: %s", got)
	}
	if !errors.Is(failure.New(failure.Timeout, "x"), failure.New(failure.Timeout, "")) ||
		errors.Is(failure.New(failure.Timeout, "x"), failure.New(failure.UnknownCA, "")) ||
		errors.Is(failure.New(failure.Timeout, "x"), failure.New(failure.Timeout, "x")) {
		t.Fatal("errors.Is matches a class-only target, and only that")
	}
}

func TestAsThroughChains(t *testing.T) {
	inner := failure.New(failure.UnknownCA, "certificate verify failed")
	outer := failure.Wrap(failure.ConfigInvalid, inner, "load settings")
	cases := []struct {
		name string
		err  error
		want failure.Class
		msg  string
	}{
		{"nil", nil, failure.OK, ""},
		{"plain", errors.New("boom"), failure.ProtocolError, ""},
		{"direct", inner, failure.UnknownCA, "certificate verify failed"},
		{"fmt.Errorf %w", fmt.Errorf("connect: %w", inner), failure.UnknownCA, "certificate verify failed"},
		{"twice", fmt.Errorf("a: %w", fmt.Errorf("b: %w", inner)), failure.UnknownCA, "certificate verify failed"},
		{"errors.Join", errors.Join(errors.New("first"), inner), failure.UnknownCA, "certificate verify failed"},
		{"outermost wins", outer, failure.ConfigInvalid, "load settings: certificate verify failed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := failure.ClassOf(c.err); got != c.want {
				t.Fatalf("ClassOf = %s, want %s", got, c.want)
			}
			e, ok := failure.As(c.err)
			if ok != (c.msg != "") {
				t.Fatalf("As ok = %v", ok)
			}
			if ok && e.Error() != c.msg {
				t.Fatalf("As found %q, want %q", e.Error(), c.msg)
			}
		})
	}
}

func TestReportJSON(t *testing.T) {
	full := failure.New(failure.KeyPermissions, `private key file "/k" has group or world access`).
		WithEvidence("mode 0644").WithFix("chmod 0600 /k")
	cases := []struct {
		err  error
		want string
	}{
		{nil, `null`},
		{full, `{"class":"key_permissions","message":"private key file \"/k\" has group or world access","evidence":"mode 0644","fix":"chmod 0600 /k"}`},
		{failure.New(failure.Timeout, "timeout expired"), `{"class":"timeout","message":"timeout expired"}`},
		{fmt.Errorf("ping: %w", full), `{"class":"key_permissions","message":"private key file \"/k\" has group or world access","evidence":"mode 0644","fix":"chmod 0600 /k"}`},
		{errors.New("unexpected EOF"), `{"class":"protocol_error","message":"unexpected EOF"}`},
	}
	for _, c := range cases {
		got, err := json.Marshal(failure.ReportOf(c.err))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != c.want {
			t.Errorf("got  %s\nwant %s", got, c.want)
		}
	}
	// The shape reads back into the same fields.
	var r failure.Report
	if err := json.Unmarshal([]byte(`{"class":"unknown_ca","message":"m","evidence":"e","fix":"f"}`), &r); err != nil || r != (failure.Report{Class: failure.UnknownCA, Message: "m", Evidence: "e", Fix: "f"}) {
		t.Fatalf("%+v %v", r, err)
	}
}

func TestRenderer(t *testing.T) {
	err := fmt.Errorf("connect: %w", failure.New(failure.RootCertMissing, `root certificate file "/ca.crt" does not exist`).
		WithEvidence("sslmode=verify-full needs a root certificate").WithFix("copy the CA certificate to /ca.crt"))
	var b bytes.Buffer
	failure.WriteText(&b, "pgtrust: ", err)
	want := `pgtrust: root certificate file "/ca.crt" does not exist
  class:    root_cert_missing
  evidence: sslmode=verify-full needs a root certificate
  fix:      copy the CA certificate to /ca.crt
`
	if b.String() != want {
		t.Fatalf("WriteText:\n%s\nwant:\n%s", b.String(), want)
	}
	if got := failure.Text(err); got != strings.TrimPrefix(strings.TrimSuffix(want, "\n"), "pgtrust: ") {
		t.Fatalf("Text:\n%s", got)
	}
	b.Reset()
	failure.ReportOf(err).WriteDetails(&b, "     ")
	if got := b.String(); got != "     class:    root_cert_missing\n     evidence: sslmode=verify-full needs a root certificate\n     fix:      copy the CA certificate to /ca.crt\n" {
		t.Fatalf("WriteDetails:\n%s", got)
	}
	// Missing evidence and fix leave no empty lines; unclassified errors
	// are protocol errors; nil prints nothing.
	b.Reset()
	failure.WriteText(&b, "x: ", errors.New("unexpected EOF"))
	failure.WriteText(&b, "x: ", nil)
	if got := b.String(); got != "x: unexpected EOF\n  class:    protocol_error\n" {
		t.Fatalf("unclassified:\n%s", got)
	}
	// A value of several lines continues under the value column.
	b.Reset()
	failure.WriteText(&b, "pgtrust: a.toml: ", failure.New(failure.ConfigInvalid, "unknown key x (line 2)").WithEvidence("1| [a]\n2| x = 1\n"))
	if got := b.String(); got != "pgtrust: a.toml: unknown key x (line 2)\n  class:    config_invalid\n  evidence: 1| [a]\n            2| x = 1\n" {
		t.Fatalf("multi-line evidence:\n%s", got)
	}
	if failure.Text(nil) != "" {
		t.Fatal("Text(nil) not empty")
	}
}

// TestSecretsMasked checks that a secret that reaches a failure through a
// cause pgtrust did not write (a driver quoting a connection string) is
// masked in Error, Detail, Report, the text renderer and slog.
func TestSecretsMasked(t *testing.T) {
	cases := []struct{ in, want string }{
		{"host=db password=hunter2 user=app", "host=db password=******** user=app"},
		{"password='hunter 2\\' x' sslmode=require", "password=******** sslmode=require"},
		{"sslpassword = s3cr3t", "sslpassword = ********"},
		{"postgres://app:hunter2@db:5432/x?sslmode=require", "postgres://app:********@db:5432/x?sslmode=require"},
		{"postgresql://db/x?password=hunter2&sslmode=require", "postgresql://db/x?password=********&sslmode=require"},
		{"PGPASSWORD=hunter2 psql", "PGPASSWORD=******** psql"},
		{"scram_client_key=abcd oauth_client_secret=efgh", "scram_client_key=******** oauth_client_secret=********"},
		{"password authentication failed for user \"app\"", "password authentication failed for user \"app\""},
		{"postgres://app@db:5432/x", "postgres://app@db:5432/x"},
		{"password=********", "password=********"},
		{"mypassword=x", "mypassword=x"},
		{`3| password = "se\qcret and more"`, `3| password = ********`},
		{`Password="hunter2" user="app"`, `Password=******** user="app"`},
		{`{"user":"app","password":"hunter2"}`, `{"user":"app","password":********}`},
		{`password = "unterminated`, `password = ********`},
	}
	for _, c := range cases {
		if got := failure.Redact(c.in); got != c.want {
			t.Errorf("Redact(%q) = %q, want %q", c.in, got, c.want)
		}
	}

	cause := errors.New(`cannot parse "host=db password=hunter2"`)
	e := failure.Wrap(failure.ConfigInvalid, cause, "parse postgres://app:hunter2@db").
		WithEvidence("from PGPASSWORD=hunter2").WithFix("add a [password=hunter2] section, or quote values: application_name='my app'")
	var text, logged bytes.Buffer
	failure.WriteText(&text, "pgtrust: ", e)
	slog.New(slog.NewJSONHandler(&logged, nil)).Error("connect failed", "error", e)
	report, _ := json.Marshal(failure.ReportOf(e))
	for name, s := range map[string]string{"Error": e.Error(), "Detail": e.Detail(), "%v": fmt.Sprintf("%v", e), "%+v": fmt.Sprintf("%+v", e), "%#v": fmt.Sprintf("%#v", e), "Text": text.String(), "slog": logged.String(), "Report": string(report)} {
		if strings.Contains(s, "hunter2") {
			t.Errorf("%s shows the secret: %s", name, s)
		}
		if !strings.Contains(s, failure.Mask) {
			t.Errorf("%s does not show the mask: %s", name, s)
		}
	}
	// A fix can quote input (a service name that was really a password
	// setting, found by FuzzResolve): it is masked like the rest, and the
	// advice around it stays.
	if !strings.Contains(text.String(), "[password="+failure.Mask) || !strings.Contains(text.String(), "application_name='my app'") {
		t.Errorf("fix: %s", text.String())
	}
	if !strings.Contains(logged.String(), `"error":{"class":"config_invalid"`) {
		t.Errorf("slog group: %s", logged.String())
	}
}
