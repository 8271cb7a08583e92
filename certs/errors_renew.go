package certs

import "github.com/pgtrust/pgtrust/failure"

// Renewal failure classes. They live here rather than in package failure
// because only certificate sources that renew produce them; they are as
// stable as failure's own vocabulary (metric labels and /readyz use them).
const (
	// RenewalIssueFailed: the CA answered, with an error.
	RenewalIssueFailed failure.Class = "renewal_issue_failed"
	// RenewalUnreachable: the CA could not be reached (network, timeout).
	RenewalUnreachable failure.Class = "renewal_unreachable"
	// RenewalAuth: the CA refused our credentials (token expired, 403).
	RenewalAuth failure.Class = "renewal_auth"
	// RenewalInvalid: the CA returned material that does not validate.
	RenewalInvalid failure.Class = "renewal_invalid"
	// RenewalExpired: the current certificate expired while renewals kept
	// failing; new connections fail with this class.
	RenewalExpired failure.Class = "renewal_expired"
)

// renewClasses lists the renewal classes in the documented order.
var renewClasses = []failure.Class{RenewalIssueFailed, RenewalUnreachable, RenewalAuth, RenewalInvalid, RenewalExpired}

// RenewClasses returns the renewal failure classes, in the documented order.
func RenewClasses() []failure.Class { return append([]failure.Class(nil), renewClasses...) }

// isRenewClass reports whether c is one of the renewal classes.
func isRenewClass(c failure.Class) bool {
	for _, r := range renewClasses {
		if r == c {
			return true
		}
	}
	return false
}

// renewFix is the fix for a renewal that failed with class c at the CA
// named ca.
func renewFix(c failure.Class, ca string) string {
	switch c {
	case RenewalAuth:
		return "check the credentials pgtrust uses to authenticate to " + ca + " (token, AppRole or service account, provisioner): they were refused or have expired"
	case RenewalUnreachable:
		return "make " + ca + " reachable from this host (address, DNS, firewall, its TLS trust); pgtrust keeps retrying with backoff"
	case RenewalInvalid:
		return "the certificates " + ca + " returns do not validate (key mismatch, validity, or not issued by the named CA): check the role or provisioner and the host's clock"
	default:
		return "check why " + ca + " refuses to issue (its logs, the role or provisioner, the requested TTL); pgtrust keeps retrying with backoff"
	}
}
