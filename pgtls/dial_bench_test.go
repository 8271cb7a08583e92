package pgtls_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/internal/testpki"
	"github.com/pgtrust/pgtrust/pgtls"
)

// tlsFake is an in-process server that speaks PostgreSQL's SSLRequest
// exchange and then TLS 1.3 (ECDSA P-256), enough for pgtls.Dial, which
// stops before the startup message.
type tlsFake struct {
	ln   net.Listener
	cfg  *tls.Config
	wg   sync.WaitGroup
	errs chan error
}

func startTLSFake(b *testing.B, cfg *tls.Config) *tlsFake {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	f := &tlsFake{ln: ln, cfg: cfg, errs: make(chan error, 1)}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				if err := f.serve(c); err != nil {
					select {
					case f.errs <- err:
					default:
					}
				}
			}()
		}
	}()
	b.Cleanup(func() {
		ln.Close()
		f.wg.Wait()
	})
	return f
}

func (f *tlsFake) serve(c net.Conn) error {
	defer c.Close()
	var req [8]byte
	if _, err := io.ReadFull(c, req[:]); err != nil {
		return fmt.Errorf("read SSLRequest: %w", err)
	}
	if req != [8]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f} {
		return fmt.Errorf("not an SSLRequest: % x", req)
	}
	if _, err := c.Write([]byte{'S'}); err != nil {
		return err
	}
	tc := tls.Server(c, f.cfg)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("server handshake: %w", err)
	}
	// The client closes without a startup message: wait for that.
	_, _ = io.Copy(io.Discard, tc)
	return nil
}

// BenchmarkDialTLS13ECDSA measures pgtls.Dial with sslmode=verify-full
// against a TLS 1.3 server with an ECDSA P-256 certificate: TCP connect,
// SSLRequest, handshake, chain and host-name verification. This is the
// upstream half of every proxied connection.
func BenchmarkDialTLS13ECDSA(b *testing.B) {
	ca := testpki.NewRootCA(b, "bench CA", testpki.WithKeyType(testpki.ECDSAP256))
	server := ca.Server(b, testpki.WithKeyType(testpki.ECDSAP256))
	client := ca.Client(b, "bench", testpki.WithKeyType(testpki.ECDSAP256))
	dir := b.TempDir()
	caFile := testpki.WriteFile(b, dir, "ca.crt", ca.CertPEM, 0o644)
	certFile := testpki.WriteFile(b, dir, "client.crt", client.ChainPEM, 0o644)
	keyFile := testpki.WriteFile(b, dir, "client.key", client.KeyPEM, 0o600)

	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	for _, tc := range []struct {
		name       string
		clientCert bool
	}{
		{"server-auth", false},
		{"client-cert", true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			scfg := &tls.Config{
				Certificates: []tls.Certificate{server.TLSCertificate()},
				MinVersion:   tls.VersionTLS13,
			}
			dsn := ""
			if tc.clientCert {
				scfg.ClientAuth, scfg.ClientCAs = tls.RequireAndVerifyClientCert, pool
				dsn = fmt.Sprintf(" sslcert=%s sslkey=%s", certFile, keyFile)
			}
			f := startTLSFake(b, scfg)
			port := f.ln.Addr().(*net.TCPAddr).Port
			cfg, err := connstring.Parse(fmt.Sprintf("host=127.0.0.1 port=%d user=bench sslmode=verify-full sslrootcert=%s%s", port, caFile, dsn))
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			// One dial outside the timer proves the setup and checks the facts.
			conn, facts, err := pgtls.Dial(ctx, cfg, nil)
			if err != nil {
				b.Fatalf("dial: %v", err)
			}
			conn.Close()
			if facts.TLSVersionName() != "TLSv1.3" {
				b.Fatalf("negotiated %s, want TLSv1.3", facts.TLSVersionName())
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				conn, _, err := pgtls.Dial(ctx, cfg, nil)
				if err != nil {
					b.Fatalf("dial: %v", err)
				}
				conn.Close()
			}
			b.StopTimer()
			select {
			case err := <-f.errs:
				b.Fatalf("fake server: %v", err)
			default:
			}
		})
	}
}
