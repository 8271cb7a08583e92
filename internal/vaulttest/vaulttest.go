// Package vaulttest is a test double of HashiCorp Vault's documented HTTP
// API, for exactly the paths pgtrust's Vault issuer uses. Issue 12 states
// that a real Vault server cannot be installed on the build machines (its
// module does not build from the module proxy), so the Vault source is
// tested against this server instead; docs/renewal.md says so plainly.
//
// What it implements, following https://developer.hashicorp.com/vault/api-docs
// and the request/response shapes of github.com/hashicorp/vault/api:
//
//   - the X-Vault-Token header on every authenticated path, and
//     X-Vault-Namespace, which must equal the configured namespace when one is
//     configured;
//   - POST/PUT /v1/<mount>/issue/<role> (common_name, alt_names, ip_sans, ttl):
//     signs a real certificate with a real in-memory CA (a root and an issuing
//     intermediate), caps the TTL at the role's max TTL with a warning as Vault
//     does, and answers with Vault's envelope (request_id, lease_id,
//     renewable, lease_duration, data{certificate, issuing_ca, ca_chain,
//     private_key, private_key_type, serial_number, expiration}, warnings);
//   - GET /v1/auth/token/lookup-self, PUT/POST /v1/auth/token/renew-self;
//   - PUT/POST /v1/auth/approle/login (role_id, secret_id) and
//     /v1/auth/kubernetes/login (role, jwt), answering with an auth block;
//   - errors as {"errors":[...]} with 400, 403 ("permission denied" for a
//     missing, unknown or expired token) and 500;
//   - fault injection: the next N requests fail with a status, a delay
//     before answering (beyond a client's timeout), token expiry, and a
//     clock that the test moves forward for token lifetimes.
//
// It is not Vault: no storage, policies, leases of issued certificates or
// any other path. Only loopback.
package vaulttest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Token is a Vault token the server knows.
type Token struct {
	ID        string
	Accessor  string
	Policies  []string
	TTL       time.Duration // lifetime granted at creation and at each renewal; 0 = never expires (root)
	Renewable bool
	Issued    time.Time // by the server's clock
	Expires   time.Time // zero when TTL is 0
	Renewals  int
}

// Role is a PKI role on the mount.
type Role struct {
	Name            string
	AllowedNames    []string      // common names and DNS alt names allowed; empty = any
	MaxTTL          time.Duration // cap on the requested ttl; default 72h
	DefaultTTL      time.Duration // when no ttl is requested; default MaxTTL
	KeyType         string        // "ec" (P-256, default) or "rsa" (2048)
	AllowIPSANs     bool
	ExtraWarnings   []string // appended to every issue response's warnings
	ClientAuthOnly  bool     // when false, server and client auth EKUs are both set
	OmitIssuingCA   bool     // for tests of incomplete responses
	BreakKeyPairing bool     // answer with a private key that does not match the certificate
}

// Request is one request the server saw (never the token's value).
type Request struct {
	Method    string
	Path      string // without /v1/
	Namespace string
	HasToken  bool
	Body      map[string]any
}

// Options configure a Server.
type Options struct {
	Mount     string // PKI mount; default "pki"
	Namespace string // when set, X-Vault-Namespace must equal it
	Roles     []Role
	// AppRoles maps role_id to secret_id; a login creates a token with
	// LoginTTL. Kubernetes maps role to the JWT it accepts.
	AppRoles      map[string]string
	Kubernetes    map[string]string
	LoginTTL      time.Duration // default 1h
	LoginRenew    bool          // tokens from logins are renewable
	LoginWarnings []string
	TLS           bool // serve HTTPS with httptest's certificate (Server.Certificate)
}

// Server is the test double. Create it with New; Close it.
type Server struct {
	*httptest.Server
	Root, Issuing *x509.Certificate
	rootPEM       string
	issuingPEM    string
	issuingKey    *ecdsa.PrivateKey

	o Options

	mu       sync.Mutex
	roles    map[string]Role
	tokens   map[string]*Token
	offset   time.Duration // added to time.Now for token lifetimes
	failN    int
	failCode int
	failMsgs []string
	failPath string
	delay    time.Duration
	reqs     []Request
	serial   int64
	nextTok  int
}

