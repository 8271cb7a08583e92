//go:build linux

package relay

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/internal/testpki"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (dialed, accepted net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a := <-ch
	if a == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { d.Close(); a.Close() })
	return d, a
}

type tlsSetup struct {
	server, client *tls.Config
}

func newTLS(t *testing.T) tlsSetup {
	ca := testpki.NewRootCA(t, "relay test CA")
	leaf := ca.Server(t, testpki.WithDNS("localhost"))
	return tlsSetup{
		server: &tls.Config{Certificates: []tls.Certificate{leaf.TLSCertificate()}},
		client: &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"},
	}
}

// handshake runs both ends of a TLS handshake.
func handshake(t *testing.T, c, s *tls.Conn) {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- s.Handshake() }()
	if err := c.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// rig is app ⇄ [client side | relay | upstream side] ⇄ server, each end
// plain or TLS.
type rig struct {
	app, server net.Conn // the test's ends
	client, up  net.Conn // what the relay gets
}

func newRig(t *testing.T, clientTLS, upTLS bool) rig {
	var r rig
	var tc tlsSetup
	if clientTLS || upTLS {
		tc = newTLS(t)
	}
	app, proxyIn := tcpPair(t)
	r.app, r.client = app, proxyIn
	if clientTLS {
		a, p := tls.Client(app, tc.client), tls.Server(Wrap(proxyIn), tc.server)
		handshake(t, a, p)
		r.app, r.client = a, p
	}
	proxyOut, server := tcpPair(t)
	r.up, r.server = proxyOut, server
	if upTLS {
		p, s := tls.Client(Wrap(proxyOut), tc.client), tls.Server(server, tc.server)
		handshake(t, p, s)
		r.up, r.server = p, s
	}
	return r
}

func startLoops(t *testing.T, n int) *Loops {
	t.Helper()
	ls, err := New(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ls.Close() })
	return ls
}

func start(t *testing.T, ls *Loops, r rig, grace time.Duration) (*Session, <-chan Result, *counts) {
	t.Helper()
	done := make(chan Result, 1)
	c := &counts{}
	s, err := ls.Start(r.client, r.up, Hooks{
		ClientBytes:   c.addIn,
		UpstreamBytes: c.addOut,
		Grace:         grace,
		Done:          func(res Result) { done <- res },
	})
	if err != nil {
		t.Fatal(err)
	}
	return s, done, c
}

type counts struct {
	mu      sync.Mutex
	in, out int
}

func (c *counts) addIn(n int)  { c.mu.Lock(); c.in += n; c.mu.Unlock() }
func (c *counts) addOut(n int) { c.mu.Lock(); c.out += n; c.mu.Unlock() }

func wait(t *testing.T, done <-chan Result) Result {
	t.Helper()
	select {
	case r := <-done:
		return r
	case <-time.After(20 * time.Second):
		t.Fatal("the session did not end")
	}
	return Result{}
}

func closeWrite(t *testing.T, c net.Conn) {
	t.Helper()
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
}

var modes = []struct {
	name             string
	clientTLS, upTLS bool
}{
	{"plain-plain", false, false},
	{"plain-tls", false, true},
	{"tls-tls", true, true},
	{"tls-plain", true, false},
}

// TestEcho streams 4 MiB each way through an echoing server, with the app
// reading late so that the loop must hold back (EPOLLOUT, reads paused),
// then ends cleanly from the client's side.
func TestEcho(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			ls := startLoops(t, 2)
			r := newRig(t, m.clientTLS, m.upTLS)
			_, done, cnt := start(t, ls, r, 10*time.Second)
			go func() {
				_, _ = io.Copy(r.server, r.server) // echo until the client's end
				r.server.Close()
			}()
			payload := make([]byte, 4<<20)
			_, _ = rand.Read(payload)
			werr := make(chan error, 1)
			go func() {
				_, err := r.app.Write(payload)
				if err == nil {
					err = r.app.(interface{ CloseWrite() error }).CloseWrite()
				}
				werr <- err
			}()
			time.Sleep(200 * time.Millisecond) // let every buffer on the way fill
			got, err := io.ReadAll(r.app)
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if err := <-werr; err != nil {
				t.Fatalf("write: %v", err)
			}
			if sha256.Sum256(got) != sha256.Sum256(payload) {
				t.Fatalf("echo differs: %d bytes back of %d", len(got), len(payload))
			}
			res := wait(t, done)
			if res.First != Client || res.ClientErr != nil || res.UpstreamErr != nil {
				t.Fatalf("result %+v, want a clean end from the client", res)
			}
			if cnt.in != len(payload) || cnt.out != len(payload) {
				t.Fatalf("counted %d in, %d out; want %d each", cnt.in, cnt.out, len(payload))
			}
		})
	}
}

