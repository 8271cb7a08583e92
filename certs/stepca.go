package certs

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"go.step.sm/crypto/jose"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/keyfile"
)

// This issuer speaks step-ca's documented HTTP API with go.step.sm/crypto
// (JOSE) rather than importing github.com/smallstep/certificates/ca: that
// package links the whole CA server (289 packages: gRPC, Google APIs, cloud
// KMS clients, NoSQL drivers) into every pgtrust binary for three requests.

// DefaultStepRequestTimeout bounds every request to step-ca.
const DefaultStepRequestTimeout = 10 * time.Second

// stepTokenLifetime is how long a minted provisioner token is valid: what
// `step ca token` gives. step-ca accepts it once (the jti is recorded).
const stepTokenLifetime = 5 * time.Minute

// stepMaxResponse caps what is read from step-ca (a certificate chain is a
// few KiB).
const stepMaxResponse = 1 << 20

// StepOptions configure a StepIssuer (step-ca, JWK provisioner).
type StepOptions struct {
	CAURL                   string        // https://127.0.0.1:9000
	RootFile                string        // step-ca's root certificate: the only trust for the CA's HTTPS
	Provisioner             string        // JWK provisioner name
	ProvisionerKeyFile      string        // the provisioner's private JWK: encrypted JWE (as step writes it) or plain JSON; read at each use
	ProvisionerPasswordFile string        // decrypts ProvisionerKeyFile; secret; read at each use
	TokenFile               string        // alternative to the key: a one-time token from `step ca token`, read when a token is needed
	CommonName              string        // the PostgreSQL user for a client certificate, or the server's host name
	SANs                    []string      // DNS names / IPs (as step-ca interprets them)
	Duration                time.Duration // requested lifetime; 0 = the provisioner's default
	RequestTimeout          time.Duration // per request; default 10s
	Logger                  *slog.Logger
	Now                     func() time.Time
}

// stepOptionsView has StepOptions' printable fields and no methods. Every
// field is printable: the secrets live in files, and only the files' names
// are options.
type stepOptionsView struct {
	CAURL, RootFile, Provisioner, ProvisionerKeyFile, ProvisionerPasswordFile, TokenFile, CommonName string
	SANs                                                                                             []string
	Duration, RequestTimeout                                                                         time.Duration
}

func (o StepOptions) view() stepOptionsView {
	return stepOptionsView{CAURL: o.CAURL, RootFile: o.RootFile, Provisioner: o.Provisioner,
		ProvisionerKeyFile: o.ProvisionerKeyFile, ProvisionerPasswordFile: o.ProvisionerPasswordFile,
		TokenFile: o.TokenFile, CommonName: o.CommonName, SANs: o.SANs, Duration: o.Duration, RequestTimeout: o.RequestTimeout}
}

// String renders the options (file names, never file contents).
func (o StepOptions) String() string { return fmt.Sprintf("%+v", o.view()) }

// GoString is String for %#v (it keeps the Logger's internals out).
func (o StepOptions) GoString() string { return "certs.StepOptions" + o.String() }

// LogValue renders the options for slog.
func (o StepOptions) LogValue() slog.Value {
	return slog.GroupValue(slog.String("ca_url", o.CAURL), slog.String("root", o.RootFile),
		slog.String("provisioner", o.Provisioner), slog.String("provisioner_key_file", o.ProvisionerKeyFile),
		slog.String("provisioner_password_file", o.ProvisionerPasswordFile), slog.String("token_file", o.TokenFile),
		slog.String("common_name", o.CommonName), slog.String("sans", strings.Join(o.SANs, ",")),
		slog.Duration("duration", o.Duration))
}

// StepIssuer obtains certificates from step-ca with a JWK provisioner:
// POST /1.0/sign with a one-time token for a new certificate (a fresh
// ECDSA P-256 key), POST /1.0/renew over mTLS to renew one that is still
// valid (step-ca keeps the public key). Safe for concurrent use; requests
// are serialised.
type StepIssuer struct {
	o     StepOptions
	base  *url.URL
	roots *x509.CertPool
	cas   []*x509.Certificate // RootFile's certificates
	log   *slog.Logger

	mu sync.Mutex
}

