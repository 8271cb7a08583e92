package config

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/proxy"
)

// Renewal defaults, as certs.NewRenewingSource applies them.
const (
	DefaultRenewalThreshold = 0.7
	DefaultRenewalJitter    = 0.05
)

// VaultTable is [upstreams.NAME.vault], [upstreams.NAME.gateway.vault] and the agent's [vault].
type VaultTable struct {
	Addr       string   `toml:"addr"`
	Namespace  string   `toml:"namespace"`
	PKIRole    string   `toml:"pki_role"`    // "<mount>/issue/<role>", e.g. "pki/issue/epoch-client"
	CommonName string   `toml:"common_name"` // default: the upstream's user (client) / required (server)
	AltNames   []string `toml:"alt_names"`
	IPSANs     []string `toml:"ip_sans"`
	TTL        Duration `toml:"ttl"`
	Token      string   `toml:"token"` // usually "${VAULT_TOKEN}"; absent → token_file → VAULT_TOKEN
	TokenFile  string   `toml:"token_file"`
	AppRole    *struct {
		Mount        string `toml:"mount"`
		RoleIDFile   string `toml:"role_id_file"`
		SecretIDFile string `toml:"secret_id_file"`
	} `toml:"approle"`
	Kubernetes *struct {
		Mount   string `toml:"mount"`
		Role    string `toml:"role"`
		JWTFile string `toml:"jwt_file"`
	} `toml:"kubernetes"`
	CACert           string   `toml:"ca_cert"` // CA of Vault's HTTPS
	RequestTimeout   Duration `toml:"request_timeout"`
	TrustIssuedCA    bool     `toml:"trust_issued_ca"`
	RenewalThreshold float64  `toml:"renewal_threshold"` // default 0.7
	RenewalJitter    float64  `toml:"renewal_jitter"`    // default 0.05

	// keyName renames a key in messages: seed 001's [storage.postgres.NAME]
	// writes vault_pki_role where this table writes pki_role.
	keyName func(string) string
}

// String never shows the token.
func (v VaultTable) String() string {
	tok := ""
	if v.Token != "" {
		tok = "[redacted]"
	}
	return fmt.Sprintf("VaultTable{Addr: %q, PKIRole: %q, CommonName: %q, Token: %q, TokenFile: %q}", v.Addr, v.PKIRole, v.CommonName, tok, v.TokenFile)
}

// GoString never shows the token.
func (v VaultTable) GoString() string { return "config." + v.String() }

func (v *VaultTable) key(where, k string) string {
	if v.keyName != nil {
		k = v.keyName(k)
	}
	return where + "." + k
}

// tableInvalid is a config_invalid error naming the key.
func tableInvalid(key, format string, args ...any) *failure.Error {
	return failure.New(failure.ConfigInvalid, "%s: %s", key, fmt.Sprintf(format, args...)).
		WithEvidence("key %s", key)
}

// mustExist checks that a file named by key exists; its content is not
// read here (it may be a secret, read at each use).
func mustExist(key, path string) error {
	if _, err := os.Stat(path); err != nil {
		return failure.Wrap(failure.ConfigInvalid, err, "%s: file %s is not usable", key, path).
			WithEvidence("key %s names %s: %v", key, path, err).
			WithFix("create the file, or correct %s (it must be readable by uid %d)", key, os.Getuid())
	}
	return nil
}

// renewOptions checks a threshold and a jitter (0 = default) as the engine
// will, naming the keys.
func renewOptions(thKey string, th float64, jKey string, j float64, trust bool) (certs.RenewOptions, error) {
	if th == 0 {
		th = DefaultRenewalThreshold
	}
	if j == 0 {
		j = DefaultRenewalJitter
	}
	if !(th > 0 && th < 1) {
		return certs.RenewOptions{}, tableInvalid(thKey, "%v is not a fraction between 0 and 1", th).
			WithFix("set %s to the fraction of the lifetime after which to renew, e.g. 0.7 (renew when 70%% of the lifetime has passed)", thKey)
	}
	if !(j > 0 && j < th) {
		return certs.RenewOptions{}, tableInvalid(jKey, "%v is not between 0 and the threshold %v", j, th).
			WithFix("set %s to a small fraction of the lifetime below the threshold, e.g. 0.05", jKey)
	}
	return certs.RenewOptions{Threshold: th, Jitter: j, TrustIssuedCA: trust}, nil
}