// TestBufferedBeforeStart: bytes crypto/tls decrypted before the hand-over
// are relayed first, in order.
func TestBufferedBeforeStart(t *testing.T) {
	ls := startLoops(t, 1)
	r := newRig(t, false, true)
	if _, err := r.server.Write([]byte("hello, world")); err != nil {
		t.Fatal(err)
	}
	one := make([]byte, 1)
	if _, err := io.ReadFull(r.up, one); err != nil || one[0] != 'h' {
		t.Fatalf("first byte %q, %v", one, err)
	}
	_, done, _ := start(t, ls, r, time.Second)
	rest := make([]byte, 11)
	if _, err := io.ReadFull(r.app, rest); err != nil || string(rest) != "ello, world" {
		t.Fatalf("relayed %q, %v", rest, err)
	}
	r.server.Close()
	res := wait(t, done)
	if res.First != Upstream || res.UpstreamErr != nil {
		t.Fatalf("result %+v, want a clean end from the upstream", res)
	}
}

// TestClose: Session.Close from another goroutine closes both sides, the
// TLS ones with a close_notify.
func TestClose(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			ls := startLoops(t, 1)
			r := newRig(t, m.clientTLS, m.upTLS)
			s, done, _ := start(t, ls, r, time.Second)
			s.Close()
			res := wait(t, done)
			if res.First != Neither {
				t.Fatalf("result %+v, want First Neither", res)
			}
			for name, c := range map[string]net.Conn{"app": r.app, "server": r.server} {
				_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if n, err := c.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
					t.Fatalf("%s read %d, %v; want EOF", name, n, err)
				}
			}
			s.Close() // again, after the end: nothing happens
		})
	}
}

// TestUpstreamSilent: after the client's clean end, an upstream that sends
// nothing for Grace is closed; one that keeps sending is not.
func TestUpstreamSilent(t *testing.T) {
	ls := startLoops(t, 1)
	r := newRig(t, false, true)
	_, done, _ := start(t, ls, r, 100*time.Millisecond)
	stop := make(chan struct{})
	go func() {
		// Keep sending for a while: the session must outlive Grace.
		for i := 0; i < 6; i++ {
			_, _ = r.server.Write([]byte("x"))
			time.Sleep(50 * time.Millisecond)
		}
		close(stop)
	}()
	closeWrite(t, r.app)
	got := make([]byte, 6)
	if _, err := io.ReadFull(r.app, got); err != nil {
		t.Fatalf("bytes after the client's end: %v", err)
	}
	<-stop
	res := wait(t, done)
	if !res.UpstreamSilent || res.First != Client || res.ClientErr != nil {
		t.Fatalf("result %+v, want the upstream closed as silent", res)
	}
	// The server saw the client's end (close_notify) first.
	_ = r.server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.server.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("server read %v, want EOF", err)
	}
}

// TestUpstreamReset: a reset upstream ends the session with its error.
func TestUpstreamReset(t *testing.T) {
	ls := startLoops(t, 1)
	r := newRig(t, false, false)
	_, done, _ := start(t, ls, r, time.Second)
	_ = r.server.(*net.TCPConn).SetLinger(0)
	r.server.Close()
	res := wait(t, done)
	if res.First != Upstream || res.UpstreamErr == nil {
		t.Fatalf("result %+v, want an upstream error", res)
	}
}

// TestTerminated: a client whose last message is Terminate is told apart
// from one that just went away.
func TestTerminated(t *testing.T) {
	ls := startLoops(t, 1)
	r := newRig(t, false, true)
	_, done, _ := start(t, ls, r, time.Second)
	if _, err := r.app.Write([]byte("Q\x00\x00\x00\x05\x00" + terminateMessage)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 6+5)
	if _, err := io.ReadFull(r.server, got); err != nil {
		t.Fatal(err)
	}
	r.server.Close()
	res := wait(t, done)
	if !res.Terminated || res.First != Upstream || res.UpstreamErr != nil {
		t.Fatalf("result %+v, want terminated", res)
	}
}