// New starts a server on loopback.
func New(o Options) (*Server, error) {
	if o.Mount == "" {
		o.Mount = "pki"
	}
	if o.LoginTTL == 0 {
		o.LoginTTL = time.Hour
	}
	s := &Server{o: o, roles: map[string]Role{}, tokens: map[string]*Token{}, serial: 0x1000}
	for _, r := range o.Roles {
		if r.MaxTTL == 0 {
			r.MaxTTL = 72 * time.Hour
		}
		if r.DefaultTTL == 0 {
			r.DefaultTTL = r.MaxTTL
		}
		if r.KeyType == "" {
			r.KeyType = "ec"
		}
		s.roles[r.Name] = r
	}
	if err := s.makeCA(); err != nil {
		return nil, err
	}
	if o.TLS {
		s.Server = httptest.NewTLSServer(http.HandlerFunc(s.serve))
	} else {
		s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	}
	return s, nil
}

func (s *Server) makeCA() error {
	now := time.Now()
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	rootT := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "vaulttest root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, rootT, rootT, &rootKey.PublicKey, rootKey)
	if err != nil {
		return err
	}
	if s.Root, err = x509.ParseCertificate(der); err != nil {
		return err
	}
	if s.issuingKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return err
	}
	intT := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "vaulttest issuing CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(9 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		MaxPathLenZero: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	if der, err = x509.CreateCertificate(rand.Reader, intT, s.Root, &s.issuingKey.PublicKey, rootKey); err != nil {
		return err
	}
	if s.Issuing, err = x509.ParseCertificate(der); err != nil {
		return err
	}
	s.rootPEM = pemCert(s.Root.Raw)
	s.issuingPEM = pemCert(s.Issuing.Raw)
	return nil
}

func pemCert(der []byte) string {
	return strings.TrimSpace(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
}

// RootPool is a pool with the root CA.
func (s *Server) RootPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(s.Root)
	return p
}

// AddToken registers a token created now (server clock).
func (s *Server) AddToken(id string, ttl time.Duration, renewable bool) *Token {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addTokenLocked(id, ttl, renewable)
}

func (s *Server) addTokenLocked(id string, ttl time.Duration, renewable bool) *Token {
	s.nextTok++
	now := s.nowLocked()
	t := &Token{ID: id, Accessor: fmt.Sprintf("accessor-%d", s.nextTok), Policies: []string{"default", "pki-issue"},
		TTL: ttl, Renewable: renewable, Issued: now}
	if ttl > 0 {
		t.Expires = now.Add(ttl)
	}
	s.tokens[id] = t
	return t
}

// TokenInfo returns a copy of the token's state.
func (s *Server) TokenInfo(id string) (Token, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tokens[id]
	if !ok {
		return Token{}, false
	}
	return *t, true
}

// ExpireToken makes the token expired now.
func (s *Server) ExpireToken(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.tokens[id]; ok {
		t.Expires = s.nowLocked().Add(-time.Second)
	}
}

// Advance moves the server's clock for token lifetimes (certificates use
// the real clock, so TLS verification stays meaningful).
func (s *Server) Advance(d time.Duration) {
	s.mu.Lock()
	s.offset += d
	s.mu.Unlock()
}

// Now is the server's clock for token lifetimes.
func (s *Server) Now() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nowLocked()
}

func (s *Server) nowLocked() time.Time { return time.Now().Add(s.offset) }

// FailNext makes the next n requests fail with status and Vault's error
// JSON carrying msgs.
func (s *Server) FailNext(n, status int, msgs ...string) { s.FailOn("", n, status, msgs...) }

// FailOn is FailNext for requests whose path (without /v1/) starts with
// prefix.
func (s *Server) FailOn(prefix string, n, status int, msgs ...string) {
	s.mu.Lock()
	s.failPath, s.failN, s.failCode, s.failMsgs = prefix, n, status, msgs
	s.mu.Unlock()
}

// SetDelay delays every answer by d (0 turns it off); a delay beyond the
// client's timeout is a network timeout as the client sees it.
func (s *Server) SetDelay(d time.Duration) {
	s.mu.Lock()
	s.delay = d
	s.mu.Unlock()
}

// Requests returns the requests seen so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.reqs...)
}

