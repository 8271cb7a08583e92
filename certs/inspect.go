package certs

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/pgtrust/pgtrust/internal/chain"
	"github.com/pgtrust/pgtrust/internal/keyfile"
)

// Info is what `certs inspect` shows about one certificate.
type Info struct {
	Path               string    `json:"path,omitempty"`
	Index              int       `json:"index"` // position in the file or chain, 0 = first
	Subject            string    `json:"subject"`
	Issuer             string    `json:"issuer"`
	DNSNames           []string  `json:"dns_names,omitempty"`
	IPAddresses        []string  `json:"ip_addresses,omitempty"`
	EmailAddresses     []string  `json:"email_addresses,omitempty"`
	URIs               []string  `json:"uris,omitempty"`
	NotBefore          time.Time `json:"not_before"`
	NotAfter           time.Time `json:"not_after"`
	DaysLeft           int       `json:"days_left"` // negative once expired
	Expiry             string    `json:"expiry"`    // "expires in N days", "expired N days ago", "not yet valid …"
	KeyType            string    `json:"key_type"`  // RSA, ECDSA, Ed25519
	KeyBits            int       `json:"key_bits"`
	KeyDetail          string    `json:"key_detail"` // e.g. "ECDSA P-256"
	SignatureAlgorithm string    `json:"signature_algorithm"`
	Serial             string    `json:"serial"`             // hex, as openssl x509 -serial
	FingerprintSHA256  string    `json:"fingerprint_sha256"` // colon-separated, as openssl x509 -fingerprint -sha256
	IsCA               bool      `json:"is_ca"`
	SelfSigned         bool      `json:"self_signed"`
	KeyUsage           []string  `json:"key_usage,omitempty"`
	ExtKeyUsage        []string  `json:"ext_key_usage,omitempty"`
	// ChainNote says how this certificate relates to the next one in a
	// bundle: "issued by the next certificate" or why not.
	ChainNote string `json:"chain_note,omitempty"`
	// ChainOK is false when the next certificate in the bundle did not issue this one.
	ChainOK *bool `json:"chain_ok,omitempty"`
}

// Describe returns the Info for c at time now.
func Describe(c *x509.Certificate, now time.Time) Info {
	info := Info{
		Subject:            c.Subject.String(),
		Issuer:             c.Issuer.String(),
		DNSNames:           c.DNSNames,
		EmailAddresses:     c.EmailAddresses,
		NotBefore:          c.NotBefore.UTC(),
		NotAfter:           c.NotAfter.UTC(),
		DaysLeft:           DaysLeft(c, now),
		Expiry:             ExpiryText(c, now),
		SignatureAlgorithm: c.SignatureAlgorithm.String(),
		Serial:             SerialHex(c),
		FingerprintSHA256:  Fingerprint(c),
		IsCA:               c.IsCA,
		SelfSigned:         chain.IsSelfSigned(c),
	}
	for _, ip := range c.IPAddresses {
		info.IPAddresses = append(info.IPAddresses, ip.String())
	}
	for _, u := range c.URIs {
		info.URIs = append(info.URIs, u.String())
	}
	info.KeyType, info.KeyBits, info.KeyDetail = keyInfo(c.PublicKey)
	info.KeyUsage = keyUsages(c.KeyUsage)
	for _, u := range c.ExtKeyUsage {
		info.ExtKeyUsage = append(info.ExtKeyUsage, extKeyUsageName(u))
	}
	return info
}

// DescribeChain describes a bundle in file order and notes, for each
// certificate, whether the next one issued it (a server or client chain
// file must be leaf first, then each issuer).
func DescribeChain(chain []*x509.Certificate, path string, now time.Time) []Info {
	out := make([]Info, len(chain))
	for i, c := range chain {
		out[i] = Describe(c, now)
		out[i].Path, out[i].Index = path, i
		if i+1 < len(chain) {
			ok := c.CheckSignatureFrom(chain[i+1]) == nil
			out[i].ChainOK = &ok
			if ok {
				out[i].ChainNote = "issued by the next certificate"
			} else {
				out[i].ChainNote = fmt.Sprintf("NOT issued by the next certificate (%q): the bundle is out of order or has an unrelated certificate; order it leaf first, then each issuer", chain[i+1].Subject.String())
			}
		}
	}
	return out
}