var _ Issuer = (*StepIssuer)(nil)

// NewStepIssuer checks the options and reads the root file; it does not
// contact step-ca (the first Issue does).
func NewStepIssuer(o StepOptions) (*StepIssuer, error) {
	bad := func(msg string, args ...any) *failure.Error {
		return failure.New(failure.ConfigInvalid, msg, args...)
	}
	if o.CAURL == "" || o.RootFile == "" || o.CommonName == "" {
		return nil, bad("step-ca issuer needs the CA URL, its root certificate and a common name").
			WithEvidence("ca_url=%q root=%q common_name=%q", o.CAURL, o.RootFile, o.CommonName).
			WithFix("set ca_url (https://host:port), root (step-ca's root_ca.crt, from `step ca root`) and the certificate's common name (the PostgreSQL user, or the server's host name)")
	}
	u, err := url.Parse(strings.TrimRight(o.CAURL, "/"))
	if err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, bad("step-ca URL %q is not an https:// URL", o.CAURL).
			WithFix("set ca_url to step-ca's address, e.g. https://ca.example:9000 (step-ca serves HTTPS only)")
	}
	switch {
	case o.ProvisionerKeyFile != "" && o.TokenFile != "":
		return nil, bad("step-ca issuer has both a provisioner key file and a token file").
			WithEvidence("provisioner_key_file=%q token_file=%q", o.ProvisionerKeyFile, o.TokenFile).
			WithFix("set provisioner_key_file (pgtrust mints a token for each new certificate) or token_file (a token from `step ca token`), not both")
	case o.ProvisionerKeyFile == "" && o.TokenFile == "":
		return nil, bad("step-ca issuer needs a provisioner key file or a token file for the first certificate").
			WithFix("set provisioner, provisioner_key_file and provisioner_password_file (the JWK provisioner's encrypted key), or token_file (a one-time token from `step ca token %s`)", o.CommonName)
	case o.ProvisionerKeyFile != "" && o.Provisioner == "":
		return nil, bad("step-ca issuer has a provisioner key file but no provisioner name").
			WithEvidence("provisioner_key_file=%q", o.ProvisionerKeyFile).
			WithFix("set provisioner to the JWK provisioner's name (`step ca provisioner list` shows it): tokens name it as their issuer")
	}
	if o.Duration < 0 {
		return nil, bad("step-ca certificate duration %s is negative", o.Duration).
			WithFix("set duration to the requested lifetime (e.g. 24h), or leave it out for the provisioner's default")
	}
	for _, s := range o.SANs {
		if strings.TrimSpace(s) == "" {
			return nil, bad("step-ca SANs contain an empty name").WithFix("remove the empty entry from sans")
		}
	}
	pemBytes, err := os.ReadFile(o.RootFile)
	if err != nil {
		return nil, failure.Wrap(failure.ConfigInvalid, err, "could not read the step-ca root file %q", o.RootFile).
			WithFix("point root at step-ca's root certificate (PEM; `step ca root root_ca.crt` fetches it)")
	}
	var cas []*x509.Certificate
	for rest := pemBytes; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, failure.Wrap(failure.ConfigInvalid, err, "the step-ca root file %q holds a certificate that does not parse", o.RootFile).
				WithFix("point root at step-ca's root certificate (PEM)")
		}
		cas = append(cas, c)
	}
	if len(cas) == 0 {
		return nil, bad("no certificate in the step-ca root file %q", o.RootFile).
			WithFix("point root at step-ca's root certificate (PEM; `step ca root root_ca.crt` fetches it)")
	}
	roots := x509.NewCertPool()
	for _, c := range cas {
		roots.AddCert(c)
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = DefaultStepRequestTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &StepIssuer{o: o, base: u, roots: roots, cas: cas, log: o.Logger.With("ca", "step-ca")}, nil
}

// Name implements Issuer.
func (s *StepIssuer) Name() string { return "step-ca" }

// String renders the issuer's options.
func (s *StepIssuer) String() string { return "step-ca issuer " + s.o.String() }

// GoString is String for %#v.
func (s *StepIssuer) GoString() string { return "&certs.StepIssuer{" + s.o.String() + "}" }

