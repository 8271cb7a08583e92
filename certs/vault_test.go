package certs

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/secretscan"
	"github.com/pgtrust/pgtrust/internal/vaulttest"
)

// Secrets the Vault tests use; none may reach an error or a log line.
const (
	vtToken    = "hvs.R2-vault-Token-secret-1"
	vtRoleID   = "r2-role-id-0001"
	vtSecretID = "r2-Secret-ID-value-2"
	vtJWT      = "eyJhbGciOiJSUzI1NiJ9.r2-k8s-JWT-payload-3.sig"
	vtRole     = "epoch-client"
)

var vtSecrets = []string{vtToken, vtSecretID, vtJWT}

type vaultEnv struct {
	srv *vaulttest.Server
	log *bytes.Buffer
	dir string
}

func newVaultEnv(t *testing.T, o vaulttest.Options) *vaultEnv {
	t.Helper()
	if o.Roles == nil {
		o.Roles = []vaulttest.Role{{Name: vtRole, MaxTTL: time.Hour, AllowIPSANs: true}}
	}
	srv, err := vaulttest.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	e := &vaultEnv{srv: srv, log: &bytes.Buffer{}, dir: t.TempDir()}
	t.Cleanup(func() {
		secretscan.Record(t, "vault issuer log", e.log.String())
		assertNoVaultSecrets(t, "log", e.log.String())
	})
	return e
}

