// Package testpki makes certificates, keys and CRLs for tests, in Go, at test
// time: root and intermediate CAs, server and client leaves, self-signed
// certificates, and every key encoding libpq accepts (PKCS#8, legacy
// PKCS#1/SEC1, encrypted PKCS#8, encrypted legacy PEM, DER).
//
// Nothing here is for production: keys are generated fresh per call and every
// failure ends the test with t.Fatal.
package testpki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// KeyType names a key algorithm.
type KeyType string

// Key types. ECDSAP256 is the default: fast to generate and accepted everywhere.
const (
	ECDSAP256 KeyType = "ecdsa-p256"
	ECDSAP384 KeyType = "ecdsa-p384"
	RSA2048   KeyType = "rsa2048"
	Ed25519   KeyType = "ed25519"
)

// Option changes how a certificate is made.
type Option func(*config)

type config struct {
	cn        string
	dns       []string
	ips       []net.IP
	noSANs    bool
	notBefore time.Time
	notAfter  time.Time
	keyType   KeyType
	serial    *big.Int
}

// WithCN sets the subject common name.
func WithCN(cn string) Option { return func(c *config) { c.cn = cn } }

// WithDNS sets the DNS subject alternative names (replacing the defaults).
func WithDNS(names ...string) Option {
	return func(c *config) { c.dns = append([]string{}, names...) }
}

// WithIPs sets the IP subject alternative names (replacing the defaults).
func WithIPs(ips ...net.IP) Option {
	return func(c *config) { c.ips = append([]net.IP{}, ips...) }
}

// NoSANs drops every subject alternative name, so only the CN names the
// certificate (libpq then falls back to the CN; Go's verifier does not).
func NoSANs() Option { return func(c *config) { c.noSANs = true } }

// WithValidity sets the validity period.
func WithValidity(notBefore, notAfter time.Time) Option {
	return func(c *config) { c.notBefore, c.notAfter = notBefore, notAfter }
}

// Expired makes a certificate that expired a day ago.
func Expired() Option {
	return func(c *config) {
		now := time.Now()
		c.notBefore, c.notAfter = now.Add(-72*time.Hour), now.Add(-24*time.Hour)
	}
}

// NotYetValid makes a certificate that becomes valid in a day.
func NotYetValid() Option {
	return func(c *config) {
		now := time.Now()
		c.notBefore, c.notAfter = now.Add(24*time.Hour), now.Add(72*time.Hour)
	}
}

// WithKeyType sets the key algorithm (default ECDSAP256).
func WithKeyType(k KeyType) Option { return func(c *config) { c.keyType = k } }

// WithSerial sets the serial number (default: random 128-bit).
func WithSerial(serial *big.Int) Option {
	return func(c *config) { c.serial = new(big.Int).Set(serial) }
}

func newConfig(defaults config, opts []Option) config {
	c := defaults
	for _, o := range opts {
		o(&c)
	}
	if c.keyType == "" {
		c.keyType = ECDSAP256
	}
	if c.notBefore.IsZero() && c.notAfter.IsZero() {
		// An hour of slack before now absorbs clock skew between the test
		// process and the servers it starts.
		now := time.Now()
		c.notBefore, c.notAfter = now.Add(-time.Hour), now.Add(30*24*time.Hour)
	}
	if c.noSANs {
		c.dns, c.ips = nil, nil
	}
	return c
}

// CA is a certificate authority: a root, or an intermediate signed by its Parent.
type CA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
	KeyPEM  []byte // unencrypted PKCS#8
	// ChainPEM is this CA followed by the intermediates above it, excluding the
	// root (for a root it equals CertPEM).
	ChainPEM []byte
	Parent   *CA // nil for a root

	crlNumber atomic.Int64
}

// Leaf is an end-entity certificate and its key.
type Leaf struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
	KeyPEM  []byte // unencrypted PKCS#8
	// ChainPEM is the leaf followed by its issuing intermediates (never the root):
	// what a server sends and what a client puts in postgresql.crt.
	ChainPEM []byte
	Issuer   *CA // nil when self-signed
}

// NewRootCA makes a self-signed root CA named cn.
func NewRootCA(t testing.TB, cn string, opts ...Option) *CA {
	t.Helper()
	c := newConfig(config{cn: cn}, opts)
	key := newKey(t, c.keyType)
	tmpl := caTemplate(t, c)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatalf("testpki: create root CA %q: %v", c.cn, err)
	}
	cert := parse(t, der)
	ca := &CA{Cert: cert, Key: key, CertPEM: certPEM(der), KeyPEM: KeyPEMPKCS8(key)}
	ca.ChainPEM = ca.CertPEM
	return ca
}

