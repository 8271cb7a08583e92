package chain

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/keyfile"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// ParseCRL decodes one DER CRL of version 1 or 2, as OpenSSL reads them.
//
// crypto/x509 refuses version-1 CRLs ("unsupported crl version"), but they
// are what `openssl ca -gencrl` writes without -crlexts, so they are common
// in PostgreSQL deployments. Refusing them would either fail closed where
// libpq connects or, worse, let a directory lookup skip the file and check
// nothing. Version 2 goes through crypto/x509; version 1 is parsed here into
// the same x509.RevocationList, whose signature CheckSignatureFrom verifies
// with the issuer's key as for any other CRL.
func ParseCRL(der []byte) (*x509.RevocationList, error) {
	v1, err := isV1CRL(der)
	if err != nil {
		return nil, err
	}
	if !v1 {
		crl, err := x509.ParseRevocationList(der)
		if err != nil {
			// crypto/x509's words stay the cause; the text is ours.
			return nil, fmt.Errorf("malformed CRL (%s): %w", strings.TrimPrefix(err.Error(), "x509: "), errCRLSyntax)
		}
		return crl, nil
	}
	return parseV1CRL(der)
}

// errCRLSyntax marks a CRL that does not parse.
var errCRLSyntax = errors.New("not a valid X.509 CRL")

// isV1CRL reports whether the TBSCertList has no version field: its first
// element is then the signature AlgorithmIdentifier (a SEQUENCE) rather than
// an INTEGER.
func isV1CRL(der []byte) (bool, error) {
	in := cryptobyte.String(der)
	var outer, tbs cryptobyte.String
	if !in.ReadASN1(&outer, cbasn1.SEQUENCE) || !outer.ReadASN1(&tbs, cbasn1.SEQUENCE) {
		return false, errors.New("malformed CRL: not an ASN.1 CertificateList")
	}
	return tbs.PeekASN1Tag(cbasn1.SEQUENCE), nil
}

func parseV1CRL(der []byte) (*x509.RevocationList, error) {
	malformed := func(what string) error { return fmt.Errorf("malformed version 1 CRL: %s", what) }
	in := cryptobyte.String(der)
	var outer cryptobyte.String
	if !in.ReadASN1(&outer, cbasn1.SEQUENCE) || !in.Empty() {
		return nil, malformed("trailing data after the CertificateList")
	}
	var tbsElem, tbs, tbsSigAlg, outerSigAlg cryptobyte.String
	if !outer.ReadASN1Element(&tbsElem, cbasn1.SEQUENCE) {
		return nil, malformed("no TBSCertList")
	}
	if !outer.ReadASN1Element(&outerSigAlg, cbasn1.SEQUENCE) {
		return nil, malformed("no signatureAlgorithm")
	}
	var sig asn1.BitString
	if !outer.ReadASN1BitString(&sig) || sig.BitLength%8 != 0 {
		return nil, malformed("bad signature BIT STRING")
	}
	if !outer.Empty() {
		return nil, malformed("extra fields after the signature")
	}
	rl := &x509.RevocationList{
		Raw:                  der,
		RawTBSRevocationList: tbsElem,
		Signature:            sig.RightAlign(),
	}

	tbs = tbsElem
	if !tbs.ReadASN1(&tbs, cbasn1.SEQUENCE) {
		return nil, malformed("bad TBSCertList")
	}
	if !tbs.ReadASN1Element(&tbsSigAlg, cbasn1.SEQUENCE) {
		return nil, malformed("no signature algorithm in the TBSCertList")
	}
	if !bytes.Equal(tbsSigAlg, outerSigAlg) {
		return nil, malformed("the signature algorithm inside and outside the signed part differ")
	}
	algo, err := signatureAlgorithm(outerSigAlg)
	if err != nil {
		return nil, err
	}
	rl.SignatureAlgorithm = algo

	var issuer cryptobyte.String
	if !tbs.ReadASN1Element(&issuer, cbasn1.SEQUENCE) {
		return nil, malformed("no issuer name")
	}
	rl.RawIssuer = issuer
	var rdns pkix.RDNSequence
	if rest, err := asn1.Unmarshal(issuer, &rdns); err != nil || len(rest) != 0 {
		return nil, malformed("bad issuer name")
	}
	rl.Issuer.FillFromRDNSequence(&rdns)

	if rl.ThisUpdate, err = readTime(&tbs); err != nil {
		return nil, malformed("bad thisUpdate")
	}
	if tbs.PeekASN1Tag(cbasn1.UTCTime) || tbs.PeekASN1Tag(cbasn1.GeneralizedTime) {
		if rl.NextUpdate, err = readTime(&tbs); err != nil {
			return nil, malformed("bad nextUpdate")
		}
	}
	if tbs.PeekASN1Tag(cbasn1.SEQUENCE) {
		var entries cryptobyte.String
		if !tbs.ReadASN1(&entries, cbasn1.SEQUENCE) {
			return nil, malformed("bad revokedCertificates")
		}
		for !entries.Empty() {
			var entry cryptobyte.String
			if !entries.ReadASN1(&entry, cbasn1.SEQUENCE) {
				return nil, malformed("bad revoked certificate entry")
			}
			serial := new(big.Int)
			if !entry.ReadASN1Integer(serial) {
				return nil, malformed("bad serial number in a revoked entry")
			}
			at, err := readTime(&entry)
			if err != nil {
				return nil, malformed("bad revocationDate")
			}
			if !entry.Empty() {
				// Entry extensions exist only in version 2 (RFC 5280 §5.1.2.6).
				return nil, malformed("a revoked entry carries extensions, which only a version 2 CRL may have")
			}
			rl.RevokedCertificateEntries = append(rl.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: serial, RevocationTime: at})
		}
	}
	if !tbs.Empty() {
		// crlExtensions ([0]) require version 2 (RFC 5280 §5.1.2.7); anything
		// else is garbage. Refuse rather than ignore what might be critical.
		return nil, malformed("fields after the revoked list (CRL extensions need version 2)")
	}
	return rl, nil
}

