package ratls

import (
	"bytes"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/pgtrust/pgtrust/failure"
)

// The checks below are small functions over parsed structures, so that
// each can be tested on genuine quotes without re-signing anything; the
// orchestration in policy_verify.go decides which ones can run.

func hexList(list [][]byte) string {
	s := make([]string, len(list))
	for i, b := range list {
		s[i] = hex.EncodeToString(b)
	}
	return "[" + strings.Join(s, ", ") + "]"
}

func inList(list [][]byte, b []byte) bool {
	return slices.ContainsFunc(list, func(x []byte) bool { return bytes.Equal(x, b) })
}

func checkMRTD(c *compiledPolicy, allowAny bool, r *TDReport) Check {
	got := hex.EncodeToString(r.MRTD[:])
	if allowAny {
		return skipped(CheckMRTD, ClassMRTD, "AllowAnyMRTD (development): any MRTD accepted; got %s", got)
	}
	if inList(c.mrtd, r.MRTD[:]) {
		return passed(CheckMRTD, ClassMRTD, "MRTD %s is in the allowlist", got)
	}
	return failed(CheckMRTD, failure.New(ClassMRTD, "TD firmware (MRTD) is not in the policy's allowlist").
		WithEvidence("field body.mrtd: expected one of %s, got %s", hexList(c.mrtd), got).
		WithFix("if this TD image is yours and trusted, add its MRTD %s to the allowlist; otherwise do not connect: the server runs other firmware", got))
}

func checkRTMR(i int, pin []byte, r *TDReport) Check {
	name := rtmrCheckNames[i]
	got := hex.EncodeToString(r.RTMR[i][:])
	if pin == nil {
		return skipped(name, ClassRTMR, "RTMR%d not pinned: any value accepted; got %s", i, got)
	}
	if bytes.Equal(pin, r.RTMR[i][:]) {
		return passed(name, ClassRTMR, "RTMR%d %s equals the pin", i, got)
	}
	return failed(name, failure.New(ClassRTMR, "RTMR%d differs from the policy's pin", i).
		WithEvidence("field body.rtmr%d: expected %x, got %s", i, pin, got).
		WithFix("RTMR%d measures %s: if the change is an upgrade you made, pin the new value; otherwise do not connect", i, rtmrMeasures[i]))
}

var rtmrMeasures = [4]string{"the virtual hardware (ACPI tables)", "the kernel", "the kernel command line and initrd", "the application (RTMR3 runtime events)"}

func checkDebug(r *TDReport, allow bool) Check {
	if !r.Debug() {
		return passed(CheckDebug, ClassDebug, "td_attributes %x: debug bit clear", r.TDAttributes[:])
	}
	if allow {
		return passed(CheckDebug, ClassDebug, "WARNING: td_attributes %x: DEBUG TD accepted (AllowDebug): its host can read and change its memory", r.TDAttributes[:])
	}
	return failed(CheckDebug, failure.New(ClassDebug, "TD runs in debug mode: the host can read and change its memory").
		WithEvidence("field body.td_attributes: expected bit 0 (DEBUG) clear, got %x", r.TDAttributes[:]).
		WithFix("launch the TD without debug: a debug TD attests nothing; for development only, set allow_debug_mode"))
}

// checkSEAM requires Intel's own TDX module: mr_signer_seam zero means the
// module was signed by Intel (README 5.4), and non-zero SEAM attributes or
// a TD 1.5 service TD bound to this TD are configurations the policy does
// not understand, so they are refused rather than ignored.
func checkSEAM(r *TDReport, bodyType uint16) Check {
	var zero [48]byte
	var fe *failure.Error
	switch {
	case r.MRSignerSEAM != zero:
		fe = failure.New(ClassSEAM, "TDX module is not signed by Intel").
			WithEvidence("field body.mr_signer_seam: expected 48 zero bytes (Intel-signed module), got %x", r.MRSignerSEAM[:])
	case r.SEAMAttributes != [8]byte{}:
		fe = failure.New(ClassSEAM, "TDX module runs with non-zero SEAM attributes").
			WithEvidence("field body.seam_attributes: expected 0000000000000000, got %x", r.SEAMAttributes[:])
	case bodyType == BodyTypeTD15 && r.MRServiceTD != zero:
		fe = failure.New(ClassSEAM, "TD is bound to a service TD").
			WithEvidence("field body.mr_service_td: expected 48 zero bytes, got %x", r.MRServiceTD[:])
	}
	if fe != nil {
		return failed(CheckSEAM, fe.WithFix("run the TD on a host with Intel's production TDX module and no service-TD binding; do not connect otherwise"))
	}
	d := "mr_signer_seam zero (Intel TDX module), seam_attributes zero"
	if bodyType == BodyTypeTD15 {
		d += ", mr_service_td zero"
	}
	return passed(CheckSEAM, ClassSEAM, "%s", d)
}

