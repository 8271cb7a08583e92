// Package identmap turns a verified client certificate into the identities
// it asserts (SAN URIs such as SPIFFE IDs, SAN DNS names, the subject CN)
// and decides, with PostgreSQL's pg_ident.conf semantics, whether one of
// those identities may log in as the role a client asked for.
//
// The map file is "IDENTITY ROLE" per line: pg_ident.conf without the map
// name column, tokenized as PostgreSQL tokenizes it (blanks, # comments,
// double-quoted tokens with "" for a quote, backslash line continuation).
// An IDENTITY starting with "/" is a regular expression and a ROLE may use
// \1 for its first capture group, as in PostgreSQL; a ROLE starting with
// "/" is a regular expression over the requested role (PostgreSQL 16+).
// Where Go's regular expressions or this format differ from PostgreSQL (see
// Rule, NewMap and ParseMapFile) the difference refuses a configuration
// rather than allows more.
package identmap

import (
	"crypto/x509"
	"encoding/asn1"
	"strings"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/hostmatch"
)

// Source names where an identity comes from in the client certificate.
type Source string

// The identity sources.
const (
	// SourceURI is every uniformResourceIdentifier SAN (spiffe://... included),
	// byte for byte as the certificate carries it.
	SourceURI Source = "uri"
	// SourceDNS is every dNSName SAN.
	SourceDNS Source = "dns"
	// SourceCN is the subject commonName, as PostgreSQL's cert method uses it.
	SourceCN Source = "cn"
)

// DefaultSources is the order used when a configuration names none: the
// most specific identity first.
var DefaultSources = []Source{SourceURI, SourceDNS, SourceCN}

// ParseSources checks a configured list of sources: each must be one of
// "uri", "dns", "cn", named once. The order is the preference order of
// Identities (and so of Map.Allowed).
func ParseSources(s []string) ([]Source, error) {
	if len(s) == 0 {
		return nil, failure.New(failure.ConfigInvalid, "no certificate identity source is configured").
			WithEvidence("the identity source list is empty, so no certificate could name a role").
			WithFix(`list one or more of "uri", "dns", "cn", most preferred first`)
	}
	out := make([]Source, 0, len(s))
	for i, name := range s {
		src := Source(name)
		switch src {
		case SourceURI, SourceDNS, SourceCN:
		default:
			return nil, failure.New(failure.ConfigInvalid, "unknown certificate identity source %q", clip(name)).
				WithEvidence("entry %d of the identity source list is %q", i+1, clip(name)).
				WithFix(`use "uri" (SAN URIs, SPIFFE IDs), "dns" (SAN DNS names) or "cn" (subject common name)`)
		}
		for _, prev := range out {
			if prev == src {
				return nil, failure.New(failure.ConfigInvalid, "certificate identity source %q is listed twice", name).
					WithEvidence("entry %d of the identity source list repeats %q", i+1, name).
					WithFix("name each source once, in the order of preference")
			}
		}
		out = append(out, src)
	}
	return out, nil
}

// Identities returns the identities cert asserts, source by source in the
// given order and, within a source, in certificate order. Empty values and
// values containing a NUL byte are left out (PostgreSQL refuses a CN with an
// embedded NUL; such a value could compare equal to a shorter name in C).
// A subject with more than one commonName yields no CN identity: PostgreSQL
// uses the first and other tools the last, so the certificate is ambiguous.
// URIs are taken from the raw extension, not re-rendered from net/url, so a
// rule compares against exactly what the CA signed; only a certificate built
// in memory (no extensions, never parsed) falls back to cert.URIs.
func Identities(cert *x509.Certificate, order []Source) []string {
	if cert == nil {
		return nil
	}
	var out []string
	add := func(v string) {
		if v != "" && strings.IndexByte(v, 0) < 0 {
			out = append(out, v)
		}
	}
	for _, src := range order {
		switch src {
		case SourceURI:
			if raw, ok := rawURIs(cert); ok {
				for _, u := range raw {
					add(u)
				}
			} else {
				for _, u := range cert.URIs {
					add(u.String())
				}
			}
		case SourceDNS:
			for _, d := range cert.DNSNames {
				add(d)
			}
		case SourceCN:
			if cn, ok := onlyCN(cert); ok {
				add(cn)
			}
		}
	}
	return out
}

var oidCommonName = asn1.ObjectIdentifier{2, 5, 4, 3}

// rawURIs returns the uniformResourceIdentifier ([6] IA5String) entries of
// the subjectAltName extension as stored, and whether the certificate has
// extensions at all. A malformed extension yields none: crypto/x509 already
// refused such a certificate, so this is fail-closed belt and braces.
func rawURIs(cert *x509.Certificate) ([]string, bool) {
	raw, err := hostmatch.RawSubjectAltNames(cert)
	if err != nil {
		return nil, true
	}
	var out []string
	for _, v := range raw {
		if v.Tag == 6 && !v.IsCompound {
			out = append(out, string(v.Bytes))
		}
	}
	return out, len(cert.Extensions) > 0
}

// onlyCN returns the subject's commonName when there is exactly one.
func onlyCN(cert *x509.Certificate) (string, bool) {
	cn, n := "", 0
	for _, atv := range cert.Subject.Names {
		if atv.Type.Equal(oidCommonName) {
			s, ok := atv.Value.(string)
			if !ok {
				return "", false
			}
			cn, n = s, n+1
		}
	}
	return cn, n == 1
}

// clip bounds what an error echoes of a configured token.
func clip(s string) string {
	const max = 80
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}
