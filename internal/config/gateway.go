package config

import (
	"fmt"
	"os"
	"strings"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/identmap"
	"github.com/pgtrust/pgtrust/internal/proxy"
	"github.com/pgtrust/pgtrust/internal/scram"
	"github.com/pgtrust/pgtrust/internal/userlist"
	"github.com/pgtrust/pgtrust/ratls"
)

// Gateway is one [[upstreams.NAME.gateway]] table: a remote listener of
// the upstream, TLS mandatory, with its own authentication mode.
type Gateway struct {
	Listen string `toml:"listen"` // default ":5433"
	Auth   string `toml:"auth"`   // required: passthrough, cluster_secret, scram, cert
	// PoolMode overrides the upstream's [pool] mode for this listener:
	// "session", "transaction" or "none".
	PoolMode string `toml:"pool_mode"`

	// The server certificate: cert_file + key_file (hot-reloaded), or an
	// RA-TLS certificate issued by ratls = "configfs" ("simulator" in
	// development) for ratls_dns_names, valid ratls_lifetime (24h).
	CertFile      string   `toml:"cert_file"`
	KeyFile       string   `toml:"key_file"`
	RATLS         string   `toml:"ratls"`
	RATLSDNSNames []string `toml:"ratls_dns_names"`
	RATLSLifetime Duration `toml:"ratls_lifetime"`
	// Or a certificate issued and renewed by Vault PKI or step-ca
	// ([upstreams.NAME.gateway.vault] / .step; common_name required).
	Vault *VaultTable `toml:"vault"`
	Step  *StepTable  `toml:"step"`

	// Client certificates: requested and verified when client_ca_file is
	// set, required in cert mode.
	ClientCAFile  string `toml:"client_ca_file"`
	ClientCRLFile string `toml:"client_crl_file"`
	ClientCRLDir  string `toml:"client_crl_dir"`

	RequireChannelBinding bool `toml:"require_channel_binding"`

	// cert mode: identity sources in order, and the pg_ident-style map.
	IdentitySources []string `toml:"identity_sources"`
	IdentityMapFile string   `toml:"identity_map_file"`
	// The gateway's upstream password in cert mode (file or variable,
	// never the command line).
	UpstreamPasswordFile string `toml:"upstream_password_file"`
	UpstreamPasswordEnv  string `toml:"upstream_password_env"`

	// cluster_secret: the role table, by client user name.
	Roles map[string]*GatewayRole `toml:"roles"`

	// scram: the clients' SCRAM verifiers from a userlist file (PgBouncer
	// syntax) and/or an auth_query run as auth_user (file first); the
	// upstream role is the client's user name, opened with
	// upstream_password_* or the dsn's client certificate.
	AuthFile         string   `toml:"auth_file"`
	AuthQuery        string   `toml:"auth_query"` // default userlist.DefaultQuery when auth_user is set
	AuthUser         string   `toml:"auth_user"`
	AuthPasswordFile string   `toml:"auth_password_file"`
	AuthPasswordEnv  string   `toml:"auth_password_env"`
	AuthDBName       string   `toml:"auth_dbname"`
	AuthQueryTTL     Duration `toml:"auth_query_ttl"`   // 15s, known and unknown users alike
	ScramIterations  int      `toml:"scram_iterations"` // advertised for unknown users (4096)
	FakeSaltKeyFile  string   `toml:"fake_salt_key_file"`
	FakeSaltKeyEnv   string   `toml:"fake_salt_key_env"`

	BackoffBase Duration `toml:"backoff_base"` // first delay after a failure (100ms)
	BackoffMax  Duration `toml:"backoff_max"`  // cap (5s)
}

// GatewayRole is [upstreams.NAME.gateway.roles.USER].
type GatewayRole struct {
	Role         string `toml:"role"` // upstream role; default the user name
	VerifierFile string `toml:"verifier_file"`
	VerifierEnv  string `toml:"verifier_env"`
	// DowngradeFrom lists users whose secret may also log in as this one;
	// default for teesql_read: ["teesql_readwrite"] when that user exists.
	DowngradeFrom *[]string `toml:"downgrade_from"`
	PasswordFile  string    `toml:"password_file"` // the gateway's password for role upstream
	PasswordEnv   string    `toml:"password_env"`
}