// LogValue renders the issuer's options for slog.
func (s *StepIssuer) LogValue() slog.Value { return s.o.LogValue() }

// Issue implements Issuer. With no current certificate, or one that names
// another subject or does not chain to RootFile, it signs a new key with a
// provisioner token (POST /1.0/sign). A valid one is renewed over mTLS
// (POST /1.0/renew, same key); if step-ca refuses that renewal, a
// provisioner key, when configured, gets a new certificate instead. An
// expired one gets a new certificate with the provisioner key; without a
// key it is renewed with a token signed by its own key, which step-ca
// accepts only when the provisioner allows renewal after expiry.
func (s *StepIssuer) Issue(ctx context.Context, current *tls.Certificate) (*Issued, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	leaf, key := s.usable(current)
	if leaf == nil {
		return s.sign(ctx)
	}
	now := s.o.Now()
	if now.Before(leaf.NotAfter) {
		if err := s.chainsToRoot(current, leaf, now); err != nil {
			// step-ca would reject it in the TLS handshake, which the
			// client may only see as a reset connection: decide here.
			s.log.Warn("current certificate does not chain to step-ca's root; requesting a new one",
				"serial", SerialHex(leaf), "issuer", leaf.Issuer.String(), "reason", err.Error())
			return s.sign(ctx)
		}
		iss, err := s.renew(ctx, current, leaf, key)
		if err == nil || failure.ClassOf(err) != RenewalAuth || s.o.ProvisionerKeyFile == "" {
			return iss, err
		}
		s.log.Warn("step-ca refused the renewal; requesting a new certificate with a provisioner token",
			"serial", SerialHex(leaf), "error", err)
		return s.sign(ctx)
	}
	if s.o.ProvisionerKeyFile != "" {
		s.log.Info("current certificate has expired; requesting a new one with a provisioner token",
			"serial", SerialHex(leaf), "not_after", leaf.NotAfter)
		return s.sign(ctx)
	}
	iss, err := s.renewExpired(ctx, current, leaf, key)
	if err != nil && failure.ClassOf(err) == RenewalAuth && s.o.TokenFile != "" {
		s.log.Warn("step-ca refused to renew the expired certificate; trying the token file", "error", err)
		iss, err = s.sign(ctx)
		if fe, ok := failure.As(err); ok && fe.Class == RenewalAuth {
			// The token file was most likely spent on the first issue: the
			// way out is the one for an expired certificate.
			fe.Fix = s.expiredFix()
		}
	}
	return iss, err
}

// usable returns current's leaf and key when it can be renewed: it parses,
// has a signing key and is for the configured common name (a changed name
// needs a new certificate, which renewal would not give).
func (s *StepIssuer) usable(current *tls.Certificate) (*x509.Certificate, crypto.Signer) {
	if current == nil || len(current.Certificate) == 0 {
		return nil, nil
	}
	key, ok := current.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, nil
	}
	leaf := current.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(current.Certificate[0]); err != nil {
			return nil, nil
		}
	}
	if leaf.Subject.CommonName != s.o.CommonName {
		s.log.Info("current certificate names another subject; requesting a new one",
			"subject", leaf.Subject.CommonName, "want", s.o.CommonName)
		return nil, nil
	}
	return leaf, key
}

// chainsToRoot reports whether current (leaf and the chain it carries)
// verifies against RootFile, as step-ca's mTLS renewal requires.
func (s *StepIssuer) chainsToRoot(current *tls.Certificate, leaf *x509.Certificate, now time.Time) error {
	inter := x509.NewCertPool()
	for _, der := range current.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: s.roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err
}

// sans is what the CSR and the token name: the configured SANs, or the
// common name alone (what `step ca certificate` does).
func (s *StepIssuer) sans() []string {
	if len(s.o.SANs) > 0 {
		return s.o.SANs
	}
	return []string{s.o.CommonName}
}

