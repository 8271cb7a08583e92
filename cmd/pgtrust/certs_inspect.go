package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/failure"
)

// --- inspect -----------------------------------------------------------------

func newCertsInspectCmd() *cobra.Command {
	var server, sni string
	var direct, asJSON bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "inspect FILE... | --server HOST:PORT",
		Short: "Show certificates in files, or the chain a PostgreSQL server presents",
		Long: `Show subject, issuer, SANs, validity, key, SHA-256 fingerprint, serial and
chain order of every certificate in the files (PEM bundles or DER).

With --server, connect as libpq does (SSLRequest, or direct TLS with ALPN
"postgresql" with --direct), and show the chain the server presents, the
negotiated TLS version and cipher, and whether the server asked for a client
certificate. The server's chain is shown without being verified; use
'pgtrust certs verify' or 'pgtrust ping' to judge it.

Exit status: 0 shown, 1 the server could not be reached or spoke no TLS,
2 a file could not be read or invalid options.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			if server != "" {
				if len(args) > 0 {
					return failWith(cmd, asJSON, 2, failure.New(failure.ConfigInvalid, "give files or --server, not both"))
				}
				p, err := certs.ProbeServer(cmd.Context(), certs.ProbeOptions{Addr: server, Direct: direct, ServerName: sni, Timeout: timeout})
				if err != nil {
					code := 1
					if failure.ClassOf(err) == failure.ConfigInvalid {
						code = 2
					}
					return failWith(cmd, asJSON, code, err)
				}
				if asJSON {
					writeJSON(out, p)
					return nil
				}
				fmt.Fprintf(out, "server %s (%s negotiation): %s, %s", p.Addr, p.Negotiation, p.Version, p.Cipher)
				if p.ALPN != "" {
					fmt.Fprintf(out, ", ALPN %s", p.ALPN)
				}
				fmt.Fprintln(out)
				if p.ClientCertRequested {
					fmt.Fprintln(out, "client certificate: requested by the server (CertificateRequest)")
					if len(p.AcceptableCAs) > 0 {
						fmt.Fprintf(out, "  acceptable CAs: %s\n", strings.Join(p.AcceptableCAs, "; "))
					}
				} else {
					fmt.Fprintln(out, "client certificate: not requested (the server has no ssl_ca_file)")
				}
				fmt.Fprintln(out, "NOTE: the chain below was NOT verified (shown as presented; verification was skipped on purpose)")
				for _, i := range p.Chain {
					fmt.Fprintf(out, "\ncertificate %d:\n", i.Index)
					printInfo(out, i, "  ")
				}
				return nil
			}
			if len(args) == 0 {
				return failWith(cmd, asJSON, 2, failure.New(failure.ConfigInvalid, "nothing to inspect").
					WithFix("give certificate files, or --server HOST:PORT"))
			}
			now := time.Now()
			var all []certs.Info
			var errs []*failure.Report
			for _, path := range args {
				infos, err := certs.InspectFile(path, now)
				if err != nil {
					errs = append(errs, failure.ReportOf(err))
					if !asJSON {
						fmt.Fprintln(cmd.ErrOrStderr(), "pgtrust: "+detail(err))
					}
					continue
				}
				all = append(all, infos...)
				if !asJSON {
					for _, i := range infos {
						fmt.Fprintf(out, "%s [%d]:\n", path, i.Index)
						printInfo(out, i, "  ")
						fmt.Fprintln(out)
					}
				}
			}
			if asJSON {
				writeJSON(out, map[string]any{"certificates": all, "errors": errs})
			}
			if len(errs) > 0 {
				return exitCode(2)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&server, "server", "", "inspect the chain presented by the PostgreSQL server at HOST:PORT")
	f.BoolVar(&direct, "direct", false, "with --server: direct TLS (PostgreSQL 17+) instead of SSLRequest")
	f.StringVar(&sni, "sni", "", "with --server: TLS server name to send (default: the host, unless it is an IP address)")
	f.DurationVar(&timeout, "timeout", 10*time.Second, "with --server: time limit")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// --- verify ------------------------------------------------------------------

func newCertsVerifyCmd() *cobra.Command {
	var o certs.VerifyOptions
	var keyPwFile string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "verify --ca CA [--cert CERT] [--key KEY] [--host NAME] [--crl CRL] [--untrusted FILE]",
		Short: "Check certificate material the way libpq and PostgreSQL will use it",
		Long: `Check that the CA file holds a root, the certificate chains to it (with
intermediates from the certificate file or --untrusted), is within its
validity window, matches --host under libpq's rules, is not revoked (--crl,
with OpenSSL's rule that every certificate in the chain needs its issuer's
CRL), and that the key passes libpq's permission rule, decrypts and matches
the certificate. Every problem is shown with its class, evidence and fix.

