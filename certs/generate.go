// Package certs makes, inspects, verifies and watches certificates: a
// development PKI in one call, issuing from an existing CA, inspection and
// libpq-rule verification with classified findings, expiry checks with a
// Prometheus textfile, and Source, the hot-reloading provider of the current
// TLS material that pgtls, the proxy and the Go API read through tls.Config
// callbacks.
package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"strings"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/chain"
	"github.com/pgtrust/pgtrust/internal/keyfile"
)

// KeyType names a key algorithm and size for generated keys.
type KeyType string

// Supported key types. ECDSA P-256 is the default: small, fast, and accepted
// by every supported PostgreSQL and OpenSSL.
const (
	RSA2048   KeyType = "rsa2048"
	RSA4096   KeyType = "rsa4096"
	ECDSAP256 KeyType = "ecdsa-p256"
	ECDSAP384 KeyType = "ecdsa-p384"
	Ed25519   KeyType = "ed25519"
)

// KeyTypes lists the supported key types.
var KeyTypes = []KeyType{RSA2048, RSA4096, ECDSAP256, ECDSAP384, Ed25519}

// ParseKeyType validates s; "" means the default, ECDSAP256.
func ParseKeyType(s string) (KeyType, error) {
	if s == "" {
		return ECDSAP256, nil
	}
	for _, k := range KeyTypes {
		if string(k) == strings.ToLower(s) {
			return k, nil
		}
	}
	return "", failure.New(failure.ConfigInvalid, "invalid key type %q", s).
		WithFix("use one of %s", joinKeyTypes())
}

func joinKeyTypes() string {
	s := make([]string, len(KeyTypes))
	for i, k := range KeyTypes {
		s[i] = string(k)
	}
	return strings.Join(s, ", ")
}

// GenerateKey returns a new private key of type kt.
func GenerateKey(kt KeyType) (crypto.Signer, error) {
	switch kt {
	case RSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	case RSA4096:
		return rsa.GenerateKey(rand.Reader, 4096)
	case ECDSAP256, "":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case ECDSAP384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case Ed25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}
	_, err := ParseKeyType(string(kt))
	return nil, err
}

// KeyPair is a certificate with its private key.
type KeyPair struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	// Chain holds the issuing certificates after Cert, leaf first, for
	// certificates issued by an intermediate. It is written after the leaf.
	Chain []*x509.Certificate
}

