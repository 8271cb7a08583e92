package certs

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/keyfile"
)

// Expiry states, from best to worst.
const (
	ExpiryOK         = "ok"
	ExpiryWarning    = "warning"
	ExpiryExpired    = "expired"
	ExpiryNotYet     = "not_yet_valid"
	ExpiryUnreadable = "unreadable"
)

// ExpiryResult is one certificate (or one unreadable file) in an expiry check.
type ExpiryResult struct {
	Path     string        `json:"path"`
	Index    int           `json:"index"`
	Subject  string        `json:"subject,omitempty"`
	Serial   string        `json:"serial,omitempty"`
	NotAfter time.Time     `json:"not_after,omitzero"`
	DaysLeft int           `json:"days_left"`
	Status   string        `json:"status"`
	Class    failure.Class `json:"class"`
	Message  string        `json:"message,omitempty"`
	Fix      string        `json:"fix,omitempty"`
}

// certExtensions are the names a directory scan treats as certificates
// (which must then parse); other files are tried and skipped quietly when
// they hold no certificate.
var certExtensions = map[string]bool{".crt": true, ".pem": true, ".cer": true, ".cert": true, ".der": true}

// CheckExpiry checks every certificate in paths (files, or directories
// scanned one level deep, following symlinks and skipping dot files such as
// Kubernetes' ..data) against the warning window.
func CheckExpiry(paths []string, warn time.Duration, now time.Time) []ExpiryResult {
	var out []ExpiryResult
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			out = append(out, unreadableResult(p, err))
			continue
		}
		if !fi.IsDir() {
			out = append(out, checkFile(p, warn, now, true)...)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			out = append(out, unreadableResult(p, err))
			continue
		}
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".") {
				continue
			}
			fp := filepath.Join(p, e.Name())
			if st, err := os.Stat(fp); err != nil || !st.Mode().IsRegular() {
				continue
			}
			out = append(out, checkFile(fp, warn, now, false)...)
		}
	}
	return out
}

// checkFile checks one file. A file named on the command line must hold a
// certificate; in a directory scan, only files with a certificate extension
// must, and keys or CRLs next to the certificates are skipped.
func checkFile(path string, warn time.Duration, now time.Time, named bool) []ExpiryResult {
	data, err := os.ReadFile(path)
	if err != nil {
		return []ExpiryResult{unreadableResult(path, err)}
	}
	if !named {
		keyOrCRL := (bytes.Contains(data, []byte("PRIVATE KEY-----")) || bytes.Contains(data, []byte("X509 CRL-----"))) &&
			!bytes.Contains(data, []byte("CERTIFICATE-----"))
		if !certExtensions[strings.ToLower(filepath.Ext(path))] || keyOrCRL {
			if _, err := keyfile.ParseCertificates(data); err != nil {
				return nil
			}
		}
	}
	chain, err := keyfile.LoadCertificates(path)
	if err != nil {
		return []ExpiryResult{unreadableResult(path, err)}
	}
	var out []ExpiryResult
	for i, c := range chain {
		r := ExpiryResult{Path: path, Index: i, Subject: c.Subject.String(), Serial: SerialHex(c),
			NotAfter: c.NotAfter.UTC(), DaysLeft: DaysLeft(c, now), Status: ExpiryOK, Class: failure.OK, Message: ExpiryText(c, now)}
		switch {
		case now.After(c.NotAfter):
			r.Status, r.Class = ExpiryExpired, failure.CertExpired
			r.Fix = "issue a new certificate and replace " + path
		case now.Before(c.NotBefore):
			r.Status, r.Class = ExpiryNotYet, failure.CertNotYetValid
			r.Fix = "check the clock, or wait until " + c.NotBefore.UTC().Format(time.RFC3339)
		case c.NotAfter.Sub(now) <= warn:
			r.Status, r.Class = ExpiryWarning, failure.CertExpiring
			r.Fix = "renew before " + c.NotAfter.UTC().Format(time.RFC3339)
		}
		out = append(out, r)
	}
	return out
}

func unreadableResult(path string, err error) ExpiryResult {
	r := ExpiryResult{Path: path, Status: ExpiryUnreadable, Class: failure.ClassOf(err), Message: err.Error()}
	if fe, ok := failure.As(err); ok {
		r.Fix = fe.Fix
	} else {
		r.Class = failure.ConfigInvalid
		if errors.Is(err, fs.ErrNotExist) {
			r.Fix = "check the path"
		}
	}
	return r
}

// ExpiryExitCode is the exit code for results: 0 all fine, 1 something
// within the warning window, 2 expired, not yet valid or unreadable.
func ExpiryExitCode(results []ExpiryResult) int {
	code := 0
	for _, r := range results {
		switch r.Status {
		case ExpiryWarning:
			code = max(code, 1)
		case ExpiryExpired, ExpiryNotYet, ExpiryUnreadable:
			code = 2
		}
	}
	return code
}

// PrometheusText renders results in the node_exporter textfile format.
func PrometheusText(results []ExpiryResult, now time.Time) []byte {
	var b bytes.Buffer
	b.WriteString("# HELP pgtrust_cert_expiry_timestamp_seconds Expiry (notAfter) of the certificate as a Unix timestamp.\n")
	b.WriteString("# TYPE pgtrust_cert_expiry_timestamp_seconds gauge\n")
	sorted := append([]ExpiryResult(nil), results...)
	sort.SliceStable(sorted, func(i, j int) bool {
		if sorted[i].Path != sorted[j].Path {
			return sorted[i].Path < sorted[j].Path
		}
		return sorted[i].Index < sorted[j].Index
	})
	for _, r := range sorted {
		if r.Status == ExpiryUnreadable {
			continue
		}
		fmt.Fprintf(&b, "pgtrust_cert_expiry_timestamp_seconds{path=\"%s\",index=\"%d\",subject=\"%s\",serial=\"%s\"} %d\n",
			labelEscape(r.Path), r.Index, labelEscape(r.Subject), labelEscape(r.Serial), r.NotAfter.Unix())
	}
	b.WriteString("# HELP pgtrust_cert_read_error 1 when the file could not be read as a certificate.\n")
	b.WriteString("# TYPE pgtrust_cert_read_error gauge\n")
	seen := map[string]bool{}
	for _, r := range sorted {
		if seen[r.Path] {
			continue
		}
		seen[r.Path] = true
		v := 0
		if r.Status == ExpiryUnreadable {
			v = 1
		}
		fmt.Fprintf(&b, "pgtrust_cert_read_error{path=\"%s\"} %d\n", labelEscape(r.Path), v)
	}
	b.WriteString("# HELP pgtrust_cert_check_timestamp_seconds When the check ran, as a Unix timestamp.\n")
	b.WriteString("# TYPE pgtrust_cert_check_timestamp_seconds gauge\n")
	fmt.Fprintf(&b, "pgtrust_cert_check_timestamp_seconds %d\n", now.Unix())
	return b.Bytes()
}

// labelEscape escapes a Prometheus label value.
func labelEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}

// WritePrometheusTextfile writes results atomically to path, so that
// node_exporter never reads a partial file.
func WritePrometheusTextfile(path string, results []ExpiryResult, now time.Time) error {
	return keyfile.WriteFileAtomic(path, PrometheusText(results, now), 0o644)
}
