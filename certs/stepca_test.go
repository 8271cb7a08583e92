package certs

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/keyfile"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/secretscan"
	"github.com/pgtrust/pgtrust/internal/steptest"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

// stepEnv is a real step-ca and the log the issuers under test write to.
type stepEnv struct {
	ca *steptest.CA
	mu sync.Mutex
	lb bytes.Buffer
	// tokens are the provisioner tokens the test made: secrets as much as
	// the password (anyone holding one gets a certificate).
	tokens []string
}

func (e *stepEnv) Write(p []byte) (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.lb.Write(p)
}

func (e *stepEnv) log() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.lb.String()
}

func newStepEnv(t *testing.T, o steptest.Options) *stepEnv {
	t.Helper()
	e := &stepEnv{ca: steptest.Start(t, o)}
	t.Cleanup(func() {
		secretscan.Record(t, "step-ca issuer log", e.log())
		e.assertNoSecrets(t, "log", e.log())
	})
	return e
}

func (e *stepEnv) token(t *testing.T, o steptest.TokenOptions) string {
	tok := e.ca.TokenWith(t, o)
	e.tokens = append(e.tokens, tok)
	return tok
}

func (e *stepEnv) options(mut func(*StepOptions)) StepOptions {
	o := StepOptions{CAURL: e.ca.URL, RootFile: e.ca.RootFile, Provisioner: e.ca.Provisioner,
		ProvisionerKeyFile: e.ca.ProvisionerKeyFile, ProvisionerPasswordFile: e.ca.PasswordFile,
		CommonName: "alice", RequestTimeout: 5 * time.Second,
		Logger: slog.New(slog.NewTextHandler(e, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	if mut != nil {
		mut(&o)
	}
	return o
}

func (e *stepEnv) issuer(t *testing.T, mut func(*StepOptions)) *StepIssuer {
	t.Helper()
	s, err := NewStepIssuer(e.options(mut))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (e *stepEnv) assertNoSecrets(t *testing.T, what, text string) {
	t.Helper()
	secrets := append([]string{steptest.Password}, e.tokens...)
	key, err := os.ReadFile(e.ca.PlainKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, strings.TrimSpace(string(key)))
	enc, _ := os.ReadFile(e.ca.ProvisionerKeyFile)
	secrets = append(secrets, strings.TrimSpace(string(enc)))
	for _, s := range secrets {
		if strings.Contains(text, s) {
			t.Errorf("%s holds a secret (%.8s…)", what, s)
		}
	}
	if strings.Contains(text, `"d":`) || strings.Contains(text, "PRIVATE KEY") {
		t.Errorf("%s holds private key material (%d bytes of text)", what, len(text))
	}
}

// stepIssue issues and fails the test on error.
func stepIssue(t *testing.T, s *StepIssuer, current *tls.Certificate) *Issued {
	t.Helper()
	iss, err := s.Issue(context.Background(), current)
	if err != nil {
		fe, _ := failure.As(err)
		t.Fatalf("issue: %v\n%s", err, fe.Detail())
	}
	return iss
}

// stepErr issues, expects class want, and checks the error carries a fix
// and no secret.
func stepErr(t *testing.T, e *stepEnv, s *StepIssuer, current *tls.Certificate, want failure.Class) *failure.Error {
	t.Helper()
	iss, err := s.Issue(context.Background(), current)
	if err == nil {
		t.Fatalf("issue succeeded (serial %s), want %s", SerialHex(iss.Certificate.Leaf), want)
	}
	fe, ok := failure.As(err)
	if !ok {
		t.Fatalf("error is not a *failure.Error: %T %v", err, err)
	}
	if fe.Class != want {
		t.Fatalf("class %s, want %s: %s", fe.Class, want, fe.Detail())
	}
	if fe.Fix == "" || fe.Evidence == "" && fe.Err == nil {
		t.Errorf("failure without fix or evidence: %s", fe.Detail())
	}
	texts := errorTexts(err)
	secretscan.Record(t, "step-ca issuer error", texts)
	e.assertNoSecrets(t, "error", texts)
	return fe
}

func pubEqual(a, b *x509.Certificate) bool {
	ka, _ := x509.MarshalPKIXPublicKey(a.PublicKey)
	kb, _ := x509.MarshalPKIXPublicKey(b.PublicKey)
	return bytes.Equal(ka, kb)
}

// First issue with the encrypted provisioner key (as `step` writes it): a
// P-256 key, the requested name and lifetime, a chain to the root, and the
// root as the CA for TrustIssuedCA.
func TestStepIssueEncryptedKey(t *testing.T) {
	e := newStepEnv(t, steptest.Options{})
	s := e.issuer(t, func(o *StepOptions) {
		o.CommonName, o.SANs, o.Duration = "db.example", []string{"db.example", "127.0.0.1"}, 40*time.Second
	})
	iss := stepIssue(t, s, nil)
	leaf := iss.Certificate.Leaf
	if leaf.Subject.CommonName != "db.example" || len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "db.example" ||
		len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal([]byte{127, 0, 0, 1}) {
		t.Errorf("names: CN %q DNS %v IP %v", leaf.Subject.CommonName, leaf.DNSNames, leaf.IPAddresses)
	}
	if k, ok := iss.Certificate.PrivateKey.(*ecdsa.PrivateKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("key %T, want ECDSA P-256", iss.Certificate.PrivateKey)
	}
	// 40s requested from now, plus steptest's 1s backdate.
	if d := leaf.NotAfter.Sub(leaf.NotBefore); d != 41*time.Second {
		t.Errorf("lifetime %s, want 41s", d)
	}
	if len(iss.Certificate.Certificate) != 2 || len(iss.CAs) != 1 || !iss.CAs[0].Equal(e.ca.Root) {
		t.Errorf("chain of %d, CAs %d", len(iss.Certificate.Certificate), len(iss.CAs))
	}
	inter, _ := x509.ParseCertificate(iss.Certificate.Certificate[1])
	if !inter.Equal(e.ca.Intermediate) {
		t.Errorf("second certificate is %s, want the intermediate", inter.Subject)
	}
	if !strings.Contains(e.log(), "mode=\"sign (provisioner key)\"") {
		t.Errorf("log does not say how the certificate was obtained:\n%s", e.log())
	}

	// The plain JSON form of the key works the same, with no password file.
	plain := e.issuer(t, func(o *StepOptions) { o.ProvisionerKeyFile, o.ProvisionerPasswordFile = e.ca.PlainKeyFile, "" })
	if iss := stepIssue(t, plain, nil); iss.Certificate.Leaf.Subject.CommonName != "alice" {
		t.Errorf("plain key: CN %q", iss.Certificate.Leaf.Subject.CommonName)
	}
	// Options print file names only.
	for _, text := range []string{fmt.Sprint(s), fmt.Sprintf("%#v", s), fmt.Sprintf("%+v", e.options(nil))} {
		if !strings.Contains(text, e.ca.PasswordFile) || strings.Contains(text, "Logger") {
			t.Errorf("options rendering: %s", text)
		}
		e.assertNoSecrets(t, "options", text)
	}
}

// First issue with a token from a file (`step ca token`): the token is
// accepted once; the second use is refused as renewal_auth with a fix that
// says to put a fresh token there.
func TestStepIssueTokenFile(t *testing.T) {
	e := newStepEnv(t, steptest.Options{})
	tf := e.ca.TokenFile(t, "alice.token", e.token(t, steptest.TokenOptions{Subject: "alice"}))
	s := e.issuer(t, func(o *StepOptions) {
		o.ProvisionerKeyFile, o.ProvisionerPasswordFile, o.Provisioner, o.TokenFile = "", "", "", tf
	})
	iss := stepIssue(t, s, nil)
	if iss.Certificate.Leaf.Subject.CommonName != "alice" {
		t.Fatalf("CN %q", iss.Certificate.Leaf.Subject.CommonName)
	}
	fe := stepErr(t, e, s, nil, RenewalAuth)
	if !strings.Contains(fe.Fix, "step ca token alice") || !strings.Contains(fe.Evidence, "step-ca said") {
		t.Errorf("reused token: %s", fe.Detail())
	}
}

// A token for another subject, an expired token, a token for another
// audience and a token signed by another provisioner name are refused by
// step-ca with renewal_auth.
func TestStepRefusedTokens(t *testing.T) {
	e := newStepEnv(t, steptest.Options{})
	for _, tc := range []struct {
		name string
		o    steptest.TokenOptions
	}{
		{"other-subject", steptest.TokenOptions{Subject: "mallory"}},
		{"expired", steptest.TokenOptions{Subject: "alice", NotBefore: time.Now().Add(-20 * time.Minute)}},
		{"other-audience", steptest.TokenOptions{Subject: "alice", Audience: "https://ca.elsewhere:9000/1.0/sign"}},
		{"other-provisioner", steptest.TokenOptions{Subject: "alice", Issuer: "nobody"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tf := e.ca.TokenFile(t, tc.name+".token", e.token(t, tc.o))
			s := e.issuer(t, func(o *StepOptions) { o.ProvisionerKeyFile, o.TokenFile = "", tf })
			stepErr(t, e, s, nil, RenewalAuth)
		})
	}
	t.Run("empty-file", func(t *testing.T) {
		tf := e.ca.TokenFile(t, "empty.token", "")
		s := e.issuer(t, func(o *StepOptions) { o.ProvisionerKeyFile, o.TokenFile = "", tf })
		if fe := stepErr(t, e, s, nil, RenewalAuth); !strings.Contains(fe.Message, "empty") {
			t.Errorf("%s", fe.Detail())
		}
	})
}

// Renewal over mTLS: the same public key, a new serial and a later NotAfter.
func TestStepRenewKeepsKey(t *testing.T) {
	e := newStepEnv(t, steptest.Options{DefaultDuration: 30 * time.Second})
	// No provisioner credential is needed to renew: the token file is
	// consumed by the first issue.
	tf := e.ca.TokenFile(t, "alice.token", e.token(t, steptest.TokenOptions{Subject: "alice"}))
	s := e.issuer(t, func(o *StepOptions) { o.ProvisionerKeyFile, o.TokenFile = "", tf })
	first := stepIssue(t, s, nil)
	time.Sleep(1100 * time.Millisecond) // NotAfter has a one-second resolution
	second := stepIssue(t, s, &first.Certificate)
	a, b := first.Certificate.Leaf, second.Certificate.Leaf
	if !pubEqual(a, b) || second.Certificate.PrivateKey != first.Certificate.PrivateKey {
		t.Error("renewal changed the key")
	}
	if a.SerialNumber.Cmp(b.SerialNumber) == 0 {
		t.Error("renewal kept the serial")
	}
	if !b.NotAfter.After(a.NotAfter) {
		t.Errorf("NotAfter %s not after %s", b.NotAfter, a.NotAfter)
	}
	if b.NotAfter.Sub(b.NotBefore) != a.NotAfter.Sub(a.NotBefore) {
		t.Errorf("renewal changed the lifetime: %s → %s", a.NotAfter.Sub(a.NotBefore), b.NotAfter.Sub(b.NotBefore))
	}
	if !strings.Contains(e.log(), `mode=renew`) {
		t.Errorf("log does not show a renewal:\n%s", e.log())
	}
}

// RenewingSource over a real step-ca renews by itself, in real time, with
// 20-second certificates (threshold 0.7: about every 14 s).
func TestStepRenewingSourceRenews(t *testing.T) {
	t.Parallel() // about 30 s of real time, overlapped with the other waits
	e := newStepEnv(t, steptest.Options{DefaultDuration: 20 * time.Second})
	s := e.issuer(t, nil)
	// OnRenew also reports the first issue; the loop counts serials.
	done := make(chan struct{}, 16)
	src, err := NewRenewingSource(context.Background(), s, RenewOptions{Threshold: 0.7, TrustIssuedCA: true,
		OnRenew: func(st Status, err error) {
			if err == nil {
				select {
				case done <- struct{}{}:
				default:
				}
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go src.Run(ctx)
	serials := map[string]bool{}
	first, _ := src.GetClientCertificate(nil)
	serials[first.Leaf.SerialNumber.String()] = true
	deadline := time.After(90 * time.Second)
	for len(serials) < 3 {
		select {
		case <-done:
			c, err := src.GetClientCertificate(nil)
			if err != nil {
				t.Fatal(err)
			}
			serials[c.Leaf.SerialNumber.String()] = true
			if !pubEqual(c.Leaf, first.Leaf) {
				t.Error("a renewal with a valid certificate changed the key")
			}
		case <-deadline:
			t.Fatalf("%d serials in 90 s: %+v\n%s", len(serials), src.Status(), e.log())
		}
	}
	st := src.Status()
	if len(serials) < 3 || st.Reloads < 2 || st.Failures != 0 {
		t.Errorf("serials %d, status %+v", len(serials), st)
	}
	pool := x509.NewCertPool()
	pool.AddCert(e.ca.Root)
	if !pool.Equal(src.Roots()) {
		t.Error("TrustIssuedCA: roots are not step-ca's root")
	}
}

// The CA stopped: renewal_unreachable, and the source keeps its current
// certificate; after a restart, renewal works again.
func TestStepCAStopped(t *testing.T) {
	e := newStepEnv(t, steptest.Options{})
	s := e.issuer(t, nil)
	src, err := NewRenewingSource(context.Background(), s, RenewOptions{})
	if err != nil {
		t.Fatal(err)
	}
	before, _ := src.GetClientCertificate(nil)
	e.ca.Stop(t)
	err = src.Reload()
	if failure.ClassOf(err) != RenewalUnreachable {
		t.Fatalf("reload with the CA stopped: %v", err)
	}
	stepErr(t, e, s, before, RenewalUnreachable)
	after, err := src.GetClientCertificate(nil)
	if err != nil || after.Leaf.SerialNumber.Cmp(before.Leaf.SerialNumber) != 0 {
		t.Fatalf("current certificate changed after a failed renewal: %v", err)
	}
	if st := src.Status(); st.LastReloadClass != RenewalUnreachable {
		t.Errorf("status %+v", st)
	}
	e.ca.Restart(t)
	if err := src.Reload(); err != nil {
		t.Fatalf("reload after restart: %v", err)
	}
	if c, _ := src.GetClientCertificate(nil); c.Leaf.SerialNumber.Cmp(before.Leaf.SerialNumber) == 0 {
		t.Error("no new certificate after the restart")
	}
}

// Credentials pgtrust cannot use are renewal_auth: the CA is fine, the
// provisioner credential is not (the fix names the key and password files).
func TestStepBadProvisionerKey(t *testing.T) {
	e := newStepEnv(t, steptest.Options{})
	dir := t.TempDir()
	wrongPW := write(t, filepath.Join(dir, "wrong.pw"), []byte("not-the-password\n"), 0o600)
	for _, tc := range []struct {
		name string
		mut  func(*StepOptions)
		want string
	}{
		{"wrong-password", func(o *StepOptions) { o.ProvisionerPasswordFile = wrongPW }, "does not decrypt"},
		{"no-password-file", func(o *StepOptions) { o.ProvisionerPasswordFile = "" }, "no password file"},
		{"missing-key-file", func(o *StepOptions) { o.ProvisionerKeyFile = filepath.Join(dir, "none.jwe") }, "could not read"},
		{"not-a-key", func(o *StepOptions) { o.ProvisionerKeyFile = e.ca.RootFile }, "not a JWK"},
		{"wrong-provisioner-name", func(o *StepOptions) { o.Provisioner = "other" }, "refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fe := stepErr(t, e, e.issuer(t, tc.mut), nil, RenewalAuth)
			if !strings.Contains(fe.Message, tc.want) || !strings.Contains(fe.Fix, "provisioner") {
				t.Errorf("%s", fe.Detail())
			}
		})
	}
}

// An expired current certificate with the provisioner key configured:
// a new key and certificate through a fresh token (mTLS cannot present an
// expired certificate).
func TestStepExpiredReissuesWithKey(t *testing.T) {
	t.Parallel()
	e := newStepEnv(t, steptest.Options{})
	s := e.issuer(t, func(o *StepOptions) { o.Duration = 5 * time.Second })
	first := stepIssue(t, s, nil)
	time.Sleep(time.Until(first.Certificate.Leaf.NotAfter) + 1100*time.Millisecond)
	second := stepIssue(t, s, &first.Certificate)
	if pubEqual(first.Certificate.Leaf, second.Certificate.Leaf) {
		t.Error("re-issue after expiry kept the key")
	}
	if !strings.Contains(e.log(), "has expired") {
		t.Errorf("log does not say why:\n%s", e.log())
	}
}

// An expired certificate without a provisioner key: renewed with a token
// signed by its own key when the provisioner allows renewal after expiry;
// otherwise renewal_auth whose fix names both ways out.
func TestStepExpiredWithoutKey(t *testing.T) {
	t.Parallel()
	for _, allow := range []bool{true, false} {
		t.Run("allow="+strconv.FormatBool(allow), func(t *testing.T) {
			t.Parallel()
			// Backdated a minute (step-ca's default): step-ca verifies the
			// expired certificate's chain at NotAfter − 1 minute.
			e := newStepEnv(t, steptest.Options{AllowRenewalAfterExpiry: allow, Backdate: time.Minute})
			tf := e.ca.TokenFile(t, "alice.token", e.token(t, steptest.TokenOptions{Subject: "alice"}))
			s := e.issuer(t, func(o *StepOptions) { o.ProvisionerKeyFile, o.TokenFile, o.Duration = "", tf, 5*time.Second })
			first := stepIssue(t, s, nil)
			time.Sleep(time.Until(first.Certificate.Leaf.NotAfter) + 1100*time.Millisecond)
			if !allow {
				fe := stepErr(t, e, s, &first.Certificate, RenewalAuth)
				if !strings.Contains(fe.Fix, "allowRenewalAfterExpiry") || !strings.Contains(fe.Fix, "provisioner_key_file") {
					t.Errorf("%s", fe.Detail())
				}
				return
			}
			second := stepIssue(t, s, &first.Certificate)
			if !pubEqual(first.Certificate.Leaf, second.Certificate.Leaf) || !second.Certificate.Leaf.NotAfter.After(time.Now()) {
				t.Error("renewal after expiry: not the same key, or not valid")
			}
			if !strings.Contains(e.log(), `mode="renew after expiry"`) {
				t.Errorf("log:\n%s", e.log())
			}
		})
	}
}

// A CA whose HTTPS certificate does not chain to RootFile is refused before
// any request is sent (renewal_unreachable: no trusted CA answered), with a
// fix about the root file.
func TestStepCANotChainingToRoot(t *testing.T) {
	e := newStepEnv(t, steptest.Options{})
	other, err := NewCA(Options{CommonName: "other CA"})
	if err != nil {
		t.Fatal(err)
	}
	otherFile := write(t, filepath.Join(t.TempDir(), "other.crt"), other.CertPEM(), 0o644)
	s := e.issuer(t, func(o *StepOptions) { o.RootFile = otherFile })
	fe := stepErr(t, e, s, nil, RenewalUnreachable)
	if !strings.Contains(fe.Message, "does not verify against the root file") || !strings.Contains(fe.Fix, "root") {
		t.Errorf("%s", fe.Detail())
	}
	// A renewal presents the client certificate only to a CA that verifies.
	good := stepIssue(t, e.issuer(t, nil), nil)
	stepErr(t, e, s, &good.Certificate, RenewalUnreachable)
}

// A duration beyond the provisioner's maximum: step-ca's 403 (the token is
// good, the request exceeds its scope) is renewal_auth with step-ca's
// message as evidence and a fix naming the provisioner's limits.
func TestStepForbiddenRequest(t *testing.T) {
	e := newStepEnv(t, steptest.Options{MaxDuration: time.Hour})
	fe := stepErr(t, e, e.issuer(t, func(o *StepOptions) { o.Duration = 2 * time.Hour }), nil, RenewalAuth)
	if !strings.Contains(fe.Message, "HTTP 403") || !strings.Contains(fe.Evidence, "maximum certificate duration") ||
		!strings.Contains(fe.Fix, "maxTLSCertDuration") {
		t.Errorf("%s", fe.Detail())
	}
}

// Options are checked without the network.
func TestStepOptionsInvalid(t *testing.T) {
	ca, err := NewCA(Options{CommonName: "r"})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	root := write(t, filepath.Join(dir, "root.crt"), ca.CertPEM(), 0o644)
	notCert := write(t, filepath.Join(dir, "x"), []byte("x"), 0o644)
	for name, mut := range map[string]func(*StepOptions){
		"no-url":        func(o *StepOptions) { o.CAURL = "" },
		"http":          func(o *StepOptions) { o.CAURL = "http://127.0.0.1:9000" },
		"no-cn":         func(o *StepOptions) { o.CommonName = "" },
		"both":          func(o *StepOptions) { o.TokenFile = "/t" },
		"neither":       func(o *StepOptions) { o.ProvisionerKeyFile = "" },
		"no-name":       func(o *StepOptions) { o.Provisioner = "" },
		"negative":      func(o *StepOptions) { o.Duration = -time.Second },
		"empty-san":     func(o *StepOptions) { o.SANs = []string{" "} },
		"missing-root":  func(o *StepOptions) { o.RootFile = filepath.Join(dir, "none") },
		"root-not-cert": func(o *StepOptions) { o.RootFile = notCert },
	} {
		o := StepOptions{CAURL: "https://127.0.0.1:1", RootFile: root, Provisioner: "p", ProvisionerKeyFile: "/k", CommonName: "alice"}
		mut(&o)
		_, err := NewStepIssuer(o)
		if failure.ClassOf(err) != failure.ConfigInvalid {
			t.Errorf("%s: %v", name, err)
		} else if fe, _ := failure.As(err); fe.Fix == "" {
			t.Errorf("%s: no fix", name)
		}
	}
}

// step-ca's client certificate works against a real PostgreSQL that
// trusts step-ca's root with clientcert=verify-full (hostssl ... cert): the
// user is the CN, and pg_stat_ssl.client_serial is the issued serial, before
// and after a renewal. The server certificate comes from step-ca too.
func TestStepCertificateWithPostgreSQL(t *testing.T) {
	e := newStepEnv(t, steptest.Options{DefaultDuration: 10 * time.Minute})
	srv := stepIssue(t, e.issuer(t, func(o *StepOptions) { o.CommonName, o.SANs = "localhost", []string{"localhost", "127.0.0.1"} }), nil)
	rootPEM, err := os.ReadFile(e.ca.RootFile)
	if err != nil {
		t.Fatal(err)
	}
	pg := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: chainPEM(srv), ServerKey: keyPEM(t, srv), CA: rootPEM,
		HBA:   []string{"hostssl all alice 127.0.0.1/32 cert"},
		Setup: []string{"CREATE ROLE alice LOGIN"}})
	s := e.issuer(t, nil)
	cli := stepIssue(t, s, nil)
	dir := t.TempDir()
	check := func(iss *Issued) {
		t.Helper()
		crt := write(t, filepath.Join(dir, "client.crt"), chainPEM(iss), 0o644)
		key := write(t, filepath.Join(dir, "client.key"), keyPEM(t, iss), 0o600)
		conn := "host=localhost hostaddr=127.0.0.1 port=" + strconv.Itoa(pg.Port) + " dbname=postgres user=alice sslmode=verify-full sslrootcert=" + e.ca.RootFile + " sslcert=" + crt + " sslkey=" + key
		r := pgtest.PsqlQuery(t, conn, "SELECT current_user, client_serial FROM pg_stat_ssl WHERE pid = pg_backend_pid()", nil)
		want := "alice|" + iss.Certificate.Leaf.SerialNumber.String()
		if !r.OK || strings.TrimSpace(r.Stdout) != want {
			t.Fatalf("psql: %+v, want %q\nserver log:\n%s", r, want, pg.Log())
		}
	}
	check(cli)
	check(stepIssue(t, s, &cli.Certificate))
}

func chainPEM(iss *Issued) []byte {
	var b []byte
	for _, der := range iss.Certificate.Certificate {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	return b
}

func keyPEM(t *testing.T, iss *Issued) []byte {
	t.Helper()
	b, err := keyfile.EncodePrivateKeyPEM(iss.Certificate.PrivateKey.(crypto.Signer))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A valid current certificate that does not chain to step-ca's root (step-ca
// would reject it in the TLS handshake): with the provisioner key, a new
// certificate is issued through a token; with only a (spent) token file,
// step-ca's refusal of that token is renewal_auth.
func TestStepForeignCertificate(t *testing.T) {
	e := newStepEnv(t, steptest.Options{})
	foreign := testpki.NewRootCA(t, "not step-ca").Client(t, "alice").TLSCertificate()
	iss := stepIssue(t, e.issuer(t, nil), &foreign)
	if pubEqual(iss.Certificate.Leaf, foreign.Leaf) || !strings.Contains(e.log(), "does not chain to step-ca's root") {
		t.Errorf("foreign certificate not replaced by a new key:\n%s", e.log())
	}
	tf := e.ca.TokenFile(t, "alice.token", e.token(t, steptest.TokenOptions{Subject: "alice"}))
	s := e.issuer(t, func(o *StepOptions) { o.ProvisionerKeyFile, o.TokenFile = "", tf })
	stepIssue(t, s, nil) // spends the token
	fe := stepErr(t, e, s, &foreign, RenewalAuth)
	if !strings.Contains(fe.Fix, "step ca token alice") {
		t.Errorf("%s", fe.Detail())
	}
}

// Answers a real step-ca gives only when broken (400 for a malformed
// request, 5xx, a non-JSON body, a certificate for another key, no answer)
// come from a TLS test server that speaks step-ca's JSON, trusted through
// RootFile like step-ca.
func TestStepHTTPErrorMapping(t *testing.T) {
	other := testpki.NewRootCA(t, "other").Client(t, "alice")
	var mu sync.Mutex
	status, body := 0, ""
	release := make(chan struct{})
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		st, b := status, body
		mu.Unlock()
		if st == 0 {
			<-release // never answers within the request timeout
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(st)
		_, _ = io.WriteString(w, b)
	}))
	defer srv.Close()
	defer close(release) // before Close, which waits for the handler
	dir := t.TempDir()
	root := write(t, filepath.Join(dir, "root.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644)
	tf := write(t, filepath.Join(dir, "token"), []byte("not-a-real-token\n"), 0o600)
	s, err := NewStepIssuer(StepOptions{CAURL: srv.URL, RootFile: root, TokenFile: tf, CommonName: "alice", RequestTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	e := &stepEnv{ca: &steptest.CA{PlainKeyFile: tf, ProvisionerKeyFile: tf}}
	for _, tc := range []struct {
		name   string
		status int
		body   string
		want   failure.Class
		text   string
	}{
		{"400", 400, `{"status":400,"message":"The request could not be completed: malformed certificate request."}`, RenewalIssueFailed, "malformed certificate request"},
		{"500", 500, `{"status":500,"message":"The certificate authority encountered an Internal Server Error."}`, RenewalIssueFailed, "Internal Server Error"},
		{"502-html", 502, `<html>bad gateway</html>`, RenewalIssueFailed, "not step-ca's JSON"},
		{"201-not-json", 201, `certificate!`, RenewalInvalid, "not JSON"},
		{"201-other-key", 201, `{"crt":` + strconv.Quote(string(other.CertPEM)) + `}`, RenewalInvalid, "not the key pgtrust sent"},
		{"201-empty", 201, `{}`, RenewalInvalid, "no certificate"},
		{"no-answer", 0, "", RenewalUnreachable, "no answer within 500ms"},
		// A CA message that quotes a token: the token is replaced.
		{"400-quoting-a-token", 400, `{"status":400,"message":"bad token eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"}`, RenewalIssueFailed, "bad token [token]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			status, body = tc.status, tc.body
			mu.Unlock()
			fe := stepErr(t, e, s, nil, tc.want)
			if !strings.Contains(fe.Detail(), tc.text) {
				t.Errorf("want %q in:\n%s", tc.text, fe.Detail())
			}
			if strings.Contains(fe.Detail(), "c2lnbmF0dXJlLWJ5dGVz") {
				t.Errorf("a token reached the error:\n%s", fe.Detail())
			}
		})
	}
}
