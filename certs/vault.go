package certs

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	vault "github.com/hashicorp/vault/api"

	"github.com/pgtrust/pgtrust/failure"
)

// DefaultVaultRequestTimeout bounds every request to Vault.
const DefaultVaultRequestTimeout = 10 * time.Second

// DefaultKubernetesJWTFile is where Kubernetes mounts the service account token.
const DefaultKubernetesJWTFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"

// VaultAppRole authenticates with AppRole. The role_id and secret_id are
// read from files at each login, so a rotated secret_id is picked up.
type VaultAppRole struct {
	Mount        string // default "approle"
	RoleIDFile   string
	SecretIDFile string
}

// VaultKubernetes authenticates with a Kubernetes service account token.
type VaultKubernetes struct {
	Mount   string // default "kubernetes"
	Role    string
	JWTFile string // default DefaultKubernetesJWTFile; read at each login
}

// VaultOptions configure a VaultIssuer. Exactly one way to authenticate
// applies, in this order: AppRole, Kubernetes, then a token (Token,
// TokenFile, else the VAULT_TOKEN environment variable).
type VaultOptions struct {
	Address    string // e.g. https://vault.example:8200
	Namespace  string // Vault Enterprise namespace, sent as X-Vault-Namespace
	Mount      string // PKI mount, e.g. "pki"
	Role       string // PKI role
	CommonName string // the PostgreSQL user for a client certificate (seed 001: CN = user)
	AltNames   []string
	IPSANs     []net.IP
	TTL        time.Duration // requested lifetime; 0 lets the role decide

	Token     string // secret; masked by String, GoString and LogValue
	TokenFile string // re-read at each login, so a rotated file is picked up

	AppRole    *VaultAppRole
	Kubernetes *VaultKubernetes

	CACertFile     string        // CA that signed Vault's own HTTPS certificate (system roots otherwise)
	RequestTimeout time.Duration // per request; default DefaultVaultRequestTimeout
	Logger         *slog.Logger
	Now            func() time.Time
	// Getenv reads VAULT_TOKEN; default os.Getenv (tests substitute it).
	Getenv func(string) string
	// After waits in RunTokenRenewal; default time.After (tests drive it).
	After func(time.Duration) <-chan time.Time
}

// vaultOptionsView has VaultOptions' printable fields and no methods, so
// formatting it cannot recurse into String.
type vaultOptionsView struct {
	Address, Namespace, Mount, Role, CommonName string
	AltNames                                    []string
	IPSANs                                      []net.IP
	TTL                                         time.Duration
	Token, TokenFile, Auth, CACertFile          string
	RequestTimeout                              time.Duration
}

func (o VaultOptions) redacted() vaultOptionsView {
	v := vaultOptionsView{Address: o.Address, Namespace: o.Namespace, Mount: o.Mount, Role: o.Role,
		CommonName: o.CommonName, AltNames: o.AltNames, IPSANs: o.IPSANs, TTL: o.TTL,
		TokenFile: o.TokenFile, Auth: o.authMethod(), CACertFile: o.CACertFile, RequestTimeout: o.RequestTimeout}
	if o.Token != "" {
		v.Token = "[redacted]"
	}
	return v
}

func (o VaultOptions) authMethod() string {
	switch {
	case o.AppRole != nil:
		return "approle"
	case o.Kubernetes != nil:
		return "kubernetes"
	default:
		return "token"
	}
}

// String renders the options with the token masked: options end up in logs
// and panics, a Vault token must not.
func (o VaultOptions) String() string { return fmt.Sprintf("%+v", o.redacted()) }

// GoString is String for %#v.
func (o VaultOptions) GoString() string { return "certs.VaultOptions" + o.String() }

// LogValue renders the options for slog with the token masked.
func (o VaultOptions) LogValue() slog.Value {
	v := o.redacted()
	ips := make([]string, len(v.IPSANs))
	for i, ip := range v.IPSANs {
		ips[i] = ip.String()
	}
	return slog.GroupValue(slog.String("address", v.Address), slog.String("namespace", v.Namespace),
		slog.String("mount", v.Mount), slog.String("role", v.Role), slog.String("common_name", v.CommonName),
		slog.String("alt_names", strings.Join(v.AltNames, ",")), slog.String("ip_sans", strings.Join(ips, ",")),
		slog.Duration("ttl", v.TTL), slog.String("auth", v.Auth), slog.String("token", v.Token),
		slog.String("token_file", v.TokenFile))
}

