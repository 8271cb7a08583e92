package scram

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"strconv"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/failure"
)

// SASL mechanism names.
const (
	MechanismSHA256     = "SCRAM-SHA-256"
	MechanismSHA256Plus = "SCRAM-SHA-256-PLUS"
)

// cbName is the only channel-binding type PostgreSQL and its clients use.
const cbName = "tls-server-end-point"

// MaxMessageLen caps the body of each SASL message from the client.
// PostgreSQL allows 65535; libpq and pgx send under 300 bytes, so 2048 leaves
// room for long nonces without letting a client make the server buffer much.
const MaxMessageLen = 2048

// nonceRawLen is the server nonce's random bytes (PostgreSQL's SCRAM_RAW_NONCE_LEN).
const nonceRawLen = 18

// checkSlots is the least number of proof checks every exchange performs, so
// that users with one or two candidate verifiers and unknown users cost the
// same; configurations with more candidates check them all.
const checkSlots = 4

// ErrAuthFailed is every authentication failure: a wrong secret, an unknown
// user (same path, same work), a secret for another role, channel-binding
// data that does not match this server's certificate, a client that claims
// binding support the server has ("y" while SCRAM-SHA-256-PLUS was offered),
// or SCRAM-SHA-256 without binding where RequirePlus. The caller sends 28P01
// "password authentication failed for user %q".
var ErrAuthFailed = errors.New("SCRAM authentication failed")

// ErrProtocol marks a malformed or out-of-order client message; the caller
// sends 08P01 (protocol_violation) as PostgreSQL does.
var ErrProtocol = errors.New("SCRAM protocol violation")

// ServerOptions configures one exchange.
type ServerOptions struct {
	// Candidates are the verifiers that may open this user name, all with the same salt and iterations
	// (the user's own and those allowed to downgrade to it). Empty = unknown user: the exchange runs with a
	// salt derived from FakeSaltKey and the user name and always fails after the same work.
	Candidates []*Verifier
	// FakeSaltKey keys unknown users' deterministic fake salts. It must be
	// secret and stable across restarts and replicas (the gateway derives
	// it from its role table's ServerKeys), or a changing salt would tell
	// unknown user names from real ones.
	FakeSaltKey []byte
	Iterations  int // iterations advertised for unknown users (match the real verifiers)
	// EndpointHash, when set, makes the server offer SCRAM-SHA-256-PLUS (tls-server-end-point) as well as SCRAM-SHA-256.
	EndpointHash []byte
	RequirePlus  bool // refuse SCRAM-SHA-256 without binding
}

// Result is a successful exchange.
type Result struct {
	Matched   int    // index into Candidates
	Mechanism string // "SCRAM-SHA-256" or "SCRAM-SHA-256-PLUS"
}

// MinFakeSaltKeyLen is the least FakeSaltKey length accepted.
const MinFakeSaltKeyLen = 16

// fakeStoredKey fills the check slots of unknown users and the padding
// slots: random per process, so no proof can match it.
var fakeStoredKey = func() [32]byte {
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		panic("scram: no randomness for the fake StoredKey")
	}
	return k
}()

// FakeSalt is the salt advertised for an unknown user: HMAC-SHA256(key,
// user) truncated to SaltLen, stable for a user name across attempts (a
// changing salt would tell the user does not exist) and unpredictable
// without the key.
func FakeSalt(key []byte, user string) []byte {
	return hmacSHA256(key, []byte(user))[:SaltLen]
}