Exit status: 0 all checks hold, 1 a check failed, 2 invalid options.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pw, err := readPasswordFile(keyPwFile)
			if err != nil {
				return failWith(cmd, asJSON, 2, err)
			}
			o.KeyPassword = pw
			r := certs.Verify(o)
			out := cmd.OutOrStdout()
			if asJSON {
				writeJSON(out, map[string]any{"ok": r.OK(), "findings": r.Findings, "certificate": r.Leaf})
			} else {
				for _, f := range r.Findings {
					mark := map[string]string{"ok": "ok  ", "fail": "FAIL", "skip": "skip"}[f.Status]
					fmt.Fprintf(out, "%s %-16s %s\n", mark, f.Check, f.Message)
					if f.Status == "fail" {
						(&failure.Report{Class: f.Class, Message: f.Message, Evidence: f.Evidence, Fix: f.Fix}).WriteDetails(out, "     ")
					}
				}
			}
			if !r.OK() {
				return exitCode(1)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.CAFile, "ca", "", "CA certificate file (sslrootcert / ssl_ca_file)")
	f.StringVar(&o.CertFile, "cert", "", "certificate (chain) to verify")
	f.StringVar(&o.KeyFile, "key", "", "private key of the certificate")
	f.StringVar(&keyPwFile, "key-password-file", "", "file whose first line is the key's passphrase")
	f.StringVar(&o.Host, "host", "", "server host name the certificate must match (libpq's verify-full rules)")
	f.StringVar(&o.CRLFile, "crl", "", "certificate revocation list(s), PEM or DER")
	f.StringVar(&o.UntrustedFile, "untrusted", "", "intermediate certificates to build the chain with")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	_ = cmd.MarkFlagRequired("ca")
	return cmd
}

// --- check -------------------------------------------------------------------

func newCertsCheckCmd() *cobra.Command {
	var warnDays int
	var textfile string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "check [--warn-days 30] PATH...",
		Short: "Expiry monitor for cron, CI and Kubernetes",
		Long: `Check the expiry of every certificate in the files and directories given
(directories one level deep, following symlinks, skipping dot entries such as
Kubernetes' ..data; keys and CRLs are skipped). --prometheus-textfile writes
the node_exporter textfile format (pgtrust_cert_expiry_timestamp_seconds per
certificate, labelled by path and subject), atomically.

Exit status: 0 all fine, 1 something expires within --warn-days,
2 something expired, is not yet valid or could not be read.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			now := time.Now()
			results := certs.CheckExpiry(args, time.Duration(warnDays)*24*time.Hour, now)
			code := certs.ExpiryExitCode(results)
			if textfile != "" {
				if err := certs.WritePrometheusTextfile(textfile, results, now); err != nil {
					fmt.Fprintln(cmd.ErrOrStderr(), "pgtrust: "+detail(err))
					code = 2
				}
			}
			out := cmd.OutOrStdout()
			if asJSON {
				writeJSON(out, map[string]any{"status": map[int]string{0: "ok", 1: "warning", 2: "critical"}[code], "exit_code": code, "certificates": results})
			} else {
				tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "STATUS\tEXPIRES\tDAYS\tSUBJECT\tPATH")
				for _, r := range results {
					if r.Status == certs.ExpiryUnreadable {
						fmt.Fprintf(tw, "%s\t-\t-\t-\t%s\n", strings.ToUpper(r.Status), r.Path)
						continue
					}
					fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s[%d]\n", strings.ToUpper(r.Status), r.NotAfter.Format("2006-01-02"), r.DaysLeft, r.Subject, r.Path, r.Index)
				}
				tw.Flush()
				for _, r := range results {
					if r.Status == certs.ExpiryUnreadable {
						(&failure.Report{Class: r.Class, Message: r.Message, Fix: r.Fix}).WriteText(cmd.ErrOrStderr(), "pgtrust: "+r.Path+": ")
					}
				}
				if len(results) == 0 {
					fmt.Fprintln(os.Stderr, "pgtrust: no certificates found")
				}
			}
			if code != 0 {
				return exitCode(code)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&warnDays, "warn-days", 30, "warn when a certificate expires within this many days")
	f.StringVar(&textfile, "prometheus-textfile", "", "also write node_exporter textfile metrics to FILE")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