// Options validates the table (where names it in errors, e.g. "upstreams.main.vault") and returns
// the issuer options and the renewal options (Threshold, Jitter, TrustIssuedCA set; Logger etc. left to the caller).
func (v *VaultTable) Options(where, defaultCN string) (certs.VaultOptions, certs.RenewOptions, error) {
	var o certs.VaultOptions
	if v.Addr == "" {
		k := v.key(where, "addr")
		return o, certs.RenewOptions{}, tableInvalid(k, "the Vault address is not set").
			WithFix(`set %s = "https://vault.example:8200"`, k)
	}
	if err := certs.CheckVaultAddress(v.Addr); err != nil {
		// http:// only to this host: the token, secret_id and issued keys
		// would otherwise cross the network in clear text.
		k := v.key(where, "addr")
		fe, _ := failure.As(err)
		return o, certs.RenewOptions{}, tableInvalid(k, "%s", fe.Message).
			WithEvidence("key %s: %s", k, fe.Evidence).
			WithFix("%s", strings.Replace(fe.Fix, "the Vault address", k, 1))
	}
	k := v.key(where, "pki_role")
	if v.PKIRole == "" {
		return o, certs.RenewOptions{}, tableInvalid(k, "the PKI role is not set").
			WithFix(`set %s = "<mount>/issue/<role>", e.g. "pki/issue/epoch-client"`, k)
	}
	mount, role, err := certs.ParseVaultPKIRole(v.PKIRole)
	if err != nil {
		// The value is a path, not a secret: showing it is how the shape is fixed.
		return o, certs.RenewOptions{}, failure.New(failure.ConfigInvalid, "%s: %q is not <mount>/issue/<role>", k, v.PKIRole).
			WithEvidence("key %s is %q; Vault issues certificates at POST /v1/<mount>/issue/<role>", k, v.PKIRole).
			WithFix(`write it as "<mount>/issue/<role>", e.g. %s = "pki/issue/epoch-client"`, k)
	}
	cn := v.CommonName
	if cn == "" {
		cn = defaultCN
	}
	if cn == "" {
		ck := v.key(where, "common_name")
		return o, certs.RenewOptions{}, tableInvalid(ck, "the certificate's common name is not set").
			WithFix("set %s (the PostgreSQL user for a client certificate, the host name clients connect to for a server certificate)", ck)
	}
	o = certs.VaultOptions{Address: v.Addr, Namespace: v.Namespace, Mount: mount, Role: role, CommonName: cn,
		AltNames: v.AltNames, TTL: v.TTL.D(), Token: v.Token, TokenFile: v.TokenFile, CACertFile: v.CACert,
		RequestTimeout: v.RequestTimeout.D()}
	for i, s := range v.IPSANs {
		ip := net.ParseIP(s)
		if ip == nil {
			ik := fmt.Sprintf("%s[%d]", v.key(where, "ip_sans"), i)
			return o, certs.RenewOptions{}, tableInvalid(ik, "%q is not an IP address", s).WithFix("list IP addresses only; host names go in alt_names")
		}
		o.IPSANs = append(o.IPSANs, ip)
	}
	// One way to log in, as VaultOptions documents; two would leave the
	// reader guessing which one applies.
	var ways []string
	if v.AppRole != nil {
		ways = append(ways, v.key(where, "approle"))
	}
	if v.Kubernetes != nil {
		ways = append(ways, v.key(where, "kubernetes"))
	}
	if v.Token != "" {
		ways = append(ways, v.key(where, "token"))
	}
	if v.TokenFile != "" {
		ways = append(ways, v.key(where, "token_file"))
	}
	if len(ways) > 1 {
		return o, certs.RenewOptions{}, failure.New(failure.ConfigInvalid, "%s: several ways to log in to Vault are given: %s", where, strings.Join(ways, ", ")).
			WithEvidence("keys %s are all set; Vault login uses exactly one of approle, kubernetes, token, token_file (else the VAULT_TOKEN variable)", strings.Join(ways, ", ")).
			WithFix("keep one of them")
	}
	if v.TokenFile != "" {
		if err := mustExist(v.key(where, "token_file"), v.TokenFile); err != nil {
			return o, certs.RenewOptions{}, err
		}
	}
	if a := v.AppRole; a != nil {
		ak := v.key(where, "approle")
		if a.RoleIDFile == "" || a.SecretIDFile == "" {
			return o, certs.RenewOptions{}, tableInvalid(ak, "AppRole login needs role_id_file and secret_id_file").
				WithFix("set %[1]s.role_id_file and %[1]s.secret_id_file", ak)
		}
		if err := mustExist(ak+".role_id_file", a.RoleIDFile); err != nil {
			return o, certs.RenewOptions{}, err
		}
		if err := mustExist(ak+".secret_id_file", a.SecretIDFile); err != nil {
			return o, certs.RenewOptions{}, err
		}
		o.AppRole = &certs.VaultAppRole{Mount: a.Mount, RoleIDFile: a.RoleIDFile, SecretIDFile: a.SecretIDFile}
	}
	if kc := v.Kubernetes; kc != nil {
		kk := v.key(where, "kubernetes")
		if kc.Role == "" {
			return o, certs.RenewOptions{}, tableInvalid(kk+".role", "Kubernetes login needs the Vault role").
				WithFix("set %s.role to the Vault Kubernetes auth role bound to this service account", kk)
		}
		if kc.JWTFile != "" {
			if err := mustExist(kk+".jwt_file", kc.JWTFile); err != nil {
				return o, certs.RenewOptions{}, err
			}
		}
		o.Kubernetes = &certs.VaultKubernetes{Mount: kc.Mount, Role: kc.Role, JWTFile: kc.JWTFile}
	}
	if v.CACert != "" {
		if err := mustExist(v.key(where, "ca_cert"), v.CACert); err != nil {
			return o, certs.RenewOptions{}, err
		}
	}
	ro, err := renewOptions(v.key(where, "renewal_threshold"), v.RenewalThreshold, v.key(where, "renewal_jitter"), v.RenewalJitter, v.TrustIssuedCA)
	if err != nil {
		return o, ro, err
	}
	return o, ro, nil
}

