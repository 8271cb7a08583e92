// Package scram is the server side of SCRAM-SHA-256 and SCRAM-SHA-256-PLUS
// (RFC 5802, RFC 7677, channel binding tls-server-end-point of RFC 5929) as
// PostgreSQL runs it, for the gateway that authenticates remote clients
// itself, and PostgreSQL's stored verifier format
// ("SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>").
//
// The gateway holds verifiers, never clear secrets: a verifier lets it check
// a client's proof but not log in anywhere. Every compare of secret-derived
// bytes is constant-time, every candidate verifier is always checked, and an
// unknown user runs the same exchange with a deterministic fake salt and
// fails after the same work, so the wire shows no difference between an
// unknown user and a wrong secret. No error, log value or panic carries a
// secret, a proof or a verifier.
package scram

import (
	"bytes"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"

	"github.com/pgtrust/pgtrust/failure"
)

// Scheme is the prefix of PostgreSQL's SCRAM verifiers.
const Scheme = "SCRAM-SHA-256"

const (
	// DefaultIterations is PostgreSQL's default scram_iterations.
	DefaultIterations = 4096
	// MaxIterations is the most NewVerifier and ParseVerifier accept: pgx
	// refuses a server-first-message with more (a client-side DoS guard), so a
	// verifier above it could never be used by every client.
	MaxIterations = 10_000_000
	// SaltLen is the salt length PostgreSQL generates (SCRAM_DEFAULT_SALT_LEN).
	SaltLen = 16
	// MaxSaltLen bounds a parsed salt; PostgreSQL writes 16 bytes.
	MaxSaltLen = 1024
	// MaxSecretLen bounds a secret given to NewVerifier and HashSecret.
	MaxSecretLen = 1024
	keyLen       = sha256.Size
)

// Verifier is PostgreSQL's stored form of a SCRAM-SHA-256 password.
type Verifier struct {
	Iterations           int
	Salt                 []byte
	StoredKey, ServerKey [32]byte
}

func verifierError(format string, args ...any) *failure.Error {
	return failure.New(failure.ConfigInvalid, "SCRAM verifier: "+format, args...).
		WithFix("use a verifier printed by `pgtrust gateway hash-secret` or read from pg_authid.rolpassword (SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)")
}

// ParseVerifier parses PostgreSQL's verifier format strictly: the scheme,
// a decimal iteration count in 1..MaxIterations, canonical standard base64
// for salt and keys, 32-byte keys. Errors name the part that is wrong, never
// the input (a verifier is a credential).
func ParseVerifier(s string) (*Verifier, error) {
	scheme, rest, ok := strings.Cut(s, "$")
	if !ok || scheme != Scheme {
		return nil, verifierError("not a %s verifier", Scheme).
			WithEvidence("the value does not start with %q", Scheme+"$")
	}
	params, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return nil, verifierError("missing the keys part").WithEvidence("expected %s$<iterations>:<salt>$<StoredKey>:<ServerKey>; found one '$'", Scheme)
	}
	iterStr, saltStr, ok := strings.Cut(params, ":")
	if !ok {
		return nil, verifierError("missing ':' between iterations and salt").WithEvidence("the part after the first '$' has no ':'")
	}
	storedStr, serverStr, ok := strings.Cut(keys, ":")
	if !ok {
		return nil, verifierError("missing ':' between StoredKey and ServerKey").WithEvidence("the part after the second '$' has no ':'")
	}
	iter, err := parseIterations(iterStr)
	if err != nil {
		return nil, err
	}
	salt, err := decodeCanonical(saltStr)
	if err != nil || len(salt) == 0 || len(salt) > MaxSaltLen {
		return nil, verifierError("invalid salt").WithEvidence("the salt is not canonical base64 of 1..%d bytes", MaxSaltLen)
	}
	v := &Verifier{Iterations: iter, Salt: salt}
	for _, k := range []struct {
		name string
		text string
		dst  *[32]byte
	}{{"StoredKey", storedStr, &v.StoredKey}, {"ServerKey", serverStr, &v.ServerKey}} {
		b, err := decodeCanonical(k.text)
		if err != nil || len(b) != keyLen {
			return nil, verifierError("invalid %s", k.name).WithEvidence("the %s is not canonical base64 of %d bytes", k.name, keyLen)
		}
		copy(k.dst[:], b)
	}
	return v, nil
}

func parseIterations(s string) (int, error) {
	bad := verifierError("invalid iteration count").WithEvidence("the iteration count must be a decimal number in 1..%d without sign or leading zeros", MaxIterations)
	if s == "" || len(s) > 8 || s[0] == '0' {
		return 0, bad
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, bad
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > MaxIterations {
		return 0, bad
	}
	return n, nil
}

// decodeCanonical decodes standard padded base64 and refuses any other
// spelling of the same bytes, so one verifier has one text form.
func decodeCanonical(s string) ([]byte, error) {
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, err
	}
	if base64.StdEncoding.EncodeToString(b) != s {
		return nil, errors.New("not canonical base64")
	}
	return b, nil
}

