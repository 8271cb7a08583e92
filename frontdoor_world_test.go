package pgtrust

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

// frontDoorWorld is the server and files that the front-door tests share: a
// TLS PostgreSQL with a certificate role (app), a SCRAM role (pw) and a
// plaintext-only role (plain); the root, client certificate and key files;
// and Base, the settings every test adds a user and an sslmode to. HOME is
// an empty directory for the test.
type frontDoorWorld struct {
	Base, Dir, Root, Cert, Key string
	ClientSerial               string
}

func newFrontDoorWorld(t *testing.T) *frontDoorWorld {
	t.Helper()
	ca := testpki.NewRootCA(t, "front door root")
	srv := ca.Server(t)
	s := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: srv.ChainPEM, ServerKey: srv.KeyPEM, CA: ca.CertPEM,
		HBA: []string{"local all all trust", "hostssl all app 127.0.0.1/32 cert", "hostssl all pw 127.0.0.1/32 scram-sha-256",
			"hostnossl all plain 127.0.0.1/32 trust"},
		Setup: []string{"CREATE ROLE app LOGIN; SET password_encryption='scram-sha-256'; CREATE ROLE pw LOGIN PASSWORD 'pw-secret'; CREATE ROLE plain LOGIN;"}})
	w := &frontDoorWorld{Dir: t.TempDir()}
	write := func(name string, data []byte, mode os.FileMode) string {
		p := filepath.Join(w.Dir, name)
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	w.Root = write("root.crt", ca.CertPEM, 0o644)
	client := ca.Client(t, "app")
	w.Cert, w.Key = write("client.crt", client.ChainPEM, 0o644), write("client.key", client.KeyPEM, 0o600)
	w.ClientSerial = client.Cert.SerialNumber.String()
	t.Setenv("HOME", pgtest.EmptyHome(t))
	w.Base = fmt.Sprintf("host=localhost hostaddr=127.0.0.1 port=%d dbname=postgres sslrootcert=%s connect_timeout=5 ", s.Port, w.Root)
	return w
}
