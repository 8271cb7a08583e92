package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/internal/proxy"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

// The session pipe, benchmarked through the proxy's public API: a local
// plaintext client → the proxy's TCP listener → verify-full TLS 1.3
// (ECDSA P-256) → an in-process upstream that authenticates everyone and
// then either echoes (database "echo") or streams (database "stream").
//
// allocs/op are the process's allocations per operation: the proxy's pipe
// plus whatever crypto/tls allocates; the fake upstream and the client
// allocate nothing per operation.

// pipeUpstream is the fake PostgreSQL server behind the proxy.
type pipeUpstream struct {
	ln  net.Listener
	cfg *tls.Config
	wg  sync.WaitGroup
}

func (u *pipeUpstream) serve() {
	defer u.wg.Done()
	for {
		c, err := u.ln.Accept()
		if err != nil {
			return
		}
		u.wg.Add(1)
		go func() {
			defer u.wg.Done()
			defer c.Close()
			_ = u.session(c)
		}()
	}
}

func (u *pipeUpstream) session(c net.Conn) error {
	var req [8]byte
	if _, err := io.ReadFull(c, req[:]); err != nil {
		return err
	}
	if binary.BigEndian.Uint32(req[4:]) != 80877103 {
		return fmt.Errorf("want SSLRequest, got % x", req)
	}
	if _, err := c.Write([]byte{'S'}); err != nil {
		return err
	}
	tc := tls.Server(c, u.cfg)
	defer tc.Close()
	be := pgproto3.NewBackend(tc, tc)
	msg, err := be.ReceiveStartupMessage()
	if err != nil {
		return err
	}
	sm, ok := msg.(*pgproto3.StartupMessage)
	if !ok {
		return fmt.Errorf("want StartupMessage, got %T", msg)
	}
	be.Send(&pgproto3.AuthenticationOk{})
	be.Send(&pgproto3.BackendKeyData{ProcessID: 1, SecretKey: []byte{0, 0, 0, 1}})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if err := be.Flush(); err != nil {
		return err
	}
	buf := make([]byte, 32<<10)
	switch sm.Parameters["database"] {
	case "echo":
		for {
			n, err := tc.Read(buf)
			if n > 0 {
				if _, werr := tc.Write(buf[:n]); werr != nil {
					return werr
				}
			}
			if err != nil {
				return nil
			}
		}
	case "stream":
		// CopyData-sized writes until the client goes away, as a large
		// result does.
		for i := range buf {
			buf[i] = 'x'
		}
		for {
			if _, err := tc.Write(buf[:16<<10]); err != nil {
				return nil
			}
		}
	}
	return fmt.Errorf("unknown database %q", sm.Parameters["database"])
}

// startPipeProxy starts the fake upstream and a proxy in front of it, and
// returns the proxy's TCP address.
// dataPaths are the proxy's two ways of moving an established session's
// bytes, benchmarked side by side: event loops (the default) and two
// goroutines per session (event_loops = -1).
var dataPaths = []struct {
	name  string
	loops int
}{{"loops", 0}, {"goroutines", -1}}

func startPipeProxy(b *testing.B, eventLoops int) string {
	b.Helper()
	ca := testpki.NewRootCA(b, "bench CA", testpki.WithKeyType(testpki.ECDSAP256))
	server := ca.Server(b, testpki.WithKeyType(testpki.ECDSAP256))
	caFile := testpki.WriteFile(b, b.TempDir(), "ca.crt", ca.CertPEM, 0o644)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	up := &pipeUpstream{ln: ln, cfg: &tls.Config{
		Certificates: []tls.Certificate{server.TLSCertificate()},
		MinVersion:   tls.VersionTLS13,
	}}
	up.wg.Add(1)
	go up.serve()

	conn, err := connstring.Parse(fmt.Sprintf("host=127.0.0.1 port=%d sslmode=verify-full sslrootcert=%s",
		ln.Addr().(*net.TCPAddr).Port, caFile))
	if err != nil {
		b.Fatal(err)
	}
	p, err := proxy.New(proxy.Config{Upstreams: []proxy.UpstreamConfig{{
		Name: "bench", Listen: "127.0.0.1:0", Conn: conn, MaxConnections: 100000,
	}}, EventLoops: eventLoops})
	if err != nil {
		b.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = p.Shutdown(ctx)
		p.Close()
		ln.Close()
		up.wg.Wait()
	})
	addrs := p.Addrs()["bench"]
	if len(addrs) != 1 {
		b.Fatalf("proxy listens on %v", addrs)
	}
	return addrs[0].String()
}