func checkTEETCBSVN(min []byte, r *TDReport) Check {
	got := hex.EncodeToString(r.TEETCBSVN[:])
	if min == nil {
		return skipped(CheckTEETCBSVN, ClassTEETCBSVN, "no minimum set; tee_tcb_svn %s", got)
	}
	for i := range min {
		if r.TEETCBSVN[i] < min[i] {
			return failed(CheckTEETCBSVN, failure.New(ClassTEETCBSVN, "TDX module SVN is below the policy minimum").
				WithEvidence("field body.tee_tcb_svn: expected each component >= %x, got %s (component %d: %d < %d)", min, got, i, r.TEETCBSVN[i], min[i]).
				WithFix("update the host's TDX module, or lower MinTEETCBSVN if this level is acceptable"))
		}
	}
	return passed(CheckTEETCBSVN, ClassTEETCBSVN, "tee_tcb_svn %s >= %x component-wise", got, min)
}

func checkTCBStatus(accept []TCBStatus, a *Appraisal) Check {
	adv := "none"
	if len(a.AdvisoryIDs) > 0 {
		adv = strings.Join(a.AdvisoryIDs, ", ")
	}
	if slices.Contains(accept, a.Status) && a.Status != StatusRevoked {
		return passed(CheckTCBStatus, ClassTCBStatus, "TCB status %s (advisories: %s), FMSPC %s, valid until %s",
			a.Status, adv, a.FMSPC, a.CollateralValidUntil.UTC().Format(time.RFC3339))
	}
	return failed(CheckTCBStatus, failure.New(ClassTCBStatus, "platform TCB status %s is not accepted", a.Status).
		WithEvidence("TCB status: expected one of %v, got %s (platform %s, TDX module %s, QE %s; advisories: %s; FMSPC %s)",
			accept, a.Status, a.PlatformStatus, a.ModuleStatus, a.QEStatus, adv, a.FMSPC).
		WithFix("%s", tcbStatusFix(a.Status)))
}

func tcbStatusFix(s TCBStatus) string {
	switch s {
	case StatusRevoked:
		return "the platform's keys are revoked by Intel: do not connect to this server"
	case StatusSWHardeningNeeded, StatusConfigurationNeeded, StatusConfigurationAndSWHardeningNeeded:
		return "read the listed Intel advisories; if your deployment mitigates them, add " + string(s) + " to AcceptTCBStatuses, otherwise have the host apply them"
	default:
		return "have the host update its BIOS/microcode and TDX module, then fetch fresh collateral; accepting " + string(s) + " means trusting a platform with known vulnerabilities"
	}
}

// checkReplay compares the replayed RTMRs with the quote. RTMR3 must
// match: it is what makes the application identity measured, and with no
// log it must be zero. RTMR0-2 are compared when the log has events for
// them, but a mismatch there is reported, not refused: dstack strips
// certificate logs to the ACPI events of RTMR0 plus RTMR3 (README 3.6), so
// a partial RTMR0-2 log is normal, and nothing the policy decides rests on
// those events (RTMR pins compare the quote itself).
func checkReplay(replayed [4][48]byte, covered [4]bool, counts [4]int, r *TDReport) Check {
	n := counts[0] + counts[1] + counts[2] + counts[3]
	if replayed[3] != r.RTMR[3] {
		return failed(CheckEventLog, failure.New(ClassRTMR3Replay, "event log does not reproduce the quote's RTMR3").
			WithEvidence("RTMR3: expected (quote) %x, got (replay of %d RTMR3 events, %d in all) %x", r.RTMR[3][:], counts[3], n, replayed[3][:]).
			WithFix("the event log was altered, truncated or belongs to another TD: do not trust the application identity; obtain fresh evidence"))
	}
	var ok, partial []string
	for i := 0; i < 3; i++ {
		switch {
		case !covered[i]:
		case replayed[i] == r.RTMR[i]:
			ok = append(ok, fmt.Sprintf("RTMR%d", i))
		default:
			partial = append(partial, fmt.Sprintf("RTMR%d (%d events)", i, counts[i]))
		}
	}
	ok = append(ok, "RTMR3")
	d := fmt.Sprintf("%d events reproduce %s", n, strings.Join(ok, ", "))
	if len(partial) > 0 {
		d += fmt.Sprintf("; the log does not reproduce %s: a partial log (as in dstack's stripped certificates), those events are not trusted", strings.Join(partial, ", "))
	}
	return passed(CheckEventLog, ClassRTMR3Replay, "%s", d)
}

func checkAppID(allow [][]byte, id *AppIdentity) Check {
	return checkIdentityField(CheckAppID, ClassAppID, "app-id", allow, id.AppID, "add the app id to the AppID allowlist if this application is yours")
}

func checkComposeHash(allow [][]byte, id *AppIdentity) Check {
	return checkIdentityField(CheckComposeHash, ClassComposeHash, "compose-hash", allow, id.ComposeHash, "add the compose hash to the allowlist if you reviewed this app-compose.json; otherwise the application changed")
}

