package main

import (
	"context"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/attestation"
)

func init() { register(newAttestCmd) }

func newAttestCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "attest",
		Short: "Verify attested-TLS (Intel TDX RA-TLS) evidence",
	}
	cmd.AddCommand(newAttestVerifyCmd())
	return cmd
}

func newAttestVerifyCmd() *cobra.Command {
	var pf attestation.PolicyFlags
	var quoteFile, eventLogFile string
	var asJSON bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "verify [CERT.pem | EVIDENCE.json | HOST:PORT | DSN] [--quote FILE [--event-log FILE]]",
		Short: "Verify a TDX quote, an RA-TLS certificate or a live server against an attestation policy",
		Long: `Verify attestation evidence against a policy and print every check (PASS, FAIL
or SKIP, with what it found), then the measured values (MRTD, RTMR0-3, TCB
status, FMSPC, advisory IDs, app id, compose hash, key provider).

The evidence is one of:
  CERT.pem          an RA-TLS certificate (PEM or DER): every check, including
                    the binding of the quote to the certificate's key
  EVIDENCE.json     dstack evidence JSON {"quote": "<hex>", "event_log": "[...]"}
                    (or a saved /attestation response, whose certificate is used)
  --quote FILE      a raw TDX quote, binary or hex, with --event-log FILE
                    (dstack's JSON event log) when RTMR3 is to be replayed
  HOST:PORT or DSN  a live PostgreSQL server: pgtrust negotiates TLS as libpq
                    does (SSLRequest, or direct TLS when the DSN says so),
                    takes the server's certificate without trusting any CA
                    (HOST:PORT uses sslmode=require and ignores ~/.postgresql
                    and PG* variables), stops before authenticating, and
                    verifies the certificate with the policy

The policy needs --mrtd (or --allow-any-mrtd, development only) and Intel
collateral for the TCB appraisal: --collateral DIR (offline) or --pccs-url URL
(or --skip-tcb, development only). --at verifies old evidence at the instant its
collateral was valid.

Exit status: 0 every check passed, 1 a check failed (attestation refused),
2 usage or input error (bad flag, unreadable file, unreachable host).`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			fail := func(code int, err error) error { return failWith(cmd, asJSON, code, err) }
			if len(args) == 0 && quoteFile == "" {
				return fail(2, failure.New(failure.ConfigInvalid, "no evidence given").
					WithFix("give a certificate file, an evidence JSON file, --quote FILE, or a live HOST:PORT"))
			}
			if len(args) == 1 && quoteFile != "" {
				return fail(2, failure.New(failure.ConfigInvalid, "give either an argument or --quote, not both"))
			}
			if eventLogFile != "" && quoteFile == "" {
				return fail(2, failure.New(failure.ConfigInvalid, "--event-log goes with --quote").
					WithFix("a certificate or evidence JSON carries its own event log"))
			}
			at, err := pf.Instant(time.Now)
			if err != nil {
				return fail(2, err)
			}
			policy, err := pf.Policy()
			if err != nil {
				return fail(2, err)
			}
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			var in *attestation.Input
			switch {
			case quoteFile != "":
				in, err = attestation.LoadQuote(quoteFile, eventLogFile)
			case attestation.IsLive(args[0]):
				in, err = attestation.FetchServer(ctx, args[0], timeout)
			default:
				in, err = attestation.LoadFile(args[0])
			}
			if err != nil {
				return reportInputError(cmd, asJSON, err, at)
			}
			doc := in.Verify(ctx, policy, at)
			if asJSON {
				writeJSON(cmd.OutOrStdout(), doc)
			} else {
				doc.WriteText(cmd.OutOrStdout())
			}
			if !doc.OK {
				return exitCode(1)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&quoteFile, "quote", "", "a raw TDX quote file (binary or hex)")
	f.StringVar(&eventLogFile, "event-log", "", "dstack JSON event log of the --quote")
	f.BoolVar(&asJSON, "json", false, "print the result as one JSON object")
	f.DurationVar(&timeout, "timeout", 10*time.Second, "limit for reaching a live server when the DSN sets no connect_timeout")
	pf.Register(f, true)
	return cmd
}

// reportInputError reports evidence that could not be obtained: usage and
// input errors exit 2, a server that answered without attestable TLS 1.
func reportInputError(cmd *cobra.Command, asJSON bool, err error, at time.Time) error {
	code := attestation.InputExitCode(err)
	if asJSON {
		writeJSON(cmd.OutOrStdout(), attestation.ErrorDocument(err, "", at))
		return exitCode(code)
	}
	failure.WriteText(cmd.ErrOrStderr(), "pgtrust: ", err)
	return exitCode(code)
}