// StepTable is [upstreams.NAME.step], [upstreams.NAME.gateway.step] and the agent's [step].
type StepTable struct {
	CAURL                   string   `toml:"ca_url"`
	Root                    string   `toml:"root"`
	Provisioner             string   `toml:"provisioner"`
	ProvisionerKeyFile      string   `toml:"provisioner_key_file"`
	ProvisionerPasswordFile string   `toml:"provisioner_password_file"`
	TokenFile               string   `toml:"token_file"`
	CommonName              string   `toml:"common_name"`
	SANs                    []string `toml:"sans"`
	Duration                Duration `toml:"duration"`
	TrustIssuedCA           bool     `toml:"trust_issued_ca"`
	RenewalThreshold        float64  `toml:"renewal_threshold"`
	RenewalJitter           float64  `toml:"renewal_jitter"`
}

// Options validates the table and returns the issuer and renewal options.
func (s *StepTable) Options(where, defaultCN string) (certs.StepOptions, certs.RenewOptions, error) {
	var o certs.StepOptions
	if !strings.HasPrefix(s.CAURL, "https://") {
		k := where + ".ca_url"
		return o, certs.RenewOptions{}, tableInvalid(k, "%q is not an https URL", s.CAURL).
			WithFix(`set %s = "https://ca.example:9000" (step-ca serves HTTPS only)`, k)
	}
	if s.Root == "" {
		k := where + ".root"
		return o, certs.RenewOptions{}, tableInvalid(k, "step-ca's root certificate is not set").
			WithFix("set %s to step-ca's root certificate (step ca root root_ca.crt): it is the only trust for the CA's HTTPS", k)
	}
	if err := mustExist(where+".root", s.Root); err != nil {
		return o, certs.RenewOptions{}, err
	}
	key, tok := s.ProvisionerKeyFile != "", s.TokenFile != ""
	switch {
	case key && tok:
		return o, certs.RenewOptions{}, failure.New(failure.ConfigInvalid, "%s: both provisioner_key_file and token_file are given", where).
			WithEvidence("keys %[1]s.provisioner_key_file and %[1]s.token_file are both set", where).
			WithFix("keep one: the provisioner key (pgtrust makes its own tokens) or a one-time token file from `step ca token`")
	case !key && !tok:
		return o, certs.RenewOptions{}, failure.New(failure.ConfigInvalid, "%s: no provisioner credentials: neither provisioner_key_file nor token_file is set", where).
			WithEvidence("key %s has no provisioner_key_file and no token_file", where).
			WithFix("set %[1]s.provisioner, %[1]s.provisioner_key_file and %[1]s.provisioner_password_file, or %[1]s.token_file", where)
	case key:
		if s.Provisioner == "" {
			return o, certs.RenewOptions{}, tableInvalid(where+".provisioner", "the provisioner name is not set").
				WithFix("set %s.provisioner to the JWK provisioner's name (step ca provisioner list)", where)
		}
		if s.ProvisionerPasswordFile == "" {
			return o, certs.RenewOptions{}, tableInvalid(where+".provisioner_password_file", "the provisioner key needs its password file").
				WithFix("set %s.provisioner_password_file to the file with the password that decrypts the provisioner key", where)
		}
		if err := mustExist(where+".provisioner_key_file", s.ProvisionerKeyFile); err != nil {
			return o, certs.RenewOptions{}, err
		}
		if err := mustExist(where+".provisioner_password_file", s.ProvisionerPasswordFile); err != nil {
			return o, certs.RenewOptions{}, err
		}
	case tok:
		if s.ProvisionerPasswordFile != "" {
			return o, certs.RenewOptions{}, tableInvalid(where+".provisioner_password_file", "a password file goes with provisioner_key_file, not token_file").
				WithFix("remove %s.provisioner_password_file, or use provisioner_key_file", where)
		}
		if err := mustExist(where+".token_file", s.TokenFile); err != nil {
			return o, certs.RenewOptions{}, err
		}
	}
	cn := s.CommonName
	if cn == "" {
		cn = defaultCN
	}
	if cn == "" {
		k := where + ".common_name"
		return o, certs.RenewOptions{}, tableInvalid(k, "the certificate's common name is not set").
			WithFix("set %s (the PostgreSQL user for a client certificate, the host name clients connect to for a server certificate)", k)
	}
	o = certs.StepOptions{CAURL: s.CAURL, RootFile: s.Root, Provisioner: s.Provisioner, ProvisionerKeyFile: s.ProvisionerKeyFile,
		ProvisionerPasswordFile: s.ProvisionerPasswordFile, TokenFile: s.TokenFile, CommonName: cn, SANs: s.SANs, Duration: s.Duration.D()}
	ro, err := renewOptions(where+".renewal_threshold", s.RenewalThreshold, where+".renewal_jitter", s.RenewalJitter, s.TrustIssuedCA)
	return o, ro, err
}