// UpstreamAuth is [upstreams.NAME.auth]: the local listeners open the
// upstream as role with the gateway's credentials.
type UpstreamAuth struct {
	Role         string `toml:"role"`
	PasswordFile string `toml:"password_file"`
	PasswordEnv  string `toml:"password_env"`
}

// TeeSQL's default user names.
const (
	ReadUser      = "teesql_read"
	ReadWriteUser = "teesql_readwrite"
)

// checkGateways applies the structural rules of the gateway tables.
func (f *File) checkGateways(key string, u *Upstream) error {
	for i, g := range u.Gateway {
		gk := fmt.Sprintf("%s.gateway[%d]", key, i)
		if g == nil {
			return f.invalid(gk, "empty gateway table").WithFix("set at least cert_file and key_file (or ratls)")
		}
		switch g.Auth {
		case "":
			// No default: passthrough on a remote listener trusts
			// pg_hba.conf to authenticate every client itself, a choice the
			// operator must make knowingly.
			return f.invalid(gk+".auth", "auth is required on a gateway listener").
				WithEvidence("a gateway listener is reachable by remote clients; how they authenticate has no safe default").
				WithFix(`set auth = "cluster_secret" (SCRAM secrets checked by the gateway), "cert" (client certificates and an identity map) or "passthrough" (the upstream authenticates each client: its pg_hba.conf must not trust the gateway's address)`)
		case "passthrough", "cluster_secret", "cert":
			if k := scramOnlyKey(g); k != "" {
				return f.invalid(gk+"."+k, "%s is a key of auth = \"scram\"", k).
					WithFix(`set auth = "scram", or remove %s`, k)
			}
		case "scram":
			if g.AuthFile == "" && g.AuthUser == "" {
				return f.invalid(gk, "auth = \"scram\" needs auth_file or auth_user").
					WithEvidence("the client's SCRAM verifier comes from a userlist file (auth_file) or an auth_query run as auth_user").
					WithFix(`set auth_file = "/etc/pgtrust/userlist.txt" (lines "user" "SCRAM-SHA-256$..."), or auth_user = "pgtrust_lookup" with the function of docs/gateway.md`)
			}
			if g.AuthUser == "" && (g.AuthQuery != "" || g.AuthPasswordFile != "" || g.AuthPasswordEnv != "" || g.AuthDBName != "" || g.AuthQueryTTL != 0) {
				return f.invalid(gk+".auth_user", "auth_query settings without auth_user").
					WithFix("set auth_user to the NOSUPERUSER lookup role")
			}
			if g.AuthPasswordFile != "" && g.AuthPasswordEnv != "" {
				return f.invalid(gk, "both auth_password_file and auth_password_env are given").WithFix("keep one")
			}
			if g.FakeSaltKeyFile != "" && g.FakeSaltKeyEnv != "" {
				return f.invalid(gk, "both fake_salt_key_file and fake_salt_key_env are given").WithFix("keep one")
			}
			if g.AuthQuery != "" && !strings.Contains(g.AuthQuery, "$1") {
				return f.invalid(gk+".auth_query", "the query does not use $1").
					WithEvidence("the user name is passed as $1").WithFix("leave auth_query unset for the default: %s", userlist.DefaultQuery)
			}
			if g.ScramIterations < 0 || g.ScramIterations > scram.MaxIterations {
				return f.invalid(gk+".scram_iterations", "%d is out of range", g.ScramIterations).
					WithFix("use PostgreSQL's scram_iterations (default %d)", scram.DefaultIterations)
			}
			if len(g.Roles) > 0 {
				return f.invalid(gk+".roles", "a role table is cluster_secret's").
					WithFix("remove the roles tables: in scram mode the upstream role is the client's user name")
			}
		case "password", "md5":
			return f.invalid(gk+".auth", "%q is not offered", g.Auth).
				WithEvidence("the gateway would have to hold the clients' clear secrets (password) or an MD5 hash that is as good as the password (md5)").
				WithFix("use scram or cluster_secret (SCRAM verifiers, channel binding) or cert")
		default:
			return f.invalid(gk+".auth", "unknown mode %q", g.Auth).WithFix("use passthrough, cluster_secret, scram or cert")
		}
		if (g.CertFile == "") != (g.KeyFile == "") {
			return f.invalid(gk, "cert_file and key_file go together").WithFix("set both, or ratls instead")
		}
		var sources []string
		if g.CertFile != "" {
			sources = append(sources, "cert_file")
		}
		if g.RATLS != "" {
			sources = append(sources, "ratls")
		}
		if g.Vault != nil {
			sources = append(sources, "["+gk+".vault]")
		}
		if g.Step != nil {
			sources = append(sources, "["+gk+".step]")
		}
		if len(sources) > 1 {
			return f.invalid(gk, "both %s are given", strings.Join(sources, " and ")).
				WithFix("keep one source of the server certificate: cert_file and key_file, ratls, a [vault] table or a [step] table")
		}
		switch g.RATLS {
		case "":
			if len(sources) == 0 {
				return f.invalid(gk, "TLS is mandatory: no server certificate").WithFix("set cert_file and key_file, a [%s.vault] or [%s.step] table, or ratls = \"configfs\"", gk, gk)
			}
		case "configfs", "simulator":
		default:
			return f.invalid(gk+".ratls", "unknown provider %q", g.RATLS).WithFix(`use "configfs" (a TDX guest) or "simulator" (development only)`)
		}
		if g.UpstreamPasswordFile != "" && g.UpstreamPasswordEnv != "" {
			return f.invalid(gk, "both upstream_password_file and upstream_password_env are given").WithFix("keep one")
		}
		if _, err := identmap.ParseSources(g.IdentitySources); len(g.IdentitySources) > 0 && err != nil {
			return f.invalid(gk+".identity_sources", "%v", err).WithFix(`list some of "uri", "dns", "cn"`)
		}
		for user, r := range g.Roles {
			rk := gk + ".roles." + user
			if r == nil {
				return f.invalid(rk, "empty role table").WithFix("set verifier_file or verifier_env")
			}
			if (r.VerifierFile == "") == (r.VerifierEnv == "") {
				return f.invalid(rk, "give exactly one of verifier_file and verifier_env").
					WithFix("store the output of `pgtrust gateway hash-secret` in a file (or variable) and name it here")
			}
			if r.PasswordFile != "" && r.PasswordEnv != "" {
				return f.invalid(rk, "both password_file and password_env are given").WithFix("keep one")
			}
		}
	}
	if u.Auth != nil && u.Auth.PasswordFile != "" && u.Auth.PasswordEnv != "" {
		return f.invalid(key+".auth", "both password_file and password_env are given").WithFix("keep one")
	}
	return nil
}