// VaultIssuer obtains certificates from Vault PKI (POST <mount>/issue/<role>).
// The private key Vault generates is kept in memory only. Safe for
// concurrent use; requests are serialised.
type VaultIssuer struct {
	o      VaultOptions
	client *vault.Client
	log    *slog.Logger

	mu   sync.Mutex // serialises Issue and token upkeep
	auth tokenState
}

var _ Issuer = (*VaultIssuer)(nil)

// NewVaultIssuer checks the options and prepares the client; it does not
// contact Vault (the first Issue does).
func NewVaultIssuer(o VaultOptions) (*VaultIssuer, error) {
	if o.Address == "" || o.Mount == "" || o.Role == "" || o.CommonName == "" {
		return nil, failure.New(failure.ConfigInvalid, "vault issuer needs address, mount, role and common name").
			WithEvidence("address=%q mount=%q role=%q common_name=%q", o.Address, o.Mount, o.Role, o.CommonName).
			WithFix("set vault address, the PKI mount and role (e.g. pki/issue/<role>) and the certificate's common name (the PostgreSQL user)")
	}
	if err := CheckVaultAddress(o.Address); err != nil {
		return nil, err
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = DefaultVaultRequestTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Getenv == nil {
		o.Getenv = getenv
	}
	if o.After == nil {
		o.After = time.After
	}
	if o.AppRole != nil && (o.AppRole.RoleIDFile == "" || o.AppRole.SecretIDFile == "") {
		return nil, failure.New(failure.ConfigInvalid, "vault AppRole login needs a role_id file and a secret_id file").
			WithFix("set the AppRole role_id_file and secret_id_file")
	}
	if o.Kubernetes != nil && o.Kubernetes.Role == "" {
		return nil, failure.New(failure.ConfigInvalid, "vault Kubernetes login needs a role").
			WithFix("set the Vault Kubernetes auth role bound to this service account")
	}

	// The configuration is built here rather than by vault.DefaultConfig,
	// which reads VAULT_SKIP_VERIFY, VAULT_CACERT, VAULT_MAX_RETRIES and
	// VAULT_RATE_LIMIT from the environment: the options decide how Vault's
	// certificate is verified, and verification cannot be switched off.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSHandshakeTimeout = o.RequestTimeout
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	if o.CACertFile != "" {
		pemBytes, err := os.ReadFile(o.CACertFile)
		if err != nil {
			return nil, failure.Wrap(failure.ConfigInvalid, err, "could not read the vault CA certificate %q", o.CACertFile).
				WithFix("point the Vault CA certificate setting at a PEM file with the CA that signed Vault's HTTPS certificate")
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemBytes) {
			return nil, failure.New(failure.ConfigInvalid, "no certificate in the vault CA file %q", o.CACertFile).
				WithFix("point the Vault CA certificate setting at a PEM file with the CA that signed Vault's HTTPS certificate")
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	cfg := &vault.Config{
		Address: o.Address,
		// No redirect is followed, by net/http or by the Vault client's own
		// loop: a redirect re-sends X-Vault-Token and a login's secret_id to
		// whatever host the answer names. Vault standbys forward requests
		// to the active node themselves, so a redirect means the address
		// points at something else; noRedirects turns it into an error.
		HttpClient: &http.Client{Transport: noRedirects{tr},
			CheckRedirect: func(req *http.Request, _ []*http.Request) error {
				status := 0
				if req.Response != nil {
					status = req.Response.StatusCode
				}
				return &redirectError{status: status, host: req.URL.Host}
			}},
		DisableRedirects: true,
		Timeout:          o.RequestTimeout,
		// The renewal engine owns retries and backoff; the client's own
		// retries would multiply the wait and hide failures from the metrics.
		MaxRetries: 0,
	}
	c, err := vault.NewClient(cfg)
	if err != nil {
		return nil, failure.Wrap(failure.ConfigInvalid, err, "vault client for %q", o.Address)
	}
	// NewClient reads VAULT_TOKEN and VAULT_NAMESPACE by itself; the options
	// decide, so start from nothing.
	c.ClearToken()
	c.ClearNamespace()
	if o.Namespace != "" {
		c.SetNamespace(o.Namespace)
	}
	return &VaultIssuer{o: o, client: c, log: o.Logger.With("ca", "vault")}, nil
}

// String, GoString and LogValue keep the issuer's token (its own and the
// one in its options) out of any %v, %#v or slog rendering.
func (v *VaultIssuer) String() string { return "vault issuer " + v.o.String() }

// GoString is String for %#v.
func (v *VaultIssuer) GoString() string { return "&certs.VaultIssuer{" + v.o.String() + "}" }

// LogValue renders the issuer's options for slog, token masked.
func (v *VaultIssuer) LogValue() slog.Value { return v.o.LogValue() }

// Name implements Issuer.
func (v *VaultIssuer) Name() string { return "vault" }

// Issue implements Issuer: Vault issues afresh (current is not used).
func (v *VaultIssuer) Issue(ctx context.Context, _ *tls.Certificate) (*Issued, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.ensureToken(ctx, false); err != nil {
		return nil, err
	}
	path := strings.Trim(v.o.Mount, "/") + "/issue/" + v.o.Role
	body := map[string]any{"common_name": v.o.CommonName}
	if len(v.o.AltNames) > 0 {
		body["alt_names"] = strings.Join(v.o.AltNames, ",")
	}
	if len(v.o.IPSANs) > 0 {
		ips := make([]string, len(v.o.IPSANs))
		for i, ip := range v.o.IPSANs {
			ips[i] = ip.String()
		}
		body["ip_sans"] = strings.Join(ips, ",")
	}
	if v.o.TTL > 0 {
		body["ttl"] = v.o.TTL.String()
	}
	rctx, cancel := context.WithTimeout(ctx, v.o.RequestTimeout)
	defer cancel()
	sec, err := v.client.Logical().WriteWithContext(rctx, path, body)
	if err != nil {
		e := v.classify(err, "PUT /v1/"+path)
		if failure.ClassOf(e) == RenewalAuth {
			// A login-based token may have been revoked or expired early;
			// log in again on the next attempt.
			v.auth.drop()
		}
		return nil, e
	}
	if sec == nil || sec.Data == nil {
		return nil, failure.New(RenewalInvalid, "vault returned no certificate for %s", path).
			WithEvidence("the response to PUT /v1/%s had no data", path).
			WithFix("check that %s is a PKI issue endpoint (vault_pki_role = \"<mount>/issue/<role>\")", path)
	}
	for _, w := range sec.Warnings {
		v.log.Warn("vault warning", "path", path, "warning", v.scrub(w))
	}
	iss, err := v.parseIssued(sec.Data, path)
	if err != nil {
		return nil, err
	}
	leaf := iss.Certificate.Leaf
	v.log.Info("vault issued certificate", "path", path, "subject", leaf.Subject.String(),
		"serial", fmt.Sprintf("%x", leaf.SerialNumber), "not_after", leaf.NotAfter, "request_id", sec.RequestID)
	return iss, nil
}

// parseIssued turns the issue response into an Issued and checks it: the
// key matches the certificate, the certificate is for the requested name,
// currently valid and signed by the issuing CA.
func (v *VaultIssuer) parseIssued(data map[string]any, path string) (*Issued, error) {
	invalid := func(format string, args ...any) *failure.Error {
		return failure.New(RenewalInvalid, "vault returned an unusable certificate: "+format, args...).
			WithEvidence("response to PUT /v1/%s with fields %s (private_key_type %q)", path, strings.Join(keysOf(data), ", "), data["private_key_type"]).
			WithFix("check the PKI role %s (key type, allowed names) and the Vault server's PKI mount", path)
	}
	str := func(k string) string { s, _ := data[k].(string); return s }
	certPEM, keyPEM := str("certificate"), str("private_key")
	if certPEM == "" || keyPEM == "" {
		return nil, invalid("certificate or private_key missing from the response")
	}
	tc, err := tls.X509KeyPair([]byte(certPEM), []byte(keyPEM))
	if err != nil {
		// The tls error names the mismatch, never the key bytes.
		return nil, invalid("%v", err)
	}
	leaf := tc.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(tc.Certificate[0]); err != nil {
			return nil, invalid("%v", err)
		}
		tc.Leaf = leaf
	}
	if kt := str("private_key_type"); kt != "" && kt != keyTypeName(tc.PrivateKey) {
		return nil, invalid("private_key_type %q does not match the key (%s)", kt, keyTypeName(tc.PrivateKey))
	}
	if leaf.Subject.CommonName != v.o.CommonName {
		return nil, invalid("certificate common name %q, requested %q", leaf.Subject.CommonName, v.o.CommonName)
	}
	now := v.o.Now()
	if now.After(leaf.NotAfter) || now.Before(leaf.NotBefore.Add(-5*time.Minute)) {
		return nil, invalid("certificate valid %s to %s, now %s", leaf.NotBefore.UTC(), leaf.NotAfter.UTC(), now.UTC())
	}

	var cas []*x509.Certificate
	seen := map[string]bool{}
	add := func(pemText, field string) error {
		rest := []byte(pemText)
		for {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				return nil
			}
			if b.Type != "CERTIFICATE" {
				continue
			}
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return fmt.Errorf("%s: %w", field, err)
			}
			if !seen[string(c.Raw)] {
				seen[string(c.Raw)] = true
				cas = append(cas, c)
			}
		}
	}
	if err := add(str("issuing_ca"), "issuing_ca"); err != nil {
		return nil, invalid("%v", err)
	}
	if chain, ok := data["ca_chain"].([]any); ok {
		for _, c := range chain {
			s, _ := c.(string)
			if err := add(s, "ca_chain"); err != nil {
				return nil, invalid("%v", err)
			}
		}
	}
	if len(cas) > 0 {
		if err := leaf.CheckSignatureFrom(cas[0]); err != nil {
			return nil, invalid("certificate is not signed by the issuing_ca %q: %v", cas[0].Subject.String(), err)
		}
	}
	// The presented chain is the leaf and the intermediates; a self-signed
	// root adds nothing a verifier does not already have.
	for _, c := range cas {
		if !bytes.Equal(c.RawIssuer, c.RawSubject) {
			tc.Certificate = append(tc.Certificate, c.Raw)
		}
	}
	return &Issued{Certificate: tc, CAs: cas}, nil
}