// CountPath counts requests to path (without /v1/).
func (s *Server) CountPath(path string) int {
	n := 0
	for _, r := range s.Requests() {
		if r.Path == path {
			n++
		}
	}
	return n
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, code int, msgs ...string) {
	if msgs == nil {
		msgs = []string{}
	}
	writeJSON(w, code, map[string]any{"errors": msgs})
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	var body map[string]any
	if r.Body != nil && (r.Method == http.MethodPut || r.Method == http.MethodPost) {
		dec := json.NewDecoder(r.Body)
		dec.UseNumber()
		if err := dec.Decode(&body); err != nil && err.Error() != "EOF" {
			writeErr(w, http.StatusBadRequest, "failed to parse JSON input: "+err.Error())
			return
		}
	}
	path := strings.TrimPrefix(r.URL.Path, "/v1/")
	tokID := r.Header.Get("X-Vault-Token")
	ns := strings.Trim(r.Header.Get("X-Vault-Namespace"), "/")

	s.mu.Lock()
	s.reqs = append(s.reqs, Request{Method: r.Method, Path: path, Namespace: ns, HasToken: tokID != "", Body: body})
	delay := s.delay
	fail := s.failN > 0 && strings.HasPrefix(path, s.failPath)
	code, msgs := s.failCode, s.failMsgs
	if fail {
		s.failN--
	}
	s.mu.Unlock()

	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}
	if fail {
		writeErr(w, code, msgs...)
		return
	}
	if !strings.HasPrefix(r.URL.Path, "/v1/") {
		writeErr(w, http.StatusNotFound)
		return
	}
	if s.o.Namespace != "" && ns != strings.Trim(s.o.Namespace, "/") {
		// The token and the mount live in the configured namespace; from
		// any other they do not exist.
		writeErr(w, http.StatusForbidden, "permission denied")
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodPut && r.Method != http.MethodPost {
		writeErr(w, http.StatusMethodNotAllowed)
		return
	}

	switch {
	case path == "auth/approle/login":
		s.approleLogin(w, body)
		return
	case path == "auth/kubernetes/login":
		s.kubernetesLogin(w, body)
		return
	}

	s.mu.Lock()
	tok, ok := s.tokens[tokID]
	live := ok && (tok.Expires.IsZero() || s.nowLocked().Before(tok.Expires))
	s.mu.Unlock()
	if !live {
		writeErr(w, http.StatusForbidden, "permission denied")
		return
	}

	switch {
	case path == "auth/token/lookup-self" && r.Method == http.MethodGet:
		s.lookupSelf(w, tok)
	case path == "auth/token/renew-self" && r.Method != http.MethodGet:
		s.renewSelf(w, tok, body)
	case strings.HasPrefix(path, s.o.Mount+"/issue/") && r.Method != http.MethodGet:
		s.issue(w, strings.TrimPrefix(path, s.o.Mount+"/issue/"), body)
	default:
		writeErr(w, http.StatusNotFound, "no handler for route \""+path+"\". route entry not found.")
	}
}

func requestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func envelope(data, auth any, warnings []string) map[string]any {
	var w any
	if len(warnings) > 0 {
		w = warnings
	}
	return map[string]any{"request_id": requestID(), "lease_id": "", "renewable": false, "lease_duration": 0,
		"data": data, "wrap_info": nil, "warnings": w, "auth": auth}
}

func (s *Server) lookupSelf(w http.ResponseWriter, t *Token) {
	s.mu.Lock()
	now := s.nowLocked()
	ttl := int64(0)
	var expire any
	if !t.Expires.IsZero() {
		ttl = int64(t.Expires.Sub(now).Seconds())
		expire = t.Expires.UTC().Format(time.RFC3339Nano)
	}
	data := map[string]any{"accessor": t.Accessor, "creation_time": t.Issued.Unix(), "creation_ttl": int64(t.TTL.Seconds()),
		"display_name": "token", "entity_id": "", "expire_time": expire, "explicit_max_ttl": 0, "id": t.ID,
		"issue_time": t.Issued.UTC().Format(time.RFC3339Nano), "meta": nil, "num_uses": 0, "orphan": false,
		"path": "auth/token/create", "policies": t.Policies, "renewable": t.Renewable, "ttl": ttl, "type": "service"}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, envelope(data, nil, nil))
}

