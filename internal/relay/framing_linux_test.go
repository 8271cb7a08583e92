//go:build linux

package relay

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// framingRig is newRig with the upstream made over Wrap even when plain,
// so that it can be kept.
func framingRig(t *testing.T, clientTLS, upTLS bool) rig {
	r := newRig(t, clientTLS, upTLS)
	if !upTLS {
		r.up = Wrap(r.up)
	}
	return r
}

type seen struct {
	mu     sync.Mutex
	client []byte
	server [][]byte
}

func (s *seen) framing(lost []byte) *Framing {
	return &Framing{
		Client: func(b byte) { s.mu.Lock(); s.client = append(s.client, b); s.mu.Unlock() },
		Server: func(m []byte) { s.mu.Lock(); s.server = append(s.server, bytes.Clone(m)); s.mu.Unlock() },
		Lost:   func(error) []byte { return lost },
	}
}

func startFramed(t *testing.T, ls *Loops, client, up net.Conn, f *Framing) (*Session, <-chan Result) {
	t.Helper()
	done := make(chan Result, 1)
	s, err := ls.Start(client, up, Hooks{Framing: f, Done: func(res Result) { done <- res }})
	if err != nil {
		t.Fatal(err)
	}
	return s, done
}

// wantGone checks that c's peer is gone: a read ends within 10 s, with
// the end of the stream or an error, and no byte.
func wantGone(t *testing.T, c net.Conn, what string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := c.Read(make([]byte, 1))
	if n > 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("%s: read %d byte(s), %v; want it closed", what, n, err)
	}
}

func readN(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

// TestFramingKeepsUpstream: a client's Terminate ends the session without
// reaching the server; the upstream comes back usable, as the same
// net.Conn, for a direct exchange and then for a second relayed session.
func TestFramingKeepsUpstream(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			ls := startLoops(t, 1)
			r := framingRig(t, m.clientTLS, m.upTLS)
			var sn seen
			_, done := startFramed(t, ls, r.client, r.up, sn.framing(nil))

			query := msg('Q', "select 1\x00")
			if _, err := r.app.Write(query); err != nil {
				t.Fatal(err)
			}
			if got := readN(t, r.server, len(query)); !bytes.Equal(got, query) {
				t.Fatalf("server got %q", got)
			}
			// The answer in two writes that cut a watched message.
			answer := append(append(msg('D', "row"), msg('S', "TimeZone\x00UTC\x00")...), msg('Z', "I")...)
			for _, part := range [][]byte{answer[:12], answer[12:]} {
				if _, err := r.server.Write(part); err != nil {
					t.Fatal(err)
				}
				time.Sleep(10 * time.Millisecond)
			}
			if got := readN(t, r.app, len(answer)); !bytes.Equal(got, answer) {
				t.Fatalf("client got %q", got)
			}
			if _, err := r.app.Write(msg('X', "")); err != nil {
				t.Fatal(err)
			}
			res := wait(t, done)
			if !res.Terminated || !res.UpstreamKept || res.UpstreamEnded || res.First != Client || res.ClientErr != nil {
				t.Fatalf("result %+v, want terminated with the upstream kept", res)
			}
			sn.mu.Lock()
			if string(sn.client) != "Q" || len(sn.server) != 2 || sn.server[0][0] != 'S' || sn.server[1][0] != 'Z' {
				t.Fatalf("hooks saw client %q server %q", sn.client, sn.server)
			}
			sn.mu.Unlock()

			// The kept upstream, directly: the Terminate never reached it.
			ping := msg('Q', "select 2\x00")
			go func() { _, _ = r.up.Write(ping) }()
			if got := readN(t, r.server, len(ping)); !bytes.Equal(got, ping) {
				t.Fatalf("after the session the server got %q, want the next query (no Terminate)", got)
			}
			go func() { _, _ = r.server.Write(msg('Z', "I")) }()
			if got := readN(t, r.up, 6); !bytes.Equal(got, msg('Z', "I")) {
				t.Fatalf("kept upstream read %q", got)
			}

			// And relayed again, for a second client.
			r2 := newRig(t, m.clientTLS, false)
			_, done2 := startFramed(t, ls, r2.client, r.up, (&seen{}).framing(nil))
			go func() { _, _ = r2.app.Write(query) }()
			if got := readN(t, r.server, len(query)); !bytes.Equal(got, query) {
				t.Fatalf("second session: server got %q", got)
			}
			r2.app.Close()
			if res := wait(t, done2); !res.UpstreamKept || res.First != Client || res.Terminated {
				t.Fatalf("second session: %+v, want the upstream kept after the client closed", res)
			}
		})
	}
}

