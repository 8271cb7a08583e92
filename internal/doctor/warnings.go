package doctor

import (
	"crypto/tls"
	"fmt"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/pgtls"
)

// warnings adds the findings that do not stop a working connection. They
// never change the verdict.
func (d *diagnosis) warnings() {
	r, f := d.r, d.facts
	add := func(w Warning) { r.Warnings = append(r.Warnings, w) }

	// Server certificates close to expiry, whatever the outcome.
	chain, _ := d.serverChain()
	for i, c := range chain {
		where := "server certificate"
		if i > 0 {
			where = "server's CA certificate"
		}
		if w, ok := expiryWarning(c, where, d.now, d.o.WarnDays); ok && w.Code == WarnExpiring {
			add(w)
		}
	}
	if d.err != nil || f == nil {
		return
	}
	onSocket := f.Host.IsUnixSocket()
	switch {
	case !f.Encrypted && !onSocket:
		add(Warning{Code: WarnNotEncrypted,
			Message: fmt.Sprintf("the connection is NOT encrypted (sslmode=%s): passwords and data cross the network in clear", d.cfg.SSLMode),
			Fix:     "use sslmode=verify-full with sslrootcert=/path/to/ca.crt (and ssl=on on the server)"})
	case f.Encrypted && !f.ServerChainVerified:
		add(Warning{Code: WarnNotVerified,
			Message: fmt.Sprintf("sslmode=%s without a root certificate encrypts but does not verify the server: a man in the middle can impersonate it", d.cfg.SSLMode),
			Fix:     "set sslrootcert=/path/to/ca.crt and sslmode=verify-full (fetch the server's chain with: pgtrust certs inspect --server HOST:PORT)"})
	case f.Encrypted && !f.HostnameVerified:
		add(Warning{Code: WarnNotVerified,
			Message: fmt.Sprintf("sslmode=%s verifies the chain but not the host name: any certificate from the same CA is accepted", d.cfg.SSLMode),
			Fix:     "use sslmode=verify-full"})
	}
	if f.Encrypted && f.TLSVersion == tls.VersionTLS12 {
		if d.cfg.SSLMaxProtocolVersion == 0 || d.cfg.SSLMaxProtocolVersion >= tls.VersionTLS13 {
			add(Warning{Code: WarnTLS12,
				Message: "TLSv1.2 was negotiated although this client offers TLSv1.3: the server caps the version",
				Fix:     "on the server: ssl_max_protocol_version = '' (or 'TLSv1.3') in postgresql.conf, then SELECT pg_reload_conf()"})
		} else {
			add(Warning{Code: WarnTLS12,
				Message: "TLSv1.2 was negotiated because ssl_max_protocol_version=" + pgtls.VersionName(d.cfg.SSLMaxProtocolVersion) + " on the client",
				Fix:     "drop ssl_max_protocol_version from the connection settings"})
		}
	}
	if f.Encrypted && d.cfg.ChannelBinding != "require" {
		switch {
		case contains(f.SASLMechanisms, "SCRAM-SHA-256-PLUS") && !f.ChannelBound:
			add(Warning{Code: WarnNoChannelBind,
				Message: "the server offered SCRAM-SHA-256-PLUS but channel binding was not used (channel_binding=" + d.cfg.ChannelBinding + ")",
				Fix:     "set channel_binding=require"})
		case f.AuthMethod() == "password" || f.AuthMethod() == "md5":
			add(Warning{Code: WarnNoChannelBind,
				Message: "the server authenticated with " + f.AuthMethod() + " over TLS, where SCRAM-SHA-256 with channel binding was possible",
				Fix:     "on the server: password_encryption = 'scram-sha-256', reset the password, and use scram-sha-256 in pg_hba.conf; then channel_binding=require"})
		}
	}
	if len(f.Attempts) > 1 && d.cfg.SSLMode == connstring.SSLPrefer && !f.Encrypted {
		add(Warning{Code: WarnFallback,
			Message: "sslmode=prefer fell back to an unencrypted connection after TLS failed: " + firstTLSFailure(f.Attempts),
			Fix:     "fix the TLS failure and use sslmode=verify-full, which never falls back"})
	}
}

func firstTLSFailure(as []pgtls.Attempt) string {
	for _, a := range as {
		if a.Method == pgtls.MethodSSL && a.Err != nil {
			return firstLine(a.Err.Error())
		}
	}
	return "unknown"
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
