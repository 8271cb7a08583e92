package steptest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

func client(c *CA) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(c.Root)
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}}
}

func sign(t *testing.T, c *CA, cn, tok string) (int, []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: cn}, DNSNames: []string{cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(map[string]string{
		"csr": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), "ott": tok})
	resp, err := client(c).Post(c.URL+"/1.0/sign", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// The harness runs a real step-ca that signs with the provisioner token,
// refuses a reused token (one-time use without a database), and stops and
// restarts on the same address.
func TestStartSignStopRestart(t *testing.T) {
	c := Start(t, Options{DefaultDuration: 30 * time.Second})
	tok := c.Token(t, "alice")
	code, body := sign(t, c, "alice", tok)
	if code != http.StatusCreated {
		t.Fatalf("sign: %d %s", code, body)
	}
	var r struct {
		Crt string `json:"crt"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode([]byte(r.Crt))
	if blk == nil {
		t.Fatalf("no certificate in %s", body)
	}
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if leaf.Subject.CommonName != "alice" {
		t.Errorf("CN %q", leaf.Subject.CommonName)
	}
	if d := leaf.NotAfter.Sub(leaf.NotBefore); d != 31*time.Second {
		t.Errorf("lifetime %s, want 31s (30s default + 1s backdate)", d)
	}
	if err := leaf.CheckSignatureFrom(c.Intermediate); err != nil {
		t.Error(err)
	}
	if code, body := sign(t, c, "alice", tok); code != http.StatusUnauthorized {
		t.Errorf("reused token: %d %s, want 401", code, body)
	}
	c.Stop(t)
	if _, err := client(c).Get(c.URL + "/health"); err == nil {
		t.Fatal("health answered after Stop")
	}
	c.Restart(t)
	if code, body := sign(t, c, "bob", c.Token(t, "bob")); code != http.StatusCreated {
		t.Fatalf("sign after restart: %d %s", code, body)
	}
	if !strings.Contains(c.Output(), "Serving HTTPS") {
		t.Errorf("no startup line in the output:\n%s", c.Output())
	}
}