// InspectFile loads and describes every certificate in path.
func InspectFile(path string, now time.Time) ([]Info, error) {
	chain, err := keyfile.LoadCertificates(path)
	if err != nil {
		return nil, err
	}
	return DescribeChain(chain, path, now), nil
}

// DaysLeft is the number of whole days until c expires, negative after.
func DaysLeft(c *x509.Certificate, now time.Time) int {
	return int(math.Floor(c.NotAfter.Sub(now).Hours() / 24))
}

// ExpiryText renders the validity relative to now for people.
func ExpiryText(c *x509.Certificate, now time.Time) string {
	switch {
	case now.Before(c.NotBefore):
		return "not yet valid (valid " + in(c.NotBefore, now) + ")"
	case now.After(c.NotAfter):
		return "expired " + ago(c.NotAfter, now)
	default:
		return "expires " + in(c.NotAfter, now)
	}
}

func in(t, now time.Time) string {
	d := t.Sub(now)
	if d < day {
		return fmt.Sprintf("in %d hours", int(d.Hours()))
	}
	return fmt.Sprintf("in %d days", int(d/day))
}

func ago(t, now time.Time) string {
	d := now.Sub(t)
	if d < day {
		return fmt.Sprintf("%d hours ago", int(d.Hours()))
	}
	return fmt.Sprintf("%d days ago", int(d/day))
}

// SerialHex renders the serial number in upper-case hex, as
// `openssl x509 -serial` does, and as pg_stat_ssl.client_serial shows it in
// decimal (use c.SerialNumber.String() for that).
func SerialHex(c *x509.Certificate) string {
	s := strings.ToUpper(c.SerialNumber.Text(16))
	if len(s)%2 == 1 {
		s = "0" + s
	}
	return s
}

// Fingerprint is the SHA-256 fingerprint of the DER certificate, colon
// separated, as `openssl x509 -fingerprint -sha256` prints it.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	var b strings.Builder
	for i, x := range sum {
		if i > 0 {
			b.WriteByte(':')
		}
		fmt.Fprintf(&b, "%02X", x)
	}
	return b.String()
}

func keyInfo(pub any) (typ string, bits int, detail string) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return "RSA", k.N.BitLen(), fmt.Sprintf("RSA %d", k.N.BitLen())
	case *ecdsa.PublicKey:
		return "ECDSA", k.Curve.Params().BitSize, "ECDSA " + k.Curve.Params().Name
	case ed25519.PublicKey:
		return "Ed25519", 256, "Ed25519"
	}
	return fmt.Sprintf("%T", pub), 0, fmt.Sprintf("%T", pub)
}

func keyUsages(u x509.KeyUsage) []string {
	names := []string{"digitalSignature", "contentCommitment", "keyEncipherment", "dataEncipherment",
		"keyAgreement", "keyCertSign", "cRLSign", "encipherOnly", "decipherOnly"}
	var out []string
	for i, n := range names {
		if u&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return out
}

func extKeyUsageName(u x509.ExtKeyUsage) string {
	switch u {
	case x509.ExtKeyUsageAny:
		return "any"
	case x509.ExtKeyUsageServerAuth:
		return "serverAuth"
	case x509.ExtKeyUsageClientAuth:
		return "clientAuth"
	case x509.ExtKeyUsageCodeSigning:
		return "codeSigning"
	case x509.ExtKeyUsageEmailProtection:
		return "emailProtection"
	case x509.ExtKeyUsageTimeStamping:
		return "timeStamping"
	case x509.ExtKeyUsageOCSPSigning:
		return "OCSPSigning"
	}
	return fmt.Sprintf("eku(%d)", int(u))
}
