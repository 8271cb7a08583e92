package scram

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
)

// FuzzServerExchange feeds arbitrary client-first and client-final messages
// (with {N}, {CB} and {P} placeholders filled from the live exchange, so the
// fuzzer reaches the proof check) to Authenticate over an in-memory pipe.
// Authenticate must never panic, must return a classified error or a
// success, and may succeed only when the client sent the correct proof for
// the secret of the candidate it reports.
//
// mode bits: 1 offer -PLUS, 2 RequirePlus, 4 unknown user, 8 two candidates
// (downgrade), 16 the client uses the second secret.
func FuzzServerExchange(f *testing.F) {
	f.Add(uint8(0), MechanismSHA256, "n,,n=,r=abc", "c=biws,r={N},p={P}")
	f.Add(uint8(1), MechanismSHA256Plus, "p=tls-server-end-point,,n=,r=abc", "c={CB},r={N},p={P}")
	f.Add(uint8(1), MechanismSHA256, "y,,n=,r=abc", "c=eSws,r={N},p={P}")
	f.Add(uint8(3), MechanismSHA256, "n,,n=,r=abc", "c=biws,r={N},p={P}")
	f.Add(uint8(4), MechanismSHA256, "n,,n=,r=abc", "c=biws,r={N},p={P}")
	f.Add(uint8(8|16), MechanismSHA256, "n,,n=a=2Cb,r=abc,x=1", "c=biws,r={N},y=2,p={P}")
	f.Add(uint8(8), MechanismSHA256, "n,,n=,r=abc", "c=biws,r={N},p=AAAA")
	f.Add(uint8(0), MechanismSHA256, "n,a=x,n=,r=abc", "c=biws,r={N},p={P},p={P}")
	f.Add(uint8(0), "", "", "")

	salt := []byte("fuzz-salt-16byte")
	first, _ := NewVerifier([]byte(readSecret), 1, salt)
	second, _ := NewVerifier([]byte(readwriteSecret), 1, salt)
	fakeKey := bytes.Repeat([]byte{7}, 32)

	f.Fuzz(func(t *testing.T, mode uint8, mech, clientFirst, clientFinal string) {
		opts := ServerOptions{FakeSaltKey: fakeKey, Iterations: 1}
		if mode&1 != 0 {
			opts.EndpointHash = testEndpoint
		}
		opts.RequirePlus = mode&2 != 0
		if mode&4 == 0 {
			opts.Candidates = []*Verifier{first}
			if mode&8 != 0 {
				opts.Candidates = append(opts.Candidates, second)
			}
		}
		secret := readSecret
		if mode&16 != 0 {
			secret = readwriteSecret
		}
		start := time.Now()
		defer func() {
			if d := time.Since(start); d > 3*time.Second {
				t.Fatalf("slow exchange (%s): mode %d mech %q first %q final %q", d, mode, mech, clientFirst, clientFinal)
			}
		}()
		r := runExchange(t, "u", opts, script{mech: mech, first: clientFirst, final: clientFinal, secret: secret, endpoint: testEndpoint})
		if r.err != nil {
			switch c := failure.ClassOf(r.err); c {
			case failure.ProtocolError, failure.AuthFailed, failure.ConfigInvalid:
			default:
				t.Fatalf("unexpected class %s: %v", c, r.err)
			}
			if failure.ClassOf(r.err) == failure.AuthFailed && !errors.Is(r.err, ErrAuthFailed) {
				t.Fatalf("auth_failed without ErrAuthFailed: %v", r.err)
			}
			if r.serverFinal != nil {
				t.Fatal("server-final sent on failure")
			}
			if msg := detail(r.err); strings.Contains(msg, secret) {
				t.Fatal("error shows the secret")
			}
			return
		}
		// Success: a real candidate, the proof computed for its secret, and
		// a server signature the client accepts.
		if mode&4 != 0 {
			t.Fatal("an unknown user authenticated")
		}
		if r.res.Matched < 0 || r.res.Matched >= len(opts.Candidates) {
			t.Fatalf("matched %d of %d candidates", r.res.Matched, len(opts.Candidates))
		}
		wantMatch := 0
		if secret == readwriteSecret {
			wantMatch = 1
		}
		if r.res.Matched != wantMatch || r.wantSig == nil || !bytes.Equal(r.serverFinal, r.wantSig) {
			t.Fatalf("success without the correct proof: matched %d, template %q", r.res.Matched, clientFinal)
		}
		if opts.RequirePlus && r.res.Mechanism != MechanismSHA256Plus {
			t.Fatal("RequirePlus let SCRAM-SHA-256 through")
		}
		if r.res.Mechanism == MechanismSHA256Plus && opts.EndpointHash == nil {
			t.Fatal("-PLUS without an endpoint hash")
		}
	})
}