// sign gets a new certificate for a fresh key: POST /1.0/sign {csr, ott}.
func (s *StepIssuer) sign(ctx context.Context) (*Issued, error) {
	tok, how, err := s.token()
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, failure.Wrap(RenewalIssueFailed, err, "could not generate a key for step-ca")
	}
	req := &x509.CertificateRequest{Subject: pkix.Name{CommonName: s.o.CommonName}}
	for _, n := range s.sans() {
		switch ip := net.ParseIP(n); {
		case ip != nil:
			req.IPAddresses = append(req.IPAddresses, ip)
		case strings.Contains(n, "://"):
			u, err := url.Parse(n)
			if err != nil {
				return nil, failure.Wrap(failure.ConfigInvalid, err, "step-ca SAN %q is not a URI", n).WithFix("fix the URI in sans")
			}
			req.URIs = append(req.URIs, u)
		case strings.Contains(n, "@"):
			req.EmailAddresses = append(req.EmailAddresses, n)
		default:
			req.DNSNames = append(req.DNSNames, n)
		}
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, req, key)
	if err != nil {
		return nil, failure.Wrap(RenewalIssueFailed, err, "could not make a certificate request for step-ca")
	}
	body := map[string]any{
		"csr": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr})),
		"ott": tok,
	}
	if s.o.Duration > 0 {
		body["notAfter"] = s.o.Duration.String() // step-ca reads a duration as "from now"
	}
	b, err := json.Marshal(body)
	if err != nil {
		return nil, failure.Wrap(RenewalIssueFailed, err, "could not encode the sign request")
	}
	const op = "POST /1.0/sign"
	resp, err := s.do(ctx, op, nil, "", b)
	if err != nil {
		return nil, s.authHint(err, how)
	}
	return s.accept(resp, key, op, "sign ("+how+")")
}

// renew renews a valid certificate over mTLS: step-ca authenticates the
// client certificate and signs the same public key for a new validity.
func (s *StepIssuer) renew(ctx context.Context, current *tls.Certificate, leaf *x509.Certificate, key crypto.Signer) (*Issued, error) {
	const op = "POST /1.0/renew"
	client := *current
	client.Leaf = leaf
	resp, err := s.do(ctx, op, &client, "", nil)
	if err != nil {
		if fe, ok := failure.As(err); ok && fe.Class == RenewalAuth {
			fe.Fix = "step-ca refused to renew certificate " + SerialHex(leaf) + " (revoked, renewal disabled on the provisioner, or not issued by this CA); configure the provisioner key (provisioner_key_file and provisioner_password_file) so pgtrust can request a new one"
			return nil, fe
		}
		return nil, err
	}
	return s.accept(resp, key, op, "renew")
}

// renewExpired renews an expired certificate with a token signed by its
// own key (x5cInsecure header), as `step ca renew` does: mTLS cannot
// present an expired certificate.
func (s *StepIssuer) renewExpired(ctx context.Context, current *tls.Certificate, leaf *x509.Certificate, key crypto.Signer) (*Issued, error) {
	const op = "POST /1.0/renew"
	alg, err := joseAlg(key)
	if err != nil {
		return nil, failure.Wrap(RenewalAuth, err, "the expired certificate's key cannot sign a renewal token").
			WithFix("%s", s.expiredFix())
	}
	x5c := make([]string, len(current.Certificate))
	for i, der := range current.Certificate {
		x5c[i] = base64.StdEncoding.EncodeToString(der)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key},
		new(jose.SignerOptions).WithType("JWT").WithHeader("x5cInsecure", x5c))
	if err != nil {
		return nil, failure.Wrap(RenewalAuth, err, "could not prepare the renewal token").WithFix("%s", s.expiredFix())
	}
	now := s.o.Now()
	tok, err := jose.Signed(signer).Claims(jose.Claims{
		Issuer: "step-ca-client/1.0", Subject: leaf.Subject.CommonName,
		Audience:  jose.Audience{s.endpoint("/1.0/renew")},
		NotBefore: jose.NewNumericDate(now), IssuedAt: jose.NewNumericDate(now),
		Expiry: jose.NewNumericDate(now.Add(stepTokenLifetime)), ID: randomID(),
	}).CompactSerialize()
	if err != nil {
		return nil, failure.Wrap(RenewalAuth, err, "could not sign the renewal token").WithFix("%s", s.expiredFix())
	}
	resp, err := s.do(ctx, op, nil, tok, nil)
	if err != nil {
		if fe, ok := failure.As(err); ok && fe.Class == RenewalAuth {
			fe.Message = fmt.Sprintf("step-ca refused to renew the expired certificate %s (expired %s)", SerialHex(leaf), leaf.NotAfter.UTC().Format(time.RFC3339))
			fe.Fix = s.expiredFix()
			return nil, fe
		}
		return nil, err
	}
	return s.accept(resp, key, op, "renew after expiry")
}

