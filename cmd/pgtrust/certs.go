package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/keyfile"
)

func init() { register(newCertsCmd) }

func newCertsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Make, inspect, verify and monitor certificates for PostgreSQL TLS",
	}
	cmd.AddCommand(newCertsInitCmd(), newCertsIssueCmd(), newCertsInspectCmd(), newCertsVerifyCmd(), newCertsCheckCmd(),
		newCertsAgentCmd(), newCertsRenewCmd())
	return cmd
}

// failWith prints err in failure's shared layout (or its JSON report) and
// returns the exit error for code.
func failWith(cmd *cobra.Command, asJSON bool, code int, err error) error {
	if asJSON {
		writeJSON(cmd.OutOrStdout(), map[string]any{"ok": false, "error": failure.ReportOf(err)})
	} else {
		failure.WriteText(cmd.ErrOrStderr(), "pgtrust: ", err)
	}
	return exitCode(code)
}

// detail is err in failure's shared layout (message, class, evidence, fix)
// without the final newline, for a caller's own headline.
func detail(err error) string { return failure.Text(err) }

func writeJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// readPasswordFile returns the first line of path, as `openssl -passin file:` does.
func readPasswordFile(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", failure.Wrap(failure.ConfigInvalid, err, "could not read password file \"%s\"", path).WithEvidence("%v", err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	line = strings.TrimSuffix(line, "\r")
	if line == "" {
		return "", failure.New(failure.ConfigInvalid, "password file \"%s\" is empty", path).
			WithFix("put the passphrase on the first line of the file")
	}
	return line, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// --- init --------------------------------------------------------------------

func newCertsInitCmd() *cobra.Command {
	var dir, hosts, user, keyType string
	var days int
	var force, asJSON bool
	cmd := &cobra.Command{
		Use:   "init --dir DIR",
		Short: "Create a development PKI: root CA, server and client certificates",
		Long: `Create a complete development PKI in DIR: ca.crt/ca.key (root CA),
server.crt/server.key (SANs from --hosts) and client.crt/client.key (CN from
--user), then print the postgresql.conf and pg_hba.conf lines and the client
connection string. The directory is created 0700, keys are 0600 and
certificates 0644; existing files are never replaced without --force.

Exit status: 0 created, 2 invalid options or the files could not be written.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			kt, err := certs.ParseKeyType(keyType)
			if err != nil {
				return failWith(cmd, asJSON, 2, err)
			}
			if days <= 0 {
				return failWith(cmd, asJSON, 2, failure.New(failure.ConfigInvalid, "--days must be positive"))
			}
			p, err := certs.InitDevPKI(dir, certs.DevPKIOptions{Hosts: splitList(hosts), User: user, KeyType: kt,
				Validity: time.Duration(days) * 24 * time.Hour, Force: force})
			if err != nil {
				return failWith(cmd, asJSON, 2, err)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				writeJSON(out, map[string]any{"ok": true, "dir": p.Dir,
					"files": map[string]string{"ca_cert": p.CACert, "ca_key": p.CAKey, "server_cert": p.ServerCert,
						"server_key": p.ServerKey, "client_cert": p.ClientCert, "client_key": p.ClientKey},
					"postgresql_conf": p.PostgresConf(), "pg_hba_conf": p.HBALine(), "connection_string": p.ConnString()})
				return nil
			}
			fmt.Fprintf(out, "Created a development PKI in %s (%s keys, certificates valid %d days):\n", p.Dir, kt, days)
			for _, f := range []string{p.CACert, p.CAKey, p.ServerCert, p.ServerKey, p.ClientCert, p.ClientKey} {
				fmt.Fprintf(out, "  %s\n", f)
			}
			fmt.Fprintf(out, "\n# postgresql.conf\n%s", p.PostgresConf())
			fmt.Fprintf(out, "\n# pg_hba.conf (certificate authentication for user %s)\n%s\n", p.User, p.HBALine())
			fmt.Fprintf(out, "\n# client connection string\n%s\n", p.ConnString())
			fmt.Fprintf(out, "\nThe server must be able to read its files, and PostgreSQL insists on server.key being 0600\n"+
				"(or 0640 owned by root). If the server runs as another user (usually postgres), copy\n"+
				"server.crt, server.key and ca.crt to its data directory and chown them to that user,\n"+
				"or: chown -R postgres %s\n", keyfile.ShellQuote(p.Dir))
			fmt.Fprintf(out, "Keep ca.key private: anyone holding it can issue certificates your server trusts.\n")
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "directory for the files (created 0700)")
	f.StringVar(&hosts, "hosts", strings.Join(certs.DefaultHosts, ","), "server certificate SANs: host names and IP addresses, comma-separated")
	f.StringVar(&user, "user", "postgres", "PostgreSQL user name for the client certificate's CN")
	f.StringVar(&keyType, "key-type", string(certs.ECDSAP256), "key type: rsa2048, rsa4096, ecdsa-p256, ecdsa-p384 or ed25519")
	f.IntVar(&days, "days", 365, "validity of the server and client certificates, in days")
	f.BoolVar(&force, "force", false, "replace existing files")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	_ = cmd.MarkFlagRequired("dir")
	return cmd
}

// --- issue -------------------------------------------------------------------

func newCertsIssueCmd() *cobra.Command {
	var caCert, caKey, caKeyPwFile, keyPwFile, dir, name, hosts, user, keyType string
	var days int
	var force, asJSON bool
	cmd := &cobra.Command{
		Use:   "issue server|client --ca CA --ca-key KEY",
		Short: "Issue a server or client certificate from an existing CA",
		Long: `Issue a server certificate (SANs from --hosts) or a client certificate
(CN from --user) signed by an existing CA, writing DIR/NAME.crt and
DIR/NAME.key. The CA key may be encrypted (--ca-key-password-file); the new
key is written as encrypted PKCS#8 when --key-password-file is given. An
intermediate CA's certificate is appended after the new certificate.

Exit status: 0 issued, 2 invalid options, unreadable CA or unwritable files.`,
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{"server", "client"},
		RunE: func(cmd *cobra.Command, args []string) error {
			o := certs.IssueFilesOptions{Role: args[0], Dir: dir, Name: name, Force: force,
				Options: certs.Options{Validity: time.Duration(days) * 24 * time.Hour, Hosts: splitList(hosts), CommonName: user}}
			if err := o.Check(); err != nil {
				return failWith(cmd, asJSON, 2, err)
			}
			kt, err := certs.ParseKeyType(keyType)
			if err != nil {
				return failWith(cmd, asJSON, 2, err)
			}
			caPw, err := readPasswordFile(caKeyPwFile)
			if err != nil {
				return failWith(cmd, asJSON, 2, err)
			}
			keyPw, err := readPasswordFile(keyPwFile)
			if err != nil {
				return failWith(cmd, asJSON, 2, err)
			}
			ca, err := certs.LoadKeyPair(caCert, caKey, caPw)
			if err != nil {
				return failWith(cmd, asJSON, 2, err)
			}
			o.Options.KeyType, o.KeyPassword = kt, keyPw
			issued, err := certs.IssueFiles(ca, o)
			if err != nil {
				return failWith(cmd, asJSON, 2, err)
			}
			role, certPath, keyPath := o.Role, issued.CertPath, issued.KeyPath
			info := certs.Describe(issued.Pair.Cert, time.Now())
			if asJSON {
				writeJSON(cmd.OutOrStdout(), map[string]any{"ok": true, "cert": certPath, "key": keyPath, "key_encrypted": keyPw != "", "certificate": info})
				return nil
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "Issued %s certificate %s (key %s%s)\n", role, certPath, keyPath, map[bool]string{true: ", encrypted", false: ""}[keyPw != ""])
			printInfo(out, info, "  ")
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&caCert, "ca", "", "CA certificate (PEM)")
	f.StringVar(&caKey, "ca-key", "", "CA private key")
	f.StringVar(&caKeyPwFile, "ca-key-password-file", "", "file whose first line is the CA key's passphrase")
	f.StringVar(&keyPwFile, "key-password-file", "", "encrypt the new key (PKCS#8, AES-256) with the first line of this file")
	f.StringVar(&dir, "dir", ".", "output directory")
	f.StringVar(&name, "name", "", "output file name without extension (default: server or client)")
	f.StringVar(&hosts, "hosts", "localhost", "server: SANs, comma-separated host names and IP addresses")
	f.StringVar(&user, "user", "", "client: PostgreSQL user name (the CN)")
	f.StringVar(&keyType, "key-type", string(certs.ECDSAP256), "key type: rsa2048, rsa4096, ecdsa-p256, ecdsa-p384 or ed25519")
	f.IntVar(&days, "days", 365, "validity in days")
	f.BoolVar(&force, "force", false, "replace existing files")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	_ = cmd.MarkFlagRequired("ca")
	_ = cmd.MarkFlagRequired("ca-key")
	return cmd
}

// printInfo renders one certificate for people.
func printInfo(w io.Writer, i certs.Info, indent string) {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s%s:\t%s\n", indent, k, v)
		}
	}
	row("subject", i.Subject)
	row("issuer", i.Issuer)
	row("DNS names", strings.Join(i.DNSNames, ", "))
	row("IP addresses", strings.Join(i.IPAddresses, ", "))
	row("emails", strings.Join(i.EmailAddresses, ", "))
	row("URIs", strings.Join(i.URIs, ", "))
	row("valid", fmt.Sprintf("%s to %s (%s)", i.NotBefore.Format(time.RFC3339), i.NotAfter.Format(time.RFC3339), i.Expiry))
	row("key", i.KeyDetail)
	row("signature", i.SignatureAlgorithm)
	row("serial", i.Serial)
	row("SHA-256", i.FingerprintSHA256)
	ca := "no"
	if i.IsCA {
		ca = "yes"
		if i.SelfSigned {
			ca += " (self-signed root)"
		}
	}
	row("CA", ca)
	row("key usage", strings.Join(i.KeyUsage, ", "))
	row("ext key usage", strings.Join(i.ExtKeyUsage, ", "))
	row("chain", i.ChainNote)
	tw.Flush()
}
