package dbenv

import (
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
)

// FuzzResolve feeds Resolve a connection string and the seed's DB_SSL_*
// variables. Invariants: no panic; an error is a classified failure.Error
// with a fix; neither an error nor a warning shows the password; an
// accepted setting never leaves sslmode weaker than the one the connection
// string writes (the weakening switch is never set here).
func FuzzResolve(f *testing.F) {
	f.Add("host=db sslmode=verify-full", "", "", "", "")
	f.Add("postgresql://u@db/app?sslmode=require", "verify-full", "", "", "")
	f.Add("host=db sslmode=verify-full", "", "false", "", "")
	f.Add("host=db", "", "false", "true", "system")
	f.Add("host=db sslrootcert=/etc/ca.crt", "", "", "", "system")
	f.Add("${SUPABASE_CONNECTION}", "", "", "", "")
	f.Add("host=db sslmode=disable", "", "", "true", "")
	f.Add("service=x", "prefer", "", "", "")
	f.Fuzz(func(t *testing.T, dsn, mode, reject, enabled, ca string) {
		const secret = "fz-Resolve-Password-7"
		env := map[string]string{"PGPASSWORD": secret}
		for k, v := range map[string]string{"DB_SSL_MODE": mode, "DB_SSL_REJECT_UNAUTHORIZED": reject, "DB_SSL_ENABLED": enabled, "DB_SSL_CA": ca} {
			if v != "" {
				env[k] = v
			}
		}
		full := dsn + " password=" + secret
		s, err := Resolve(full, env, t.TempDir())
		if err != nil {
			fe, ok := failure.As(err)
			if !ok || fe.Class == "" || fe.Fix == "" {
				t.Fatalf("unclassified error or no fix: %#v", err)
			}
			if strings.Contains(failure.Text(err), secret) {
				t.Fatalf("error shows the password: %s", failure.Text(err))
			}
			return
		}
		for _, w := range s.Warnings {
			if strings.Contains(w, secret) {
				t.Fatalf("warning shows the password: %s", w)
			}
		}
		if kw, err := connstring.ParseKeywords(full); err == nil {
			if written, ok := kw["sslmode"]; ok && s.Config.SSLMode.Strength() < connstring.SSLMode(written).Strength() {
				t.Fatalf("sslmode=%s written, resolved to %s", written, s.Config.SSLMode)
			}
		}
	})
}
