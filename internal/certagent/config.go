// Package certagent keeps a certificate, its key and CA files fresh on disk
// from a certs.RenewingSource, for software that reads TLS files itself
// (PostgreSQL's ssl_cert_file / ssl_key_file): atomic writes with the modes
// and owner PostgreSQL insists on, and a reload command after each renewal.
// It backs `pgtrust certs agent` (daemon) and `pgtrust certs renew` (one
// shot, for cron).
package certagent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/config"
)

// DefaultReloadTimeout bounds the reload command when reload_timeout is not set.
const DefaultReloadTimeout = 30 * time.Second

// DefaultHealthListen is [health] listen when the table is present without
// it: loopback, so metrics are not exposed beyond the host by default.
const DefaultHealthListen = "127.0.0.1:9466"

// Config is the agent's TOML file.
type Config struct {
	Agent  AgentTable         `toml:"agent"`
	Vault  *config.VaultTable `toml:"vault"`
	Step   *config.StepTable  `toml:"step"`
	Health *Health            `toml:"health"`

	// Path is the file the configuration came from ("" when parsed from bytes).
	Path string `toml:"-"`
	// owner resolved from Agent.Owner; ownerSet is false when no owner is configured.
	uid, gid int
	ownerSet bool
}

// AgentTable is the [agent] table.
type AgentTable struct {
	CertFile      string          `toml:"cert_file"`      // leaf and chain, PEM, 0644
	KeyFile       string          `toml:"key_file"`       // PKCS#8 PEM, 0600 (0640 when owned by root:GROUP)
	CAFile        string          `toml:"ca_file"`        // optional: the CA certificates the CA named, PEM, 0644
	Owner         string          `toml:"owner"`          // "user[:group]"; default: the agent's own user
	ReloadCommand []string        `toml:"reload_command"` // argv, run without a shell after each write
	ReloadTimeout config.Duration `toml:"reload_timeout"` // default DefaultReloadTimeout
}

// Health is the [health] table.
type Health struct {
	// Listen is the address of /metrics, /readyz and /livez; absent means
	// DefaultHealthListen, "" disables the server.
	Listen *string `toml:"listen"`
}

// HealthListen is the health server's address, "" when there is none.
func (c *Config) HealthListen() string {
	if c.Health == nil {
		return ""
	}
	if c.Health.Listen == nil {
		return DefaultHealthListen
	}
	return *c.Health.Listen
}

// ReloadTimeout is reload_timeout or its default.
func (c *Config) ReloadTimeout() time.Duration {
	if d := c.Agent.ReloadTimeout.D(); d > 0 {
		return d
	}
	return DefaultReloadTimeout
}

// Owner returns the uid and gid files are given to, and whether an owner
// is configured.
func (c *Config) Owner() (uid, gid int, ok bool) { return c.uid, c.gid, c.ownerSet }

// KeyMode is the key file's mode. PostgreSQL
// (src/backend/libpq/be-secure-common.c, check_ssl_key_file_permissions)
// accepts a key owned by the database user with no group or world bits
// (0600), or owned by root with at most u=rw,g=r (0640) so that the
// database user reads it through its group. The agent writes 0600, and
// 0640 only for an owner "root:GROUP", where 0600 would leave the key
// unreadable by the server.
func (c *Config) KeyMode() os.FileMode {
	if c.ownerSet && c.uid == 0 && strings.Contains(c.Agent.Owner, ":") {
		return 0o640
	}
	return 0o600
}

// reloadMarker is the file that records a reload still due: created
// after the files are written, removed once the reload command succeeds.
func (c *Config) reloadMarker() string {
	return filepath.Join(filepath.Dir(c.Agent.CertFile), "."+filepath.Base(c.Agent.CertFile)+".reload-pending")
}

// Load reads and validates the agent file at path; ${VAR} references are
// expanded with getenv (os.Getenv when nil).
func Load(path string, getenv func(string) string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, failure.Wrap(failure.ConfigInvalid, err, "cannot read the agent configuration %s", path).
			WithEvidence("%v", err).
			WithFix("check the path given to --config and that the file is readable by uid %d", os.Getuid())
	}
	return Parse(data, path, getenv)
}

// Parse decodes strictly (an unknown key is refused), expands ${VAR} and
// validates. path only names the file in errors.
func Parse(data []byte, path string, getenv func(string) string) (*Config, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	where := path
	if where == "" {
		where = "agent configuration"
	}
	c := &Config{Path: path}
	dec := toml.NewDecoder(bytes.NewReader(data)).DisallowUnknownFields()
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return nil, config.TOMLError(where, "the agent configuration", "docs/renewal.md", err)
	}
	if err := config.ExpandEnv(c, "", getenv); err != nil {
		return nil, err
	}
	if err := c.check(where); err != nil {
		return nil, err
	}
	return c, nil
}

