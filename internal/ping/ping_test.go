package ping

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

func TestRun(t *testing.T) {
	t.Setenv("HOME", pgtest.EmptyHome(t))
	ctx := context.Background()

	// Invalid settings: exit 2, nothing connected, the secret not echoed.
	r := Run(ctx, "sslmode=sometimes password=hunter2", time.Minute, nil)
	if r.ExitCode() != 2 || r.Class != failure.ConfigInvalid || r.Error == nil {
		t.Fatalf("invalid settings: %+v", r)
	}

	// A port nothing listens on: exit 1 with the class and the shared layout.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	r = Run(ctx, fmt.Sprintf("host=127.0.0.1 port=%d sslmode=require password=hunter2", port), time.Minute, nil)
	if r.ExitCode() != 1 || r.Class != failure.ConnectionRefused || r.OK {
		t.Fatalf("refused: %+v", r)
	}
	if strings.Contains(r.Connection, "hunter2") || !strings.Contains(r.Connection, failure.Mask) {
		t.Fatalf("connection settings not masked: %s", r.Connection)
	}
	var out, errOut bytes.Buffer
	r.WriteText(&out, &errOut)
	if out.Len() != 0 || !strings.HasPrefix(errOut.String(), "pgtrust: ") || !strings.Contains(errOut.String(), "\n  class:    connection_refused\n") {
		t.Fatalf("text: stdout %q stderr %q", out.String(), errOut.String())
	}

	// A real server over TLS (prefer, no root: encrypted but unverified).
	ca := testpki.NewRootCA(t, "ping root")
	srv := ca.Server(t)
	s := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: srv.ChainPEM, ServerKey: srv.KeyPEM, HBA: []string{"local all all trust", "hostssl all all 127.0.0.1/32 trust"}})
	r = Run(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=require", s.Port), time.Minute, nil)
	if r.ExitCode() != 0 || !r.OK || !r.SSL || r.ServerVerified || r.TLSVersion == "" || r.ServerVersion == "" {
		t.Fatalf("ping: %+v", r)
	}
	out.Reset()
	r.WriteText(&out, &errOut)
	if !strings.HasPrefix(out.String(), "ok: connected to 127.0.0.1") || !strings.Contains(out.String(), "server NOT verified") {
		t.Fatalf("text: %s", out.String())
	}

	// An sslkeylogfile that cannot be opened: libpq 18 prints a WARNING and
	// connects; so does ping.
	bad := t.TempDir() + "/no/such/dir/keys.log"
	r = Run(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=require sslkeylogfile=%s", s.Port, bad), time.Minute, nil)
	out.Reset()
	errOut.Reset()
	r.WriteText(&out, &errOut)
	if !r.OK || len(r.Warnings) != 1 || !strings.HasPrefix(errOut.String(), "WARNING: could not open SSL key logging file") {
		t.Fatalf("keylog warning: %+v, stderr %q", r, errOut.String())
	}
}