func checkIdentityField(name string, class failure.Class, event string, allow [][]byte, got []byte, fix string) Check {
	if allow == nil {
		if got == nil {
			return skipped(name, class, "not pinned; no %s event", event)
		}
		return skipped(name, class, "not pinned: any value accepted; got %x", got)
	}
	if got == nil {
		return failed(name, failure.New(class, "RTMR3 has no %s event", event).
			WithEvidence("event %s: expected one of %s, got no such event", event, hexList(allow)).
			WithFix("the TD is not a dstack application that measures its %s; do not connect, or remove the pin", event))
	}
	if inList(allow, got) {
		return passed(name, class, "%s %x is in the allowlist", event, got)
	}
	return failed(name, failure.New(class, "%s is not in the policy's allowlist", event).
		WithEvidence("event %s: expected one of %s, got %x", event, hexList(allow), got).
		WithFix("%s", fix))
}

func checkKeyProvider(pin string, id *AppIdentity) Check {
	got := "no key-provider event"
	if id.KeyProvider != nil {
		got = fmt.Sprintf("%q", id.KeyProvider.Name)
	}
	if pin == "" {
		return skipped(CheckKeyProvider, ClassKeyProvider, "not pinned; %s", got)
	}
	if id.KeyProvider != nil && id.KeyProvider.Name == pin {
		return passed(CheckKeyProvider, ClassKeyProvider, "key provider %s", got)
	}
	return failed(CheckKeyProvider, failure.New(ClassKeyProvider, "key provider is not the pinned one").
		WithEvidence("event key-provider name: expected %q, got %s", pin, got).
		WithFix("the application's keys come from another provider than you pinned: do not connect, or change the KeyProvider pin"))
}

// checkKeyBinding ties the quote to the TLS key: report_data must be
// KeyBinding(SPKI) in all 64 bytes. Compared in constant time like every
// binding value.
func checkKeyBinding(r *TDReport, leaf *x509.Certificate) Check {
	want := KeyBinding(leaf.RawSubjectPublicKeyInfo)
	if subtle.ConstantTimeCompare(want[:], r.ReportData[:]) == 1 {
		return passed(CheckKeyBinding, ClassKeyBinding, "report_data = SHA-512(\"ratls-cert:\" || certificate SPKI)")
	}
	return failed(CheckKeyBinding, failure.New(ClassKeyBinding, "quote does not bind the certificate's key").
		WithEvidence("field body.report_data: expected SHA-512(\"ratls-cert:\" || SPKI) = %x, got %x", want[:], r.ReportData[:]).
		WithFix("the quote was made for another key (copied evidence, or a non-RA-TLS quote): do not trust this server"))
}

// checkKMSChain: with KMS roots, the certificate must be issued under one
// of them, and RTMR3 must say the app's keys come from that same root
// (key-provider id = the root's SPKI DER), so a KMS that signed the
// certificate is the KMS the TD was measured to use.
func checkKMSChain(roots *x509.CertPool, chain []*x509.Certificate, id *AppIdentity, at time.Time) Check {
	if roots == nil {
		return skipped(CheckKMSChain, ClassKMSChain, "no KMS roots configured")
	}
	leaf := chain[0]
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		if c != nil {
			inter.AddCert(c)
		}
	}
	paths, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: at,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return failed(CheckKMSChain, failure.Wrap(ClassKMSChain, err, "certificate is not issued under a pinned KMS root").
			WithEvidence("leaf subject %q issuer %q at %s: %v", leaf.Subject.String(), leaf.Issuer.String(), at.UTC().Format(time.RFC3339), err).
			WithFix("the server's certificate was not issued by your KMS: check the KMS root you pinned, or do not connect"))
	}
	if id.KeyProvider == nil {
		return failed(CheckKMSChain, failure.New(ClassKMSChain, "RTMR3 has no key-provider event").
			WithEvidence("event key-provider: expected id = SPKI of the KMS root, got no such event").
			WithFix("the TD does not measure its key provider: it cannot be tied to your KMS; do not connect"))
	}
	var rootSPKIs []string
	for _, p := range paths {
		root := p[len(p)-1]
		if bytes.Equal(root.RawSubjectPublicKeyInfo, id.KeyProvider.ID) {
			return passed(CheckKMSChain, ClassKMSChain, "certificate issued under KMS root %q, whose key is the measured key provider %q", root.Subject.CommonName, id.KeyProvider.Name)
		}
		rootSPKIs = append(rootSPKIs, hex.EncodeToString(root.RawSubjectPublicKeyInfo))
	}
	return failed(CheckKMSChain, failure.New(ClassKMSChain, "measured key provider is not the KMS root that issued the certificate").
		WithEvidence("event key-provider id: expected one of [%s] (SPKI of the issuing KMS root), got %x (name %q)", strings.Join(rootSPKIs, ", "), id.KeyProvider.ID, id.KeyProvider.Name).
		WithFix("the TD takes its keys from another KMS than the one that issued its certificate: do not connect"))
}
