package failure_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/pgtrust/pgtrust/failure"
)

// A package that detects a failure returns an *Error with a class, libpq's
// message, the evidence and the fix.
func ExampleWrap() {
	_, err := os.ReadFile("/nonexistent/root.crt")
	e := failure.Wrap(failure.RootCertMissing, errors.Unwrap(err), "could not read root certificate file %q", "/nonexistent/root.crt").
		WithEvidence("sslmode=verify-full verifies the server against sslrootcert").
		WithFix("copy the CA certificate that signed the server's certificate to /nonexistent/root.crt")
	fmt.Println(e.Class)
	fmt.Println(e)
	fmt.Println(errors.Is(e, fs.ErrNotExist))
	// Output:
	// root_cert_missing
	// could not read root certificate file "/nonexistent/root.crt": no such file or directory
	// true
}

// Callers branch on the class, however deeply the failure is wrapped.
func ExampleClassOf() {
	err := fmt.Errorf("connect to db1: %w", failure.New(failure.HostnameMismatch, `server certificate for "db2" does not match host name "db1"`))
	switch failure.ClassOf(err) {
	case failure.HostnameMismatch, failure.UnknownCA:
		fmt.Println("the server's identity could not be verified")
	case failure.OK:
		fmt.Println("connected")
	}
	fmt.Println(failure.ClassOf(nil), failure.ClassOf(errors.New("EOF")))
	// Output:
	// the server's identity could not be verified
	// ok protocol_error
}

// Every command prints a failure the same way.
func ExampleWriteText() {
	err := failure.New(failure.KeyPermissions, `private key file "/home/app/.postgresql/postgresql.key" has group or world access`).
		WithEvidence("mode 0644; libpq requires 0600 (or 0640 owned by root)").
		WithFix("chmod 0600 /home/app/.postgresql/postgresql.key")
	failure.WriteText(os.Stdout, "pgtrust: ", err)
	// Output:
	// pgtrust: private key file "/home/app/.postgresql/postgresql.key" has group or world access
	//   class:    key_permissions
	//   evidence: mode 0644; libpq requires 0600 (or 0640 owned by root)
	//   fix:      chmod 0600 /home/app/.postgresql/postgresql.key
}

// --json output carries the same four fields.
func ExampleReportOf() {
	err := failure.New(failure.NoSSLServer, "server does not support SSL, but SSL was required").
		WithFix("set ssl = on in postgresql.conf, or connect with sslmode=prefer")
	out, _ := json.MarshalIndent(failure.ReportOf(err), "", "  ")
	fmt.Println(string(out))
	// Output:
	// {
	//   "class": "no_ssl_server",
	//   "message": "server does not support SSL, but SSL was required",
	//   "fix": "set ssl = on in postgresql.conf, or connect with sslmode=prefer"
	// }
}