// Authenticate runs the exchange over be (pgproto3.Backend, already past the startup message):
// AuthenticationSASL, SASLInitialResponse, AuthenticationSASLContinue, SASLResponse, AuthenticationSASLFinal.
// It does NOT send AuthenticationOk. Protocol errors (bad messages) are returned wrapped with a class
// (protocol_error); every compare is constant-time; all candidates are always checked.
//
// The caller bounds the exchange with a deadline on the connection under be.
// Authenticate sets be's maximum message body to MaxMessageLen and leaves it
// so; a caller that keeps using be afterwards sets its own.
func Authenticate(be *pgproto3.Backend, user string, opts ServerOptions) (Result, error) {
	if be == nil {
		return Result{}, failure.New(failure.ConfigInvalid, "SCRAM: no backend").WithEvidence("Authenticate needs the connection's pgproto3.Backend").WithFix("pass the Backend the startup message was read with")
	}
	ex, err := newExchange(user, opts)
	if err != nil {
		return Result{}, err
	}
	mechs := []string{MechanismSHA256}
	if ex.plusOffered {
		// PostgreSQL lists -PLUS first; clients pick it when they can bind.
		mechs = []string{MechanismSHA256Plus, MechanismSHA256}
	}
	be.SetMaxBodyLen(MaxMessageLen)
	be.Send(&pgproto3.AuthenticationSASL{AuthMechanisms: mechs})
	if err := flush(be); err != nil {
		return Result{}, err
	}
	if err := be.SetAuthType(pgproto3.AuthTypeSASL); err != nil {
		return Result{}, failure.Wrap(failure.ProtocolError, err, "SCRAM: set the backend's authentication state")
	}
	msg, err := receive(be, "SASLInitialResponse")
	if err != nil {
		return Result{}, err
	}
	initial, ok := msg.(*pgproto3.SASLInitialResponse)
	if !ok {
		return Result{}, unexpected("SASLInitialResponse", msg)
	}
	if err := ex.selectMechanism(initial.AuthMechanism); err != nil {
		return Result{}, err
	}
	if err := ex.readClientFirst(initial.Data); err != nil {
		return Result{}, err
	}
	serverFirst, err := ex.serverFirst()
	if err != nil {
		return Result{}, err
	}
	be.Send(&pgproto3.AuthenticationSASLContinue{Data: serverFirst})
	if err := flush(be); err != nil {
		return Result{}, err
	}
	if err := be.SetAuthType(pgproto3.AuthTypeSASLContinue); err != nil {
		return Result{}, failure.Wrap(failure.ProtocolError, err, "SCRAM: set the backend's authentication state")
	}
	msg, err = receive(be, "SASLResponse")
	if err != nil {
		return Result{}, err
	}
	resp, ok := msg.(*pgproto3.SASLResponse)
	if !ok {
		return Result{}, unexpected("SASLResponse", msg)
	}
	final, err := ex.readClientFinal(resp.Data)
	if err != nil {
		return Result{}, err
	}
	be.Send(&pgproto3.AuthenticationSASLFinal{Data: final})
	if err := flush(be); err != nil {
		return Result{}, err
	}
	return Result{Matched: ex.matched, Mechanism: ex.mechanism}, nil
}

// exchange is the state of one SCRAM exchange.
type exchange struct {
	cands        []*Verifier
	salt         []byte
	iterations   int
	doomed       bool // unknown user: fails after the same work
	plusOffered  bool
	requirePlus  bool
	endpointHash []byte

	mechanism      string
	cbFlag         byte // 'n', 'y' or 'p'
	gs2Header      []byte
	clientBare     []byte
	clientNonce    []byte
	nonce          []byte // client nonce + server nonce
	serverFirstMsg []byte
	matched        int
}

