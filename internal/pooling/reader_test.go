package pooling

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"testing"
	"testing/iotest"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgwire"
)

func frame(typ byte, body []byte) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(4+len(body)))
	return append(b, body...)
}

// TestMsgReader: messages come out whole whatever the read sizes, a message
// bigger than the buffer gets its own, Buffered says whether the next one
// is complete, and bad lengths are protocol errors.
func TestMsgReader(t *testing.T) {
	small := frame('Q', []byte("SELECT 1\x00"))
	big := frame('d', bytes.Repeat([]byte{'x'}, 3*readerSize))
	sync := frame('S', nil)
	stream := append(append(append([]byte{}, small...), big...), sync...)
	for name, src := range map[string]io.Reader{
		"whole":     bytes.NewReader(stream),
		"byte-wise": iotest.OneByteReader(bytes.NewReader(stream)),
		"half":      iotest.HalfReader(bytes.NewReader(stream)),
	} {
		t.Run(name, func(t *testing.T) {
			r := newMsgReader(src, 1<<20)
			for i, want := range [][]byte{small, big, sync} {
				got, err := r.Next()
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("message %d: %v, %d bytes, want %d", i, err, len(got), len(want))
				}
			}
			if _, err := r.Next(); !errors.Is(err, io.EOF) {
				t.Fatalf("after the last message: %v, want EOF", err)
			}
		})
	}

	r := newMsgReader(bytes.NewReader(append(append([]byte{}, small...), sync[:3]...)), 1<<20)
	if r.Buffered() {
		t.Fatal("Buffered before any read")
	}
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	if r.Buffered() {
		t.Fatal("Buffered with only part of the next message here")
	}
	if _, err := r.Next(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("a message cut short: %v, want unexpected EOF", err)
	}
	r = newMsgReader(bytes.NewReader(append(append([]byte{}, small...), sync...)), 1<<20)
	if _, err := r.Next(); err != nil || !r.Buffered() {
		t.Fatalf("the next message is complete: err=%v buffered=%v", err, r.Buffered())
	}

	for _, n := range []uint32{3, 1<<20 + 1, 0xffffffff} {
		b := []byte{'Q', 0, 0, 0, 0}
		binary.BigEndian.PutUint32(b[1:], n)
		if _, err := newMsgReader(bytes.NewReader(b), 1<<20).Next(); !errors.Is(err, pgwire.ErrProtocol) {
			t.Fatalf("length %d: %v, want a protocol error", n, err)
		}
	}
}

// FuzzClientMessages feeds arbitrary client bytes to the framing and the
// decoding of the messages the prepared-statement engine reads: no panic,
// every message comes out with the length it announced, and a message that
// does not decode is a classified protocol error.
func FuzzClientMessages(f *testing.F) {
	f.Add(frame('Q', []byte("SELECT 1\x00")))
	f.Add(append(frame('P', []byte("s1\x00SELECT $1\x00\x00\x01\x00\x00\x00\x17")), frame('S', nil)...))
	f.Add(frame('B', []byte("\x00s1\x00\x00\x01\x00\x01\x00\x01\x00\x00\x00\x01x\x00\x00")))
	f.Add(frame('C', []byte("S\x00")))
	f.Add(frame('F', []byte{0, 0, 0, 1, 0, 0, 0, 0, 0, 0}))
	f.Add([]byte{'P', 0, 0, 0, 3})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := newMsgReader(bytes.NewReader(data), 1<<16)
		for {
			msg, err := r.Next()
			if err != nil {
				return
			}
			if n := int(binary.BigEndian.Uint32(msg[1:5])); n+1 != len(msg) {
				t.Fatalf("message of %d bytes announces %d", len(msg), n)
			}
			if _, err := decodeFrontend(msg); err != nil && failure.ClassOf(err) != failure.ProtocolError {
				t.Fatalf("decode error without the protocol_error class: %v", err)
			}
		}
	})
}

// TestMsgReaderAllocatesWhatArrives: a header announcing a large message
// makes the reader allocate for the bytes that come, not for the
// announcement; types PostgreSQL bounds at 10000 bytes are refused above it.
func TestMsgReaderAllocatesWhatArrives(t *testing.T) {
	hdr := []byte{'Q', 0, 0, 0, 0}
	binary.BigEndian.PutUint32(hdr[1:], 512<<20)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := newMsgReader(bytes.NewReader(append(hdr, "SELECT"...)), maxMessage).Next()
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("cut message: %v", err)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
		t.Fatalf("a 5-byte header announcing 512 MiB made the reader allocate %d bytes", grew)
	}
	sync := []byte{'S', 0, 0, 0x27, 0x15} // 10005 bytes
	if _, err := newMsgReader(bytes.NewReader(sync), maxMessage).Next(); !errors.Is(err, pgwire.ErrProtocol) {
		t.Fatalf("a Sync of 10005 bytes: %v, want a protocol error", err)
	}
}

// boundaryProbe records, at each read, whether the reader said it was at a
// message boundary (the only place a parked read may stop).
type boundaryProbe struct {
	src  io.Reader
	rd   *msgReader
	seen []bool
}

func (p *boundaryProbe) Read(b []byte) (int, error) {
	p.seen = append(p.seen, p.rd.atBoundary())
	return p.src.Read(b)
}

// A read may stop for parking only when it is the first of a message and
// nothing is buffered: never inside a message, big or small, nor when the
// next message is partly here. release lets the buffer go only when empty.
func TestMsgReaderBoundary(t *testing.T) {
	small := frame('Q', []byte("SELECT 1\x00"))
	big := frame('d', bytes.Repeat([]byte{'x'}, 3*readerSize))
	stream := append(append(append([]byte{}, small...), big...), small...)
	p := &boundaryProbe{src: iotest.HalfReader(bytes.NewReader(stream))}
	r := newMsgReader(p, 1<<20)
	p.rd = r
	for i := range 3 {
		p.seen = p.seen[:0]
		atStart := r.r == r.w
		if _, err := r.Next(); err != nil {
			t.Fatal(err)
		}
		for j, at := range p.seen {
			if at && (j > 0 || !atStart) {
				t.Fatalf("message %d, read %d: at a boundary inside a message (%v)", i, j, p.seen)
			}
		}
		if atStart && len(p.seen) > 0 && !p.seen[0] {
			t.Fatalf("message %d: its first read into an empty buffer is not a boundary", i)
		}
	}
	r = newMsgReader(bytes.NewReader(append(append([]byte{}, small...), small[:3]...)), 1<<20)
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	r.release()
	if r.buf == nil {
		t.Fatal("released the buffer with part of a message in it")
	}
	r = newMsgReader(bytes.NewReader(append(append([]byte{}, small...), small...)), 1<<20)
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	for r.Buffered() {
		if _, err := r.Next(); err != nil {
			t.Fatal(err)
		}
	}
	r.release()
	if r.buf != nil {
		t.Fatal("kept the buffer with nothing in it")
	}
	if got, err := r.Next(); !errors.Is(err, io.EOF) || got != nil {
		t.Fatalf("after release: %q %v, want EOF with a fresh buffer", got, err)
	}
}