func (s *StepIssuer) expiredFix() string {
	return "the certificate expired before it was renewed, and step-ca renews an expired certificate only when the provisioner allows it: configure the provisioner key (provisioner_key_file and provisioner_password_file) so pgtrust can request a new certificate, set \"allowRenewalAfterExpiry\": true in the provisioner's claims, or put a fresh token from `step ca token " + s.o.CommonName + "` in token_file"
}

// token returns a provisioner token for the sign endpoint and how it was
// obtained ("provisioner key" / "token file"), for messages.
func (s *StepIssuer) token() (string, string, error) {
	if s.o.ProvisionerKeyFile == "" {
		b, err := os.ReadFile(s.o.TokenFile)
		if err != nil {
			return "", "", failure.Wrap(RenewalAuth, err, "could not read the step-ca token file %q", s.o.TokenFile).
				WithFix("put a one-time token from `step ca token %s` in %s", s.o.CommonName, s.o.TokenFile)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return "", "", failure.New(RenewalAuth, "the step-ca token file %q is empty", s.o.TokenFile).
				WithEvidence("%d bytes, all white space", len(b)).
				WithFix("put a one-time token from `step ca token %s` in %s", s.o.CommonName, s.o.TokenFile)
		}
		return tok, "token file", nil
	}
	jwk, err := s.provisionerKey()
	if err != nil {
		return "", "", err
	}
	alg := jose.SignatureAlgorithm(jwk.Algorithm)
	if alg == "" {
		if alg, err = joseAlg(jwk.Key); err != nil {
			return "", "", s.keyErr("the provisioner key %q is not a signing key", s.o.ProvisionerKeyFile)
		}
	}
	kid := jwk.KeyID
	if kid == "" {
		// step-ca finds the provisioner by name and kid; step sets the kid
		// to the key's thumbprint.
		if kid, err = jose.Thumbprint(jwk); err != nil {
			return "", "", s.keyErr("the provisioner key %q has no key ID", s.o.ProvisionerKeyFile)
		}
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: jwk.Key},
		new(jose.SignerOptions).WithType("JWT").WithHeader("kid", kid))
	if err != nil {
		return "", "", s.keyErr("the provisioner key %q cannot sign with %s", s.o.ProvisionerKeyFile, alg)
	}
	now := s.o.Now()
	claims := struct {
		jose.Claims
		SANs []string `json:"sans"`
	}{jose.Claims{
		Issuer: s.o.Provisioner, Subject: s.o.CommonName, Audience: jose.Audience{s.endpoint("/1.0/sign")},
		NotBefore: jose.NewNumericDate(now), IssuedAt: jose.NewNumericDate(now),
		Expiry: jose.NewNumericDate(now.Add(stepTokenLifetime)), ID: randomID(),
	}, s.sans()}
	tok, err := jose.Signed(signer).Claims(claims).CompactSerialize()
	if err != nil {
		return "", "", s.keyErr("could not sign a token with the provisioner key %q", s.o.ProvisionerKeyFile)
	}
	return tok, "provisioner key", nil
}

