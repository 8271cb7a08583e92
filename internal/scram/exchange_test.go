package scram

import (
	"bytes"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/failure"
)

// script is a client side driven by templates, for cases real clients never
// produce. In final, {N} becomes the combined nonce from server-first,
// {CB} the base64 channel-binding input of the gs2 header (and
// endpoint hash when the flag is p), and {P} the correct proof for secret
// over the message before ",p={P}".
type script struct {
	mech     string
	first    string
	final    string
	secret   string
	endpoint []byte
	// raw, when set, is sent instead of the SASLResponse.
	raw pgproto3.FrontendMessage
}

type exchangeRun struct {
	res         Result
	err         error
	serverBytes []byte // everything the server wrote
	sentFinal   string // the client-final-message after substitution
	serverFinal []byte
	wantSig     []byte // server signature the client expects when {P} was used
}

// runExchange runs Authenticate over an in-memory pipe against sc.
func runExchange(t testing.TB, user string, opts ServerOptions, sc script) exchangeRun {
	t.Helper()
	srvConn, cliConn := net.Pipe()
	deadline := time.Now().Add(10 * time.Second)
	_ = srvConn.SetDeadline(deadline)
	_ = cliConn.SetDeadline(deadline)
	var run exchangeRun
	var recorded bytes.Buffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		be := pgproto3.NewBackend(srvConn, io.MultiWriter(srvConn, &recorded))
		run.res, run.err = Authenticate(be, user, opts)
		srvConn.Close()
	}()
	func() {
		defer cliConn.Close()
		fe := pgproto3.NewFrontend(cliConn, cliConn)
		if _, err := fe.Receive(); err != nil {
			return
		}
		fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: sc.mech, Data: []byte(sc.first)})
		if fe.Flush() != nil {
			return
		}
		msg, err := fe.Receive()
		if err != nil {
			return
		}
		cont, ok := msg.(*pgproto3.AuthenticationSASLContinue)
		if !ok {
			return
		}
		serverFirst := append([]byte(nil), cont.Data...)
		if sc.raw != nil {
			fe.Send(sc.raw)
			_ = fe.Flush()
			return
		}
		run.sentFinal, run.wantSig = fillFinal(sc, serverFirst)
		fe.Send(&pgproto3.SASLResponse{Data: []byte(run.sentFinal)})
		if fe.Flush() != nil {
			return
		}
		if msg, err := fe.Receive(); err == nil {
			if f, ok := msg.(*pgproto3.AuthenticationSASLFinal); ok {
				run.serverFinal = append([]byte(nil), f.Data...)
			}
		}
	}()
	<-done
	run.serverBytes = recorded.Bytes()
	return run
}

// fillFinal substitutes the template's placeholders.
func fillFinal(sc script, serverFirst []byte) (final string, serverSig []byte) {
	var nonce, salt []byte
	iter := 0
	for _, part := range strings.Split(string(serverFirst), ",") {
		switch {
		case strings.HasPrefix(part, "r="):
			nonce = []byte(part[2:])
		case strings.HasPrefix(part, "s="):
			salt, _ = base64.StdEncoding.DecodeString(part[2:])
		case strings.HasPrefix(part, "i="):
			iter, _ = strconv.Atoi(part[2:])
		}
	}
	gs2, bare := splitFirst(sc.first)
	cb := []byte(gs2)
	if strings.HasPrefix(gs2, "p=") {
		cb = append(cb, sc.endpoint...)
	}
	final = strings.ReplaceAll(sc.final, "{N}", string(nonce))
	final = strings.ReplaceAll(final, "{CB}", base64.StdEncoding.EncodeToString(cb))
	i := strings.Index(final, ",p={P}")
	if i < 0 || iter < 1 || iter > 100_000 {
		return final, nil
	}
	salted, _ := pbkdf2.Key(sha256.New, sc.secret, salt, iter, 32)
	authMessage := bare + "," + string(serverFirst) + "," + final[:i]
	clientKey := hmacSHA256(salted, []byte("Client Key"))
	stored := sha256.Sum256(clientKey)
	sig := hmacSHA256(stored[:], []byte(authMessage))
	proof := make([]byte, 32)
	for k := range proof {
		proof[k] = clientKey[k] ^ sig[k]
	}
	serverKey := hmacSHA256(salted, []byte("Server Key"))
	final = strings.Replace(final, "{P}", base64.StdEncoding.EncodeToString(proof), 1)
	return final, append([]byte("v="), base64.StdEncoding.EncodeToString(hmacSHA256(serverKey, []byte(authMessage)))...)
}