func keyTypeName(k crypto.PrivateKey) string {
	switch k.(type) {
	case *rsa.PrivateKey:
		return "rsa"
	case *ecdsa.PrivateKey:
		return "ec"
	case ed25519.PrivateKey:
		return "ed25519"
	}
	return fmt.Sprintf("%T", k)
}

func keysOf(m map[string]any) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// classify maps a Vault client error to a renewal class. Evidence carries
// Vault's own messages (scrubbed of this issuer's secrets), never the token.
func (v *VaultIssuer) classify(err error, op string) error {
	var rd *redirectError
	if errors.As(err, &rd) {
		return failure.New(RenewalIssueFailed, "vault answered %s with a redirect (HTTP %d), which pgtrust does not follow", op, rd.status).
			WithEvidence("vault at %s answered HTTP %d redirecting to host %q; following it would send the Vault token or login secret there", v.o.Address, rd.status, rd.host).
			WithFix("point the Vault address at the active node or at the load balancer in front of the cluster (Vault standbys forward requests themselves); pgtrust keeps retrying with backoff")
	}
	var re *vault.ResponseError
	if errors.As(err, &re) {
		msgs := make([]string, len(re.Errors))
		for i, m := range re.Errors {
			msgs[i] = clip(v.scrub(m), 300) // a proxy's HTML error page is not evidence
		}
		vaultSaid := strings.Join(msgs, "; ")
		switch {
		case re.StatusCode == 401 || re.StatusCode == 403 || mentionsExpiredToken(vaultSaid):
			return failure.New(RenewalAuth, "vault refused %s: HTTP %d", op, re.StatusCode).
				WithEvidence("vault said: %s (namespace %q)", vaultSaid, v.o.Namespace).
				WithFix("%s", v.authFix())
		case re.StatusCode >= 500 || re.StatusCode == 429:
			return failure.New(RenewalUnreachable, "vault failed %s: HTTP %d", op, re.StatusCode).
				WithEvidence("vault said: %s", vaultSaid).
				WithFix("check the Vault server's health (sealed, standby, overloaded); renewal retries with backoff")
		default:
			return failure.New(RenewalIssueFailed, "vault rejected %s: HTTP %d", op, re.StatusCode).
				WithEvidence("vault said: %s", vaultSaid).
				WithFix("check the request against the PKI role %q (allowed domains, max TTL, IP SANs)", v.o.Role)
		}
	}
	why := "network error"
	if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		why = fmt.Sprintf("no answer within %s", v.o.RequestTimeout)
	}
	// Only the error's kind goes into the message: net/http errors quote the
	// URL (no secret) but a scrub keeps the rule simple.
	return failure.Wrap(RenewalUnreachable, errors.New(v.scrub(err.Error())), "vault unreachable for %s: %s", op, why).
		WithEvidence("address %s", v.o.Address).
		WithFix("check that Vault at %s is reachable from this host; renewal retries with backoff", v.o.Address)
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func mentionsExpiredToken(s string) bool {
	s = strings.ToLower(s)
	return strings.Contains(s, "permission denied") || strings.Contains(s, "token expired") ||
		strings.Contains(s, "bad token") || strings.Contains(s, "invalid token")
}

