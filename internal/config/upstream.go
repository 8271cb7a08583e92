package config

import (
	"log/slog"
	"os/user"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/proxy"
)

// Upstream returns the resolved libpq settings of the named upstream: its
// dsn (or settings table), then the DB_SSL_* overrides, then the PG*
// environment and libpq's defaults. When nothing sets sslmode it is
// verify-full (fail closed), with libpq's rules: without a root
// certificate file that is a root_cert_missing error when connecting, and
// Validate reports it.
func (f *File) Upstream(name string) (*connstring.Config, error) {
	return f.upstream(name, Environ())
}

func (f *File) upstream(name string, env map[string]string) (*connstring.Config, error) {
	r, err := f.resolve(name, env)
	if err != nil {
		return nil, err
	}
	return r.cfg, nil
}

// resolved is an upstream's settings and where its sslmode came from.
type resolved struct {
	cfg *connstring.Config
	// written is the sslmode the DSN or [settings] table states ("" when
	// it states none), before the environment.
	written connstring.SSLMode
	// weakenedBy names the environment variable that made the sslmode
	// weaker than written (or than the verify-full default), "" if none.
	weakenedBy string
}

func (f *File) resolve(name string, env map[string]string) (*resolved, error) {
	u, ok := f.Upstreams[name]
	if !ok {
		return nil, failure.New(failure.ConfigInvalid, "%s has no upstream %q", f.where(), name).
			WithEvidence("upstreams defined: %s", strings.Join(f.UpstreamNames(), ", ")).
			WithFix("use one of the defined names, or add an [upstreams.%s] table", name)
	}
	key := "upstreams." + name
	source := f.where() + ": " + key + ".dsn"
	if u.origin != "" {
		source = u.origin
	}
	settings := map[string]string{}
	if u.DSN != "" {
		kw, err := connstring.ParseKeywords(u.DSN)
		if err != nil {
			return nil, wrapConn(err, source)
		}
		settings = kw
	} else {
		source = f.where() + ": [" + key + ".settings]"
		if u.settingsOrigin != "" {
			source = u.settingsOrigin
		}
		for k, v := range u.Settings {
			s, err := settingString(v)
			if err != nil {
				return nil, f.invalid(key+".settings."+k, "%v", err)
			}
			if !connstring.IsKeyword(k) {
				return nil, f.invalid(key+".settings."+k, "invalid connection option \"%s\"", k).
					WithFix("use a libpq keyword (host, port, dbname, user, sslmode, sslrootcert, sslcert, sslkey, ...)")
			}
			settings[k] = s
		}
	}
	if u.Manifest != "" {
		for _, k := range []string{"host", "hostaddr", "port"} {
			if _, ok := settings[k]; ok {
				return nil, failure.New(failure.ConfigInvalid, "%s: %s is set, but the upstream follows a leader manifest", source, k).
					WithEvidence("upstream %q has manifest = %q, which names the leader's host and port", name, u.Manifest).
					WithFix("remove %s from the upstream's connection settings, or remove manifest to connect to a fixed host", k)
			}
		}
	}
	written := writtenSSLMode(settings)
	if root, ok := settings["sslrootcert"]; ok && u.overrides["sslrootcert"] != "" && u.overrides["sslrootcert"] != root && !f.Proxy.AllowWeakerEnvSSLMode {
		// The trust anchor the configuration pins: DB_SSL_CA=system in its
		// place would accept every public CA as the database.
		return nil, failure.New(failure.ConfigInvalid, "%s: sslrootcert=%s is written in the configuration, but DB_SSL_CA (or DB_SSL_CA_CERT)=%s would replace it",
			source, root, u.overrides["sslrootcert"]).
			WithEvidence("upstream %q: the configuration pins the root certificate %s; the environment names %s", name, root, u.overrides["sslrootcert"]).
			WithFix("unset DB_SSL_CA and DB_SSL_CA_CERT, or change sslrootcert in the configuration itself; to let the environment replace it on purpose, set proxy.allow_weaker_env_sslmode = true (or PGTRUST_ALLOW_WEAKER_ENV_SSLMODE=true)")
	}
	for k, v := range u.overrides {
		settings[k] = v
	}
	_, hasMode := settings["sslmode"]
	_, hasReq := settings["requiressl"]
	_, envMode := env["PGSSLMODE"]
	_, envReq := env["PGREQUIRESSL"]
	if !hasMode && !hasReq && !envMode && !envReq {
		settings["sslmode"] = string(connstring.SSLVerifyFull)
	}

	cfg, err := connstring.ParseWithEnv(connstring.KeyValueString(settings), env, homeOf(env))
	if err != nil {
		return nil, wrapConn(err, source)
	}
	r := &resolved{cfg: cfg, written: written}
	base := written
	if base == "" {
		base = connstring.SSLVerifyFull // pgtrust's default
	}
	if cfg.SSLMode.Strength() < base.Strength() {
		switch {
		case u.overrides["sslmode"] != "":
			r.weakenedBy = "DB_SSL_MODE"
		case env["PGSSLMODE"] != "":
			r.weakenedBy = "PGSSLMODE"
		default:
			r.weakenedBy = "PGREQUIRESSL"
		}
	}
	if written != "" && r.weakenedBy != "" && !f.Proxy.AllowWeakerEnvSSLMode {
		// The environment is easy to change and hard to see: it must not
		// undo what the configuration states.
		return nil, failure.New(failure.ConfigInvalid, "%s: sslmode=%s is written in the configuration, but %s=%s would weaken it",
			source, written, r.weakenedBy, cfg.SSLMode).
			WithEvidence("upstream %q: the configuration says sslmode=%s; the environment variable %s says %s", name, written, r.weakenedBy, cfg.SSLMode).
			WithFix("unset %s, or change sslmode in the configuration itself; to let the environment weaken it on purpose, set proxy.allow_weaker_env_sslmode = true (or PGTRUST_ALLOW_WEAKER_ENV_SSLMODE=true)", r.weakenedBy)
	}
	if f.sslRequired {
		switch cfg.SSLMode {
		case connstring.SSLDisable, connstring.SSLAllow, connstring.SSLPrefer:
			return nil, failure.New(failure.ConfigInvalid, "%s: sslmode=%s may connect without TLS, but %s=true", source, cfg.SSLMode, f.sslRequiredOrigin).
				WithEvidence("upstream %q resolves to sslmode=%s; %s requires TLS", name, cfg.SSLMode, f.sslRequiredOrigin).
				WithFix("set sslmode=verify-full (with sslrootcert) for upstream %q, or unset DB_SSL_REQUIRED", name)
		}
	}
	if u.Attestation != nil {
		if err := attestationSSLMode(key+".attestation", cfg, source); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// writtenSSLMode is the sslmode the configuration's own keywords state, by
// libpq's rules (sslmode, else requiressl=1), without the environment.
func writtenSSLMode(settings map[string]string) connstring.SSLMode {
	_, hasMode := settings["sslmode"]
	_, hasReq := settings["requiressl"]
	if !hasMode && !hasReq {
		return ""
	}
	parts := []string{}
	for _, k := range []string{"sslmode", "requiressl"} {
		if v, ok := settings[k]; ok {
			parts = append(parts, k+"="+connstring.QuoteValue(v))
		}
	}
	c, err := connstring.ParseWithEnv(strings.Join(parts, " "), map[string]string{}, "")
	if err != nil || !c.SSLModeExplicit {
		return ""
	}
	return c.SSLMode
}

// homeOf mirrors connstring's choice of home directory.
func homeOf(env map[string]string) string {
	if h := env["HOME"]; h != "" {
		return h
	}
	if u, err := user.Current(); err == nil {
		return u.HomeDir
	}
	return ""
}

// wrapConn names where a connection string came from, keeping the class,
// evidence and fix of connstring's error (which never holds a secret).
func wrapConn(err error, source string) error {
	fe, ok := failure.As(err)
	if !ok {
		return failure.Wrap(failure.ConfigInvalid, err, "%s", source)
	}
	out := failure.Wrap(fe.Class, err, "%s: %s", source, fe.Error())
	out.Evidence, out.Fix = fe.Evidence, fe.Fix
	if out.Fix == "" {
		out.Fix = "correct the connection string (libpq key/value or postgres:// URI)"
	}
	return out.CauseInMessage()
}

// ProxyConfig turns the configuration into the proxy's. It resolves every
// upstream (see Upstream) and opens no socket; the only file it reads is an
// attestation table's kms_root_ca and a followed manifest's epoch_file
// (a [vault] / [step] table's files are only checked to exist; the CA is
// contacted by proxy.New). Run Validate first for the others.
func (f *File) ProxyConfig(logger *slog.Logger, reg prometheus.Registerer) (*proxy.Config, error) {
	if len(f.Upstreams) == 0 {
		return nil, failure.New(failure.ConfigInvalid, "%s defines no upstream", f.where()).
			WithFix("add an [upstreams.NAME] table with listen and dsn, or pass --upstream DSN --listen ADDR (PGTRUST_UPSTREAM, PGTRUST_LISTEN)")
	}
	pc := &proxy.Config{
		DrainTimeout:       f.Proxy.DrainTimeout.D(),
		DrainDelay:         f.Proxy.DrainDelay.D(),
		StartupTimeout:     f.Proxy.StartupTimeout.D(),
		ConnectTimeout:     f.Proxy.ConnectTimeout.D(),
		AuthTimeout:        f.Proxy.AuthTimeout.D(),
		MaxStartupPacket:   f.Proxy.MaxStartupPacket,
		EventLoops:         f.Proxy.EventLoops,
		ProbeInterval:      f.Health.ProbeInterval.D(),
		RefusalLogInterval: f.Log.RefusalInterval.D(),
		Logger:             logger,
		Registerer:         reg,
	}
	env := Environ()
	for _, name := range f.UpstreamNames() {
		u := f.Upstreams[name]
		conn, err := f.upstream(name, env)
		if err != nil {
			return nil, err
		}
		uc := proxy.UpstreamConfig{
			Name:           name,
			Listen:         u.Listen,
			UnixSocketDir:  u.UnixSocketDir,
			UnixSocketPort: u.UnixSocketPort,
			Conn:           conn,
			MaxConnections: u.MaxConnections,

			ReservedConnections:        u.ReservedConnections,
			MaxAuthenticating:          u.MaxAuthenticating,
			MaxAuthenticatingPerSource: u.MaxAuthenticatingPerSource,
			MaxPending:                 u.MaxPending,
			PlaintextIntended:          u.PlaintextIntended,
		}
		if a := u.Attestation; a != nil {
			p, err := a.Policy("upstreams." + name + ".attestation")
			if err != nil {
				return nil, err
			}
			uc.Attestation, uc.AttestationTimeout = p, a.Timeout()
		}
		if u.Manifest != "" {
			fl, err := f.follower(name, u, logger)
			if err != nil {
				return nil, err
			}
			uc.Leader = fl
		}
		if uc.ClientRenewal, err = f.clientRenewal(name, u, conn.User); err != nil {
			return nil, err
		}
		if t := u.ClientTLS; t != nil {
			uc.ClientTLS = &proxy.ClientTLS{CertFile: t.CertFile, KeyFile: t.KeyFile, AutoCertDir: t.AutoCertDir, Require: t.Require}
		}
		if uc.Gateways, err = f.gatewayConfigs("upstreams."+name, u, env); err != nil {
			return nil, err
		}
		if uc.Auth, err = f.upstreamAuth("upstreams."+name, u, env); err != nil {
			return nil, err
		}
		uc.Pool = u.Pool.proxyConfig()
		pc.Upstreams = append(pc.Upstreams, uc)
	}
	return pc, nil
}