// tableKey identifies a table's content for a reload: a hash, so that the
// key (kept in memory, compared only) holds no token.
func tableKey(parts ...any) string {
	h := sha256.New()
	for _, p := range parts {
		b, err := json.Marshal(p)
		if err != nil {
			// Never equal to another table's key: a reload then starts afresh.
			b = []byte(fmt.Sprintf("unkeyable %p", &p))
		}
		h.Write(b)
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// clientRenewal builds the proxy's renewing source of upstream name's
// client certificate from its [vault] or [step] table (nil without one).
// The certificate's common name defaults to the upstream's user.
func (f *File) clientRenewal(name string, u *Upstream, user string) (*proxy.Renewal, error) {
	where := "upstreams." + name
	if u.storage {
		where = "storage.postgres." + name
	}
	r, err := renewalFor(where, u.Vault, u.Step, user)
	if err != nil {
		return nil, f.inFile(err)
	}
	return r, nil
}

// renewalFor turns a [vault] or [step] table at where into a proxy.Renewal.
func renewalFor(where string, v *VaultTable, s *StepTable, defaultCN string) (*proxy.Renewal, error) {
	switch {
	case v != nil:
		vw := where + ".vault"
		if v.keyName != nil {
			vw = where // seed 001's keys sit in the storage table itself
		}
		vo, ro, err := v.Options(vw, defaultCN)
		if err != nil {
			return nil, err
		}
		return &proxy.Renewal{Key: tableKey("vault", vw, *v, vo.CommonName), Options: ro,
			NewIssuer: func(log *slog.Logger) (certs.Issuer, error) {
				o := vo
				o.Logger = log
				return certs.NewVaultIssuer(o)
			}}, nil
	case s != nil:
		so, ro, err := s.Options(where+".step", defaultCN)
		if err != nil {
			return nil, err
		}
		return &proxy.Renewal{Key: tableKey("step", where, *s, so.CommonName), Options: ro,
			NewIssuer: func(log *slog.Logger) (certs.Issuer, error) {
				o := so
				o.Logger = log
				return certs.NewStepIssuer(o)
			}}, nil
	}
	return nil, nil
}
