package chain

import (
	"bytes"
	"crypto/sha1"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"
	"unicode/utf16"
	"unicode/utf8"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// NameHash returns OpenSSL's X509_NAME_hash of a DER Name, as eight hex
// digits: the name under which `openssl rehash` files a certificate
// (HASH.N) or a CRL (HASH.rN), and under which libpq's sslcrldir lookup
// (X509_LOOKUP_hash_dir) finds the CRL of an issuer.
//
// The hash is SHA-1 over OpenSSL's canonical encoding (x509_name_canon):
// each RDN's SET re-encoded with string values converted to UTF8String,
// leading and trailing white space removed, inner runs of white space
// collapsed to one space and ASCII lower-cased; the RDN SETs are
// concatenated without the outer SEQUENCE. The first four digest bytes,
// little-endian, are the hash.
func NameHash(rawName []byte) (string, error) {
	canon, err := canonicalName(rawName)
	if err != nil {
		return "", err
	}
	sum := sha1.Sum(canon)
	return fmt.Sprintf("%08x", binary.LittleEndian.Uint32(sum[:4])), nil
}

func canonicalName(raw []byte) ([]byte, error) {
	in := cryptobyte.String(raw)
	var rdns cryptobyte.String
	if !in.ReadASN1(&rdns, cbasn1.SEQUENCE) || !in.Empty() {
		return nil, errors.New("malformed distinguished name")
	}
	var out []byte
	for !rdns.Empty() {
		var set cryptobyte.String
		if !rdns.ReadASN1(&set, cbasn1.SET) {
			return nil, errors.New("malformed relative distinguished name")
		}
		var avas [][]byte
		for !set.Empty() {
			var ava, oid, value cryptobyte.String
			var tag cbasn1.Tag
			if !set.ReadASN1(&ava, cbasn1.SEQUENCE) || !ava.ReadASN1Element(&oid, cbasn1.OBJECT_IDENTIFIER) ||
				!ava.ReadAnyASN1Element(&value, &tag) {
				return nil, errors.New("malformed attribute in a distinguished name")
			}
			canonValue, err := canonicalValue(value, tag)
			if err != nil {
				return nil, err
			}
			var b cryptobyte.Builder
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddBytes(oid)
				b.AddBytes(canonValue)
			})
			avas = append(avas, b.BytesOrPanic())
		}
		// DER orders the members of a SET OF by their encodings.
		sort.Slice(avas, func(i, j int) bool { return bytes.Compare(avas[i], avas[j]) < 0 })
		var b cryptobyte.Builder
		b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
			for _, a := range avas {
				b.AddBytes(a)
			}
		})
		out = append(out, b.BytesOrPanic()...)
	}
	return out, nil
}

// ASN.1 string tags that OpenSSL canonicalises (ASN1_MASK_CANON).
const (
	tagUTF8String      = cbasn1.Tag(12)
	tagPrintableString = cbasn1.Tag(19)
	tagT61String       = cbasn1.Tag(20)
	tagIA5String       = cbasn1.Tag(22)
	tagVisibleString   = cbasn1.Tag(26)
	tagUniversalString = cbasn1.Tag(28)
	tagBMPString       = cbasn1.Tag(30)
)

func canonicalValue(elem cryptobyte.String, tag cbasn1.Tag) ([]byte, error) {
	var content cryptobyte.String
	if !elem.ReadASN1(&content, tag) {
		return nil, errors.New("malformed attribute value")
	}
	var text string
	switch tag {
	case tagUTF8String:
		text = string(content)
	case tagPrintableString, tagIA5String, tagVisibleString, tagT61String:
		// One byte per character (OpenSSL's MBSTRING_ASC): a byte above
		// 0x7f is the Latin-1 code point, re-encoded as UTF-8.
		var sb strings.Builder
		for _, c := range content {
			sb.WriteRune(rune(c))
		}
		text = sb.String()
	case tagBMPString:
		if len(content)%2 != 0 {
			return nil, errors.New("malformed BMPString")
		}
		u := make([]uint16, len(content)/2)
		for i := range u {
			u[i] = binary.BigEndian.Uint16(content[2*i:])
		}
		text = string(utf16.Decode(u))
	case tagUniversalString:
		if len(content)%4 != 0 {
			return nil, errors.New("malformed UniversalString")
		}
		var sb strings.Builder
		for i := 0; i < len(content); i += 4 {
			sb.WriteRune(rune(binary.BigEndian.Uint32(content[i:])))
		}
		text = sb.String()
	default:
		return elem, nil // not a string type: copied as it is
	}
	if tag == tagUTF8String && !utf8.ValidString(text) {
		return nil, errors.New("invalid UTF-8 in a UTF8String")
	}
	var b cryptobyte.Builder
	b.AddASN1(tagUTF8String, func(b *cryptobyte.Builder) { b.AddBytes(canonicalText(text)) })
	return b.BytesOrPanic(), nil
}

// canonicalText is asn1_string_canon on UTF-8 bytes: trim, collapse white
// space to one space, lower-case ASCII, leave other bytes alone.
func canonicalText(s string) []byte {
	isSpace := func(c byte) bool { return c == ' ' || (c >= '\t' && c <= '\r') }
	b := []byte(s)
	for len(b) > 0 && isSpace(b[0]) {
		b = b[1:]
	}
	for len(b) > 0 && isSpace(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); {
		c := b[i]
		switch {
		case c >= 0x80:
			out = append(out, c)
			i++
		case isSpace(c):
			out = append(out, ' ')
			for i < len(b) && isSpace(b[i]) {
				i++
			}
		default:
			if c >= 'A' && c <= 'Z' {
				c += 'a' - 'A'
			}
			out = append(out, c)
			i++
		}
	}
	return out
}