// TestNotDetachable: connections without a socket, or TLS not made over
// Wrap, are refused and left untouched.
func TestNotDetachable(t *testing.T) {
	ls := startLoops(t, 1)
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	r := newRig(t, false, false)
	if _, err := ls.Start(a, r.up, Hooks{}); !errors.Is(err, ErrNotDetachable) {
		t.Fatalf("pipe: %v, want ErrNotDetachable", err)
	}
	tc := newTLS(t)
	x, y := tcpPair(t)
	cx, sy := tls.Client(x, tc.client), tls.Server(y, tc.server)
	handshake(t, cx, sy)
	if _, err := ls.Start(r.client, cx, Hooks{}); !errors.Is(err, ErrNotDetachable) {
		t.Fatalf("unwrapped TLS: %v, want ErrNotDetachable", err)
	}
	// Both are still usable.
	go func() { _, _ = r.up.Write([]byte("ok")) }()
	got := make([]byte, 2)
	if _, err := io.ReadFull(r.server, got); err != nil || string(got) != "ok" {
		t.Fatalf("after refusal: %q %v", got, err)
	}
}

// TestManySessions runs sessions side by side over two loops, each with
// its own data, and closes the loops with some still open.
func TestManySessions(t *testing.T) {
	ls, err := New(2)
	if err != nil {
		t.Fatal(err)
	}
	const n = 40
	var wg sync.WaitGroup
	dones := make([]<-chan Result, n)
	for i := 0; i < n; i++ {
		r := newRig(t, i%2 == 0, i%3 != 0)
		_, done, _ := start(t, ls, r, time.Second)
		dones[i] = done
		go func() {
			_, _ = io.Copy(r.server, r.server)
			r.server.Close()
		}()
		if i >= n-5 {
			continue // left open for Loops.Close
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			msg := bytes.Repeat([]byte{byte(i)}, 100000+i*997)
			go func() {
				_, _ = r.app.Write(msg)
				_ = r.app.(interface{ CloseWrite() error }).CloseWrite()
			}()
			got, err := io.ReadAll(r.app)
			if err != nil || !bytes.Equal(got, msg) {
				t.Errorf("session %d: %d bytes back of %d, %v", i, len(got), len(msg), err)
			}
		}(i)
	}
	wg.Wait()
	for i := 0; i < n-5; i++ {
		if res := wait(t, dones[i]); res.First != Client || res.ClientErr != nil {
			t.Errorf("session %d: %+v", i, res)
		}
	}
	if err := ls.Close(); err != nil {
		t.Fatal(err)
	}
	for i := n - 5; i < n; i++ {
		if res := wait(t, dones[i]); res.First != Neither {
			t.Errorf("open session %d: %+v, want First Neither", i, res)
		}
	}
}

// TestStreamDoesNotStarve: on one loop, a session with an endless stream
// from its upstream must not keep another session's round trips waiting.
func TestStreamDoesNotStarve(t *testing.T) {
	ls := startLoops(t, 1)
	stream := newRig(t, false, true)
	_, streamDone, _ := start(t, ls, stream, time.Second)
	stop := make(chan struct{})
	go func() {
		chunk := bytes.Repeat([]byte("d"), 64<<10)
		for {
			select {
			case <-stop:
				stream.server.Close()
				return
			default:
			}
			if _, err := stream.server.Write(chunk); err != nil {
				return
			}
		}
	}()
	go func() { _, _ = io.Copy(io.Discard, stream.app) }()

	pp := newRig(t, false, true)
	_, ppDone, _ := start(t, ls, pp, time.Second)
	go func() {
		_, _ = io.Copy(pp.server, pp.server)
		pp.server.Close()
	}()
	buf := make([]byte, 4)
	for i := 0; i < 200; i++ {
		if _, err := pp.app.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		_ = pp.app.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(pp.app, buf); err != nil {
			t.Fatalf("round trip %d beside the stream: %v", i, err)
		}
	}
	close(stop)
	closeWrite(t, pp.app)
	if res := wait(t, ppDone); res.First != Client {
		t.Fatalf("ping-pong session: %+v", res)
	}
	if res := wait(t, streamDone); res.First != Upstream {
		t.Fatalf("stream session: %+v", res)
	}
}