func newExchange(user string, opts ServerOptions) (*exchange, error) {
	ex := &exchange{cands: opts.Candidates, endpointHash: opts.EndpointHash, requirePlus: opts.RequirePlus, matched: -1}
	ex.plusOffered = len(opts.EndpointHash) > 0
	if opts.RequirePlus && !ex.plusOffered {
		return nil, failure.New(failure.ConfigInvalid, "SCRAM: RequirePlus without an EndpointHash").
			WithEvidence("SCRAM-SHA-256-PLUS needs the tls-server-end-point hash of the listener's certificate").
			WithFix("set EndpointHash from scram.EndpointHash(cert), or do not require channel binding")
	}
	if len(opts.Candidates) == 0 {
		if len(opts.FakeSaltKey) < MinFakeSaltKeyLen {
			return nil, failure.New(failure.ConfigInvalid, "SCRAM: FakeSaltKey missing or short").
				WithEvidence("an unknown user's fake salt needs a key of at least %d bytes", MinFakeSaltKeyLen).
				WithFix("generate a random FakeSaltKey once per process")
		}
		it := opts.Iterations
		if it == 0 {
			it = DefaultIterations
		}
		if it < 1 || it > MaxIterations {
			return nil, failure.New(failure.ConfigInvalid, "SCRAM: Iterations %d out of range", it).
				WithEvidence("iterations must be in 1..%d", MaxIterations).WithFix("use the real verifiers' iteration count")
		}
		ex.salt, ex.iterations, ex.doomed = FakeSalt(opts.FakeSaltKey, user), it, true
		return ex, nil
	}
	for i, c := range opts.Candidates {
		if c == nil || len(c.Salt) == 0 || c.Iterations < 1 || c.Iterations > MaxIterations {
			return nil, failure.New(failure.ConfigInvalid, "SCRAM: candidate %d is not a usable verifier", i).
				WithEvidence("a candidate needs a salt and 1..%d iterations", MaxIterations).WithFix("build candidates with ParseVerifier or NewVerifier")
		}
		if !SameSalt(opts.Candidates[0], c) {
			return nil, failure.New(failure.ConfigInvalid, "SCRAM: candidate %d has another salt or iteration count than candidate 0", i).
				WithEvidence("one exchange advertises one salt; verifiers tried together must share it").
				WithFix("hash the downgrade secrets with the same salt (pgtrust gateway hash-secret --like)")
		}
	}
	ex.salt, ex.iterations = opts.Candidates[0].Salt, opts.Candidates[0].Iterations
	return ex, nil
}

func (ex *exchange) selectMechanism(m string) error {
	switch {
	case m == MechanismSHA256Plus && ex.plusOffered:
	case m == MechanismSHA256:
		if ex.requirePlus {
			return authFailed("client chose SCRAM-SHA-256 without channel binding; this listener requires SCRAM-SHA-256-PLUS").
				WithFix("connect with channel_binding=require (libpq 13+, pgx v5)")
		}
	default:
		// Not echoed: a name outside the offered ones is client-chosen text.
		return protocolError("client selected a SASL mechanism that was not offered").
			WithEvidence("mechanism of %d bytes; offered %s", len(m), offered(ex.plusOffered))
	}
	ex.mechanism = m
	return nil
}

func offered(plus bool) string {
	if plus {
		return MechanismSHA256Plus + ", " + MechanismSHA256
	}
	return MechanismSHA256
}

