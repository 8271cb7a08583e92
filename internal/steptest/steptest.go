// Package steptest runs a REAL step-ca server (smallstep/certificates
// v0.30.2, the binary .ci/setup installs) for tests: a fresh root and
// intermediate, one JWK provisioner whose private key is stored encrypted
// the way `step` writes it, no database ("db": null: step-ca then keeps used
// token IDs in memory and renewal needs nothing else), on 127.0.0.1 with a
// free port.
//
// Lifetimes are short for tests: the provisioner's claims come from Options,
// and certificates are backdated by one second only by default (step-ca's
// default is one minute, which would make a 30-second certificate 90
// seconds long).
package steptest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.step.sm/crypto/jose"
)

// Version is the step-ca release the harness expects (.ci/setup installs it).
const Version = "0.30.2"

// InstallCommand installs the binary the harness runs.
const InstallCommand = `CGO_ENABLED=0 go install -tags "nopgx nomysql nobbolt nobadger" -ldflags "-X main.Version=0.30.2" github.com/smallstep/certificates/cmd/step-ca@v0.30.2`

// Password encrypts the provisioner key. It is fixed so that
// internal/secretscan knows it: it must never reach a log or an error.
const Password = "r3-step-Provisioner-pw-5"

// ProvisionerName is the JWK provisioner's name (a token's iss).
const ProvisionerName = "pgtrust-test"

// Options configure the CA. Zero durations take 5s / 1m / 1h.
type Options struct {
	MinDuration, DefaultDuration, MaxDuration time.Duration // TLS certificate durations of the provisioner
	AllowRenewalAfterExpiry                   bool
	// Backdate is how far before "now" step-ca starts a certificate's
	// validity; default 1s. step-ca renews an expired certificate only if
	// its chain verifies at NotAfter − 1 minute, so tests of renewal after
	// expiry with short certificates use step-ca's own default, 1 minute.
	Backdate time.Duration
}

// CA is a running (or stopped) step-ca.
type CA struct {
	URL, RootFile, Provisioner, ProvisionerKeyFile, PasswordFile string
	Root                                                         *x509.Certificate

	// PlainKeyFile holds the provisioner's private JWK unencrypted (JSON).
	PlainKeyFile string
	// Password is the provisioner key's password (the Password constant).
	Password string
	// Intermediate is the CA that signs leaves.
	Intermediate *x509.Certificate
	// Dir holds the CA's files (removed by the test's TempDir cleanup).
	Dir  string
	Addr string // 127.0.0.1:port

	key    *jose.JSONWebKey // the provisioner's private key
	bin    string
	config string

	mu     sync.Mutex
	cmd    *exec.Cmd
	out    *lockedBuffer
	exited chan struct{}
}

// Binary finds step-ca: $PGTRUST_STEP_CA, then PATH, then $(go env GOPATH)/bin.
func Binary() (string, error) {
	if p := os.Getenv("PGTRUST_STEP_CA"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("PGTRUST_STEP_CA=%s: %w", p, err)
		}
		return p, nil
	}
	if p, err := exec.LookPath("step-ca"); err == nil {
		return p, nil
	}
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
			gopath = string(bytes.TrimSpace(out))
		}
	}
	if gopath != "" {
		p := filepath.Join(filepath.SplitList(gopath)[0], "bin", "step-ca")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("step-ca not found ($PGTRUST_STEP_CA, PATH, $(go env GOPATH)/bin)")
}

