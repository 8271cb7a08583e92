package scram

import (
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"hash"

	"github.com/pgtrust/pgtrust/failure"
)

// EndpointHash is tls-server-end-point (RFC 5929 section 4.1) of the server
// certificate: its DER hashed with the hash of its signature algorithm,
// SHA-256 when that is MD5 or SHA-1. PostgreSQL's be_tls_get_certificate_hash
// computes the same; like it, EndpointHash refuses signatures without a
// separate hash (Ed25519) and unknown algorithms, so the caller offers plain
// SCRAM-SHA-256 only (a PostgreSQL server with such a certificate offers
// -PLUS and then fails every binding client with "could not find digest for
// NID UNDEF"). For RSA-PSS it uses the PSS hash, as RFC 5929, pgx and libpq
// built with X509_get_signature_info do; older libpq finds no digest for PSS.
func EndpointHash(cert *x509.Certificate) ([]byte, error) {
	if cert == nil || len(cert.Raw) == 0 {
		return nil, failure.New(failure.ConfigInvalid, "channel binding: no server certificate").
			WithEvidence("tls-server-end-point hashes the DER of the server's leaf certificate").
			WithFix("configure the listener's certificate before enabling SCRAM-SHA-256-PLUS")
	}
	var h hash.Hash
	switch cert.SignatureAlgorithm {
	case x509.MD5WithRSA, x509.SHA1WithRSA, x509.DSAWithSHA1, x509.ECDSAWithSHA1,
		x509.SHA256WithRSA, x509.DSAWithSHA256, x509.ECDSAWithSHA256, x509.SHA256WithRSAPSS:
		h = sha256.New()
	case x509.SHA384WithRSA, x509.ECDSAWithSHA384, x509.SHA384WithRSAPSS:
		h = sha512.New384()
	case x509.SHA512WithRSA, x509.ECDSAWithSHA512, x509.SHA512WithRSAPSS:
		h = sha512.New()
	default:
		return nil, failure.New(failure.ConfigInvalid, "channel binding: certificate signature algorithm %s has no tls-server-end-point hash", cert.SignatureAlgorithm).
			WithEvidence("RFC 5929 binds to the hash of the certificate's signature algorithm; %s names none (PostgreSQL refuses it too)", cert.SignatureAlgorithm).
			WithFix("use a certificate signed with ECDSA or RSA over SHA-256/384/512 to offer SCRAM-SHA-256-PLUS, or offer SCRAM-SHA-256 only")
	}
	h.Write(cert.Raw)
	return h.Sum(nil), nil
}