// TestClientGoneAfterItsEnd: a client that ended its side and then
// vanished (reset) ends the session at once, although the upstream has
// its whole grace left: nothing can reach that client any more.
func TestClientGoneAfterItsEnd(t *testing.T) {
	ls := startLoops(t, 1)
	r := newRig(t, false, true)
	_, done, _ := start(t, ls, r, time.Hour)
	closeWrite(t, r.app)
	_ = r.server.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := r.server.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("the upstream did not see the client's end: %v", err)
	}
	_ = r.app.(*net.TCPConn).SetLinger(0)
	r.app.Close()
	res := wait(t, done)
	if res.First != Client || res.ClientErr != nil || res.UpstreamSilent {
		t.Fatalf("result %+v, want the client's clean end", res)
	}
}

// rawOf is the socket under a test end (a TLS connection's transport).
func rawOf(c net.Conn) net.Conn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if rc, ok := c.(*Conn); ok {
		c = rc.Conn
	}
	return c
}

// TestEndAfterShortRead: an upstream that sends its last bytes and closes
// (as PostgreSQL does after a FATAL), TLS ones without close_notify, is
// seen to end although the read that returned the bytes was short and the
// loop then waited. One P makes the loop wait between the two.
func TestEndAfterShortRead(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			ls := startLoops(t, 1)
			r := newRig(t, m.clientTLS, m.upTLS)
			_, done, _ := start(t, ls, r, time.Hour)
			time.Sleep(50 * time.Millisecond) // the loop is waiting
			msg := "FATAL: terminating connection due to administrator command"
			if _, err := r.server.Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
			rawOf(r.server).Close() // no close_notify: a killed backend
			_ = r.app.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(r.app)
			if err != nil || string(got) != msg {
				t.Fatalf("client got %q, %v; want the message, then the end", got, err)
			}
			if res := wait(t, done); res.First != Upstream {
				t.Fatalf("result %+v, want the upstream's end", res)
			}
		})
	}
}

// TestBothDirectionsHeldBack: small socket buffers and an app that reads
// in bursts hold both directions back at once, over and over; interest
// changes on entries the last poll returned must not leave the session
// waiting for an edge that never comes.
func TestBothDirectionsHeldBack(t *testing.T) {
	ls := startLoops(t, 1)
	// 8 KiB socket buffers make TCP itself slow (window updates wait for
	// the persist timer): a few hundred KiB are enough transitions.
	for iter := 0; iter < 4; iter++ {
		r := newRig(t, true, true)
		for _, c := range []net.Conn{r.client, r.up} {
			tc := rawOf(c).(*net.TCPConn)
			_ = tc.SetReadBuffer(8 << 10)
			_ = tc.SetWriteBuffer(8 << 10)
		}
		_, done, _ := start(t, ls, r, 10*time.Second)
		go func() {
			_, _ = io.Copy(r.server, r.server)
			r.server.Close()
		}()
		payload := bytes.Repeat([]byte("0123456789abcdef"), 8<<10)
		go func() {
			for off := 0; off < len(payload); off += 4096 {
				if _, err := r.app.Write(payload[off : off+4096]); err != nil {
					return
				}
			}
			_ = r.app.(interface{ CloseWrite() error }).CloseWrite()
		}()
		var got []byte
		buf := make([]byte, 3000)
		for len(got) < len(payload) {
			time.Sleep(time.Millisecond)
			_ = r.app.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, err := r.app.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				t.Fatalf("iteration %d: stalled after %d of %d bytes: %v", iter, len(got), len(payload), err)
			}
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("iteration %d: the echo differs", iter)
		}
		if res := wait(t, done); res.First != Client || res.ClientErr != nil {
			t.Fatalf("iteration %d: result %+v", iter, res)
		}
	}
}

// TestStoppedLoop: a session handed to loops that are closed ends at once
// (its Done runs), and its sockets are closed.
func TestStoppedLoop(t *testing.T) {
	ls, err := New(1)
	if err != nil {
		t.Fatal(err)
	}
	ls.Close()
	r := newRig(t, false, true)
	_, done, _ := start(t, ls, r, time.Second)
	if res := wait(t, done); res.UpstreamErr == nil {
		t.Fatalf("result %+v, want the stopped loop's error", res)
	}
	_ = r.app.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.app.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("app read %v, want EOF", err)
	}
}
