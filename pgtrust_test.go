package pgtrust_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtrust/pgtrust"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/testpki"
	"github.com/pgtrust/pgtrust/pgtls"
)

func TestFrontDoor(t *testing.T) {
	w := pgtrust.NewFrontDoorWorld(t)
	base, root, crt, key := w.Base, w.Root, w.Cert, w.Key
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	sslOf := func(t *testing.T, q interface {
		QueryRow(context.Context, string, ...any) pgx.Row
	}) (bool, string) {
		var ssl bool
		var serial *string
		if err := q.QueryRow(ctx, "SELECT ssl, client_serial::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl, &serial); err != nil {
			t.Fatal(err)
		}
		if serial == nil {
			return ssl, ""
		}
		return ssl, *serial
	}

	t.Run("pgx.Conn with a client certificate", func(t *testing.T) {
		conn, err := pgtrust.Connect(ctx, base+fmt.Sprintf("user=app sslmode=verify-full sslcert=%s sslkey=%s", crt, key))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		ssl, serial := sslOf(t, conn)
		if !ssl || serial != w.ClientSerial {
			t.Fatalf("ssl=%v serial=%s", ssl, serial)
		}
	})
	t.Run("pgxpool with SCRAM-SHA-256-PLUS", func(t *testing.T) {
		pool, err := pgtrust.NewPool(ctx, base+"user=pw password=pw-secret sslmode=verify-full channel_binding=require")
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Close()
		errs := make(chan error, 8)
		for i := 0; i < 8; i++ {
			go func() {
				var one int
				errs <- pool.QueryRow(ctx, "SELECT 1 FROM pg_sleep(0.05)").Scan(&one)
			}()
		}
		for i := 0; i < 8; i++ {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		if ssl, _ := sslOf(t, pool); !ssl {
			t.Fatal("pool connection not encrypted")
		}
	})
	t.Run("database/sql", func(t *testing.T) {
		db, err := pgtrust.OpenDB(base+"user=pw password=pw-secret sslmode=verify-full", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var ssl bool
		if err := db.QueryRowContext(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil {
			t.Fatal(err)
		}
		if !ssl {
			t.Fatal("database/sql connection not encrypted")
		}
	})
	t.Run("prefer falls back to plaintext after a startup error over TLS", func(t *testing.T) {
		conn, err := pgtrust.Connect(ctx, base+"user=plain sslmode=prefer")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if ssl, _ := sslOf(t, conn); ssl {
			t.Fatal("hostnossl-only role connected over TLS")
		}
	})
	t.Run("verify-full failure keeps its class through pgx", func(t *testing.T) {
		other := testpki.NewRootCA(t, "wrong root")
		wrong := filepath.Join(w.Dir, "wrong.crt")
		if err := os.WriteFile(wrong, other.CertPEM, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := pgtrust.Connect(ctx, strings.Replace(base, root, wrong, 1)+"user=pw password=pw-secret sslmode=verify-full")
		if failure.ClassOf(err) != failure.UnknownCA {
			t.Fatalf("class %s: %v", failure.ClassOf(err), err)
		}
		if strings.Contains(err.Error(), "pw-secret") {
			t.Fatal("password in error")
		}
	})
	t.Run("invalid settings", func(t *testing.T) {
		_, err := pgtrust.ParseConfig("sslmode=bogus", nil)
		if failure.ClassOf(err) != failure.ConfigInvalid {
			t.Fatalf("got %v", err)
		}
	})
}

// ExampleNewPool opens a pool whose connections verify the server exactly
// as libpq's sslmode=verify-full does, with a client certificate.
func ExampleNewPool() {
	ctx := context.Background()
	pool, err := pgtrust.NewPool(ctx, "host=db.internal dbname=app user=app sslmode=verify-full "+
		"sslrootcert=/etc/pgtrust/ca.crt sslcert=/etc/pgtrust/client.crt sslkey=/etc/pgtrust/client.key")
	if err != nil {
		fmt.Println(failure.ClassOf(err), err)
		return
	}
	defer pool.Close()
	var version string
	if err := pool.QueryRow(ctx, "SHOW server_version").Scan(&version); err != nil {
		// Errors carry a class: unknown_ca, hostname_mismatch, pg_hba_reject, ...
		err = pgtls.Classify(err)
		fmt.Println(failure.ClassOf(err), err)
	}
}
