package pgtls

import (
	"strings"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
)

// refusedKeyword describes a libpq keyword pgtrust parses but cannot apply.
// A setting that asks for what pgtrust cannot do is refused before any
// network step, rather than accepted and ignored.
type refusedKeyword struct {
	name string
	asks func(v string) bool // whether this value asks for something
	why  string
	fix  string
}

var refusedKeywords = []refusedKeyword{
	{"krbsrvname", func(v string) bool { return v != "" && v != "postgres" },
		"krbsrvname names the Kerberos service for GSSAPI, and pgtrust has no GSSAPI support",
		"remove krbsrvname (and unset PGKRBSRVNAME), and authenticate with SCRAM or a client certificate over TLS"},
	{"gsslib", func(v string) bool { return v != "" && v != "gssapi" },
		"gsslib chooses a Windows SSPI/GSSAPI library, and pgtrust has neither",
		"remove gsslib (and unset PGGSSLIB)"},
	{"gssdelegation", func(v string) bool { return strings.HasPrefix(v, "1") },
		"gssdelegation=1 delegates Kerberos credentials to the server, and pgtrust has no GSSAPI support",
		"remove gssdelegation (and unset PGGSSDELEGATION)"},
	{"scram_client_key", nonEmpty,
		"SCRAM authentication with a pre-computed client key is not supported by pgtrust's startup (pgconn)",
		"give the password instead (password=, PGPASSWORD or .pgpass)"},
	{"scram_server_key", nonEmpty,
		"SCRAM authentication with a pre-computed server key is not supported by pgtrust's startup (pgconn)",
		"give the password instead (password=, PGPASSWORD or .pgpass)"},
	{"oauth_issuer", nonEmpty, "pgtrust does not run libpq's OAuth device flow", "authenticate with SCRAM or a client certificate, or connect with libpq"},
	{"oauth_client_id", nonEmpty, "pgtrust does not run libpq's OAuth device flow", "authenticate with SCRAM or a client certificate, or connect with libpq"},
	{"oauth_client_secret", nonEmpty, "pgtrust does not run libpq's OAuth device flow", "authenticate with SCRAM or a client certificate, or connect with libpq"},
	{"oauth_scope", nonEmpty, "pgtrust does not run libpq's OAuth device flow", "authenticate with SCRAM or a client certificate, or connect with libpq"},
}

func nonEmpty(v string) bool { return v != "" }

// checkApplicable refuses settings pgtrust parses but cannot apply. The
// message never shows a value (oauth_client_secret and the SCRAM keys are
// secrets).
func checkApplicable(cfg *connstring.Config) error {
	for _, k := range refusedKeywords {
		v, ok := cfg.Settings[k.name]
		if !ok || !k.asks(v) {
			continue
		}
		shown := "\"" + v + "\""
		if connstring.IsSecret(k.name) {
			shown = "(a secret)"
		}
		return failure.New(failure.ConfigInvalid, "connection option \"%s\" is not supported by pgtrust", k.name).
			WithEvidence("%s is set to %s: %s", k.name, shown, k.why).
			WithFix("%s", k.fix)
	}
	return nil
}