// readClientFirst parses client-first-message (RFC 5802 section 7):
//
//	gs2-header = gs2-cbind-flag "," [ authzid ] ","
//	client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
func (ex *exchange) readClientFirst(data []byte) error {
	if err := checkMessage("client-first-message", data); err != nil {
		return err
	}
	// Received messages live in the Backend's buffer until the next Receive;
	// the parts kept for the AuthMessage need their own copy.
	data = bytes.Clone(data)
	p := data
	switch {
	case bytes.HasPrefix(p, []byte("n,")):
		ex.cbFlag, p = 'n', p[2:]
	case bytes.HasPrefix(p, []byte("y,")):
		ex.cbFlag, p = 'y', p[2:]
	case bytes.HasPrefix(p, []byte("p=")):
		name, rest, ok := bytes.Cut(p[2:], []byte(","))
		if !ok {
			return malformed("client-first-message", "gs2-cbind-flag: no ',' after the channel-binding name")
		}
		if string(name) != cbName {
			return protocolError("unsupported SCRAM channel-binding type").
				WithEvidence("gs2-cbind-flag: a type of %d bytes other than %s", len(name), cbName)
		}
		ex.cbFlag, p = 'p', rest
	default:
		return malformed("client-first-message", "gs2-cbind-flag: not 'n', 'y' or 'p=' followed by ','")
	}
	if len(p) > 0 && p[0] == 'a' {
		// PostgreSQL refuses authzid: the user name comes from the startup message.
		return protocolError("client uses an authorization identity, which is not supported").
			WithEvidence("gs2-header: authzid (a=) present")
	}
	if len(p) == 0 || p[0] != ',' {
		return malformed("client-first-message", "gs2-header: no ',' after the channel-binding flag")
	}
	p = p[1:]
	ex.gs2Header = data[:len(data)-len(p)]
	ex.clientBare = p

	// Channel-binding flag against the mechanism, as PostgreSQL decides.
	switch ex.cbFlag {
	case 'n':
		if ex.mechanism == MechanismSHA256Plus {
			return malformed("client-first-message", "gs2-cbind-flag: 'n' with SCRAM-SHA-256-PLUS (no channel binding data)")
		}
	case 'y':
		if ex.mechanism == MechanismSHA256Plus {
			return malformed("client-first-message", "gs2-cbind-flag: 'y' with SCRAM-SHA-256-PLUS (no channel binding data)")
		}
		if ex.plusOffered {
			// RFC 5802 section 6: the client can bind and thinks the server
			// cannot, yet it was offered: someone removed -PLUS on the way.
			return authFailed("SCRAM channel binding negotiation error: the client supports channel binding but thinks the server does not, though SCRAM-SHA-256-PLUS was offered (a downgrade by an intermediary?)").
				WithFix("connect directly over TLS to the gateway; a client that cannot compute tls-server-end-point for this certificate should use channel_binding=disable")
		}
	case 'p':
		if ex.mechanism != MechanismSHA256Plus {
			return malformed("client-first-message", "gs2-cbind-flag: 'p' with SCRAM-SHA-256 (channel binding data without -PLUS)")
		}
	}

	if bytes.HasPrefix(p, []byte("m=")) {
		return protocolError("client requires an unsupported SCRAM extension").
			WithEvidence("client-first-message-bare: reserved-mext (m=) present")
	}
	name, p, err := attr(p, 'n', "client-first-message", "username")
	if err != nil {
		return err
	}
	// The name is ignored, as PostgreSQL does (libpq sends it empty); the
	// startup message's user is authoritative. Its escaping is still checked.
	if !validSASLName(name) {
		return malformed("client-first-message", "username (n=): '=' not followed by 2C or 3D")
	}
	if p, err = comma(p, "client-first-message", "username"); err != nil {
		return err
	}
	nonce, p, err := attr(p, 'r', "client-first-message", "nonce")
	if err != nil {
		return err
	}
	if len(nonce) == 0 || !printable(nonce) {
		return malformed("client-first-message", "nonce (r=): empty or not printable ASCII without ','")
	}
	ex.clientNonce = nonce
	return extensions(p, "client-first-message")
}

func (ex *exchange) serverFirst() ([]byte, error) {
	raw := make([]byte, nonceRawLen)
	if _, err := rand.Read(raw); err != nil {
		return nil, failure.Wrap(failure.ProtocolError, err, "SCRAM: no randomness for the server nonce")
	}
	ex.nonce = append(bytes.Clone(ex.clientNonce), base64.StdEncoding.EncodeToString(raw)...)
	var b []byte
	b = append(b, "r="...)
	b = append(b, ex.nonce...)
	b = append(b, ",s="...)
	b = append(b, base64.StdEncoding.EncodeToString(ex.salt)...)
	b = append(b, ",i="...)
	b = strconv.AppendInt(b, int64(ex.iterations), 10)
	ex.serverFirstMsg = b
	return b, nil
}

