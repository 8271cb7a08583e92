package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/internal/pgwire"
	"github.com/pgtrust/pgtrust/internal/scram"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

// gwFuzzHarness is a cluster_secret gateway in front of a dial counter.
type gwFuzzHarness struct {
	addr  string
	dials atomic.Int64
	logs  *logBuffer
}

func newGatewayFuzzHarness(f *testing.F) *gwFuzzHarness {
	h := &gwFuzzHarness{logs: &logBuffer{}}
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { up.Close() })
	go func() {
		for {
			c, err := up.Accept()
			if err != nil {
				return
			}
			h.dials.Add(1)
			go refuseLikePostgres(c)
		}
	}()
	conn, err := connstring.ParseWithEnv(fmt.Sprintf("host=127.0.0.1 port=%d sslmode=disable", up.Addr().(*net.TCPAddr).Port),
		map[string]string{}, f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	ca := testpki.NewRootCA(f, "pgtrust gateway fuzz CA")
	leaf := ca.Server(f)
	dir := f.TempDir()
	rw, err := scram.NewVerifier([]byte(gwReadWriteSecret), 4096, nil)
	if err != nil {
		f.Fatal(err)
	}
	read, err := scram.NewVerifier([]byte(gwReadSecret), 4096, rw.Salt)
	if err != nil {
		f.Fatal(err)
	}
	p, err := New(Config{Logger: slog.New(slog.NewTextHandler(h.logs, nil)), RefusalLogInterval: time.Millisecond, StartupTimeout: 5 * time.Second, AuthTimeout: 5 * time.Second, MaxStartupPacket: fuzzMaxStartup,
		Upstreams: []UpstreamConfig{{Name: "db", Conn: conn, MaxAuthenticating: 1000, Gateways: []GatewayConfig{{
			Listen: "127.0.0.1:0", Auth: AuthClusterSecret,
			CertFile: testpki.WriteFile(f, dir, "s.crt", leaf.ChainPEM, 0o644), KeyFile: testpki.WriteFile(f, dir, "s.key", leaf.KeyPEM, 0o600),
			Roles: []GatewayRole{{User: "teesql_read", Role: "r", Verifier: read, DowngradeFrom: []string{"teesql_readwrite"}},
				{User: "teesql_readwrite", Role: "rw", Verifier: rw}},
			Backoff: backoffForTests(),
		}}}}})
	if err != nil {
		f.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		p.Close()
		f.Fatal(err)
	}
	f.Cleanup(func() { p.Close() })
	h.addr = p.Addrs()["db"][0].String()
	return h
}

// FuzzGatewayStartup feeds arbitrary bytes to a cluster_secret gateway
// listener: once as a client's first plaintext packets, once as the
// client's SCRAM messages after a TLS handshake and a StartupMessage.
// Invariants: no panic, the gateway answers or closes within the hang
// guard, it never dials the upstream (no input can hold a valid proof: the
// server nonce is fresh), a plaintext client never gets past the TLS
// requirement, and after the startup only well-formed authentication
// requests and at most one FATAL ErrorResponse are sent.
func FuzzGatewayStartup(f *testing.F) {
	h := newGatewayFuzzHarness(f)
	startup, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "teesql_read", "database": "postgres"}}).Encode(nil)
	ssl, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	ir, _ := (&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=abcdefghijklmnop")}).Encode(nil)
	irPlus, _ := (&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256-PLUS", Data: []byte("p=tls-server-end-point,,n=,r=abc")}).Encode(nil)
	resp, _ := (&pgproto3.SASLResponse{Data: []byte("c=biws,r=abc,p=AAAA")}).Encode(nil)
	f.Add(startup, ir)
	f.Add(append(ssl, startup...), append(ir, resp...))
	f.Add(ssl, irPlus)
	f.Add([]byte{0x16, 3, 1, 0, 5}, []byte("p\x00\x00\x00\x04"))
	f.Add([]byte{0, 0, 0, 8, 0, 2, 0, 0}, []byte{'p', 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{}, []byte("n,,n=,r="))
	f.Fuzz(func(t *testing.T, plain, sasl []byte) {
		before := h.dials.Load()
		// 1. Plaintext first packets.
		pc, err := net.DialTimeout("tcp", h.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			_, _ = pc.Write(plain)
			_ = pc.(*net.TCPConn).CloseWrite()
		}()
		_ = pc.SetReadDeadline(time.Now().Add(20 * time.Second))
		got, readErr := io.ReadAll(pc)
		pc.Close()
		if isTimeout(readErr) {
			t.Fatalf("plaintext: no answer or close within 20 s (got %q)", got)
		}
		// 2. SCRAM messages after TLS and a StartupMessage.
		c, err := net.DialTimeout("tcp", h.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := c.Write(ssl); err != nil {
			t.Fatal(err)
		}
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'S' {
			t.Fatalf("SSLRequest answer %q, %v", b[0], err)
		}
		tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true}) // the fuzzer checks the gateway's answers, not its identity
		if err := tc.Handshake(); err != nil {
			t.Fatalf("TLS handshake: %v\n%s", err, h.logs.String())
		}
		// The gateway may refuse and close before all is written: a write
		// error is no finding, the answers are.
		go func() {
			if _, err := tc.Write(append(append([]byte(nil), startup...), sasl...)); err == nil {
				_ = tc.CloseWrite()
			}
		}()
		sawError := false
		for {
			msg, err := pgwire.ReadMessage(tc, nil, 1<<20)
			if err != nil {
				if isTimeout(err) {
					t.Fatalf("SCRAM: no answer or close within 20 s")
				}
				break
			}
			if sawError {
				t.Fatalf("a message after the ErrorResponse: %q", msg)
			}
			switch msg[0] {
			case 'R':
			case 'E':
				checkErrorResponse(t, msg, false)
				sawError = true
			default:
				t.Fatalf("unexpected message %q during authentication", msg)
			}
		}
		if n := h.dials.Load() - before; n != 0 {
			t.Fatalf("the gateway dialed the upstream %d times without a valid proof", n)
		}
	})
}