func readTime(s *cryptobyte.String) (time.Time, error) {
	var t time.Time
	switch {
	case s.PeekASN1Tag(cbasn1.UTCTime):
		if !s.ReadASN1UTCTime(&t) {
			return t, errors.New("bad UTCTime")
		}
	case s.PeekASN1Tag(cbasn1.GeneralizedTime):
		if !s.ReadASN1GeneralizedTime(&t) {
			return t, errors.New("bad GeneralizedTime")
		}
	default:
		return t, errors.New("not a time")
	}
	return t, nil
}

// Signature algorithm OIDs (RFC 3279, 4055, 5758, 8410).
var (
	oidSHA1WithRSA     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 5}
	oidSHA256WithRSA   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}
	oidSHA384WithRSA   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 12}
	oidSHA512WithRSA   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 13}
	oidRSAPSS          = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 10}
	oidECDSAWithSHA1   = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 1}
	oidECDSAWithSHA256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	oidECDSAWithSHA384 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 3}
	oidECDSAWithSHA512 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 4}
	oidEd25519         = asn1.ObjectIdentifier{1, 3, 101, 112}
	oidSHA256          = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	oidSHA384          = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 2}
	oidSHA512          = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 3}
)

// signatureAlgorithm maps an AlgorithmIdentifier to crypto/x509's constant,
// so the issuer's CheckSignature does the cryptography.
func signatureAlgorithm(der []byte) (x509.SignatureAlgorithm, error) {
	var ai pkix.AlgorithmIdentifier
	if rest, err := asn1.Unmarshal(der, &ai); err != nil || len(rest) != 0 {
		return 0, errors.New("malformed version 1 CRL: bad signature AlgorithmIdentifier")
	}
	simple := []struct {
		oid  asn1.ObjectIdentifier
		algo x509.SignatureAlgorithm
	}{
		{oidSHA1WithRSA, x509.SHA1WithRSA}, {oidSHA256WithRSA, x509.SHA256WithRSA},
		{oidSHA384WithRSA, x509.SHA384WithRSA}, {oidSHA512WithRSA, x509.SHA512WithRSA},
		{oidECDSAWithSHA1, x509.ECDSAWithSHA1}, {oidECDSAWithSHA256, x509.ECDSAWithSHA256},
		{oidECDSAWithSHA384, x509.ECDSAWithSHA384}, {oidECDSAWithSHA512, x509.ECDSAWithSHA512},
		{oidEd25519, x509.PureEd25519},
	}
	for _, s := range simple {
		if ai.Algorithm.Equal(s.oid) {
			return s.algo, nil
		}
	}
	if ai.Algorithm.Equal(oidRSAPSS) {
		// RSASSA-PSS-params: hashAlgorithm [0] EXPLICIT AlgorithmIdentifier.
		var params struct {
			Hash pkix.AlgorithmIdentifier `asn1:"explicit,tag:0,optional"`
			Rest asn1.RawValue            `asn1:"optional"`
		}
		if _, err := asn1.Unmarshal(ai.Parameters.FullBytes, &params); err == nil {
			switch {
			case params.Hash.Algorithm.Equal(oidSHA256):
				return x509.SHA256WithRSAPSS, nil
			case params.Hash.Algorithm.Equal(oidSHA384):
				return x509.SHA384WithRSAPSS, nil
			case params.Hash.Algorithm.Equal(oidSHA512):
				return x509.SHA512WithRSAPSS, nil
			}
		}
		return 0, errors.New("version 1 CRL: RSASSA-PSS with a hash other than SHA-256/384/512 is not supported")
	}
	return 0, fmt.Errorf("version 1 CRL: unsupported signature algorithm %s", ai.Algorithm)
}