// NewIntermediate makes an intermediate CA named cn, signed by ca.
func (ca *CA) NewIntermediate(t testing.TB, cn string, opts ...Option) *CA {
	t.Helper()
	c := newConfig(config{cn: cn}, opts)
	key := newKey(t, c.keyType)
	der, err := x509.CreateCertificate(rand.Reader, caTemplate(t, c), ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatalf("testpki: create intermediate CA %q: %v", c.cn, err)
	}
	inter := &CA{Cert: parse(t, der), Key: key, CertPEM: certPEM(der), KeyPEM: KeyPEMPKCS8(key), Parent: ca}
	inter.ChainPEM = concat(inter.CertPEM, ca.chainBelowRoot())
	return inter
}

// chainBelowRoot is ca's ChainPEM for an intermediate, and nothing for a root.
func (ca *CA) chainBelowRoot() []byte {
	if ca.Parent == nil {
		return nil
	}
	return ca.ChainPEM
}

// Root returns the root CA above ca (ca itself for a root).
func (ca *CA) Root() *CA {
	for ca.Parent != nil {
		ca = ca.Parent
	}
	return ca
}

// Pool returns a cert pool holding only this CA's certificate.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Server makes a server certificate signed by ca. Defaults: CN "localhost",
// DNS SAN localhost, IP SANs 127.0.0.1 and ::1.
func (ca *CA) Server(t testing.TB, opts ...Option) *Leaf {
	t.Helper()
	c := newConfig(config{
		cn:  "localhost",
		dns: []string{"localhost"},
		ips: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}, opts)
	return ca.leaf(t, c, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth})
}

// Client makes a client certificate with CN cn (PostgreSQL maps the CN to the
// user name), signed by ca. It has no SANs unless WithDNS/WithIPs are given.
func (ca *CA) Client(t testing.TB, cn string, opts ...Option) *Leaf {
	t.Helper()
	c := newConfig(config{cn: cn}, opts)
	return ca.leaf(t, c, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})
}

func (ca *CA) leaf(t testing.TB, c config, eku []x509.ExtKeyUsage) *Leaf {
	t.Helper()
	key := newKey(t, c.keyType)
	tmpl := baseTemplate(t, c)
	tmpl.KeyUsage = leafKeyUsage(key)
	tmpl.ExtKeyUsage = eku
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatalf("testpki: create leaf %q: %v", c.cn, err)
	}
	pemCert := certPEM(der)
	return &Leaf{
		Cert:     parse(t, der),
		Key:      key,
		CertPEM:  pemCert,
		KeyPEM:   KeyPEMPKCS8(key),
		ChainPEM: concat(pemCert, ca.chainBelowRoot()),
		Issuer:   ca,
	}
}

// SelfSigned makes a self-signed certificate usable as a server or client
// certificate and as its own trust anchor, like `openssl req -x509` makes.
// Defaults match Server: CN "localhost", SANs localhost, 127.0.0.1, ::1.
func SelfSigned(t testing.TB, opts ...Option) *Leaf {
	t.Helper()
	c := newConfig(config{
		cn:  "localhost",
		dns: []string{"localhost"},
		ips: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}, opts)
	key := newKey(t, c.keyType)
	tmpl := baseTemplate(t, c)
	// CA:TRUE, as openssl req -x509 does by default, so OpenSSL and Go both
	// accept it as a root when it is the sslrootcert.
	tmpl.IsCA = true
	tmpl.BasicConstraintsValid = true
	tmpl.KeyUsage = leafKeyUsage(key) | x509.KeyUsageCertSign
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatalf("testpki: create self-signed %q: %v", c.cn, err)
	}
	pemCert := certPEM(der)
	return &Leaf{Cert: parse(t, der), Key: key, CertPEM: pemCert, KeyPEM: KeyPEMPKCS8(key), ChainPEM: pemCert}
}

// CRL returns a PEM X.509 CRL signed by ca that revokes the given
// certificates (none is allowed), valid from an hour ago for a day.
func (ca *CA) CRL(t testing.TB, revoked ...*x509.Certificate) []byte {
	t.Helper()
	now := time.Now()
	return ca.CRLAt(t, now.Add(-time.Hour), now.Add(24*time.Hour), revoked...)
}

// CRLAt is CRL with explicit thisUpdate and nextUpdate times (for stale CRLs).
func (ca *CA) CRLAt(t testing.TB, thisUpdate, nextUpdate time.Time, revoked ...*x509.Certificate) []byte {
	t.Helper()
	entries := make([]x509.RevocationListEntry, 0, len(revoked))
	for _, c := range revoked {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: c.SerialNumber, RevocationTime: thisUpdate})
	}
	tmpl := &x509.RevocationList{
		RevokedCertificateEntries: entries,
		Number:                    big.NewInt(ca.crlNumber.Add(1)),
		ThisUpdate:                thisUpdate,
		NextUpdate:                nextUpdate,
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.Key)
	if err != nil {
		t.Fatalf("testpki: create CRL for %q: %v", ca.Cert.Subject.CommonName, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
}

// TLSCertificate returns the leaf (with its chain) and key for crypto/tls.
func (l *Leaf) TLSCertificate() tls.Certificate {
	c := tls.Certificate{PrivateKey: l.Key, Leaf: l.Cert}
	for rest := l.ChainPEM; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		c.Certificate = append(c.Certificate, b.Bytes)
	}
	return c
}