func (s *Server) authBlock(t *Token) map[string]any {
	return map[string]any{"client_token": t.ID, "accessor": t.Accessor, "policies": t.Policies,
		"token_policies": t.Policies, "metadata": nil, "lease_duration": int64(t.TTL.Seconds()),
		"renewable": t.Renewable, "entity_id": "", "token_type": "service", "orphan": true}
}

func (s *Server) renewSelf(w http.ResponseWriter, t *Token, body map[string]any) {
	s.mu.Lock()
	if !t.Renewable {
		s.mu.Unlock()
		writeErr(w, http.StatusBadRequest, "lease is not renewable")
		return
	}
	inc := t.TTL
	if d, ok := parseDuration(body["increment"]); ok && d > 0 && d < t.TTL {
		inc = d
	}
	t.Expires = s.nowLocked().Add(inc)
	t.Renewals++
	auth := s.authBlock(t)
	auth["lease_duration"] = int64(inc.Seconds())
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, envelope(nil, auth, nil))
}

func (s *Server) newLoginToken() *Token {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return s.addTokenLocked("hvs."+hex.EncodeToString(b[:]), s.o.LoginTTL, s.o.LoginRenew)
}

func (s *Server) approleLogin(w http.ResponseWriter, body map[string]any) {
	roleID, _ := body["role_id"].(string)
	secretID, _ := body["secret_id"].(string)
	if roleID == "" {
		writeErr(w, http.StatusBadRequest, "missing role_id")
		return
	}
	s.mu.Lock()
	want, ok := s.o.AppRoles[roleID]
	if !ok || want != secretID {
		s.mu.Unlock()
		writeErr(w, http.StatusBadRequest, "invalid role or secret ID")
		return
	}
	t := s.newLoginToken()
	auth := s.authBlock(t)
	auth["metadata"] = map[string]string{"role_name": "pgtrust"}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, envelope(nil, auth, s.o.LoginWarnings))
}

func (s *Server) kubernetesLogin(w http.ResponseWriter, body map[string]any) {
	role, _ := body["role"].(string)
	jwt, _ := body["jwt"].(string)
	if role == "" {
		writeErr(w, http.StatusBadRequest, "missing role")
		return
	}
	if jwt == "" {
		writeErr(w, http.StatusBadRequest, "missing jwt")
		return
	}
	s.mu.Lock()
	want, ok := s.o.Kubernetes[role]
	if !ok {
		s.mu.Unlock()
		writeErr(w, http.StatusBadRequest, fmt.Sprintf("invalid role name %q", role))
		return
	}
	if want != jwt {
		s.mu.Unlock()
		writeErr(w, http.StatusForbidden, "permission denied")
		return
	}
	t := s.newLoginToken()
	auth := s.authBlock(t)
	auth["metadata"] = map[string]string{"role": role, "service_account_name": "pgtrust"}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, envelope(nil, auth, s.o.LoginWarnings))
}

// parseDuration reads a Vault duration: an integer number of seconds (JSON
// number or string) or a Go duration string ("1h", "90s").
func parseDuration(v any) (time.Duration, bool) {
	switch x := v.(type) {
	case json.Number:
		n, err := x.Int64()
		return time.Duration(n) * time.Second, err == nil
	case string:
		if x == "" {
			return 0, false
		}
		if n, err := strconv.ParseInt(x, 10, 64); err == nil {
			return time.Duration(n) * time.Second, true
		}
		d, err := time.ParseDuration(x)
		return d, err == nil
	}
	return 0, false
}