// scramOnlyKey names a key of scram mode set on a gateway of another mode.
func scramOnlyKey(g *Gateway) string {
	for _, k := range []struct {
		name string
		set  bool
	}{
		{"auth_file", g.AuthFile != ""}, {"auth_query", g.AuthQuery != ""}, {"auth_user", g.AuthUser != ""},
		{"auth_password_file", g.AuthPasswordFile != ""}, {"auth_password_env", g.AuthPasswordEnv != ""},
		{"auth_dbname", g.AuthDBName != ""}, {"auth_query_ttl", g.AuthQueryTTL != 0}, {"scram_iterations", g.ScramIterations != 0},
		{"fake_salt_key_file", g.FakeSaltKeyFile != ""}, {"fake_salt_key_env", g.FakeSaltKeyEnv != ""},
	} {
		if k.set {
			return k.name
		}
	}
	return ""
}

// secretFrom reads a secret from a file or an environment variable (never
// the command line); a trailing newline of the file is dropped.
func (f *File) secretFrom(key, file, envName string, env map[string]string) (string, error) {
	switch {
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", failure.Wrap(failure.ConfigInvalid, err, "%s: %s: cannot read %s", f.where(), key, file).
				WithEvidence("%v", err).WithFix("make %s readable by uid %d", file, os.Getuid())
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	case envName != "":
		v, ok := env[envName]
		if !ok || v == "" {
			return "", f.invalid(key, "environment variable %s is not set", envName).WithFix("set %s, or use a file", envName)
		}
		return v, nil
	}
	return "", nil
}