// ParseCRLs decodes one or more PEM "X509 CRL" blocks, or one DER CRL.
func ParseCRLs(data []byte) ([]*x509.RevocationList, error) {
	var out []*x509.RevocationList
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "X509 CRL" {
			continue
		}
		crl, err := ParseCRL(b.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, crl)
	}
	if len(out) > 0 {
		return out, nil
	}
	if bytes.Contains(data, []byte("-----BEGIN")) {
		return nil, errors.New("no X509 CRL block in the PEM file")
	}
	crl, err := ParseCRL(data)
	if err != nil {
		return nil, fmt.Errorf("no PEM X509 CRL block and not a DER CRL: %w", err)
	}
	return []*x509.RevocationList{crl}, nil
}

// CheckRevocation applies OpenSSL's CRL_CHECK|CRL_CHECK_ALL to a built
// chain (leaf first, anchor last) with the given CRLs.
func CheckRevocation(chain []*x509.Certificate, crls []*x509.RevocationList, now time.Time, role string) error {
	return CheckRevocationWithDir(chain, crls, "", now, role)
}

// CheckRevocationWithDir is CheckRevocation with a hashed CRL directory
// (sslcrldir) consulted for each issuer besides crls: every certificate
// below the anchor needs a current CRL from its issuer, correctly signed,
// that does not list it.
func CheckRevocationWithDir(chain []*x509.Certificate, crls []*x509.RevocationList, dir string, now time.Time, role string) error {
	for i := 0; i < len(chain)-1; i++ {
		cert, issuer := chain[i], chain[i+1]
		candidates := crls
		if dir != "" {
			fromDir, err := crlsFromDir(dir, issuer)
			if err != nil {
				return err
			}
			candidates = append(append([]*x509.RevocationList(nil), crls...), fromDir...)
		}
		found, err := selectCRL(candidates, cert, issuer, now)
		if err != nil {
			return err.withChain(issuer, Describe(cert, i == 0, role))
		}
		if now.Before(found.ThisUpdate) {
			return failure.New(failure.CertNotYetValid, VerifyFailed).
				WithEvidence("the CRL from %q is not valid until %s (CRL is not yet valid)", issuer.Subject, found.ThisUpdate.UTC().Format(time.RFC3339)).
				WithFix("check the clocks, or regenerate the CRL")
		}
		if !found.NextUpdate.IsZero() && now.After(found.NextUpdate) {
			return failure.New(failure.CertExpired, VerifyFailed).
				WithEvidence("the CRL from %q expired %s (CRL has expired)", issuer.Subject, found.NextUpdate.UTC().Format(time.RFC3339)).
				WithFix("publish a fresh CRL from the CA (openssl ca -gencrl) and update the CRL file")
		}
		for _, rc := range found.RevokedCertificateEntries {
			if rc.SerialNumber != nil && rc.SerialNumber.Cmp(cert.SerialNumber) == 0 {
				return failure.New(failure.CertRevoked, VerifyFailed).
					WithEvidence("%s (serial %s) was revoked on %s by %q", Describe(cert, i == 0, role), SerialHex(cert.SerialNumber), rc.RevocationTime.UTC().Format("2006-01-02"), issuer.Subject).
					WithFix("present a new, unrevoked certificate; if the revocation is a mistake, reissue the CRL without it")
			}
		}
	}
	return nil
}