// TestFramingMidMessageNotKept: a client that goes away in the middle of
// a message leaves the server waiting for the rest: the upstream is
// closed, not kept.
func TestFramingMidMessageNotKept(t *testing.T) {
	ls := startLoops(t, 1)
	r := framingRig(t, false, true)
	_, done := startFramed(t, ls, r.client, r.up, (&seen{}).framing(nil))
	q := msg('Q', "select 1\x00")
	if _, err := r.app.Write(q[:7]); err != nil {
		t.Fatal(err)
	}
	readN(t, r.server, 7)
	r.app.Close()
	res := wait(t, done)
	if res.UpstreamKept {
		t.Fatalf("result %+v: kept mid-message", res)
	}
	wantGone(t, r.server, "the server after a mid-message end")
}

// TestFramingServerLost: an upstream that ends first has its last bytes
// and then Lost's passed to the client, and is not kept.
func TestFramingServerLost(t *testing.T) {
	ls := startLoops(t, 1)
	r := framingRig(t, true, true)
	lost := msg('E', "SFATAL\x00C08006\x00Mlost\x00\x00")
	_, done := startFramed(t, ls, r.client, r.up, (&seen{}).framing(lost))
	last := msg('N', "bye")
	if _, err := r.server.Write(last); err != nil {
		t.Fatal(err)
	}
	r.server.Close()
	want := append(bytes.Clone(last), lost...)
	if got := readN(t, r.app, len(want)); !bytes.Equal(got, want) {
		t.Fatalf("client got %q, want %q", got, want)
	}
	res := wait(t, done)
	if res.UpstreamKept || !res.UpstreamEnded || res.First != Upstream {
		t.Fatalf("result %+v, want the upstream ended first and not kept", res)
	}
	_ = r.app.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := r.app.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("client after the end: %v, want EOF", err)
	}
}

// TestFramingCloseKeeps: a session closed from outside between messages
// keeps its upstream.
func TestFramingCloseKeeps(t *testing.T) {
	ls := startLoops(t, 1)
	r := framingRig(t, false, true)
	s, done := startFramed(t, ls, r.client, r.up, (&seen{}).framing(nil))
	s.Close()
	res := wait(t, done)
	if !res.UpstreamKept || res.First != Neither {
		t.Fatalf("result %+v, want kept after Close", res)
	}
	if tc, ok := r.up.(*tls.Conn); ok {
		go func() { _, _ = tc.Write([]byte("hi")) }()
		if got := readN(t, r.server, 2); string(got) != "hi" {
			t.Fatalf("server got %q", got)
		}
	}
}

// TestFramingNeedsCallersUpstream: a plaintext upstream not made over Wrap
// has no Conn of the caller's to go back under: refused, left untouched.
func TestFramingNeedsCallersUpstream(t *testing.T) {
	ls := startLoops(t, 1)
	r := newRig(t, false, false)
	if _, err := ls.Start(r.client, r.up, Hooks{Framing: (&seen{}).framing(nil)}); !errors.Is(err, ErrNotDetachable) {
		t.Fatalf("unwrapped plaintext upstream with Framing: %v, want ErrNotDetachable", err)
	}
	go func() { _, _ = r.up.Write([]byte("ok")) }()
	if got := readN(t, r.server, 2); string(got) != "ok" {
		t.Fatalf("after refusal: %q", got)
	}
}

// TestFramingLargeError: an ErrorResponse of 2 MiB passes whole; Server
// gets its first 4 KiB, and the session goes on.
func TestFramingLargeError(t *testing.T) {
	ls := startLoops(t, 1)
	r := framingRig(t, false, true)
	var sn seen
	_, done := startFramed(t, ls, r.client, r.up, sn.framing(nil))
	big := append(msg('E', "SERROR\x00VERROR\x00CP0001\x00M"+strings.Repeat("x", 2<<20)+"\x00\x00"), msg('Z', "I")...)
	go func() { _, _ = r.server.Write(big) }()
	if got := readN(t, r.app, len(big)); !bytes.Equal(got, big) {
		t.Fatal("the client did not get the error whole")
	}
	sn.mu.Lock()
	if len(sn.server) != 2 || len(sn.server[0]) != errorPrefix || !bytes.Equal(sn.server[0], big[:errorPrefix]) || sn.server[1][0] != 'Z' {
		t.Fatalf("Server got %d messages, the first of %d bytes", len(sn.server), len(sn.server[0]))
	}
	sn.mu.Unlock()
	if _, err := r.app.Write(msg('X', "")); err != nil {
		t.Fatal(err)
	}
	if res := wait(t, done); !res.UpstreamKept {
		t.Fatalf("result %+v, want kept", res)
	}
}

