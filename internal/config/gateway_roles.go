package config

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/pgtls"
)

// CheckGatewayRoles connects to each upstream that has gateway listeners
// or an auth table, with the gateway's own credentials for each upstream
// role, and reports whether the roles exist and accept those credentials.
// It is the only validation step that connects; an upstream it cannot
// reach at all gives a warning, not a failure (validation may run before
// the database is up).
func CheckGatewayRoles(ctx context.Context, f *File) []Finding {
	v := &validator{}
	env := Environ()
	for _, name := range f.UpstreamNames() {
		u := f.Upstreams[name]
		if len(u.Gateway) == 0 && u.Auth == nil {
			continue
		}
		key := "upstreams." + name
		if u.Manifest != "" {
			// The leader is known only from a verified manifest, fetched by
			// the running proxy; validation does not follow it, and never
			// sends the gateway's passwords anywhere else.
			v.warn(key+".roles", failure.ConfigInvalid, "the gateway's upstream roles were not checked",
				"the upstream follows a leader manifest", "check the roles once the proxy runs (its log names a failed upstream login)")
			continue
		}
		conn, err := f.upstream(name, env)
		if err != nil {
			continue // Validate reports it
		}
		// The same protection as the running gateway: with an attestation
		// policy the server must pass it before any credential is sent.
		var opts *pgtls.Options
		if a := u.Attestation; a != nil {
			p, err := a.Policy(key + ".attestation")
			if err != nil {
				continue // Validate reports it
			}
			opts = &pgtls.Options{Attestation: p, AttestationTimeout: a.Timeout()}
		}
		gws, err := f.gatewayConfigs(key, u, env)
		if err != nil {
			continue
		}
		auth, err := f.upstreamAuth(key, u, env)
		if err != nil {
			continue
		}
		creds := map[string]string{} // role → password ("" = the dsn's credentials)
		for _, g := range gws {
			for _, r := range g.Roles {
				creds[r.Role] = r.Password
			}
		}
		if auth != nil {
			role := auth.Role
			if role == "" {
				role = conn.User
			}
			creds[role] = auth.Password
		}
		roles := make([]string, 0, len(creds))
		for r := range creds {
			roles = append(roles, r)
		}
		sort.Strings(roles)
		var checked bool
		var unreachable error
		for _, role := range roles {
			c := conn.Clone()
			c.User = role
			if creds[role] != "" {
				c.Password = creds[role]
			}
			pg, _, err := pgtls.Connect(ctx, c, opts)
			check := fmt.Sprintf("%s.roles.%s", key, role)
			if err != nil {
				switch class := failure.ClassOf(err); {
				case strings.HasPrefix(string(class), "attestation_"):
					v.fail(check, failure.Wrap(class, err, "%s: the upstream did not pass its attestation policy; the gateway's credentials were not sent", key).
						WithFix("check the upstream address and the [%s.attestation] policy", key))
				case class == failure.AuthFailed || class == failure.PgHbaReject:
					v.fail(check, failure.Wrap(failure.ClassOf(err), err, "%s: the gateway cannot log in upstream as role %q", key, role).
						WithFix("create the role (docs/gateway.md has the SQL), check the gateway's password for it and pg_hba.conf"))
				default:
					unreachable = err
				}
				continue
			}
			v.ok(check, "role %q exists and accepts the gateway's credentials", role)
			if !checked {
				checked = true
				res, qerr := pg.Exec(ctx, "SELECT rolname FROM pg_roles WHERE rolname IN ('"+strings.Join(quoteAll(roles), "','")+"')").ReadAll()
				if qerr == nil && len(res) > 0 {
					found := map[string]bool{}
					for _, row := range res[0].Rows {
						found[string(row[0])] = true
					}
					for _, r := range roles {
						if !found[r] {
							v.fail(fmt.Sprintf("%s.roles.%s", key, r), failure.New(failure.ConfigInvalid, "%s: role %q does not exist upstream", key, r).
								WithFix("CREATE ROLE %s LOGIN ... (docs/gateway.md has the role setup SQL)", r))
						}
					}
				}
			}
			pg.Close(ctx)
		}
		if unreachable != nil && len(v.out) == 0 {
			v.warn(key+".roles", failure.ClassOf(unreachable), "could not connect upstream to check the gateway's roles",
				unreachable.Error(), "run pgtrust config validate again once the database is reachable")
		}
	}
	return v.out
}

// quoteAll escapes role names for a SQL string literal list.
func quoteAll(names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = strings.ReplaceAll(n, "'", "''")
	}
	return out
}
