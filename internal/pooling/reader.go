package pooling

import (
	"encoding/binary"
	"fmt"
	"io"

	"github.com/pgtrust/pgtrust/internal/pgwire"
)

// readerSize is the buffer a client's reader owns. Small on purpose: an
// idle pooled client holds it while it waits, and the pool's promise is a
// few KiB per idle client. Bigger messages get a buffer of their own.
const readerSize = 2 << 10

// msgReader frames PostgreSQL messages from a client, reading as much as
// the socket has per system call, and says whether more is already
// buffered (so the session sends to the server once per batch, not once
// per message).
type msgReader struct {
	src  io.Reader
	buf  []byte
	r, w int
	max  int
	big  []byte // the last message when it did not fit buf
	// boundary: Next is reading the first bytes of a message into an
	// empty buffer, so a read that stops now loses nothing.
	boundary bool
}

// atBoundary reports whether the read under way is the first of a message
// with nothing buffered.
func (m *msgReader) atBoundary() bool { return m.boundary && m.w == 0 }

// release lets the buffer go while nothing is buffered (a parked client);
// the next read allocates one again. (Not a sync.Pool: a pool keeps what
// parked clients gave back alive across a garbage collection, which is the
// memory parking is meant to free.)
func (m *msgReader) release() {
	if m.r == m.w {
		m.buf, m.r, m.w = nil, 0, 0
	}
}

func newMsgReader(src io.Reader, max int) *msgReader {
	return &msgReader{src: src, buf: make([]byte, readerSize), max: max}
}

// Buffered reports whether a whole next message is already here, so that
// reading it cannot block.
func (m *msgReader) Buffered() bool {
	if m.buf == nil || m.w-m.r < 5 {
		return false
	}
	n := int(int32(binary.BigEndian.Uint32(m.buf[m.r+1:])))
	return n >= 4 && m.w-m.r >= n+1
}

// Next returns the next message, type byte and length included; it is
// valid until the next call.
func (m *msgReader) Next() ([]byte, error) {
	m.big = nil
	if m.buf == nil {
		m.buf = make([]byte, readerSize)
	}
	m.boundary = m.r == m.w
	err := m.fill(5)
	m.boundary = false
	if err != nil {
		return nil, err
	}
	typ := m.buf[m.r]
	n := int(int32(binary.BigEndian.Uint32(m.buf[m.r+1:])))
	if limit := maxLength(typ, m.max); n < 4 || n > limit {
		return nil, fmt.Errorf("%w: client message %q announces %d bytes (limit %d)", pgwire.ErrProtocol, typ, n, limit)
	}
	total := n + 1
	if total <= len(m.buf) {
		if err := m.fill(total); err != nil {
			return nil, err
		}
		msg := m.buf[m.r : m.r+total]
		m.r += total
		return msg, nil
	}
	// A large message (a big Bind, COPY data): a buffer of its own, grown
	// as its bytes arrive, so that a header alone cannot make the proxy
	// allocate what it announces.
	m.big = append(make([]byte, 0, min(total, 2*readerSize)), m.buf[m.r:m.w]...)
	m.r, m.w = 0, 0
	for len(m.big) < total {
		if len(m.big) == cap(m.big) {
			m.big = append(m.big, make([]byte, min(cap(m.big), total-len(m.big)))...)[:len(m.big)]
		}
		k, err := m.src.Read(m.big[len(m.big):min(cap(m.big), total)])
		m.big = m.big[:len(m.big)+k]
		if err != nil && len(m.big) < total {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	return m.big, nil
}

// maxLength is PostgreSQL's bound for a client message of type typ after
// login: PQ_LARGE_MESSAGE_LIMIT for the types that carry data (Query,
// Parse, Bind, FunctionCall, CopyData), PQ_SMALL_MESSAGE_LIMIT (10000)
// for the rest.
func maxLength(typ byte, large int) int {
	switch typ {
	case 'Q', 'P', 'B', 'F', 'd':
		return large
	}
	return min(large, 10000)
}

// fill makes at least n bytes available from m.r.
func (m *msgReader) fill(n int) error {
	if m.w-m.r >= n {
		return nil
	}
	if m.r > 0 {
		copy(m.buf, m.buf[m.r:m.w])
		m.w -= m.r
		m.r = 0
	}
	for m.w < n {
		k, err := m.src.Read(m.buf[m.w:])
		m.w += k
		if err != nil {
			if m.w >= n {
				return nil
			}
			if err == io.EOF && m.w > 0 {
				return io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}