// crlSelectionError is why no CRL of an issuer can be used; withChain
// renders it for the certificate being checked.
type crlSelectionError struct {
	kind    string // "none", "signature", "critical"
	matched int    // CRLs that name the issuer
}

func (e *crlSelectionError) withChain(issuer *x509.Certificate, what string) error {
	where := "the CRL file (sslcrl) or directory (sslcrldir, after openssl rehash)"
	switch e.kind {
	case "signature":
		return failure.New(failure.UnknownCA, VerifyFailed).
			WithEvidence("revocation checking is on and the CRL naming %q as issuer was not issued by the key of that CA, the issuer of %s (CRL signature failure, or an authority key id of another key): the CA was probably regenerated under the same name", issuer.Subject, what).
			WithFix("publish a CRL from the current CA (openssl ca -gencrl) into %s", where)
	case "critical":
		return failure.New(failure.UnknownCA, VerifyFailed).
			WithEvidence("the current CRL from %q, the issuer of %s, carries a critical extension that OpenSSL does not handle (unhandled critical CRL extension)", issuer.Subject, what).
			WithFix("publish a CRL without that critical extension into %s", where)
	}
	evidence := fmt.Sprintf("revocation checking is on (a CRL is loaded) but there is no CRL from %q, the issuer of %s; OpenSSL then rejects the chain (unable to get certificate CRL)", issuer.Subject, what)
	if e.matched > 0 {
		evidence += fmt.Sprintf("; %d CRL(s) name that issuer but none can serve as its complete CRL (delta CRLs, CRLs scoped by an issuing distribution point, or another key's authority key id are not used)", e.matched)
	}
	return failure.New(failure.UnknownCA, VerifyFailed).WithEvidence("%s", evidence).
		WithFix("add the complete CRL of %q to %s", issuer.Subject, where)
}

// OIDs of the CRL extensions that OpenSSL handles when critical.
var (
	oidExtAuthorityKeyID = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidExtDeltaCRL       = asn1.ObjectIdentifier{2, 5, 29, 27}
	oidExtIssuingDP      = asn1.ObjectIdentifier{2, 5, 29, 28}
	oidExtCertIssuer     = asn1.ObjectIdentifier{2, 5, 29, 29}
)

