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
}

func newMsgReader(src io.Reader, max int) *msgReader {
	return &msgReader{src: src, buf: make([]byte, readerSize), max: max}
}

// Buffered reports whether a whole next message is already here, so that
// reading it cannot block.
func (m *msgReader) Buffered() bool {
	if m.w-m.r < 5 {
		return false
	}
	n := int(int32(binary.BigEndian.Uint32(m.buf[m.r+1:])))
	return n >= 4 && m.w-m.r >= n+1
}

// Next returns the next message, type byte and length included; it is
// valid until the next call.
func (m *msgReader) Next() ([]byte, error) {
	m.big = nil
	if err := m.fill(5); err != nil {
		return nil, err
	}
	n := int(int32(binary.BigEndian.Uint32(m.buf[m.r+1:])))
	if n < 4 || n > m.max {
		return nil, fmt.Errorf("%w: client message %q announces %d bytes (limit %d)", pgwire.ErrProtocol, m.buf[m.r], n, m.max)
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
	// A large message (a big Bind, COPY data): its own buffer.
	m.big = make([]byte, total)
	have := copy(m.big, m.buf[m.r:m.w])
	m.r, m.w = 0, 0
	if _, err := io.ReadFull(m.src, m.big[have:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return m.big, nil
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