// TestCloseWith: a session closed with a goodbye passes on what was on its
// way, then the goodbye, then ends; the upstream is not kept.
func TestCloseWith(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			ls := startLoops(t, 1)
			r := framingRig(t, m.clientTLS, m.upTLS)
			s, done := startFramed(t, ls, r.client, r.up, (&seen{}).framing(nil))
			z := msg('Z', "T")
			if _, err := r.server.Write(z); err != nil {
				t.Fatal(err)
			}
			readN(t, r.app, len(z))
			bye := msg('E', "SFATAL\x00C25P03\x00Midle\x00\x00")
			s.CloseWith(bye, nil)
			if got := readN(t, r.app, len(bye)); !bytes.Equal(got, bye) {
				t.Fatalf("client got %q, want the goodbye", got)
			}
			res := wait(t, done)
			if res.UpstreamKept || res.First != Neither {
				t.Fatalf("result %+v, want closed, upstream not kept", res)
			}
			wantGone(t, r.app, "the client after the goodbye")
			wantGone(t, r.server, "the server after CloseWith")
		})
	}
}

// TestCloseWithMidMessage: a goodbye never lands inside a message the
// upstream had half sent; the client gets what was sent and the end.
func TestCloseWithMidMessage(t *testing.T) {
	ls := startLoops(t, 1)
	r := framingRig(t, false, false)
	s, done := startFramed(t, ls, r.client, r.up, (&seen{}).framing(nil))
	row := msg('D', "0123456789abcdefghij")
	if _, err := r.server.Write(row[:10]); err != nil {
		t.Fatal(err)
	}
	readN(t, r.app, 10)
	s.CloseWith(msg('E', "SFATAL\x00C25P03\x00Midle\x00\x00"), nil)
	wait(t, done)
	_ = r.app.SetReadDeadline(time.Now().Add(5 * time.Second))
	if rest, err := io.ReadAll(r.app); err != nil || len(rest) != 0 {
		t.Fatalf("after a half-sent message the client got %q more (%v), want the end alone", rest, err)
	}
}

// TestCloseWithClientNotReading: the upstream closes at once, even when
// the client does not read what waits for it.
func TestCloseWithClientNotReading(t *testing.T) {
	ls := startLoops(t, 1)
	r := framingRig(t, false, true)
	_ = rawOf(r.app).(*net.TCPConn).SetReadBuffer(4096)
	s, _ := startFramed(t, ls, r.client, r.up, (&seen{}).framing(nil))
	row := msg('D', strings.Repeat("x", 8000))
	_ = r.server.SetWriteDeadline(time.Now().Add(2 * time.Second))
	for {
		if _, err := r.server.Write(row); err != nil {
			break // the loop holds back: the client reads nothing
		}
	}
	time.Sleep(100 * time.Millisecond)
	s.CloseWith(msg('E', "SFATAL\x00C25P03\x00Midle\x00\x00"), nil)
	wantGone(t, r.server, "the upstream after CloseWith, while the client does not read")
}

// TestCloseWithStill: a close whose condition no longer holds on the loop
// does nothing; the session goes on.
func TestCloseWithStill(t *testing.T) {
	ls := startLoops(t, 1)
	r := framingRig(t, false, true)
	s, done := startFramed(t, ls, r.client, r.up, (&seen{}).framing(nil))
	asked := make(chan struct{})
	s.CloseWith(msg('E', "SFATAL\x00C25P03\x00Midle\x00\x00"), func() bool { close(asked); return false })
	<-asked
	q := msg('Q', "select 1\x00")
	if _, err := r.app.Write(q); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, r.server, len(q)); !bytes.Equal(got, q) {
		t.Fatalf("server got %q", got)
	}
	select {
	case res := <-done:
		t.Fatalf("the session ended: %+v", res)
	default:
	}
}