func (e *vaultEnv) options(mut func(*VaultOptions)) VaultOptions {
	o := VaultOptions{Address: e.srv.URL, Mount: "pki", Role: vtRole, CommonName: "alice",
		Token:          vtToken,
		RequestTimeout: 5 * time.Second,
		Logger:         slog.New(slog.NewTextHandler(e.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Getenv:         func(string) string { return "" }}
	if mut != nil {
		mut(&o)
	}
	return o
}

func (e *vaultEnv) issuer(t *testing.T, mut func(*VaultOptions)) *VaultIssuer {
	t.Helper()
	v, err := NewVaultIssuer(e.options(mut))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func (e *vaultEnv) file(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(e.dir, name)
	if err := os.WriteFile(p, []byte(content+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func assertNoVaultSecrets(t *testing.T, what, text string) {
	t.Helper()
	shown := text // the failure message itself must not carry the secret
	for _, s := range vtSecrets {
		shown = strings.ReplaceAll(shown, s, "<SECRET>")
	}
	for _, s := range vtSecrets {
		if strings.Contains(text, s) {
			t.Errorf("%s holds a secret (%.6s…): %s", what, s, shown)
		}
	}
	if strings.Contains(text, "PRIVATE KEY") {
		t.Errorf("%s holds a PEM private key (%d bytes of text)", what, len(text))
	}
}

// errorTexts renders an error every way it can reach a user.
func errorTexts(err error) string {
	j, _ := json.Marshal(failure.ReportOf(err))
	s := fmt.Sprintf("%v\n%+v\n%#v\n%s", err, err, err, j)
	if fe, ok := failure.As(err); ok {
		s += "\n" + fe.Detail()
	}
	return s
}

// issueErr issues, expects a failure of class want, and checks that it
// carries no secret.
func issueErr(t *testing.T, v *VaultIssuer, want failure.Class) *failure.Error {
	t.Helper()
	iss, err := v.Issue(context.Background(), nil)
	if err == nil {
		t.Fatalf("issue succeeded (%s), want %s", iss.Certificate.Leaf.Subject, want)
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
	secretscan.Record(t, "vault issuer error", texts)
	assertNoVaultSecrets(t, "error", texts)
	return fe
}

func mustIssue(t *testing.T, v *VaultIssuer) *Issued {
	t.Helper()
	iss, err := v.Issue(context.Background(), nil)
	if err != nil {
		t.Fatalf("issue: %s", errorTexts(err))
	}
	return iss
}

func TestVaultFirstIssue(t *testing.T) {
	e := newVaultEnv(t, vaulttest.Options{})
	e.srv.AddToken(vtToken, time.Hour, false)
	v := e.issuer(t, func(o *VaultOptions) {
		o.AltNames = []string{"alice.db.internal"}
		o.IPSANs = []net.IP{net.IPv4(127, 0, 0, 1)}
		o.TTL = 10 * time.Minute
	})
	if v.Name() != "vault" {
		t.Fatalf("name %q", v.Name())
	}
	start := time.Now()
	iss := mustIssue(t, v)
	leaf := iss.Certificate.Leaf
	if leaf == nil || leaf.Subject.CommonName != "alice" {
		t.Fatalf("leaf %v, want CN alice", leaf)
	}
	if !contains(leaf.DNSNames, "alice.db.internal") || len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) {
		t.Fatalf("SANs %v %v", leaf.DNSNames, leaf.IPAddresses)
	}
	// TTL honoured: the requested 10 minutes, not the role's hour.
	if leaf.NotAfter.Before(start.Add(9*time.Minute)) || leaf.NotAfter.After(time.Now().Add(11*time.Minute)) {
		t.Fatalf("not after %s, want about 10 minutes from %s", leaf.NotAfter, start)
	}
	// Chain: leaf + issuing intermediate presented; it verifies to the root.
	if len(iss.Certificate.Certificate) != 2 {
		t.Fatalf("presented chain has %d certificates, want leaf + intermediate", len(iss.Certificate.Certificate))
	}
	inter := x509.NewCertPool()
	for _, der := range iss.Certificate.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: e.srv.RootPool(), Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("chain does not verify: %v", err)
	}
	if len(iss.CAs) != 2 || !iss.CAs[0].Equal(e.srv.Issuing) || !iss.CAs[1].Equal(e.srv.Root) {
		t.Fatalf("CAs %d, want issuing CA then root", len(iss.CAs))
	}
	// The key matches: a signature by it verifies with the leaf's public key.
	sum := sha256.Sum256([]byte("pgtrust"))
	sig, err := iss.Certificate.PrivateKey.(crypto.Signer).Sign(rand.Reader, sum[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if err := leaf.CheckSignature(x509.ECDSAWithSHA256, []byte("pgtrust"), sig); err != nil {
		t.Fatalf("key does not match the certificate: %v", err)
	}
	// The request Vault saw: the documented body, with the token header.
	var issueReq *vaulttest.Request
	for _, r := range e.srv.Requests() {
		if r.Path == "pki/issue/"+vtRole {
			issueReq = &r
		}
	}
	if issueReq == nil || !issueReq.HasToken {
		t.Fatalf("no authenticated issue request: %+v", e.srv.Requests())
	}
	want := map[string]string{"common_name": "alice", "alt_names": "alice.db.internal", "ip_sans": "127.0.0.1", "ttl": "10m0s"}
	for k, w := range want {
		if got, _ := issueReq.Body[k].(string); got != w {
			t.Errorf("request %s = %q, want %q", k, got, w)
		}
	}
	if !strings.Contains(e.log.String(), "vault issued certificate") {
		t.Errorf("no issuance log line: %s", e.log)
	}
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

func TestVaultTokenRenewedWhileInUse(t *testing.T) {
	e := newVaultEnv(t, vaulttest.Options{})
	e.srv.AddToken(vtToken, time.Hour, true)
	v := e.issuer(t, nil)
	mustIssue(t, v)
	if n := e.srv.CountPath("auth/token/renew-self"); n != 1 {
		t.Fatalf("renew-self called %d times, want 1", n)
	}
	// 50 minutes later, then another 50: past the first hour, the token is
	// alive only because it was renewed.
	for i := 0; i < 2; i++ {
		e.srv.Advance(50 * time.Minute)
		if err := v.RenewToken(context.Background()); err != nil {
			t.Fatalf("renew: %s", errorTexts(err))
		}
	}
	mustIssue(t, v)
	info, _ := e.srv.TokenInfo(vtToken)
	if info.Renewals != 4 || !info.Expires.After(e.srv.Now().Add(50*time.Minute)) {
		t.Fatalf("renewals %d, expires %s (server now %s)", info.Renewals, info.Expires, e.srv.Now())
	}
	if n := e.srv.CountPath("auth/token/lookup-self"); n != 4 {
		t.Fatalf("lookup-self called %d times, want 4", n)
	}
	if d := v.TokenRefreshIn(); d <= 0 || d > time.Hour {
		t.Fatalf("token refresh in %s", d)
	}
	// A renewal that fails while the token is still valid does not stop
	// the issuance; it is logged with its class. RenewToken reports it.
	e.srv.FailOn("auth/token/renew-self", 1, 500, "internal error")
	mustIssue(t, v)
	if !strings.Contains(e.log.String(), "vault token renewal failed; the token is still valid") {
		t.Fatalf("renewal failure not logged: %s", e.log)
	}
	e.srv.FailOn("auth/token/renew-self", 1, 500, "internal error")
	if err := v.RenewToken(context.Background()); failure.ClassOf(err) != RenewalUnreachable {
		t.Fatalf("RenewToken: %v", err)
	}
}

func TestVaultExpiredToken(t *testing.T) {
	e := newVaultEnv(t, vaulttest.Options{})
	e.srv.AddToken(vtToken, time.Hour, false)
	v := e.issuer(t, nil)
	mustIssue(t, v)
	e.srv.Advance(61 * time.Minute)
	fe := issueErr(t, v, RenewalAuth)
	if !strings.Contains(fe.Evidence, "permission denied") || !strings.Contains(fe.Evidence, "lookup-self") {
		t.Fatalf("evidence: %s", fe.Detail())
	}
	if n := e.srv.CountPath("auth/token/renew-self"); n != 0 {
		t.Fatalf("a non-renewable token was renewed %d times", n)
	}
	if n := e.srv.CountPath("pki/issue/" + vtRole); n != 1 {
		t.Fatalf("issue attempted %d times with an expired token", n)
	}
	// A token that expires between lookup and issue (ExpireToken) is refused
	// by the issue itself: still renewal_auth.
	e.srv.AddToken(vtToken, time.Hour, false)
	e.srv.FailOn("pki/issue/", 1, 403, "permission denied")
	issueErr(t, v, RenewalAuth)
	// No token at all is an auth failure too, with its own fix.
	v2 := e.issuer(t, func(o *VaultOptions) { o.Token = "" })
	fe = issueErr(t, v2, RenewalAuth)
	if !strings.Contains(fe.Fix, "VAULT_TOKEN") {
		t.Fatalf("fix: %s", fe.Fix)
	}
}

func TestVaultTokenFromFileAndEnvironment(t *testing.T) {
	e := newVaultEnv(t, vaulttest.Options{})
	e.srv.AddToken(vtToken, 0, false)
	v := e.issuer(t, func(o *VaultOptions) { o.Token = ""; o.TokenFile = e.file(t, "token", vtToken) })
	mustIssue(t, v)
	v = e.issuer(t, func(o *VaultOptions) {
		o.Token = ""
		o.Getenv = func(k string) string {
			if k == "VAULT_TOKEN" {
				return vtToken
			}
			return ""
		}
	})
	mustIssue(t, v)
	// A rotated token file is read again: the old token is gone, the new works.
	const rotated = "hvs.R2-vault-Token-secret-1-rotated"
	e.srv.ExpireToken(vtToken)
	e.srv.AddToken(rotated, 0, false)
	p := e.file(t, "token2", vtToken)
	v = e.issuer(t, func(o *VaultOptions) { o.Token = ""; o.TokenFile = p })
	issueErr(t, v, RenewalAuth)
	e.file(t, "token2", rotated)
	mustIssue(t, v)
}

func TestVault403(t *testing.T) {
	e := newVaultEnv(t, vaulttest.Options{})
	e.srv.AddToken(vtToken, time.Hour, false)
	v := e.issuer(t, nil)
	e.srv.FailOn("pki/issue/", 1, 403, "1 error occurred:\n\t* permission denied\n\n")
	fe := issueErr(t, v, RenewalAuth)
	if !strings.Contains(fe.Evidence, "permission denied") || !strings.Contains(fe.Fix, "pki/issue/"+vtRole) {
		t.Fatalf("403: %s", fe.Detail())
	}
	mustIssue(t, v) // the next attempt succeeds
}

func TestVault500(t *testing.T) {
	e := newVaultEnv(t, vaulttest.Options{})
	e.srv.AddToken(vtToken, time.Hour, false)
	v := e.issuer(t, nil)
	e.srv.FailOn("pki/issue/", 1, 500, "internal error")
	fe := issueErr(t, v, RenewalUnreachable)
	if !strings.Contains(fe.Evidence, "internal error") {
		t.Fatalf("500: %s", fe.Detail())
	}
	// Exactly one attempt: the client's own retries are off (the engine
	// owns backoff).
	if n := e.srv.CountPath("pki/issue/" + vtRole); n != 1 {
		t.Fatalf("%d issue requests for one Issue, want 1", n)
	}
	mustIssue(t, v)
}

func TestVaultIssueRejected(t *testing.T) {
	e := newVaultEnv(t, vaulttest.Options{Roles: []vaulttest.Role{{Name: vtRole, AllowedNames: []string{"alice"}}}})
	e.srv.AddToken(vtToken, time.Hour, false)
	v := e.issuer(t, func(o *VaultOptions) { o.CommonName = "mallory" })
	fe := issueErr(t, v, RenewalIssueFailed)
	if !strings.Contains(fe.Evidence, "common name mallory not allowed by this role") {
		t.Fatalf("400: %s", fe.Detail())
	}
	v = e.issuer(t, func(o *VaultOptions) { o.Role = "no-such-role" })
	fe = issueErr(t, v, RenewalIssueFailed)
	if !strings.Contains(fe.Evidence, "unknown role: no-such-role") {
		t.Fatalf("400: %s", fe.Detail())
	}
	// A lifetime beyond the CA's own: Vault refuses (leaf_not_after_behavior=err).
	e2 := newVaultEnv(t, vaulttest.Options{Roles: []vaulttest.Role{{Name: vtRole, MaxTTL: 60 * 24 * time.Hour}}})
	e2.srv.AddToken(vtToken, time.Hour, false)
	v = e2.issuer(t, func(o *VaultOptions) { o.TTL = 30 * 24 * time.Hour })
	fe = issueErr(t, v, RenewalIssueFailed)
	if !strings.Contains(fe.Evidence, "beyond the expiration of the CA certificate") {
		t.Fatalf("400: %s", fe.Detail())
	}
}

func TestVaultNetworkTimeout(t *testing.T) {
	e := newVaultEnv(t, vaulttest.Options{})
	e.srv.AddToken(vtToken, time.Hour, false)
	v := e.issuer(t, func(o *VaultOptions) { o.RequestTimeout = 200 * time.Millisecond })
	e.srv.SetDelay(3 * time.Second)
	fe := issueErr(t, v, RenewalUnreachable)
	if !strings.Contains(fe.Message, "no answer within 200ms") {
		t.Fatalf("timeout: %s", fe.Detail())
	}
	e.srv.SetDelay(0)
	mustIssue(t, v)

	// Nothing listening: unreachable too.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	v = e.issuer(t, func(o *VaultOptions) { o.Address = "http://" + addr })
	issueErr(t, v, RenewalUnreachable)
}

func TestVaultNamespace(t *testing.T) {
	e := newVaultEnv(t, vaulttest.Options{Namespace: "team-a/db"})
	e.srv.AddToken(vtToken, time.Hour, true)
	v := e.issuer(t, func(o *VaultOptions) { o.Namespace = "team-a/db" })
	mustIssue(t, v)
	reqs := e.srv.Requests()
	if len(reqs) != 3 {
		t.Fatalf("%d requests, want lookup, renew, issue", len(reqs))
	}
	for _, r := range reqs {
		if r.Namespace != "team-a/db" {
			t.Fatalf("request %s without the namespace header: %q", r.Path, r.Namespace)
		}
	}
	// Without the namespace the token does not exist: renewal_auth.
	v = e.issuer(t, nil)
	issueErr(t, v, RenewalAuth)
	// VAULT_NAMESPACE in the environment does not leak into the client.
	t.Setenv("VAULT_NAMESPACE", "team-a/db")
	v = e.issuer(t, nil)
	issueErr(t, v, RenewalAuth)
}

func TestVaultAppRole(t *testing.T) {
	e := newVaultEnv(t, vaulttest.Options{AppRoles: map[string]string{vtRoleID: vtSecretID},
		LoginTTL: time.Hour, LoginRenew: true, LoginWarnings: []string{"approle login warning"}})
	roleFile, secretFile := e.file(t, "role_id", vtRoleID), e.file(t, "secret_id", vtSecretID)
	v := e.issuer(t, func(o *VaultOptions) {
		o.Token = ""
		o.AppRole = &VaultAppRole{RoleIDFile: roleFile, SecretIDFile: secretFile}
	})
	mustIssue(t, v)
	mustIssue(t, v)
	if n := e.srv.CountPath("auth/approle/login"); n != 1 {
		t.Fatalf("%d logins for two issues, want 1", n)
	}
	// Past half the token's life it is renewed, past 90% a new login.
	e.srv.Advance(35 * time.Minute)
	v.o.Now = func() time.Time { return time.Now().Add(35 * time.Minute) }
	mustIssue(t, v)
	if n := e.srv.CountPath("auth/token/renew-self"); n != 1 {
		t.Fatalf("renew-self %d, want 1", n)
	}
	v.o.Now = func() time.Time { return time.Now().Add(35*time.Minute + 58*time.Minute) }
	e.srv.Advance(58 * time.Minute)
	if err := v.RenewToken(context.Background()); err != nil {
		t.Fatal(errorTexts(err))
	}
	if n := e.srv.CountPath("auth/approle/login"); n != 2 {
		t.Fatalf("%d logins after the token neared expiry, want 2", n)
	}
	if !strings.Contains(e.log.String(), "approle login warning") {
		t.Errorf("login warning not logged: %s", e.log)
	}

	// A wrong secret_id, echoed back by Vault in its error, is refused as
	// renewal_auth and never shown.
	bad := e.file(t, "secret_id_bad", vtSecretID+"-wrong")
	v = e.issuer(t, func(o *VaultOptions) {
		o.Token = ""
		o.AppRole = &VaultAppRole{RoleIDFile: roleFile, SecretIDFile: bad}
	})
	fe := issueErr(t, v, RenewalAuth)
	if !strings.Contains(fe.Evidence, "invalid role or secret ID") {
		t.Fatalf("approle: %s", fe.Detail())
	}
	e.srv.FailOn("auth/approle/login", 1, 400, "invalid secret id "+vtSecretID)
	v = e.issuer(t, func(o *VaultOptions) {
		o.Token = ""
		o.AppRole = &VaultAppRole{RoleIDFile: roleFile, SecretIDFile: secretFile}
	})
	fe = issueErr(t, v, RenewalAuth)
	if !strings.Contains(fe.Evidence, "invalid secret id [redacted]") {
		t.Fatalf("echoed secret not scrubbed as expected: %s", fe.Detail())
	}
}

func TestVaultKubernetes(t *testing.T) {
	e := newVaultEnv(t, vaulttest.Options{Kubernetes: map[string]string{"pgtrust": vtJWT}})
	jwt := e.file(t, "sa-token", vtJWT)
	v := e.issuer(t, func(o *VaultOptions) {
		o.Token = ""
		o.Kubernetes = &VaultKubernetes{Role: "pgtrust", JWTFile: jwt}
	})
	mustIssue(t, v)
	var login *vaulttest.Request
	for _, r := range e.srv.Requests() {
		if r.Path == "auth/kubernetes/login" {
			login = &r
		}
	}
	if login == nil || login.Body["role"] != "pgtrust" || login.Body["jwt"] != vtJWT || login.HasToken {
		t.Fatalf("kubernetes login request %+v", login)
	}
	// A JWT the role does not accept: 403, renewal_auth.
	other := e.file(t, "sa-other", vtJWT+"x")
	v = e.issuer(t, func(o *VaultOptions) {
		o.Token = ""
		o.Kubernetes = &VaultKubernetes{Role: "pgtrust", JWTFile: other}
	})
	fe := issueErr(t, v, RenewalAuth)
	if !strings.Contains(fe.Fix, "Kubernetes auth role pgtrust") {
		t.Fatalf("kubernetes: %s", fe.Detail())
	}
}

func TestVaultWarningsLogged(t *testing.T) {
	e := newVaultEnv(t, vaulttest.Options{Roles: []vaulttest.Role{{Name: vtRole, MaxTTL: 20 * time.Minute,
		ExtraWarnings: []string{"role uses a deprecated issuer"}}}})
	e.srv.AddToken(vtToken, time.Hour, false)
	v := e.issuer(t, func(o *VaultOptions) { o.TTL = time.Hour })
	start := time.Now()
	iss := mustIssue(t, v)
	if iss.Certificate.Leaf.NotAfter.After(start.Add(21 * time.Minute)) {
		t.Fatalf("TTL not capped at the role's max: %s", iss.Certificate.Leaf.NotAfter)
	}
	for _, w := range []string{"maxTTL is being used", "role uses a deprecated issuer"} {
		if !strings.Contains(e.log.String(), w) {
			t.Errorf("warning %q not logged: %s", w, e.log)
		}
	}
}

func TestVaultInvalidMaterial(t *testing.T) {
	e := newVaultEnv(t, vaulttest.Options{Roles: []vaulttest.Role{{Name: vtRole, BreakKeyPairing: true}}})
	e.srv.AddToken(vtToken, time.Hour, false)
	fe := issueErr(t, e.issuer(t, nil), RenewalInvalid)
	if !strings.Contains(fe.Message, "private key does not match public key") {
		t.Fatalf("mismatch: %s", fe.Detail())
	}
	// A certificate for another name than requested is refused as well.
	e2 := newVaultEnv(t, vaulttest.Options{})
	e2.srv.AddToken(vtToken, time.Hour, false)
	v := e2.issuer(t, nil)
	iss := mustIssue(t, v)
	v.o.CommonName = "bob"
	if _, err := v.parseIssued(map[string]any{"certificate": pemOf(iss.Certificate.Certificate[0]), "private_key": "x"}, "pki/issue/r"); failure.ClassOf(err) != RenewalInvalid {
		t.Fatalf("garbage key: %v", err)
	}
}

func pemOf(der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func TestVaultOptionsMaskTheToken(t *testing.T) {
	o := VaultOptions{Address: "https://vault:8200", Mount: "pki", Role: vtRole, CommonName: "alice", Token: vtToken,
		AppRole: &VaultAppRole{RoleIDFile: "/etc/r", SecretIDFile: "/etc/s"}}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("vault", "opts", o, "ptr", &o)
	for _, out := range []string{fmt.Sprint(o), fmt.Sprintf("%v", &o), fmt.Sprintf("%+v", o), fmt.Sprintf("%#v", o), fmt.Sprintf("%#v", &o), logged.String()} {
		if strings.Contains(out, vtToken) {
			t.Fatalf("the token leaked: %s", out)
		}
		if !strings.Contains(out, "[redacted]") || !strings.Contains(out, "pki") {
			t.Fatalf("options not rendered: %s", out)
		}
	}
	// The issuer itself, after it has used the token.
	e := newVaultEnv(t, vaulttest.Options{})
	e.srv.AddToken(vtToken, time.Hour, true)
	v := e.issuer(t, nil)
	mustIssue(t, v)
	logged.Reset()
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("vault", "issuer", v)
	for _, out := range []string{fmt.Sprint(v), fmt.Sprintf("%+v", v), fmt.Sprintf("%#v", v), logged.String()} {
		assertNoVaultSecrets(t, "issuer rendering", out)
	}
	if _, err := NewVaultIssuer(VaultOptions{Address: "http://127.0.0.1:1", Token: vtToken}); failure.ClassOf(err) != failure.ConfigInvalid {
		t.Fatalf("incomplete options: %v", err)
	} else {
		assertNoVaultSecrets(t, "config error", errorTexts(err))
	}
}

// Vault's HTTPS certificate is verified against CACertFile (or the system
// roots); VAULT_SKIP_VERIFY in the environment does not switch that off.
func TestVaultTLSVerifiedDespiteEnvironment(t *testing.T) {
	e := newVaultEnv(t, vaulttest.Options{TLS: true})
	e.srv.AddToken(vtToken, time.Hour, false)
	t.Setenv("VAULT_SKIP_VERIFY", "true")
	t.Setenv("VAULT_MAX_RETRIES", "5")
	v := e.issuer(t, nil)
	fe := issueErr(t, v, RenewalUnreachable)
	if !strings.Contains(errorTexts(fe), "certificate") {
		t.Fatalf("unverified Vault: %s", fe.Detail())
	}
	ca := e.file(t, "vault-ca.pem", pemOf(e.srv.Certificate().Raw))
	v = e.issuer(t, func(o *VaultOptions) { o.CACertFile = ca })
	mustIssue(t, v)
	if _, err := NewVaultIssuer(e.options(func(o *VaultOptions) { o.CACertFile = e.file(t, "empty.pem", "") })); failure.ClassOf(err) != failure.ConfigInvalid {
		t.Fatalf("empty CA file: %v", err)
	}
}

// RunTokenRenewal renews at two thirds of the token's remaining life and
// retries sooner after a failure; the waits are asserted as computed, the
// clock is driven by the test.
func TestVaultRunTokenRenewal(t *testing.T) {
	e := newVaultEnv(t, vaulttest.Options{})
	e.srv.AddToken(vtToken, time.Hour, true)
	waits := make(chan time.Duration)
	fire := make(chan time.Time)
	v := e.issuer(t, func(o *VaultOptions) {
		o.After = func(d time.Duration) <-chan time.Time { waits <- d; return fire }
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { v.RunTokenRenewal(ctx); close(done) }()

	d := <-waits
	if d < 39*time.Minute || d > 40*time.Minute {
		t.Fatalf("first wait %s, want two thirds of 1h", d)
	}
	e.srv.Advance(d)
	fire <- time.Now()
	d = <-waits
	if info, _ := e.srv.TokenInfo(vtToken); info.Renewals != 2 {
		t.Fatalf("renewals %d, want 2", info.Renewals)
	}
	// The token's life was extended to a full hour again.
	if d < 39*time.Minute || d > 40*time.Minute {
		t.Fatalf("wait after renewal %s", d)
	}
	// Renewal fails: the retry comes sooner than the regular wait.
	e.srv.FailOn("auth/token/renew-self", 1, 500, "internal error")
	fire <- time.Now()
	retry := <-waits
	if retry >= d || retry < time.Second {
		t.Fatalf("retry after a failure in %s, regular wait %s", retry, d)
	}
	if !strings.Contains(e.log.String(), "renewal_unreachable") {
		t.Fatalf("failure not logged with its class: %s", e.log)
	}
	fire <- time.Now()
	<-waits
	if info, _ := e.srv.TokenInfo(vtToken); info.Renewals != 3 {
		t.Fatalf("renewals %d after the retry, want 3", info.Renewals)
	}
	cancel()
	<-done

	// A token without expiry needs no loop.
	e.srv.AddToken(vtToken+"-root", 0, false)
	v = e.issuer(t, func(o *VaultOptions) {
		o.Token = vtToken + "-root"
		o.After = func(time.Duration) <-chan time.Time { t.Error("waited for a token without expiry"); return nil }
	})
	v.RunTokenRenewal(context.Background())
}

func TestParseVaultPKIRole(t *testing.T) {
	for in, want := range map[string][2]string{
		"pki/issue/epoch-client":     {"pki", "epoch-client"},
		"/v1/pki/int/issue/db":       {"pki/int", "db"},
		"pki_int/issue/epoch-client": {"pki_int", "epoch-client"},
	} {
		m, r, err := ParseVaultPKIRole(in)
		if err != nil || m != want[0] || r != want[1] {
			t.Errorf("%q: %q %q %v, want %v", in, m, r, err, want)
		}
	}
	for _, bad := range []string{"", "epoch-client", "pki/epoch-client", "pki/issue/", "issue/x", "pki/sign/epoch-client", "pki/issue/a/b"} {
		if _, _, err := ParseVaultPKIRole(bad); failure.ClassOf(err) != failure.ConfigInvalid {
			t.Errorf("%q accepted: %v", bad, err)
		}
	}
}

// A Vault address that answers with a redirect (a standby with request
// forwarding off, a misrouted load balancer, or a hostile server) is not
// followed: the target never sees the token nor the AppRole secret_id, and
// the failure names the status and the target host.
func TestVaultRedirectNotFollowed(t *testing.T) {
	var seen atomic.Int64
	var seenText atomic.Value
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		b, _ := io.ReadAll(r.Body)
		seenText.Store(r.Header.Get("X-Vault-Token") + " " + string(b))
		w.WriteHeader(http.StatusInternalServerError)
	}))
	defer evil.Close()
	evilHost := strings.TrimPrefix(evil.URL, "http://")
	e := newVaultEnv(t, vaulttest.Options{})
	roleFile, secretFile := e.file(t, "role_id", vtRoleID), e.file(t, "secret_id", vtSecretID)
	for _, status := range []int{301, 302, 303, 307, 308} {
		for _, auth := range []string{"token", "approle"} {
			t.Run(fmt.Sprintf("%d %s", status, auth), func(t *testing.T) {
				var asked atomic.Int64
				redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					asked.Add(1)
					http.Redirect(w, r, evil.URL+r.URL.Path, status)
				}))
				defer redirector.Close()
				v := e.issuer(t, func(o *VaultOptions) {
					o.Address = redirector.URL
					if auth == "approle" {
						o.Token = ""
						o.AppRole = &VaultAppRole{RoleIDFile: roleFile, SecretIDFile: secretFile}
					}
				})
				fe := issueErr(t, v, RenewalIssueFailed)
				if asked.Load() != 1 || seen.Load() != 0 {
					t.Fatalf("vault asked %d time(s), redirect target %d time(s) (saw %v)", asked.Load(), seen.Load(), seenText.Load() != nil)
				}
				if !strings.Contains(fe.Evidence, fmt.Sprintf("HTTP %d", status)) || !strings.Contains(fe.Evidence, evilHost) ||
					!strings.Contains(fe.Fix, "active node") || !strings.Contains(fe.Fix, "load balancer") {
					t.Fatalf("redirect failure: %s", fe.Detail())
				}
			})
		}
	}
}

// http:// is for a Vault on this host only: the token, secret_id and the
// issued private key would otherwise cross the network in clear text.
func TestVaultPlainHTTPOnlyOnLoopback(t *testing.T) {
	for _, addr := range []string{"http://vault.example.com:8200", "http://10.0.0.5:8200", "http://localhost.example.com",
		"ftp://vault.example.com", "vault.example.com:8200", "unix:///run/vault.sock", ""} {
		_, err := NewVaultIssuer(VaultOptions{Address: addr, Mount: "pki", Role: "r", CommonName: "alice", Token: vtToken})
		fe, ok := failure.As(err)
		if !ok || fe.Class != failure.ConfigInvalid || fe.Fix == "" {
			t.Fatalf("%q: want config_invalid, got %v", addr, err)
		}
		if strings.HasPrefix(addr, "http://") && (!strings.Contains(fe.Fix, "https://") || !strings.Contains(fe.Fix, "127.0.0.1")) {
			t.Fatalf("%q: fix %q", addr, fe.Fix)
		}
		assertNoVaultSecrets(t, "error", errorTexts(err))
	}
	for _, addr := range []string{"http://127.0.0.1:8200", "http://127.3.0.1:8200", "http://[::1]:8200", "http://localhost:8200",
		"http://LOCALHOST", "https://vault.example.com:8200"} {
		if _, err := NewVaultIssuer(VaultOptions{Address: addr, Mount: "pki", Role: "r", CommonName: "alice", Token: vtToken}); err != nil {
			t.Fatalf("%q refused: %v", addr, err)
		}
	}
}

// lookup-self reports ttl in whole seconds: a token in its last second
// says ttl 0 with an expire_time. That is a token to renew now, not one
// that never expires (RunTokenRenewal stopped on it before).
func TestVaultTokenInLastSecondRenewed(t *testing.T) {
	e := newVaultEnv(t, vaulttest.Options{})
	e.srv.AddToken(vtToken, 3*time.Second, true)
	e.srv.Advance(2500 * time.Millisecond)
	v := e.issuer(t, nil)
	if err := v.RenewToken(context.Background()); err != nil {
		t.Fatal(errorTexts(err))
	}
	if info, _ := e.srv.TokenInfo(vtToken); info.Renewals != 1 {
		t.Fatalf("renewals %d, want 1: a token with 0.5s left was taken for one without expiry", info.Renewals)
	}
	if d := v.TokenRefreshIn(); d <= 0 {
		t.Fatalf("refresh in %s after renewal, want the renewed lifetime's two thirds", d)
	}
}
