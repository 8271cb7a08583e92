package connstring

// keyword describes one connection keyword libpq 18 accepts.
type keyword struct {
	name   string // keyword as written in a DSN
	env    string // PG* environment fallback ("" when libpq has none)
	secret bool   // never shown: Redacted masks it
}

// keywords lists every keyword libpq 18 accepts, in the order of libpq's
// PQconninfoOptions table; Redacted renders settings in this order.
//
// requiressl is not here: like libpq's conninfo_storeval, the syntax layer
// turns it into sslmode at once. sslpassword deliberately has no env var
// (libpq has none, so PGSSLPASSWORD must not be read).
var keywords = []keyword{
	{"service", "PGSERVICE", false},
	{"user", "PGUSER", false},
	{"password", "PGPASSWORD", true},
	{"passfile", "PGPASSFILE", false},
	{"channel_binding", "PGCHANNELBINDING", false},
	{"connect_timeout", "PGCONNECT_TIMEOUT", false},
	{"dbname", "PGDATABASE", false},
	{"host", "PGHOST", false},
	{"hostaddr", "PGHOSTADDR", false},
	{"port", "PGPORT", false},
	{"client_encoding", "PGCLIENTENCODING", false},
	{"options", "PGOPTIONS", false},
	{"application_name", "PGAPPNAME", false},
	{"fallback_application_name", "", false},
	{"keepalives", "", false},
	{"keepalives_idle", "", false},
	{"keepalives_interval", "", false},
	{"keepalives_count", "", false},
	{"tcp_user_timeout", "", false},
	{"sslmode", "PGSSLMODE", false},
	{"sslnegotiation", "PGSSLNEGOTIATION", false},
	{"sslcompression", "PGSSLCOMPRESSION", false},
	{"sslcert", "PGSSLCERT", false},
	{"sslkey", "PGSSLKEY", false},
	{"sslcertmode", "PGSSLCERTMODE", false},
	{"sslpassword", "", true},
	{"sslkeylogfile", "", false},
	{"sslrootcert", "PGSSLROOTCERT", false},
	{"sslcrl", "PGSSLCRL", false},
	{"sslcrldir", "PGSSLCRLDIR", false},
	{"sslsni", "PGSSLSNI", false},
	{"requirepeer", "PGREQUIREPEER", false},
	{"require_auth", "PGREQUIREAUTH", false},
	{"min_protocol_version", "PGMINPROTOCOLVERSION", false},
	{"max_protocol_version", "PGMAXPROTOCOLVERSION", false},
	{"ssl_min_protocol_version", "PGSSLMINPROTOCOLVERSION", false},
	{"ssl_max_protocol_version", "PGSSLMAXPROTOCOLVERSION", false},
	{"gssencmode", "PGGSSENCMODE", false},
	{"krbsrvname", "PGKRBSRVNAME", false},
	{"gsslib", "PGGSSLIB", false},
	{"gssdelegation", "PGGSSDELEGATION", false},
	{"replication", "", false},
	{"target_session_attrs", "PGTARGETSESSIONATTRS", false},
	{"load_balance_hosts", "PGLOADBALANCEHOSTS", false},
	{"scram_client_key", "", true},
	{"scram_server_key", "", true},
	{"oauth_issuer", "", false},
	{"oauth_client_id", "", false},
	{"oauth_client_secret", "", true},
	{"oauth_scope", "", false},
}

// keywordIndex maps a keyword name to its position in keywords.
var keywordIndex = func() map[string]int {
	m := make(map[string]int, len(keywords))
	for i, k := range keywords {
		m[k.name] = i
	}
	return m
}()

// IsKeyword reports whether name is a connection keyword libpq 18 accepts
// (including the legacy alias requiressl).
func IsKeyword(name string) bool {
	_, ok := keywordIndex[name]
	return ok || name == "requiressl"
}

// IsSecret reports whether the value of keyword name is a secret that must
// never be shown (password, sslpassword, SCRAM keys, OAuth client secret).
func IsSecret(name string) bool {
	i, ok := keywordIndex[name]
	return ok && keywords[i].secret
}

// EnvVar returns the PG* environment variable that supplies keyword name
// when it is not given, or "" when libpq reads none for it.
func EnvVar(name string) string {
	if i, ok := keywordIndex[name]; ok {
		return keywords[i].env
	}
	return ""
}

// Mask is what Redacted shows instead of a secret value.
const Mask = "********"
