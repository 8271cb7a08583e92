package serverpool

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// tcpPair is a connected loopback TCP pair.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	client, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// wrapped embeds net.Conn like pgtls's first-byte recorder does.
type wrapped struct{ net.Conn }

func TestPeekSocket(t *testing.T) {
	client, server := tcpPair(t)
	// Below TLS and a wrapper that hides the socket's methods.
	sc := socketOf(tls.Client(&wrapped{client}, &tls.Config{}))
	if sc == nil {
		t.Fatal("no socket found below tls.Conn and the wrapper")
	}
	if err := peekSocket(sc); err != nil {
		t.Fatalf("idle socket: %v", err)
	}
	if _, err := server.Write([]byte("E")); err != nil {
		t.Fatal(err)
	}
	// The byte is on its way through loopback.
	for i := 0; ; i++ {
		err := peekSocket(sc)
		if errors.Is(err, errUnexpectedData) {
			break
		}
		if err != nil || i == 1000 {
			t.Fatalf("pending byte never seen: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
	// The peek consumed nothing: the byte is still there.
	b := make([]byte, 1)
	if _, err := io.ReadFull(client, b); err != nil || b[0] != 'E' {
		t.Fatalf("read %q %v after the peek", b, err)
	}
	if err := peekSocket(sc); err != nil {
		t.Fatalf("drained socket: %v", err)
	}
	server.Close()
	for range 1000 {
		if err := peekSocket(sc); errors.Is(err, io.EOF) {
			return
		}
	}
	t.Fatal("the closed peer was never seen")
}

func TestReadCheck(t *testing.T) {
	a, b := tcpPair(t)
	if err := readCheck(a); err != nil {
		t.Fatalf("idle socket: %v", err)
	}
	if _, err := b.Write([]byte("EX")); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ { // the bytes are on their way through loopback
		err := readCheck(a)
		if errors.Is(err, errUnexpectedData) {
			break
		}
		if err != nil || i == 1000 {
			t.Fatalf("pending byte never seen: %v", err)
		}
	}
	// The deadline was reset: a plain read gets the next byte.
	buf := make([]byte, 1)
	if _, err := a.Read(buf); err != nil || buf[0] != 'X' {
		t.Fatalf("read after the check: %q %v", buf, err)
	}
	b.Close()
	for i := 0; ; i++ {
		err := readCheck(a)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil || i == 1000 {
			t.Fatalf("closed peer never seen: %v", err)
		}
	}
}