// readClientFinal parses client-final-message and checks the proof:
//
//	client-final-message-without-proof = channel-binding "," nonce ["," extensions]
//	client-final-message = client-final-message-without-proof "," proof
//
// It returns server-final-message on success.
func (ex *exchange) readClientFinal(data []byte) ([]byte, error) {
	const where = "client-final-message"
	if err := checkMessage(where, data); err != nil {
		return nil, err
	}
	cb, p, err := attr(data, 'c', where, "channel-binding")
	if err != nil {
		return nil, err
	}
	cbData, err := base64.StdEncoding.Strict().DecodeString(string(cb))
	if err != nil {
		return nil, malformed(where, "channel-binding (c=): not base64")
	}
	want := ex.gs2Header
	if ex.cbFlag == 'p' {
		want = append(bytes.Clone(ex.gs2Header), ex.endpointHash...)
	}
	if subtle.ConstantTimeCompare(cbData, want) != 1 {
		if ex.cbFlag == 'p' {
			return nil, authFailed("SCRAM channel binding check failed: the client bound to another certificate than this server's (a TLS-terminating intermediary between client and gateway?)").
				WithFix("connect to the gateway directly over TLS")
		}
		return nil, malformed(where, "channel-binding (c=): does not repeat the gs2-header of client-first-message")
	}
	if p, err = comma(p, where, "channel-binding"); err != nil {
		return nil, err
	}
	nonce, p, err := attr(p, 'r', where, "nonce")
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare(nonce, ex.nonce) != 1 {
		return nil, protocolError("invalid SCRAM response (nonce mismatch)").
			WithEvidence("%s: nonce (r=) is not the combined nonce of server-first-message", where)
	}
	// Extensions up to the proof, which must come last.
	var proofB64 []byte
	for {
		if len(p) == 0 {
			return nil, malformed(where, "proof (p=) missing")
		}
		if len(p) < 3 || p[0] != ',' || !isAlpha(p[1]) || p[2] != '=' {
			return nil, malformed(where, "attribute after the nonce is not ',' ALPHA '='")
		}
		if p[1] == 'p' {
			proofB64 = p[3:]
			break
		}
		v, _, _ := bytes.Cut(p[3:], []byte(","))
		if len(v) == 0 {
			return nil, malformed(where, "extension with an empty value")
		}
		p = p[3+len(v):]
	}
	withoutProof := data[:len(data)-len(proofB64)-3]
	if bytes.IndexByte(proofB64, ',') >= 0 {
		return nil, malformed(where, "data after the proof (p=)")
	}
	proof, err := base64.StdEncoding.Strict().DecodeString(string(proofB64))
	if err != nil || len(proof) != keyLen {
		return nil, malformed(where, "proof (p=): not base64 of 32 bytes")
	}

	authMessage := make([]byte, 0, len(ex.clientBare)+len(ex.serverFirstMsg)+len(withoutProof)+2)
	authMessage = append(authMessage, ex.clientBare...)
	authMessage = append(authMessage, ',')
	authMessage = append(authMessage, ex.serverFirstMsg...)
	authMessage = append(authMessage, ',')
	authMessage = append(authMessage, withoutProof...)

	// Every slot is checked with the same operations; the first real
	// candidate that matches wins, chosen without branching on the result.
	n := max(len(ex.cands), checkSlots)
	matched, notFound := -1, 1
	for i := 0; i < n; i++ {
		stored, real := fakeStoredKey, 0
		if !ex.doomed && i < len(ex.cands) {
			stored, real = ex.cands[i].StoredKey, 1
		}
		sig := hmacSHA256(stored[:], authMessage)
		var clientKey [keyLen]byte
		subtle.XORBytes(clientKey[:], proof, sig)
		h := sha256.Sum256(clientKey[:])
		eq := subtle.ConstantTimeCompare(h[:], stored[:]) & real
		first := eq & notFound
		matched = subtle.ConstantTimeSelect(first, i, matched)
		notFound &^= first
	}
	if notFound == 1 {
		if ex.doomed {
			return nil, authFailed("no verifier for this user name (the exchange ran with a fake salt)")
		}
		return nil, authFailed("the proof matches none of the user's verifiers (wrong secret, or a secret for another role)")
	}
	ex.matched = matched
	sig := hmacSHA256(ex.cands[matched].ServerKey[:], authMessage)
	return append([]byte("v="), base64.StdEncoding.EncodeToString(sig)...), nil
}

// attr reads "<name>=<value>" at the start of p, the value running to the
// next ',' or the end, and returns the value and the rest (empty, or
// starting with that ',').
func attr(p []byte, name byte, where, field string) (value, rest []byte, err error) {
	if len(p) < 2 || p[0] != name || p[1] != '=' {
		return nil, nil, malformed(where, field+" ("+string(name)+"=): expected here")
	}
	p = p[2:]
	if i := bytes.IndexByte(p, ','); i >= 0 {
		return p[:i], p[i:], nil
	}
	return p, nil, nil
}

