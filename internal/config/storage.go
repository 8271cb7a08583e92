package config

import (
	"fmt"
	"strconv"
)

// Storage is seed 001's [storage] table (Horizon Epoch's epoch.toml): the
// proxy accepts its [storage.postgres.NAME] tables unchanged.
type Storage struct {
	Postgres map[string]*StorageTable `toml:"postgres"`
}

// StorageTable is one [storage.postgres.NAME] table as epoch.toml writes
// it, plus the pgtrust keys listen, vault_namespace, vault_ttl and
// vault_ca_cert. It
// becomes the upstream NAME.
type StorageTable struct {
	Host           string `toml:"host"`
	Port           int    `toml:"port"`
	Database       string `toml:"database"`
	Username       string `toml:"username"`
	SSLMode        string `toml:"sslmode"`
	SSLCert        string `toml:"ssl_cert"`
	SSLKey         string `toml:"ssl_key"`
	SSLRootCert    string `toml:"ssl_rootcert"`
	SSLKeyPassword string `toml:"ssl_key_password"`
	// Vault PKI: with vault_pki_role the client certificate is issued by
	// Vault for CN = username and renewed (seed 001's rule).
	VaultAddr            string   `toml:"vault_addr"`
	VaultToken           string   `toml:"vault_token"`
	VaultPKIRole         string   `toml:"vault_pki_role"`
	CertRenewalThreshold float64  `toml:"cert_renewal_threshold"`
	VaultNamespace       string   `toml:"vault_namespace"`
	VaultTTL             Duration `toml:"vault_ttl"`
	// VaultCACert is pgtrust's: the CA of Vault's own HTTPS certificate
	// when it is not in the system's roots.
	VaultCACert string `toml:"vault_ca_cert"`
	// Listen is pgtrust's: the local address of this upstream.
	Listen string `toml:"listen"`
}

// String never shows the key password or the Vault token.
func (s StorageTable) String() string {
	return fmt.Sprintf("StorageTable{Host: %q, Port: %d, Database: %q, Username: %q, SSLMode: %q, VaultAddr: %q, VaultPKIRole: %q}",
		s.Host, s.Port, s.Database, s.Username, s.SSLMode, s.VaultAddr, s.VaultPKIRole)
}

// GoString never shows the key password or the Vault token.
func (s StorageTable) GoString() string { return "config." + s.String() }

// seedVaultKeys maps VaultTable keys to the names [storage.postgres.NAME] uses.
var seedVaultKeys = map[string]string{
	"addr": "vault_addr", "token": "vault_token", "pki_role": "vault_pki_role", "namespace": "vault_namespace",
	"ttl": "vault_ttl", "renewal_threshold": "cert_renewal_threshold", "common_name": "username", "ca_cert": "vault_ca_cert",
}

func seedVaultKey(k string) string {
	if n, ok := seedVaultKeys[k]; ok {
		return n
	}
	return k
}

// upstreamKey is where upstream name is written: [upstreams.NAME] or
// seed 001's [storage.postgres.NAME].
func (f *File) upstreamKey(name string) string {
	if u := f.Upstreams[name]; u != nil && u.storage {
		return "storage.postgres." + name
	}
	return "upstreams." + name
}

// storageUpstreams turns [storage.postgres.NAME] tables into upstreams.
func (f *File) storageUpstreams() error {
	if f.Storage == nil || len(f.Storage.Postgres) == 0 {
		return nil
	}
	if f.Upstreams == nil {
		f.Upstreams = map[string]*Upstream{}
	}
	names := sortedKeys(f.Storage.Postgres)
	for _, name := range names {
		key := "storage.postgres." + name
		if _, dup := f.Upstreams[name]; dup {
			return f.invalid(key, "the name %q is used by both [upstreams.%s] and [%s]", name, name, key).
				WithFix("rename one of the two tables: each becomes an upstream, and upstream names are unique")
		}
	}
	single := len(names) == 1 && len(f.Upstreams) == 0
	for _, name := range names {
		s := f.Storage.Postgres[name]
		key := "storage.postgres." + name
		if s == nil {
			s = &StorageTable{}
		}
		if s.Host == "" {
			return f.invalid(key+".host", "the database host is not set").WithFix("set %s.host to the PostgreSQL server's host name", key)
		}
		settings := map[string]any{"host": s.Host}
		put := func(k, v string) {
			if v != "" {
				settings[k] = v
			}
		}
		if s.Port != 0 {
			if s.Port < 0 || s.Port > 65535 {
				return f.invalid(key+".port", "%d is not a port number", s.Port).WithFix("use a port between 1 and 65535, or remove it for 5432")
			}
			settings["port"] = strconv.Itoa(s.Port)
		}
		put("dbname", s.Database)
		put("user", s.Username)
		put("sslmode", s.SSLMode)
		put("sslrootcert", s.SSLRootCert)
		put("sslcert", s.SSLCert)
		put("sslkey", s.SSLKey)
		put("sslpassword", s.SSLKeyPassword)
		u := &Upstream{Listen: s.Listen, Settings: settings, settingsOrigin: f.where() + ": [" + key + "]", storage: true}
		vaultKeys := s.VaultAddr != "" || s.VaultToken != "" || s.CertRenewalThreshold != 0 || s.VaultNamespace != "" || s.VaultTTL != 0 || s.VaultCACert != ""
		switch {
		case s.VaultPKIRole != "":
			if s.SSLCert != "" || s.SSLKey != "" {
				return f.invalid(key, "both vault_pki_role and ssl_cert/ssl_key are given").
					WithEvidence("keys %[1]s.vault_pki_role and %[1]s.ssl_cert/ssl_key both name the client certificate", key).
					WithFix("keep one: vault_pki_role (a certificate from Vault, renewed) or ssl_cert and ssl_key (files)")
			}
			u.Vault = &VaultTable{Addr: s.VaultAddr, Token: s.VaultToken, PKIRole: s.VaultPKIRole, Namespace: s.VaultNamespace,
				TTL: s.VaultTTL, RenewalThreshold: s.CertRenewalThreshold, CACert: s.VaultCACert, keyName: seedVaultKey}
		case vaultKeys:
			return f.invalid(key+".vault_pki_role", "Vault keys are set but vault_pki_role is not").
				WithEvidence("%s has vault_addr, vault_token, cert_renewal_threshold, vault_namespace or vault_ttl without vault_pki_role", key).
				WithFix(`set %s.vault_pki_role = "<mount>/issue/<role>" (e.g. "pki/issue/epoch-client"), or remove the vault_* keys`, key)
		}
		if u.Listen == "" {
			if !single {
				return f.invalid(key+".listen", "several upstreams and [%s] has no listen address", key).
					WithEvidence("%d [storage.postgres.*] and %d [upstreams.*] tables; only a single storage table defaults to %s", len(names), len(f.Upstreams), DefaultListen).
					WithFix(`add listen = "127.0.0.1:6433" (a free local address) to [%s]; pgtrust reads this key, the rest of the table stays as epoch.toml writes it`, key)
			}
			u.Listen = DefaultListen
		}
		f.Upstreams[name] = u
	}
	return nil
}
