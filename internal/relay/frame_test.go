package relay

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/failure"
)

// msg builds a PostgreSQL message of type typ with body.
func msg(typ byte, body string) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(4+len(body)))
	return append(b, body...)
}

// TestScanServerSplits gives the framer a server stream cut at every
// possible place and in random pieces: the watched messages come out
// whole, in order, and nothing else does.
func TestScanServerSplits(t *testing.T) {
	var stream []byte
	var want [][]byte
	for _, m := range [][]byte{
		msg('T', "rowdesc"), msg('D', strings.Repeat("x", 3000)), msg('C', "SELECT 1\x00"),
		msg('S', "TimeZone\x00UTC\x00"), msg('Z', "I"), msg('N', "notice"),
		msg('E', "SFATAL\x00C57P01\x00Mbye\x00\x00"), msg('D', ""), msg('Z', "T"),
	} {
		stream = append(stream, m...)
		if watched(m[0]) {
			want = append(want, m)
		}
	}
	check := func(t *testing.T, cuts []int) {
		t.Helper()
		var f framer
		var got [][]byte
		prev := 0
		for _, c := range append(cuts, len(stream)) {
			if err := f.scanServer(stream[prev:c], func(m []byte) { got = append(got, bytes.Clone(m)) }); err != nil {
				t.Fatal(err)
			}
			prev = c
		}
		if !f.between() {
			t.Fatalf("cuts %v: not between messages at the end", cuts)
		}
		if len(got) != len(want) {
			t.Fatalf("cuts %v: %d messages, want %d", cuts, len(got), len(want))
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("cuts %v: message %d = %q, want %q", cuts, i, got[i], want[i])
			}
		}
	}
	for c := 0; c <= len(stream); c++ {
		check(t, []int{c})
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		var cuts []int
		for c := rng.IntN(8); c < len(stream); c += 1 + rng.IntN(40) {
			cuts = append(cuts, c)
		}
		check(t, cuts)
	}
}

// TestScanServerMidMessage: a stream that stops inside a message or its
// header is not between messages.
func TestScanServerMidMessage(t *testing.T) {
	m := msg('D', "abcdef")
	for c := 1; c < len(m); c++ {
		var f framer
		if err := f.scanServer(m[:c], func([]byte) {}); err != nil {
			t.Fatal(err)
		}
		if f.between() {
			t.Fatalf("after %d of %d bytes: between messages", c, len(m))
		}
	}
}

// TestScanRejectsBadLength: a length word below 4, or a parameter report
// above the bound, is an error naming the message.
func TestScanRejectsBadLength(t *testing.T) {
	var f framer
	err := f.scanServer([]byte{'Z', 0, 0, 0, 3}, func([]byte) {})
	if err == nil || !strings.Contains(err.Error(), "length 3") {
		t.Fatalf("server length 3: %v", err)
	}
	if e, ok := failure.As(err); !ok || e.Class != failure.ProtocolError || e.Evidence == "" || e.Fix == "" {
		t.Fatalf("server length 3: %#v, want a protocol_error with evidence and a fix", err)
	}
	f = framer{}
	big := []byte{'S', 0, 0, 0, 0}
	binary.BigEndian.PutUint32(big[1:], maxWatched+5)
	if err := f.scanServer(big, func([]byte) {}); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("oversized parameter report: %v", err)
	}
	f = framer{}
	if _, _, err := f.scanClient([]byte{'Q', 0, 0, 0, 1}, func(byte) {}); err == nil || !strings.Contains(err.Error(), "client message") {
		t.Fatalf("client length 1: %v", err)
	}
}

// TestScanClientTerminate: the client's types are told in order, and a
// Terminate stops the scan where it begins.
func TestScanClientTerminate(t *testing.T) {
	stream := append(append(msg('P', "s\x00select 1\x00\x00\x00"), msg('S', "")...), msg('Q', "select 2\x00")...)
	stop := len(stream)
	stream = append(append(stream, msg('X', "")...), msg('Q', "after\x00")...)
	for c := 0; c <= stop; c++ {
		var f framer
		var types []byte
		pass1, term1, err := f.scanClient(stream[:c], func(b byte) { types = append(types, b) })
		if err != nil || term1 || pass1 != c {
			t.Fatalf("cut %d: first part pass %d terminated %v err %v", c, pass1, term1, err)
		}
		pass2, term2, err := f.scanClient(stream[c:], func(b byte) { types = append(types, b) })
		if err != nil || !term2 || c+pass2 != stop {
			t.Fatalf("cut %d: pass %d terminated %v err %v, want Terminate at %d", c, c+pass2, term2, err, stop)
		}
		if string(types) != "PSQ" || !f.between() || f.terminateHere != 5 {
			t.Fatalf("cut %d: types %q between %v", c, types, f.between())
		}
	}
	// A Terminate whose header began in an earlier chunk went partly to
	// the upstream: not between messages.
	var f framer
	x := msg('X', "")
	if _, term, _ := f.scanClient(x[:2], func(byte) {}); term {
		t.Fatal("terminated on a partial header")
	}
	if pass, term, _ := f.scanClient(x[2:], func(byte) {}); !term || pass != 0 || f.between() || f.terminateHere != 3 {
		t.Fatalf("split Terminate: pass %d terminated %v between %v, %d of its bytes here", pass, term, f.between(), f.terminateHere)
	}
}

// TestScanServerLongParameter: a parameter report longer than an error's
// prefix is given whole.
func TestScanServerLongParameter(t *testing.T) {
	m := msg('S', "search_path\x00"+strings.Repeat("s", 3*errorPrefix)+"\x00")
	var f framer
	var got []byte
	for i := 0; i < len(m); i += 1000 {
		if err := f.scanServer(m[i:min(i+1000, len(m))], func(b []byte) { got = bytes.Clone(b) }); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, m) {
		t.Fatalf("got %d bytes of a %d-byte parameter report", len(got), len(m))
	}
}