// selectCRL picks the CRL that OpenSSL's get_crl_sk would use for cert,
// issued by issuer: among the CRLs that name the issuer, are complete (not
// a delta CRL, no issuing distribution point narrowing their scope), and
// whose authority key id (if any) is the issuer's key, the one with the
// best score (no unhandled critical extension, then currently valid), and
// among equals the newest (latest thisUpdate). Taking the first match
// instead would let an older CRL, still valid, hide a later revocation.
// The chosen CRL must then be signed by the issuer and carry no unhandled
// critical extension, as in OpenSSL's check_crl.
func selectCRL(candidates []*x509.RevocationList, cert, issuer *x509.Certificate, now time.Time) (*x509.RevocationList, *crlSelectionError) {
	var best *x509.RevocationList
	bestScore, matched, otherKey := -1, 0, 0
	for _, crl := range candidates {
		if !sameDistinguishedName(crl.RawIssuer, issuer.RawSubject) {
			continue
		}
		matched++
		if !completeFor(crl, cert) {
			continue
		}
		if len(crl.AuthorityKeyId) > 0 && len(issuer.SubjectKeyId) > 0 && !bytes.Equal(crl.AuthorityKeyId, issuer.SubjectKeyId) {
			otherKey++
			continue
		}
		score := 0
		if !hasUnhandledCritical(crl) {
			score |= 2
		}
		if !now.Before(crl.ThisUpdate) && (crl.NextUpdate.IsZero() || !now.After(crl.NextUpdate)) {
			score |= 1
		}
		if score > bestScore || score == bestScore && crl.ThisUpdate.After(best.ThisUpdate) {
			best, bestScore = crl, score
		}
	}
	switch {
	case best == nil && otherKey > 0 && otherKey == matched:
		return nil, &crlSelectionError{kind: "signature", matched: matched}
	case best == nil:
		return nil, &crlSelectionError{kind: "none", matched: matched}
	case bestScore&2 == 0:
		return nil, &crlSelectionError{kind: "critical", matched: matched}
	case best.CheckSignatureFrom(issuer) != nil:
		return nil, &crlSelectionError{kind: "signature", matched: matched}
	}
	return best, nil
}

// completeFor reports whether crl can serve as cert's complete CRL: not a
// delta CRL, and no issuing distribution point that narrows its scope
// (reasons, indirect, attribute certificates, a distribution point name)
// or excludes cert (only user or only CA certificates). OpenSSL without
// extended CRL support (libpq's setting) refuses the same.
func completeFor(crl *x509.RevocationList, cert *x509.Certificate) bool {
	for _, ext := range crl.Extensions {
		switch {
		case ext.Id.Equal(oidExtDeltaCRL):
			return false
		case ext.Id.Equal(oidExtIssuingDP):
			idp, ok := parseIDP(ext.Value)
			if !ok || idp.hasName || idp.reasons || idp.indirect || idp.onlyAttr ||
				idp.onlyUser && cert.IsCA || idp.onlyCA && !cert.IsCA {
				return false
			}
		}
	}
	return true
}

type issuingDP struct {
	hasName, onlyUser, onlyCA, reasons, indirect, onlyAttr bool
}

// parseIDP reads an IssuingDistributionPoint (RFC 5280 §5.2.5).
func parseIDP(der []byte) (issuingDP, bool) {
	var idp issuingDP
	in := cryptobyte.String(der)
	var seq cryptobyte.String
	if !in.ReadASN1(&seq, cbasn1.SEQUENCE) || !in.Empty() {
		return idp, false
	}
	for !seq.Empty() {
		var tag cbasn1.Tag
		var body cryptobyte.String
		if !seq.ReadAnyASN1(&body, &tag) {
			return idp, false
		}
		flag := len(body) == 1 && body[0] != 0
		switch tag {
		case cbasn1.Tag(0).ContextSpecific().Constructed():
			idp.hasName = true
		case cbasn1.Tag(1).ContextSpecific():
			idp.onlyUser = flag
		case cbasn1.Tag(2).ContextSpecific():
			idp.onlyCA = flag
		case cbasn1.Tag(3).ContextSpecific():
			idp.reasons = true
		case cbasn1.Tag(4).ContextSpecific():
			idp.indirect = flag
		case cbasn1.Tag(5).ContextSpecific():
			idp.onlyAttr = flag
		default:
			return idp, false
		}
	}
	return idp, true
}

