package certs

import (
	"context"
	"errors"
	"os"
	"strings"
	"time"

	vault "github.com/hashicorp/vault/api"

	"github.com/pgtrust/pgtrust/failure"
)

func getenv(k string) string { return os.Getenv(k) }

// tokenState is the Vault token in use and what Vault said about it.
type tokenState struct {
	token     string
	renewable bool
	ttl       time.Duration // lifetime granted at the last login/renewal; 0 = no expiry
	expires   time.Time     // zero = no expiry known
	obtained  time.Time     // of the last login/renewal
	// secrets holds every secret this issuer has read (token, secret_id,
	// role_id, JWT), so that scrub can keep them out of errors and logs
	// even when Vault echoes one back.
	secrets []string
}

func (t *tokenState) drop() { t.token = "" }

func (t *tokenState) remember(s string) {
	if s == "" {
		return
	}
	for _, k := range t.secrets {
		if k == s {
			return
		}
	}
	t.secrets = append(t.secrets, s)
}

// scrub removes every secret this issuer knows from s.
func (v *VaultIssuer) scrub(s string) string {
	for _, k := range v.auth.secrets {
		if len(k) >= 4 {
			s = strings.ReplaceAll(s, k, "[redacted]")
		}
	}
	return s
}

// RenewToken looks the token up and renews it when it is renewable, or
// logs in again (AppRole, Kubernetes) when it is missing or near expiry.
// Issue does this before each issuance; a caller whose token lives shorter
// than the certificate calls it periodically (see TokenRefreshIn).
func (v *VaultIssuer) RenewToken(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.ensureToken(ctx, true)
}

// TokenRefreshIn is how long until the token should be renewed (two thirds
// of its remaining lifetime), or 0 when it has no known expiry.
func (v *VaultIssuer) TokenRefreshIn() time.Duration {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.auth.expires.IsZero() {
		return 0
	}
	return max(v.auth.expires.Sub(v.o.Now())*2/3, time.Second)
}

// RunTokenRenewal keeps the token alive while the issuer is in use, for
// tokens that live shorter than the certificates: it renews (or logs in
// again) at two thirds of the token's remaining lifetime, and after a
// failure retries within a tenth of it (at least every second, at most
// every minute). A token without expiry needs nothing; it returns then, or
// when ctx ends. Failures are logged with their class; the next Issue
// reports them to the renewal engine.
func (v *VaultIssuer) RunTokenRenewal(ctx context.Context) {
	var retry time.Duration
	if err := v.RenewToken(ctx); err != nil {
		v.log.Warn("vault token renewal failed", "class", failure.ClassOf(err), "error", err)
		retry = 5 * time.Second
	}
	for {
		wait := retry
		if wait == 0 {
			v.mu.Lock()
			done := v.auth.token != "" && (v.auth.expires.IsZero() ||
				v.o.authMethod() == "token" && !v.auth.renewable) // nothing renewal can do
			v.mu.Unlock()
			if done {
				return
			}
			wait = v.TokenRefreshIn()
		}
		select {
		case <-ctx.Done():
			return
		case <-v.o.After(wait):
		}
		retry = 0
		if err := v.RenewToken(ctx); err != nil {
			v.log.Warn("vault token renewal failed", "class", failure.ClassOf(err), "error", err)
			retry = min(max(v.TokenRefreshIn()/5, time.Second), time.Minute)
		}
	}
}