func (v *VaultIssuer) authFix() string {
	switch v.o.authMethod() {
	case "approle":
		return "check the AppRole role_id and secret_id files and that the role's policy allows update on " + strings.Trim(v.o.Mount, "/") + "/issue/" + v.o.Role
	case "kubernetes":
		return "check the Kubernetes auth role " + v.o.Kubernetes.Role + " binds this service account and its policy allows update on " + strings.Trim(v.o.Mount, "/") + "/issue/" + v.o.Role
	}
	return "provide a valid, unexpired Vault token (VAULT_TOKEN or the token file) whose policy allows update on " + strings.Trim(v.o.Mount, "/") + "/issue/" + v.o.Role
}

// ParseVaultPKIRole splits seed 001's vault_pki_role ("pki/issue/epoch-client",
// or a nested mount such as "pki/int/issue/role", optionally with a leading
// "v1/") into the PKI mount and the role.
func ParseVaultPKIRole(s string) (mount, role string, err error) {
	p := strings.TrimPrefix(strings.Trim(s, "/"), "v1/")
	i := strings.LastIndex(p, "/issue/")
	if i > 0 {
		mount, role = p[:i], p[i+len("/issue/"):]
	}
	if mount == "" || role == "" || strings.Contains(role, "/") {
		return "", "", failure.New(failure.ConfigInvalid, "vault_pki_role %q is not <mount>/issue/<role>", s).
			WithEvidence("Vault issues certificates at POST /v1/<mount>/issue/<role>").
			WithFix(`write it as "<mount>/issue/<role>", e.g. vault_pki_role = "pki/issue/epoch-client"`)
	}
	return mount, role, nil
}