// provisionerKey reads the provisioner's private JWK, decrypting it with
// the password file when it is a JWE. Errors name files, never contents.
func (s *StepIssuer) provisionerKey() (*jose.JSONWebKey, error) {
	b, err := os.ReadFile(s.o.ProvisionerKeyFile)
	if err != nil {
		return nil, failure.Wrap(RenewalAuth, err, "could not read the step-ca provisioner key file %q", s.o.ProvisionerKeyFile).
			WithFix("%s", s.keyFix())
	}
	b = bytes.TrimSpace(b)
	if enc, err := jose.ParseEncrypted(string(b)); err == nil {
		if s.o.ProvisionerPasswordFile == "" {
			return nil, s.keyErr("the provisioner key file %q is encrypted and no password file is set", s.o.ProvisionerKeyFile)
		}
		pw, err := os.ReadFile(s.o.ProvisionerPasswordFile)
		if err != nil {
			return nil, failure.Wrap(RenewalAuth, err, "could not read the step-ca provisioner password file %q", s.o.ProvisionerPasswordFile).
				WithFix("%s", s.keyFix())
		}
		// step trims the line end of a password file, not other spaces.
		pw = bytes.TrimRight(pw, "\r\n")
		if b, err = enc.Decrypt(pw); err != nil {
			return nil, s.keyErr("the password in %q does not decrypt the provisioner key %q", s.o.ProvisionerPasswordFile, s.o.ProvisionerKeyFile)
		}
	}
	jwk := new(jose.JSONWebKey)
	if err := json.Unmarshal(b, jwk); err != nil || jwk.Key == nil {
		// The JSON error could quote key material: only its kind is kept.
		return nil, s.keyErr("the provisioner key file %q is not a JWK (encrypted or plain JSON)", s.o.ProvisionerKeyFile)
	}
	if jwk.IsPublic() {
		return nil, s.keyErr("the provisioner key file %q holds a public key", s.o.ProvisionerKeyFile)
	}
	return jwk, nil
}

func (s *StepIssuer) keyErr(format string, args ...any) *failure.Error {
	return failure.New(RenewalAuth, format, args...).
		WithEvidence("provisioner %q, provisioner_key_file %q, provisioner_password_file %q", s.o.Provisioner, s.o.ProvisionerKeyFile, s.o.ProvisionerPasswordFile).
		WithFix("%s", s.keyFix())
}

func (s *StepIssuer) keyFix() string {
	return "point provisioner_key_file at the private key of JWK provisioner " + strconvQuote(s.o.Provisioner) +
		" (the encryptedKey of `step ca provisioner list`, as a file) and provisioner_password_file at the password that decrypts it"
}

// authHint rewrites the fix of a refused sign request for the credential used.
func (s *StepIssuer) authHint(err error, how string) error {
	fe, ok := failure.As(err)
	if !ok || fe.Class != RenewalAuth || !strings.Contains(fe.Message, "HTTP 401") {
		return err
	}
	if how == "token file" {
		fe.Fix = "step-ca refused the token in " + s.o.TokenFile + ": tokens are valid for 5 minutes and accepted once, for the subject and SANs they name; put a fresh one from `step ca token " + s.o.CommonName + "` there (or configure the provisioner key so pgtrust mints its own)"
	} else {
		fe.Fix = "step-ca refused the token pgtrust signed with the provisioner key: check that provisioner " + strconvQuote(s.o.Provisioner) + " exists and is a JWK provisioner whose key is " + s.o.ProvisionerKeyFile + ", that ca_url is the address step-ca knows itself by (its dnsNames), and the clocks of both hosts"
	}
	return fe
}

// stepResponse is step-ca's answer to /sign and /renew.
type stepResponse struct {
	Crt       string   `json:"crt"`
	CA        string   `json:"ca"`
	CertChain []string `json:"certChain"`
}