// splitFirst splits a client-first-message after its gs2 header (the
// second ','), as the client computes it.
func splitFirst(first string) (gs2, bare string) {
	i := strings.Index(first, ",")
	if i < 0 {
		return first, ""
	}
	j := strings.Index(first[i+1:], ",")
	if j < 0 {
		return first, ""
	}
	return first[:i+j+2], first[i+j+2:]
}

var testEndpoint = bytes.Repeat([]byte{0xA5}, 32)

// The gateway's promise: an unknown user and a wrong secret look the same
// on the wire. With the known user's salt equal to the fake salt the gateway
// would derive, the server's bytes are identical except for the random
// server nonce, and the errors are identical apart from log evidence.
func TestUnknownUserLooksLikeWrongSecret(t *testing.T) {
	key := []byte("per-process-fake-salt-key-0123456")
	const user = "teesql_read"
	v, err := NewVerifier([]byte(readSecret), 4096, FakeSalt(key, user))
	if err != nil {
		t.Fatal(err)
	}
	sc := script{mech: MechanismSHA256, first: "n,,n=,r=fixedClientNonce0123", final: "c=biws,r={N},p={P}", secret: wrongSecret}
	known := runExchange(t, user, ServerOptions{Candidates: []*Verifier{v}, FakeSaltKey: key}, sc)
	unknown := runExchange(t, user, ServerOptions{FakeSaltKey: key, Iterations: 4096}, sc)
	for name, r := range map[string]exchangeRun{"wrong secret": known, "unknown user": unknown} {
		if !errors.Is(r.err, ErrAuthFailed) || failure.ClassOf(r.err) != failure.AuthFailed {
			t.Fatalf("%s: %v", name, r.err)
		}
	}
	if known.err.Error() != unknown.err.Error() {
		t.Fatalf("error messages differ: %q vs %q", known.err, unknown.err)
	}
	mask := func(b []byte) []byte {
		i := bytes.Index(b, []byte("r=fixedClientNonce0123"))
		if i < 0 {
			t.Fatalf("no nonce in %q", b)
		}
		out := bytes.Clone(b)
		start := i + len("r=fixedClientNonce0123")
		copy(out[start:start+24], strings.Repeat("X", 24))
		return out
	}
	if !bytes.Equal(mask(known.serverBytes), mask(unknown.serverBytes)) {
		t.Fatalf("server bytes differ beyond the nonce:\n%q\n%q", known.serverBytes, unknown.serverBytes)
	}
	if bytes.Equal(known.serverBytes, unknown.serverBytes) {
		t.Fatal("server nonces repeat")
	}
	// And the fake salt is stable per user name, different across names.
	if !bytes.Equal(FakeSalt(key, user), FakeSalt(key, user)) || bytes.Equal(FakeSalt(key, user), FakeSalt(key, "other")) {
		t.Fatal("FakeSalt not deterministic per user")
	}
}