// NewVerifier computes the verifier of secret as PostgreSQL does. A nil salt
// means SaltLen random bytes; iterations 0 means DefaultIterations.
//
// PostgreSQL applies SASLprep to the password, which leaves ASCII unchanged;
// NewVerifier accepts ASCII secrets only (no NUL), so the verifier always
// equals PostgreSQL's for the same salt and iterations without a SASLprep
// implementation whose Unicode tables could drift from libpq's and pgx's.
func NewVerifier(secret []byte, iterations int, salt []byte) (*Verifier, error) {
	if err := checkSecret(secret); err != nil {
		return nil, err
	}
	if iterations == 0 {
		iterations = DefaultIterations
	}
	if iterations < 1 || iterations > MaxIterations {
		return nil, failure.New(failure.ConfigInvalid, "SCRAM iterations %d out of range", iterations).
			WithEvidence("iterations must be in 1..%d", MaxIterations).
			WithFix("use the default (%d) or PostgreSQL's scram_iterations value", DefaultIterations)
	}
	if salt == nil {
		salt = make([]byte, SaltLen)
		if _, err := rand.Read(salt); err != nil {
			return nil, failure.Wrap(failure.ConfigInvalid, err, "SCRAM salt: no randomness")
		}
	} else if len(salt) == 0 || len(salt) > MaxSaltLen {
		return nil, failure.New(failure.ConfigInvalid, "SCRAM salt of %d bytes", len(salt)).
			WithEvidence("a salt has 1..%d bytes", MaxSaltLen).WithFix("pass nil for %d random bytes", SaltLen)
	}
	salted, err := pbkdf2.Key(sha256.New, string(secret), salt, iterations, keyLen)
	if err != nil {
		return nil, failure.Wrap(failure.ConfigInvalid, err, "SCRAM: derive the salted password")
	}
	v := &Verifier{Iterations: iterations, Salt: bytes.Clone(salt)}
	clientKey := hmacSHA256(salted, []byte("Client Key"))
	v.StoredKey = sha256.Sum256(clientKey)
	copy(v.ServerKey[:], hmacSHA256(salted, []byte("Server Key")))
	clear(salted)
	clear(clientKey)
	return v, nil
}

func checkSecret(secret []byte) error {
	switch {
	case len(secret) == 0:
		return failure.New(failure.ConfigInvalid, "empty secret").
			WithEvidence("the secret has no bytes").WithFix("give a non-empty secret (PostgreSQL treats an empty password as none)")
	case len(secret) > MaxSecretLen:
		return failure.New(failure.ConfigInvalid, "secret too long").
			WithEvidence("the secret has %d bytes; at most %d are accepted", len(secret), MaxSecretLen).WithFix("use a shorter secret")
	}
	for i, c := range secret {
		if c == 0 || c >= 0x80 {
			return failure.New(failure.ConfigInvalid, "secret has a NUL or non-ASCII byte").
				WithEvidence("byte %d of %d is outside ASCII 0x01..0x7f (PostgreSQL would SASLprep-normalize non-ASCII, and cannot store NUL)", i+1, len(secret)).
				WithFix("use an ASCII secret, e.g. `openssl rand -base64 32`")
		}
	}
	return nil
}

func hmacSHA256(key, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)
}

// String returns the stored form, as pg_authid.rolpassword holds it.
func (v *Verifier) String() string {
	return Scheme + "$" + strconv.Itoa(v.Iterations) + ":" + base64.StdEncoding.EncodeToString(v.Salt) +
		"$" + base64.StdEncoding.EncodeToString(v.StoredKey[:]) + ":" + base64.StdEncoding.EncodeToString(v.ServerKey[:])
}

// LogValue shows the scheme and iterations only: the keys let anyone who
// holds them impersonate the server, and log in where the same verifier is
// stored with a stolen ClientKey.
func (v *Verifier) LogValue() slog.Value {
	if v == nil {
		return slog.StringValue("<nil>")
	}
	return slog.GroupValue(slog.String("scheme", Scheme), slog.Int("iterations", v.Iterations), slog.Int("salt_len", len(v.Salt)))
}

// GoString keeps %#v from printing the keys.
func (v *Verifier) GoString() string {
	if v == nil {
		return "(*scram.Verifier)(nil)"
	}
	return "&scram.Verifier{Iterations:" + strconv.Itoa(v.Iterations) + ", ...}"
}

// Format keeps %v and %+v from printing the keys (String is the stored
// form, for writing configuration, never for logs).
func (v *Verifier) Format(f fmt.State, verb rune) {
	_, _ = io.WriteString(f, v.GoString())
}

// SameSalt reports whether two verifiers can be tried against one exchange
// (salt and iterations equal).
func SameSalt(a, b *Verifier) bool {
	return a != nil && b != nil && a.Iterations == b.Iterations && bytes.Equal(a.Salt, b.Salt)
}

// HashSecret reads a secret from r (one trailing newline, "\n" or "\r\n",
// removed) and returns its verifier. like, when not nil, supplies salt and
// iterations so that a downgrade pair (read and readwrite verifiers offered
// for one user name) shares them; iterations must then be 0 or equal.
func HashSecret(r io.Reader, iterations int, like *Verifier) (*Verifier, error) {
	buf, err := io.ReadAll(io.LimitReader(r, MaxSecretLen+3))
	if err != nil {
		return nil, failure.Wrap(failure.ConfigInvalid, err, "read the secret")
	}
	defer clear(buf)
	secret := buf
	if bytes.HasSuffix(secret, []byte("\r\n")) {
		secret = secret[:len(secret)-2]
	} else if bytes.HasSuffix(secret, []byte("\n")) {
		secret = secret[:len(secret)-1]
	}
	var salt []byte
	if like != nil {
		if iterations != 0 && iterations != like.Iterations {
			return nil, failure.New(failure.ConfigInvalid, "iterations %d differ from the other verifier's %d", iterations, like.Iterations).
				WithEvidence("verifiers tried against one exchange need the same salt and iterations").
				WithFix("leave iterations unset to reuse the other verifier's")
		}
		iterations, salt = like.Iterations, like.Salt
	}
	return NewVerifier(secret, iterations, salt)
}
