package scram

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/secretscan"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

// Test secrets (listed in secretscan.Known by the lead).
const (
	readSecret      = "g1-Scram-Secret-1"
	readwriteSecret = "g1-Scram-Secret-2"
	wrongSecret     = "g1-Wrong-Secret-3"
)

// RFC 7677 section 3's example: user "user", password "pencil", salt
// W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations. Its StoredKey and ServerKey
// follow from the RFC's ClientProof/ServerSignature; they are what
// PostgreSQL stores for that password and salt.
func TestNewVerifierRFC7677(t *testing.T) {
	salt, _ := base64.StdEncoding.DecodeString("W22ZaJ0SNY7soEsUEjb6gQ==")
	v, err := NewVerifier([]byte("pencil"), 4096, salt)
	if err != nil {
		t.Fatal(err)
	}
	// Recompute the RFC's exchange with the verifier's keys.
	ex := &exchange{cands: []*Verifier{v}, salt: v.Salt, iterations: 4096, matched: -1, mechanism: MechanismSHA256}
	if err := ex.readClientFirst([]byte("n,,n=user,r=rOprNGfwEbeRWgbNEkqO")); err != nil {
		t.Fatal(err)
	}
	ex.nonce = []byte("rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
	ex.serverFirstMsg = []byte("r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
	final, err := ex.readClientFinal([]byte("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="))
	if err != nil {
		t.Fatalf("RFC 7677 proof refused: %v", err)
	}
	if string(final) != "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=" {
		t.Fatalf("server-final %q differs from RFC 7677's", final)
	}
}

func TestParseVerifierStrict(t *testing.T) {
	v, err := NewVerifier([]byte(readSecret), 4096, nil)
	if err != nil {
		t.Fatal(err)
	}
	good := v.String()
	back, err := ParseVerifier(good)
	if err != nil || back.String() != good || !SameSalt(v, back) || back.StoredKey != v.StoredKey || back.ServerKey != v.ServerKey {
		t.Fatalf("round trip: %v", err)
	}
	scheme, rest, _ := strings.Cut(good, "$")
	params, keys, _ := strings.Cut(rest, "$")
	iter, salt, _ := strings.Cut(params, ":")
	stored, server, _ := strings.Cut(keys, ":")
	bad := map[string]string{
		"empty":            "",
		"md5":              "md5" + strings.Repeat("a", 32),
		"lower scheme":     strings.ToLower(scheme) + "$" + rest,
		"no keys":          scheme + "$" + params,
		"no colon params":  scheme + "$" + iter + salt + "$" + keys,
		"no colon keys":    scheme + "$" + params + "$" + stored + server,
		"zero iterations":  scheme + "$0:" + salt + "$" + keys,
		"leading zero":     scheme + "$04096:" + salt + "$" + keys,
		"signed":           scheme + "$+4096:" + salt + "$" + keys,
		"negative":         scheme + "$-1:" + salt + "$" + keys,
		"too many":         scheme + "$10000001:" + salt + "$" + keys,
		"hex iterations":   scheme + "$0x10:" + salt + "$" + keys,
		"empty salt":       scheme + "$" + iter + ":$" + keys,
		"salt not b64":     scheme + "$" + iter + ":" + salt[:len(salt)-2] + "!!$" + keys,
		"salt unpadded":    scheme + "$" + iter + ":" + strings.TrimRight(salt, "=") + "$" + keys,
		"short stored":     scheme + "$" + params + "$" + base64.StdEncoding.EncodeToString(make([]byte, 31)) + ":" + server,
		"long server":      scheme + "$" + params + "$" + stored + ":" + base64.StdEncoding.EncodeToString(make([]byte, 33)),
		"extra $":          good + "$x",
		"extra colon":      good + ":x",
		"space":            good + " ",
		"url b64 server":   scheme + "$" + params + "$" + stored + ":" + strings.NewReplacer("+", "-", "/", "_").Replace(server) + strings.Repeat("", 0),
		"double dollar":    scheme + "$$" + params + "$" + keys,
		"newline inside":   scheme + "$" + iter + ":" + salt + "\n$" + keys,
		"noncanonical pad": scheme + "$" + iter + ":" + noncanonical(salt) + "$" + keys,
	}
	for name, s := range bad {
		if name == "url b64 server" && !strings.ContainsAny(server, "+/") {
			continue // nothing to replace in this random key
		}
		_, err := ParseVerifier(s)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if failure.ClassOf(err) != failure.ConfigInvalid {
			t.Errorf("%s: class %s", name, failure.ClassOf(err))
		}
		fe, _ := failure.As(err)
		text := fe.Detail()
		for _, part := range []string{salt, stored, server} {
			if strings.Contains(text, part) {
				t.Errorf("%s: error echoes part of the verifier: %s", name, text)
			}
		}
	}
}

// noncanonical changes the unused low bits of the last base64 digit, which
// a lax decoder ignores.
func noncanonical(s string) string {
	trimmed := strings.TrimRight(s, "=")
	pad := s[len(trimmed):]
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	last := strings.IndexByte(alphabet, trimmed[len(trimmed)-1])
	return trimmed[:len(trimmed)-1] + string(alphabet[last|1]) + pad
}

func TestNewVerifierRefuses(t *testing.T) {
	for name, c := range map[string]struct {
		secret []byte
		iter   int
		salt   []byte
	}{
		"empty":          {nil, 0, nil},
		"NUL":            {[]byte("a\x00b"), 0, nil},
		"non-ASCII":      {[]byte("pässword"), 0, nil},
		"too long":       {bytes.Repeat([]byte("a"), MaxSecretLen+1), 0, nil},
		"negative iter":  {[]byte("x"), -1, nil},
		"too many iter":  {[]byte("x"), MaxIterations + 1, nil},
		"empty salt":     {[]byte("x"), 0, []byte{}},
		"oversized salt": {[]byte("x"), 0, make([]byte, MaxSaltLen+1)},
	} {
		if _, err := NewVerifier(c.secret, c.iter, c.salt); failure.ClassOf(err) != failure.ConfigInvalid {
			t.Errorf("%s: %v", name, err)
		}
	}
	v, err := NewVerifier([]byte("x"), 0, nil)
	if err != nil || v.Iterations != DefaultIterations || len(v.Salt) != SaltLen {
		t.Fatalf("defaults: %v %+v", err, v)
	}
}

func TestVerifierNeverPrintsKeys(t *testing.T) {
	v, err := NewVerifier([]byte(readSecret), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("verifier", "v", v)
	stored := base64.StdEncoding.EncodeToString(v.StoredKey[:])
	server := base64.StdEncoding.EncodeToString(v.ServerKey[:])
	for name, s := range map[string]string{"%v": fmt.Sprintf("%v", v), "%+v": fmt.Sprintf("%+v", v), "%#v": fmt.Sprintf("%#v", v), "%s": fmt.Sprintf("%s", v), "slog": logged.String()} {
		if strings.Contains(s, stored) || strings.Contains(s, server) || strings.Contains(s, "$") {
			t.Errorf("%s prints the verifier: %s", name, s)
		}
	}
	if !strings.Contains(logged.String(), `"iterations":4096`) {
		t.Errorf("slog lacks the iterations: %s", logged.String())
	}
}

func TestHashSecret(t *testing.T) {
	a, err := HashSecret(strings.NewReader(readwriteSecret+"\n"), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewVerifier([]byte(readwriteSecret), a.Iterations, a.Salt)
	if err != nil || b.String() != a.String() {
		t.Fatalf("one trailing newline not trimmed: %v", err)
	}
	crlf, err := HashSecret(strings.NewReader(readwriteSecret+"\r\n"), 0, a)
	if err != nil || crlf.String() != a.String() {
		t.Fatalf("CRLF not trimmed: %v", err)
	}
	// like: the downgrade pair shares salt and iterations.
	r, err := HashSecret(strings.NewReader(readSecret), 0, a)
	if err != nil || !SameSalt(a, r) || r.StoredKey == a.StoredKey {
		t.Fatalf("like: %v", err)
	}
	two, err := HashSecret(strings.NewReader(readSecret+"\n\n"), 0, a)
	if err != nil || two.String() == r.String() {
		t.Fatalf("only one newline may be trimmed: %v", err)
	}
	for name, in := range map[string]string{"empty": "", "newline only": "\n", "too long": strings.Repeat("x", MaxSecretLen+1), "too long with newline": strings.Repeat("x", MaxSecretLen+1) + "\n"} {
		if _, err := HashSecret(strings.NewReader(in), 0, nil); failure.ClassOf(err) != failure.ConfigInvalid {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := HashSecret(strings.NewReader(readSecret), 5000, a); failure.ClassOf(err) != failure.ConfigInvalid {
		t.Errorf("iterations differing from like: %v", err)
	}
	if _, err := HashSecret(strings.NewReader(strings.Repeat("x", MaxSecretLen)+"\n"), 1, nil); err != nil {
		t.Errorf("a secret of MaxSecretLen bytes plus newline: %v", err)
	}
}

// PostgreSQL's own verifiers, both ways: what CREATE ROLE ... PASSWORD
// stores is what NewVerifier computes for the same salt and iterations, and
// a verifier from NewVerifier set with ALTER ROLE lets psql and pgconn log
// in with the secret (and not with another).
func TestVerifierMatchesPostgreSQL(t *testing.T) {
	for _, version := range []int{15, 18} {
		t.Run(fmt.Sprintf("PG%d", version), func(t *testing.T) {
			srv := pgtest.Start(t, pgtest.Options{
				Version: version,
				HBA:     []string{"local all all trust", "host all all 127.0.0.1/32 scram-sha-256"},
				Setup: []string{
					"SET password_encryption = 'scram-sha-256'; CREATE ROLE g1_pg LOGIN PASSWORD '" + readSecret + "'; CREATE ROLE g1_made LOGIN",
					"SET password_encryption = 'scram-sha-256'; SET scram_iterations = 10000; CREATE ROLE g1_iter LOGIN PASSWORD '" + readwriteSecret + "'",
				}[:setupCount(version)],
			})
			for role, secret := range map[string]string{"g1_pg": readSecret, "g1_iter": readwriteSecret} {
				if role == "g1_iter" && version < 16 {
					continue // scram_iterations is PostgreSQL 16+
				}
				stored := srv.Exec(t, "SELECT rolpassword FROM pg_authid WHERE rolname = '"+role+"'")
				v, err := ParseVerifier(stored)
				if err != nil {
					t.Fatalf("%s: PostgreSQL's verifier refused: %v", role, err)
				}
				if v.String() != stored {
					t.Fatalf("%s: String() does not give back PostgreSQL's form", role)
				}
				mine, err := NewVerifier([]byte(secret), v.Iterations, v.Salt)
				if err != nil {
					t.Fatal(err)
				}
				if mine.String() != stored {
					t.Fatalf("%s: NewVerifier with PostgreSQL's salt and %d iterations differs from pg_authid.rolpassword", role, v.Iterations)
				}
				// PostgreSQL's verifier opens the gateway's exchange, with
				// channel binding, for pgconn holding the secret.
				gw := startTestServer(t, testpki.SelfSigned(t), func(user string, endpoint []byte) ServerOptions {
					return ServerOptions{Candidates: []*Verifier{v}, EndpointHash: endpoint, RequirePlus: true}
				})
				if err := pgconnSelect(t, connInfo(gw, role, "channel_binding=require"), secret); err != nil {
					t.Fatalf("%s: PostgreSQL's verifier in Authenticate: %v", role, err)
				}
				if o := gw.next(t); o.err != nil || o.res.Mechanism != MechanismSHA256Plus {
					t.Fatalf("%s: server: %+v", role, o)
				}
			}

			made, err := NewVerifier([]byte(readwriteSecret), 0, nil)
			if err != nil {
				t.Fatal(err)
			}
			srv.Exec(t, "ALTER ROLE g1_made PASSWORD '"+made.String()+"'")
			if got := srv.Exec(t, "SELECT rolpassword FROM pg_authid WHERE rolname = 'g1_made'"); got != made.String() {
				t.Fatal("PostgreSQL did not store the verifier as given (it re-hashed it as a password?)")
			}
			conninfo := fmt.Sprintf("host=127.0.0.1 port=%d user=g1_made dbname=postgres sslmode=disable", srv.Port)
			res := pgtest.Psql(t, conninfo, map[string]string{"PGPASSWORD": readwriteSecret})
			secretscan.Record(t, "psql output", res.Stdout+res.Stderr)
			if !res.OK || strings.TrimSpace(res.Stdout) != "1" {
				t.Fatalf("psql with the secret: exit %d: %s", res.ExitCode, res.Stderr)
			}
			res = pgtest.Psql(t, conninfo, map[string]string{"PGPASSWORD": wrongSecret})
			if res.OK || !strings.Contains(res.Stderr, "password authentication failed") {
				t.Fatalf("psql with a wrong secret: exit %d: %s", res.ExitCode, res.Stderr)
			}
			for secret, want := range map[string]bool{readwriteSecret: true, wrongSecret: false} {
				err := pgconnSelect(t, conninfo, secret)
				if (err == nil) != want {
					t.Fatalf("pgconn (secret ok=%v): %v", want, err)
				}
				var pgErr *pgconn.PgError
				if !want && (!errors.As(err, &pgErr) || pgErr.Code != "28P01") {
					t.Fatalf("pgconn with a wrong secret: %v", err)
				}
			}
		})
	}
}

func setupCount(version int) int {
	if version >= 16 {
		return 2
	}
	return 1
}

// pgconnSelect connects with pgconn (the secret set in the config, never in
// the connection string) and runs SELECT 1.
func pgconnSelect(t *testing.T, conninfo, secret string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cfg, err := pgconn.ParseConfig(conninfo + " connect_timeout=10")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Password = secret
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	res, err := conn.Exec(ctx, "SELECT 1").ReadAll()
	if err != nil {
		return err
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || string(res[0].Rows[0][0]) != "1" {
		return fmt.Errorf("SELECT 1 returned %v", res)
	}
	return nil
}