// redirectError is a 3xx answer from Vault, refused rather than followed.
// Only the target's host is kept: a Location may carry anything.
type redirectError struct {
	status int
	host   string
}

func (e *redirectError) Error() string {
	return fmt.Sprintf("vault answered HTTP %d redirecting to host %q; redirects are not followed", e.status, e.host)
}

// noRedirects turns every 3xx answer into a redirectError before net/http
// or the Vault client can act on it (net/http returns a 307 to a request
// whose body it cannot replay as a plain answer, which the Vault client
// would follow or misread as a success).
type noRedirects struct{ rt http.RoundTripper }

func (n noRedirects) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := n.rt.RoundTrip(req)
	if err != nil || resp.StatusCode < 300 || resp.StatusCode > 399 {
		return resp, err
	}
	host := ""
	if loc, lerr := resp.Location(); lerr == nil {
		host = loc.Host
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	return nil, &redirectError{status: resp.StatusCode, host: host}
}

// CheckVaultAddress refuses a Vault address that is not an http(s) URL, and
// plain http:// to anything but this host: the token, AppRole secret_id and
// the issued private key would cross the network in clear text.
func CheckVaultAddress(addr string) error {
	u, err := url.Parse(addr)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return failure.New(failure.ConfigInvalid, "vault address %q is not an http(s) URL", addr).
			WithEvidence("the Vault address must be https://HOST[:PORT] (http:// only for a Vault on this host)").
			WithFix(`set the Vault address to e.g. "https://vault.example:8200"`)
	}
	if u.Scheme == "https" {
		return nil
	}
	h := u.Hostname()
	if ip := net.ParseIP(h); (ip != nil && ip.IsLoopback()) || strings.EqualFold(h, "localhost") {
		return nil
	}
	return failure.New(failure.ConfigInvalid, "vault address %q uses plain http:// to a host other than this one", addr).
		WithEvidence("host %q is not a loopback address; over http:// the Vault token, login secrets and issued private keys travel unencrypted", h).
		WithFix("use https:// (with the Vault CA certificate setting if Vault's certificate is not publicly trusted), or for a local dev Vault an address on 127.0.0.1")
}