// do sends one request. client, when set, is presented over mTLS; bearer,
// when set, goes in the Authorization header. Errors carry renewal classes.
func (s *StepIssuer) do(ctx context.Context, op string, client *tls.Certificate, bearer string, body []byte) (*stepResponse, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSHandshakeTimeout = s.o.RequestTimeout
	tr.TLSClientConfig = &tls.Config{RootCAs: s.roots, MinVersion: tls.VersionTLS12}
	if client != nil {
		// Always presented: Go would withhold a certificate whose chain does
		// not name one of the CAs step-ca lists, and step-ca's own answer
		// says more than a missing certificate.
		tr.TLSClientConfig.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return client, nil }
	}
	tr.DisableKeepAlives = true // a client certificate is per connection
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: s.o.RequestTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	rctx, cancel := context.WithTimeout(ctx, s.o.RequestTimeout)
	defer cancel()
	path := strings.TrimPrefix(op, "POST ")
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, s.endpoint(path), bytes.NewReader(body))
	if err != nil {
		return nil, failure.Wrap(failure.ConfigInvalid, err, "bad step-ca URL %q", s.o.CAURL)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "pgtrust")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, s.transportErr(err, op, client != nil)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, stepMaxResponse))
	if err != nil {
		return nil, s.transportErr(err, op, client != nil)
	}
	if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusCreated {
		var r stepResponse
		if err := json.Unmarshal(data, &r); err != nil {
			return nil, failure.New(RenewalInvalid, "step-ca answered %s with a body that is not JSON", op).
				WithEvidence("HTTP %d, %d bytes: %v", resp.StatusCode, len(data), err).
				WithFix("%s", renewFix(RenewalInvalid, "step-ca at "+s.o.CAURL))
		}
		return &r, nil
	}
	said := s.message(data)
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		return nil, failure.New(RenewalAuth, "step-ca refused %s: HTTP %d", op, resp.StatusCode).
			WithEvidence("step-ca said: %s", said).
			WithFix("%s", renewFix(RenewalAuth, "step-ca"))
	case http.StatusForbidden:
		// step-ca answers 403 when the token is good but what it asks for
		// is not allowed: a CSR whose names the token does not list, a
		// duration outside the provisioner's limits. Still the credential's
		// scope, hence renewal_auth, with a fix that says which.
		return nil, failure.New(RenewalAuth, "step-ca forbade %s: HTTP %d", op, resp.StatusCode).
			WithEvidence("step-ca said: %s", said).
			WithFix("step-ca accepted the credential but not the request: the token's subject and SANs must be the common name %q and sans %v configured here, and duration (%s) must be within provisioner %s's minTLSCertDuration..maxTLSCertDuration", s.o.CommonName, s.sans(), s.o.Duration, strconvQuote(s.o.Provisioner))
	default:
		return nil, failure.New(RenewalIssueFailed, "step-ca rejected %s: HTTP %d", op, resp.StatusCode).
			WithEvidence("step-ca said: %s", said).
			WithFix("check step-ca's log for this request and the provisioner %s's claims; renewal retries with backoff", strconvQuote(s.o.Provisioner))
	}
}

// message is step-ca's JSON error message (scrubbed, clipped), or a note on
// the body when it is not step-ca's JSON.
func (s *StepIssuer) message(data []byte) string {
	var e struct {
		Message string `json:"message"`
		Detail  string `json:"detail"`
	}
	if json.Unmarshal(data, &e) == nil && (e.Message != "" || e.Detail != "") {
		m := e.Message
		if e.Detail != "" && e.Detail != e.Message {
			m = strings.TrimSpace(m + " " + e.Detail)
		}
		return clip(jwtLike.ReplaceAllString(m, "[token]"), 300)
	}
	return fmt.Sprintf("a %d-byte body that is not step-ca's JSON error", len(data))
}

// jwtLike matches a compact JWS/JWT (three base64url segments): a message
// that quotes the token pgtrust sent must not carry it into an error.
var jwtLike = regexp.MustCompile(`[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}`)

// transportErr classifies a failed exchange: no answer is
// renewal_unreachable, including a CA whose certificate does not verify
// against RootFile (pgtrust never spoke to a CA it trusts); a client
// certificate the CA rejects during the handshake is renewal_auth.
func (s *StepIssuer) transportErr(err error, op string, mtls bool) error {
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		verify   *tls.CertificateVerificationError
	)
	msg := err.Error()
	switch {
	case errors.As(err, &unknown) || errors.As(err, &hostname) || errors.As(err, &invalid) || errors.As(err, &verify):
		return failure.Wrap(RenewalUnreachable, err, "step-ca's HTTPS certificate at %s does not verify against the root file %q", s.o.CAURL, s.o.RootFile).
			WithEvidence("TLS verification failed for %s", op).
			WithFix("set root to step-ca's own root certificate (`step ca root` on the CA, or its certs/root_ca.crt), and ca_url to a name in step-ca's dnsNames")
	case mtls && strings.Contains(msg, "remote error: tls:"):
		return failure.Wrap(RenewalAuth, err, "step-ca rejected the client certificate during %s", op).
			WithEvidence("TLS alert from %s", s.o.CAURL).
			WithFix("step-ca did not accept the current certificate for renewal (not issued by this CA, expired or revoked); configure the provisioner key so pgtrust can request a new one")
	}
	why := "network error"
	if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		why = fmt.Sprintf("no answer within %s", s.o.RequestTimeout)
	}
	return failure.Wrap(RenewalUnreachable, err, "step-ca unreachable for %s: %s", op, why).
		WithEvidence("ca_url %s", s.o.CAURL).
		WithFix("check that step-ca at %s is reachable from this host; renewal retries with backoff", s.o.CAURL)
}