// ensureToken makes sure the client holds a live token. A failed renewal
// of a token that is still live is returned only when strict (RenewToken);
// before an issuance it is logged and the issuance goes ahead, since the
// token still works and a certificate matters more than its renewal.
func (v *VaultIssuer) ensureToken(ctx context.Context, strict bool) error {
	if v.o.authMethod() != "token" {
		return v.ensureLogin(ctx, strict)
	}
	tok, src, err := v.readToken()
	if err != nil {
		return err
	}
	v.auth.remember(tok)
	v.auth.token = tok
	v.client.SetToken(tok)

	rctx, cancel := context.WithTimeout(ctx, v.o.RequestTimeout)
	defer cancel()
	sec, err := v.client.Auth().Token().LookupSelfWithContext(rctx)
	if err != nil {
		e := v.classify(err, "GET /v1/auth/token/lookup-self")
		if fe, ok := failure.As(e); ok && fe.Class == RenewalAuth {
			fe.WithEvidence("%s; the token from %s was refused by lookup-self: expired, revoked or in another namespace", fe.Evidence, src)
		}
		return e
	}
	ttl, _ := sec.TokenTTL()
	renewable, _ := sec.TokenIsRenewable()
	if ttl <= 0 && sec.Data != nil && sec.Data["expire_time"] != nil {
		// Vault reports ttl in whole seconds: 0 with an expire_time is a
		// token in its last second, not one that never expires (a root
		// token has no expire_time). Renew it now.
		ttl = time.Second
	}
	v.setLease(ttl, renewable)
	if renewable && ttl > 0 {
		if err := v.renewSelf(ctx); err != nil {
			return v.renewFailed(err, strict)
		}
	}
	return nil
}

func (v *VaultIssuer) renewFailed(err error, strict bool) error {
	if strict {
		return err
	}
	v.log.Warn("vault token renewal failed; the token is still valid", "class", failure.ClassOf(err), "error", err,
		"expires", v.auth.expires)
	return nil
}

func (v *VaultIssuer) setLease(ttl time.Duration, renewable bool) {
	now := v.o.Now()
	v.auth.ttl, v.auth.renewable, v.auth.obtained = ttl, renewable, now
	v.auth.expires = time.Time{}
	if ttl > 0 {
		v.auth.expires = now.Add(ttl)
	}
}

func (v *VaultIssuer) renewSelf(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, v.o.RequestTimeout)
	defer cancel()
	// increment 0 asks for the token's default TTL.
	sec, err := v.client.Auth().Token().RenewSelfWithContext(rctx, 0)
	if err != nil {
		return v.classify(err, "PUT /v1/auth/token/renew-self")
	}
	if sec != nil && sec.Auth != nil {
		v.setLease(time.Duration(sec.Auth.LeaseDuration)*time.Second, sec.Auth.Renewable)
		v.log.Debug("vault token renewed", "ttl", v.auth.ttl, "renewable", v.auth.renewable)
	}
	for _, w := range warningsOf(sec) {
		v.log.Warn("vault warning", "path", "auth/token/renew-self", "warning", v.scrub(w))
	}
	return nil
}

// readToken returns the token from the options, the token file (re-read
// each time, so a rotated file is picked up) or VAULT_TOKEN, and where it
// came from.
func (v *VaultIssuer) readToken() (tok, src string, err error) {
	switch {
	case v.o.Token != "":
		return v.o.Token, "the configuration", nil
	case v.o.TokenFile != "":
		b, err := os.ReadFile(v.o.TokenFile)
		if err != nil {
			return "", "", failure.Wrap(RenewalAuth, err, "could not read vault token file %q", v.o.TokenFile).
				WithFix("write the Vault token to %s (mode 0600) or set VAULT_TOKEN", v.o.TokenFile)
		}
		tok = strings.TrimSpace(string(b))
		if tok == "" {
			return "", "", failure.New(RenewalAuth, "vault token file %q is empty", v.o.TokenFile).
				WithFix("write the Vault token to %s (mode 0600) or set VAULT_TOKEN", v.o.TokenFile)
		}
		return tok, "token file " + v.o.TokenFile, nil
	}
	if tok = strings.TrimSpace(v.o.Getenv("VAULT_TOKEN")); tok != "" {
		return tok, "VAULT_TOKEN", nil
	}
	return "", "", failure.New(RenewalAuth, "no vault token").
		WithEvidence("no token configured, no token file and VAULT_TOKEN is empty").
		WithFix("set VAULT_TOKEN, a token file, or AppRole / Kubernetes authentication")
}

