package pgtls

import (
	"bytes"
	"context"
	"net"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
)

// scriptConn is a net.Conn whose peer "says" a fixed byte string and
// swallows everything written to it.
type scriptConn struct {
	r *bytes.Reader
}

func (c *scriptConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *scriptConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *scriptConn) Close() error                     { return nil }
func (c *scriptConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *scriptConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzNegotiationReply feeds arbitrary server bytes to the pre-TLS
// negotiation and the handshake: it must never panic, never succeed without
// a real TLS server, and always fail with a classified error.
func FuzzNegotiationReply(f *testing.F) {
	for _, seed := range [][]byte{
		nil, []byte("S"), []byte("N"), []byte("E"), []byte("X"),
		append([]byte("S"), 'E', 0, 0, 0, 8, 'S', 'F', 0), // injected ErrorResponse after 'S'
		[]byte("S\x16\x03\x03\x00\x02\x02\x28"),           // 'S' then a TLS alert record
		[]byte("HTTP/1.1 400 Bad Request\r\n\r\n"),
		[]byte("S\x16\x03\x01\xff\xff"), // truncated oversized record
	} {
		f.Add(seed, false)
		f.Add(seed, true)
	}
	home := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte, direct bool) {
		dsn := "host=localhost port=5432 sslmode=require"
		if direct {
			dsn += " sslnegotiation=direct"
		}
		cfg, err := connstring.ParseWithEnv(dsn, map[string]string{}, home)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		facts := &Facts{}
		conn := &scriptConn{r: bytes.NewReader(data)}
		tc, err := negotiateTLS(ctx, conn, cfg, cfg.Hosts[0], "127.0.0.1:5432", nil, facts)
		if err == nil {
			tc.Close()
			t.Fatalf("negotiation succeeded against scripted bytes %q", data)
		}
		if r, ok := err.(serverRefusedSSL); ok {
			if direct || len(data) == 0 || data[0] != 'N' {
				t.Fatalf("'N' result for input %q (direct=%v)", data, direct)
			}
			err = r.err
		}
		if _, ok := failure.As(err); !ok {
			t.Fatalf("unclassified error %T %v for input %q", err, err, data)
		}
		if !direct && len(data) > 0 && data[0] == 'E' && failure.ClassOf(err) != failure.ProtocolError {
			t.Fatalf("'E' reply classified %s", failure.ClassOf(err))
		}
	})
}