// hasUnhandledCritical reports a critical extension OpenSSL does not
// process, on the CRL or on any entry (OpenSSL's EXFLAG_CRITICAL).
func hasUnhandledCritical(crl *x509.RevocationList) bool {
	for _, ext := range crl.Extensions {
		if ext.Critical && !ext.Id.Equal(oidExtAuthorityKeyID) && !ext.Id.Equal(oidExtDeltaCRL) && !ext.Id.Equal(oidExtIssuingDP) {
			return true
		}
	}
	for _, entry := range crl.RevokedCertificateEntries {
		for _, ext := range entry.Extensions {
			if ext.Critical && !ext.Id.Equal(oidExtCertIssuer) {
				return true
			}
		}
	}
	return false
}

// sameDistinguishedName compares two DER names as OpenSSL's X509_NAME_cmp
// does: by canonical encoding, so case and white-space differences and the
// choice of string type do not matter.
func sameDistinguishedName(a, b []byte) bool {
	if bytes.Equal(a, b) {
		return true
	}
	ca, errA := canonicalName(a)
	cb, errB := canonicalName(b)
	return errA == nil && errB == nil && bytes.Equal(ca, cb)
}

// crlsFromDir looks up the CRLs of issuer in a hashed directory as
// OpenSSL's X509_LOOKUP_hash_dir does: the files HASH.r0, HASH.r1, … in
// order until one is missing, HASH being NameHash of the issuer's name.
// Files under other names are never read. Unlike OpenSSL, which stops at a
// file it cannot parse and so may check an issuer against no CRL of that
// file, a hashed file that does not parse fails the verification: a CRL
// that cannot be read must not become a CRL that is not checked.
func crlsFromDir(dir string, issuer *x509.Certificate) ([]*x509.RevocationList, error) {
	hash, err := NameHash(issuer.RawSubject)
	if err != nil {
		return nil, failure.Wrap(failure.ConfigInvalid, err, VerifyFailed).
			WithEvidence("the name of the issuer %q cannot be hashed for the sslcrldir lookup", issuer.Subject)
	}
	var out []*x509.RevocationList
	for k := 0; ; k++ {
		path := filepath.Join(dir, fmt.Sprintf("%s.r%d", hash, k))
		data, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			return out, nil
		}
		if err != nil {
			return nil, failure.Wrap(failure.ConfigInvalid, err, VerifyFailed).
				WithEvidence("the CRL of %q in sslcrldir, %s, could not be read: %s", issuer.Subject, path, keyfile.Reason(err)).
				WithFix("make %s readable by this user", path)
		}
		crls, err := parsePEMCRLs(data)
		if err != nil {
			return nil, failure.Wrap(failure.ConfigInvalid, err, VerifyFailed).
				WithEvidence("%s, the CRL file of %q in sslcrldir (by its hash name), is not a PEM CRL: %v", path, issuer.Subject, err).
				WithFix("replace %s with the CA's current CRL in PEM form (openssl crl -in CRL -outform PEM), then run: openssl rehash %s", path, keyfile.ShellQuote(dir))
		}
		out = append(out, crls...)
	}
}

// parsePEMCRLs reads the CRLs of a hashed-directory file. OpenSSL reads
// those files as PEM only (X509_FILETYPE_PEM), so DER is refused here.
func parsePEMCRLs(data []byte) ([]*x509.RevocationList, error) {
	if !bytes.Contains(data, []byte("-----BEGIN X509 CRL-----")) {
		return nil, errors.New("no PEM X509 CRL block")
	}
	return ParseCRLs(data)
}

// LoadCRLs reads a CRL file. A missing file is an error wrapping
// fs.ErrNotExist (libpq ignores a missing sslcrl; callers decide).
func LoadCRLs(path string) ([]*x509.RevocationList, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, failure.Wrap(failure.ConfigInvalid, err, "SSL certificate revocation list file \"%s\" could not be read", path).
			WithFix("check the path and permissions of %s", path)
	}
	crls, err := ParseCRLs(data)
	if err != nil {
		return nil, failure.Wrap(failure.ConfigInvalid, err, "could not load SSL certificate revocation list \"%s\"", path).
			WithFix("use a PEM (-----BEGIN X509 CRL-----) or DER CRL; check it with: openssl crl -in %s -noout -text", keyfile.ShellQuote(path))
	}
	return crls, nil
}