// CertPEM returns the certificate (and Chain) in PEM, leaf first.
func (p *KeyPair) CertPEM() []byte {
	out := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.Cert.Raw})
	for _, c := range p.Chain {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// KeyPEM returns the private key as PKCS#8 PEM, encrypted when password is
// not empty.
func (p *KeyPair) KeyPEM(password string) ([]byte, error) {
	if password != "" {
		return keyfile.EncryptPrivateKeyPEM(p.Key, password)
	}
	return keyfile.EncodePrivateKeyPEM(p.Key)
}

// Options describe a certificate to create.
type Options struct {
	// CommonName of the subject. For servers it defaults to the first host
	// (libpq falls back to the CN only without SANs, but old tools read it);
	// for clients it is the PostgreSQL user name that `cert` auth compares.
	CommonName string
	// Organization is an optional subject O.
	Organization string
	// Hosts become SANs: IP literals as iPAddress, the rest as dNSName.
	Hosts []string
	// KeyType of the new key; ignored when Key is set.
	KeyType KeyType
	// Key, when set, is certified instead of a new key (re-issuing).
	Key crypto.Signer
	// Validity is how long the certificate is valid from NotBefore.
	// Default: 365 days for leaves, 10 years for a CA.
	Validity time.Duration
	// NotBefore defaults to one hour ago, so that small clock skew between
	// the generating host and the server does not make it "not yet valid".
	NotBefore time.Time
}

const day = 24 * time.Hour

func (o *Options) fill(defaultValidity time.Duration) (crypto.Signer, error) {
	if o.Validity <= 0 {
		o.Validity = defaultValidity
	}
	if o.NotBefore.IsZero() {
		o.NotBefore = time.Now().Add(-time.Hour).Truncate(time.Second)
	}
	if o.Key != nil {
		return o.Key, nil
	}
	return GenerateKey(o.KeyType)
}

func serialNumber() (*big.Int, error) {
	// 127 random bits: positive, and unique without coordination.
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// NewCA creates a self-signed root CA.
func NewCA(opts Options) (*KeyPair, error) {
	return newCA(nil, opts, 10*365*day, "pgtrust development CA")
}

// NewIntermediate creates an intermediate CA signed by parent.
func NewIntermediate(parent *KeyPair, opts Options) (*KeyPair, error) {
	return newCA(parent, opts, 5*365*day, "pgtrust intermediate CA")
}

// newCA creates a CA certificate: self-signed when parent is nil, else
// signed by parent and ending no later than it.
func newCA(parent *KeyPair, opts Options, validity time.Duration, defaultCN string) (*KeyPair, error) {
	what := "CA"
	if parent != nil {
		what = "intermediate CA"
	}
	key, err := opts.fill(validity)
	if err != nil {
		return nil, fmt.Errorf("generate %s key: %w", what, err)
	}
	if opts.CommonName == "" {
		opts.CommonName = defaultCN
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	notAfter := opts.NotBefore.Add(opts.Validity)
	if parent != nil {
		notAfter = clampNotAfter(notAfter, parent)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject(opts),
		NotBefore:             opts.NotBefore,
		NotAfter:              notAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	return create(tmpl, parent, key)
}

// IssueServer issues a server certificate for opts.Hosts from ca.
func IssueServer(ca *KeyPair, opts Options) (*KeyPair, error) {
	if len(opts.Hosts) == 0 {
		return nil, failure.New(failure.ConfigInvalid, "a server certificate needs at least one host name or IP address").
			WithFix("pass the names clients use in host=, e.g. --hosts db.example.com,10.0.0.5")
	}
	if opts.CommonName == "" {
		opts.CommonName = opts.Hosts[0]
	}
	return issueLeaf(ca, opts, x509.ExtKeyUsageServerAuth)
}

// IssueClient issues a client certificate whose CN is opts.CommonName, the
// PostgreSQL user name.
func IssueClient(ca *KeyPair, opts Options) (*KeyPair, error) {
	if opts.CommonName == "" {
		return nil, failure.New(failure.ConfigInvalid, "a client certificate needs a user name (its CN)").
			WithFix("pass the PostgreSQL user name, e.g. --user app")
	}
	return issueLeaf(ca, opts, x509.ExtKeyUsageClientAuth)
}

func issueLeaf(ca *KeyPair, opts Options, usage x509.ExtKeyUsage) (*KeyPair, error) {
	if ca == nil || ca.Cert == nil || ca.Key == nil {
		return nil, failure.New(failure.ConfigInvalid, "issuing needs a CA certificate and its key")
	}
	if !ca.Cert.IsCA {
		return nil, failure.New(failure.ConfigInvalid, "certificate %q is not a CA", ca.Cert.Subject.String()).
			WithEvidence("its basicConstraints do not have CA:TRUE").
			WithFix("pass the CA certificate (ca.crt) and its key, not a server or client certificate")
	}
	if !keyfile.KeyMatches(ca.Cert, ca.Key) {
		return nil, failure.New(failure.KeyMismatch, "CA certificate does not match the CA key: key values mismatch").
			WithEvidence("CA %q has public key %s; the CA key's public key is %s",
				ca.Cert.Subject.String(), keyfile.PublicKeyFingerprint(ca.Cert.PublicKey), keyfile.PublicKeyFingerprint(ca.Key.Public())).
			WithFix("pass the key that belongs to the CA certificate")
	}
	key, err := opts.fill(365 * day)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject(opts),
		NotBefore:             opts.NotBefore,
		NotAfter:              clampNotAfter(opts.NotBefore.Add(opts.Validity), ca),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{usage},
	}
	if _, isRSA := key.(*rsa.PrivateKey); isRSA {
		// TLS 1.2 RSA key exchange needs keyEncipherment.
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	for _, h := range opts.Hosts {
		h = strings.TrimSpace(h)
		if h == "" {
			continue
		}
		if ip := net.ParseIP(strings.Trim(h, "[]")); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	pair, err := create(tmpl, ca, key)
	if err != nil {
		return nil, err
	}
	// Intermediates travel with the leaf so that peers holding only the
	// root can build the chain.
	if !chain.IsSelfSigned(ca.Cert) {
		pair.Chain = append([]*x509.Certificate{ca.Cert}, ca.Chain...)
	}
	return pair, nil
}

// clampNotAfter keeps a certificate from outliving its issuer, which would
// only make it fail verification early in a confusing way.
func clampNotAfter(t time.Time, issuer *KeyPair) time.Time {
	if issuer != nil && t.After(issuer.Cert.NotAfter) {
		return issuer.Cert.NotAfter
	}
	return t
}

func subject(o Options) pkix.Name {
	n := pkix.Name{CommonName: o.CommonName}
	if o.Organization != "" {
		n.Organization = []string{o.Organization}
	}
	return n
}

func create(tmpl *x509.Certificate, parent *KeyPair, key crypto.Signer) (*KeyPair, error) {
	issuerCert, issuerKey := tmpl, key
	if parent != nil {
		issuerCert, issuerKey = parent.Cert, parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuerCert, key.Public(), issuerKey)
	if err != nil {
		return nil, fmt.Errorf("create certificate %q: %w", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &KeyPair{Cert: cert, Key: key}, nil
}

// LoadKeyPair loads a certificate (chain) and key from files, for example a
// CA to issue from; an encrypted key needs password.
func LoadKeyPair(certPath, keyPath, password string) (*KeyPair, error) {
	pair, err := keyfile.LoadKeyPair(certPath, keyPath, password)
	if err != nil {
		return nil, err
	}
	out := &KeyPair{Cert: pair.Leaf, Key: pair.PrivateKey.(crypto.Signer)}
	for _, der := range pair.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		out.Chain = append(out.Chain, c)
	}
	return out, nil
}
