package pgtls_test

import (
	"crypto/tls"
	"testing"

	"github.com/pgtrust/pgtrust/internal/testpki"
)

// tlsServerWithoutALPN is a generic TLS endpoint that selects no ALPN
// protocol: what a direct-TLS client must refuse to talk PostgreSQL to.
func tlsServerWithoutALPN(t *testing.T, leaf *testpki.Leaf) string {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{leaf.TLSCertificate()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.(*tls.Conn).Handshake()
				buf := make([]byte, 1)
				c.Read(buf)
			}()
		}
	}()
	return l.Addr().String()
}