func splitList(v any) []string {
	s, _ := v.(string)
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func (s *Server) allowed(r Role, name string) bool {
	if len(r.AllowedNames) == 0 {
		return true
	}
	for _, a := range r.AllowedNames {
		if a == name {
			return true
		}
	}
	return false
}

func (s *Server) issue(w http.ResponseWriter, roleName string, body map[string]any) {
	s.mu.Lock()
	role, ok := s.roles[roleName]
	s.serial++
	serial := s.serial
	s.mu.Unlock()
	if !ok {
		writeErr(w, http.StatusBadRequest, "unknown role: "+roleName)
		return
	}
	cn, _ := body["common_name"].(string)
	if cn == "" {
		writeErr(w, http.StatusBadRequest, `the common_name field is required, or must be provided in a CSR with "use_csr_common_name" set to true, unless "require_cn" is set to false`)
		return
	}
	if !s.allowed(role, cn) {
		writeErr(w, http.StatusBadRequest, fmt.Sprintf("common name %s not allowed by this role", cn))
		return
	}
	alt := splitList(body["alt_names"])
	for _, a := range alt {
		if !s.allowed(role, a) {
			writeErr(w, http.StatusBadRequest, fmt.Sprintf("subject alternate name %s not allowed by this role", a))
			return
		}
	}
	var ips []net.IP
	for _, p := range splitList(body["ip_sans"]) {
		if !role.AllowIPSANs {
			writeErr(w, http.StatusBadRequest, "IP Subject Alternative Names are not allowed in this role, but was provided "+p)
			return
		}
		ip := net.ParseIP(p)
		if ip == nil {
			writeErr(w, http.StatusBadRequest, "the value \""+p+"\" is not a valid IP address")
			return
		}
		ips = append(ips, ip)
	}
	var warnings []string
	ttl := role.DefaultTTL
	if v, present := body["ttl"]; present {
		d, ok := parseDuration(v)
		if !ok || d < 0 {
			writeErr(w, http.StatusBadRequest, fmt.Sprintf("error converting input %v for field \"ttl\"", v))
			return
		}
		if d > 0 {
			ttl = d
		}
	}
	if ttl > role.MaxTTL {
		warnings = append(warnings, fmt.Sprintf("TTL %q is longer than permitted maxTTL %q, so maxTTL is being used", ttl, role.MaxTTL))
		ttl = role.MaxTTL
	}
	warnings = append(warnings, role.ExtraWarnings...)

	now := time.Now()
	notAfter := now.Add(ttl)
	if notAfter.After(s.Issuing.NotAfter) {
		// Vault's default leaf_not_after_behavior is "err".
		writeErr(w, http.StatusBadRequest, fmt.Sprintf("cannot satisfy request, as TTL would result in notAfter %s that is beyond the expiration of the CA certificate at %s",
			notAfter.Format(time.RFC3339Nano), s.Issuing.NotAfter.Format(time.RFC3339Nano)))
		return
	}
	dns := append([]string{cn}, alt...)
	eku := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	if role.ClientAuthOnly {
		eku = eku[1:]
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: now.Add(-30 * time.Second), NotAfter: notAfter, DNSNames: dns, IPAddresses: ips,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement | x509.KeyUsageKeyEncipherment, ExtKeyUsage: eku}

	pub, keyPEM, err := newKey(role.KeyType)
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err.Error())
		return
	}
	if role.BreakKeyPairing {
		if _, keyPEM, err = newKey(role.KeyType); err != nil {
			writeErr(w, http.StatusInternalServerError, err.Error())
			return
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.Issuing, pub, s.issuingKey)
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err.Error())
		return
	}
	sn := hex.EncodeToString(tmpl.SerialNumber.Bytes())
	var colon []string
	for i := 0; i < len(sn); i += 2 {
		colon = append(colon, sn[i:i+2])
	}
	data := map[string]any{"certificate": pemCert(der), "issuing_ca": s.issuingPEM,
		"ca_chain": []string{s.issuingPEM, s.rootPEM}, "private_key": keyPEM, "private_key_type": role.KeyType,
		"serial_number": strings.Join(colon, ":"), "expiration": notAfter.Unix()}
	if role.OmitIssuingCA {
		delete(data, "issuing_ca")
		delete(data, "ca_chain")
	}
	writeJSON(w, http.StatusOK, envelope(data, nil, warnings))
}

// newKey generates a key the way Vault's default private_key_format (der,
// PEM-encoded) returns it: SEC 1 for EC, PKCS #1 for RSA.
func newKey(kind string) (pub any, keyPEM string, err error) {
	switch kind {
	case "rsa":
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, "", err
		}
		return &k.PublicKey, string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})), nil
	default:
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, "", err
		}
		b, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return nil, "", err
		}
		return &k.PublicKey, strings.TrimSpace(string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: b}))), nil
	}
}