// Start writes a CA and runs step-ca; it is stopped at t.Cleanup. A missing
// binary is a test failure naming the install command.
func Start(t testing.TB, o Options) *CA {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatalf("steptest: %v; install it with: %s (or run .ci/setup)", err, InstallCommand)
	}
	if o.MinDuration == 0 {
		o.MinDuration = 5 * time.Second
	}
	if o.DefaultDuration == 0 {
		o.DefaultDuration = time.Minute
	}
	if o.MaxDuration == 0 {
		o.MaxDuration = time.Hour
	}
	if o.Backdate == 0 {
		o.Backdate = time.Second
	}
	dir := t.TempDir()
	c := &CA{Dir: dir, bin: bin, Provisioner: ProvisionerName}

	// PKI: a root and the intermediate step-ca signs with.
	rootKey := newKey(t)
	now := time.Now()
	rootTmpl := &x509.Certificate{
		SerialNumber: serial(t), Subject: pkix.Name{CommonName: "steptest Root CA", Organization: []string{"pgtrust tests"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, MaxPathLen: 1,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	c.Root, _ = x509.ParseCertificate(rootDER)
	intKey := newKey(t)
	intTmpl := &x509.Certificate{
		SerialNumber: serial(t), Subject: pkix.Name{CommonName: "steptest Intermediate CA", Organization: []string{"pgtrust tests"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, MaxPathLen: 0, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	intDER, err := x509.CreateCertificate(rand.Reader, intTmpl, c.Root, intKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	c.Intermediate, _ = x509.ParseCertificate(intDER)
	c.RootFile = writeFile(t, dir, "root_ca.crt", pemBlock("CERTIFICATE", rootDER), 0o644)
	intFile := writeFile(t, dir, "intermediate_ca.crt", pemBlock("CERTIFICATE", intDER), 0o644)
	intKeyDER, err := x509.MarshalPKCS8PrivateKey(intKey)
	if err != nil {
		t.Fatal(err)
	}
	intKeyFile := writeFile(t, dir, "intermediate_ca_key", pemBlock("PRIVATE KEY", intKeyDER), 0o600)

	// The JWK provisioner: its public key in ca.json, its private key
	// encrypted with the password (ca.json's encryptedKey, and the file a
	// client reads), as `step ca provisioner add --create` does.
	c.Password = Password
	jwk, err := jose.GenerateJWK("EC", "P-256", "ES256", "sig", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	c.key = jwk
	jwe, err := jose.EncryptJWK(jwk, []byte(c.Password))
	if err != nil {
		t.Fatal(err)
	}
	encrypted, err := jwe.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	c.ProvisionerKeyFile = writeFile(t, dir, "provisioner.jwe", []byte(encrypted+"\n"), 0o600)
	c.PasswordFile = writeFile(t, dir, "provisioner.password", []byte(c.Password+"\n"), 0o600)
	plain, err := json.Marshal(jwk)
	if err != nil {
		t.Fatal(err)
	}
	c.PlainKeyFile = writeFile(t, dir, "provisioner.json", plain, 0o600)
	pub := jwk.Public()

	c.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	c.URL = "https://" + c.Addr
	claims := map[string]any{
		"minTLSCertDuration":      o.MinDuration.String(),
		"maxTLSCertDuration":      o.MaxDuration.String(),
		"defaultTLSCertDuration":  o.DefaultDuration.String(),
		"allowRenewalAfterExpiry": o.AllowRenewalAfterExpiry,
	}
	cfg := map[string]any{
		"root":     c.RootFile,
		"crt":      intFile,
		"key":      intKeyFile,
		"address":  c.Addr,
		"dnsNames": []string{"127.0.0.1", "localhost"},
		"logger":   map[string]any{"format": "text"},
		"db":       nil,
		"authority": map[string]any{
			"backdate": o.Backdate.String(),
			"claims":   claims,
			"provisioners": []any{map[string]any{
				"type": "JWK", "name": ProvisionerName, "key": pub, "encryptedKey": encrypted, "claims": claims,
			}},
		},
		"tls": map[string]any{"minVersion": 1.2, "maxVersion": 1.3, "renegotiation": false},
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	c.config = writeFile(t, dir, "ca.json", b, 0o600)

	t.Cleanup(func() {
		c.stop()
		if t.Failed() {
			t.Logf("steptest: step-ca output:\n%s", c.Output())
		}
	})
	if err := c.start(); err != nil {
		t.Fatalf("steptest: %v\nstep-ca output:\n%s", err, c.Output())
	}
	return c
}

// ottField is the one-time token step-ca puts in its request log lines.
var ottField = regexp.MustCompile(`ott=\S+`)

// Output is everything step-ca wrote (all runs), with the tokens it logs
// replaced: a token is a credential until it expires.
func (c *CA) Output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.out == nil {
		return ""
	}
	return ottField.ReplaceAllString(c.out.String(), "ott=[redacted]")
}

// Stop stops the server; requests then fail to connect.
func (c *CA) Stop(t testing.TB) {
	t.Helper()
	c.stop()
}

// Restart starts the server again on the same address.
func (c *CA) Restart(t testing.TB) {
	t.Helper()
	c.stop()
	if err := c.start(); err != nil {
		t.Fatalf("steptest: restart: %v\nstep-ca output:\n%s", err, c.Output())
	}
}

func (c *CA) start() error {
	c.mu.Lock()
	if c.out == nil {
		c.out = &lockedBuffer{}
	}
	cmd := exec.Command(c.bin, c.config)
	// STEPPATH and HOME keep step-ca from reading or creating ~/.step.
	cmd.Env = append(os.Environ(), "STEPPATH="+c.Dir, "HOME="+c.Dir)
	cmd.Stdout, cmd.Stderr = c.out, c.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		c.mu.Unlock()
		return fmt.Errorf("start %s: %w", c.bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	c.cmd, c.exited = cmd, exited
	c.mu.Unlock()

	pool := x509.NewCertPool()
	pool.AddCert(c.Root)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, DisableKeepAlives: true}}
	deadline := time.Now().Add(30 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("step-ca exited during start: %v", cmd.ProcessState)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.URL+"/health", nil)
		resp, err := hc.Do(req)
		if err == nil {
			body := make([]byte, 256)
			n, _ := resp.Body.Read(body)
			resp.Body.Close()
			cancel()
			if resp.StatusCode == http.StatusOK && bytes.Contains(body[:n], []byte(`"ok"`)) {
				return nil
			}
			last = fmt.Errorf("GET /health: %s %s", resp.Status, body[:n])
		} else {
			cancel()
			last = err
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.stop()
	return fmt.Errorf("step-ca not healthy within 30s: %v", last)
}

func (c *CA) stop() {
	c.mu.Lock()
	cmd, exited := c.cmd, c.exited
	c.cmd = nil
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
}

// TokenOptions shape a provisioner token; zero values give what `step ca
// token` gives (a 5-minute token for the sign endpoint, valid from now).
type TokenOptions struct {
	Subject   string
	SANs      []string // default: the subject
	NotBefore time.Time
	Lifetime  time.Duration
	Audience  string // default URL + "/1.0/sign"
	Issuer    string // default the provisioner's name
}

// Token makes a one-time token for subject, signed with the provisioner key.
func (c *CA) Token(t testing.TB, subject string, sans ...string) string {
	t.Helper()
	return c.TokenWith(t, TokenOptions{Subject: subject, SANs: sans})
}

// TokenWith makes a token with the given claims.
func (c *CA) TokenWith(t testing.TB, o TokenOptions) string {
	t.Helper()
	if len(o.SANs) == 0 {
		o.SANs = []string{o.Subject}
	}
	if o.NotBefore.IsZero() {
		o.NotBefore = time.Now()
	}
	if o.Lifetime == 0 {
		o.Lifetime = 5 * time.Minute
	}
	if o.Audience == "" {
		o.Audience = c.URL + "/1.0/sign"
	}
	if o.Issuer == "" {
		o.Issuer = c.Provisioner
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: c.key.Key},
		new(jose.SignerOptions).WithType("JWT").WithHeader("kid", c.key.KeyID))
	if err != nil {
		t.Fatal(err)
	}
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		t.Fatal(err)
	}
	claims := struct {
		jose.Claims
		SANs []string `json:"sans"`
	}{jose.Claims{
		Issuer: o.Issuer, Subject: o.Subject, Audience: jose.Audience{o.Audience},
		NotBefore: jose.NewNumericDate(o.NotBefore), IssuedAt: jose.NewNumericDate(o.NotBefore),
		Expiry: jose.NewNumericDate(o.NotBefore.Add(o.Lifetime)), ID: fmt.Sprintf("%x", id),
	}, o.SANs}
	tok, err := jose.Signed(signer).Claims(claims).CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TokenFile writes a token to a file in the CA's directory and returns its path.
func (c *CA) TokenFile(t testing.TB, name, token string) string {
	t.Helper()
	return writeFile(t, c.Dir, name, []byte(token+"\n"), 0o600)
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func serial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	return n.Add(n, big.NewInt(1))
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func writeFile(t testing.TB, dir, name string, data []byte, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// freePort asks the kernel for a free loopback port. Another process could
// take it before step-ca binds; start then fails visibly.
func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