func TestExchangeRefusals(t *testing.T) {
	v, err := NewVerifier([]byte(readSecret), 1, []byte("0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	plain := ServerOptions{Candidates: []*Verifier{v}}
	plus := ServerOptions{Candidates: []*Verifier{v}, EndpointHash: testEndpoint}
	const okFirst = "n,,n=,r=abc"
	const plusFirst = "p=tls-server-end-point,,n=,r=abc"
	type want int
	const (
		proto want = iota
		auth
		ok
	)
	cases := []struct {
		name     string
		opts     ServerOptions
		sc       script
		want     want
		evidence string
	}{
		{"mechanism not offered", plain, script{mech: "SCRAM-SHA-1", first: okFirst}, proto, "mechanism"},
		{"PLUS not offered", plain, script{mech: MechanismSHA256Plus, first: plusFirst}, proto, "mechanism"},
		{"empty first", plain, script{mech: MechanismSHA256, first: ""}, proto, "empty message"},
		{"bad flag", plain, script{mech: MechanismSHA256, first: "x,,n=,r=abc"}, proto, "gs2-cbind-flag"},
		{"other binding type", plus, script{mech: MechanismSHA256Plus, first: "p=tls-unique,,n=,r=abc"}, proto, "gs2-cbind-flag"},
		{"authzid", plain, script{mech: MechanismSHA256, first: "n,a=bob,n=,r=abc"}, proto, "authzid"},
		{"reserved-mext", plain, script{mech: MechanismSHA256, first: "n,,m=x,n=,r=abc"}, proto, "reserved-mext"},
		{"bad saslname", plain, script{mech: MechanismSHA256, first: "n,,n=a=2Bb,r=abc"}, proto, "username"},
		{"no username", plain, script{mech: MechanismSHA256, first: "n,,r=abc"}, proto, "username"},
		{"no nonce", plain, script{mech: MechanismSHA256, first: "n,,n="}, proto, "username"},
		{"empty nonce", plain, script{mech: MechanismSHA256, first: "n,,n=,r="}, proto, "nonce"},
		{"unprintable nonce", plain, script{mech: MechanismSHA256, first: "n,,n=,r=a b"}, proto, "nonce"},
		{"trailing comma", plain, script{mech: MechanismSHA256, first: okFirst + ","}, proto, "extension"},
		{"bad extension", plain, script{mech: MechanismSHA256, first: okFirst + ",1=x"}, proto, "extension"},
		{"NUL", plain, script{mech: MechanismSHA256, first: "n,,n=\x00,r=abc"}, proto, "NUL"},
		{"not UTF-8", plain, script{mech: MechanismSHA256, first: "n,,n=\xff,r=abc"}, proto, "UTF-8"},
		{"y while PLUS offered", plus, script{mech: MechanismSHA256, first: "y,,n=,r=abc"}, auth, "negotiation"},
		{"n with PLUS", plus, script{mech: MechanismSHA256Plus, first: okFirst}, proto, "gs2-cbind-flag"},
		{"p without PLUS", plus, script{mech: MechanismSHA256, first: plusFirst}, proto, "gs2-cbind-flag"},
		{"RequirePlus", ServerOptions{Candidates: []*Verifier{v}, EndpointHash: testEndpoint, RequirePlus: true}, script{mech: MechanismSHA256, first: okFirst}, auth, "requires SCRAM-SHA-256-PLUS"},
		{"nonce mismatch", plain, script{mech: MechanismSHA256, first: okFirst, final: "c=biws,r=abcXYZ,p={P}", secret: readSecret}, proto, "nonce"},
		{"flag changed in final", plain, script{mech: MechanismSHA256, first: okFirst, final: "c=eSws,r={N},p={P}", secret: readSecret}, proto, "channel-binding"},
		{"binding not base64", plain, script{mech: MechanismSHA256, first: okFirst, final: "c=b!ws,r={N},p={P}", secret: readSecret}, proto, "channel-binding"},
		{"binding to another certificate", plus, script{mech: MechanismSHA256Plus, first: plusFirst, final: "c={CB},r={N},p={P}", secret: readSecret, endpoint: bytes.Repeat([]byte{1}, 32)}, auth, "binding check failed"},
		{"no proof", plain, script{mech: MechanismSHA256, first: okFirst, final: "c=biws,r={N}"}, proto, "proof"},
		{"short proof", plain, script{mech: MechanismSHA256, first: okFirst, final: "c=biws,r={N},p=AAAA"}, proto, "proof"},
		{"after proof", plain, script{mech: MechanismSHA256, first: okFirst, final: "c=biws,r={N},p={P},x=1", secret: readSecret}, proto, "after the proof"},
		{"empty extension", plain, script{mech: MechanismSHA256, first: okFirst, final: "c=biws,r={N},x=,p={P}", secret: readSecret}, proto, "extension"},
		{"no c", plain, script{mech: MechanismSHA256, first: okFirst, final: "r={N},p={P}", secret: readSecret}, proto, "channel-binding"},
		{"too long", plain, script{mech: MechanismSHA256, first: okFirst, final: "c=biws,r={N},x=" + strings.Repeat("a", MaxMessageLen) + ",p={P}", secret: readSecret}, proto, "too long"},
		{"query instead", plain, script{mech: MechanismSHA256, first: okFirst, raw: &pgproto3.Query{String: "select 1"}}, proto, "expected SASLResponse"},
		{"terminate instead", plain, script{mech: MechanismSHA256, first: okFirst, raw: &pgproto3.Terminate{}}, proto, ""},
		{"wrong secret", plain, script{mech: MechanismSHA256, first: okFirst, final: "c=biws,r={N},p={P}", secret: wrongSecret}, auth, "matches none"},
		{"extensions ignored", plain, script{mech: MechanismSHA256, first: okFirst + ",x=1,Y=2", final: "c=biws,r={N},z=9,p={P}", secret: readSecret}, ok, ""},
		{"escaped name", plain, script{mech: MechanismSHA256, first: "n,,n=a=2Cb=3D,r=abc", final: "c=biws,r={N},p={P}", secret: readSecret}, ok, ""},
		{"y without PLUS offered", plain, script{mech: MechanismSHA256, first: "y,,n=,r=abc", final: "c=eSws,r={N},p={P}", secret: readSecret}, ok, ""},
		{"PLUS", plus, script{mech: MechanismSHA256Plus, first: plusFirst, final: "c={CB},r={N},p={P}", secret: readSecret, endpoint: testEndpoint}, ok, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := runExchange(t, "u", c.opts, c.sc)
			switch c.want {
			case ok:
				if r.err != nil {
					t.Fatalf("refused: %s", detail(r.err))
				}
				if !bytes.Equal(r.serverFinal, r.wantSig) {
					t.Fatalf("server-final %q, client expects %q", r.serverFinal, r.wantSig)
				}
				return
			case auth:
				if !errors.Is(r.err, ErrAuthFailed) || failure.ClassOf(r.err) != failure.AuthFailed {
					t.Fatalf("want an authentication failure, got %s", detail(r.err))
				}
			case proto:
				if failure.ClassOf(r.err) != failure.ProtocolError || errors.Is(r.err, ErrAuthFailed) {
					t.Fatalf("want a protocol error, got %s", detail(r.err))
				}
			}
			if !strings.Contains(detail(r.err), c.evidence) {
				t.Fatalf("evidence lacks %q: %s", c.evidence, detail(r.err))
			}
			if r.serverFinal != nil {
				t.Fatal("server-final sent on failure")
			}
			// Nothing from the client is echoed, only field names.
			if strings.Contains(detail(r.err), "XYZ") || strings.Contains(detail(r.err), "bob") || strings.Contains(detail(r.err), readSecret) {
				t.Fatalf("error echoes client input: %s", detail(r.err))
			}
		})
	}
}

func TestAuthenticateOptionErrors(t *testing.T) {
	a, _ := NewVerifier([]byte(readSecret), 1, []byte("salt-a"))
	b, _ := NewVerifier([]byte(readwriteSecret), 1, []byte("salt-b"))
	for name, o := range map[string]ServerOptions{
		"RequirePlus without hash": {Candidates: []*Verifier{a}, RequirePlus: true},
		"no fake key":              {},
		"short fake key":           {FakeSaltKey: []byte("short")},
		"different salts":          {Candidates: []*Verifier{a, b}},
		"nil candidate":            {Candidates: []*Verifier{nil}},
		"bad iterations":           {FakeSaltKey: bytes.Repeat([]byte("k"), 32), Iterations: -3},
	} {
		r := runExchange(t, "u", o, script{mech: MechanismSHA256, first: "n,,n=,r=abc"})
		if failure.ClassOf(r.err) != failure.ConfigInvalid || len(r.serverBytes) != 0 {
			t.Errorf("%s: %v (server wrote %d bytes)", name, r.err, len(r.serverBytes))
		}
	}
	if _, err := Authenticate(nil, "u", ServerOptions{Candidates: []*Verifier{a}}); failure.ClassOf(err) != failure.ConfigInvalid {
		t.Errorf("nil backend: %v", err)
	}
}