// accept parses and checks what step-ca returned: the leaf is for key, the
// configured common name, valid now, and chains to RootFile.
func (s *StepIssuer) accept(r *stepResponse, key crypto.Signer, op, mode string) (*Issued, error) {
	invalid := func(format string, args ...any) *failure.Error {
		return failure.New(RenewalInvalid, "step-ca returned an unusable certificate: "+format, args...).
			WithEvidence("response to %s", op).
			WithFix("%s", renewFix(RenewalInvalid, "step-ca at "+s.o.CAURL))
	}
	pems := r.CertChain
	if len(pems) == 0 {
		pems = []string{r.Crt, r.CA}
	}
	var chain []*x509.Certificate
	for _, p := range pems {
		for rest := []byte(p); ; {
			var b *pem.Block
			if b, rest = pem.Decode(rest); b == nil {
				break
			}
			if b.Type != "CERTIFICATE" {
				continue
			}
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, invalid("%v", err)
			}
			chain = append(chain, c)
		}
	}
	if len(chain) == 0 {
		return nil, invalid("no certificate in the response")
	}
	leaf := chain[0]
	if !keyfile.KeyMatches(leaf, key) {
		return nil, invalid("the certificate's public key is not the key pgtrust sent (serial %s)", SerialHex(leaf))
	}
	if leaf.Subject.CommonName != s.o.CommonName {
		return nil, invalid("certificate common name %q, requested %q", leaf.Subject.CommonName, s.o.CommonName)
	}
	now := s.o.Now()
	if now.After(leaf.NotAfter) || now.Before(leaf.NotBefore.Add(-5*time.Minute)) {
		return nil, invalid("certificate valid %s to %s, now %s", leaf.NotBefore.UTC(), leaf.NotAfter.UTC(), now.UTC())
	}
	inter := x509.NewCertPool()
	tc := tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
	for _, c := range chain[1:] {
		if bytes.Equal(c.RawIssuer, c.RawSubject) {
			continue // a root adds nothing to the presented chain
		}
		inter.AddCert(c)
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	// Verified at NotBefore when that is slightly ahead of this host's clock.
	at := now
	if at.Before(leaf.NotBefore) {
		at = leaf.NotBefore
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: s.roots, Intermediates: inter, CurrentTime: at,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, invalid("certificate does not chain to the root file %q: %v", s.o.RootFile, err)
	}
	s.log.Info("step-ca issued certificate", "mode", mode, "subject", leaf.Subject.String(),
		"serial", SerialHex(leaf), "not_before", leaf.NotBefore, "not_after", leaf.NotAfter)
	return &Issued{Certificate: tc, CAs: append([]*x509.Certificate(nil), s.cas...)}, nil
}

func (s *StepIssuer) endpoint(path string) string {
	u := *s.base
	u.Path = strings.TrimRight(u.Path, "/") + path
	return u.String()
}

// joseAlg is the JWS algorithm for a private key.
func joseAlg(key any) (jose.SignatureAlgorithm, error) {
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		switch k.Curve {
		case elliptic.P256():
			return jose.ES256, nil
		case elliptic.P384():
			return jose.ES384, nil
		case elliptic.P521():
			return jose.ES512, nil
		}
	case ed25519.PrivateKey:
		return jose.EdDSA, nil
	case *rsa.PrivateKey:
		return jose.RS256, nil
	}
	return "", fmt.Errorf("unsupported key type %T", key)
}

func randomID() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func strconvQuote(s string) string { return fmt.Sprintf("%q", s) }
