// Package hostmatch implements libpq's server host-name check (used only
// for sslmode=verify-full), which differs from Go's crypto/x509 in ways that
// change verdicts:
//
//   - dNSName SANs are compared for every host, IP literals included;
//   - iPAddress SANs are compared byte-wise for IP hosts;
//   - the first subject CN is used only when the certificate has no SAN of
//     the host's own type (so an IP host may match the CN even when dNSName
//     SANs exist);
//   - a wildcard is only "*." as the whole leftmost label, matching exactly
//     one non-empty label;
//   - comparisons are case-insensitive;
//   - IPv4 literals are recognised as inet_aton does (127.1, 0x7f.0.0.1).
package hostmatch

import (
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/pgtrust/pgtrust/failure"
)

// Verify reports whether cert is valid for host under libpq's rules. On a
// mismatch it returns a *failure.Error of class HostnameMismatch whose
// message is libpq's and whose evidence lists every name the certificate
// carries.
func Verify(cert *x509.Certificate, host string) error {
	if host == "" {
		return failure.New(failure.HostnameMismatch, "host name must be specified for a verified SSL connection").
			WithEvidence("sslmode=verify-full checks the server certificate against host, and only hostaddr was given").
			WithFix("add host=<the name in the server certificate> next to hostaddr, or use sslmode=verify-ca")
	}
	hostIP := ParseIP(host)
	checkCN := true
	examined := 0
	first := ""
	note := func(name string) {
		examined++
		if first == "" {
			first = name
		}
	}
	sans, err := subjectAltNames(cert)
	if err != nil {
		return failure.Wrap(failure.HostnameMismatch, err, "could not get server's host name from server certificate")
	}
	for _, san := range sans {
		switch san.kind {
		case sanDNS:
			if hostIP == nil {
				checkCN = false
			}
			if strings.IndexByte(san.value, 0) >= 0 {
				return embeddedNull()
			}
			note(san.value)
			if NameMatches(san.value, host) {
				return nil
			}
		case sanIP:
			if hostIP != nil {
				checkCN = false
			}
			if len(san.ip) != net.IPv4len && len(san.ip) != net.IPv6len {
				return failure.New(failure.HostnameMismatch, "certificate contains IP address with invalid length %d", len(san.ip))
			}
			note(net.IP(san.ip).String())
			if hostIP != nil && ipEqual(san.ip, hostIP) {
				return nil
			}
		}
	}
	if checkCN {
		if cn, ok := firstCN(cert); ok {
			if strings.IndexByte(cn, 0) >= 0 {
				return embeddedNull()
			}
			note(cn)
			if NameMatches(cn, host) {
				return nil
			}
		}
	}
	return mismatch(cert, host, examined, first)
}

func embeddedNull() error {
	return failure.New(failure.HostnameMismatch, "SSL certificate's name contains embedded null").
		WithEvidence("a name in the server certificate contains a NUL byte, a known spoofing technique (CVE-2009-4034)").
		WithFix("do not trust this server certificate; have the server's certificate reissued")
}

func mismatch(cert *x509.Certificate, host string, examined int, first string) error {
	var e *failure.Error
	switch {
	case examined == 0:
		e = failure.New(failure.HostnameMismatch, "could not get server's host name from server certificate")
	case examined == 1:
		e = failure.New(failure.HostnameMismatch, "server certificate for %q does not match host name %q", first, host)
	case examined == 2:
		e = failure.New(failure.HostnameMismatch, "server certificate for %q (and %d other name) does not match host name %q", first, examined-1, host)
	default:
		e = failure.New(failure.HostnameMismatch, "server certificate for %q (and %d other names) does not match host name %q", first, examined-1, host)
	}
	e.Evidence = Describe(cert) + "; you connected to " + host
	if ParseIP(host) != nil {
		e.Fix = fmt.Sprintf("connect with host= set to a name the certificate carries (keep the address in hostaddr=%s), or reissue the server certificate with the SAN IP:%s", host, host)
	} else {
		e.Fix = fmt.Sprintf("connect with host= set to a name the certificate carries, or reissue the server certificate with the SAN DNS:%s", host)
	}
	return e
}

// Describe lists the names a certificate carries, for evidence strings:
// `server presented SANs db.internal, 10.0.0.5 (CN db)`.
func Describe(cert *x509.Certificate) string {
	var names []string
	names = append(names, cert.DNSNames...)
	for _, ip := range cert.IPAddresses {
		names = append(names, ip.String())
	}
	cn := cert.Subject.CommonName
	switch {
	case len(names) == 0 && cn == "":
		return "server presented a certificate with no SAN and no CN"
	case len(names) == 0:
		return fmt.Sprintf("server presented a certificate with no SAN, CN %q", cn)
	case cn == "":
		return "server presented SANs " + strings.Join(names, ", ")
	}
	return fmt.Sprintf("server presented SANs %s (CN %q)", strings.Join(names, ", "), cn)
}

