package chain

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/pgtrust/pgtrust/internal/keyfile"
)

// This file puts verification failures in pgtrust's own words: crypto/x509's
// texts ("x509: certificate signed by unknown authority (possibly because
// of ...)") name Go internals and never reach a Message or an Evidence.

// KeyFingerprint is the SHA-256 of a certificate's SubjectPublicKeyInfo, in
// hex: what `openssl x509 -pubkey -noout | openssl pkey -pubin -outform der
// | openssl sha256` prints, so that two certificates can be compared by key.
func KeyFingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

// KeyID renders a key identifier as OpenSSL does (AB:CD:…).
func KeyID(id []byte) string {
	parts := make([]string, len(id))
	for i, b := range id {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(parts, ":")
}

// SameNameOtherKey is a chain that names a CA the trust material has, but
// was signed by a different key: typically a CA regenerated under the same
// subject (development PKIs are recreated all the time) while the root
// file still holds the old one, or the other way round.
type SameNameOtherKey struct {
	Child  *x509.Certificate // the certificate whose signature does not verify
	Holder *x509.Certificate // the certificate of the trust material with the issuer's name
}

// FindSameNameOtherKey walks presented from the leaf up to the first
// certificate whose issuer is not in candidates (the trust material): the
// issuer is missing, or is a self-signed root only the peer sent. If
// candidates hold a certificate with that issuer's name, whose key did not
// sign it, that is the case.
func FindSameNameOtherKey(presented, candidates []*x509.Certificate) (SameNameOtherKey, bool) {
	for _, child := range presented {
		if IsSelfSigned(child) {
			return SameNameOtherKey{}, false
		}
		var named []*x509.Certificate
		for _, c := range candidates {
			if !bytes.Equal(c.RawSubject, child.RawIssuer) {
				continue
			}
			if signedBy(child, c) {
				return SameNameOtherKey{}, false // the issuer is at hand: the problem is another one
			}
			named = append(named, c)
		}
		var sent *x509.Certificate
		for _, p := range presented {
			if p != child && bytes.Equal(p.RawSubject, child.RawIssuer) && signedBy(child, p) {
				sent = p
			}
		}
		if sent != nil && !IsSelfSigned(sent) {
			continue // an intermediate the peer sent: look higher
		}
		if len(named) == 0 {
			return SameNameOtherKey{}, false
		}
		return SameNameOtherKey{Child: child, Holder: named[0]}, true
	}
	return SameNameOtherKey{}, false
}

func signedBy(child, issuer *x509.Certificate) bool {
	return issuer.CheckSignature(child.SignatureAlgorithm, child.RawTBSCertificate, child.Signature) == nil
}

// Evidence says what was found, with the numbers to compare.
func (s SameNameOtherKey) Evidence(rootFile, described string) string {
	where := rootFile
	if where == "" {
		where = "the trust anchors"
	}
	b := &strings.Builder{}
	fmt.Fprintf(b, "%s holds %s (key SHA-256 %s", where, s.Holder.Subject, KeyFingerprint(s.Holder))
	if len(s.Holder.SubjectKeyId) > 0 {
		fmt.Fprintf(b, ", subject key id %s", KeyID(s.Holder.SubjectKeyId))
	}
	fmt.Fprintf(b, "), but the %s was signed by a different key with the same name", described)
	if len(s.Child.AuthorityKeyId) > 0 {
		fmt.Fprintf(b, " (authority key id %s)", KeyID(s.Child.AuthorityKeyId))
	}
	b.WriteString(": the CA was probably regenerated under the same name")
	return b.String()
}

// Fix says how to make the two agree again.
func (s SameNameOtherKey) Fix(rootFile, role string) string {
	where := rootFile
	if where == "" {
		where = "the trust anchors"
	}
	peer := "the peer's"
	switch role {
	case "server":
		peer = "the server's"
	case "client":
		peer = "the client's"
	}
	fix := fmt.Sprintf("copy the current certificate of %s (the CA whose key signed %s certificate) into %s; "+
		"or, if the CA in %s is the right one, reissue %s certificate from it",
		s.Holder.Subject, peer, where, where, peer)
	if len(s.Child.AuthorityKeyId) > 0 && rootFile != "" {
		fix += "; the right CA's subject key id equals the authority key id above (openssl x509 -in CA.crt -noout -ext subjectKeyIdentifier)"
	}
	return fix
}

// sameNameOtherKey looks for that case with the trust material at hand: the
// extra chain material and the root file, read again (the pool of anchors
// cannot be listed). It is only called on a failure that is being
// explained, so the extra read costs nothing on the success path.
func sameNameOtherKey(presented []*x509.Certificate, o Options) (SameNameOtherKey, bool) {
	candidates := append([]*x509.Certificate{}, o.Intermediates...)
	if o.RootFile != "" && o.RootFile != "system" {
		if certs, err := keyfile.LoadCertificates(o.RootFile); err == nil {
			candidates = append(candidates, certs...)
		}
	}
	if len(candidates) == 0 {
		return SameNameOtherKey{}, false
	}
	return FindSameNameOtherKey(presented, candidates)
}

// reason puts an error of crypto/x509's in pgtrust's words, for the cases
// the chain checks above do not already name.
func reason(err error, leaf *x509.Certificate, role string) string {
	var ci x509.CertificateInvalidError
	var uce x509.UnhandledCriticalExtension
	var ia x509.InsecureAlgorithmError
	var cv x509.ConstraintViolationError
	var sr x509.SystemRootsError
	var he x509.HostnameError
	var ua x509.UnknownAuthorityError
	switch {
	case errors.As(err, &ci):
		what := "a certificate of the chain"
		if ci.Cert != nil {
			what = Describe(ci.Cert, ci.Cert == leaf, role)
		}
		return what + " " + invalidReason(ci)
	case errors.As(err, &ia):
		return fmt.Sprintf("a certificate of the chain is signed with %s, an algorithm that is no longer accepted (SHA-1 or MD5)", x509.SignatureAlgorithm(ia))
	case errors.As(err, &uce):
		return "a certificate of the chain has a critical extension that is not understood, so it must be refused"
	case errors.As(err, &cv):
		return "a certificate of the chain may not be used for signing certificates (its key usage forbids it)"
	case errors.As(err, &sr):
		return "the system trust store could not be loaded"
	case errors.As(err, &he):
		return fmt.Sprintf("the certificate is not valid for %q", he.Host)
	case errors.As(err, &ua):
		return "the chain does not lead to a trusted self-signed CA"
	case errors.Is(err, x509.ErrUnsupportedAlgorithm):
		return "a certificate of the chain uses a key or signature algorithm that is not supported"
	}
	// Something crypto/x509 may add later: keep its words, not its prefix.
	return strings.ReplaceAll(err.Error(), "x509: ", "")
}

func invalidReason(ci x509.CertificateInvalidError) string {
	switch ci.Reason {
	case x509.NotAuthorizedToSign:
		return "signed other certificates but is not a CA (basicConstraints CA:FALSE, or no keyCertSign usage)"
	case x509.Expired:
		return "is outside its validity period"
	case x509.CANotAuthorizedForThisName:
		return "is a CA whose name constraints do not allow the names of the certificate below it"
	case x509.TooManyIntermediates:
		return "is too deep in the chain for the CA's path length constraint"
	case x509.IncompatibleUsage:
		return "does not allow this use (extended key usage: a server needs serverAuth, a client clientAuth)"
	case x509.NameMismatch:
		return "names an issuer that does not match its CA's subject"
	case x509.NameConstraintsWithoutSANs:
		return "has no subject alternative names while its CA has name constraints"
	case x509.UnconstrainedName:
		return "has a name of a kind its CA's name constraints cannot check"
	case x509.TooManyConstraints:
		return "needs too many name-constraint checks to be verified"
	case x509.CANotAuthorizedForExtKeyUsage:
		return "is under a CA that does not allow this use (extended key usage)"
	case x509.NoValidChains:
		return "has no chain that satisfies the verification policy"
	}
	if ci.Detail != "" {
		return "is invalid: " + ci.Detail
	}
	return "is invalid"
}