// ensureLogin logs in when there is no token or it is close to expiry, and
// renews a renewable token once half its lifetime has passed.
func (v *VaultIssuer) ensureLogin(ctx context.Context, strict bool) error {
	now := v.o.Now()
	if v.auth.token != "" && !v.auth.expires.IsZero() {
		left := v.auth.expires.Sub(now)
		switch {
		case left <= v.auth.ttl/10 || left <= v.o.RequestTimeout:
			v.auth.drop()
		case v.auth.renewable && left <= v.auth.ttl/2:
			if err := v.renewSelf(ctx); err != nil {
				if failure.ClassOf(err) != RenewalAuth {
					return v.renewFailed(err, strict)
				}
				v.auth.drop() // refused: log in afresh
			}
		}
	}
	if v.auth.token != "" {
		return nil
	}
	var path string
	var body map[string]any
	switch {
	case v.o.AppRole != nil:
		mount := v.o.AppRole.Mount
		if mount == "" {
			mount = "approle"
		}
		roleID, err := v.readSecretFile(v.o.AppRole.RoleIDFile, "AppRole role_id")
		if err != nil {
			return err
		}
		secretID, err := v.readSecretFile(v.o.AppRole.SecretIDFile, "AppRole secret_id")
		if err != nil {
			return err
		}
		path, body = "auth/"+strings.Trim(mount, "/")+"/login", map[string]any{"role_id": roleID, "secret_id": secretID}
	default:
		k := v.o.Kubernetes
		mount, file := k.Mount, k.JWTFile
		if mount == "" {
			mount = "kubernetes"
		}
		if file == "" {
			file = DefaultKubernetesJWTFile
		}
		jwt, err := v.readSecretFile(file, "Kubernetes service account token")
		if err != nil {
			return err
		}
		path, body = "auth/"+strings.Trim(mount, "/")+"/login", map[string]any{"role": k.Role, "jwt": jwt}
	}
	v.client.ClearToken()
	rctx, cancel := context.WithTimeout(ctx, v.o.RequestTimeout)
	defer cancel()
	sec, err := v.client.Logical().WriteWithContext(rctx, path, body)
	if err != nil {
		e := v.classify(err, "PUT /v1/"+path)
		// A refused login is an authentication failure whatever the status
		// (Vault answers a bad secret_id with 400).
		var re *vault.ResponseError
		if errors.As(err, &re) && re.StatusCode < 500 && re.StatusCode != 429 {
			if fe, ok := failure.As(e); ok {
				fe.Class = RenewalAuth
				fe.Fix = v.authFix()
			}
		}
		return e
	}
	if sec == nil || sec.Auth == nil || sec.Auth.ClientToken == "" {
		return failure.New(RenewalAuth, "vault login at %s returned no token", path).
			WithFix("%s", v.authFix())
	}
	v.auth.remember(sec.Auth.ClientToken)
	v.auth.token = sec.Auth.ClientToken
	v.client.SetToken(sec.Auth.ClientToken)
	v.setLease(time.Duration(sec.Auth.LeaseDuration)*time.Second, sec.Auth.Renewable)
	for _, w := range sec.Warnings {
		v.log.Warn("vault warning", "path", path, "warning", v.scrub(w))
	}
	v.log.Info("vault login", "path", path, "ttl", v.auth.ttl, "renewable", v.auth.renewable,
		"policies", sec.Auth.Policies)
	return nil
}

func (v *VaultIssuer) readSecretFile(name, what string) (string, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return "", failure.Wrap(RenewalAuth, err, "could not read the %s file %q", what, name).
			WithFix("make %s readable by this process", name)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", failure.New(RenewalAuth, "the %s file %q is empty", what, name).
			WithFix("write the %s to %s", what, name)
	}
	v.auth.remember(s)
	return s, nil
}

func warningsOf(s *vault.Secret) []string {
	if s == nil {
		return nil
	}
	return s.Warnings
}