func invalid(where, key, format string, args ...any) *failure.Error {
	return failure.New(failure.ConfigInvalid, "%s: %s: %s", where, key, fmt.Sprintf(format, args...))
}

func (c *Config) check(where string) error {
	a := &c.Agent
	if a.CertFile == "" {
		return invalid(where, "agent.cert_file", "is required").
			WithFix("set agent.cert_file to the certificate file to keep fresh, e.g. /var/lib/postgresql/server.crt")
	}
	if a.KeyFile == "" {
		return invalid(where, "agent.key_file", "is required").
			WithFix("set agent.key_file to the private key file to keep fresh, e.g. /var/lib/postgresql/server.key")
	}
	paths := map[string]string{a.CertFile: "agent.cert_file"}
	for key, p := range map[string]string{"agent.key_file": a.KeyFile, "agent.ca_file": a.CAFile} {
		if p == "" {
			continue
		}
		if other, dup := paths[p]; dup {
			return invalid(where, key, "is the same file as %s (%s)", other, p).
				WithFix("give the certificate, the key and the CA file three different paths")
		}
		paths[p] = key
	}
	if len(a.ReloadCommand) > 0 && a.ReloadCommand[0] == "" {
		return invalid(where, "agent.reload_command", "the program (first element) is empty").
			WithFix(`write the command as an argument list, e.g. reload_command = ["pg_ctl", "reload", "-D", "/var/lib/postgresql/data"]`)
	}
	if c.Vault != nil && c.Step != nil {
		return invalid(where, "[vault] and [step]", "both are present").
			WithEvidence("the agent keeps one certificate from one CA").
			WithFix("keep exactly one of [vault] or [step]")
	}
	if c.Vault == nil && c.Step == nil {
		return failure.New(failure.ConfigInvalid, "%s: no CA: neither [vault] nor [step] is present", where).
			WithFix("add a [vault] table (addr, pki_role, common_name, token or auth) or a [step] table (ca_url, root, provisioner, ...)")
	}
	if l := c.HealthListen(); l != "" {
		if _, _, err := net.SplitHostPort(l); err != nil {
			return invalid(where, "health.listen", "%q is not host:port", l).
				WithFix(`write it like "127.0.0.1:9466", or "" to disable the health server`)
		}
	}
	if a.Owner != "" {
		uid, gid, err := lookupOwner(a.Owner)
		if err != nil {
			return invalid(where, "agent.owner", "%v", err).
				WithFix(`name an existing user, optionally with a group: owner = "postgres" or "root:postgres"`)
		}
		c.uid, c.gid, c.ownerSet = uid, gid, true
	}
	return nil
}

// lookupOwner resolves "user[:group]" (names or numbers); without a group,
// the user's primary group.
func lookupOwner(s string) (uid, gid int, err error) {
	name, group, hasGroup := strings.Cut(s, ":")
	u, err := user.Lookup(name)
	if err != nil {
		if u, err = user.LookupId(name); err != nil {
			return 0, 0, fmt.Errorf("user %q not found", name)
		}
	}
	if uid, err = strconv.Atoi(u.Uid); err != nil {
		return 0, 0, fmt.Errorf("user %q has no numeric uid", name)
	}
	gidStr := u.Gid
	if hasGroup {
		g, err := user.LookupGroup(group)
		if err != nil {
			if g, err = user.LookupGroupId(group); err != nil {
				return 0, 0, fmt.Errorf("group %q not found", group)
			}
		}
		gidStr = g.Gid
	}
	if gid, err = strconv.Atoi(gidStr); err != nil {
		return 0, 0, fmt.Errorf("group of %q has no numeric gid", s)
	}
	return uid, gid, nil
}

// Issuer builds the CA client and the renewal options of the [vault] or
// [step] table.
func (c *Config) Issuer(log *slog.Logger) (certs.Issuer, certs.RenewOptions, error) {
	if c.Vault != nil {
		vo, ro, err := c.Vault.Options("vault", "")
		if err != nil {
			return nil, ro, err
		}
		vo.Logger = log
		iss, err := certs.NewVaultIssuer(vo)
		if err != nil {
			return nil, ro, err
		}
		return iss, ro, nil
	}
	so, ro, err := c.Step.Options("step", "")
	if err != nil {
		return nil, ro, err
	}
	so.Logger = log
	iss, err := certs.NewStepIssuer(so)
	if err != nil {
		return nil, ro, err
	}
	return iss, ro, nil
}