// WriteFile writes data to dir/name with the given mode (exactly: the umask
// does not apply) and returns the path.
func WriteFile(t testing.TB, dir, name string, data []byte, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatalf("testpki: write %s: %v", path, err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatalf("testpki: chmod %s: %v", path, err)
	}
	return path
}

func newKey(t testing.TB, k KeyType) crypto.Signer {
	t.Helper()
	var (
		key crypto.Signer
		err error
	)
	switch k {
	case ECDSAP256:
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case ECDSAP384:
		key, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case RSA2048:
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	case Ed25519:
		_, key, err = ed25519.GenerateKey(rand.Reader)
	default:
		t.Fatalf("testpki: unknown key type %q", k)
	}
	if err != nil {
		t.Fatalf("testpki: generate %s key: %v", k, err)
	}
	return key
}

func baseTemplate(t testing.TB, c config) *x509.Certificate {
	t.Helper()
	serial := c.serial
	if serial == nil {
		var err error
		serial, err = rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
		if err != nil {
			t.Fatalf("testpki: serial: %v", err)
		}
		serial.Add(serial, big.NewInt(1)) // never zero
	}
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: c.cn},
		NotBefore:    c.notBefore,
		NotAfter:     c.notAfter,
		DNSNames:     c.dns,
		IPAddresses:  c.ips,
	}
}

func caTemplate(t testing.TB, c config) *x509.Certificate {
	tmpl := baseTemplate(t, c)
	tmpl.IsCA = true
	tmpl.BasicConstraintsValid = true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
	return tmpl
}

func leafKeyUsage(key crypto.Signer) x509.KeyUsage {
	ku := x509.KeyUsageDigitalSignature
	if _, ok := key.(*rsa.PrivateKey); ok {
		// TLS 1.2 RSA key exchange needs keyEncipherment.
		ku |= x509.KeyUsageKeyEncipherment
	}
	return ku
}

func parse(t testing.TB, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("testpki: parse generated certificate: %v", err)
	}
	return c
}

func certPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func concat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// String describes a CA for test failure messages.
func (ca *CA) String() string { return fmt.Sprintf("CA(%s)", ca.Cert.Subject.CommonName) }

// CRLv1 returns a PEM version-1 CRL (no version field, no extensions), as
// `openssl ca -gencrl` writes without -crlexts, signed by ca and revoking
// the given certificates, valid from an hour ago for a day. crypto/x509
// cannot write this format, so the TBSCertList is encoded here.
func (ca *CA) CRLv1(t testing.TB, revoked ...*x509.Certificate) []byte {
	t.Helper()
	type entry struct {
		Serial *big.Int
		Time   time.Time `asn1:"utc"`
	}
	now := time.Now().UTC().Truncate(time.Second)
	var algo pkix.AlgorithmIdentifier
	hash := crypto.SHA256
	switch ca.Key.Public().(type) {
	case *ecdsa.PublicKey:
		algo.Algorithm = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	case *rsa.PublicKey:
		algo.Algorithm = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}
		algo.Parameters = asn1.NullRawValue
	case ed25519.PublicKey:
		algo.Algorithm = asn1.ObjectIdentifier{1, 3, 101, 112}
		hash = 0
	default:
		t.Fatalf("testpki: CRLv1: unsupported CA key %T", ca.Key)
	}
	tbs := struct {
		Algo       pkix.AlgorithmIdentifier
		Issuer     asn1.RawValue
		ThisUpdate time.Time `asn1:"utc"`
		NextUpdate time.Time `asn1:"utc"`
		Revoked    []entry   `asn1:"optional"`
	}{Algo: algo, Issuer: asn1.RawValue{FullBytes: ca.Cert.RawSubject}, ThisUpdate: now.Add(-time.Hour), NextUpdate: now.Add(24 * time.Hour)}
	for _, c := range revoked {
		tbs.Revoked = append(tbs.Revoked, entry{Serial: c.SerialNumber, Time: now.Add(-time.Hour)})
	}
	tbsDER, err := asn1.Marshal(tbs)
	if err != nil {
		t.Fatalf("testpki: CRLv1: %v", err)
	}
	signed := tbsDER
	if hash != 0 {
		h := hash.New()
		h.Write(tbsDER)
		signed = h.Sum(nil)
	}
	sig, err := ca.Key.Sign(rand.Reader, signed, hash)
	if err != nil {
		t.Fatalf("testpki: CRLv1: sign: %v", err)
	}
	der, err := asn1.Marshal(struct {
		TBS  asn1.RawValue
		Algo pkix.AlgorithmIdentifier
		Sig  asn1.BitString
	}{asn1.RawValue{FullBytes: tbsDER}, algo, asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)}})
	if err != nil {
		t.Fatalf("testpki: CRLv1: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
}