// NameMatches compares a certificate name with a host name as libpq does:
// case-insensitive equality, or a "*." wildcard standing for exactly one
// leftmost label.
func NameMatches(pattern, host string) bool {
	if strings.EqualFold(pattern, host) {
		return true
	}
	if len(pattern) < 3 || pattern[0] != '*' || pattern[1] != '.' || len(pattern) > len(host) {
		return false
	}
	// The suffix after "*" must match the end of host ...
	suffixStart := len(host) - len(pattern) + 1
	if !strings.EqualFold(pattern[1:], host[suffixStart:]) {
		return false
	}
	// ... and the part the "*" stands for must not contain a dot.
	return strings.IndexByte(host[:suffixStart], '.') < 0
}

// ParseIP recognises an IP literal the way libpq does (inet_aton for IPv4,
// so "127.1" and "0x7f.0.0.1" count; inet_pton for IPv6). It returns nil for
// a DNS name.
func ParseIP(host string) net.IP {
	if strings.Contains(host, ":") {
		return net.ParseIP(host) // 16 bytes, as inet_pton(AF_INET6) gives
	}
	return inetAton(host)
}

// inetAton parses IPv4 numbers-and-dots notation with 1-4 parts, each in
// decimal, octal (leading 0) or hex (0x), the last part filling the
// remaining bytes.
func inetAton(s string) net.IP {
	if s == "" {
		return nil
	}
	parts := strings.Split(s, ".")
	if len(parts) > 4 {
		return nil
	}
	vals := make([]uint64, len(parts))
	for i, p := range parts {
		if p == "" {
			return nil
		}
		base := 10
		digits := p
		switch {
		case len(p) > 1 && (p[:2] == "0x" || p[:2] == "0X"):
			base, digits = 16, p[2:]
			if digits == "" {
				digits = "0" // inet_aton accepts "0x" as zero
			}
		case len(p) > 1 && p[0] == '0':
			base, digits = 8, p[1:]
		}
		v, err := strconv.ParseUint(digits, base, 32)
		if err != nil {
			return nil
		}
		vals[i] = v
	}
	var n uint64
	last := len(vals) - 1
	for i := 0; i < last; i++ {
		if vals[i] > 0xff {
			return nil
		}
		n |= vals[i] << (8 * uint(3-i))
	}
	if vals[last] > uint64(0xffffffff)>>(8*uint(last)) {
		return nil
	}
	n |= vals[last]
	return net.IPv4(byte(n>>24), byte(n>>16), byte(n>>8), byte(n)).To4()
}

func ipEqual(san []byte, host net.IP) bool {
	if len(san) == net.IPv4len {
		h := host.To4()
		// An IPv4 SAN matches only an IPv4 host (inet_aton), not ::ffff:a.b.c.d.
		return h != nil && len(host) == net.IPv4len && string(h) == string(san)
	}
	h := host.To16()
	return len(host) == net.IPv6len && string(h) == string(san)
}

type sanKind int

const (
	sanOther sanKind = iota
	sanDNS
	sanIP
)

type san struct {
	kind  sanKind
	value string
	ip    []byte
}

var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// RawSubjectAltNames returns the GeneralName entries of the certificate's
// subjectAltName extension in certificate order and as signed (crypto/x509
// splits them by type and re-renders URIs, losing both); nil without the
// extension. A malformed extension is an error.
func RawSubjectAltNames(cert *x509.Certificate) ([]asn1.RawValue, error) {
	for _, ext := range cert.Extensions {
		if !ext.Id.Equal(oidSubjectAltName) {
			continue
		}
		var seq asn1.RawValue
		rest, err := asn1.Unmarshal(ext.Value, &seq)
		if err != nil || len(rest) != 0 || !seq.IsCompound || seq.Tag != asn1.TagSequence || seq.Class != asn1.ClassUniversal {
			return nil, fmt.Errorf("malformed subjectAltName extension")
		}
		var out []asn1.RawValue
		data := seq.Bytes
		for len(data) > 0 {
			var v asn1.RawValue
			data, err = asn1.Unmarshal(data, &v)
			if err != nil {
				return nil, fmt.Errorf("malformed subjectAltName entry: %w", err)
			}
			if v.Class == asn1.ClassContextSpecific {
				out = append(out, v)
			}
		}
		return out, nil
	}
	return nil, nil
}

// subjectAltNames returns the DNS and IP SANs in certificate order, which
// the error message depends on (libpq names the first one examined).
func subjectAltNames(cert *x509.Certificate) ([]san, error) {
	raw, err := RawSubjectAltNames(cert)
	if err != nil {
		return nil, err
	}
	var out []san
	for _, v := range raw {
		switch v.Tag {
		case 2:
			out = append(out, san{kind: sanDNS, value: string(v.Bytes)})
		case 7:
			out = append(out, san{kind: sanIP, ip: append([]byte(nil), v.Bytes...)})
		}
	}
	return out, nil
}

var oidCommonName = asn1.ObjectIdentifier{2, 5, 4, 3}

// firstCN returns the first commonName attribute of the subject, as
// OpenSSL's X509_NAME_get_index_by_NID(..., -1) finds it.
func firstCN(cert *x509.Certificate) (string, bool) {
	for _, atv := range cert.Subject.Names {
		if atv.Type.Equal(oidCommonName) {
			if s, ok := atv.Value.(string); ok {
				return s, true
			}
		}
	}
	return "", false
}