// comma consumes the ',' that must follow field.
func comma(p []byte, where, field string) ([]byte, error) {
	if len(p) == 0 || p[0] != ',' {
		return nil, malformed(where, "no attribute after "+field)
	}
	return p[1:], nil
}

// extensions checks the optional trailing "," attr-val list of
// client-first-message; RFC 5802 says unknown extensions are ignored.
func extensions(p []byte, where string) error {
	for len(p) > 0 {
		if len(p) < 4 || p[0] != ',' || !isAlpha(p[1]) || p[2] != '=' {
			return malformed(where, "extension is not ',' ALPHA '=' value")
		}
		v, _, _ := bytes.Cut(p[3:], []byte(","))
		if len(v) == 0 {
			return malformed(where, "extension with an empty value")
		}
		p = p[3+len(v):]
	}
	return nil
}

// checkMessage applies the checks every client message gets: non-empty,
// no NUL (PostgreSQL reads them as C strings), valid UTF-8 (RFC 5802 values
// are UTF-8).
func checkMessage(where string, data []byte) error {
	switch {
	case len(data) == 0:
		return malformed(where, "empty message")
	case bytes.IndexByte(data, 0) >= 0:
		return malformed(where, "NUL byte in the message")
	case !utf8.Valid(data):
		return malformed(where, "not UTF-8")
	}
	return nil
}

// validSASLName: value-safe-char (no NUL, ',' or '=') or "=2C" / "=3D".
func validSASLName(s []byte) bool {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case ',':
			return false
		case '=':
			if i+2 >= len(s) || !(s[i+1] == '2' && s[i+2] == 'C' || s[i+1] == '3' && s[i+2] == 'D') {
				return false
			}
			i += 2
		}
	}
	return true
}

// printable: %x21-2B / %x2D-7E (printable ASCII except ',').
func printable(s []byte) bool {
	for _, c := range s {
		if c < 0x21 || c > 0x7e || c == ',' {
			return false
		}
	}
	return true
}

func isAlpha(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

func protocolError(msg string) *failure.Error {
	return failure.Wrap(failure.ProtocolError, ErrProtocol, "%s", msg).CauseInMessage().
		WithFix("use a PostgreSQL client that implements SCRAM-SHA-256 (libpq 10+, pgx)")
}

func malformed(where, field string) *failure.Error {
	return protocolError("malformed SCRAM message").WithEvidence("%s: %s", where, field)
}

func authFailed(evidence string) *failure.Error {
	return failure.Wrap(failure.AuthFailed, ErrAuthFailed, "SCRAM authentication failed").CauseInMessage().
		WithEvidence("%s", evidence).
		WithFix("check the secret and the user name the client connects with")
}

func unexpected(want string, msg pgproto3.FrontendMessage) error {
	return protocolError("unexpected message during SCRAM authentication").
		WithEvidence("expected %s, got %T", want, msg)
}

func flush(be *pgproto3.Backend) error {
	if err := be.Flush(); err != nil {
		return ioError(err, "send")
	}
	return nil
}

func receive(be *pgproto3.Backend, want string) (pgproto3.FrontendMessage, error) {
	msg, err := be.Receive()
	if err != nil {
		var big *pgproto3.ExceededMaxBodyLenErr
		if errors.As(err, &big) {
			return nil, protocolError("SCRAM message too long").
				WithEvidence("%s of %d bytes; at most %d accepted", want, big.ActualBodyLen, MaxMessageLen)
		}
		return nil, ioError(err, "receive "+want)
	}
	return msg, nil
}

func ioError(err error, what string) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return failure.Wrap(failure.Timeout, err, "SCRAM: %s: timed out", what).
			WithFix("the client must finish authentication within the pre-authentication deadline")
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return failure.Wrap(failure.ProtocolError, err, "SCRAM: %s: the client closed the connection", what)
	}
	return failure.Wrap(failure.ProtocolError, errors.Join(ErrProtocol, err), "SCRAM: %s", what)
}