// gatewayConfigs builds the proxy's gateway listeners of upstream u.
func (f *File) gatewayConfigs(key string, u *Upstream, env map[string]string) ([]proxy.GatewayConfig, error) {
	var out []proxy.GatewayConfig
	for i, g := range u.Gateway {
		gk := fmt.Sprintf("%s.gateway[%d]", key, i)
		pg := proxy.GatewayConfig{
			Listen: g.Listen, Auth: proxy.AuthMode(g.Auth), CertFile: g.CertFile, KeyFile: g.KeyFile,
			ClientCAFile: g.ClientCAFile, ClientCRLFile: g.ClientCRLFile, ClientCRLDir: g.ClientCRLDir,
			RequireChannelBinding: g.RequireChannelBinding, PoolMode: g.PoolMode,
		}
		pg.Backoff.Base, pg.Backoff.Max = g.BackoffBase.D(), g.BackoffMax.D()
		switch g.RATLS {
		case "configfs":
			p, err := ratls.NewConfigFSProvider()
			if err != nil {
				return nil, failure.Wrap(failure.ClassOf(err), err, "%s: %s.ratls: the configfs-tsm provider is unavailable", f.where(), gk).
					WithFix("run inside a TDX guest with configfs-tsm, or use cert_file/key_file (ratls = \"simulator\" only in development)")
			}
			pg.RATLS = &proxy.RATLSCertificate{Provider: p, Kind: g.RATLS}
		case "simulator":
			sim, err := ratls.NewSimulator(ratls.SimulatorOptions{})
			if err != nil {
				return nil, err
			}
			pg.RATLS = &proxy.RATLSCertificate{Provider: sim, Kind: g.RATLS}
		}
		if pg.RATLS != nil {
			pg.RATLS.Options.DNSNames = g.RATLSDNSNames
			pg.RATLS.Lifetime = g.RATLSLifetime.D()
		}
		// A server certificate has no default name: clients verify it
		// against the host they dial (verify-full), so common_name is required.
		r, err := renewalFor(gk, g.Vault, g.Step, "")
		if err != nil {
			return nil, f.inFile(err)
		}
		pg.Renewal = r
		if len(g.IdentitySources) > 0 {
			src, err := identmap.ParseSources(g.IdentitySources)
			if err != nil {
				return nil, f.invalid(gk+".identity_sources", "%v", err)
			}
			pg.IdentitySources = src
		}
		if g.IdentityMapFile != "" {
			b, err := os.ReadFile(g.IdentityMapFile)
			if err != nil {
				return nil, failure.Wrap(failure.ConfigInvalid, err, "%s: %s.identity_map_file: cannot read %s", f.where(), gk, g.IdentityMapFile).
					WithFix("make the file readable by uid %d", os.Getuid())
			}
			rules, err := identmap.ParseMapFile(string(b))
			if err == nil {
				pg.IdentityMap, err = identmap.NewMap(rules)
			}
			if err != nil {
				return nil, failure.Wrap(failure.ConfigInvalid, err, "%s: %s.identity_map_file %s: %v", f.where(), gk, g.IdentityMapFile, err).
					WithFix("write lines of \"IDENTITY ROLE\"; IDENTITY exact or /regex, ROLE may use \\1")
			}
		}
		pw, err := f.secretFrom(gk+".upstream_password", g.UpstreamPasswordFile, g.UpstreamPasswordEnv, env)
		if err != nil {
			return nil, err
		}
		pg.UpstreamPassword = pw
		if g.Auth == "scram" {
			pg.AuthFile, pg.ScramIterations = g.AuthFile, g.ScramIterations
			if g.AuthFile != "" {
				// Checked here too so that `pgtrust config validate` and a
				// SIGHUP see a bad file before anything is swapped; the
				// proxy reads it again when it builds the listener.
				if _, err := userlist.LoadFile(g.AuthFile); err != nil {
					fe, ok := failure.As(err)
					if !ok {
						return nil, failure.Wrap(failure.ConfigInvalid, err, "%s: %s.auth_file: %v", f.where(), gk, err)
					}
					e := *fe
					e.Message = fmt.Sprintf("%s: %s.auth_file: %s", f.where(), gk, fe.Message)
					return nil, &e
				}
			}
			if g.AuthUser != "" {
				apw, err := f.secretFrom(gk+".auth_password", g.AuthPasswordFile, g.AuthPasswordEnv, env)
				if err != nil {
					return nil, err
				}
				pg.AuthQuery = &proxy.AuthQueryConfig{User: g.AuthUser, Password: apw, DBName: g.AuthDBName, Query: g.AuthQuery, TTL: g.AuthQueryTTL.D()}
			}
			key, err := f.secretFrom(gk+".fake_salt_key", g.FakeSaltKeyFile, g.FakeSaltKeyEnv, env)
			if err != nil {
				return nil, err
			}
			if key != "" && len(key) < scram.MinFakeSaltKeyLen {
				return nil, f.invalid(gk+".fake_salt_key", "the key has %d bytes, fewer than %d", len(key), scram.MinFakeSaltKeyLen).
					WithFix("store at least 32 random bytes, e.g. openssl rand -base64 32")
			}
			if key != "" {
				pg.FakeSaltKey = []byte(key)
			}
		}
		for _, user := range sortedKeys(g.Roles) {
			r := g.Roles[user]
			rk := gk + ".roles." + user
			text, err := f.secretFrom(rk+".verifier", r.VerifierFile, r.VerifierEnv, env)
			if err != nil {
				return nil, err
			}
			v, err := scram.ParseVerifier(strings.TrimSpace(text))
			if err != nil {
				return nil, failure.Wrap(failure.ConfigInvalid, err, "%s: %s: the verifier does not parse", f.where(), rk).
					WithEvidence("%v", err).
					WithFix("store the single line printed by `pgtrust gateway hash-secret` (SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)")
			}
			pass, err := f.secretFrom(rk+".password", r.PasswordFile, r.PasswordEnv, env)
			if err != nil {
				return nil, err
			}
			gr := proxy.GatewayRole{User: user, Role: r.Role, Verifier: v, Password: pass}
			if gr.Role == "" {
				gr.Role = user
			}
			switch {
			case r.DowngradeFrom != nil:
				gr.DowngradeFrom = *r.DowngradeFrom
			case user == ReadUser && g.Roles[ReadWriteUser] != nil:
				gr.DowngradeFrom = []string{ReadWriteUser}
			}
			pg.Roles = append(pg.Roles, gr)
		}
		out = append(out, pg)
	}
	return out, nil
}

func sortedKeys[T any](m map[string]T) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	for i := 1; i < len(keys); i++ {
		for j := i; j > 0 && keys[j] < keys[j-1]; j-- {
			keys[j], keys[j-1] = keys[j-1], keys[j]
		}
	}
	return keys
}

// upstreamAuth builds [upstreams.NAME.auth].
func (f *File) upstreamAuth(key string, u *Upstream, env map[string]string) (*proxy.UpstreamAuth, error) {
	if u.Auth == nil {
		return nil, nil
	}
	pw, err := f.secretFrom(key+".auth.password", u.Auth.PasswordFile, u.Auth.PasswordEnv, env)
	if err != nil {
		return nil, err
	}
	return &proxy.UpstreamAuth{Role: u.Auth.Role, Password: pw}, nil
}

// HasGateway reports whether any upstream has a gateway listener.
func (f *File) HasGateway() bool {
	for _, u := range f.Upstreams {
		if len(u.Gateway) > 0 {
			return true
		}
	}
	return false
}
