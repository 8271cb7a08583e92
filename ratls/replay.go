package ratls

import (
	"crypto/sha512"
	"encoding/binary"
)

// RuntimeEventDigest is dstack's V1 digest of a runtime event:
// SHA-384(u32le(event type) ‖ ":" ‖ name ‖ ":" ‖ payload). Verifiers
// recompute it rather than trust a stored digest.
func RuntimeEventDigest(eventType uint32, name string, payload []byte) [48]byte {
	h := sha512.New384()
	var t [4]byte
	binary.LittleEndian.PutUint32(t[:], eventType)
	h.Write(t[:])
	h.Write([]byte{':'})
	h.Write([]byte(name))
	h.Write([]byte{':'})
	h.Write(payload)
	var d [48]byte
	h.Sum(d[:0])
	return d
}

// Extend is one RTMR extension: SHA-384(rtmr ‖ digest).
func Extend(rtmr [48]byte, digest []byte) [48]byte {
	h := sha512.New384()
	h.Write(rtmr[:])
	h.Write(digest)
	var out [48]byte
	h.Sum(out[:0])
	return out
}

// KeyBinding is the report_data that binds a quote to a TLS key:
// SHA-512("ratls-cert:" ‖ DER SubjectPublicKeyInfo), as dstack computes it.
func KeyBinding(spki []byte) [64]byte {
	h := sha512.New()
	h.Write([]byte("ratls-cert:"))
	h.Write(spki)
	var out [64]byte
	h.Sum(out[:0])
	return out
}