// openSession connects to the proxy, sends a StartupMessage for database
// and reads up to ReadyForQuery.
func openSession(b *testing.B, addr, database string) net.Conn {
	b.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fe := pgproto3.NewFrontend(bufio.NewReader(c), c)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "bench", "database": database}})
	if err := fe.Flush(); err != nil {
		b.Fatal(err)
	}
	for {
		msg, err := fe.Receive()
		if err != nil {
			b.Fatalf("startup through the proxy: %v", err)
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			b.Fatalf("proxy refused: %s: %s (%s)", m.Code, m.Message, m.Detail)
		case *pgproto3.ReadyForQuery:
			// The frontend's reader may hold nothing beyond this message:
			// the upstream sends nothing more until asked.
			_ = c.SetDeadline(time.Time{})
			return c
		}
	}
}

// BenchmarkPipeEcho sends one message of the given size through the proxy
// and reads it back: one round trip of a query and its answer. bytes/s
// counts the message once.
func BenchmarkPipeEcho(b *testing.B) {
	for _, dp := range dataPaths {
		b.Run("path="+dp.name, func(b *testing.B) { benchEcho(b, startPipeProxy(b, dp.loops)) })
	}
}

func benchEcho(b *testing.B, addr string) {
	for _, size := range []int{64, 1 << 10, 8 << 10} {
		b.Run(fmt.Sprintf("msg=%dB", size), func(b *testing.B) {
			c := openSession(b, addr, "echo")
			msg := make([]byte, size)
			msg[0] = 'Q'
			binary.BigEndian.PutUint32(msg[1:5], uint32(size-1))
			reply := make([]byte, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, reply); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			if reply[0] != 'Q' {
				b.Fatalf("echo changed the message: %q", reply[:5])
			}
		})
	}
}

// BenchmarkPipeStream reads a continuous upstream stream (a large result)
// through the proxy, 64 KiB per operation.
func BenchmarkPipeStream(b *testing.B) {
	for _, dp := range dataPaths {
		b.Run("path="+dp.name, func(b *testing.B) { benchStream(b, startPipeProxy(b, dp.loops)) })
	}
}

func benchStream(b *testing.B, addr string) {
	c := openSession(b, addr, "stream")
	buf := make([]byte, 64<<10)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if buf[len(buf)-1] != 'x' {
		b.Fatalf("unexpected stream content %q", buf[len(buf)-1])
	}
}

// BenchmarkIdleSession opens one idle session per operation (client
// connected, upstream TLS established, authenticated) and keeps them all
// open, then reports the live heap and goroutine stacks per session after a
// GC: what a proxied connection costs in memory while it waits. ns/op is the
// cost of opening a session through the proxy.
func BenchmarkIdleSession(b *testing.B) {
	for _, dp := range dataPaths {
		b.Run("path="+dp.name, func(b *testing.B) { benchIdle(b, startPipeProxy(b, dp.loops)) })
	}
}

func benchIdle(b *testing.B, addr string) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	conns := make([]net.Conn, 0, 1024)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		conns = append(conns, openSession(b, addr, "echo"))
	}
	b.StopTimer()
	// Let the proxy's goroutines settle into their blocking reads.
	time.Sleep(100 * time.Millisecond)
	runtime.GC()
	runtime.ReadMemStats(&after)
	n := float64(len(conns))
	b.ReportMetric(float64(int64(after.HeapInuse)-int64(before.HeapInuse))/n, "heap-B/session")
	b.ReportMetric(float64(int64(after.StackInuse)-int64(before.StackInuse))/n, "stack-B/session")
	for _, c := range conns {
		c.Close()
	}
}
